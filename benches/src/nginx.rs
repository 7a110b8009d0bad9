//! nginx as the reverse proxy a user would pick instead: Debian's
//! `nginx-light`, one worker, keep-alive to the upstream, WebSocket upgrades.

use crate::stack::Proc;
use anyhow::{Context, Result};
use std::path::Path;
use std::process::{Command, Stdio};

pub fn start(dir: &Path, app: u16, port: u16, tls_port: u16, cert: &Path, key: &Path) -> Result<Proc> {
    let prefix = dir.join("nginx");
    std::fs::create_dir_all(prefix.join("logs"))?;
    let user = if nix::unistd::geteuid().is_root() { "user root;" } else { "" };
    let location = "location / { proxy_pass http://app; proxy_http_version 1.1; \
         proxy_set_header Host $host; proxy_set_header Upgrade $http_upgrade; \
         proxy_set_header Connection $connection_upgrade; }";
    let conf = format!(
        "{user}\nworker_processes 1;\ndaemon off;\npid {pid};\nerror_log {err} warn;\n\
         events {{ worker_connections 20000; }}\n\
         http {{\n  access_log off;\n  map $http_upgrade $connection_upgrade {{ default upgrade; '' ''; }}\n\
           upstream app {{ server 127.0.0.1:{app}; keepalive 64; }}\n\
           server {{ listen 127.0.0.1:{port}; {location} }}\n\
           server {{ listen 127.0.0.1:{tls_port} ssl; ssl_certificate {cert}; ssl_certificate_key {key}; {location} }}\n}}\n",
        pid = prefix.join("nginx.pid").display(),
        err = prefix.join("logs/error.log").display(),
        cert = cert.display(),
        key = key.display(),
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
