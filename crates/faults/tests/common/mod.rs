//! What the driver's tests share: the `creditgraph` binary of this build profile, built when
//! stale.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::SystemTime;

/// The newest modification time of the workspace's sources (crates' `src`, manifests, catalog),
/// so that the test rebuilds the server only when it is stale.
fn sources_modified() -> SystemTime {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let mut newest = SystemTime::UNIX_EPOCH;
    let mut pending = vec![root.join("crates"), root.join("Cargo.lock")];
    let mut visited = 0;
    while let Some(path) = pending.pop() {
        visited += 1;
        assert!(visited < 100_000, "the workspace has too many files to scan");
        let Ok(metadata) = std::fs::metadata(&path) else { continue };
        if metadata.is_dir() {
            // Not the server's sources: build output, tests, and this driver.
            let skip = path.file_name().is_some_and(|name| name == "target" || name == "tests" || name == "faults");
            if !skip {
                pending.extend(std::fs::read_dir(&path).into_iter().flatten().flatten().map(|entry| entry.path()));
            }
        } else if let Ok(modified) = metadata.modified() {
            newest = newest.max(modified);
        }
    }
    newest
}

/// The `creditgraph` binary of this build profile. A workspace run (`scripts/test.sh`) has just
/// built it; a run of this package alone may find it stale or missing, and then builds it.
pub fn server_binary() -> PathBuf {
    let exe = std::env::current_exe().expect("the test knows its path");
    let profile_dir = exe.parent().and_then(|deps| deps.parent()).expect("target/<profile>/deps/<test>");
    let binary = profile_dir.join("creditgraph");
    let built = std::fs::metadata(&binary).and_then(|metadata| metadata.modified()).ok();
    if built.is_some_and(|built| built >= sources_modified()) {
        return binary;
    }
    let release = profile_dir.file_name().is_some_and(|name| name == "release");
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
    let mut build = Command::new(cargo);
    build.args(["build", "--quiet", "-p", "cli", "--bin", "creditgraph"]);
    if release {
        build.arg("--release");
    }
    let status = build.status().expect("cargo runs");
    assert!(status.success(), "building the server binary failed: {status}");
    assert!(binary.is_file(), "{} is missing after the build", binary.display());
    binary
}
