//! `spawn_app()` starts the real application on 127.0.0.1:0 over a fresh SQLite file with a
//! manual clock; `TestApp` has one typed helper per endpoint.

use std::sync::Arc;
use std::time::Duration;

use cli::{Application, DatabaseUrl, RunSettings, Settings};
use ledger::Timestamp;
use reqwest::Method;
use serde_json::{json, Value};
use server::{ApiConfig, Role};
use store::{Clock, LedgerStore, ManualClock};
use tempfile::TempDir;
use tokio::sync::broadcast::error::RecvError;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

pub const ADMIN_TOKEN: &str = "admin-test-token";
pub const SERVICE_TOKEN: &str = "service-test-token";

/// A response as the tests look at it.
#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    pub content_type: String,
    pub body: Value,
    pub text: String,
}

impl Reply {
    /// Asserts a problem+json response with this status and code.
    #[track_caller]
    pub fn assert_problem(&self, status: u16, code: &str) {
        assert_eq!((self.status, self.body["code"].as_str()), (status, Some(code)), "{self:#?}");
        assert_eq!(self.content_type, "application/problem+json", "{self:#?}");
        assert_eq!(self.body["status"], json!(status));
        for member in ["type", "title", "detail"] {
            assert!(self.body[member].is_string(), "problem without {member}: {self:#?}");
        }
    }

    #[track_caller]
    pub fn assert_status(&self, status: u16) -> &Value {
        assert_eq!(self.status, status, "{self:#?}");
        &self.body
    }

    pub fn str(&self, field: &str) -> &str {
        self.body[field].as_str().unwrap_or_else(|| panic!("no string {field} in {:#?}", self.body))
    }
}

/// What a request sends as its body.
pub enum Body {
    None,
    Json(Value),
    /// Raw bytes with a content type (or none).
    Raw(Option<&'static str>, Vec<u8>),
}

pub struct TestApp {
    pub address: String,
    pub client: reqwest::Client,
    pub clock: Arc<ManualClock>,
    pub store: Arc<dyn LedgerStore>,
    pub engine: Arc<engine::run::Engine>,
    shutdown: CancellationToken,
    server: Option<JoinHandle<anyhow::Result<()>>>,
    _dir: Option<TempDir>,
}

impl Drop for TestApp {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

fn test_settings(database: DatabaseUrl) -> Settings {
    let api = ApiConfig {
        tokens: vec![(ADMIN_TOKEN.to_owned(), Role::Admin), (SERVICE_TOKEN.to_owned(), Role::Service)],
        // Webhook receivers in tests listen on loopback.
        webhooks_reach: webhooks::destination::Reach::AllowPrivate,
        ..ApiConfig::default()
    };
    let runs = RunSettings {
        catalog: pricing::catalog::Catalog::builtin(),
        llm: None,
        hold_ttl_seconds: 1200,
        runs_active_max: 16,
        instance_lease_seconds: 15,
        cancel_on_disconnect: false,
        run_events_retention_seconds: 7 * 24 * 3600,
        run_events_flush_ms: 25,
        coalesce: engine::run::stream::Coalesce::default(),
        // Tests run the stuck sweep themselves, on the manual clock.
        jobs: jobs::JobsConfig { stuck_sweep_interval_seconds: 3600, ..jobs::JobsConfig::default() },
        // The production default: code runs behind bubblewrap (scripts/test.sh installs it).
        sandbox: cli::SandboxSettings::Bubblewrap(engine::sandbox::bwrap::BubblewrapSettings::default()),
    };
    Settings {
        runs,
        listen: "127.0.0.1:0".to_owned(),
        database,
        api,
        edge: cli::EdgeSettings::default(),
        sweep_interval: Duration::from_secs(3600),
        shutdown_grace: Duration::from_secs(10),
        // Deliveries retry on the manual clock: a test moves it past the backoff.
        webhooks: cli::WebhookSettings { poll_interval: Duration::from_millis(50), ..cli::WebhookSettings::default() },
    }
}

/// The app on a fresh SQLite file in a temporary folder.
pub async fn spawn_app() -> TestApp {
    let dir = tempfile::tempdir().expect("temporary folder");
    let database = DatabaseUrl::sqlite(dir.path().join("creditgraph.db"));
    spawn_with(test_settings(database), Some(dir)).await
}

/// The app on a fresh PostgreSQL database of the test cluster.
pub async fn spawn_app_postgres() -> TestApp {
    let url = store_postgres::testing::fresh_database().await;
    spawn_with(test_settings(DatabaseUrl::Postgres(url)), None).await
}

/// The app with settings changed by `change` (on a fresh SQLite file).
pub async fn spawn_app_with(change: impl FnOnce(&mut Settings)) -> TestApp {
    let dir = tempfile::tempdir().expect("temporary folder");
    let mut settings = test_settings(DatabaseUrl::sqlite(dir.path().join("creditgraph.db")));
    change(&mut settings);
    spawn_with(settings, Some(dir)).await
}

async fn spawn_with(settings: Settings, dir: Option<TempDir>) -> TestApp {
    spawn_full(settings, dir, None).await
}

/// The app with a scripted LLM provider (`settings.runs.llm` pointing at it), on SQLite or a
/// fresh PostgreSQL database, its settings then changed by `change`.
pub async fn spawn_app_with_provider(
    postgres: bool,
    change: impl FnOnce(&mut Settings),
) -> (TestApp, engine::testing::FakeProvider) {
    let fake = engine::testing::FakeProvider::start().await;
    let config = fake.config();
    let app = spawn_app_full(
        postgres,
        move |settings| {
            settings.runs.llm = Some(config);
            change(settings);
        },
        None,
    )
    .await;
    (app, fake)
}

/// The app on a fresh SQLite file (or the given database) with a chosen `code_execute` sandbox.
pub async fn spawn_app_full(
    postgres: bool,
    change: impl FnOnce(&mut Settings),
    executor: Option<Arc<dyn engine::sandbox::CodeExecutor>>,
) -> TestApp {
    let (database, dir) = if postgres {
        (DatabaseUrl::Postgres(store_postgres::testing::fresh_database().await), None)
    } else {
        let dir = tempfile::tempdir().expect("temporary folder");
        (DatabaseUrl::sqlite(dir.path().join("creditgraph.db")), Some(dir))
    };
    let mut settings = test_settings(database);
    change(&mut settings);
    spawn_full(settings, dir, executor).await
}

async fn spawn_full(
    settings: Settings,
    dir: Option<TempDir>,
    executor: Option<Arc<dyn engine::sandbox::CodeExecutor>>,
) -> TestApp {
    if std::env::var_os("TEST_LOG").is_some() {
        cli::telemetry::init(cli::config::LogFormat::Text);
    }
    // Whole seconds, so RFC 3339 times in assertions are easy to write.
    let clock = Arc::new(ManualClock::new(Timestamp::from_micros(1_800_000_000_000_000)));
    let application = Application::build_with(settings, Arc::clone(&clock) as Arc<dyn Clock>, executor)
        .await
        .expect("the application builds");
    let address = format!("http://{}", application.local_addr());
    let store = application.store();
    let engine = application.engine();
    let shutdown = CancellationToken::new();
    let server = tokio::spawn(application.run_until_stopped(shutdown.clone()));
    TestApp { address, client: reqwest::Client::new(), clock, store, engine, shutdown, server: Some(server), _dir: dir }
}

impl TestApp {
    /// Waits (at most 20 s) until the job satisfies `done`, woken by every job write the app's job
    /// service publishes (a read ends a stuck job, as the API's does); the job then.
    pub async fn wait_for_job(
        &self,
        job_id: &store::JobId,
        what: &str,
        done: impl Fn(&store::JobRecord) -> bool,
    ) -> store::JobRecord {
        let jobs = self.engine.jobs().expect("the app runs video jobs").clone();
        let mut updates = jobs.subscribe();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        loop {
            let job = jobs.get(job_id).await.expect("store works").expect("job exists");
            if done(&job) {
                return job;
            }
            match tokio::time::timeout_at(deadline, updates.recv()).await {
                Ok(Ok(_) | Err(RecvError::Lagged(_))) => {}
                Ok(Err(RecvError::Closed)) => panic!("the job service stopped"),
                Err(_) => panic!("timed out waiting for {what}: {job:#?}"),
            }
        }
    }

    /// Stops the server gracefully and waits for it (store closed).
    pub async fn stop(mut self) {
        self.shutdown.cancel();
        if let Some(server) = self.server.take() {
            server.await.expect("server task").expect("server stopped cleanly");
        }
    }

    pub async fn request(
        &self,
        method: Method,
        path: &str,
        token: Option<&str>,
        key: Option<&str>,
        body: Body,
    ) -> Reply {
        let mut request = self.client.request(method, format!("{}{path}", self.address));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        if let Some(key) = key {
            request = request.header("Idempotency-Key", key);
        }
        request = match body {
            Body::None => request,
            Body::Json(value) => request.json(&value),
            Body::Raw(content_type, bytes) => {
                let request = match content_type {
                    Some(content_type) => request.header("content-type", content_type),
                    None => request,
                };
                request.body(bytes)
            }
        };
        let response = request.send().await.expect("request sent");
        let status = response.status().as_u16();
        let content_type =
            response.headers().get("content-type").and_then(|value| value.to_str().ok()).unwrap_or_default().to_owned();
        let text = response.text().await.expect("response body");
        let body = serde_json::from_str(&text).unwrap_or(Value::Null);
        Reply { status, content_type, body, text }
    }

    /// POST as admin.
    pub async fn post(&self, path: &str, body: Value) -> Reply {
        self.request(Method::POST, path, Some(ADMIN_TOKEN), None, Body::Json(body)).await
    }

    /// POST as admin with an Idempotency-Key.
    pub async fn post_with_key(&self, path: &str, key: &str, body: Value) -> Reply {
        self.request(Method::POST, path, Some(ADMIN_TOKEN), Some(key), Body::Json(body)).await
    }

    /// GET as admin.
    /// DELETE as admin, without a body.
    pub async fn request_delete(&self, path: &str) -> Reply {
        self.request(Method::DELETE, path, Some(ADMIN_TOKEN), None, Body::None).await
    }

    pub async fn get(&self, path: &str) -> Reply {
        self.request(Method::GET, path, Some(ADMIN_TOKEN), None, Body::None).await
    }

    pub async fn grant(&self, account: &str, body: Value) -> Reply {
        self.post(&format!("/v1/accounts/{account}/grants"), body).await
    }

    /// Grants `amount` and asserts 201.
    pub async fn fund(&self, account: &str, amount: &str) -> Value {
        self.grant(account, json!({ "amount": amount })).await.assert_status(201).clone()
    }

    pub async fn account(&self, account: &str) -> Reply {
        self.get(&format!("/v1/accounts/{account}")).await
    }

    /// (balance, held, available) of an existing account.
    pub async fn figures(&self, account: &str) -> (String, String, String) {
        let reply = self.account(account).await;
        let body = reply.assert_status(200);
        let field = |name: &str| body[name].as_str().expect("amount string").to_owned();
        (field("balance"), field("held"), field("available"))
    }

    pub async fn entries(&self, account: &str, query: &str) -> Reply {
        self.get(&format!("/v1/accounts/{account}/entries{query}")).await
    }

    pub async fn hold(&self, account: &str, amount: &str) -> Reply {
        self.post("/v1/holds", json!({ "account_id": account, "amount": amount })).await
    }

    /// Holds `amount` and returns the hold id (asserting 201).
    pub async fn hold_id(&self, account: &str, amount: &str) -> String {
        let reply = self.hold(account, amount).await;
        reply.assert_status(201);
        reply.str("hold_id").to_owned()
    }

    pub async fn get_hold(&self, hold_id: &str) -> Reply {
        self.get(&format!("/v1/holds/{hold_id}")).await
    }

    pub async fn capture(&self, hold_id: &str, body: Value) -> Reply {
        self.post(&format!("/v1/holds/{hold_id}/capture"), body).await
    }

    pub async fn release(&self, hold_id: &str) -> Reply {
        self.request(Method::POST, &format!("/v1/holds/{hold_id}/release"), Some(ADMIN_TOKEN), None, Body::None).await
    }

    pub async fn extend(&self, hold_id: &str, ttl_seconds: u64) -> Reply {
        self.post(&format!("/v1/holds/{hold_id}/extend"), json!({ "ttl_seconds": ttl_seconds })).await
    }

    pub async fn debit(&self, account: &str, body: Value) -> Reply {
        self.post(&format!("/v1/accounts/{account}/debits"), body).await
    }

    pub async fn refund(&self, account: &str, body: Value) -> Reply {
        self.post(&format!("/v1/accounts/{account}/refunds"), body).await
    }

    /// Asserts the store's own journal check is clean.
    pub async fn assert_verified(&self) {
        let report = self.store.verify().await.expect("verify runs");
        assert!(report.violations.is_empty(), "{:#?}", report.violations);
    }
}

/// A running `creditgraph serve` process, stopped with SIGTERM when dropped; its log lines are
/// kept for [`ServerProcess::wait_for_line`].
pub struct ServerProcess {
    child: std::process::Child,
    pub base: String,
    lines: std::sync::mpsc::Receiver<String>,
    /// Lines read while waiting for another, oldest first, not yet matched.
    seen: Vec<String>,
}

impl ServerProcess {
    pub fn start(database: &str) -> ServerProcess {
        ServerProcess::start_with(database, &[], &[])
    }

    pub fn start_with(database: &str, args: &[&str], envs: &[(&str, &str)]) -> ServerProcess {
        ServerProcess::launch(&[], database, args, envs, "http")
    }

    /// `wrapper` (such as `prlimit --nofile=…`) runs the binary; `scheme` is the base URL's.
    pub fn launch(
        wrapper: &[&str],
        database: &str,
        args: &[&str],
        envs: &[(&str, &str)],
        scheme: &str,
    ) -> ServerProcess {
        use std::io::{BufRead, BufReader};
        use std::process::{Command, Stdio};
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|listener| listener.local_addr())
            .expect("free port")
            .port();
        let listen = format!("127.0.0.1:{port}");
        let binary = env!("CARGO_BIN_EXE_creditgraph");
        let mut command = match wrapper.split_first() {
            Some((program, wrapper_args)) => {
                let mut command = Command::new(program);
                command.args(wrapper_args).arg(binary);
                command
            }
            None => Command::new(binary),
        };
        let mut child = command
            .args(["serve", "--listen", &listen, "--database", database])
            .args(args)
            .envs(envs.iter().copied())
            .env_remove("CREDITGRAPH_TOKENS")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("the binary starts");
        let stderr = child.stderr.take().expect("stderr");
        let (lines_tx, lines) = std::sync::mpsc::channel::<String>();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let _ = lines_tx.send(line);
            }
        });
        let mut server = ServerProcess { child, base: format!("{scheme}://{listen}"), lines, seen: Vec::new() };
        server.wait_for_line("creditgraph listening", Duration::from_secs(30));
        server
    }

    /// The first log line containing `needle` not matched before, waiting for it at most
    /// `timeout`; panics with the lines seen when none comes.
    pub fn wait_for_line(&mut self, needle: &str, timeout: Duration) -> String {
        if let Some(index) = self.seen.iter().position(|line| line.contains(needle)) {
            return self.seen.remove(index);
        }
        let deadline = std::time::Instant::now() + timeout;
        loop {
            match self.lines.recv_timeout(deadline.saturating_duration_since(std::time::Instant::now())) {
                Ok(line) if line.contains(needle) => return line,
                Ok(line) => self.seen.push(line),
                Err(_) => {
                    let _ = self.child.kill();
                    panic!("no log line with {needle:?}; seen: {:#?}", self.seen);
                }
            }
        }
    }

    /// Sends a signal (`-HUP`, `-TERM`) with `kill`.
    pub fn signal(&self, signal: &str) {
        let status = std::process::Command::new("kill")
            .args([signal, &self.child.id().to_string()])
            .status()
            .expect("kill runs");
        assert!(status.success(), "kill {signal} failed");
    }

    /// `kill -9`: no shutdown code runs.
    pub fn crash(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        let _ = std::process::Command::new("kill").args(["-TERM", &self.child.id().to_string()]).status();
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while std::time::Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            // std's Child has no wait with a deadline: poll its exit.
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
    }
}
