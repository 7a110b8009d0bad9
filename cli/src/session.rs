//! Where `meridian login` keeps the session for later commands: a JSON file
//! readable only by its owner, in `$MERIDIAN_CONFIG_DIR` (default
//! `~/.config/meridian`). `--url`/`--session-token` (or their environment
//! variables) override it.

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};
use std::path::PathBuf;

#[derive(Serialize, Deserialize)]
pub struct Stored {
    pub url: String,
    pub session_token: String,
}

fn path() -> Result<PathBuf> {
    let dir = match std::env::var_os("MERIDIAN_CONFIG_DIR") {
        Some(d) => PathBuf::from(d),
        None => std::env::var_os("XDG_CONFIG_HOME")
            .map(PathBuf::from)
            .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".config")))
            .context("set MERIDIAN_CONFIG_DIR (no HOME)")?
            .join("meridian"),
    };
    Ok(dir.join("session.json"))
}

pub fn save(stored: &Stored) -> Result<PathBuf> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let path = path()?;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&path)
        .with_context(|| format!("cannot write {}", path.display()))?;
    f.write_all(&serde_json::to_vec_pretty(stored)?)?;
    Ok(path)
}

pub fn load() -> Result<Option<Stored>> {
    let path = path()?;
    match std::fs::read(&path) {
        Ok(bytes) => Ok(Some(
            serde_json::from_slice(&bytes)
                .with_context(|| format!("{} is corrupt; run meridian login", path.display()))?,
        )),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e).with_context(|| format!("cannot read {}", path.display())),
    }
}
