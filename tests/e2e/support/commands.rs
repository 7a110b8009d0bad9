//! Child commands bounded in time (node, the CLI, buildah, kubectl).

use super::*;

/// Runs `cmd` to its end, at most `limit` (its output goes to files, so a
/// chatty child never blocks on a full pipe); past that it is killed and the
/// test fails naming `what` with what it printed.
pub fn output_within(cmd: &mut Command, limit: Duration, what: &str) -> std::process::Output {
    let dir = tempdir();
    let (out, err) = (dir.path().join("stdout"), dir.path().join("stderr"));
    let file = |p: &Path| std::fs::File::create(p).unwrap();
    let mut child = cmd
        .stdout(file(&out))
        .stderr(file(&err))
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {what} ({e}): run scripts/install-deps --tests"));
    let start = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if start.elapsed() >= limit {
            let _ = child.kill();
            let _ = child.wait();
            let printed = String::from_utf8_lossy(&std::fs::read(&out).unwrap_or_default()).into_owned()
                + &String::from_utf8_lossy(&std::fs::read(&err).unwrap_or_default());
            panic!("{what} ran past {limit:?} and was killed:\n{printed}");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    std::process::Output { status, stdout: std::fs::read(&out).unwrap(), stderr: std::fs::read(&err).unwrap() }
}

#[test]
#[should_panic(expected = "sleep ran past 500ms and was killed")]
fn a_child_running_past_its_limit_is_killed_and_named() {
    output_within(Command::new("sleep").arg("30"), Duration::from_millis(500), "sleep");
}
