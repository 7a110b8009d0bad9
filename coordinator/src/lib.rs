//! Meridian's control plane.
//!
//! The coordinator owns the one Postgres database. It registers regions and
//! their proxy replicas, polls their health, authenticates users and serves
//! the `/api/v2` API.
//!
//! - [`config`]: options and their validation.
//! - [`embedded_postgres`]: a PostgreSQL cluster run from the system's binaries.
//! - [`store`]: every SQL query, over a sqlx pool; migrations in `migrations/`.
//! - [`api`]: the axum router and handlers; [`error`] maps failures to statuses.
//! - [`dashboard`]: the HTML pages for people (served beside the API); [`html`] the page
//!   shell, sign-in page and escaping both use.
//! - [`health`]: the region health checker.
//! - [`secret`]: token and password hashing.
//! - [`primary`]: the primary region's own proxy and relay, run in this process.
//! - [`retention`]: deletes audit records past `--log-retention`.
//! - [`routes`]: route change notifications (Postgres LISTEN/NOTIFY) for the proxies' route feed.

pub mod api;
pub mod config;
pub mod dashboard;
pub mod embedded_postgres;
pub mod error;
pub mod health;
pub mod html;
pub mod keys;
pub mod login_limits;
pub mod oidc;
pub mod primary;
pub mod read_cache;
pub mod retention;
pub mod routes;
pub mod secret;
pub mod store;

use anyhow::Context;
use config::{Config, Database};
use embedded_postgres::{EmbeddedPostgres, PgBinaries};
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;
use store::Store;
use tokio_util::sync::CancellationToken;

/// How long in-flight API requests get to finish after the shutdown signal.
pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);
/// How long to wait for an external Postgres at start before giving up.
const DATABASE_START_DEADLINE: Duration = Duration::from_secs(30);

/// Serves the coordinator until `shutdown` resolves: the API on an internal
/// loopback listener, and in front of it, on `--listen`, the primary region's
/// proxy (apps, relay, TLS), which passes everything else to the API. Then
/// drains the proxy, stops the API and the embedded Postgres, if any.
pub async fn run(mut config: Config, shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
    // The whole API on loopback, for the primary proxy's own registration
    // and, without --internal-listen, for everything the primary forwards.
    let api_listener = tokio::net::TcpListener::bind(("127.0.0.1", 0)).await?;
    let api_addr = api_listener.local_addr()?;
    let primary_token = primary::token();
    // Bound first: with --listen …:0 the access URLs name the port only now.
    let primary = primary::Bound::bind(&mut config, &primary_token, api_addr)?;
    let config = Arc::new(config);
    let (store, mut embedded) = open_database(&config).await?;
    let secrets = keys::SecretsKey::load_or_create(&config.secrets_key_file)?;
    let keys = Arc::new(keys::load_or_create(&store, &secrets).await?);
    let oidc = match &config.oidc {
        Some(o) => {
            let oidc = oidc::Oidc::new(o.clone(), &config.access_url)?;
            tracing::info!(issuer = %o.issuer, redirect_uri = oidc.redirect_uri(), "signing in through OpenID Connect");
            Some(Arc::new(oidc))
        }
        None => None,
    };
    let http = meridian_regions::client::http_client(config.ca_cert.as_deref()).map_err(anyhow::Error::msg)?;
    let stop = CancellationToken::new();
    let (check_now, check_rx) = tokio::sync::mpsc::unbounded_channel();
    let checker = health::Checker {
        store: store.clone(),
        http,
        interval: config.proxy_health_interval,
        replica_expiry: config.replica_expiry,
    };
    let checker = tokio::spawn(checker.run(check_rx, stop.clone()));
    let (route_changes, _) = tokio::sync::watch::channel(0u64);
    let listener = tokio::spawn(routes::listen(store.pool().clone(), route_changes.clone(), stop.clone()));
    let retention = tokio::spawn(retention::run(store.clone(), config.log_retention, stop.clone()));
    let secrets = Arc::new(secrets);
    let refresher = oidc.clone().map(|o| tokio::spawn(oidc::watch(o, store.clone(), secrets.clone(), stop.clone())));
    let state = api::AppState {
        store,
        config: config.clone(),
        check_now,
        keys,
        primary_token_hash: Arc::new(secret::hash_secret(primary_token.secret.expose())),
        route_changes,
        reads: Default::default(),
        login_limits: Default::default(),
        primary_proxy: primary.state.clone(),
        oidc,
        secrets,
    };
    let forwarded_by = api::auth::Forwarded::new();
    let apis = Apis::serve(state, api_listener, config.internal_listen, &forwarded_by, &stop).await?;
    let proxy = primary.start(apis.public, forwarded_by.secret())?;
    tracing::info!(listen = %config.listen, access_url = %config.access_url, "coordinator listening");
    let ready = meridian_regions::ready::Ready {
        internal: apis.internal,
        ..meridian_regions::ready::Ready::serving(config.listen, &config.access_url, config.relay_listen)
    };
    ready.report(config.ready_file.as_deref()).map_err(anyhow::Error::msg)?;

    tokio::select! {
        () = shutdown => {}
        () = proxy.exited() => anyhow::bail!("the primary proxy stopped unexpectedly"),
    }
    tracing::info!("shutting down: draining requests for up to {DRAIN_TIMEOUT:?}");
    proxy.stop(config.shutdown_delay + DRAIN_TIMEOUT + Duration::from_secs(5)).await;
    stop.cancel();
    let _ = tokio::time::timeout(DRAIN_TIMEOUT, async {
        for api in apis.tasks {
            let _ = api.await;
        }
    })
    .await;
    let _ = checker.await;
    let _ = listener.await;
    let _ = retention.await;
    if let Some(refresher) = refresher {
        let _ = refresher.await;
    }
    if let Some(pg) = embedded.as_mut() {
        tracing::info!("stopping embedded PostgreSQL");
        tokio::task::block_in_place(|| pg.stop())?;
    }
    tracing::info!("coordinator stopped");
    Ok(())
}

/// The API's listeners, serving until `stop`.
struct Apis {
    tasks: Vec<tokio::task::JoinHandle<std::io::Result<()>>>,
    /// Where the primary proxy forwards what users send: the whole API, or
    /// without `--internal-listen`'s proxy API.
    public: std::net::SocketAddr,
    /// `--internal-listen`'s bound address.
    internal: Option<std::net::SocketAddr>,
}

impl Apis {
    /// The whole API on `loopback` (the primary proxy registers there), and
    /// with `internal_listen` the proxy API there and the rest on a second
    /// loopback listener for the primary to forward to.
    async fn serve(
        state: api::AppState,
        loopback: tokio::net::TcpListener,
        internal_listen: Option<std::net::SocketAddr>,
        forwarded_by: &api::auth::Forwarded,
        stop: &CancellationToken,
    ) -> anyhow::Result<Self> {
        // Only the primary proxy is meant to speak to the loopback listeners:
        // there (and not on --internal-listen) its X-Forwarded-For names the
        // client, when the request carries this process's proof that the
        // primary proxy sent it (any local process can reach loopback).
        let whole = loopback.local_addr()?;
        let router = || api::router(state.clone(), dashboard::routes());
        let mut tasks = vec![serve_api(loopback, router(), Some(forwarded_by.clone()), stop.clone())];
        let Some(addr) = internal_listen else {
            return Ok(Self { tasks, public: whole, internal: None });
        };
        let internal = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("cannot listen on --internal-listen {addr}"))?;
        let internal_addr = internal.local_addr()?;
        tracing::info!(listen = %internal_addr, "proxy API listening (internal)");
        tasks.push(serve_api(internal, router(), None, stop.clone()));
        let public = tokio::net::TcpListener::bind(("127.0.0.1", 0)).await?;
        let public_addr = public.local_addr()?;
        let public_router = api::public_router(state, dashboard::routes());
        tasks.push(serve_api(public, public_router, Some(forwarded_by.clone()), stop.clone()));
        Ok(Self { tasks, public: public_addr, internal: Some(internal_addr) })
    }
}

/// Serves `router` on `listener` until `stop`; with `forwarded`, requests
/// carrying its proof come from the primary proxy, whose `X-Forwarded-For`
/// names the client (see [`api::auth::client_addr`]).
fn serve_api(
    listener: tokio::net::TcpListener,
    router: axum::Router,
    forwarded: Option<api::auth::Forwarded>,
    stop: CancellationToken,
) -> tokio::task::JoinHandle<std::io::Result<()>> {
    let router = router.layer(axum::Extension(forwarded));
    let service = router.into_make_service_with_connect_info::<std::net::SocketAddr>();
    tokio::spawn(async move { axum::serve(listener, service).with_graceful_shutdown(stop.cancelled_owned()).await })
}

/// Connects to the configured database, starting the embedded one if needed.
async fn open_database(config: &Config) -> anyhow::Result<(Store, Option<EmbeddedPostgres>)> {
    let pool_size = config.postgres_pool_size;
    match &config.database {
        Database::External { url, ca_cert } => {
            let options = external_options(url.expose(), ca_cert.as_deref())?;
            Ok((Store::connect(options, pool_size, DATABASE_START_DEADLINE).await?, None))
        }
        Database::Embedded { data_dir, bin_dir } => {
            let bins = PgBinaries::find(bin_dir.as_deref())?;
            let mut pg = EmbeddedPostgres::new(data_dir, bins)?;
            tracing::info!(data_dir = %data_dir.display(), "starting embedded PostgreSQL");
            tokio::task::block_in_place(|| pg.start())?;
            pg.ensure_database().await?;
            let store = Store::connect(pg.connect_options(), pool_size, DATABASE_START_DEADLINE).await?;
            Ok((store, Some(pg)))
        }
    }
}

/// `--postgres-url`'s options; a CA file (`--postgres-ca-cert`) means
/// `sslmode=verify-full` unless the URL chose a mode itself.
fn external_options(url: &str, ca_cert: Option<&std::path::Path>) -> anyhow::Result<sqlx::postgres::PgConnectOptions> {
    use sqlx::postgres::{PgConnectOptions, PgSslMode};
    let mut options: PgConnectOptions = url.parse().context("invalid --postgres-url")?;
    if let Some(ca) = ca_cert {
        anyhow::ensure!(ca.is_file(), "--postgres-ca-cert {}: no such file", ca.display());
        options = options.ssl_root_cert(ca);
        let mode_set =
            url::Url::parse(url).is_ok_and(|u| u.query_pairs().any(|(k, _)| k == "sslmode" || k == "ssl-mode"));
        if !mode_set {
            options = options.ssl_mode(PgSslMode::VerifyFull);
        }
    }
    Ok(options)
}
