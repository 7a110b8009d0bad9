//! `bare-pingora-published LISTEN UPSTREAM [CERT KEY]`: the smallest reverse
//! proxy pingora 0.9.1 as published makes (one worker thread, keep-alive to
//! one upstream), the same program as `meridian-bench --bare-pingora` but
//! built without the vendored patches. See BENCHMARKS.md.

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

// The same source as `meridian-bench --bare-pingora`'s.
#[path = "../../src/bare_proxy.rs"]
mod bare_proxy;

fn main() {
    // Takes `meridian-bench --bare-pingora`'s arguments, that flag included or not.
    let args: Vec<String> = std::env::args().skip(1).filter(|a| a != "--bare-pingora").collect();
    let (listen, upstream, tls) = match args.as_slice() {
        [l, u] => (l, u, None),
        [l, u, c, k] => (l, u, Some((c, k))),
        _ => {
            eprintln!("usage: bare-pingora-published LISTEN UPSTREAM [CERT KEY]");
            std::process::exit(2);
        }
    };
    let upstream = upstream.parse().unwrap_or_else(|e| {
        eprintln!("bare-pingora-published: upstream {upstream}: {e}");
        std::process::exit(2);
    });
    let tls = tls.map(|(c, k)| (c.as_str(), k.as_str()));
    if let Err(e) = bare_proxy::serve(listen, upstream, tls) {
        eprintln!("bare-pingora-published: {e}");
        std::process::exit(2);
    }
}
