//! The delivery client's connections, through `Sender` against real receivers on
//! loopback: one connection carries many deliveries, a connection the peer closed or
//! left mid-answer is never reused, and each request names its host and target as the
//! URL does.

use std::time::Duration;

use bytes::Bytes;
use kamiyo_webhooks::delivery::client::{Outgoing, RESPONSE_SNIPPET_BYTES};
use kamiyo_webhooks::delivery::Sender;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

use crate::helpers::test_config;
use crate::receiver::{Behaviour, Reply, TestReceiver};

fn sender_for(receiver: &TestReceiver) -> Sender {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let config = test_config(&dir, receiver, "unused-admin-token");
    Sender::new(&config).expect("the sender builds")
}

fn body() -> Bytes {
    Bytes::from_static(br#"{"event":"exploit.detected","data":{"id":1}}"#)
}

async fn send(sender: &Sender, url: &str, id: i64) -> kamiyo_webhooks::delivery::SendOutcome {
    let body = body();
    sender
        .send(&Outgoing {
            url,
            secret: "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
            event: "exploit.detected",
            delivery_id: id,
            body: &body,
        })
        .await
}

#[tokio::test]
async fn one_connection_carries_many_deliveries() {
    let receiver = TestReceiver::start().await;
    let sender = sender_for(&receiver);
    let url = receiver.url("/hook");
    for id in 1..=20 {
        let outcome = send(&sender, &url, id).await;
        assert!(outcome.succeeded(), "delivery {id}: {outcome:?}");
    }
    assert_eq!(receiver.count("/hook"), 20);
    assert_eq!(
        receiver.accepted_connections(),
        1,
        "20 deliveries one after another should share one kept-alive connection"
    );
    assert_eq!(sender.idle_connections(), 1);

    // Eight at once need eight connections, the idle one among them, and no more.
    let sends = (21..=28).map(|id| send(&sender, &url, id));
    for outcome in futures::future::join_all(sends).await {
        assert!(outcome.succeeded(), "{outcome:?}");
    }
    let accepted = receiver.accepted_connections();
    assert!(
        (2..=8).contains(&accepted),
        "8 concurrent deliveries opened {accepted} connections in all"
    );
}

#[tokio::test]
async fn a_request_names_its_host_target_and_agent_as_the_url_does() {
    let receiver = TestReceiver::start().await;
    let sender = sender_for(&receiver);
    let url = receiver.url("/hook/inner?team=sec&n=2");
    let outcome = send(&sender, &url, 7).await;
    assert!(outcome.succeeded(), "{outcome:?}");
    let got = receiver.requests("/hook/inner");
    assert_eq!(got.len(), 1);
    let request = &got[0];
    assert_eq!(request.method, "POST");
    assert_eq!(request.target, "/hook/inner?team=sec&n=2");
    let authority = receiver.base_url.trim_start_matches("https://");
    assert_eq!(request.header("host"), authority);
    assert!(
        request.header("user-agent").starts_with("kamiyo-webhooks/"),
        "user agent {}",
        request.header("user-agent")
    );
    assert_eq!(request.header("content-type"), "application/json");
    assert_eq!(
        request.header("content-length"),
        body().len().to_string(),
        "the body goes with its length, not chunked"
    );
    assert_eq!(request.body, body().to_vec());
    assert_eq!(request.delivery_id(), 7);
}

#[tokio::test]
async fn an_answer_longer_than_the_log_keeps_does_not_leave_its_connection_in_the_pool() {
    let receiver = TestReceiver::start().await;
    let sender = sender_for(&receiver);
    let long = "x".repeat(256 * 1024);
    receiver.set(
        "/long",
        Behaviour::always(Reply::status(500).body(long.clone())),
    );
    let url = receiver.url("/long");
    for id in 1..=2 {
        let outcome = send(&sender, &url, id).await;
        assert_eq!(outcome.status_code, Some(500), "{outcome:?}");
        assert_eq!(outcome.error_kind, Some("http_status"));
        let kept = outcome
            .response_body
            .expect("the start of the answer is kept");
        assert_eq!(kept.len(), RESPONSE_SNIPPET_BYTES);
        assert!(long.starts_with(&kept));
    }
    // The unread rest of the first answer would have been read as the second's start.
    assert_eq!(receiver.accepted_connections(), 2);
    assert_eq!(sender.idle_connections(), 0);

    // A short answer leaves its connection ready for the next request.
    receiver.set("/long", Behaviour::always(Reply::ok()));
    assert!(send(&sender, &url, 3).await.succeeded());
    assert!(send(&sender, &url, 4).await.succeeded());
    assert_eq!(receiver.accepted_connections(), 3);
}

/// A plain-HTTP server that answers every connection's first request with 200 and then
/// closes it, as a server whose keep-alive timeout is shorter than ours does.
async fn one_answer_per_connection() -> (
    String,
    tokio::task::JoinHandle<()>,
    std::sync::Arc<std::sync::atomic::AtomicUsize>,
) {
    use std::sync::atomic::{AtomicUsize, Ordering};
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/closing", listener.local_addr().unwrap());
    let accepted = std::sync::Arc::new(AtomicUsize::new(0));
    let counter = accepted.clone();
    let server = tokio::spawn(async move {
        loop {
            let (mut stream, _) = listener.accept().await.unwrap();
            counter.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                let mut seen = Vec::new();
                let mut buf = [0u8; 4096];
                // Headers, then the body its content-length announces.
                loop {
                    let n = stream.read(&mut buf).await.unwrap_or(0);
                    if n == 0 {
                        return;
                    }
                    seen.extend_from_slice(&buf[..n]);
                    if let Some(end) = seen.windows(4).position(|w| w == b"\r\n\r\n") {
                        let head = String::from_utf8_lossy(&seen[..end]).to_ascii_lowercase();
                        let length: usize = head
                            .lines()
                            .find_map(|l| l.strip_prefix("content-length:"))
                            .map(|v| v.trim().parse().unwrap())
                            .unwrap_or(0);
                        if seen.len() >= end + 4 + length {
                            break;
                        }
                    }
                }
                // No `connection: close`: the client learns only from the socket, once
                // the connection is back in its pool.
                let _ = stream
                    .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
                    .await;
                tokio::time::sleep(Duration::from_millis(30)).await;
                let _ = stream.shutdown().await;
            });
        }
    });
    (url, server, accepted)
}

#[tokio::test]
async fn a_connection_the_peer_closed_is_replaced_without_a_failed_attempt() {
    let receiver = TestReceiver::start_plain().await;
    let sender = sender_for(&receiver);
    let (url, server, accepted) = one_answer_per_connection().await;
    for id in 1..=5 {
        let outcome = send(&sender, &url, id).await;
        assert!(outcome.succeeded(), "delivery {id}: {outcome:?}");
        assert_eq!(outcome.response_body.as_deref(), Some("ok"));
        // Long enough for the close to arrive before the next request.
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(accepted.load(std::sync::atomic::Ordering::SeqCst), 5);
    server.abort();
}

#[tokio::test]
async fn an_idle_connection_is_closed_after_its_time_without_more_traffic() {
    use kamiyo_webhooks::delivery::connect::{tls_config, Connector, ConnectorConfig, Destination};
    use rustls::pki_types::pem::PemObject;

    let receiver = TestReceiver::start().await;
    let ca = std::fs::read(&receiver.ca_path).unwrap();
    let roots = rustls::pki_types::CertificateDer::pem_slice_iter(&ca)
        .collect::<Result<Vec<_>, _>>()
        .unwrap();
    let connector = Connector::new(ConnectorConfig {
        policy: kamiyo_webhooks::domain::netguard::NetworkPolicy::new(&["127.0.0.0/8".into()])
            .unwrap(),
        overrides: Default::default(),
        tls: tls_config(roots).unwrap(),
        connect_timeout: Duration::from_secs(5),
        idle_timeout: Duration::from_millis(300),
        max_idle_per_origin: 4,
    });
    let dest = Destination::parse(&receiver.url("/idle")).unwrap();
    let request = dest.post(body(), hyper::HeaderMap::new());
    let (status, _) = connector
        .exchange(&dest.origin, request, 1024)
        .await
        .expect("the exchange");
    assert_eq!(status, 200);
    assert_eq!(connector.idle_connections(), 1);
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(receiver.open_connections(), 1, "kept while young");

    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while receiver.open_connections() > 0 && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(connector.idle_connections(), 0);
    assert_eq!(
        receiver.open_connections(),
        0,
        "the idle connection should be closed once past its time"
    );
}
