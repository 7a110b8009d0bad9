//! The tunnel protocol between a relay (`Tunnel`) and the agent
//! (`attach::serve`), over an in-memory connection, with a real app socket.

use hyper_util::rt::TokioIo;
use meridian_agent::attach::{serve, Serving};
use meridian_agent::policy::Policy;
use meridian_regions::tunnel::{TlsClient, Tunnel};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_util::sync::CancellationToken;

/// An app that answers every connection with 64 KiB, then waits for the end.
async fn firehose() -> std::net::SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            tokio::spawn(async move {
                let chunk = vec![b'x'; 64 << 10];
                if s.write_all(&chunk).await.is_ok() {
                    let _ = tokio::io::copy(&mut s, &mut tokio::io::sink()).await;
                }
            });
        }
    });
    addr
}

/// The agent's session table, with a host key made for the test.
fn streams() -> meridian_agent::streams::Streams {
    let dir = tempfile::tempdir().unwrap();
    let key = meridian_agent::ssh::host_key::load_or_create(&dir.path().join("key")).unwrap();
    meridian_agent::streams::Streams::new(meridian_agent::ssh::Server::new(key))
}

/// A relay tunnel to an agent serving on the other end of an in-memory pipe;
/// data connections would dial a URL nothing listens on.
async fn tunnel() -> Tunnel {
    let (relay_end, agent_end) = tokio::io::duplex(1 << 20);
    let serving = Serving {
        policy: Policy::new(&[]),
        relay_url: "http://127.0.0.1:1".into(),
        relays: meridian_agent::attach::Relays::new([]).0,
        tls: TlsClient::new(None).unwrap(),
        pipe_idle: meridian_regions::pipe::DEFAULT_IDLE,
        streams: streams(),
    };
    tokio::spawn(serve(TokioIo::new(agent_end), serving, CancellationToken::new(), CancellationToken::new()));
    let (tunnel, driver) = Tunnel::client(TokioIo::new(relay_end)).await.unwrap();
    tokio::spawn(driver);
    tunnel
}

/// Pooled app connections are dropped by the proxy while the app is still
/// sending (a client that went away mid-download, a pool that is full): the
/// relay resets those streams, and frames keep arriving for them. Thousands
/// of such resets over a tunnel's life must not make HTTP/2's rapid-reset
/// defence close the tunnel, which fails every request on it.
#[tokio::test]
async fn a_tunnel_survives_thousands_of_abandoned_streams() {
    let app = firehose().await;
    let tunnel = tunnel().await;
    let target = app.to_string();
    // Batches of streams dropped together while the app still sends: more
    // resets at once than HTTP/2 remembers, so late frames meet forgotten streams.
    for batch in 0..20 {
        let mut streams = Vec::new();
        for i in 0..100 {
            let mut stream = tokio::time::timeout(Duration::from_secs(5), tunnel.open(&target, None))
                .await
                .unwrap_or_else(|_| panic!("batch {batch}, stream {i} did not open within 5 s"))
                .unwrap_or_else(|e| panic!("batch {batch}, stream {i}: {e}"));
            let mut first = [0u8; 1024];
            stream.read_exact(&mut first).await.ok();
            streams.push(stream);
        }
        drop(streams);
        tokio::task::yield_now().await;
    }
    assert!(tunnel.is_open(), "the tunnel was closed by its own stream resets");
    let mut stream = tunnel.open(&target, None).await.expect("a stream after the churn");
    let mut first = [0u8; 16];
    stream.read_exact(&mut first).await.unwrap();
    assert_eq!(&first, b"xxxxxxxxxxxxxxxx");
}

/// An agent that cannot reach the relay for a data connection says so, and
/// the relay stops asking that tunnel for them.
#[tokio::test]
async fn an_agent_that_cannot_dial_back_says_so() {
    let app = firehose().await;
    let tunnel = tunnel().await;
    assert!(tunnel.offers_data());
    let nonce = meridian_regions::data::Nonce::random().to_header();
    assert!(!tunnel.request_data(&app.to_string(), &nonce, &[]).await.unwrap(), "no relay listens there");
    assert!(!tunnel.offers_data());
    // Targets the policy refuses are refused as before, not taken for a dial failure.
    let refused = tunnel.request_data("10.0.0.1:8080", &nonce, &[]).await;
    assert!(matches!(refused, Err(meridian_regions::tunnel::StreamError::Refused { status: 403, .. })), "{refused:?}");
    // Asked to dial a relay it was not given (a mesh hop from a relay that
    // is not in its list), it refuses to dial rather than go anywhere it is told.
    let elsewhere = [(meridian_regions::data::DIAL_HEADER, "http://127.0.0.1:9")];
    assert!(!tunnel.request_data(&app.to_string(), &nonce, &elsewhere).await.unwrap());
}
