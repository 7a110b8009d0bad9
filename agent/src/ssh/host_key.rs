//! The agent's host key: Ed25519, made once and kept in a file (OpenSSH's
//! private key format, mode 0600), so clients that pinned it (the known-hosts
//! file `meridian config-ssh` writes) recognise the agent across restarts.

use russh::keys::ssh_key::private::{Ed25519Keypair, KeypairData};
use russh::keys::ssh_key::LineEnding;
use russh::keys::PrivateKey;
use std::path::Path;

/// Reads the host key at `path`, or makes one and writes it there.
pub fn load_or_create(path: &Path) -> Result<PrivateKey, String> {
    match std::fs::read_to_string(path) {
        Ok(text) => PrivateKey::from_openssh(text.trim())
            .map_err(|e| format!("{}: not an OpenSSH private key: {e}", path.display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => create(path),
        Err(e) => Err(format!("{}: {e}", path.display())),
    }
}

/// The host key `file` names, or (for the default place, when there is none
/// or it cannot be used) one for this run only, said in a warning: clients
/// that pinned the key see it change when the agent restarts.
pub fn for_config(file: &crate::config::HostKeyFile) -> Result<PrivateKey, String> {
    use crate::config::HostKeyFile;
    match file {
        HostKeyFile::Given(path) => load_or_create(path),
        HostKeyFile::Default(Some(path)) => load_or_create(path).or_else(|e| {
            tracing::warn!(error = %e, "cannot keep the SSH host key; using one for this run only (set --host-key-file)");
            generate()
        }),
        HostKeyFile::Default(None) => {
            tracing::warn!("no place to keep the SSH host key (no HOME); using one for this run only (set --host-key-file)");
            generate()
        }
    }
}

/// A new Ed25519 host key.
fn generate() -> Result<PrivateKey, String> {
    use rand::Rng;
    let seed: [u8; 32] = rand::rng().random();
    PrivateKey::new(KeypairData::Ed25519(Ed25519Keypair::from_seed(&seed)), "meridian-agent")
        .map_err(|e| format!("cannot make a host key: {e}"))
}

fn create(path: &Path) -> Result<PrivateKey, String> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let key = generate()?;
    let text = key.to_openssh(LineEnding::LF).map_err(|e| format!("cannot encode the host key: {e}"))?;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    }
    // Written whole under a temporary name, then renamed: a crash never leaves half a key.
    let tmp = path.with_extension("tmp");
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(|e| format!("{}: {e}", tmp.display()))?;
    file.write_all(text.as_bytes()).and_then(|()| file.sync_all()).map_err(|e| format!("{}: {e}", tmp.display()))?;
    std::fs::rename(&tmp, path).map_err(|e| format!("{}: {e}", path.display()))?;
    tracing::info!(path = %path.display(), "made a new SSH host key");
    Ok(key)
}

/// The public half in OpenSSH's one-line form (`ssh-ed25519 AAAA…`), without a comment.
pub fn public_line(key: &PrivateKey) -> String {
    let mut public = key.public_key().clone();
    public.set_comment("");
    public.to_openssh().unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_host_key_is_made_once_and_read_back_the_same() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keys/ssh_host_ed25519_key");
        let made = load_or_create(&path).unwrap();
        let again = load_or_create(&path).unwrap();
        assert_eq!(public_line(&made), public_line(&again));
        assert!(public_line(&made).starts_with("ssh-ed25519 "), "{}", public_line(&made));
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
        std::fs::write(&path, "not a key").unwrap();
        assert!(load_or_create(&path).unwrap_err().contains("not an OpenSSH private key"));
    }
}
