//! An embedded PostgreSQL cluster, run from the system's server binaries.
//!
//! Layout under the data directory: `postgres/` holds the cluster, `run/` its
//! Unix socket (the cluster listens on no TCP port), `postgres.log` its log.
//! The cluster is created on first use and reused afterwards. PostgreSQL
//! refuses to run as root, so when Meridian runs as root the server runs as the
//! unprivileged `postgres` user (created by Debian's package), which then owns
//! the data directory.

use anyhow::{bail, Context, Result};
use sqlx::postgres::PgConnectOptions;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// Database and superuser name inside the embedded cluster.
const DB_NAME: &str = "meridian";
/// Unprivileged account the server runs as when Meridian runs as root.
const RUN_AS: &str = "postgres";

const INSTALL_HINT: &str = "PostgreSQL server binaries (initdb, pg_ctl, postgres) not found: \
     install them with `apt-get install postgresql`, or pass --postgres-url";

/// Where PostgreSQL's server binaries live.
#[derive(Debug, Clone)]
pub struct PgBinaries {
    dir: PathBuf,
}

impl PgBinaries {
    /// `explicit` if given, else the newest `/usr/lib/postgresql/<v>/bin`
    /// (Debian's layout), else the directory of `initdb` on `PATH`.
    pub fn find(explicit: Option<&Path>) -> Result<Self> {
        if let Some(dir) = explicit {
            return Self::check(dir.to_path_buf()).context(INSTALL_HINT);
        }
        let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| {
                let v = e.file_name().to_str()?.parse::<u32>().ok()?;
                Some((v, e.path().join("bin")))
            })
            .collect();
        versions.sort();
        let on_path =
            std::env::var_os("PATH").map(|p| std::env::split_paths(&p).collect::<Vec<_>>()).unwrap_or_default();
        versions
            .into_iter()
            .rev()
            .map(|(_, dir)| dir)
            .chain(on_path)
            .find_map(|dir| Self::check(dir).ok())
            .context(INSTALL_HINT)
    }

    fn check(dir: PathBuf) -> Result<Self> {
        for bin in ["initdb", "pg_ctl", "postgres"] {
            if !dir.join(bin).is_file() {
                bail!("{} has no {bin}", dir.display());
            }
        }
        Ok(Self { dir })
    }

    fn bin(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }
}

/// A cluster in a data directory; [`EmbeddedPostgres::start`] runs it and
/// [`EmbeddedPostgres::stop`] (or drop) stops it.
#[derive(Debug)]
pub struct EmbeddedPostgres {
    bins: PgBinaries,
    root: PathBuf,
    run_as: Option<nix::unistd::User>,
    running: bool,
    /// Extra `-c name=value` server settings (see [`EmbeddedPostgres::set`]).
    settings: Vec<String>,
    /// The server's port: names its Unix socket, and its TCP port if it
    /// listens on one [default: 5432].
    port: u16,
}

impl EmbeddedPostgres {
    /// Prepares (but does not start) the cluster under `data_dir`.
    pub fn new(data_dir: &Path, bins: PgBinaries) -> Result<Self> {
        std::fs::create_dir_all(data_dir)
            .with_context(|| format!("cannot create data directory {}", data_dir.display()))?;
        let root =
            data_dir.canonicalize().with_context(|| format!("cannot resolve data directory {}", data_dir.display()))?;
        let run_as = if nix::unistd::geteuid().is_root() {
            let user = nix::unistd::User::from_name(RUN_AS).context("cannot look up the postgres user")?.with_context(
                || {
                    format!(
                        "running as root, the embedded PostgreSQL needs an unprivileged \
                         '{RUN_AS}' user: install the postgresql package or run Meridian as another user"
                    )
                },
            )?;
            check_reachable(&root, &user)?;
            Some(user)
        } else {
            None
        };
        Ok(Self { bins, root, run_as, running: false, settings: Vec::new(), port: 5432 })
    }

    fn cluster_dir(&self) -> PathBuf {
        self.root.join("postgres")
    }

    fn socket_dir(&self) -> PathBuf {
        self.root.join("run")
    }

    /// Connection options for the running cluster (Unix socket, trust auth).
    pub fn connect_options(&self) -> PgConnectOptions {
        PgConnectOptions::new().socket(self.socket_dir()).port(self.port).username(DB_NAME).database(DB_NAME)
    }

    /// The same as a URL, for `--postgres-url` of other processes.
    pub fn url(&self) -> String {
        format!("postgres://{DB_NAME}@localhost:{}/{DB_NAME}?host={}", self.port, self.socket_dir().display())
    }

    /// Adds a server setting for the next start, after the defaults (so it
    /// wins over them): tests serve TLS on a TCP port this way.
    pub fn set(&mut self, name: &str, value: &str) {
        self.settings.push(format!("-c {name}='{value}'"));
    }

    /// Sets the server's port (see `set` for listening on TCP).
    pub fn set_port(&mut self, port: u16) {
        self.port = port;
    }

    /// The Unix user the server runs as, when it is not this process's.
    pub fn server_user(&self) -> Option<&nix::unistd::User> {
        self.run_as.as_ref()
    }

    /// Creates the cluster if needed and starts it; waits until it accepts connections.
    pub fn start(&mut self) -> Result<()> {
        if !self.cluster_dir().join("PG_VERSION").exists() {
            self.init()?;
        }
        std::fs::create_dir_all(self.socket_dir())?;
        self.give_to_server_user(&self.socket_dir())?;
        // A cluster left running by a killed coordinator is stopped first, so
        // this process owns the one it runs.
        if self.pg_ctl(&["status"]).map(|s| s.success()).unwrap_or(false) {
            tracing::warn!("embedded PostgreSQL was left running; restarting it");
            self.pg_ctl(&["stop", "-m", "fast", "-w"])?;
        }
        let mut opts = format!(
            "-c listen_addresses='' -k {} -c unix_socket_permissions=0700 -p {}",
            self.socket_dir().display(),
            self.port
        );
        for setting in &self.settings {
            opts.push(' ');
            opts.push_str(setting);
        }
        let log = self.root.join("postgres.log");
        let status = self.pg_ctl(&[
            "start",
            "-w",
            "-t",
            "60",
            "-l",
            log.to_str().context("data directory path is not UTF-8")?,
            "-o",
            &opts,
        ])?;
        if !status.success() {
            bail!("embedded PostgreSQL did not start; see {}", log.display());
        }
        self.running = true;
        Ok(())
    }

    /// Stops the cluster (fast mode: open transactions roll back) and waits.
    pub fn stop(&mut self) -> Result<()> {
        if !self.running {
            return Ok(());
        }
        let status = self.pg_ctl(&["stop", "-m", "fast", "-w", "-t", "60"])?;
        self.running = false;
        if !status.success() {
            bail!("embedded PostgreSQL did not stop cleanly");
        }
        Ok(())
    }

    /// Stops the cluster even if another process started it (the demo's
    /// `stop-postgres` drill stops the coordinator's cluster this way).
    pub fn stop_started_elsewhere(&mut self) -> Result<()> {
        self.running = true;
        self.stop()
    }

    /// Starts the cluster for another process to use: dropping this handle
    /// leaves it running (the drill's heal gives it back to the coordinator).
    pub fn start_for_elsewhere(&mut self) -> Result<()> {
        self.start()?;
        self.running = false;
        Ok(())
    }

    fn init(&self) -> Result<()> {
        let dir = self.cluster_dir();
        std::fs::create_dir_all(&dir)?;
        self.give_to_server_user(&self.root)?;
        self.give_to_server_user(&dir)?;
        let out = self
            .server_command(&self.bins.bin("initdb"))
            .arg("-D")
            .arg(&dir)
            .args(["-U", DB_NAME, "-A", "trust", "-E", "UTF8", "--no-sync", "--no-instructions"])
            .output()
            .context("cannot run initdb")?;
        if !out.status.success() {
            bail!("initdb failed: {}", String::from_utf8_lossy(&out.stderr).trim());
        }
        // The default database is created when the cluster first starts (see
        // `ensure_database`); initdb only makes `postgres` and the templates.
        Ok(())
    }

    /// Creates the `meridian` database if it is missing.
    pub async fn ensure_database(&self) -> Result<()> {
        use sqlx::Connection;
        let mut conn = sqlx::PgConnection::connect_with(&self.connect_options().database("postgres"))
            .await
            .context("cannot connect to the embedded PostgreSQL")?;
        let exists: bool = sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)")
            .bind(DB_NAME)
            .fetch_one(&mut conn)
            .await?;
        if !exists {
            sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {DB_NAME}"))).execute(&mut conn).await?;
        }
        Ok(())
    }

    fn pg_ctl(&self, args: &[&str]) -> Result<std::process::ExitStatus> {
        self.server_command(&self.bins.bin("pg_ctl"))
            .arg("-D")
            .arg(self.cluster_dir())
            .args(args)
            .stdout(Stdio::null())
            .status()
            .context("cannot run pg_ctl")
    }

    fn server_command(&self, bin: &Path) -> Command {
        use std::os::unix::process::CommandExt;
        let mut cmd = Command::new(bin);
        if let Some(user) = &self.run_as {
            cmd.uid(user.uid.as_raw()).gid(user.gid.as_raw());
            cmd.env("HOME", &user.dir);
        }
        // The server's working directory must be readable by the user it runs as.
        cmd.current_dir(&self.root);
        cmd
    }

    fn give_to_server_user(&self, path: &Path) -> Result<()> {
        if let Some(user) = &self.run_as {
            std::os::unix::fs::chown(path, Some(user.uid.as_raw()), Some(user.gid.as_raw()))
                .with_context(|| format!("cannot hand {} to the {RUN_AS} user", path.display()))?;
        }
        Ok(())
    }
}

/// Fails with a clear message when `user` cannot enter some directory above
/// `dir` (e.g. a data directory under root's private home).
fn check_reachable(dir: &Path, user: &nix::unistd::User) -> Result<()> {
    use std::os::unix::fs::MetadataExt;
    for ancestor in dir.ancestors().skip(1) {
        let meta = std::fs::metadata(ancestor)?;
        let enterable = meta.mode() & 0o001 != 0
            || (meta.uid() == user.uid.as_raw() && meta.mode() & 0o100 != 0)
            || (meta.gid() == user.gid.as_raw() && meta.mode() & 0o010 != 0);
        if !enterable {
            bail!(
                "the embedded PostgreSQL runs as the unprivileged '{}' user, which cannot enter {}; \
                 choose a --data-dir it can reach (e.g. /var/lib/meridian)",
                user.name,
                ancestor.display()
            );
        }
    }
    Ok(())
}

impl Drop for EmbeddedPostgres {
    fn drop(&mut self) {
        if let Err(e) = self.stop() {
            tracing::error!("stopping embedded PostgreSQL: {e:#}");
        }
    }
}
