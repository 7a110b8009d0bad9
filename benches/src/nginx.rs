//! nginx as the reverse proxy a user would pick instead: Debian's
//! `nginx-light`, one worker, keep-alive to the upstream, WebSocket upgrades;
//! straight to the app, and (on other ports) to a rathole tunnel's service port.

use crate::stack::Proc;
use anyhow::{Context, Result};
use std::path::Path;
use std::process::{Command, Stdio};

/// nginx's listeners: to the app directly, and to the app through rathole.
pub struct Ports {
    pub app: u16,
    pub port: u16,
    pub tls_port: u16,
    pub tunnel: u16,
    pub tunnel_port: u16,
    pub tunnel_tls_port: u16,
}

pub fn start(dir: &Path, p: &Ports, cert: &Path, key: &Path) -> Result<Proc> {
    let prefix = dir.join("nginx");
    std::fs::create_dir_all(prefix.join("logs"))?;
    let user = if nix::unistd::geteuid().is_root() { "user root;" } else { "" };
    let location = |upstream: &str| {
        format!(
            "location / {{ proxy_pass http://{upstream}; proxy_http_version 1.1; \
             proxy_set_header Host $host; proxy_set_header Upgrade $http_upgrade; \
             proxy_set_header Connection $connection_upgrade; }}"
        )
    };
    let (app, tunnel) = (location("app"), location("tunnel"));
    let tls = format!("ssl; ssl_certificate {}; ssl_certificate_key {};", cert.display(), key.display());
    let conf = format!(
        "{user}\nworker_processes 1;\ndaemon off;\npid {pid};\nerror_log {err} warn;\n\
         events {{ worker_connections 20000; }}\n\
         http {{\n  access_log off;\n  map $http_upgrade $connection_upgrade {{ default upgrade; '' ''; }}\n\
           upstream app {{ server 127.0.0.1:{}; keepalive 64; }}\n\
           upstream tunnel {{ server 127.0.0.1:{}; keepalive 64; }}\n\
           server {{ listen 127.0.0.1:{}; {app} }}\n\
           server {{ listen 127.0.0.1:{} {tls} {app} }}\n\
           server {{ listen 127.0.0.1:{}; {tunnel} }}\n\
           server {{ listen 127.0.0.1:{} {tls} {tunnel} }}\n}}\n",
        p.app,
        p.tunnel,
        p.port,
        p.tls_port,
        p.tunnel_port,
        p.tunnel_tls_port,
        pid = prefix.join("nginx.pid").display(),
        err = prefix.join("logs/error.log").display(),
    );
    let path = prefix.join("nginx.conf");
    std::fs::write(&path, conf)?;
    let log = std::fs::File::create(dir.join("nginx.log"))?;
    let child = Command::new("nginx")
        .arg("-p")
        .arg(&prefix)
        .arg("-c")
        .arg(&path)
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .spawn()
        .context("cannot start nginx (install it: apt-get install nginx-light)")?;
    Ok(Proc(child))
}
