//! The default `code_execute` sandbox, and a security boundary: model-written Python (untrusted:
//! a prompt can make the model write anything) runs behind three maintained tools, each doing
//! one thing, chained by `exec` so the code ends up a descendant of `bwrap` alone:
//!
//! 1. `prlimit` (util-linux) sets the limits — CPU, address space, file size, processes, open
//!    files, no core files — as *hard* limits while the chain still runs as the service's user;
//! 2. `setpriv` (util-linux) drops to uid/gid 65534 (`nobody`) with no supplementary groups, no
//!    capabilities (inheritable and bounding sets cleared) and `no_new_privs`, so the limits can
//!    never be raised again (raising a hard limit needs `CAP_SYS_RESOURCE` in the initial user
//!    namespace); when the service is not root it cannot change uid, and only `no_new_privs` is set;
//! 3. `bwrap` (bubblewrap, Flatpak's sandbox) puts the interpreter in new user, PID, network,
//!    IPC, UTS and cgroup namespaces over an empty root: `/usr` read-only (and `/bin`, `/lib`, …
//!    as the host has them), `/proc` of the new PID namespace only, a minimal read-only `/dev`,
//!    a 64 MiB tmpfs `/tmp` as the working folder, the rest of the root read-only, a cleared environment,
//!    no capabilities, no nested user namespaces, a new session (no terminal to inject into).
//!
//! The network namespace has only its own loopback interface (bwrap brings it up; nothing
//! listens on it): no connection leaves it, not even to the service or anything else on the
//! host's 127.0.0.1. The wall clock kills `bwrap` (the leader of the child's process
//! group); its child is PID 1 of the sandbox's PID namespace and dies with it
//! (`--die-with-parent`), and when PID 1 dies the kernel kills every process of the namespace,
//! `setsid` or not. The same holds when the server itself dies.
//!
//! The chain is checked once at start-up ([`Bubblewrap::detect`]: a trivial program must run
//! through it, as uid 65534 without capabilities and with no network interface but `lo`); a
//! server where it fails gets [`super::Unavailable`] instead, and `code_execute` fails closed.
//!
//! What it does not cover is listed in the README (kernel bugs reachable through the system
//! calls it allows — there is no seccomp filter —, the host's CPU and memory being shared, timing
//! side channels).

use std::ffi::OsString;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use async_trait::async_trait;
use tokio::sync::Semaphore;

use super::child::{self, check_code_size, find_program, CHILD_LANG, CHILD_PATH};
use super::{CodeExecutor, ExecError, ExecLimits, ExecOutput};

/// The interpreter when none is configured: Debian's, readable by uid 65534 (a version manager's
/// interpreter under `/root` is not).
pub const PYTHON_DEFAULT: &str = "/usr/bin/python3";
/// Sandboxes running at once when not configured; more calls wait for a free one.
pub const SANDBOXES_MAX_DEFAULT: usize = 8;
/// Size of the writable `/tmp` (a tmpfs, so memory) of one sandbox.
pub const SCRATCH_BYTES: u64 = 64 * 1024 * 1024;
/// The uid and gid the code runs as when the service is root: `nobody`.
pub const SANDBOX_ID: u32 = 65534;
/// Processes of the chain itself in each sandbox, besides the code's: `bwrap` and its init.
const CHAIN_PROCESSES: u64 = 2;
/// Top-level names that are `/usr` links on merged-`/usr` systems (bound as they are elsewhere).
const ROOT_LINKS: [&str; 6] = ["bin", "sbin", "lib", "lib64", "lib32", "libx32"];
/// What the start-up probe runs: it must print `ok` — as uid 65534 (when the service is root),
/// without capabilities, under `no_new_privs`, with no network interface but `lo`.
const PROBE_CODE: &str = r#"
import os, socket
status = dict(line.split(":", 1) for line in open("/proc/self/status").read().splitlines() if ":" in line)
assert int(status["CapEff"].strip(), 16) == 0, status["CapEff"]
assert status["NoNewPrivs"].strip() == "1", status["NoNewPrivs"]
assert [name for _, name in socket.if_nameindex()] == ["lo"], socket.if_nameindex()
assert not os.path.exists("/etc"), "the host's /etc is visible"
if DROPS_ROOT:
    assert (os.getuid(), os.getgid(), os.getgroups()) == (65534, 65534, []), (os.getuid(), os.getgid())
print("ok")
"#;

/// How [`Bubblewrap`] is configured (`--sandbox-python`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BubblewrapSettings {
    /// The interpreter, an absolute path. Under `/usr` it is visible through the `/usr` bind;
    /// elsewhere the folder two levels above the resolved executable (`<prefix>/bin/python3`)
    /// is bound read-only too, and must be readable by uid 65534.
    pub python: PathBuf,
    /// Sandboxes at once; also sizes the process limit all sandboxes share (uid 65534).
    pub sandboxes_max: usize,
}

impl Default for BubblewrapSettings {
    fn default() -> BubblewrapSettings {
        BubblewrapSettings { python: PathBuf::from(PYTHON_DEFAULT), sandboxes_max: SANDBOXES_MAX_DEFAULT }
    }
}

impl BubblewrapSettings {
    pub fn with_python(python: impl Into<PathBuf>) -> BubblewrapSettings {
        BubblewrapSettings { python: python.into(), ..BubblewrapSettings::default() }
    }
}

/// Runs Python code behind `prlimit`, `setpriv` and `bwrap` under [`ExecLimits`].
#[derive(Clone, Debug)]
pub struct Bubblewrap {
    limits: ExecLimits,
    python: PathBuf,
    /// `prlimit … -- setpriv … -- bwrap … --`: everything before the interpreter.
    prefix: Vec<OsString>,
    /// Whether the chain drops from root to [`SANDBOX_ID`].
    drops_root: bool,
    /// The `kill` program, to kill the whole process group; without it only `bwrap` is killed,
    /// which is enough for the namespace (belt and braces).
    kill_program: Option<PathBuf>,
    permits: Arc<Semaphore>,
}

impl Bubblewrap {
    /// The executor, after checking that the chain runs a trivial program here with the isolation
    /// it promises. The error says what is missing; callers fail closed on it.
    pub fn detect(limits: ExecLimits, settings: &BubblewrapSettings) -> Result<Bubblewrap, ExecError> {
        let sandbox = Bubblewrap::new(limits, settings)?;
        let words = sandbox.command_words();
        let mut command = std::process::Command::new(&words[0]);
        command.args(&words[1..]).env_clear().env("PATH", CHILD_PATH).env("LANG", CHILD_LANG).current_dir("/");
        // The probe's code goes in through the bootstrap, like any program.
        let code = PROBE_CODE.replace("DROPS_ROOT", if sandbox.drops_root { "True" } else { "False" });
        let printed = child::probe(command, &code)
            .map_err(|reason| ExecError::unavailable(format!("the bubblewrap sandbox does not work here: {reason}")))?;
        if printed != "ok\n" {
            return Err(ExecError::unavailable(format!(
                "the bubblewrap sandbox probe printed {printed:?} instead of \"ok\""
            )));
        }
        Ok(sandbox)
    }

    /// The executor, without running anything: finds the tools and checks the interpreter path.
    /// Prefer [`Bubblewrap::detect`], which also proves the chain works.
    pub fn new(limits: ExecLimits, settings: &BubblewrapSettings) -> Result<Bubblewrap, ExecError> {
        if settings.sandboxes_max == 0 {
            return Err(ExecError::unavailable("sandboxes_max is 0: no sandbox may run"));
        }
        let tool = |name: &str, package: &str| {
            find_program(name).ok_or_else(|| {
                ExecError::unavailable(format!("`{name}` is not installed (Debian package `{package}`)"))
            })
        };
        let prlimit = tool("prlimit", "util-linux")?;
        let setpriv = tool("setpriv", "util-linux")?;
        let bwrap = tool("bwrap", "bubblewrap")?;
        let python = &settings.python;
        if !python.is_absolute() {
            return Err(ExecError::unavailable(format!(
                "the sandbox python {} is not an absolute path",
                python.display()
            )));
        }
        let resolved = python.canonicalize().map_err(|error| {
            ExecError::unavailable(format!("the sandbox python {} is not there: {error}", python.display()))
        })?;
        if !child::is_executable(&resolved) {
            return Err(ExecError::unavailable(format!("the sandbox python {} is not executable", resolved.display())));
        }
        let python_prefix = if resolved.starts_with("/usr") {
            None
        } else {
            match resolved.parent().and_then(Path::parent) {
                Some(prefix) if prefix != Path::new("/") => Some(prefix.to_owned()),
                _ => {
                    return Err(ExecError::unavailable(format!(
                        "the sandbox python {} is neither under /usr nor in a <prefix>/bin folder",
                        resolved.display()
                    )))
                }
            }
        };
        // The folder /proc/self belongs to this process's effective uid.
        let drops_root = std::fs::metadata("/proc/self").map(|metadata| metadata.uid() == 0).unwrap_or(false);

        // RLIMIT_NPROC counts every process of uid 65534 (a PID namespace's too): all sandboxes
        // together. Each one's own count is bounded by the bootstrap's `processes_max` (counted
        // per user namespace by the kernel).
        let sandboxes_max = u64::try_from(settings.sandboxes_max).unwrap_or(u64::MAX);
        let nproc = limits.processes_max.saturating_add(CHAIN_PROCESSES).saturating_mul(sandboxes_max);
        let scratch_bytes = SCRATCH_BYTES.to_string();
        let mut prefix: Vec<OsString> = vec![prlimit.into_os_string()];
        prefix.extend(
            [
                format!("--cpu={}:{}", limits.cpu_seconds, limits.cpu_seconds + 1),
                format!("--as={}", limits.memory_bytes),
                format!("--fsize={}", limits.file_bytes),
                format!("--nproc={nproc}"),
                format!("--nofile={}", limits.open_files_max),
                "--core=0".to_owned(),
                "--".to_owned(),
            ]
            .map(OsString::from),
        );
        prefix.push(setpriv.into_os_string());
        if drops_root {
            prefix.extend(
                [
                    format!("--reuid={SANDBOX_ID}"),
                    format!("--regid={SANDBOX_ID}"),
                    "--clear-groups".to_owned(),
                    "--inh-caps=-all".to_owned(),
                    "--bounding-set=-all".to_owned(),
                ]
                .map(OsString::from),
            );
        }
        prefix.extend(["--no-new-privs", "--"].map(OsString::from));
        prefix.push(bwrap.into_os_string());
        prefix.extend(
            [
                "--unshare-all",
                "--unshare-user",
                "--disable-userns",
                "--die-with-parent",
                "--new-session",
                // The code is the namespace's PID 1, not a bwrap reaper: bwrap exits without
                // waiting for its reaper, which a host init that does not reap (a container's,
                // this CI's) keeps as a zombie of the sandbox's uid, counted against its
                // RLIMIT_NPROC until the next sandbox cannot fork. The namespace still dies
                // with its PID 1, orphans and all.
                "--as-pid-1",
                "--ro-bind",
                "/usr",
                "/usr",
            ]
            .map(OsString::from),
        );
        for name in ROOT_LINKS {
            let host = Path::new("/").join(name);
            let Ok(metadata) = std::fs::symlink_metadata(&host) else { continue };
            if metadata.file_type().is_symlink() {
                let Ok(target) = std::fs::read_link(&host) else { continue };
                prefix.push(OsString::from("--symlink"));
                prefix.push(target.into_os_string());
            } else if metadata.is_dir() {
                prefix.push(OsString::from("--ro-bind"));
                prefix.push(host.clone().into_os_string());
            } else {
                continue;
            }
            prefix.push(host.into_os_string());
        }
        if let Some(python_prefix) = python_prefix {
            prefix.push(OsString::from("--ro-bind"));
            prefix.push(python_prefix.clone().into_os_string());
            prefix.push(python_prefix.into_os_string());
        }
        prefix.extend(
            [
                "--proc",
                "/proc",
                "--dev",
                "/dev",
                // bwrap's /dev is an unbounded tmpfs (with /dev/shm): read-only, the device
                // nodes still work and no file can be stored there.
                "--remount-ro",
                "/dev",
                "--size",
                scratch_bytes.as_str(),
                "--tmpfs",
                "/tmp",
                "--remount-ro",
                "/",
                "--chdir",
                "/tmp",
                "--clearenv",
                "--setenv",
                "PATH",
                CHILD_PATH,
                "--setenv",
                "LANG",
                CHILD_LANG,
                "--setenv",
                "HOME",
                "/tmp",
                "--cap-drop",
                "ALL",
                "--",
            ]
            .map(OsString::from),
        );
        Ok(Bubblewrap {
            limits,
            // The resolved file: the link that named it may lie outside what the sandbox sees.
            python: resolved,
            prefix,
            drops_root,
            kill_program: find_program("kill"),
            permits: Arc::new(Semaphore::new(settings.sandboxes_max)),
        })
    }

    pub fn python(&self) -> &Path {
        &self.python
    }

    pub fn limits(&self) -> &ExecLimits {
        &self.limits
    }

    /// Whether the code runs as [`SANDBOX_ID`] (the service is root) rather than as the
    /// service's own user (inside the namespaces all the same).
    pub fn drops_root(&self) -> bool {
        self.drops_root
    }

    /// The whole command line: the chain, then `python -I -S -c BOOTSTRAP limits…`.
    fn command_words(&self) -> Vec<OsString> {
        let mut words = self.prefix.clone();
        words.extend(child::interpreter_words(&self.python, &self.limits));
        words
    }
}

#[async_trait]
impl CodeExecutor for Bubblewrap {
    async fn execute(&self, code: &str) -> Result<ExecOutput, ExecError> {
        check_code_size(code)?;
        let _permit =
            self.permits.acquire().await.map_err(|_| ExecError::unavailable("the sandbox is shutting down"))?;
        let words = self.command_words();
        let mut command = tokio::process::Command::new(&words[0]);
        // Nothing of the service's environment or folder reaches even the chain's own processes.
        command.args(&words[1..]).env_clear().env("PATH", CHILD_PATH).env("LANG", CHILD_LANG).current_dir("/");
        child::supervise(command, "the bubblewrap sandbox", code, &self.limits, self.kill_program.as_deref()).await
    }
}
