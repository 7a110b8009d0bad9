//! Signing in through the company's identity provider: a real OpenID provider
//! (`tests/browser/oidc-provider.mjs`, the certified `oidc-provider` package)
//! and Chromium (`tests/browser/oidc.js`). A user is created at their first
//! sign-in, their role follows their groups, each broken ID token, a replayed
//! state and each user the policy keeps out get a page saying why, and one
//! who left the allowed groups is suspended; with the provider down its
//! sign-in is a 503 naming it while password sign-in still works.

use crate::support::*;
use serde_json::{json, Value};
use std::io::BufRead;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

const CLIENT_ID: &str = "meridian";
const PROVIDER_NAME: &str = "Test IdP";

/// The provider's process, stopped when dropped.
struct Provider {
    child: std::process::Child,
    issuer: String,
}

impl Drop for Provider {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn browser_dir() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/browser")
}

/// Starts the provider with the accounts file `accounts`; its issuer once it listens.
async fn provider(dir: &Path, accounts: &Path) -> Provider {
    std::fs::write(accounts, "{}").unwrap();
    let mut node = Command::new("node");
    node.current_dir(browser_dir())
        .arg("oidc-provider.mjs")
        .env("OIDC_CLIENT_ID", CLIENT_ID)
        .env("OIDC_CLIENT_SECRET", "provider-client-secret")
        .env("OIDC_ACCOUNTS", accounts)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(dir.join("provider.log")).unwrap());
    let mut child = node.spawn().expect("node runs (scripts/install-deps --tests)");
    let stdout = child.stdout.take().unwrap();
    let line = tokio::task::spawn_blocking(move || {
        let mut line = String::new();
        std::io::BufReader::new(stdout).read_line(&mut line).map(|_| line)
    });
    let line =
        tokio::time::timeout(Duration::from_secs(30), line).await.expect("the provider listens").unwrap().unwrap();
    let issuer = serde_json::from_str::<Value>(&line).unwrap_or_else(|_| panic!("provider said {line:?}"))["issuer"]
        .as_str()
        .unwrap()
        .to_owned();
    Provider { child, issuer }
}

async fn control(issuer: &str, body: Value) {
    let resp = bounded_client().post(format!("{issuer}/__control")).json(&body).send().await.unwrap();
    assert_eq!(resp.status(), 204);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn users_sign_in_through_the_identity_provider_and_its_groups_decide_their_role() {
    let dir = tempdir();
    let accounts = dir.path().join("accounts.json");
    let mut idp = provider(dir.path(), &accounts).await;
    let secret = dir.path().join("client-secret");
    std::fs::write(&secret, "provider-client-secret\n").unwrap();
    let secret = secret.display().to_string();
    let m = Mesh::builder()
        .coordinator_args(&[
            "--oidc-issuer-url",
            &idp.issuer,
            "--oidc-client-id",
            CLIENT_ID,
            "--oidc-client-secret-file",
            &secret,
            "--oidc-scopes",
            "openid,profile,email,groups,offline_access",
            "--oidc-refresh-interval",
            "1s",
            "--oidc-admin-groups",
            "meridian-admins",
            "--oidc-allowed-groups",
            "engineering",
            "--oidc-allowed-email-domains",
            "example.com",
            "--oidc-provider-name",
            PROVIDER_NAME,
        ])
        .region("sydney")
        .workspace(|app| json!([{"slug": "code", "port": app, "share": "authenticated"}]))
        .agent_on("sydney")
        .start()
        .await;
    let coordinator = m.coord.url.trim_end_matches('/').to_owned();
    control(&idp.issuer, json!({"redirect_uri": format!("{coordinator}/api/v2/users/oidc/callback")})).await;

    let info = json!({
        "coordinator": coordinator,
        "app_url": format!("http://code--main--dev--admin.sydney.localhost:{}/", m.proxy("sydney").port),
        "control_url": idp.issuer,
        "accounts": accounts,
    });
    let mut node = Command::new("node");
    node.current_dir(browser_dir()).arg("oidc.js").arg(info.to_string());
    let out = output_within(&mut node, Duration::from_secs(240), "node oidc.js");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "the browser: {stdout}{}\n---- provider ----\n{}",
        String::from_utf8_lossy(&out.stderr),
        std::fs::read_to_string(dir.path().join("provider.log")).unwrap_or_default()
    );
    eprintln!("the browser saw: {stdout}");

    // Alice was made at her first sign-in, linked to the provider, and is
    // suspended now that she left the allowed group.
    let users = m.admin.get("/api/v2/users").await.expect_status(200);
    let alice: Vec<&Value> = users["users"].as_array().unwrap().iter().filter(|u| u["username"] == "alice").collect();
    assert_eq!(alice.len(), 1, "{users}");
    assert_eq!((alice[0]["login_type"].as_str(), alice[0]["status"].as_str()), (Some("oidc"), Some("suspended")));
    assert!(!users.to_string().contains("mallory") && !users.to_string().contains("carol"), "{users}");
    let audit = m.admin.every_page("/api/v2/audit-log", "target=alice").await;
    let by_provider: Vec<&str> =
        audit.iter().filter(|r| r["actor"] == "identity provider").filter_map(|r| r["action"].as_str()).collect();
    assert_eq!(by_provider, ["user.suspend", "user.update", "user.create"], "{audit:#?}");
    // Alice has no password to guess.
    let guess = Api::anonymous(&m.coord.url)
        .post("/api/v2/users/login", json!({"username": "alice", "password": "!oidc"}))
        .await;
    assert_eq!(guess.status, 401);

    // The CLI signs in through the browser (dave, allowed).
    let dave = json!({"dave": {"email": "dave@example.com", "groups": ["engineering"]}});
    std::fs::write(&accounts, dave.to_string()).unwrap();
    cli_signs_in_through_the_browser(&m, dir.path()).await;

    // Dave is disabled at the provider: it refuses his refresh token, and he
    // is suspended within a few refresh intervals (1 s here).
    control(&idp.issuer, json!({"refuse_refresh": true})).await;
    let suspended = wait_for(Duration::from_secs(20), "dave suspended", || async {
        let users = m.admin.get("/api/v2/users").await.expect_status(200);
        let dave = users["users"].as_array()?.iter().find(|u| u["username"] == "dave")?.clone();
        (dave["status"] == "suspended").then_some(dave)
    })
    .await;
    assert_eq!(suspended["sessions"], 0, "{suspended}");
    let audit = m.admin.every_page("/api/v2/audit-log", "target=dave&action=user.suspend").await;
    assert!(audit[0]["changes"]["why"][1].as_str().unwrap_or_default().contains("refused to refresh"), "{audit:#?}");

    // The provider down: its sign-in is a 503 naming it; passwords still work.
    let _ = idp.child.kill();
    let _ = idp.child.wait();
    let resp = bounded_client().get(format!("{coordinator}/api/v2/users/oidc/login")).send().await.unwrap();
    assert_eq!(resp.status(), 503);
    let page = resp.text().await.unwrap();
    assert!(page.contains(PROVIDER_NAME) && page.contains(&idp.issuer), "{page}");
    Api::login(&m.coord.url, "admin", ADMIN_PASSWORD).await;
}

/// With `--disable-password-auth` the sign-in page offers the provider only
/// and the API refuses passwords, naming why; the first admin of a fresh
/// install is still made with a password.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn password_sign_in_can_be_disabled() {
    let dir = tempdir();
    let pg = Postgres::start().await;
    let args = ["--oidc-issuer-url", "http://127.0.0.1:9/", "--oidc-client-id", CLIENT_ID, "--disable-password-auth"];
    let coord = Coordinator::start(dir.path(), &pg.url(), "1s", &args).await;
    let admin = coord.admin().await;
    assert_eq!(admin.get("/api/v2/users/me").await.status, 200, "the first admin is made with a password");
    let refused = Api::anonymous(&coord.url)
        .post("/api/v2/users/login", json!({"username": "admin", "password": ADMIN_PASSWORD}))
        .await;
    assert_eq!(refused.status, 403, "{}", refused.body);
    assert!(refused.body["message"].as_str().unwrap_or_default().contains("Password sign-in is disabled"));
    let page = bounded_client().get(format!("{}/login", coord.url.trim_end_matches('/'))).send().await.unwrap();
    let page = page.text().await.unwrap();
    assert!(page.contains("oidc-sign-in") && !page.contains("id=\"password\""), "{page}");
    let methods = Api::anonymous(&coord.url).get("/api/v2/users/authmethods").await.expect_status(200);
    assert_eq!(methods, json!({"password": false, "oidc": {"name": "OpenID Connect"}}));
    // Without a provider, disabling passwords would lock everyone out: refused at start.
    let mut cmd = Command::new(BIN);
    cmd.args(["coordinator", "--disable-password-auth", "--postgres-url", &pg.url()]);
    let out = output_within(&mut cmd, Duration::from_secs(30), "meridian coordinator");
    assert_eq!(out.status.code(), Some(64), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--disable-password-auth needs --oidc-issuer-url"));
}

/// `meridian login URL` through the browser, as `dave` at the provider:
/// through the CLI's loopback listener (the page opened by `$BROWSER`), and
/// with `--no-browser` (the code the page shows, pasted). Each saves a
/// session the CLI then uses.
async fn cli_signs_in_through_the_browser(m: &Mesh, dir: &Path) {
    let coordinator = m.coord.url.trim_end_matches('/');
    for paste in [false, true] {
        let url_file = dir.join(format!("cli-url-{paste}"));
        let config_dir = dir.join(format!("cli-{paste}"));
        let browser = dir.join("browser.sh");
        std::fs::write(&browser, format!("#!/bin/sh\nprintf '%s' \"$1\" > '{}'\n", url_file.display())).unwrap();
        std::fs::set_permissions(&browser, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
        let mut cli = Command::new(BIN);
        cli.args(["login", coordinator])
            .args(paste.then_some("--no-browser"))
            .env("BROWSER", &browser)
            .env("MERIDIAN_CONFIG_DIR", &config_dir)
            .env_remove("MERIDIAN_USERNAME")
            .env_remove("MERIDIAN_PASSWORD")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cli.spawn().unwrap();
        let mut stdin = child.stdin.take().unwrap();
        if paste {
            // The address to visit, from the CLI's prompt, for the browser elsewhere.
            let stderr = child.stderr.take().unwrap();
            let prompt = tokio::task::spawn_blocking(move || {
                let mut line = String::new();
                std::io::BufReader::new(stderr).read_line(&mut line).map(|_| line)
            });
            let prompt = tokio::time::timeout(Duration::from_secs(30), prompt).await.unwrap().unwrap().unwrap();
            let url = prompt.split_whitespace().find(|w| w.starts_with("http")).expect("an address").to_owned();
            assert!(!url.contains("callback"), "a headless sign-in has no loopback callback: {url}");
            std::fs::write(&url_file, url).unwrap();
        }
        let info = json!({"url_file": url_file, "login": "dave"});
        let mut node = Command::new("node");
        node.current_dir(browser_dir()).arg("oidc-cli.js").arg(info.to_string());
        let out = output_within(&mut node, Duration::from_secs(120), "node oidc-cli.js");
        assert!(out.status.success(), "the browser: {}", String::from_utf8_lossy(&out.stderr));
        let said: Value = serde_json::from_slice(&out.stdout).unwrap();
        if paste {
            use std::io::Write;
            writeln!(stdin, "{}", said["code"].as_str().expect("the page showed a code")).unwrap();
        } else {
            assert_eq!(said["handed"], "loopback");
        }
        drop(stdin);
        let out = tokio::task::spawn_blocking(move || child.wait_with_output()).await.unwrap().unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "meridian login (paste: {paste}): {text}");
        assert!(text.contains("as dave"), "{text}");
        // The saved session works.
        let mut list = Command::new(BIN);
        list.args(["workspaces", "list"]).env("MERIDIAN_CONFIG_DIR", &config_dir).env_remove("MERIDIAN_SESSION_TOKEN");
        let listed = output_within(&mut list, Duration::from_secs(30), "meridian workspaces list");
        assert!(listed.status.success(), "{}", String::from_utf8_lossy(&listed.stderr));
    }
}
