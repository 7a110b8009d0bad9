//! Meridian's regional proxy: the data plane edge, on pingora with rustls.
//!
//! - [`config`]: options and their validation.
//! - [`service`]: the pingora `ProxyHttp` dispatcher and per-request context.
//! - [`endpoints`]: the proxy's own endpoints (`/healthz`, `/healthz-report`, ...).
//! - [`registration`]: register, heartbeat and deregister with the coordinator.
//! - [`lifecycle`]: signals, the shutdown drain, and the background service
//!   that ties registration to the server's life.
//! - [`state`]: what the data plane and the registration loop share.

pub mod config;
pub mod endpoints;
pub mod lifecycle;
pub mod registration;
pub mod service;
pub mod state;

use anyhow::Context;
use config::Config;
use pingora::listeners::tls::TlsSettings;
use pingora::server::configuration::ServerConf;
use pingora::server::{RunArgs, Server};
use state::ProxyState;

/// Runs the proxy until SIGTERM or SIGINT, then drains, deregisters and
/// exits. Blocks the calling thread; pingora makes its own runtimes.
pub fn run(config: Config) -> anyhow::Result<()> {
    let state = ProxyState::new();
    let registrar =
        registration::Registrar::new(&config, state.clone()).map_err(anyhow::Error::msg)?;

    let drain_secs = config.drain_timeout.as_secs().max(1);
    let conf = ServerConf {
        threads: config.threads,
        // The hard ceiling of the drain: the lifecycle service exits as soon
        // as requests are done, and pingora's grace period only bounds it.
        grace_period_seconds: Some(drain_secs + lifecycle::DEREGISTER_TIMEOUT.as_secs()),
        graceful_shutdown_timeout_seconds: Some(1),
        ..ServerConf::default()
    };
    let mut server = Server::new_with_opt_and_conf(None, conf);
    server.bootstrap();

    let mut proxy = pingora::proxy::http_proxy_service(
        &server.configuration,
        service::MeridianProxy {
            state: state.clone(),
        },
    );
    let addr = config.listen.to_string();
    match &config.tls {
        Some((cert, key)) => {
            let (cert, key) = (path_str(cert)?, path_str(key)?);
            let mut tls = TlsSettings::intermediate(cert, key)
                .with_context(|| format!("cannot load TLS certificate {cert} and key {key}"))?;
            tls.enable_h2();
            proxy.add_tls_with_settings(&addr, None, tls);
        }
        None => proxy.add_tcp(&addr),
    }
    tracing::info!(listen = %addr, access_url = %config.access_url, replica = %config.replica_id, "proxy listening");
    server.add_service(proxy);
    server.add_service(pingora::services::background::background_service(
        "lifecycle",
        lifecycle::Lifecycle::new(registrar, state, config.listen, config.drain_timeout),
    ));
    server.run(RunArgs {
        shutdown_signal: Box::new(lifecycle::Signals),
    });
    Ok(())
}

fn path_str(p: &std::path::Path) -> anyhow::Result<&str> {
    p.to_str()
        .with_context(|| format!("{} is not UTF-8", p.display()))
}
