//! A PostgreSQL primary and its synchronous streaming standby on loopback, started from the
//! server binaries of one installation, for the failover scenario ([`crate::failover`]).
//!
//! Why real servers: what the scenario proves — an acknowledged commit survives the primary's
//! `kill -9` because the standby had it on disk, and the service follows the promotion — is a
//! property of PostgreSQL's replication and of the driver's reconnects; no double has either.
//!
//! The settings are the README's no-loss settings: `synchronous_commit = on` and
//! `synchronous_standby_names = '*'` on the primary, a standby cloned by `pg_basebackup -R`.
//! The standby starts with no synchronous standby of its own, so that once promoted it takes
//! writes alone (the README says what that trades). `initdb` refuses root: as root, every
//! PostgreSQL tool runs as the `postgres` user, and the cluster lives under `/tmp` where that
//! user can reach it.

use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context};

/// The environment variable naming PostgreSQL's server binaries folder (`initdb`, `pg_ctl`,
/// `pg_basebackup`, `psql`); `scripts/test.sh` exports it.
pub const PG_BIN_VARIABLE: &str = "CREDITGRAPH_TEST_PG_BIN";
/// Bound on one server start, stop or promotion (`pg_ctl -t`).
const PG_CTL_SECONDS_MAX: u64 = 60;
/// Bound on the standby catching up and becoming synchronous.
const SYNC_SECONDS_MAX: u64 = 60;
/// Pause between two polls of a condition PostgreSQL reports only when asked.
const POLL_MILLIS: u64 = 50;

/// One server of the pair.
#[derive(Debug)]
pub struct Node {
    pub name: &'static str,
    pub data: PathBuf,
    pub port: u16,
    log: PathBuf,
}

/// The primary and its standby, stopped (`-m immediate`) and removed when dropped.
pub struct Cluster {
    pg_bin: PathBuf,
    run_as_postgres: bool,
    sockets: PathBuf,
    pub primary: Node,
    pub standby: Node,
    /// Last: removed after the servers are stopped.
    dir: tempfile::TempDir,
}

fn free_port() -> anyhow::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

fn is_root() -> anyhow::Result<bool> {
    let output = Command::new("id").arg("-u").output().context("running id -u")?;
    Ok(String::from_utf8_lossy(&output.stdout).trim() == "0")
}

fn describe(output: &Output) -> String {
    format!("{}: {}{}", output.status, String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr))
}

impl Cluster {
    /// The binaries folder from [`PG_BIN_VARIABLE`]; an error (never a skip) without it.
    pub fn pg_bin_from_env() -> anyhow::Result<PathBuf> {
        let Some(dir) = std::env::var_os(PG_BIN_VARIABLE).filter(|dir| !dir.is_empty()) else {
            bail!(
                "{PG_BIN_VARIABLE} is not set: run under `scripts/test.sh` (it exports PostgreSQL's bin folder), \
                 or set it to a folder holding initdb, pg_ctl, pg_basebackup and psql"
            );
        };
        let dir = PathBuf::from(dir);
        for tool in ["initdb", "pg_ctl", "pg_basebackup", "psql"] {
            ensure!(dir.join(tool).is_file(), "{PG_BIN_VARIABLE}={} has no {tool}", dir.display());
        }
        Ok(dir)
    }

    /// initdb, start the primary, clone the standby with `pg_basebackup -R`, start it, and wait
    /// until the primary reports it as its synchronous standby. Then creates `database`.
    pub fn start(pg_bin: &Path, database: &str) -> anyhow::Result<Cluster> {
        let run_as_postgres = is_root()?;
        let dir = tempfile::Builder::new().prefix("creditgraph-failover-").tempdir_in("/tmp")?;
        let sockets = dir.path().join("s");
        std::fs::create_dir(&sockets)?;
        let cluster = Cluster {
            pg_bin: pg_bin.to_path_buf(),
            run_as_postgres,
            sockets,
            primary: Node {
                name: "primary",
                data: dir.path().join("primary"),
                port: free_port()?,
                log: dir.path().join("primary.log"),
            },
            standby: Node {
                name: "standby",
                data: dir.path().join("standby"),
                port: free_port()?,
                log: dir.path().join("standby.log"),
            },
            dir,
        };
        if run_as_postgres {
            cluster.run(Command::new("chown").args(["-R", "postgres:"]).arg(cluster.dir.path()))?;
        }
        cluster.run(cluster.tool("initdb").arg("-D").arg(&cluster.primary.data).args([
            "-U",
            "postgres",
            "--auth=trust",
            "--encoding=UTF8",
            "--no-locale",
        ]))?;
        // The no-loss settings: a commit is acknowledged once the standby has flushed it.
        let primary_options = "-c wal_level=replica -c max_wal_senders=4 -c synchronous_commit=on \
                               -c synchronous_standby_names='*'";
        cluster.pg_ctl_start(Side::Primary, primary_options)?;
        cluster.run(
            cluster
                .tool("pg_basebackup")
                .args(["-h", "127.0.0.1", "-p", &cluster.primary.port.to_string(), "-U", "postgres", "-D"])
                .arg(&cluster.standby.data)
                .args(["-R", "-X", "stream", "-c", "fast"]),
        )?;
        // Alone once promoted: it has no standby of its own to wait for.
        cluster.pg_ctl_start(Side::Standby, "-c synchronous_standby_names=''")?;
        cluster.wait_synchronous()?;
        cluster.psql(Side::Primary, &format!("CREATE DATABASE {database}"))?;
        Ok(cluster)
    }

    fn node(&self, side: Side) -> &Node {
        match side {
            Side::Primary => &self.primary,
            Side::Standby => &self.standby,
        }
    }

    /// A PostgreSQL tool, run as the `postgres` user when this process is root.
    fn tool(&self, name: &str) -> Command {
        let program = self.pg_bin.join(name);
        if self.run_as_postgres {
            let mut command = Command::new("runuser");
            command.args(["-u", "postgres", "--"]).arg(program);
            command
        } else {
            Command::new(program)
        }
    }

    fn run(&self, command: &mut Command) -> anyhow::Result<String> {
        let output = command.output().with_context(|| format!("running {command:?}"))?;
        ensure!(output.status.success(), "{command:?} failed: {}", describe(&output));
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    }

    fn pg_ctl_start(&self, side: Side, options: &str) -> anyhow::Result<()> {
        let node = self.node(side);
        let options = format!(
            "-c listen_addresses=127.0.0.1 -c port={} -c unix_socket_directories={} -c max_connections=100 {options}",
            node.port,
            self.sockets.display()
        );
        let started = self.run(self.tool("pg_ctl").arg("-D").arg(&node.data).arg("-l").arg(&node.log).args([
            "-w",
            "-t",
            &PG_CTL_SECONDS_MAX.to_string(),
            "start",
            "-o",
            &options,
        ]));
        started.map(|_| ()).with_context(|| format!("starting the {} (log: {})", node.name, self.log_tail(side)))
    }

    /// The last lines of a server's log, for an error message.
    pub fn log_tail(&self, side: Side) -> String {
        let text = std::fs::read_to_string(&self.node(side).log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }

    /// One statement through `psql` on `side`; its unaligned output.
    pub fn psql(&self, side: Side, sql: &str) -> anyhow::Result<String> {
        let port = self.node(side).port.to_string();
        let output = self.run(
            self.tool("psql")
                .args(["-h", "127.0.0.1", "-p", &port, "-U", "postgres", "-d", "postgres", "-Atq", "-v"])
                .args(["ON_ERROR_STOP=1", "-c", sql]),
        )?;
        Ok(output.trim().to_owned())
    }

    fn wait_synchronous(&self) -> anyhow::Result<()> {
        let deadline = Instant::now() + Duration::from_secs(SYNC_SECONDS_MAX);
        loop {
            let sync =
                self.psql(Side::Primary, "SELECT count(*) FROM pg_stat_replication WHERE sync_state = 'sync'")?;
            if sync == "1" {
                return Ok(());
            }
            ensure!(
                Instant::now() < deadline,
                "the standby is not synchronous after {SYNC_SECONDS_MAX} s (log: {})",
                self.log_tail(Side::Standby)
            );
            std::thread::sleep(Duration::from_millis(POLL_MILLIS));
        }
    }

    /// The URL naming both servers, primary first, for the service.
    pub fn multi_host_url(&self, database: &str) -> String {
        format!(
            "postgres://postgres@127.0.0.1:{},127.0.0.1:{}/{database}?target_session_attrs=read-write&connect_timeout=2",
            self.primary.port, self.standby.port
        )
    }

    /// `kill -9` of the primary's postmaster and every process it started (a machine that
    /// died: no shutdown checkpoint, every socket reset at once), then waits until its port
    /// refuses connections.
    pub fn kill_primary(&self) -> anyhow::Result<()> {
        let pid_file = self.primary.data.join("postmaster.pid");
        let text = std::fs::read_to_string(&pid_file).with_context(|| format!("reading {}", pid_file.display()))?;
        let postmaster: u32 = text.lines().next().unwrap_or("").trim().parse().context("the postmaster's pid")?;
        let mut pids = vec![postmaster];
        pids.extend(children(postmaster));
        let status = Command::new("kill").arg("-9").args(pids.iter().map(u32::to_string)).status()?;
        ensure!(status.success(), "kill -9 {pids:?} failed: {status}");
        let deadline = Instant::now() + Duration::from_secs(PG_CTL_SECONDS_MAX);
        while TcpStream::connect(("127.0.0.1", self.primary.port)).is_ok() {
            ensure!(Instant::now() < deadline, "the primary's port still accepts connections after kill -9");
            std::thread::sleep(Duration::from_millis(POLL_MILLIS));
        }
        Ok(())
    }

    /// `pg_ctl promote -w`: returns once the standby takes writes.
    pub fn promote_standby(&self) -> anyhow::Result<()> {
        self.run(self.tool("pg_ctl").arg("-D").arg(&self.standby.data).args([
            "-w",
            "-t",
            &PG_CTL_SECONDS_MAX.to_string(),
            "promote",
        ]))
        .map(|_| ())
    }

    fn stop(&self, side: Side) {
        let node = self.node(side);
        if node.data.join("postmaster.pid").is_file() {
            let _ = self
                .tool("pg_ctl")
                .arg("-D")
                .arg(&node.data)
                .args(["-m", "immediate", "-w", "-t", "30", "stop"])
                .output();
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.stop(Side::Standby);
        // After kill -9 the pid file is stale and pg_ctl finds no server: nothing happens.
        self.stop(Side::Primary);
    }
}

/// Which server of the pair.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Side {
    Primary,
    Standby,
}

/// The processes whose parent is `parent`, from `/proc/<pid>/stat`.
fn children(parent: u32) -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir("/proc") else { return Vec::new() };
    entries
        .flatten()
        .filter_map(|entry| entry.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else { return false };
            // `pid (comm) state ppid …`; comm may hold spaces and parentheses, so split after the last ')'.
            let after = stat.rsplit_once(')').map(|(_, rest)| rest).unwrap_or("");
            after.split_whitespace().nth(1).and_then(|ppid| ppid.parse::<u32>().ok()) == Some(parent)
        })
        .collect()
}
