//! The bubblewrap sandbox against code that tries to get out: the real chain (`prlimit`,
//! `setpriv`, `bwrap`), the real Debian interpreter, real files, sockets and processes of this
//! machine. Each attempt must fail *inside* the code (an error it can print), the call must come
//! back, and nothing the code started may outlive it. `scripts/test.sh` installs bubblewrap.

use std::net::{TcpListener, TcpStream};
use std::time::{Duration, Instant};

use engine::sandbox::bwrap::{Bubblewrap, BubblewrapSettings, SANDBOX_ID, SCRATCH_BYTES};
use engine::sandbox::{CodeExecutor, ExecErrorKind, ExecLimits, ExecOutput, ExecStatus};

/// Generous for a machine shared by several builders; the bound still catches a missing kill.
const SLACK_SECONDS: u64 = 8;

fn sandbox(limits: ExecLimits) -> Bubblewrap {
    Bubblewrap::detect(limits, &BubblewrapSettings::default())
        .expect("bubblewrap and /usr/bin/python3 work where the engine is tested (scripts/test.sh installs them)")
}

async fn run(limits: ExecLimits, code: &str) -> ExecOutput {
    sandbox(limits).execute(code).await.expect("the sandbox runs")
}

/// Runs `code` (which prints one line per attempt) and returns the lines, after checking the
/// program itself finished normally: the attempts were answered with errors it caught.
async fn attempts(code: &str) -> Vec<String> {
    let output = run(ExecLimits::default(), code).await;
    assert_eq!(output.status, ExecStatus::Succeeded, "{output:?}");
    output.stdout.lines().map(str::to_owned).collect()
}

/// A name no other process of the machine has in its command line.
fn marker() -> String {
    format!("{}.{}", 90 + std::process::id() % 9, uuid::Uuid::new_v4().as_u128() % 1_000_000)
}

/// Processes whose command line contains `marker`: (pid, real uid).
fn processes_with(marker: &str) -> Vec<(u32, u32)> {
    let mut found = Vec::new();
    let Ok(entries) = std::fs::read_dir("/proc") else { return found };
    for entry in entries.flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|name| name.parse::<u32>().ok()) else { continue };
        let cmdline = std::fs::read(entry.path().join("cmdline")).unwrap_or_default();
        if !String::from_utf8_lossy(&cmdline).contains(marker) {
            continue;
        }
        let status = std::fs::read_to_string(entry.path().join("status")).unwrap_or_default();
        // A zombie has been killed already; only its parent's reaping is left.
        if status.lines().any(|line| line.starts_with("State:") && line.contains('Z')) {
            continue;
        }
        let uid = status
            .lines()
            .find_map(|line| line.strip_prefix("Uid:"))
            .and_then(|uids| uids.split_whitespace().next())
            .and_then(|uid| uid.parse().ok())
            .unwrap_or(u32::MAX);
        found.push((pid, uid));
    }
    found
}

#[tokio::test]
async fn a_normal_program_runs_and_returns_its_output() {
    let sandbox = sandbox(ExecLimits::default());
    let code = "import os\nprint(2 + 2)\nprint(os.getuid(), os.getcwd(), sorted(os.environ))";
    let output = sandbox.execute(code).await.expect("runs");
    assert_eq!((&output.status, output.stderr.as_str(), output.truncated), (&ExecStatus::Succeeded, "", false));
    let lines: Vec<&str> = output.stdout.lines().collect();
    assert_eq!(lines.len(), 2, "{output:?}");
    assert_eq!(lines[0], "4");
    let (uid, rest) = lines[1].split_once(' ').expect("uid, folder, environment");
    if sandbox.drops_root() {
        assert_eq!(uid, SANDBOX_ID.to_string(), "runs as nobody");
    }
    assert_eq!(rest, "/tmp ['HOME', 'LANG', 'PATH', 'PWD']", "{output:?}");
    // The interpreter's own library is there (the bootstrap's `site.main()`).
    let output = sandbox.execute("import json, fractions\nprint(json.dumps(str(fractions.Fraction(6, 4))))").await;
    assert_eq!(output.expect("runs").stdout, "\"3/2\"\n");
}

#[tokio::test]
async fn an_infinite_loop_is_stopped_at_the_wall_clock() {
    let limits = ExecLimits { wall_seconds: 1, cpu_seconds: 60, ..ExecLimits::default() };
    let started = Instant::now();
    let output = run(limits, "print('started', flush=True)\nwhile True:\n    pass").await;
    assert_eq!((output.status, output.stdout.as_str()), (ExecStatus::TimedOut, "started\n"));
    assert!(started.elapsed() < Duration::from_secs(1 + SLACK_SECONDS), "{:?}", started.elapsed());
}

#[tokio::test]
async fn files_outside_the_sandbox_cannot_be_read_or_listed() {
    // A file of "the service": under /work (the target folder), readable by this process.
    let folder = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).expect("a folder under the target dir");
    let secret = folder.path().join("creditgraph.db");
    std::fs::write(&secret, "every account").expect("write the secret");
    assert_eq!(std::fs::read_to_string(&secret).expect("this process reads it"), "every account");
    let me = std::process::id();
    let secret = secret.display();
    let parent = folder.path().display();
    let code = format!(
        r#"
import os
for path in ["{secret}", "/proc/{me}/root{secret}", "/proc/{me}/cwd/creditgraph.db", "/proc/1/root{secret}",
             "../{secret}", "/etc/shadow", "/etc/passwd", "/root/.bash_history"]:
    try:
        print(path, "READ", open(path).read()[:40])
    except OSError as error:
        print(path, "refused", type(error).__name__)
for path in ["{parent}", "/work", "/root", "/home", "/etc", "/var", "/proc/{me}"]:
    try:
        print(path, "LISTED", os.listdir(path)[:5])
    except OSError as error:
        print(path, "refused", type(error).__name__)
print("root", sorted(os.listdir("/")))
"#
    );
    let lines = attempts(&code).await;
    assert_eq!(lines.len(), 16, "{lines:#?}");
    for line in &lines[..15] {
        // Not there at all (FileNotFoundError), or the kernel's ptrace check on /proc/1.
        assert!(line.ends_with(" refused FileNotFoundError") || line.ends_with(" refused PermissionError"), "{line}");
    }
    let root = lines[15].strip_prefix("root ").expect("the root listing");
    let allowed = ["'bin'", "'dev'", "'lib'", "'lib32'", "'lib64'", "'libx32'", "'proc'", "'sbin'", "'tmp'", "'usr'"];
    for name in root.trim_matches(['[', ']']).split(", ") {
        assert!(allowed.contains(&name), "{name} is visible at the sandbox's root: {root}");
    }
}

#[tokio::test]
async fn the_hosts_processes_and_their_environment_are_not_visible() {
    // Safe in the 2021 edition; the name is unique to this test, so no other test reads it.
    std::env::set_var("CREDITGRAPH_ESCAPE_TEST_SECRET", "hunter2");
    let me = std::process::id();
    let code = format!(
        r#"
import os
print(sorted(int(name) for name in os.listdir("/proc") if name.isdigit()))
for path in ["/proc/1/environ", "/proc/self/environ", "/proc/{me}/environ", "/proc/{me}/cmdline"]:
    try:
        print(path, repr(open(path, "rb").read()))
    except OSError as error:
        print(path, "refused", type(error).__name__)
"#
    );
    let lines = attempts(&code).await;
    let pids: Vec<u32> = lines[0].trim_matches(['[', ']']).split(", ").map(|pid| pid.parse().expect("a pid")).collect();
    // Its own PID namespace: bwrap's init (1) and the interpreter, nothing of the host.
    assert!(pids.len() <= 3 && pids.iter().all(|pid| *pid <= 3), "{pids:?}");
    assert!(!pids.contains(&me), "{pids:?}");
    assert!(lines.iter().all(|line| !line.contains("hunter2")), "{lines:#?}");
    assert!(lines[3].ends_with("refused FileNotFoundError"), "{}", lines[3]);
    assert!(lines[4].ends_with("refused FileNotFoundError"), "{}", lines[4]);
}

#[tokio::test]
async fn the_network_is_unreachable_even_on_loopback() {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind a loopback port");
    let port = listener.local_addr().expect("address").port();
    // The same code reaches the listener from outside the sandbox: the refusal below is the
    // sandbox's doing.
    let reached = TcpStream::connect(("127.0.0.1", port)).expect("the listener is reachable here");
    let (accepted, _) = listener.accept().expect("accepts");
    drop((reached, accepted));
    listener.set_nonblocking(true).expect("nonblocking");
    let code = format!(
        r#"
import socket
for host in ["127.0.0.1", "::1", "10.0.0.1", "1.1.1.1"]:
    try:
        socket.create_connection((host, {port}), timeout=3).close()
        print(host, "CONNECTED")
    except OSError as error:
        print(host, "refused", error.errno)
print([name for _, name in socket.if_nameindex()])
"#
    );
    let lines = attempts(&code).await;
    assert_eq!(lines.len(), 5, "{lines:#?}");
    for line in &lines[..4] {
        assert!(line.contains(" refused "), "{line}");
    }
    assert_eq!(lines[4], "['lo']");
    assert_eq!(
        listener.accept().map(|_| ()).map_err(|error| error.kind()),
        Err(std::io::ErrorKind::WouldBlock),
        "nothing reached the listener from the sandbox"
    );
}

#[tokio::test]
async fn a_fork_bomb_is_bounded_and_the_call_returns() {
    let limits = ExecLimits::default();
    let processes_max = limits.processes_max;
    let code = r#"
import os, signal
children = 0
try:
    while True:
        if os.fork() == 0:
            signal.pause()
            os._exit(0)
        children += 1
except OSError as error:
    print("stopped", children, error.errno)
"#;
    let started = Instant::now();
    let output = run(limits.clone(), code).await;
    assert_eq!(output.status, ExecStatus::Succeeded, "{output:?}");
    let words: Vec<&str> = output.stdout.split_whitespace().collect();
    assert_eq!(words.len(), 3, "{output:?}");
    assert_eq!((words[0], words[2]), ("stopped", "11"), "EAGAIN: {output:?}");
    let children: u64 = words[1].parse().expect("a count");
    assert!(children < processes_max, "{children} children with processes_max {processes_max}");
    // The waiting children died with the namespace when the program ended.
    assert!(started.elapsed() < Duration::from_secs(limits.wall_seconds + SLACK_SECONDS), "{:?}", started.elapsed());
}

#[tokio::test]
async fn two_gibibytes_cannot_be_allocated() {
    let code =
        "try:\n    block = bytearray(2 * 1024 ** 3)\n    print('ALLOCATED')\nexcept MemoryError:\n    print('refused')";
    assert_eq!(attempts(code).await, ["refused"]);
    // Under the limit the same allocation works, so the limit is what stopped it.
    assert_eq!(attempts("block = bytearray(64 * 1024 ** 2)\nprint(len(block))").await, ["67108864"]);
}

#[tokio::test]
async fn a_gibibyte_cannot_be_written() {
    let code = |path: &str| {
        format!(
            r#"
written = 0
try:
    with open("{path}", "wb") as file:
        for _ in range(1024):
            file.write(b"x" * 1024 ** 2)
            file.flush()
            written += 1024 ** 2
    print("WROTE", written)
except OSError as error:
    print("refused", error.errno, written)
"#
        )
    };
    // The file size limit (1 MiB by default): EFBIG after the first MiB.
    assert_eq!(attempts(&code("/tmp/big")).await, ["refused 27 1048576"]);
    // Without it, the 64 MiB tmpfs: ENOSPC before 64 MiB.
    let limits = ExecLimits { file_bytes: 2 * 1024 * 1024 * 1024, ..ExecLimits::default() };
    let output = run(limits, &code("/tmp/big")).await;
    let words: Vec<&str> = output.stdout.split_whitespace().collect();
    assert_eq!((words.first().copied(), words.get(1).copied()), (Some("refused"), Some("28")), "{output:?}");
    let written: u64 = words[2].parse().expect("a count");
    assert!(written <= SCRATCH_BYTES, "{written}");
    // Nothing outside /tmp is writable at all: not one byte.
    for path in ["/big", "/usr/big", "/dev/big", "/dev/shm/big", "/proc/big"] {
        let lines = attempts(&code(path)).await;
        assert_eq!(lines.len(), 1, "{path}: {lines:?}");
        assert!(lines[0].starts_with("refused ") && lines[0].ends_with(" 0"), "{path}: {lines:?}");
    }
}

#[tokio::test]
async fn limits_cannot_be_raised() {
    let code = r#"
import resource
for name in ["RLIMIT_CPU", "RLIMIT_AS", "RLIMIT_FSIZE", "RLIMIT_NPROC", "RLIMIT_NOFILE", "RLIMIT_CORE"]:
    which = getattr(resource, name)
    soft, hard = resource.getrlimit(which)
    try:
        resource.setrlimit(which, (resource.RLIM_INFINITY, resource.RLIM_INFINITY))
        print(name, "RAISED")
    except (ValueError, OSError):
        print(name, "refused", hard != resource.RLIM_INFINITY)
"#;
    let lines = attempts(code).await;
    assert_eq!(lines.len(), 6, "{lines:?}");
    for line in &lines {
        assert!(line.ends_with(" refused True"), "{line}");
    }
}

#[tokio::test]
async fn a_process_that_leaves_its_session_dies_at_the_wall_clock() {
    let marker = marker();
    let limits = ExecLimits { wall_seconds: 2, ..ExecLimits::default() };
    let code = format!(
        "import subprocess, time\nsubprocess.Popen(['sleep', '{marker}'], start_new_session=True)\nprint('started', flush=True)\ntime.sleep(60)"
    );
    let sandbox = sandbox(limits);
    let drops_root = sandbox.drops_root();
    let started = Instant::now();
    let execution = tokio::spawn(async move { sandbox.execute(&code).await });
    // While the code runs, its escaped process is visible here: the scan below can see one.
    let deadline = Instant::now() + Duration::from_secs(SLACK_SECONDS);
    let seen = loop {
        let found = processes_with(&marker);
        if !found.is_empty() {
            break found;
        }
        assert!(Instant::now() < deadline && !execution.is_finished(), "the escaped process never appeared");
        // Nothing announces a process start to another process: poll /proc.
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    if drops_root {
        assert!(seen.iter().all(|(_, uid)| *uid == SANDBOX_ID), "runs as nobody: {seen:?}");
    }
    let output = execution.await.expect("the task ends").expect("the sandbox runs");
    assert_eq!((output.status, output.stdout.as_str()), (ExecStatus::TimedOut, "started\n"));
    assert!(started.elapsed() < Duration::from_secs(2 + SLACK_SECONDS), "{:?}", started.elapsed());
    let deadline = Instant::now() + Duration::from_secs(SLACK_SECONDS);
    loop {
        let left = processes_with(&marker);
        if left.is_empty() {
            break;
        }
        assert!(Instant::now() < deadline, "survived the wall clock: {left:?}");
        // The kernel kills the namespace in its own time and tells nobody: poll /proc.
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[test]
fn a_missing_interpreter_makes_the_sandbox_unavailable() {
    for python in ["/nonexistent/bin/python3", "python3", "/"] {
        let error = Bubblewrap::detect(ExecLimits::default(), &BubblewrapSettings::with_python(python))
            .expect_err("no sandbox without an interpreter");
        assert_eq!(error.kind, ExecErrorKind::Unavailable, "{python}: {error}");
    }
}
