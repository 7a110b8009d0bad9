//! The floor rows: what the parts Meridian cannot remove cost, measured alone.
//!
//! - **Bare pingora** ([`serve`], [`crate::bare_proxy`]): the smallest reverse proxy pingora makes
//!   (the same vendored pingora, one worker thread, keep-alive to one
//!   upstream; TLS with rustls for the TLS workload), with none of Meridian's
//!   work — no gate, routing, token check, hygiene, metrics or tunnel.
//! - **A hop** ([`forward`]): the least a tunnel end next to the app can do —
//!   accept a connection, connect to the app, move bytes both ways (the same
//!   pipe code as Meridian's agent: small reads copied, bulk spliced), one
//!   thread.
//!
//! Bare pingora in front of a hop in front of the app ("pingora+hop") is
//! Meridian's topology with nothing of Meridian's in it: the floor of any
//! design built on pingora with an agent beside the app. What Meridian costs
//! above it is its own.
//!
//! For WebSocket round trips (one message in flight, so every process on the
//! path wakes twice per round trip) two rows more: the hop alone ("hop", the
//! least one process on the path costs, against nginx's one) and a hop in
//! front of the hop ("hop+hop", the least any two processes cost: a proxy
//! that terminates the client and an agent beside the app, with no TLS, HTTP
//! or anything else of either).
//!
//! `meridian-bench --bare-pingora LISTEN UPSTREAM [CERT KEY]` and
//! `meridian-bench --forward LISTEN UPSTREAM` run them (the stack starts them).

/// Serves bare pingora on `listen` (TLS with `tls`'s certificate and key
/// files, if given), proxying everything to `upstream`, until killed (see
/// [`crate::bare_proxy`]).
pub fn serve(listen: &str, upstream: std::net::SocketAddr, tls: Option<(&str, &str)>) -> anyhow::Result<()> {
    Ok(crate::bare_proxy::serve(listen, upstream, tls)?)
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
