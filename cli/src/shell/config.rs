//! `meridian config-ssh`: one managed block in the SSH configuration, with
//! a `Host meridian.<workspace>` entry per workspace (and
//! `meridian.<workspace>.<agent>` per agent), whose `ProxyCommand` is
//! `meridian ssh --stdio`, and a known-hosts file of the agents' host keys as
//! the coordinator published them. Running it again rewrites the block and
//! the file in place (nothing else in the configuration changes), so it is
//! idempotent; a host key that changed since is refused by `ssh` until it runs again.

use crate::ops::Target;
use anyhow::{Context, Result};
use std::path::{Path, PathBuf};

const BEGIN: &str =
    "# ------------ START MERIDIAN (managed by `meridian config-ssh`; edits inside are replaced) ------------";
const END: &str = "# ------------ END MERIDIAN ------------";

pub async fn run(target: Target, ssh_config: Option<PathBuf>, dry_run: bool) -> Result<()> {
    let client = target.client()?;
    let me = client.me().await.context("cannot ask the coordinator who you are")?;
    let workspaces = client.workspaces(None).await?.workspaces;
    let config_path = match ssh_config {
        Some(p) => p,
        None => home()?.join(".ssh/config"),
    };
    let known_hosts = config_path.with_file_name("meridian_known_hosts");
    let exe = std::env::current_exe().context("cannot tell where this meridian binary is")?;
    let mut hosts = Vec::new();
    for ws in &workspaces {
        let single = ws.agents.len() == 1;
        for agent in &ws.agents {
            let target = format!("{}/{}.{}", me.username, ws.name, agent.name);
            let mut aliases = vec![format!("meridian.{}.{}", ws.name, agent.name)];
            if single {
                aliases.insert(0, format!("meridian.{}", ws.name));
            }
            hosts.push(Entry { aliases, target, host_key: agent.host_key.clone() });
        }
    }
    let block = block(&hosts, &exe, &known_hosts);
    let known = known_hosts_text(&hosts);
    if dry_run {
        print!("{block}");
        return Ok(());
    }
    let existing = match std::fs::read_to_string(&config_path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
        Err(e) => return Err(e).with_context(|| format!("cannot read {}", config_path.display())),
    };
    let updated = replace_block(&existing, &block);
    write(&known_hosts, &known)?;
    if updated != existing {
        write(&config_path, &updated)?;
    }
    let missing = hosts.iter().filter(|h| h.host_key.is_none()).count();
    println!(
        "Wrote {} host entr{} to {} (known hosts: {}).",
        hosts.len(),
        if hosts.len() == 1 { "y" } else { "ies" },
        config_path.display(),
        known_hosts.display()
    );
    if let Some(first) = hosts.first() {
        println!("Try: ssh {}", first.aliases[0]);
    }
    if missing > 0 {
        println!(
            "{missing} agent(s) have not published a host key yet (not started?): run config-ssh again once they have."
        );
    }
    Ok(())
}

struct Entry {
    aliases: Vec<String>,
    target: String,
    host_key: Option<String>,
}

fn home() -> Result<PathBuf> {
    std::env::var_os("HOME").map(PathBuf::from).context("HOME is not set: pass --ssh-config")
}

fn quote(p: &Path) -> String {
    format!("\"{}\"", p.display())
}

fn block(hosts: &[Entry], exe: &Path, known_hosts: &Path) -> String {
    let mut out = format!("{BEGIN}\n");
    for h in hosts {
        out += &format!("Host {}\n", h.aliases.join(" "));
        out += &format!("  ProxyCommand {} ssh --stdio {}\n", quote(exe), h.target);
        out += &format!("  HostKeyAlias {}\n", h.aliases.last().map_or("", String::as_str));
        out += &format!("  UserKnownHostsFile {}\n", quote(known_hosts));
        out += "  StrictHostKeyChecking yes\n  ConnectTimeout 0\n  LogLevel ERROR\n";
    }
    out + END + "\n"
}

fn known_hosts_text(hosts: &[Entry]) -> String {
    let mut out = String::from(
        "# Written by `meridian config-ssh`: the agents' SSH host keys as the coordinator published them.\n",
    );
    for h in hosts {
        if let (Some(key), Some(alias)) = (&h.host_key, h.aliases.last()) {
            out += &format!("{alias} {key}\n");
        }
    }
    out
}

/// `config` with the managed block replaced by `block` (or appended, after a blank line).
fn replace_block(config: &str, block: &str) -> String {
    match (config.find(BEGIN), config.find(END)) {
        (Some(start), Some(end)) if end > start => {
            let after = &config[end + END.len()..];
            let after = after.strip_prefix('\n').unwrap_or(after);
            format!("{}{block}{after}", &config[..start])
        }
        _ if config.is_empty() => block.to_owned(),
        _ => {
            let sep = if config.ends_with("\n\n") {
                ""
            } else if config.ends_with('\n') {
                "\n"
            } else {
                "\n\n"
            };
            format!("{config}{sep}{block}")
        }
    }
}

/// Writes `text` whole (temporary file, then rename), mode 0600, creating the directory (0700).
fn write(path: &Path, text: &str) -> Result<()> {
    use std::io::Write;
    use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
    if let Some(dir) = path.parent() {
        std::fs::DirBuilder::new().recursive(true).mode(0o700).create(dir)?;
    }
    let tmp = path.with_extension("meridian-tmp");
    let mut f = std::fs::OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(&tmp)?;
    f.write_all(text.as_bytes())?;
    f.sync_all()?;
    std::fs::rename(&tmp, path).with_context(|| format!("cannot write {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_block_is_replaced_in_place_and_nothing_else_changes() {
        let entry = |ws: &str| Entry {
            aliases: vec![format!("meridian.{ws}")],
            target: format!("alice/{ws}.main"),
            host_key: None,
        };
        let one = block(&[entry("dev")], Path::new("/bin/meridian"), Path::new("/h/.ssh/meridian_known_hosts"));
        let two = block(&[entry("dev"), entry("ci")], Path::new("/bin/meridian"), Path::new("/k"));
        let user = "Host github.com\n  User git\n";
        let first = replace_block(user, &one);
        assert!(first.starts_with(user) && first.ends_with(&one), "{first}");
        assert_eq!(replace_block(&first, &one), first, "not idempotent");
        let mut edited = first.clone();
        edited.push_str("Host after\n  User x\n");
        let second = replace_block(&edited, &two);
        assert!(
            second.starts_with(user) && second.contains(&two) && second.ends_with("Host after\n  User x\n"),
            "{second}"
        );
        assert_eq!(second.matches(BEGIN).count(), 1);
        assert_eq!(replace_block("", &one), one);
    }
}
