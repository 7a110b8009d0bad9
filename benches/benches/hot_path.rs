//! Micro-benchmarks of the request hot path (criterion): host parsing, token
//! verification cached and uncached, route lookup, header sanitizing.

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

fn tokens(c: &mut Criterion) {
    let (der, public) = generate_key("k1", [7u8; 32]);
    let signer = Signer::new("k1", &der);
    let verifier = Verifier::new(&[public]);
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() as i64;
    let binding = subdomain_binding(HOST);
    let claims = AppClaims {
        iss: ISSUER.into(),
        sub: uuid::Uuid::new_v4().to_string(),
        binding: binding.clone(),
        agent_id: uuid::Uuid::new_v4(),
        upstream: "http://127.0.0.1:8080".into(),
        share: meridian_regions::api::Share::Owner,
        sandbox: false,
        cors_passthru: false,
        dial: Default::default(),
        iat: now,
        nbf: now,
        exp: now + 300,
    };
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
            |mut req| meridian_proxy::hygiene::request(&mut req, Some("127.0.0.1".into()), "http", HOST),
            criterion::BatchSize::SmallInput,
        )
    });
}

criterion_group!(benches, host_parsing, tokens, routes, headers);
criterion_main!(benches);
