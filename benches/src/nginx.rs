//! nginx as the reverse proxy a user would pick instead: Debian's
//! `nginx-light`, one worker, keep-alive to the upstream, WebSocket upgrades;
//! straight to the app, and (on other ports) to a rathole tunnel's service port.
//! Its TLS listeners speak TLS 1.2 and 1.3, as nginx does by default since
//! 1.23.4 and as Meridian's do; Debian's 1.22 stops at TLS 1.2 unless told,
//! and one more listener keeps that default as a reference row: there a
//! client that resumes (wrk does) skips the key exchange altogether, which
//! TLS 1.3 resumption (rustls', OpenSSL's) does not. One more listener, to
//! rathole, does to a request what Meridian's contract makes Meridian do
//! (`X-Forwarded-For`, `-Proto`, `-Host`, the `Host` as asked, the client's
//! cookies for the proxy kept from the app), for the row that sends it
//! Meridian's request: the app then answers the same bytes in both.

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
    /// TLS 1.2 only (Debian's nginx 1.22 default), straight to the app.
    pub tls12_port: u16,
    /// To rathole, forwarding as Meridian does.
    pub tunnel_forwarding_port: u16,
}

pub fn start(dir: &Path, p: &Ports, cert: &Path, key: &Path) -> Result<Proc> {
    let prefix = dir.join("nginx");
    std::fs::create_dir_all(prefix.join("logs"))?;
    let user = if nix::unistd::geteuid().is_root() { "user root;" } else { "" };
    // `host`: the `Host` the app is told; `more`: further fields to set.
    let location = |upstream: &str, host: &str, more: &str| {
        format!(
            "location / {{ proxy_pass http://{upstream}; proxy_http_version 1.1; \
             proxy_set_header Host {host}; proxy_set_header Upgrade $http_upgrade; \
             proxy_set_header Connection $connection_upgrade;{more} }}"
        )
    };
    let (app, tunnel) = (location("app", "$host", ""), location("tunnel", "$host", ""));
    // As Meridian forwards: the `Host` as asked (its port too), the three
    // `X-Forwarded-*`; the request's cookies are Meridian's own, never the app's.
    let forwarding = location(
        "tunnel",
        "$http_host",
        " proxy_set_header Cookie \"\"; proxy_set_header X-Forwarded-For $remote_addr; \
         proxy_set_header X-Forwarded-Proto $scheme; proxy_set_header X-Forwarded-Host $http_host;",
    );
    let certificate = format!("ssl_certificate {}; ssl_certificate_key {};", cert.display(), key.display());
    let tls = format!("ssl; ssl_protocols TLSv1.2 TLSv1.3; {certificate}");
    let tls12 = format!("ssl; ssl_protocols TLSv1.2; {certificate}");
    let conf = format!(
        "{user}\nworker_processes 1;\ndaemon off;\npid {pid};\nerror_log {err} warn;\n\
         events {{ worker_connections 20000; }}\n\
         http {{\n  access_log off;\n  map $http_upgrade $connection_upgrade {{ default upgrade; '' ''; }}\n\
           upstream app {{ server 127.0.0.1:{}; keepalive 64; }}\n\
           upstream tunnel {{ server 127.0.0.1:{}; keepalive 64; }}\n\
           server {{ listen 127.0.0.1:{}; {app} }}\n\
           server {{ listen 127.0.0.1:{} {tls} {app} }}\n\
           server {{ listen 127.0.0.1:{}; {tunnel} }}\n\
           server {{ listen 127.0.0.1:{} {tls} {tunnel} }}\n\
           server {{ listen 127.0.0.1:{} {tls12} {app} }}\n\
           server {{ listen 127.0.0.1:{}; {forwarding} }}\n}}\n",
        p.app,
        p.tunnel,
        p.port,
        p.tls_port,
        p.tunnel_port,
        p.tunnel_tls_port,
        p.tls12_port,
        p.tunnel_forwarding_port,
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
