//! End-to-end HTTP: benchmark servers in their own processes (`creditgraph-bench serve`), a
//! keep-alive client, an open-loop driver at a fixed arrival rate and a closed-loop driver for
//! saturation throughput.
//!
//! Open loop: arrival `i` is due at `start + i / rate` whatever happened before; its latency is
//! measured from that intended time, so a stalled server shows up as latency instead of silently
//! slowing the client down (coordinated omission). An arrival that finds `in_flight_max` arrivals
//! still running is not sent and counted as dropped.

use std::net::SocketAddr;
use std::process::Stdio;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use rand::rngs::StdRng;
use rand::SeedableRng;
use serde::Serialize;
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::process::{Child, ChildStdin, ChildStdout};

use crate::measure::{machine_cpu_busy, resident_bytes, Latencies, LatencySummary};
use crate::serve::{CheckAnswer, BENCH_TOKEN};
use crate::stores::{Place, StoreCounters, StoreKind};
use crate::workload::{account_name, Workload, CAPTURE_CREDITS, HOLD_TTL_SECONDS};

/// How long a server process may take to say it listens.
const SERVER_START_SECONDS_MAX: u64 = 60;
/// Bound on one HTTP request, so a stuck server fails the run instead of hanging it.
const REQUEST_SECONDS_MAX: u64 = 30;
/// Concurrent grants while seeding over HTTP.
const SEED_CONCURRENCY: usize = 32;

/// How a benchmark server serves HTTP.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, clap::ValueEnum)]
pub enum Edge {
    /// What `creditgraph serve` runs: `server::edge::serve` (connection cap, header, idle and
    /// write timeouts) and the router's request limits (body and handler deadlines, in-flight cap).
    #[default]
    Hardened,
    /// `axum::serve` and the router without request limits: what a plain axum service is, and
    /// what creditgraph was before its edge was hardened.
    Plain,
}

/// One `creditgraph-bench serve` process.
pub struct ServerProcess {
    child: Child,
    stdin: ChildStdin,
    stdout: Lines<BufReader<ChildStdout>>,
    pub address: SocketAddr,
    pub pid: u32,
    pub edge: Edge,
}

impl ServerProcess {
    pub async fn start(kind: StoreKind, place: &Place) -> anyhow::Result<ServerProcess> {
        ServerProcess::start_with(kind, place, Edge::Hardened).await
    }

    pub async fn start_with(kind: StoreKind, place: &Place, edge: Edge) -> anyhow::Result<ServerProcess> {
        let mut command = tokio::process::Command::new(std::env::current_exe()?);
        command.arg("serve").arg("--store").arg(kind_argument(kind)).arg("--sqlite-path").arg(&place.sqlite_path);
        command.arg("--edge").arg(clap::ValueEnum::to_possible_value(&edge).expect("named").get_name());
        if let Some(url) = &place.postgres_url {
            command.arg("--postgres-url").arg(url);
        }
        command.stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::inherit()).kill_on_drop(true);
        let mut child = command.spawn().context("cannot start creditgraph-bench serve")?;
        let stdin = child.stdin.take().context("child stdin")?;
        let mut stdout = BufReader::new(child.stdout.take().context("child stdout")?).lines();
        let line = tokio::time::timeout(Duration::from_secs(SERVER_START_SECONDS_MAX), stdout.next_line())
            .await
            .context("the server did not start in time")??
            .context("the server exited before listening")?;
        let address = line.strip_prefix("listening ").context("unexpected first line")?.parse()?;
        let pid = child.id().context("child pid")?;
        Ok(ServerProcess { child, stdin, stdout, address, pid, edge })
    }

    /// The store's counters, from the server process.
    pub async fn counters(&mut self) -> anyhow::Result<StoreCounters> {
        self.ask("counters").await
    }

    /// The SQLite writer's commit and checkpoint timings so far (`None` for other stores).
    pub async fn writer_timings(&mut self) -> anyhow::Result<Option<crate::stores::WriterTimings>> {
        self.ask("timings").await
    }

    /// Verifies the store and sums the first `accounts` balances, in the server process.
    pub async fn check(&mut self, accounts: usize) -> anyhow::Result<CheckAnswer> {
        self.ask(&format!("check {accounts}")).await
    }

    /// One command line to the server process, one JSON line back.
    async fn ask<T: serde::de::DeserializeOwned>(&mut self, command: &str) -> anyhow::Result<T> {
        self.stdin.write_all(format!("{command}\n").as_bytes()).await?;
        self.stdin.flush().await?;
        let line = self.stdout.next_line().await?.with_context(|| format!("the server exited during {command}"))?;
        Ok(serde_json::from_str(&line)?)
    }

    /// Resident memory and peak, bytes.
    pub fn memory(&self) -> Option<(u64, u64)> {
        resident_bytes(self.pid)
    }

    pub async fn stop(mut self) -> anyhow::Result<()> {
        drop(self.stdin);
        let status =
            tokio::time::timeout(Duration::from_secs(60), self.child.wait()).await.context("server stop")??;
        anyhow::ensure!(status.success(), "the benchmark server exited with {status}");
        Ok(())
    }
}

fn kind_argument(kind: StoreKind) -> String {
    clap::ValueEnum::to_possible_value(&kind).expect("every kind has a name").get_name().to_owned()
}

/// A keep-alive client for one or more servers (arrivals alternate between them).
#[derive(Clone)]
pub struct Client {
    http: reqwest::Client,
    bases: Arc<[String]>,
}

impl Client {
    pub fn new(addresses: &[SocketAddr], connections_max: usize) -> anyhow::Result<Client> {
        let http = reqwest::Client::builder()
            .pool_max_idle_per_host(connections_max)
            .tcp_nodelay(true)
            .timeout(Duration::from_secs(REQUEST_SECONDS_MAX))
            .build()?;
        Ok(Client { http, bases: addresses.iter().map(|address| format!("http://{address}")).collect() })
    }

    fn base(&self, arrival: u64) -> &str {
        &self.bases[(arrival % self.bases.len() as u64) as usize]
    }

    async fn post(&self, arrival: u64, path: &str, key: &str, body: Value) -> anyhow::Result<(u16, Value)> {
        let response = self
            .http
            .post(format!("{}{path}", self.base(arrival)))
            .bearer_auth(BENCH_TOKEN)
            .header("idempotency-key", key)
            .json(&body)
            .send()
            .await?;
        let status = response.status().as_u16();
        Ok((status, response.json().await?))
    }

    async fn get(&self, arrival: u64, path: &str) -> anyhow::Result<u16> {
        let response = self.http.get(format!("{}{path}", self.base(arrival))).bearer_auth(BENCH_TOKEN).send().await?;
        let status = response.status().as_u16();
        let _ = response.bytes().await?;
        Ok(status)
    }

    pub async fn seed(&self, workload: &Workload) -> anyhow::Result<()> {
        let accounts = workload.distribution.accounts();
        let next = Arc::new(AtomicUsize::new(0));
        let tasks: Vec<_> = (0..SEED_CONCURRENCY.min(accounts))
            .map(|_| {
                let (client, next, credits) = (self.clone(), next.clone(), workload.grant_credits());
                tokio::spawn(async move {
                    loop {
                        let index = next.fetch_add(1, Ordering::Relaxed);
                        if index >= accounts {
                            return anyhow::Ok(());
                        }
                        let path = format!("/v1/accounts/{}/grants", account_name(index));
                        let body = json!({"amount": credits.to_string()});
                        let (status, answer) = client.post(index as u64, &path, &format!("seed-{index}"), body).await?;
                        anyhow::ensure!(status == 201, "seeding grant {index}: {status} {answer}");
                    }
                })
            })
            .collect();
        for task in tasks {
            task.await??;
        }
        Ok(())
    }
}

/// What each arrival does.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub enum Action {
    /// `GET /healthz`: the no-op endpoint (routing, tracing layer, JSON answer; no store).
    Noop,
    /// `POST /v1/holds` then `POST /v1/holds/{id}/capture` (final, part of the hold).
    HoldCapture,
    /// `GET /v1/accounts/{id}`: a balance read.
    Read,
}

#[derive(Clone, Debug, Serialize)]
pub struct HttpResult {
    pub store: StoreKind,
    pub edge: Edge,
    pub servers: usize,
    pub workload: String,
    pub action: Action,
    /// Arrivals per second asked for (open loop), or 0 for closed loop.
    pub arrivals_per_second: u64,
    pub seconds: f64,
    /// Arrivals that completed every request with the expected answer.
    pub completed: u64,
    /// Arrivals not sent because `in_flight_max` were still running.
    pub dropped: u64,
    /// Requests that failed (transport error or an unexpected status).
    pub errors: u64,
    pub requests_per_second: f64,
    /// Every request, from its intended send time.
    pub requests: LatencySummary,
    /// Holds only.
    pub holds: LatencySummary,
    pub counters: StoreCounters,
    pub cpu_micros_per_request: f64,
    pub violations: u64,
}

#[derive(Default)]
struct Shared {
    completed: AtomicU64,
    errors: AtomicU64,
    captures: AtomicU64,
    requests: Mutex<Latencies>,
    holds: Mutex<Latencies>,
}

/// One arrival: its requests, latencies recorded into `shared`.
async fn arrival(
    client: &Client,
    shared: &Shared,
    action: Action,
    index: u64,
    account: usize,
    intended: Instant,
    hold_credits: u64,
) {
    let mut requests = Latencies::new();
    let outcome: anyhow::Result<()> = async {
        match action {
            Action::Noop => {
                let status = client.get(index, "/healthz").await?;
                requests.record(intended.elapsed());
                anyhow::ensure!(status == 200, "healthz answered {status}");
            }
            Action::Read => {
                let status = client.get(index, &format!("/v1/accounts/{}", account_name(account))).await?;
                requests.record(intended.elapsed());
                anyhow::ensure!(status == 200, "account read answered {status}");
            }
            Action::HoldCapture => {
                let body = json!({
                    "account_id": account_name(account),
                    "amount": hold_credits.to_string(),
                    "ttl_seconds": HOLD_TTL_SECONDS,
                });
                let (status, answer) =
                    client.post(index, "/v1/holds", &format!("a{index}-hold-{}", std::process::id()), body).await?;
                let hold_latency = intended.elapsed();
                requests.record(hold_latency);
                shared.holds.lock().expect("latencies").record(hold_latency);
                anyhow::ensure!(status == 201, "hold answered {status}: {answer}");
                let hold_id = answer["hold_id"].as_str().context("hold_id")?.to_owned();
                let sent = Instant::now();
                let body = json!({"amount": CAPTURE_CREDITS.to_string(), "final": true});
                let path = format!("/v1/holds/{hold_id}/capture");
                let (status, answer) =
                    client.post(index, &path, &format!("a{index}-capture-{}", std::process::id()), body).await?;
                requests.record(sent.elapsed());
                anyhow::ensure!(status == 200, "capture answered {status}: {answer}");
                shared.captures.fetch_add(1, Ordering::Relaxed);
            }
        }
        Ok(())
    }
    .await;
    match outcome {
        Ok(()) => {
            shared.completed.fetch_add(1, Ordering::Relaxed);
        }
        Err(error) => {
            if shared.errors.fetch_add(1, Ordering::Relaxed) < 3 {
                eprintln!("bench: request failed: {error:#}");
            }
        }
    }
    shared.requests.lock().expect("latencies").merge(&requests);
}

/// How one HTTP run is driven.
#[derive(Clone, Copy, Debug)]
pub enum Drive {
    /// A fixed arrival rate for a time, at most `in_flight_max` arrivals running.
    OpenLoop { arrivals_per_second: u64, in_flight_max: usize },
    /// `connections` callers back to back.
    ClosedLoop { connections: usize },
}

pub struct HttpRun<'a> {
    pub store: StoreKind,
    pub servers: &'a mut [ServerProcess],
    pub workload: &'a Workload,
    pub action: Action,
    pub drive: Drive,
    pub duration: Duration,
    pub seed: u64,
    /// Verify the store and sum every account's balance after the run (conservation); `false`
    /// for runs over a million accounts, whose caller verifies once at the end.
    pub check_balances: bool,
    /// Drive the workload unmeasured first, then refresh the place's planner statistics.
    pub warm_up: Option<WarmUp<'a>>,
}

/// An unmeasured run before the measured one, and the place whose statistics to refresh after it.
pub struct WarmUp<'a> {
    pub duration: Duration,
    pub place: &'a crate::stores::Place,
}

/// What every arrival of one drive shares.
struct Driving<'a> {
    client: &'a Client,
    workload: &'a Workload,
    action: Action,
    hold_credits: u64,
    seed: u64,
}

/// Drives arrivals from `started` until `deadline` as `mode` says, numbering them from
/// `index_base`, recording into `shared`. Returns the arrivals dropped (open loop: too many in
/// flight) and the arrival rate asked for (0 for a closed loop).
async fn drive(
    driving: &Driving<'_>,
    mode: Drive,
    shared: &Arc<Shared>,
    started: Instant,
    deadline: Instant,
    index_base: u64,
) -> anyhow::Result<(u64, u64)> {
    let Driving { client, workload, action, hold_credits, seed } = *driving;
    let picker = workload.distribution.picker();
    match mode {
        Drive::OpenLoop { arrivals_per_second, in_flight_max } => {
            // The schedule runs on its own thread with `std::thread::sleep` (tens of µs late at
            // most); tokio's timer wheel has 1 ms ticks, which would show up as latency.
            let runtime = tokio::runtime::Handle::current();
            let (client, shared) = (client.clone(), shared.clone());
            let (dropped, tasks) = tokio::task::spawn_blocking(move || {
                let in_flight = Arc::new(AtomicUsize::new(0));
                let mut rng = StdRng::seed_from_u64(seed);
                let mut tasks = Vec::new();
                let mut dropped = 0_u64;
                let interval_nanos = 1_000_000_000 / arrivals_per_second.max(1);
                let mut index = 0_u64;
                loop {
                    let intended = started + Duration::from_nanos(index * interval_nanos);
                    if intended >= deadline {
                        break;
                    }
                    let now = Instant::now();
                    if intended > now {
                        std::thread::sleep(intended - now);
                    }
                    let account = picker.pick(&mut rng);
                    if in_flight.load(Ordering::Relaxed) >= in_flight_max {
                        dropped += 1;
                    } else {
                        in_flight.fetch_add(1, Ordering::Relaxed);
                        let (client, shared, in_flight) = (client.clone(), shared.clone(), in_flight.clone());
                        let number = index_base + index;
                        tasks.push(runtime.spawn(async move {
                            arrival(&client, &shared, action, number, account, intended, hold_credits).await;
                            in_flight.fetch_sub(1, Ordering::Relaxed);
                        }));
                    }
                    index += 1;
                }
                (dropped, tasks)
            })
            .await?;
            for task in tasks {
                task.await?;
            }
            Ok((dropped, arrivals_per_second))
        }
        Drive::ClosedLoop { connections } => {
            let next = Arc::new(AtomicU64::new(index_base));
            let tasks: Vec<_> = (0..connections)
                .map(|caller| {
                    let (client, shared, next, picker) = (client.clone(), shared.clone(), next.clone(), picker.clone());
                    let seed = seed ^ (caller as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15);
                    tokio::spawn(async move {
                        let mut rng = StdRng::seed_from_u64(seed);
                        while Instant::now() < deadline {
                            let index = next.fetch_add(1, Ordering::Relaxed);
                            let account = picker.pick(&mut rng);
                            arrival(&client, &shared, action, index, account, Instant::now(), hold_credits).await;
                        }
                    })
                })
                .collect();
            for task in tasks {
                task.await?;
            }
            Ok((0, 0))
        }
    }
}

/// Where the warm-up's arrival numbers start (they name idempotency keys): far above any
/// measured run's.
const WARM_UP_INDEX_BASE: u64 = 1 << 40;

pub async fn run(settings: HttpRun<'_>) -> anyhow::Result<HttpResult> {
    let addresses: Vec<SocketAddr> = settings.servers.iter().map(|server| server.address).collect();
    let connections = match settings.drive {
        Drive::OpenLoop { in_flight_max, .. } => in_flight_max,
        Drive::ClosedLoop { connections } => connections,
    };
    let client = Client::new(&addresses, connections)?;
    let hold_credits = settings.workload.hold_credits();
    let action = settings.action;
    // The warm-up: the same drive, unmeasured, then fresh planner statistics (see
    // `inprocess::warm_up` for why); what it captured counts in the conservation check.
    let warmed = Arc::new(Shared::default());
    if let Some(warm_up) = &settings.warm_up {
        let driving =
            Driving { client: &client, workload: settings.workload, action, hold_credits, seed: !settings.seed };
        let started = Instant::now();
        drive(&driving, settings.drive, &warmed, started, started + warm_up.duration, WARM_UP_INDEX_BASE).await?;
        crate::stores::analyze(warm_up.place).await?;
    }
    let shared = Arc::new(Shared::default());
    let counters_before = sum_counters(settings.servers).await?;
    let cpu_before = machine_cpu_busy();
    let started = Instant::now();
    let deadline = started + settings.duration;
    let driving = Driving { client: &client, workload: settings.workload, action, hold_credits, seed: settings.seed };
    let (dropped, arrivals_per_second) = drive(&driving, settings.drive, &shared, started, deadline, 0).await?;
    let seconds = started.elapsed().as_secs_f64();
    let cpu = machine_cpu_busy().saturating_sub(cpu_before);
    let requests = shared.requests.lock().expect("latencies").clone();
    let holds = shared.holds.lock().expect("latencies").clone();
    let request_count = requests.count();
    let captures = shared.captures.load(Ordering::Relaxed) + warmed.captures.load(Ordering::Relaxed);
    let errors = shared.errors.load(Ordering::Relaxed) + warmed.errors.load(Ordering::Relaxed);
    let (counters_after, violations) =
        check_after(settings.servers, settings.workload, action, captures, errors, settings.check_balances).await?;
    Ok(HttpResult {
        store: settings.store,
        edge: settings.servers.first().map(|server| server.edge).unwrap_or_default(),
        servers: settings.servers.len(),
        workload: settings.workload.name.to_owned(),
        action,
        arrivals_per_second,
        seconds,
        completed: shared.completed.load(Ordering::Relaxed),
        dropped,
        errors: shared.errors.load(Ordering::Relaxed),
        requests_per_second: request_count as f64 / seconds,
        requests: requests.summary(),
        holds: holds.summary(),
        counters: counters_after.since(counters_before),
        cpu_micros_per_request: cpu.as_micros() as f64 / request_count.max(1) as f64,
        violations,
    })
}

async fn sum_counters(servers: &mut [ServerProcess]) -> anyhow::Result<StoreCounters> {
    let mut total = StoreCounters::default();
    for server in servers.iter_mut() {
        total = total.plus(server.counters().await?);
    }
    Ok(total)
}

/// Verifies in the first server and checks conservation: balances sum to granted − captured.
async fn check_after(
    servers: &mut [ServerProcess],
    workload: &Workload,
    action: Action,
    captures: u64,
    errors: u64,
    check_balances: bool,
) -> anyhow::Result<(StoreCounters, u64)> {
    let accounts = if action == Action::Noop { 0 } else { workload.distribution.accounts() };
    let mut total = StoreCounters::default();
    let mut violations = 0;
    if !check_balances {
        return Ok((sum_counters(servers).await?, 0));
    }
    for (index, server) in servers.iter_mut().enumerate() {
        let answer = server.check(if index == 0 { accounts } else { 0 }).await?;
        total = total.plus(answer.counters);
        if index == 0 {
            violations += answer.violations;
            if accounts > 0 {
                let balance =
                    ledger::Amount::parse(&answer.balance_total).map_err(|error| anyhow::anyhow!("{error:?}"))?;
                let expected = ledger::Amount::from_credits(workload.grant_credits() * accounts as u64)
                    .minus(ledger::Amount::from_credits(CAPTURE_CREDITS * captures));
                let conserved = if errors == 0 { balance == expected } else { balance <= expected };
                if !conserved {
                    eprintln!("bench: conservation fails over HTTP: balances {balance}, expected {expected}");
                    violations += 1;
                }
            }
        }
    }
    Ok((total, violations))
}

/// Seeds the workload's accounts through the first server.
pub async fn seed(servers: &[ServerProcess], workload: &Workload) -> anyhow::Result<()> {
    let client = Client::new(&[servers[0].address], SEED_CONCURRENCY)?;
    client.seed(workload).await
}
