//! What the coordinator, the proxies and the CLI share.
//!
//! - [`name`]: the grammar of region and user names (validated once, here).
//! - [`app_url`]: the app URL grammar (subdomain, port and path apps).
//! - [`app_token`]: the signed app token (EdDSA JWS) and its verification.
//! - [`health`]: region and replica health states and how replicas combine.
//! - [`connection_log`]: what regions record per session and ship to the coordinator.
//! - [`api`]: the JSON wire types of the coordinator API (`/api/v2/...`); [`model`] the types
//!   it shares with the app token (who may open an app, its CORS answers).
//! - [`token`]: the proxy token `<region-id>:<secret>` and the secret newtype.
//! - [`client`]: a typed HTTP client of the coordinator API, used by proxies and the CLI.
//! - [`tunnel`]: the agent tunnel protocol (HTTP/2 over an upgraded connection: control, and
//!   CONNECT streams as the fallback); [`data`]: data connections the agent dials per app connection.
//! - [`headers`]: header and cookie names of the external contract, and how `Cookie` and
//!   `Set-Cookie` fields are read (as bytes: crumbs, names, what the app is given).
//! - [`wildcard`]: the wildcard access URL pattern (`*.sydney.localhost:7081`).
//! - [`resolve`]: name resolution (hickory), with `.localhost` as loopback.
//! - [`selection`]: region selection by measured latency (`meridian regions ping`).
//! - [`request`]: framing, host and path checks of a received request (one normalisation).
//! - [`certificate`]: the served TLS certificate, reloaded when its files change.
//! - [`pipe`]: byte pipes between connections, closed when idle.
//! - [`tls_client`]: the TLS client relays are dialed with.
//! - [`redirect`]: where the login flow may send a browser (no open redirect).
//! - [`stream`]: shell and TCP streams through a region (paths, targets, token bindings);
//!   [`resume`]: the protocol that carries one across paths when its region dies.
//! - [`ready`]: listening on port 0 and reporting the bound addresses (`--ready-file`).

pub mod api;
pub mod app_token;
pub mod app_url;
pub mod certificate;
pub mod client;
pub mod connection_log;
pub mod data;
#[doc(hidden)]
pub mod fuzz_checks;
pub mod headers;
pub mod health;
pub mod model;
pub mod name;
pub mod pipe;
pub mod ready;
pub mod redirect;
pub mod request;
pub mod resolve;
pub mod resume;
pub mod selection;
pub mod stream;
pub mod tls_client;
pub mod token;
pub mod tunnel;
pub mod wildcard;

/// The name of the coordinator's own region. Always listed first, never created or deleted.
pub const PRIMARY_REGION: &str = "primary";

/// This build's version, reported by `/api/v2/buildinfo` and at registration.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
