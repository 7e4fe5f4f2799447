//! Shared by the bench crate's tests.

use std::path::PathBuf;
use std::process::Command;

/// The `creditgraph` binary of the profile this test was built with (`target/<profile>/`, the
/// parent of this test's `deps/` folder), built first when it is missing.
pub fn server_binary() -> PathBuf {
    let exe = std::env::current_exe().expect("the test's path");
    let profile_dir = exe.parent().and_then(|deps| deps.parent()).expect("target/<profile>/deps/<test>").to_owned();
    let binary = profile_dir.join("creditgraph");
    if !binary.is_file() {
        let profile = profile_dir.file_name().and_then(|name| name.to_str()).expect("a profile folder").to_owned();
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
        let mut command = Command::new(cargo);
        command.args(["build", "-p", "cli", "--bin", "creditgraph"]);
        match profile.as_str() {
            "debug" => {}
            "release" => {
                command.arg("--release");
            }
            other => {
                command.args(["--profile", other]);
            }
        }
        let status = command.status().expect("cargo runs");
        assert!(status.success(), "cargo build -p cli failed: {status}");
    }
    assert!(binary.is_file(), "{} was not built", binary.display());
    binary
}
