//! Micro-benchmarks of the request hot path (criterion): host parsing, token
//! verification cached and uncached, route lookup, header sanitizing, and the
//! connection log's part of a request.

use criterion::{criterion_group, criterion_main, Criterion};
use meridian_regions::app_token::{generate_key, subdomain_binding, AppClaims, Signer, Verifier, ISSUER};
use std::hint::black_box;
use std::sync::Arc;

const HOST: &str = "code--main--dev--alice.sydney.example.com";

fn host_parsing(c: &mut Criterion) {
    c.bench_function("app host parse", |b| {
        b.iter(|| meridian_regions::app_url::parse_host(black_box(HOST), black_box("sydney.example.com")))
    });
}

/// An owner's app token's claims for [`HOST`], valid from `iat` to `exp`.
fn claims(iat: i64, exp: i64) -> AppClaims {
    AppClaims {
        iss: ISSUER.into(),
        sub: uuid::Uuid::new_v4().to_string(),
        binding: subdomain_binding(HOST),
        agent_id: uuid::Uuid::new_v4(),
        upstream: "http://127.0.0.1:8080".into(),
        share: meridian_regions::api::Share::Owner,
        sandbox: false,
        cors_passthru: false,
        dial: Default::default(),
        iat,
        nbf: iat,
        exp,
        sid: Some(uuid::Uuid::new_v4()),
    }
}

fn tokens(c: &mut Criterion) {
    let (der, public) = generate_key("k1", [7u8; 32]);
    let signer = Signer::new("k1", &der);
    let verifier = Verifier::new(&[public]);
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() as i64;
    let binding = subdomain_binding(HOST);
    let claims = claims(now, now + 300);
    let token = signer.sign(&claims).unwrap();
    c.bench_function("token verify uncached (Ed25519)", |b| b.iter(|| verifier.verify(black_box(&token), &binding)));
    // The proxy's cached path: a moka lookup keyed by the token, then binding and expiry checks.
    let cache: moka::sync::Cache<String, Arc<AppClaims>> = moka::sync::Cache::builder().max_capacity(100_000).build();
    cache.insert(token.clone(), Arc::new(claims));
    c.bench_function("token verify cached (moka hit)", |b| {
        b.iter(|| {
            let hit = cache.get(black_box(&token)).unwrap();
            black_box(hit.binding == binding && hit.exp > now)
        })
    });
}

fn routes(c: &mut Criterion) {
    let table = meridian_proxy::routes::RouteTable::default();
    let agents: Vec<uuid::Uuid> = (0..10_000).map(|_| uuid::Uuid::new_v4()).collect();
    let update = meridian_regions::api::RouteUpdate {
        version: 1,
        routes: agents
            .iter()
            .map(|a| meridian_regions::api::AgentRoute {
                agent_id: *a,
                region: Some("sydney".into()),
                replica_id: Some(uuid::Uuid::nil()),
                relay_url: Some("http://127.0.0.1:7091".into()),
            })
            .collect(),
        ..Default::default()
    };
    table.apply(&update, true);
    c.bench_function("route lookup (10k agents)", |b| b.iter(|| table.get(black_box(agents[4242]))));
}

/// The suspension check every token passes ([`meridian_proxy::access`]):
/// with nobody refused (one atomic load), and with 1,000 users refused (the
/// token's user looked up).
fn access(c: &mut Criterion) {
    use meridian_regions::api::UserAccess;
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() as i64;
    let token = claims(now, now + 300);
    let access = meridian_proxy::access::Access::default();
    c.bench_function("access: a token checked, nobody refused", |b| b.iter(|| access.refuses(black_box(&token))));
    let refused: Vec<UserAccess> = (0..1000)
        .map(|_| UserAccess { user_id: uuid::Uuid::new_v4(), suspended: true, revoked_sessions: Vec::new() })
        .collect();
    access.apply(&refused, true);
    c.bench_function("access: a token checked, 1,000 users refused", |b| b.iter(|| access.refuses(black_box(&token))));
}

fn headers(c: &mut Criterion) {
    c.bench_function("request header sanitizing", |b| {
        b.iter_batched(
            || {
                let mut req = pingora::http::RequestHeader::build("GET", b"/x?y=1", None).unwrap();
                req.insert_header("Host", HOST).unwrap();
                req.insert_header("Cookie", "meridian_app_token=abc; keep=1; meridian_session=s").unwrap();
                req.insert_header("X-Forwarded-For", "10.0.0.1").unwrap();
                req.insert_header("Meridian-Session-Token", "t").unwrap();
                req.insert_header("Accept", "text/html").unwrap();
                req
            },
            |mut req| {
                meridian_proxy::hygiene::request(
                    &mut req,
                    Some(http::HeaderValue::from_static("127.0.0.1")),
                    "http",
                    HOST,
                )
            },
            criterion::BatchSize::SmallInput,
        )
    });
}

/// The connection log per request: counting a request into its open app
/// session (the common case), with 1,000 sessions of other clients open.
fn connection_log(c: &mut Criterion) {
    use meridian_proxy::connection_log::{ConnectionLog, Seen};
    let dir = tempfile::tempdir().unwrap();
    let log =
        ConnectionLog::open(dir.path(), 1 << 30, std::time::Duration::from_secs(3600), uuid::Uuid::nil()).unwrap();
    let req = meridian_regions::app_url::AppRequest {
        user: "alice".into(),
        workspace: "dev".into(),
        agent: Some("main".into()),
        target: meridian_regions::app_url::AppTarget::Slug("code".into()),
    };
    let claims = claims(0, i64::MAX);
    let seen = |ip: std::net::IpAddr| Seen {
        req: &req,
        stream: false,
        claims: Some(&claims),
        client: Some(ip),
        user_agent: Some("Mozilla/5.0 (X11; Linux x86_64)"),
    };
    for i in 0..1000u32 {
        log.app_request(&seen(std::net::Ipv4Addr::from(0x0a00_0000 + i).into()), 200, 0, 512);
    }
    let ip: std::net::IpAddr = [127, 0, 0, 1].into();
    log.app_request(&seen(ip), 200, 0, 512);
    c.bench_function("connection log: a request counted into its app session", |b| {
        b.iter(|| log.app_request(black_box(&seen(ip)), 200, 0, 512))
    });
}

criterion_group!(benches, host_parsing, tokens, routes, access, headers, connection_log);
criterion_main!(benches);
