//! The HTTP edge under slow, idle and too many clients, and TLS, over real sockets: stalled
//! headers are closed while a normal client is served, a trickled body is cut with `408`, an
//! idle keep-alive connection is closed, requests past the in-flight cap are shed with `503`
//! and nothing of them is applied, a handler past its deadline answers `504` and a retry with
//! the same key learns the outcome, and HTTPS serves with a certificate a verifying client
//! accepts, reloaded on SIGHUP.

use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::helpers::{spawn_app_full, spawn_app_with, ServerProcess, TestApp, ADMIN_TOKEN};

/// An HTTP/1.1 response read off a raw socket.
#[derive(Debug)]
struct RawResponse {
    status: u16,
    head: String,
    body: Value,
}

/// Reads one response whose body has a Content-Length (every problem and JSON answer here).
async fn read_response(stream: &mut TcpStream) -> RawResponse {
    let mut bytes = Vec::new();
    let mut chunk = [0u8; 4096];
    let head_end = loop {
        if let Some(end) = bytes.windows(4).position(|window| window == b"\r\n\r\n") {
            break end + 4;
        }
        let read = stream.read(&mut chunk).await.expect("read a response");
        assert!(read > 0, "the connection closed before a response: {:?}", String::from_utf8_lossy(&bytes));
        bytes.extend_from_slice(&chunk[..read]);
    };
    let head = String::from_utf8_lossy(&bytes[..head_end]).to_lowercase();
    let length: usize = head
        .lines()
        .find_map(|line| line.strip_prefix("content-length:"))
        .map(|value| value.trim().parse().expect("a length"))
        .expect("a Content-Length");
    while bytes.len() < head_end + length {
        let read = stream.read(&mut chunk).await.expect("read the body");
        assert!(read > 0, "the connection closed inside the body");
        bytes.extend_from_slice(&chunk[..read]);
    }
    let status = head[9..12].parse().expect("a status code");
    let body = serde_json::from_slice(&bytes[head_end..head_end + length]).expect("a JSON body");
    RawResponse { status, head, body }
}

/// Waits until the server closes `stream` (EOF or reset), at most `timeout`; how long it took.
async fn closed_within(stream: &mut TcpStream, timeout: Duration) -> Duration {
    let started = Instant::now();
    let mut sink = [0u8; 1024];
    let closed = tokio::time::timeout(timeout, async {
        loop {
            match stream.read(&mut sink).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    })
    .await;
    assert!(closed.is_ok(), "the server kept the connection open for {timeout:?}");
    started.elapsed()
}

fn host(address: &str) -> &str {
    address.trim_start_matches("http://").trim_start_matches("https://")
}

/// With the server's open-file limit at 512 (so its connection cap fits at 256), 300
/// connections that send half a request's headers and stall are each closed after the 1 s
/// header timeout, and a normal client's `GET /healthz` on a new connection is answered all
/// along (those beyond the cap wait in the backlog at most a header timeout or two).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn stalled_headers_are_closed_after_the_header_timeout_while_a_normal_client_is_served() {
    // The test's own side holds 300+ sockets too.
    rlimit::increase_nofile_limit(4096).expect("raise the test's open-file limit");
    let dir = tempfile::tempdir().expect("temporary folder");
    let database = format!("sqlite:{}", dir.path().join("creditgraph.db").display());
    let mut server = ServerProcess::launch(
        &["prlimit", "--nofile=512:512", "--"],
        &database,
        &["--header-read-timeout-seconds", "1", "--sandbox", "none"],
        &[],
        "http",
    );
    let address = host(&server.base).to_owned();
    let lowered = server.wait_for_line("the connection cap is lowered", Duration::from_secs(5));
    assert!(lowered.contains("connections_max=256"), "{lowered}");

    let mut stalled = Vec::new();
    for _ in 0..300 {
        let mut stream = TcpStream::connect(&address).await.expect("connect");
        stream.write_all(b"GET /healthz HTTP/1.1\r\nHost: creditgraph\r\nX-Half: ").await.expect("half the headers");
        stalled.push((stream, Instant::now()));
    }
    // A normal client, a new connection per request, all through the attack.
    let client = reqwest::Client::builder().pool_max_idle_per_host(0).build().expect("client");
    let probes = async {
        for _ in 0..5 {
            let started = Instant::now();
            let reply = client
                .get(format!("{}/healthz", server.base))
                .timeout(Duration::from_secs(5))
                .send()
                .await
                .expect("healthz is answered during the attack");
            assert_eq!(reply.status(), 200);
            assert!(started.elapsed() < Duration::from_secs(5));
        }
    };
    let closes = async {
        let mut earliest = Duration::MAX;
        for (stream, sent) in &mut stalled {
            closed_within(stream, Duration::from_secs(15)).await;
            earliest = earliest.min(sent.elapsed());
        }
        earliest
    };
    let ((), earliest) = tokio::join!(probes, closes);
    assert!(
        earliest >= Duration::from_millis(900),
        "a stalled connection was closed before the header timeout: {earliest:?}"
    );
    // And the server still answers once the attack is gone.
    let reply = client.get(format!("{}/healthz", server.base)).send().await.expect("healthz");
    assert_eq!(reply.status(), 200);
}

/// A hold whose body trickles in one byte every 200 ms is cut at the 1 s body deadline with a
/// `408 request_timeout` problem and a closed connection, and nothing of it is applied.
#[tokio::test]
async fn a_trickled_body_is_cut_with_408_and_applies_nothing() {
    let app = spawn_app_with(|settings| settings.api.request_body_timeout_seconds = 1).await;
    app.fund("alice", "10").await;
    let body = json!({"account_id": "alice", "amount": "3"}).to_string();
    let mut stream = TcpStream::connect(host(&app.address)).await.expect("connect");
    let head = format!(
        "POST /v1/holds HTTP/1.1\r\nHost: creditgraph\r\nAuthorization: Bearer {ADMIN_TOKEN}\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).await.expect("headers");
    let (mut reader, mut writer) = stream.into_split();
    let started = Instant::now();
    let trickle = tokio::spawn(async move {
        for byte in body.bytes() {
            if writer.write_all(&[byte]).await.is_err() {
                return;
            }
            // The slowness under test: one byte per 200 ms, 5 s for the whole body.
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    });
    let mut stream = {
        let mut bytes = Vec::new();
        let read = tokio::time::timeout(Duration::from_secs(10), reader.read_to_end(&mut bytes)).await;
        read.expect("answered and closed within 10 s").expect("read");
        bytes
    };
    trickle.abort();
    let elapsed = started.elapsed();
    let text = String::from_utf8_lossy(&stream).to_string();
    assert!(text.starts_with("HTTP/1.1 408"), "{text}");
    assert!(text.to_lowercase().contains("connection: close"), "{text}");
    let json_start = text.find("\r\n\r\n").expect("a head") + 4;
    let problem: Value = serde_json::from_slice(&stream.split_off(json_start)).expect("problem JSON");
    assert_eq!(problem["code"], "request_timeout", "{problem}");
    assert!(elapsed >= Duration::from_millis(900) && elapsed < Duration::from_secs(5), "{elapsed:?}");
    assert_eq!(app.figures("alice").await, ("10".to_owned(), "0".to_owned(), "10".to_owned()));
}

/// A keep-alive connection is reused while it is busy, and closed once it has been idle for
/// the 1 s idle timeout (the header timeout, 30 s, is not what closes it).
#[tokio::test]
async fn an_idle_keep_alive_connection_is_closed_after_the_idle_timeout() {
    let app = spawn_app_with(|settings| {
        settings.edge.limits.idle_timeout = Duration::from_secs(1);
        settings.edge.limits.header_read_timeout = Duration::from_secs(30);
    })
    .await;
    let mut stream = TcpStream::connect(host(&app.address)).await.expect("connect");
    for _ in 0..2 {
        stream.write_all(b"GET /healthz HTTP/1.1\r\nHost: creditgraph\r\n\r\n").await.expect("request");
        let response = read_response(&mut stream).await;
        assert_eq!((response.status, response.body["status"].as_str()), (200, Some("ok")), "{response:?}");
        assert!(!response.head.contains("connection: close"), "kept alive: {response:?}");
    }
    let idle = closed_within(&mut stream, Duration::from_secs(10)).await;
    assert!(idle >= Duration::from_millis(900), "closed before the idle timeout: {idle:?}");
}

/// Holds the row of `account` locked from another PostgreSQL session, so ledger commands on
/// it wait inside their handlers, until the returned transaction is committed.
async fn lock_account(database: &str, account: &str) -> tokio_postgres::Client {
    let (client, connection) = tokio_postgres::connect(database, tokio_postgres::NoTls).await.expect("connect");
    tokio::spawn(connection);
    client.batch_execute("BEGIN").await.expect("begin");
    let rows = client
        .query("SELECT account_id FROM accounts WHERE account_id = $1 FOR UPDATE", &[&account])
        .await
        .expect("lock the account row");
    assert_eq!(rows.len(), 1, "the account exists");
    client
}

async fn postgres_app(change: impl FnOnce(&mut cli::Settings)) -> (TestApp, String) {
    let mut url = None;
    let app = spawn_app_full(
        true,
        |settings| {
            if let cli::DatabaseUrl::Postgres(database) = &settings.database {
                url = Some(database.clone());
            }
            change(settings);
        },
        None,
    )
    .await;
    (app, url.expect("a PostgreSQL database"))
}

async fn hold_with_key(app: &TestApp, account: &str, amount: &str, key: &str) -> reqwest::Response {
    app.client
        .post(format!("{}/v1/holds", app.address))
        .bearer_auth(ADMIN_TOKEN)
        .header("Idempotency-Key", key)
        .json(&json!({"account_id": account, "amount": amount}))
        .send()
        .await
        .expect("hold request")
}

/// With two requests waiting inside their handlers (the cap is 2), the next requests are
/// answered `503 overloaded` with `Retry-After` at once, a shed hold applies nothing, and the
/// same hold retried with its key once the cap frees applies exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn past_the_in_flight_cap_requests_are_shed_with_503_and_nothing_is_half_applied() {
    let (app, database) = postgres_app(|settings| settings.api.requests_in_flight_max = 2).await;
    app.fund("blocked", "10").await;
    app.fund("free", "10").await;
    let lock = lock_account(&database, "blocked").await;
    let waiting: Vec<_> = (0..2)
        .map(|index| {
            let (client, address) = (app.client.clone(), app.address.clone());
            tokio::spawn(async move {
                loop {
                    let status = client
                        .post(format!("{address}/v1/holds"))
                        .bearer_auth(ADMIN_TOKEN)
                        .header("Idempotency-Key", format!("waiting-{index}"))
                        .json(&json!({"account_id": "blocked", "amount": "1"}))
                        .send()
                        .await
                        .expect("hold request")
                        .status()
                        .as_u16();
                    // Shed while the probes below briefly held the other slot: as a client should, retry.
                    if status != 503 {
                        return status;
                    }
                }
            })
        })
        .collect();
    // The event: the first 503, once both holds wait in their handlers.
    let deadline = Instant::now() + Duration::from_secs(10);
    let shed = loop {
        let reply = app.get("/v1/accounts/free").await;
        if reply.status == 503 {
            break reply;
        }
        assert_eq!(reply.status, 200, "{reply:?}");
        if Instant::now() >= deadline {
            let finished: Vec<bool> = waiting.iter().map(|task| task.is_finished()).collect();
            panic!("the in-flight cap never shed a request; hold tasks finished: {finished:?}");
        }
        tokio::task::yield_now().await;
    };
    shed.assert_problem(503, "overloaded");
    assert_eq!(shed.body["retry_after_seconds"], 1);
    let refused = hold_with_key(&app, "free", "4", "shed-hold").await;
    assert_eq!(refused.status(), 503);
    assert_eq!(refused.headers().get("retry-after").and_then(|value| value.to_str().ok()), Some("1"));
    let held = app.store.account(&ledger::AccountId::parse("free").expect("id")).await.expect("read");
    assert_eq!(held.expect("the account").balances.held, ledger::Amount::ZERO, "a shed hold applied nothing");

    lock.batch_execute("COMMIT").await.expect("release the row");
    for task in waiting {
        assert_eq!(task.await.expect("the hold task"), 201);
    }
    let retried = hold_with_key(&app, "free", "4", "shed-hold").await;
    assert_eq!(retried.status(), 201);
    let again = hold_with_key(&app, "free", "4", "shed-hold").await;
    assert_eq!(again.status(), 201, "the replay of the same key");
    assert_eq!(app.figures("free").await, ("10".to_owned(), "4".to_owned(), "6".to_owned()));
    assert_eq!(app.figures("blocked").await, ("10".to_owned(), "2".to_owned(), "8".to_owned()));
    app.assert_verified().await;
}

/// A hold that waits past the 1 s handler deadline is answered `504 handler_timeout`; it
/// commits once the row is free, and a retry with its key returns that one hold.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_handler_past_its_deadline_answers_504_and_a_retry_learns_the_outcome() {
    let (app, database) = postgres_app(|settings| settings.api.handler_timeout_seconds = 1).await;
    app.fund("slow", "10").await;
    let lock = lock_account(&database, "slow").await;
    let started = Instant::now();
    let reply = hold_with_key(&app, "slow", "3", "late-hold").await;
    let waited = started.elapsed();
    assert_eq!(reply.status(), 504);
    let problem: Value = reply.json().await.expect("problem JSON");
    assert_eq!(problem["code"], "handler_timeout", "{problem}");
    assert!(waited >= Duration::from_millis(900) && waited < Duration::from_secs(5), "{waited:?}");
    lock.batch_execute("COMMIT").await.expect("release the row");
    let retried = hold_with_key(&app, "slow", "3", "late-hold").await;
    assert_eq!(retried.status(), 201);
    assert_eq!(app.figures("slow").await, ("10".to_owned(), "3".to_owned(), "7".to_owned()));
    app.assert_verified().await;
}

/// A certificate authority and a certificate it signed for 127.0.0.1, as PEM: (CA, chain, key).
fn issue_certificate(name: &str) -> (String, String, String) {
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair};
    let mut authority = CertificateParams::new(Vec::<String>::new()).expect("CA params");
    authority.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    authority.distinguished_name.push(DnType::CommonName, format!("{name} test CA"));
    let authority_key = KeyPair::generate().expect("CA key");
    let authority_cert = authority.self_signed(&authority_key).expect("CA certificate");
    let leaf = CertificateParams::new(vec!["127.0.0.1".to_owned(), "localhost".to_owned()]).expect("leaf params");
    let leaf_key = KeyPair::generate().expect("leaf key");
    let leaf_cert = leaf.signed_by(&leaf_key, &authority_cert, &authority_key).expect("leaf certificate");
    (authority_cert.pem(), leaf_cert.pem(), leaf_key.serialize_pem())
}

/// A client that trusts only `authority` (no built-in roots), so a pass means verification.
fn verifying_client(authority: &str) -> reqwest::Client {
    reqwest::Client::builder()
        .tls_built_in_root_certs(false)
        .add_root_certificate(reqwest::Certificate::from_pem(authority.as_bytes()).expect("a CA"))
        .pool_max_idle_per_host(0)
        .build()
        .expect("client")
}

/// `--tls-cert`/`--tls-key` serve the API over HTTPS to a client that verifies the chain; plain
/// HTTP is not answered; on SIGHUP a new pair is served, and a broken one is refused while the
/// pair in use stays.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_is_served_over_https_and_its_certificate_reloads_on_sighup() {
    let dir = tempfile::tempdir().expect("temporary folder");
    let (cert_path, key_path) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    let write_pair = |chain: &str, key: &str| {
        // Written aside and renamed in, as certificate tools do, so a reload never reads half a file.
        for (path, text) in [(&cert_path, chain), (&key_path, key)] {
            let aside = path.with_extension("new");
            std::fs::write(&aside, text).expect("write");
            std::fs::rename(&aside, path).expect("rename");
        }
    };
    let (first_ca, chain, key) = issue_certificate("first");
    write_pair(&chain, &key);
    let database = format!("sqlite:{}", dir.path().join("creditgraph.db").display());
    let (cert_arg, key_arg) = (cert_path.display().to_string(), key_path.display().to_string());
    let mut server = ServerProcess::launch(
        &[],
        &database,
        &["--tls-cert", &cert_arg, "--tls-key", &key_arg, "--sandbox", "none"],
        &[],
        "https",
    );
    let healthz = format!("{}/healthz", server.base);
    let reply = verifying_client(&first_ca).get(&healthz).send().await.expect("HTTPS with a verified chain");
    assert_eq!(reply.status(), 200);
    assert_eq!(reply.json::<Value>().await.expect("JSON")["status"], "ok");
    let plain = reqwest::Client::new().get(healthz.replace("https://", "http://")).send().await;
    assert!(plain.is_err(), "plain HTTP on the TLS port: {plain:?}");

    let (second_ca, chain, key) = issue_certificate("second");
    write_pair(&chain, &key);
    server.signal("-HUP");
    server.wait_for_line("TLS certificate reloaded", Duration::from_secs(10));
    let second = verifying_client(&second_ca);
    assert_eq!(second.get(&healthz).send().await.expect("the new pair").status(), 200);
    // A new client: one that talked to the server before may resume its TLS session, which
    // presents no certificate.
    let fresh_first = verifying_client(&first_ca);
    assert!(fresh_first.get(&healthz).send().await.is_err(), "the old CA no longer verifies the served chain");

    let (_, _, other_key) = issue_certificate("third");
    write_pair(&chain, &other_key);
    server.signal("-HUP");
    server.wait_for_line("TLS certificate NOT reloaded", Duration::from_secs(10));
    assert_eq!(second.get(&healthz).send().await.expect("the pair in use stays").status(), 200);
}
