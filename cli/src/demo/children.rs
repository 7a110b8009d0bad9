//! The demo's child processes: started from this binary, each in its own
//! process group, remembered by name so a drill can kill and restart them,
//! and stopped in reverse order of start.

use anyhow::{Context, Result};
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Lines of a child's log shown when it dies during the demo's start.
const LOG_TAIL: usize = 10;

/// How to (re)start one child.
#[derive(Clone)]
pub struct Spec {
    pub name: String,
    pub args: Vec<String>,
    /// An environment variable carrying a secret: never on the command line,
    /// where any local user could read it.
    pub secret: Option<(&'static str, String)>,
}

impl Spec {
    /// A proxy's `http://` listener (`--listen`), where its `/metrics` answers.
    fn metrics_url(&self) -> Option<String> {
        if self.args.first().map(String::as_str) != Some("proxy") {
            return None;
        }
        let at = self.args.iter().position(|a| a == "--listen")?;
        Some(format!("http://{}", self.args.get(at + 1)?))
    }
}

pub struct Children {
    dir: PathBuf,
    /// This binary, resolved once: a rebuild while the demo runs unlinks the
    /// running file, and restarts then use the new one at the same path.
    exe: PathBuf,
    running: Vec<(Spec, Option<Child>)>,
}

impl Children {
    pub fn new(dir: PathBuf) -> Result<Self> {
        let exe = std::env::current_exe()?;
        let exe = exe.to_str().and_then(|s| s.strip_suffix(" (deleted)")).map(PathBuf::from).unwrap_or(exe);
        Ok(Self { dir, exe, running: Vec::new() })
    }

    pub fn spawn(&mut self, spec: Spec) -> Result<()> {
        let child = self.start(&spec)?;
        self.running.push((spec, Some(child)));
        Ok(())
    }

    /// Where child `name` reports what it bound (its `--ready-file`).
    pub fn ready_file(&self, name: &str) -> PathBuf {
        self.dir.join(format!("{name}.ready.json"))
    }

    /// Pins child `name`'s listeners to the addresses it bound (`ready`), so a
    /// restart binds the same ones and the links and URLs naming them stay right.
    pub fn pin(&mut self, name: &str, ready: &meridian_regions::ready::Ready) -> Result<()> {
        let (spec, _) =
            self.running.iter_mut().find(|(s, _)| s.name == name).with_context(|| format!("no child {name}"))?;
        ready.pin(&mut spec.args);
        Ok(())
    }

    fn start(&self, spec: &Spec) -> Result<Child> {
        // A report left by an earlier run must not pass for this one's.
        let _ = std::fs::remove_file(self.ready_file(&spec.name));
        let log =
            std::fs::OpenOptions::new().create(true).append(true).open(self.dir.join(format!("{}.log", spec.name)))?;
        let mut cmd = Command::new(&self.exe);
        if let Some((var, value)) = &spec.secret {
            cmd.env(var, value);
        }
        cmd.args(&spec.args)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            // Its own process group: Ctrl-C reaches the demo only, which stops children in order.
            .process_group(0)
            .spawn()
            .with_context(|| format!("cannot start {}", spec.name))
    }

    /// SIGKILLs child `name` (as a crash would) and reaps it.
    pub fn kill(&mut self, name: &str) -> Result<()> {
        let (_, child) =
            self.running.iter_mut().find(|(s, _)| s.name == name).with_context(|| format!("no child {name}"))?;
        if let Some(mut c) = child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        Ok(())
    }

    /// SIGTERMs child `name` (a graceful stop: it drains and deregisters) and
    /// waits up to `grace` for it to exit, then kills it.
    pub fn terminate(&mut self, name: &str, grace: Duration) -> Result<()> {
        let (_, child) =
            self.running.iter_mut().find(|(s, _)| s.name == name).with_context(|| format!("no child {name}"))?;
        if let Some(mut c) = child.take() {
            stop(name, &mut c, grace);
        }
        Ok(())
    }

    /// Each child's name and process id (`None` while it is stopped).
    pub fn pids(&self) -> Vec<(String, Option<u32>, Option<String>)> {
        self.running.iter().map(|(s, c)| (s.name.clone(), c.as_ref().map(Child::id), s.metrics_url())).collect()
    }

    /// Where the children's logs are (`<name>.log`).
    pub fn dir(&self) -> &std::path::Path {
        &self.dir
    }

    /// Fails naming the first child that was started and has since exited,
    /// with its exit status and the end of its log.
    pub fn check_running(&mut self) -> Result<()> {
        for (spec, child) in &mut self.running {
            let Some(status) = child.as_mut().and_then(|c| c.try_wait().ok().flatten()) else { continue };
            let log = std::fs::read_to_string(self.dir.join(format!("{}.log", spec.name))).unwrap_or_default();
            let lines: Vec<&str> = log.lines().collect();
            let tail = lines[lines.len().saturating_sub(LOG_TAIL)..].join("\n");
            anyhow::bail!("{} exited ({status}); the end of its log:\n{tail}", spec.name);
        }
        Ok(())
    }

    /// Starts child `name` again with the same arguments, if it is not running.
    pub fn restart(&mut self, name: &str) -> Result<()> {
        let i = self.running.iter().position(|(s, _)| s.name == name).with_context(|| format!("no child {name}"))?;
        if self.running[i].1.is_none() {
            let child = self.start(&self.running[i].0)?;
            self.running[i].1 = Some(child);
        }
        Ok(())
    }
}

impl Drop for Children {
    fn drop(&mut self) {
        self.stop_all();
    }
}

impl Children {
    /// SIGTERMs every child, last started first, each given 20 s to exit.
    pub fn stop_all(&mut self) {
        for (spec, child) in self.running.iter_mut().rev() {
            if let Some(child) = child {
                stop(&spec.name, child, Duration::from_secs(20));
            }
        }
        self.running.clear();
    }
}

/// SIGTERMs `child`, waits up to `grace` for it to exit, then kills it.
fn stop(name: &str, child: &mut Child, grace: Duration) {
    let pid = nix::unistd::Pid::from_raw(child.id() as i32);
    let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
    let deadline = Instant::now() + grace;
    while Instant::now() < deadline && matches!(child.try_wait(), Ok(None)) {
        std::thread::sleep(Duration::from_millis(50));
    }
    if matches!(child.try_wait(), Ok(None)) {
        eprintln!("{name} did not stop; killing it");
        let _ = child.kill();
    }
    let _ = child.wait();
}
