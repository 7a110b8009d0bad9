//! Bare pingora: the smallest reverse proxy pingora makes (the same vendored
//! pingora, one worker thread, keep-alive to one upstream, no TLS), with
//! none of Meridian's work — no gate, routing, token check, hygiene, metrics
//! or tunnel. Its row in the benchmark is the floor of any proxy built on
//! pingora here: what Meridian's proxy costs above it is Meridian's own.
//!
//! `meridian-bench --bare-pingora LISTEN UPSTREAM` runs it (the stack starts it).

use async_trait::async_trait;
use pingora::prelude::*;

struct Bare(std::net::SocketAddr);

#[async_trait]
impl ProxyHttp for Bare {
    type CTX = ();

    fn new_ctx(&self) {}

    async fn upstream_peer(&self, _session: &mut Session, _ctx: &mut ()) -> Result<Box<HttpPeer>> {
        Ok(Box::new(HttpPeer::new(self.0, false, String::new())))
    }
}

/// Serves on `listen`, proxying everything to `upstream`, until killed.
pub fn serve(listen: &str, upstream: std::net::SocketAddr) -> anyhow::Result<()> {
    let conf = pingora::server::configuration::ServerConf {
        threads: 1,
        grace_period_seconds: Some(0),
        graceful_shutdown_timeout_seconds: Some(0),
        ..Default::default()
    };
    let mut server = pingora::server::Server::new_with_opt_and_conf(None, conf);
    server.bootstrap();
    let mut proxy = pingora::proxy::http_proxy_service(&server.configuration, Bare(upstream));
    proxy.add_tcp(listen);
    server.add_service(proxy);
    server.run_forever()
}
