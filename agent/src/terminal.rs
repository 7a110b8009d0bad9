//! The web terminal's reconnecting PTYs. A browser opens a WebSocket
//! (through a region, authorized like any stream) naming a terminal session
//! id: the agent starts the user's login shell on a PTY for a new id, or
//! attaches to the running one. The PTY outlives its connection for
//! [`KEEP_DETACHED`], keeping the last [`SCROLLBACK`] bytes of output; a
//! connection that attaches gets them first (the page resets its screen and
//! writes them), then what follows. One viewer at a time: a new connection
//! for the same id takes over (a reload, or a move to another region).
//!
//! On the WebSocket: binary frames from the browser are keystrokes, text
//! frames are `{"cols": C, "rows": R}` resizes; binary frames to it are
//! output. Keystrokes are counted: the agent says first how many it took
//! (`{"received": N}`) and acknowledges each batch (`{"ack": N}`), and the page
//! sends again what a dead connection may have lost, so no keystroke is lost
//! or doubled when a region dies; output the page missed comes back with
//! the scrollback.

use crate::ssh::process::{account, deliver, environment, Launch, Setup};
use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::Message;

/// How long a terminal with no connection keeps its shell (5 minutes).
pub const KEEP_DETACHED: Duration = Duration::from_secs(300);
/// Output kept for a connection that attaches (256 KiB: a few screens of a busy build log).
pub const SCROLLBACK: usize = 256 << 10;
/// How often detached terminals are checked for expiry.
const REAP_EVERY: Duration = Duration::from_secs(5);
/// Most terminals an agent holds at once.
const MAX_TERMINALS: usize = 256;
/// Close codes (RFC 6455 §7.4.2, the private range): the shell exited; another connection took over.
const EXITED: u16 = 4000;
const TAKEN_OVER: u16 = 4001;
/// An acknowledgement goes to the page this often (500 ms), whatever else it
/// gets: the page takes a connection silent for four of them as dead (a
/// partitioned region), which no close would tell it.
const HEARTBEAT: Duration = Duration::from_millis(500);
/// The WebSocket subprotocol the page asks for and the agent answers.
pub const SUBPROTOCOL: &str = "meridian.terminal";

enum Input {
    Keys(Bytes),
    Resize(u16, u16),
}

struct Viewer {
    output: mpsc::UnboundedSender<Bytes>,
    generation: u64,
}

struct Shared {
    scrollback: VecDeque<u8>,
    viewer: Option<Viewer>,
    generation: u64,
    /// Since when no connection is attached.
    detached_since: Option<Instant>,
    /// The shell exited.
    exited: bool,
    /// Keystroke bytes taken from the browser (the page sends again what is
    /// past this when it reconnects: nothing typed into a dying connection is lost).
    input_received: u64,
}

struct Term {
    input: mpsc::UnboundedSender<Input>,
    shared: Mutex<Shared>,
    pid: Option<u32>,
}

impl Term {
    fn lock(&self) -> std::sync::MutexGuard<'_, Shared> {
        self.shared.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Attaches a new viewer (the previous one, if any, is let go): the
    /// scrollback so far and where the rest will come.
    fn attach(&self) -> Attached {
        let (tx, rx) = mpsc::unbounded_channel();
        let mut shared = self.lock();
        shared.generation += 1;
        let generation = shared.generation;
        shared.viewer = Some(Viewer { output: tx, generation });
        shared.detached_since = None;
        Attached {
            scrollback: shared.scrollback.iter().copied().collect(),
            output: rx,
            generation,
            input_received: shared.input_received,
        }
    }

    /// Takes keystrokes; how many were taken in all.
    fn keys(&self, keys: Bytes) -> u64 {
        let mut shared = self.lock();
        shared.input_received += keys.len() as u64;
        let _ = self.input.send(Input::Keys(keys));
        shared.input_received
    }

    fn detach(&self, generation: u64) {
        let mut shared = self.lock();
        if shared.viewer.as_ref().is_some_and(|v| v.generation == generation) {
            shared.viewer = None;
            shared.detached_since = Some(Instant::now());
        }
    }
}

/// What a connection that attaches starts from.
struct Attached {
    scrollback: Vec<u8>,
    output: mpsc::UnboundedReceiver<Bytes>,
    generation: u64,
    input_received: u64,
}

/// The agent's terminals by session id.
#[derive(Clone, Default)]
pub struct Terminals {
    map: Arc<Mutex<HashMap<String, Arc<Term>>>>,
    reaper: Arc<std::sync::OnceLock<()>>,
}

impl Terminals {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Arc<Term>>> {
        self.map.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Serves one WebSocket connection (already upgraded) for terminal `id`.
    pub async fn serve<S>(&self, ws: tokio_tungstenite::WebSocketStream<S>, id: String, size: (u16, u16))
    where
        S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
    {
        self.reaper.get_or_init(|| {
            tokio::spawn(reap(self.map.clone()));
        });
        let (mut sink, mut stream) = ws.split();
        let term = match self.open(&id, size) {
            Ok(t) => t,
            Err(e) => {
                let _ = sink.send(Message::Text(format!("meridian: cannot start a shell: {e}").into())).await;
                let _ = sink.close().await;
                return;
            }
        };
        let Attached { scrollback, mut output, generation, input_received } = term.attach();
        // First what keystrokes it took (the page sends the rest again), then the scrollback.
        let sync = Message::Text(format!("{{\"received\":{input_received}}}").into());
        if sink.send(sync).await.is_err() || sink.send(Message::Binary(scrollback.into())).await.is_err() {
            term.detach(generation);
            return;
        }
        let mut beat = tokio::time::interval_at(tokio::time::Instant::now() + HEARTBEAT, HEARTBEAT);
        beat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = beat.tick() => {
                    let taken = term.lock().input_received;
                    if sink.send(Message::Text(format!("{{\"ack\":{taken}}}").into())).await.is_err() {
                        break;
                    }
                }
                out = output.recv() => match out {
                    Some(bytes) => {
                        if sink.send(Message::Binary(bytes)).await.is_err() {
                            break;
                        }
                    }
                    // The shell exited, or another connection took over: the page tells which.
                    None => {
                        let (code, reason) = if term.lock().exited { (EXITED, "the shell exited") } else { (TAKEN_OVER, "taken over") };
                        let frame = CloseFrame { code: code.into(), reason: reason.into() };
                        let _ = sink.send(Message::Close(Some(frame))).await;
                        break;
                    }
                },
                msg = stream.next() => match msg {
                    Some(Ok(Message::Binary(keys))) => {
                        let taken = term.keys(keys);
                        if sink.send(Message::Text(format!("{{\"ack\":{taken}}}").into())).await.is_err() {
                            break;
                        }
                    }
                    Some(Ok(Message::Text(text))) => {
                        if let Some((cols, rows)) = parse_resize(&text) {
                            let _ = term.input.send(Input::Resize(cols, rows));
                        }
                    }
                    Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_))) => {}
                    Some(Ok(Message::Close(_)) | Err(_)) | None => break,
                },
            }
        }
        term.detach(generation);
    }

    /// The running terminal `id`, or a new one with a login shell.
    fn open(&self, id: &str, (cols, rows): (u16, u16)) -> std::io::Result<Arc<Term>> {
        if let Some(t) = self.lock().get(id) {
            return Ok(t.clone());
        }
        if self.lock().len() >= MAX_TERMINALS {
            return Err(std::io::Error::other("this agent holds too many terminals"));
        }
        let account = account();
        let setup = Setup { pty: Some(("xterm-256color".into(), pty_process::Size::new(rows, cols))), env: vec![] };
        let launch = Launch::new(&account, environment(&account, &setup), None);
        let (pty, pts) = pty_process::open().map_err(std::io::Error::other)?;
        pty.resize(pty_process::Size::new(rows.max(1), cols.max(1))).map_err(std::io::Error::other)?;
        let mut child = launch.on_pty(pts)?;
        let pid = child.id();
        let (mut pty_r, mut pty_w) = pty.into_split();
        let (input, mut keys) = mpsc::unbounded_channel::<Input>();
        let shared = Shared {
            scrollback: VecDeque::new(),
            viewer: None,
            generation: 0,
            detached_since: None,
            exited: false,
            input_received: 0,
        };
        let term = Arc::new(Term { input, shared: Mutex::new(shared), pid });
        self.lock().insert(id.to_owned(), term.clone());
        tokio::spawn(async move {
            while let Some(input) = keys.recv().await {
                match input {
                    Input::Keys(k) => {
                        if pty_w.write_all(&k).await.is_err() {
                            break;
                        }
                    }
                    Input::Resize(cols, rows) => {
                        let _ = pty_w.resize(pty_process::Size::new(rows.max(1), cols.max(1)));
                    }
                }
            }
        });
        let (map, id, reading) = (self.map.clone(), id.to_owned(), term.clone());
        tokio::spawn(async move {
            let mut buf = vec![0u8; 32 << 10];
            while let Ok(n @ 1..) = pty_r.read(&mut buf).await {
                let mut shared = reading.lock();
                shared.scrollback.extend(&buf[..n]);
                let over = shared.scrollback.len().saturating_sub(SCROLLBACK);
                shared.scrollback.drain(..over);
                if let Some(v) = &shared.viewer {
                    let _ = v.output.send(Bytes::copy_from_slice(&buf[..n]));
                }
            }
            // The shell exited: its viewer's connection closes, the id is free.
            let _ = child.wait().await;
            let mut shared = reading.lock();
            shared.exited = true;
            shared.viewer = None;
            drop(shared);
            map.lock().unwrap_or_else(|e| e.into_inner()).remove(&id);
        });
        Ok(term)
    }
}

/// Ends terminals detached for longer than [`KEEP_DETACHED`] (their shells get SIGHUP).
async fn reap(map: Arc<Mutex<HashMap<String, Arc<Term>>>>) {
    loop {
        tokio::time::sleep(REAP_EVERY).await;
        let expired: Vec<Arc<Term>> = {
            let mut map = map.lock().unwrap_or_else(|e| e.into_inner());
            let ids: Vec<String> = map
                .iter()
                .filter(|(_, t)| t.lock().detached_since.is_some_and(|since| since.elapsed() > KEEP_DETACHED))
                .map(|(id, _)| id.clone())
                .collect();
            ids.iter().filter_map(|id| map.remove(id)).collect()
        };
        for term in expired {
            tracing::info!("a web terminal stayed detached too long; ending its shell");
            deliver(term.pid, &russh::Sig::HUP, true);
        }
    }
}

/// `{"cols": C, "rows": R}`.
fn parse_resize(text: &str) -> Option<(u16, u16)> {
    let v: serde_json::Value = serde_json::from_str(text).ok()?;
    let dim = |k: &str| v.get(k)?.as_u64().and_then(|n| u16::try_from(n).ok()).filter(|n| *n > 0);
    Some((dim("cols")?, dim("rows")?))
}

#[cfg(test)]
mod tests {
    #[test]
    fn resizes() {
        assert_eq!(super::parse_resize(r#"{"cols": 120, "rows": 40}"#), Some((120, 40)));
        for bad in [r#"{"cols": 0, "rows": 40}"#, r#"{"cols": 70000, "rows": 1}"#, "x", r#"{"cols": 1}"#] {
            assert_eq!(super::parse_resize(bad), None, "{bad}");
        }
    }
}
