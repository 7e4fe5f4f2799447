//! How the store reaches PostgreSQL — one server, or a primary and its standbys named in one URL
//! (`postgres://h1:5432,h2:5432/db?target_session_attrs=read-write`) — and how its pool follows
//! a failover to whichever node is the primary now.
//!
//! Why each rule:
//! - **Only a read-write session is any use**: the store writes. `target_session_attrs` is
//!   `read-write` unless the URL says `read-only`, which is refused at start-up; every new
//!   connection then skips a standby, and a primary fenced read-only, and goes on to the next host.
//! - **`connect_timeout` bounds the whole attempt on one host** (TCP, start-up, authentication,
//!   the read-write check), as libpq's does. tokio-postgres's own bounds only the TCP connect,
//!   so a host that accepts and then hangs (a frozen server, a paused machine) would stall every
//!   new connection and the next host would never be tried. The pool's create timeout leaves
//!   room for every host in turn.
//! - **A connection to a server that went away or stopped taking writes is not handed out
//!   again.** `RecyclingMethod::Fast` drops a connection whose socket closed. And a driver error
//!   that says the server is lost or read-only ([`server_lost`]) marks every connection opened
//!   before it as stale: the pool's pre-recycle hook drops those at their next checkout instead
//!   of letting each fail one more request (a fenced primary keeps its sockets open; a machine
//!   that died sends no reset). The check at checkout is one atomic load.
//! - **A silent peer is noticed**: TCP keepalives after 30 s idle and a 30 s `tcp_user_timeout`,
//!   unless the URL sets its own.
//!
//! The stale mark is process-wide: a process serves one database, and where a test process holds
//! several stores a failure on one makes the others reopen their connections once — a reconnect,
//! never a wrong answer.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use deadpool_postgres::{Hook, HookError, Manager, ManagerConfig, Pool, RecyclingMethod, Runtime};
use rand::seq::SliceRandom;
use store::StoreError;
use tokio::task::JoinHandle;
use tokio_postgres::config::{Host, LoadBalanceHosts, TargetSessionAttrs};
use tokio_postgres::error::SqlState;
use tokio_postgres::{Client, Config, NoTls};

use crate::error::describe;

/// How long a request waits for a free pooled connection before the store reports itself
/// unavailable (a bound on the pool's wait queue, in time).
const POOL_WAIT_SECONDS: u64 = 30;
/// Added to the hosts' connect timeouts to give the pool's create timeout: the last host's
/// attempt is bounded by that timeout alone (see [`Connector::connect`]).
const CREATE_MARGIN_SECONDS: u64 = 1;
/// Most hosts one URL may name.
const HOSTS_MAX: usize = 16;
/// TCP settings applied unless the URL sets its own (`keepalives_idle`, `keepalives_interval`,
/// `tcp_user_timeout`): a peer that vanished without a reset is noticed within about a minute.
const KEEPALIVES_IDLE_SECONDS: u64 = 30;
const KEEPALIVES_INTERVAL_SECONDS: u64 = 10;
const TCP_USER_TIMEOUT_SECONDS: u64 = 30;

/// The parsed URL: one connection setting per host, tried in order (or shuffled with
/// `load_balance_hosts=random`), each attempt bounded by `host_timeout`.
#[derive(Debug)]
pub(crate) struct Connector {
    /// The URL as parsed, with the store's rules applied.
    config: Config,
    hosts: Vec<Config>,
    shuffle: bool,
    host_timeout: Duration,
}

impl Connector {
    /// Parses `url` and applies the store's rules (module docs). `connect_timeout_seconds` is
    /// the per-host bound when the URL does not set `connect_timeout`.
    pub(crate) fn parse(url: &str, connect_timeout_seconds: u64) -> Result<Connector, StoreError> {
        let mut config: Config = url
            .parse()
            .map_err(|error| StoreError::startup(format!("invalid PostgreSQL URL: {error}")).with_source(error))?;
        if config.get_target_session_attrs() == TargetSessionAttrs::ReadOnly {
            return Err(StoreError::startup(
                "the PostgreSQL URL asks for target_session_attrs=read-only, but the store writes: use read-write \
                 (the default)",
            ));
        }
        config.target_session_attrs(TargetSessionAttrs::ReadWrite);
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(Duration::from_secs(connect_timeout_seconds.max(1)));
        }
        if config.get_keepalives_idle() == Config::new().get_keepalives_idle() {
            config.keepalives_idle(Duration::from_secs(KEEPALIVES_IDLE_SECONDS));
        }
        if config.get_keepalives_interval().is_none() {
            config.keepalives_interval(Duration::from_secs(KEEPALIVES_INTERVAL_SECONDS));
        }
        if config.get_tcp_user_timeout().is_none() {
            config.tcp_user_timeout(Duration::from_secs(TCP_USER_TIMEOUT_SECONDS));
        }
        if config.get_application_name().is_none() {
            config.application_name("creditgraph");
        }
        let host_count = config.get_hosts().len().max(config.get_hostaddrs().len());
        if host_count == 0 {
            return Err(StoreError::startup("the PostgreSQL URL names no host"));
        }
        if host_count > HOSTS_MAX {
            return Err(StoreError::startup(format!(
                "the PostgreSQL URL names {host_count} hosts; at most {HOSTS_MAX} are supported"
            )));
        }
        let ports = config.get_ports().len();
        if ports > 1 && ports != host_count {
            return Err(StoreError::startup(format!(
                "the PostgreSQL URL names {host_count} hosts but {ports} ports: give one port, or one per host"
            )));
        }
        let hostaddrs = config.get_hostaddrs().len();
        if !config.get_hosts().is_empty() && hostaddrs > 0 && hostaddrs != host_count {
            return Err(StoreError::startup(format!(
                "the PostgreSQL URL names {} hosts but {hostaddrs} hostaddrs",
                config.get_hosts().len()
            )));
        }
        let host_timeout = *config.get_connect_timeout().expect("set above when the URL left it out");
        let hosts: Vec<Config> = (0..host_count).map(|index| single_host(&config, index)).collect();
        assert_eq!(hosts.len(), host_count);
        assert!(hosts.iter().all(|host| host.get_target_session_attrs() == TargetSessionAttrs::ReadWrite));
        let shuffle = config.get_load_balance_hosts() == LoadBalanceHosts::Random;
        Ok(Connector { config, hosts, shuffle, host_timeout })
    }

    /// The URL as parsed, with the store's rules applied (read-write sessions only, timeouts,
    /// keepalives): for a connection the pool does not own (the run-signal listener).
    pub(crate) fn config(&self) -> &Config {
        &self.config
    }

    /// The bound on opening one connection: every host's attempt in turn, and a margin.
    pub(crate) fn create_timeout(&self) -> Duration {
        let hosts = u32::try_from(self.hosts.len()).expect("at most HOSTS_MAX hosts");
        self.host_timeout.saturating_mul(hosts).saturating_add(Duration::from_secs(CREATE_MARGIN_SECONDS))
    }

    /// Opens one connection on the first host that takes it and allows writes, and spawns the
    /// task driving it. Every host but the last is bounded by its connect timeout here; the
    /// last is bounded by the caller ([`Connector::create_timeout`]), so that a timeout surfaces
    /// as the caller's own error rather than an invented driver error.
    pub(crate) async fn connect(&self) -> Result<(Client, JoinHandle<()>), tokio_postgres::Error> {
        let mut order: Vec<usize> = (0..self.hosts.len()).collect();
        if self.shuffle {
            order.shuffle(&mut rand::rng());
        }
        let last = order.len() - 1;
        let mut failure = None;
        for (position, index) in order.into_iter().enumerate() {
            let attempt = self.hosts[index].connect(NoTls);
            let result = if position == last {
                attempt.await
            } else {
                match tokio::time::timeout(self.host_timeout, attempt).await {
                    Ok(result) => result,
                    Err(_) => {
                        tracing::warn!(
                            host = index + 1,
                            timeout_seconds = self.host_timeout.as_secs(),
                            "a PostgreSQL host did not complete a connection in time; trying the next"
                        );
                        continue;
                    }
                }
            };
            match result {
                Ok((client, connection)) => {
                    let driver = tokio::spawn(async move {
                        if let Err(error) = connection.await {
                            tracing::warn!(error = %describe(&error), "a PostgreSQL connection ended with an error");
                        }
                    });
                    return Ok((client, driver));
                }
                Err(error) => {
                    tracing::debug!(host = index + 1, error = %describe(&error), "a PostgreSQL host was not used");
                    failure = Some(error);
                }
            }
        }
        Err(failure.expect("the last host's attempt either connects or fails with an error"))
    }

    /// The pool: connections from [`Connector::connect`], checked at checkout (closed or stale:
    /// dropped, and another one taken or opened).
    pub(crate) fn pool(self, pool_max: usize) -> Result<Pool, StoreError> {
        origin();
        let create_timeout = self.create_timeout();
        let recycle_timeout = self.host_timeout;
        let config = self.config.clone();
        let manager =
            Manager::from_connect(config, PoolConnect(self), ManagerConfig { recycling_method: RecyclingMethod::Fast });
        Pool::builder(manager)
            .max_size(pool_max.max(1))
            .runtime(Runtime::Tokio1)
            .wait_timeout(Some(Duration::from_secs(POOL_WAIT_SECONDS)))
            .create_timeout(Some(create_timeout))
            .recycle_timeout(Some(recycle_timeout))
            .pre_recycle(Hook::sync_fn(|_, metrics| {
                if is_stale(metrics.created) {
                    return Err(HookError::message("opened before the server was last seen lost or read-only"));
                }
                Ok(())
            }))
            .build()
            .map_err(|error| {
                StoreError::startup(format!("cannot build the connection pool: {error}")).with_source(error)
            })
    }
}

/// The pool's way of opening a connection: the [`Connector`]'s, not the driver's own
/// multi-host loop (whose per-host bound covers only the TCP connect).
#[derive(Debug)]
struct PoolConnect(Connector);

type ConnectFuture<'a> =
    Pin<Box<dyn Future<Output = Result<(Client, JoinHandle<()>), tokio_postgres::Error>> + Send + 'a>>;

impl deadpool_postgres::Connect for PoolConnect {
    fn connect(&self, _as_parsed: &Config) -> ConnectFuture<'_> {
        Box::pin(self.0.connect())
    }
}

/// `config` narrowed to its host number `index` (its `host`, `hostaddr` and port), every other
/// setting kept.
fn single_host(config: &Config, index: usize) -> Config {
    let mut single = Config::new();
    if let Some(user) = config.get_user() {
        single.user(user);
    }
    if let Some(password) = config.get_password() {
        single.password(password);
    }
    if let Some(dbname) = config.get_dbname() {
        single.dbname(dbname);
    }
    if let Some(options) = config.get_options() {
        single.options(options);
    }
    if let Some(application_name) = config.get_application_name() {
        single.application_name(application_name);
    }
    single.ssl_mode(config.get_ssl_mode());
    single.ssl_negotiation(config.get_ssl_negotiation());
    match config.get_hosts().get(index) {
        Some(Host::Tcp(name)) => {
            single.host(name);
        }
        Some(Host::Unix(path)) => {
            single.host_path(path);
        }
        None => {}
    }
    if let Some(hostaddr) = config.get_hostaddrs().get(index) {
        single.hostaddr(*hostaddr);
    }
    let ports = config.get_ports();
    if let Some(port) = ports.get(index).or(ports.first()) {
        single.port(*port);
    }
    if let Some(timeout) = config.get_connect_timeout() {
        single.connect_timeout(*timeout);
    }
    if let Some(timeout) = config.get_tcp_user_timeout() {
        single.tcp_user_timeout(*timeout);
    }
    single.keepalives(config.get_keepalives());
    single.keepalives_idle(config.get_keepalives_idle());
    if let Some(interval) = config.get_keepalives_interval() {
        single.keepalives_interval(interval);
    }
    if let Some(retries) = config.get_keepalives_retries() {
        single.keepalives_retries(retries);
    }
    single.target_session_attrs(config.get_target_session_attrs());
    single.channel_binding(config.get_channel_binding());
    single.load_balance_hosts(config.get_load_balance_hosts());
    single
}

/// Whether a driver error says the server behind its connection went away or stopped taking
/// writes: the connection closed or failed at the socket, the server shut down or crashed, it
/// refuses connections for now, or it refuses writes (a primary demoted, or fenced read-only).
/// Then every connection opened before is suspect.
pub(crate) fn server_lost(error: &tokio_postgres::Error) -> bool {
    if error.is_closed() {
        return true;
    }
    match error.code() {
        Some(code) => {
            code.code().starts_with("08")
                || [
                    SqlState::ADMIN_SHUTDOWN,
                    SqlState::CRASH_SHUTDOWN,
                    SqlState::CANNOT_CONNECT_NOW,
                    SqlState::READ_ONLY_SQL_TRANSACTION,
                ]
                .contains(code)
        }
        None => std::error::Error::source(error).is_some_and(|source| source.is::<std::io::Error>()),
    }
}

/// The instant the stale mark counts from (set when the first pool is built).
fn origin() -> Instant {
    static ORIGIN: OnceLock<Instant> = OnceLock::new();
    *ORIGIN.get_or_init(Instant::now)
}

/// Nanoseconds after [`origin`] before which every connection is stale; 0: none is.
static STALE_BEFORE_NANOS: AtomicU64 = AtomicU64::new(0);

fn nanos_after_origin(instant: Instant) -> u64 {
    u64::try_from(instant.saturating_duration_since(origin()).as_nanos()).unwrap_or(u64::MAX)
}

/// Every connection opened until now is dropped at its next checkout.
pub(crate) fn mark_stale() {
    let now = nanos_after_origin(Instant::now()).saturating_add(1);
    STALE_BEFORE_NANOS.fetch_max(now, Ordering::Relaxed);
}

/// Whether a connection opened at `created` was opened before the last [`mark_stale`].
fn is_stale(created: Instant) -> bool {
    stale_under(STALE_BEFORE_NANOS.load(Ordering::Relaxed), created)
}

fn stale_under(stale_before_nanos: u64, created: Instant) -> bool {
    stale_before_nanos > 0 && nanos_after_origin(created) < stale_before_nanos
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use tokio_postgres::config::TargetSessionAttrs;
    use tokio_postgres::Config;

    use super::{nanos_after_origin, origin, single_host, stale_under, Connector};

    #[test]
    fn one_host_of_many_keeps_every_other_setting() {
        let settings = "user=u password=p dbname=d options='-c geqo=off' application_name=a sslmode=disable \
                        connect_timeout=3 tcp_user_timeout=7 keepalives=1 keepalives_idle=11 keepalives_interval=4 \
                        keepalives_retries=2 target_session_attrs=read-write channel_binding=disable \
                        load_balance_hosts=random";
        let single: Config = format!("host=h1 port=5433 {settings}").parse().expect("valid");
        assert_eq!(single_host(&single, 0), single, "a single host's copy is the same setting");
        let pair: Config =
            format!("host=h1,h2 hostaddr=127.0.0.1,127.0.0.2 port=5433,5434 {settings}").parse().expect("valid");
        let second: Config = format!("host=h2 hostaddr=127.0.0.2 port=5434 {settings}").parse().expect("valid");
        assert_eq!(single_host(&pair, 1), second);
        let shared_port: Config = "postgres://u@h1,h2:6000/d".parse().expect("valid");
        assert_eq!(single_host(&shared_port, 1).get_ports(), &[6000]);
    }

    #[test]
    fn the_store_asks_for_a_read_write_session_on_every_host() {
        let connector = Connector::parse("postgres://u@h1:1,h2:2/d", 5).expect("valid");
        assert_eq!(connector.hosts.len(), 2);
        for host in &connector.hosts {
            assert_eq!(host.get_target_session_attrs(), TargetSessionAttrs::ReadWrite);
            assert_eq!(host.get_connect_timeout(), Some(&Duration::from_secs(5)));
            assert_eq!(host.get_tcp_user_timeout(), Some(&Duration::from_secs(30)));
            assert_eq!(host.get_keepalives_idle(), Duration::from_secs(30));
            assert_eq!(host.get_application_name(), Some("creditgraph"));
        }
        assert_eq!(connector.create_timeout(), Duration::from_secs(11), "both hosts in turn, and a margin");
        // The URL's own settings win.
        let connector =
            Connector::parse("postgres://u@h1/d?connect_timeout=2&keepalives_idle=60&application_name=x", 5)
                .expect("valid");
        assert_eq!(connector.hosts[0].get_connect_timeout(), Some(&Duration::from_secs(2)));
        assert_eq!(connector.hosts[0].get_keepalives_idle(), Duration::from_secs(60));
        assert_eq!(connector.hosts[0].get_application_name(), Some("x"));
        assert_eq!(connector.create_timeout(), Duration::from_secs(3));
    }

    #[test]
    fn urls_the_store_cannot_use_are_refused() {
        for url in [
            "postgres://u@h1/d?target_session_attrs=read-only",
            "postgres://u@h1:1,h2:2,h3:3/d?port=1,2",
            "postgres:///d",
            "mysql://u@h/d",
        ] {
            let error = Connector::parse(url, 5).expect_err(url);
            assert!(matches!(error, store::StoreError::Startup { .. }), "{url}: {error:?}");
        }
        let many = (0..17).map(|index| format!("h{index}")).collect::<Vec<_>>().join(",");
        assert!(Connector::parse(&format!("postgres://u@{many}/d"), 5).is_err());
    }

    #[test]
    fn connections_opened_before_the_mark_are_stale() {
        let before = origin() + Duration::from_millis(5);
        let mark = nanos_after_origin(before + Duration::from_millis(1));
        assert!(!stale_under(0, before), "no mark: nothing is stale");
        assert!(stale_under(mark, before));
        assert!(!stale_under(mark, before + Duration::from_millis(2)));
        assert!(stale_under(mark, origin()), "opened before the first pool: stale too");
    }
}
