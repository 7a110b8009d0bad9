//! The Postgres store: the only module that writes SQL.
//!
//! Queries are checked at run time (`sqlx::query_as`), so building needs no
//! database. Migrations in `coordinator/migrations/` are embedded in the binary
//! and applied at start ([`Store::connect`]). They only expand the schema
//! (`coordinator/migrations/README.md`): a replica of the previous release
//! keeps working on it during a rolling upgrade, and one that restarts then
//! starts, skipping the migrations it does not know.

mod access;
mod agents;
mod apps;
mod audit;
mod connections;
mod keys;
mod oidc;
mod regions;
mod users;
mod workspaces;

pub use apps::ResolvedApp;
pub use audit::{AuditRecord, MAX_PAGE as MAX_AUDIT_PAGE};
pub use connections::MAX_PAGE as MAX_CONNECTION_PAGE;
pub use oidc::{StoredFlow, NO_PASSWORD};
pub use regions::{RegionRow, RegionWithReplicas, ReplicaCheck};
pub use users::{Scope, UserRow, SESSION_LIFETIME};

use anyhow::Context;
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use std::time::Duration;

/// How long an API request waits for a database connection before answering 503.
pub const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(3);

/// The embedded migrations. `ignore_missing`: a database that a newer release
/// already migrated further is used as it is (expand-only migrations keep it
/// readable by this release); sqlx would otherwise refuse to start.
static MIGRATOR: sqlx::migrate::Migrator =
    sqlx::migrate::Migrator { ignore_missing: true, ..sqlx::migrate!("./migrations") };

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

#[cfg(test)]
mod tests {
    /// Whether `sql` (one statement, comments removed) takes away something a
    /// previous release may use (see `migrations/README.md`).
    fn contracts(sql: &str) -> bool {
        let s = sql.split_whitespace().collect::<Vec<_>>().join(" ").to_ascii_uppercase();
        let alters_column = s.contains("ALTER COLUMN") && (s.contains(" TYPE ") || s.contains("SET NOT NULL"));
        let required_column = s.contains("ADD COLUMN") && s.contains("NOT NULL") && !s.contains("DEFAULT");
        s.contains("DROP ") || s.contains(" RENAME ") || alters_column || required_column
    }

    #[test]
    fn what_contracts_a_schema() {
        for (sql, expected) in [
            ("ALTER TABLE a ADD COLUMN b text", false),
            ("ALTER TABLE a ADD COLUMN b bigint NOT NULL DEFAULT 0", false),
            ("CREATE TABLE a (id uuid PRIMARY KEY, b text NOT NULL)", false),
            ("CREATE INDEX a_b ON a (b)", false),
            ("ALTER TABLE a ADD COLUMN b text NOT NULL", true),
            ("ALTER TABLE a DROP COLUMN b", true),
            ("DROP TABLE a", true),
            ("ALTER TABLE a RENAME COLUMN b TO c", true),
            ("ALTER TABLE a ALTER COLUMN b TYPE bigint", true),
            ("alter table a alter column b set not null", true),
        ] {
            assert_eq!(contracts(sql), expected, "{sql}");
        }
    }

    /// A column a later release adds changes the result type of a prepared
    /// select of every column (`*`), which Postgres then refuses ("cached plan must not change
    /// result type"): this release's statements name their columns.
    #[test]
    fn statements_name_their_columns() {
        let sources = [
            ("store.rs", include_str!("store.rs")),
            ("access.rs", include_str!("store/access.rs")),
            ("agents.rs", include_str!("store/agents.rs")),
            ("apps.rs", include_str!("store/apps.rs")),
            ("audit.rs", include_str!("store/audit.rs")),
            ("connections.rs", include_str!("store/connections.rs")),
            ("keys.rs", include_str!("store/keys.rs")),
            ("oidc.rs", include_str!("store/oidc.rs")),
            ("regions.rs", include_str!("store/regions.rs")),
            ("users.rs", include_str!("store/users.rs")),
            ("workspaces.rs", include_str!("store/workspaces.rs")),
        ];
        let star = ["SELECT", " *"].concat();
        let returning = ["RETURNING", " *"].concat();
        for (file, text) in sources {
            assert!(!text.contains(&star) && !text.contains(&returning), "{file} selects `*`");
        }
    }

    #[test]
    fn migrations_only_expand() {
        for m in super::MIGRATOR.iter() {
            for statement in m.sql.as_ref().split(';') {
                let marked = statement.contains("-- contract:");
                let code: String =
                    statement.lines().map(|l| l.split("--").next().unwrap_or("")).collect::<Vec<_>>().join("\n");
                assert!(
                    marked || !contracts(&code),
                    "migration {} ({}) contracts the schema without a `-- contract:` note; \
                     see coordinator/migrations/README.md:\n{}",
                    m.version,
                    m.description,
                    statement.trim()
                );
            }
        }
    }
}
