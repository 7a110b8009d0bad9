//! The end-to-end harness: a PostgreSQL cluster per test, `meridian`
//! processes on ephemeral loopback ports, an admin API client, and bounded
//! polling in place of sleeps.
//!
//! - [`mesh`]: one builder for the usual world (Postgres, coordinator, users,
//!   regions and replicas, a workspace and its agent);
//! - [`processes`]: the processes a test starts; [`api`]: the coordinator's API;
//!   [`clients`]: browsers and raw clients; [`traffic`]: steady traffic;
//!   [`observe`]: metrics and the sample app's counts; [`commands`]: bounded child commands.

#![allow(dead_code)]

mod api;
mod clients;
mod commands;
mod mesh;
mod observe;
mod processes;
mod traffic;

pub use api::*;
pub use clients::*;
pub use commands::*;
pub use mesh::*;
pub use observe::*;
pub use processes::*;
pub use traffic::*;

use meridian_coordinator::embedded_postgres::{EmbeddedPostgres, PgBinaries};
use meridian_regions::ready::Ready;
use serde_json::{json, Value};
use std::future::Future;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

pub const BIN: &str = env!("CARGO_BIN_EXE_meridian");

pub const ADMIN_PASSWORD: &str = "admin-password";

/// Polls `f` until it returns `Some`, at most `deadline`; panics naming `what`.
pub async fn wait_for<T, F, Fut>(deadline: Duration, what: &str, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let start = Instant::now();
    loop {
        // An attempt that hangs is bounded by what is left of the deadline too.
        let left = deadline.saturating_sub(start.elapsed());
        match tokio::time::timeout(left, f()).await {
            Ok(Some(v)) => return v,
            Ok(None) => {}
            Err(_) => panic!("timed out after {deadline:?} waiting for {what} (an attempt hung)"),
        }
        assert!(start.elapsed() < deadline, "timed out after {deadline:?} waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The test API clients' bound on one call: no test waits forever on a
/// coordinator that stopped answering.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(60);

/// A test's directory (its processes' logs, data and sockets), deleted when
/// the test ends unless `MERIDIAN_E2E_KEEP` is set (to read a failure's logs).
pub fn tempdir() -> tempfile::TempDir {
    let keep = std::env::var_os("MERIDIAN_E2E_KEEP").is_some();
    tempfile::Builder::new().prefix("meridian-e2e").disable_cleanup(keep).tempdir().unwrap()
}

#[tokio::test]
#[should_panic(expected = "an attempt hung")]
async fn wait_for_bounds_an_attempt_that_hangs() {
    wait_for(Duration::from_millis(200), "an answer that never comes", std::future::pending::<Option<()>>).await;
}
