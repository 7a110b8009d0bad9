//! Types the API and the app token share: who may open an app, and what a
//! proxy does with its CORS answers. Here, apart from both, so neither
//! depends on the other.

use serde::{Deserialize, Serialize};

/// Who may open an app.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Share {
    /// Only the workspace's owner.
    #[default]
    Owner,
    /// Any signed-in user.
    Authenticated,
    /// Anyone, signed in or not.
    Public,
}

impl Share {
    pub fn as_str(self) -> &'static str {
        match self {
            Share::Owner => "owner",
            Share::Authenticated => "authenticated",
            Share::Public => "public",
        }
    }

    pub fn from_stored(s: &str) -> Self {
        match s {
            "public" => Share::Public,
            "authenticated" => Share::Authenticated,
            _ => Share::Owner,
        }
    }
}

/// What a proxy does with the CORS headers (`Access-Control-*`) an app answers with.
///
/// Sibling app hosts are one site, so a browser sends a user's app cookies
/// with a credentialed `fetch` from any other app's page: an app that
/// reflects `Origin` with `Access-Control-Allow-Credentials: true` (as many
/// dev servers do) would let any other user's app read it as its viewer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Cors {
    /// Dropped, unless the request's `Origin` is the app's own.
    #[default]
    Default,
    /// Passed through as the app sent them (dangerous: the app decides who
    /// reads it as its viewer), except to a sandboxed page (`Origin: null`)
    /// and to another user's app.
    Passthru,
}

impl Cors {
    pub fn as_str(self) -> &'static str {
        match self {
            Cors::Default => "default",
            Cors::Passthru => "passthru",
        }
    }

    pub fn from_stored(s: &str) -> Self {
        match s {
            "passthru" => Cors::Passthru,
            _ => Cors::Default,
        }
    }

    pub fn is_default(&self) -> bool {
        *self == Cors::Default
    }
}
