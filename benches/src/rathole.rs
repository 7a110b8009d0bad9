//! rathole, the reverse tunnel a user could pick instead of Meridian's agent
//! tunnel: its server listens where the edge proxy (nginx) sends traffic,
//! its client dials out from the app's side, as Meridian's agent does.
//! `cargo install rathole --version 0.5.0` (see `benches/run`). Both ends run
//! one worker thread, like every other process in the benchmark.

use crate::stack::{spawn, Proc};
use anyhow::Result;
use std::path::Path;

/// The rathole server and client; the service's port (where nginx proxies to)
/// carries connections through the tunnel to `app`.
pub struct Rathole {
    pub server: Proc,
    pub client: Proc,
}

pub fn start(bin: &Path, dir: &Path, control: u16, service: u16, app: u16) -> Result<Rathole> {
    let server = format!(
        "[server]\nbind_addr = \"127.0.0.1:{control}\"\n\n[server.transport]\ntype = \"tcp\"\n\n\
         [server.services.app]\ntoken = \"meridian-bench\"\nbind_addr = \"127.0.0.1:{service}\"\nnodelay = true\n"
    );
    let client = format!(
        "[client]\nremote_addr = \"127.0.0.1:{control}\"\n\n[client.transport]\ntype = \"tcp\"\n\n\
         [client.services.app]\ntoken = \"meridian-bench\"\nlocal_addr = \"127.0.0.1:{app}\"\nnodelay = true\n"
    );
    let (server_conf, client_conf) = (dir.join("rathole-server.toml"), dir.join("rathole-client.toml"));
    std::fs::write(&server_conf, server)?;
    std::fs::write(&client_conf, client)?;
    let one = [("TOKIO_WORKER_THREADS", "1"), ("RUST_LOG", "warn")];
    let conf = |p: &Path| p.display().to_string();
    Ok(Rathole {
        server: spawn(bin, &["-s".into(), conf(&server_conf)], dir, "rathole-server", &one)?,
        client: spawn(bin, &["-c".into(), conf(&client_conf)], dir, "rathole-client", &one)?,
    })
}
