//! The Postgres store: the only module that writes SQL.
//!
//! Queries are checked at run time (`sqlx::query_as`), so building needs no
//! database. Migrations in `coordinator/migrations/` are embedded in the binary
//! and applied at start ([`Store::connect`]).

mod agents;
mod apps;
mod keys;
mod regions;
mod users;
mod workspaces;

pub use apps::ResolvedApp;
pub use regions::{RegionRow, RegionWithReplicas, ReplicaCheck};
pub use users::{Scope, UserRow, SESSION_LIFETIME};

use anyhow::Context;
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use std::time::Duration;

/// How long an API request waits for a database connection before answering 503.
pub const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(3);

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

#[derive(Clone, Debug)]
pub struct Store {
    pool: PgPool,
}

impl Store {
    /// Connects (retrying until `deadline` passes, for a Postgres that is
    /// still starting) and applies pending migrations.
    pub async fn connect(options: PgConnectOptions, pool_size: u32, deadline: Duration) -> anyhow::Result<Self> {
        let pool =
            PgPoolOptions::new().max_connections(pool_size).acquire_timeout(ACQUIRE_TIMEOUT).connect_lazy_with(options);
        let started = tokio::time::Instant::now();
        let mut delay = Duration::from_millis(100);
        loop {
            match MIGRATOR.run(&pool).await {
                Ok(()) => break,
                Err(sqlx::migrate::MigrateError::Execute(e)) if !refused(&e) && started.elapsed() < deadline => {
                    tracing::warn!(error = %e, "database not ready; retrying");
                }
                // The error's text already names its cause; its sources would repeat it.
                Err(sqlx::migrate::MigrateError::Execute(e)) => anyhow::bail!("cannot use the database: {e}"),
                Err(e) => return Err(e).context("cannot migrate the database"),
            }
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(Duration::from_secs(2));
        }
        Ok(Self { pool })
    }

    pub fn pool(&self) -> &PgPool {
        &self.pool
    }
}

/// Whether `e` is the server or TLS refusing us, which waiting does not change:
/// a certificate that does not verify, or authentication (SQLSTATE class 28,
/// e.g. no `pg_hba.conf` entry for a plain connection).
fn refused(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::Tls(_) => true,
        // A handshake that failed verification (sqlx reports it as I/O).
        sqlx::Error::Io(io) => io.kind() == std::io::ErrorKind::InvalidData,
        sqlx::Error::Database(db) => db.code().is_some_and(|c| c.starts_with("28")),
        _ => false,
    }
}

/// Whether `e` is a unique-constraint violation (SQLSTATE 23505).
fn is_unique_violation(e: &sqlx::Error) -> bool {
    matches!(e, sqlx::Error::Database(db) if db.code().as_deref() == Some("23505"))
}
