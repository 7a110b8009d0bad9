//! Where `meridian login` keeps the session for later commands: a JSON file
//! readable only by its owner, in `$MERIDIAN_CONFIG_DIR` (default
//! `~/.config/meridian`). `--url`/`--session-token` (or their environment
//! variables) override it. Beside it, `region.json`: the region the last
//! shell or port went through, per coordinator (kept until another is
//! clearly nearer: `meridian_regions::selection::nearest_first`).

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};
use std::path::PathBuf;

#[derive(Serialize, Deserialize)]
pub struct Stored {
    pub url: String,
    pub session_token: String,
}

fn path() -> Result<PathBuf> {
    Ok(dir()?.join("session.json"))
}

fn dir() -> Result<PathBuf> {
    Ok(match std::env::var_os("MERIDIAN_CONFIG_DIR") {
        Some(d) => PathBuf::from(d),
        None => std::env::var_os("XDG_CONFIG_HOME")
            .map(PathBuf::from)
            .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".config")))
            .context("set MERIDIAN_CONFIG_DIR (no HOME)")?
            .join("meridian"),
    })
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

/// The region chosen last time for streams through the coordinator at `url`.
pub fn last_region(url: &str) -> Option<String> {
    let bytes = std::fs::read(dir().ok()?.join("region.json")).ok()?;
    let choices: std::collections::BTreeMap<String, String> = serde_json::from_slice(&bytes).ok()?;
    choices.get(url).cloned()
}

/// Remembers `region` as the choice for `url` (best effort: a choice not
/// kept only means the next run measures afresh).
pub fn remember_region(url: &str, region: &str) {
    let Ok(dir) = dir() else { return };
    let path = dir.join("region.json");
    let mut choices: std::collections::BTreeMap<String, String> =
        std::fs::read(&path).ok().and_then(|b| serde_json::from_slice(&b).ok()).unwrap_or_default();
    if choices.get(url).map(String::as_str) == Some(region) {
        return;
    }
    choices.insert(url.to_owned(), region.to_owned());
    let tmp = path.with_extension("json.tmp");
    let written = std::fs::create_dir_all(&dir)
        .and_then(|()| std::fs::write(&tmp, serde_json::to_vec_pretty(&choices).unwrap_or_default()))
        .and_then(|()| std::fs::rename(&tmp, &path));
    if let Err(e) = written {
        tracing::debug!(path = %path.display(), "cannot remember the region chosen: {e}");
    }
}
