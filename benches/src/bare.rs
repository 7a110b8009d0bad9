//! The floor rows: what the parts Meridian cannot remove cost, measured alone.
//!
//! - **Bare pingora** ([`serve`]): the smallest reverse proxy pingora makes
//!   (the same vendored pingora, one worker thread, keep-alive to one
//!   upstream; TLS with rustls for the TLS workload), with none of Meridian's
//!   work — no gate, routing, token check, hygiene, metrics or tunnel.
//! - **A hop** ([`forward`]): the least a tunnel end next to the app can do —
//!   accept a connection, connect to the app, move bytes both ways (the same
//!   kernel splice Meridian's agent uses), one thread.
//!
//! Bare pingora in front of a hop in front of the app ("pingora+hop") is
//! Meridian's topology with nothing of Meridian's in it: the floor of any
//! design built on pingora with an agent beside the app. What Meridian costs
//! above it is its own.
//!
//! `meridian-bench --bare-pingora LISTEN UPSTREAM [CERT KEY]` and
//! `meridian-bench --forward LISTEN UPSTREAM` run them (the stack starts them).

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
pub fn serve(listen: &str, upstream: std::net::SocketAddr, tls: Option<(&str, &str)>) -> anyhow::Result<()> {
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

/// Accepts on `listen` and pipes each connection to `upstream`, on one
/// thread, until killed.
pub fn forward(listen: &str, upstream: std::net::SocketAddr) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    rt.block_on(async {
        let listener = tokio::net::TcpListener::bind(listen).await?;
        loop {
            let (mut down, _) = listener.accept().await?;
            tokio::spawn(async move {
                let Ok(mut up) = tokio::net::TcpStream::connect(upstream).await else { return };
                let _ = (down.set_nodelay(true), up.set_nodelay(true));
                let _ = meridian_regions::pipe::splice(&mut down, &mut up, meridian_regions::pipe::DEFAULT_IDLE).await;
            });
        }
    })
}
