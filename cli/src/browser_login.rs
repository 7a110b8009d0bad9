//! `meridian login URL` without a password: signing in through the browser
//! (the coordinator's sign-in page, so its identity provider too).
//!
//! The CLI makes a PKCE verifier and opens `<URL>/cli-auth` with its
//! challenge. Once the user is signed in there and approves, the page gets a
//! one-time code made for that challenge and sends it to the CLI's listener
//! on this machine's loopback (`callback`, with the CLI's `state`); with
//! `--no-browser` the page shows the code and the CLI reads it pasted. Either
//! way the CLI trades the code and its verifier for a session: a code seen
//! by anyone else is worthless without the verifier, which never leaves the CLI.

use anyhow::{bail, Context, Result};
use base64::Engine as _;
use meridian_regions::client::Client;
use rand::RngCore as _;
use sha2::Digest as _;
use std::time::Duration;

/// How long the CLI waits for the browser (or a pasted code).
const WAIT: Duration = Duration::from_secs(300);

fn random() -> String {
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// A session token for `client`'s coordinator, signed in through the browser.
pub async fn sign_in(client: &Client, open_browser: bool) -> Result<String> {
    let verifier = random();
    let challenge = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(sha2::Sha256::digest(&verifier));
    let mut page = url::Url::parse(&format!("{}/cli-auth", client.base_url().trim_end_matches('/')))?;
    page.query_pairs_mut().append_pair("challenge", &challenge);
    let code = if open_browser {
        let state = random();
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", 0)).await.context("cannot listen on loopback")?;
        let callback = format!("http://127.0.0.1:{}/callback", listener.local_addr()?.port());
        page.query_pairs_mut().append_pair("callback", &callback).append_pair("state", &state);
        eprintln!("Opening {page} in your browser to sign in (if it does not open, visit it yourself).");
        if let Err(e) = open(page.as_str()) {
            eprintln!(
                "Could not open a browser ({e:#}); visit the address above, or run `meridian login --no-browser`."
            );
        }
        tokio::time::timeout(WAIT, receive(listener, state))
            .await
            .context("no sign-in arrived from the browser within 5 minutes")??
    } else {
        eprintln!("Visit {page} in a browser, sign in, and paste the code it shows here:");
        let line = tokio::time::timeout(WAIT, tokio::task::spawn_blocking(read_line))
            .await
            .context("no code was pasted within 5 minutes")???;
        line.trim().to_owned()
    };
    if code.is_empty() {
        bail!("no code was given");
    }
    Ok(client.cli_token(&code, &verifier).await?.session_token)
}

fn read_line() -> Result<String> {
    let mut line = String::new();
    std::io::stdin().read_line(&mut line).context("cannot read the code")?;
    Ok(line)
}

/// Opens `url` with `$BROWSER` (a command taking the URL), else `xdg-open`.
fn open(url: &str) -> Result<()> {
    let browser = std::env::var("BROWSER").ok().filter(|b| !b.trim().is_empty());
    let program = browser.as_deref().unwrap_or("xdg-open");
    std::process::Command::new(program)
        .arg(url)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .with_context(|| format!("cannot run {program}"))?;
    Ok(())
}

#[derive(serde::Deserialize)]
struct Callback {
    code: Option<String>,
    state: Option<String>,
}

/// Serves the loopback listener until the page sends a code with our state.
async fn receive(listener: tokio::net::TcpListener, state: String) -> Result<String> {
    use axum::extract::Query;
    use axum::response::Html;
    let (tx, mut rx) = tokio::sync::mpsc::channel::<String>(1);
    let handler = move |Query(q): Query<Callback>| {
        let (tx, state) = (tx.clone(), state.clone());
        async move {
            let ours = q.state.as_deref().is_some_and(|s| {
                s.len() == state.len() && bool::from(subtle::ConstantTimeEq::ct_eq(s.as_bytes(), state.as_bytes()))
            });
            match q.code.filter(|_| ours) {
                Some(code) => {
                    let _ = tx.send(code).await;
                    Html("<!doctype html><title>Meridian</title><p>The Meridian CLI is signed in; you may close this tab.</p>")
                }
                None => Html("<!doctype html><title>Meridian</title><p>This is not the sign-in this CLI began.</p>"),
            }
        }
    };
    let app = axum::Router::new().route("/callback", axum::routing::get(handler));
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(async move {
        axum::serve(listener, app)
            .with_graceful_shutdown(async {
                let _ = stopped.await;
            })
            .await
    });
    let code = rx.recv().await.context("the loopback listener stopped")?;
    let _ = stop.send(());
    let _ = tokio::time::timeout(Duration::from_secs(2), server).await;
    Ok(code)
}
