//! The pingora `ProxyHttp` implementation: a dispatcher over the modules that
//! do the work. Per-request state lives in [`Ctx`].

use crate::endpoints::{self, Local};
use crate::state::{InFlight, ProxyState};
use async_trait::async_trait;
use pingora::prelude::*;
use std::sync::Arc;

pub struct MeridianProxy {
    pub state: Arc<ProxyState>,
}

/// Per-request state.
pub struct Ctx {
    /// Keeps the request counted for the shutdown drain.
    _in_flight: InFlight,
}

#[async_trait]
impl ProxyHttp for MeridianProxy {
    type CTX = Ctx;

    fn new_ctx(&self) -> Ctx {
        Ctx {
            _in_flight: self.state.enter(),
        }
    }

    /// Answers the proxy's own endpoints; anything else is not (yet) an app
    /// this proxy serves.
    async fn request_filter(&self, session: &mut Session, _ctx: &mut Ctx) -> Result<bool> {
        let path = session.req_header().uri.path().to_owned();
        let local = endpoints::answer(&path, &self.state)
            .unwrap_or_else(|| Local::error(404, "Nothing is served at this address."));
        local.write(session).await?;
        Ok(true)
    }

    async fn upstream_peer(&self, _session: &mut Session, _ctx: &mut Ctx) -> Result<Box<HttpPeer>> {
        // request_filter answers every request, so no request reaches here.
        Error::e_explain(ErrorType::InternalError, "no upstream is routed")
    }
}
