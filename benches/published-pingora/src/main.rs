//! `bare-pingora-published LISTEN UPSTREAM [CERT KEY]`: the smallest reverse
//! proxy pingora 0.9.1 as published makes (one worker thread, keep-alive to
//! one upstream), the same program as `meridian-bench --bare-pingora` but
//! built without the vendored patches. See BENCHMARKS.md.

use async_trait::async_trait;
use pingora::prelude::*;

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

struct Bare(std::net::SocketAddr);

#[async_trait]
impl ProxyHttp for Bare {
    type CTX = ();

    fn new_ctx(&self) {}

    async fn upstream_peer(&self, _session: &mut Session, _ctx: &mut ()) -> Result<Box<HttpPeer>> {
        Ok(Box::new(HttpPeer::new(self.0, false, String::new())))
    }
}

fn main() {
    // Takes `meridian-bench --bare-pingora`'s arguments, that flag included or not.
    let args: Vec<String> = std::env::args().skip(1).filter(|a| a != "--bare-pingora").collect();
    let (listen, upstream, tls) = match args.as_slice() {
        [l, u] => (l, u, None),
        [l, u, c, k] => (l, u, Some((c, k))),
        _ => {
            eprintln!("usage: bare-pingora-published LISTEN UPSTREAM [CERT KEY]");
            std::process::exit(2);
        }
    };
    let upstream = upstream.parse().unwrap_or_else(|e| {
        eprintln!("bare-pingora-published: upstream {upstream}: {e}");
        std::process::exit(2);
    });
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
        Some((cert, key)) => {
            if let Err(e) = proxy.add_tls(listen, cert, key) {
                eprintln!("bare-pingora-published: TLS: {e}");
                std::process::exit(2);
            }
        }
        None => proxy.add_tcp(listen),
    }
    server.add_service(proxy);
    server.run_forever()
}
