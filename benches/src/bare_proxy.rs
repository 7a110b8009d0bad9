//! The smallest reverse proxy pingora makes: one worker thread, keep-alive
//! to one upstream, no filters; TLS with rustls if given a certificate. One
//! source for two floor rows: `meridian-bench --bare-pingora` builds it
//! against the vendored, patched pingora ([`crate::bare`]), and
//! `benches/published-pingora` includes this file by path and builds it
//! against pingora as published.

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

/// Serves on `listen` (TLS with `tls`'s certificate and key files, if
/// given), proxying everything to `upstream`, until killed.
pub fn serve(listen: &str, upstream: std::net::SocketAddr, tls: Option<(&str, &str)>) -> Result<()> {
    let conf = pingora::server::configuration::ServerConf {
        threads: 1,
        grace_period_seconds: Some(0),
        graceful_shutdown_timeout_seconds: Some(0),
        ..Default::default()
    };
    let mut server = pingora::server::Server::new_with_opt_and_conf(None, conf);
    server.bootstrap();
    let mut proxy = pingora::proxy::http_proxy_service(&server.configuration, Bare(upstream));
    match tls {
        Some((cert, key)) => proxy.add_tls(listen, cert, key)?,
        None => proxy.add_tcp(listen),
    }
    server.add_service(proxy);
    server.run_forever()
}
