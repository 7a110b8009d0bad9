//! Refusals the coordinator pushes with the route feed: users suspended, and
//! users whose sessions were revoked at a time (tokens issued before it are
//! void). A token a region already holds is checked against them on every
//! request (one atomic load while nobody is refused), and every upgraded
//! connection (WebSocket, shell, forwarded port, terminal) is registered
//! with its user while it lasts, so a refusal cuts those at once: in every
//! region, as soon as its route long poll answers.
//!
//! A cut closes the upstream side: a data connection is shut down (through
//! a duplicate of its socket, so nothing else needs to wake), a tunnel
//! stream fails its next read and write (its tasks are woken). Pingora then
//! ends the client's connection as it does when an app hangs up.

use futures_util::task::AtomicWaker;
use meridian_regions::api::UserAccess;
use meridian_regions::app_token::AppClaims;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::task::{Context, Poll};
use uuid::Uuid;

/// An upgraded connection: the session its token was minted from, and its switch.
type Opened = (Option<Uuid>, Arc<Cut>);

pub struct Access {
    refusals: RwLock<HashMap<Uuid, UserAccess>>,
    /// Whether anyone is refused: the request path's only cost otherwise.
    any: AtomicBool,
    /// Open upgraded connections by user, each with the session (`sid`) of the token that opened it.
    open: Mutex<HashMap<Uuid, HashMap<u64, Opened>>>,
    next: AtomicU64,
    /// Connections cut because their user's tokens were revoked.
    pub cut_total: prometheus::IntCounter,
}

impl std::fmt::Debug for Access {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Access").field("any", &self.any.load(Ordering::Relaxed)).finish()
    }
}

impl Default for Access {
    fn default() -> Self {
        Self {
            refusals: RwLock::default(),
            any: AtomicBool::new(false),
            open: Mutex::default(),
            next: AtomicU64::new(1),
            cut_total: prometheus::IntCounter::new(
                "meridian_access_cut_connections_total",
                "Upgraded connections (WebSockets, shells, forwarded ports) cut because their user was suspended \
                 or their sessions revoked",
            )
            .unwrap_or_else(|e| unreachable!("static metric: {e}")),
        }
    }
}

impl Access {
    /// Whether the token `claims` came from is void: its user is suspended,
    /// or the session it was minted from was revoked.
    pub fn refuses(&self, claims: &AppClaims) -> bool {
        if !self.any.load(Ordering::Acquire) {
            return false;
        }
        let Ok(user) = Uuid::parse_str(&claims.sub) else { return false };
        let refusals = self.refusals.read().unwrap_or_else(|e| e.into_inner());
        refusals.get(&user).is_some_and(|a| a.refuses(claims.sid))
    }

    /// Applies the access changes of a route update (`replace`: a snapshot,
    /// naming every refused user), and cuts the connections they void.
    pub fn apply(&self, changes: &[UserAccess], replace: bool) {
        let mut refusals = self.refusals.write().unwrap_or_else(|e| e.into_inner());
        if replace {
            refusals.clear();
        }
        for change in changes {
            if change.is_clear() {
                refusals.remove(&change.user_id);
            } else {
                refusals.insert(change.user_id, change.clone());
            }
        }
        self.any.store(!refusals.is_empty(), Ordering::Release);
        let open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        let mut cut = 0;
        for (user, connections) in open.iter() {
            let Some(refusal) = refusals.get(user) else { continue };
            for (sid, c) in connections.values() {
                if refusal.refuses(*sid) && c.fire() {
                    cut += 1;
                }
            }
        }
        if cut > 0 {
            self.cut_total.inc_by(cut);
            tracing::info!(connections = cut, "cut connections of suspended or signed-out users");
        }
    }

    /// Registers an upgraded connection opened with `claims` until the
    /// returned guard drops; `None` for an anonymous one (a public app opened
    /// signed out has no user to suspend).
    pub fn register(self: &Arc<Self>, claims: &AppClaims) -> Option<Registration> {
        let user = Uuid::parse_str(&claims.sub).ok()?;
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let cut = Arc::new(Cut { id, ..Cut::default() });
        self.open
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(user)
            .or_default()
            .insert(id, (claims.sid, cut.clone()));
        Some(Registration { access: self.clone(), user, id, cut })
    }

    /// Open upgraded connections registered now.
    pub fn open_connections(&self) -> usize {
        self.open.lock().unwrap_or_else(|e| e.into_inner()).values().map(HashMap::len).sum()
    }
}

/// An upgraded connection registered with its user; dropping it deregisters.
#[derive(Debug)]
pub struct Registration {
    access: Arc<Access>,
    user: Uuid,
    id: u64,
    pub cut: Arc<Cut>,
}

impl Drop for Registration {
    fn drop(&mut self) {
        let mut open = self.access.open.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(connections) = open.get_mut(&self.user) {
            connections.remove(&self.id);
            if connections.is_empty() {
                open.remove(&self.user);
            }
        }
    }
}

/// The switch that cuts one upstream connection.
#[derive(Debug, Default)]
pub struct Cut {
    /// Unique in this process (never reused, unlike an address): the pool
    /// key of the connection this switch is on.
    pub id: u64,
    fired: AtomicBool,
    reader: AtomicWaker,
    writer: AtomicWaker,
    /// A duplicate of a data connection's socket, to shut it down from here.
    socket: Mutex<Option<std::net::TcpStream>>,
}

impl Cut {
    /// Keeps a duplicate of `socket` to shut down when fired (released with the registration).
    pub fn arm(&self, socket: &impl std::os::fd::AsFd) {
        let dup = socket.as_fd().try_clone_to_owned().map(std::net::TcpStream::from);
        match dup {
            Ok(dup) => *self.socket.lock().unwrap_or_else(|e| e.into_inner()) = Some(dup),
            Err(e) => tracing::warn!(error = %e, "cannot keep a handle to cut a connection with"),
        }
        if self.fired.load(Ordering::Acquire) {
            self.fire_socket();
        }
    }

    /// Cuts the connection; whether this call did (not an earlier one).
    fn fire(&self) -> bool {
        if self.fired.swap(true, Ordering::AcqRel) {
            return false;
        }
        self.fire_socket();
        self.reader.wake();
        self.writer.wake();
        true
    }

    fn fire_socket(&self) {
        if let Some(s) = self.socket.lock().unwrap_or_else(|e| e.into_inner()).as_ref() {
            let _ = s.shutdown(std::net::Shutdown::Both);
        }
    }

    /// For a tunnel stream's read (`reader`) or write: an error once cut.
    pub fn poll(&self, cx: &mut Context<'_>, reader: bool) -> Poll<std::io::Error> {
        if !self.fired.load(Ordering::Acquire) {
            (if reader { &self.reader } else { &self.writer }).register(cx.waker());
            if !self.fired.load(Ordering::Acquire) {
                return Poll::Pending;
            }
        }
        Poll::Ready(std::io::Error::new(
            std::io::ErrorKind::ConnectionAborted,
            "cut: the user was suspended or signed out everywhere",
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claims(user: Uuid, sid: Uuid) -> AppClaims {
        serde_json::from_value(serde_json::json!({
            "iss": "t", "sub": user.to_string(), "binding": "b", "agent_id": Uuid::nil(),
            "upstream": "http://127.0.0.1:8080", "share": "owner", "iat": 1, "nbf": 1, "exp": 301, "sid": sid,
        }))
        .unwrap()
    }

    #[test]
    fn refusals_void_tokens_and_cut_what_they_opened() {
        let access = Arc::new(Access::default());
        let (bob, eve, ended, kept) = (Uuid::new_v4(), Uuid::new_v4(), Uuid::new_v4(), Uuid::new_v4());
        let (old, new) = (claims(bob, ended), claims(bob, kept));
        let (bob_ws, eve_ws) = (access.register(&old).unwrap(), access.register(&claims(eve, ended)).unwrap());
        assert!(!access.refuses(&old));

        // One of bob's sessions revoked: its token is void, the other's not, eve's (same sid, other user) not.
        access.apply(&[UserAccess { user_id: bob, suspended: false, revoked_sessions: vec![ended] }], false);
        assert!(access.refuses(&old) && !access.refuses(&new));
        assert!(bob_ws.cut.fired.load(Ordering::Acquire), "bob's connection was not cut");
        assert!(!eve_ws.cut.fired.load(Ordering::Acquire), "eve's connection was cut");
        assert_eq!(access.cut_total.get(), 1);

        // Suspended: every token of his. A snapshot without him clears it.
        let later = access.register(&new).unwrap();
        access.apply(&[UserAccess { user_id: bob, suspended: true, revoked_sessions: vec![ended] }], false);
        assert!(access.refuses(&new) && later.cut.fired.load(Ordering::Acquire));
        access.apply(&[], true);
        assert!(!access.refuses(&new) && !access.refuses(&old));

        drop((bob_ws, eve_ws, later));
        assert_eq!(access.open_connections(), 0, "registrations outlived their connections");
    }

    #[tokio::test]
    async fn a_cut_wakes_a_waiting_read_and_shuts_a_socket_down() {
        let cut = Arc::new(Cut::default());
        let waiting = tokio::spawn({
            let cut = cut.clone();
            async move { std::future::poll_fn(|cx| cut.poll(cx, true)).await }
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = tokio::net::TcpStream::connect(listener.local_addr().unwrap()).await.unwrap();
        let (mut server, _) = listener.accept().await.unwrap();
        cut.arm(&client);
        tokio::task::yield_now().await;
        assert!(cut.fire());
        let e = tokio::time::timeout(std::time::Duration::from_secs(5), waiting).await.unwrap().unwrap();
        assert_eq!(e.kind(), std::io::ErrorKind::ConnectionAborted);
        // The far end reads EOF although `client` itself is still open.
        use tokio::io::AsyncReadExt;
        let n = tokio::time::timeout(std::time::Duration::from_secs(5), server.read(&mut [0u8; 8])).await.unwrap();
        assert_eq!(n.unwrap(), 0);
        drop(client);
    }
}
