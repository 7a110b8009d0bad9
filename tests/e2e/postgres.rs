//! Production Postgres: `--postgres-url` over TLS verified against a CA
//! (`sslmode=verify-full`), the pool size, and refusals that say why.

use crate::support::*;
use meridian_coordinator::embedded_postgres::{EmbeddedPostgres, PgBinaries};
use std::time::Duration;

/// A PostgreSQL server on a TCP port that accepts only TLS connections, with
/// a server certificate for `localhost` signed by its own CA.
struct TlsPostgres {
    pg: EmbeddedPostgres,
    port: u16,
    ca: std::path::PathBuf,
    _dir: tempfile::TempDir,
}

impl TlsPostgres {
    async fn start() -> Self {
        let dir = tempdir();
        // The server (the `postgres` user when tests run as root) reads these.
        std::fs::set_permissions(dir.path(), std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
        let ca = test_ca("Postgres test CA");
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec!["localhost".into()]).unwrap().signed_by(&key, &ca).unwrap();
        let files = dir.path().join("server");
        std::fs::create_dir(&files).unwrap();
        let (ca_pem, cert_pem, key_pem, hba) =
            (files.join("ca.pem"), files.join("server.crt"), files.join("server.key"), files.join("pg_hba.conf"));
        std::fs::write(&ca_pem, ca.pem()).unwrap();
        std::fs::write(&cert_pem, cert.pem()).unwrap();
        std::fs::write(&key_pem, key.serialize_pem()).unwrap();
        // TCP connections must use TLS; the Unix socket (the test's own) may not.
        std::fs::write(
            &hba,
            "local all all trust\nhostssl all all 127.0.0.1/32 trust\nhostnossl all all 127.0.0.1/32 reject\n",
        )
        .unwrap();
        let mut pg = EmbeddedPostgres::new(&dir.path().join("data"), PgBinaries::find(None).unwrap()).unwrap();
        if let Some(user) = pg.server_user() {
            for f in [&files, &ca_pem, &cert_pem, &key_pem, &hba] {
                nix::unistd::chown(f.as_path(), Some(user.uid), Some(user.gid)).unwrap();
            }
        }
        std::fs::set_permissions(&key_pem, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
        pg.set("listen_addresses", "127.0.0.1");
        pg.set("ssl", "on");
        pg.set("ssl_cert_file", cert_pem.to_str().unwrap());
        pg.set("ssl_key_file", key_pem.to_str().unwrap());
        pg.set("hba_file", hba.to_str().unwrap());
        // PostgreSQL cannot listen on port 0 and report the port: the one
        // process here that takes a port the kernel just freed, so one that
        // another process took meanwhile means trying again (bounded).
        let mut port = 0;
        for attempt in 1..=5 {
            port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
            pg.set_port(port);
            match tokio::task::block_in_place(|| pg.start()) {
                Ok(()) => break,
                Err(e) if attempt < 5 => eprintln!("PostgreSQL on port {port}: {e:#}; another port"),
                Err(e) => panic!("PostgreSQL would not start: {e:#}"),
            }
        }
        pg.ensure_database().await.unwrap();
        Self { pg, port, ca: ca_pem, _dir: dir }
    }

    fn url(&self, query: &str) -> String {
        format!("postgres://meridian@localhost:{}/meridian{query}", self.port)
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn the_coordinator_uses_postgres_over_verified_tls_with_a_bounded_pool() {
    let dir = tempdir();
    let pg = TlsPostgres::start().await;
    let ca = pg.ca.to_str().unwrap();
    let mut args = Coordinator::args(dir.path(), &pg.url(""), "10s");
    args.extend(["--postgres-ca-cert", ca, "--postgres-pool-size", "3"].map(str::to_owned));
    let coord = Coordinator::start_with(dir.path(), args).await;
    let admin = coord.admin().await;
    // A burst of concurrent requests that each need the database.
    let burst = (0..40).map(|_| admin.get("/api/v2/regions"));
    for reply in futures_util::future::join_all(burst).await {
        assert_eq!(reply.status, 200, "{}", reply.body);
    }
    // From the server's side: every connection over TCP is TLS, and there are
    // at most the pool's size of them.
    use sqlx::Connection;
    let mut conn = sqlx::PgConnection::connect_with(&pg.pg.connect_options()).await.unwrap();
    let (tcp, tls): (i64, i64) = sqlx::query_as(
        "SELECT count(*), count(*) FILTER (WHERE s.ssl) FROM pg_stat_activity a JOIN pg_stat_ssl s USING (pid) \
         WHERE a.client_addr IS NOT NULL AND a.datname = 'meridian'",
    )
    .fetch_one(&mut conn)
    .await
    .unwrap();
    assert!((1..=3).contains(&tcp), "{tcp} TCP connections from a pool of 3");
    assert_eq!(tls, tcp, "every connection is TLS");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_postgres_that_cannot_be_verified_or_refuses_plain_connections_is_one_clear_line() {
    let dir = tempdir();
    let pg = TlsPostgres::start().await;
    // Another CA: the server's certificate does not verify.
    let other = test_ca("Another CA");
    let other_pem = dir.path().join("other-ca.pem");
    std::fs::write(&other_pem, other.pem()).unwrap();
    let cases = [
        (pg.url(""), vec!["--postgres-ca-cert".to_owned(), other_pem.display().to_string()], "certificate"),
        // Without TLS the server's pg_hba.conf refuses the connection.
        (pg.url("?sslmode=disable"), vec![], "no encryption"),
    ];
    for (url, extra, says) in cases {
        let mut args = Coordinator::args(dir.path(), &url, "10s");
        args.extend(extra.iter().cloned());
        let mut proc = Process::spawn("coordinator", dir.path(), &args);
        // Refused, not retried for the 30 s a starting database gets.
        let status = proc.wait_exit(Duration::from_secs(10)).await;
        assert!(!status.success());
        let out = proc.output();
        assert!(out.contains(says), "{url} {extra:?}: expected {says:?} in\n{out}");
    }
}
