//! The workspace's conventions, checked on every test run (see `docs/dev/style.md` for the
//! reason behind each). A failing check names every offending file and line, so a fix needs no
//! search.

use tidy::{code_part, comment_part, crates, manifest_section, rust_files, workspace_root, SourceFile};

/// Fails with every violation listed, one per line.
fn assert_none(check: &str, violations: &[String]) {
    assert!(violations.is_empty(), "{check}: {} violation(s):\n{}", violations.len(), violations.join("\n"));
}

fn files() -> Vec<SourceFile> {
    let files = rust_files(&workspace_root());
    assert!(files.len() > 50, "the scanner found only {} files: wrong root?", files.len());
    files
}

/// Every source file opens with a `//!` comment saying why it exists.
#[test]
fn every_source_file_opens_with_a_module_doc() {
    let violations: Vec<String> = files()
        .iter()
        .filter(|file| !file.text.trim_start().starts_with("//!"))
        .map(|file| file.path.clone())
        .collect();
    assert_none("source files without a leading //! doc comment", &violations);
}

/// The ledger is pure: no dependency but `std`, so no I/O, clock or async can creep in.
#[test]
fn the_ledger_depends_on_std_only() {
    let manifest =
        std::fs::read_to_string(workspace_root().join("crates/ledger/Cargo.toml")).expect("the ledger's manifest");
    let dependencies = manifest_section(&manifest, "dependencies");
    assert_none("dependencies of crates/ledger (it must depend on std only)", &dependencies);
    let build = manifest_section(&manifest, "build-dependencies");
    assert_none("build-dependencies of crates/ledger", &build);
}

/// The server sees stores only through the `store` traits: no backend crate, type or module.
#[test]
fn the_server_names_no_concrete_store() {
    let root = workspace_root();
    let manifest = std::fs::read_to_string(root.join("crates/server/Cargo.toml")).expect("the server's manifest");
    let backends = ["store-sqlite", "store-postgres"];
    let mut violations: Vec<String> = manifest_section(&manifest, "dependencies")
        .into_iter()
        .filter(|name| backends.contains(&name.as_str()))
        .map(|name| format!("crates/server/Cargo.toml depends on {name}"))
        .collect();
    let names = ["store_sqlite", "store_postgres", "SqliteStore", "PostgresStore", "MemoryStore"];
    for file in files().iter().filter(|file| file.path.starts_with("crates/server/src/")) {
        let test_lines = file.test_lines();
        for (number, line) in file.text.lines().enumerate() {
            if test_lines[number] {
                continue;
            }
            let code = code_part(line);
            if let Some(name) = names.iter().find(|name| code.contains(*name)) {
                violations.push(format!("{}:{}: names {name}", file.path, number + 1));
            }
        }
    }
    assert_none("concrete stores named by the server", &violations);
}

/// Tests synchronise on events. A sleep in a test needs its reason next to it: on its own line
/// (a trailing comment) or the line above.
#[test]
fn sleeps_in_tests_give_their_reason() {
    let mut violations = Vec::new();
    for file in files() {
        let lines: Vec<&str> = file.text.lines().collect();
        let test_lines = file.test_lines();
        for (number, line) in lines.iter().enumerate() {
            if !test_lines[number] || !code_part(line).contains("sleep(") {
                continue;
            }
            let reason_here = comment_part(line).is_some_and(|comment| !comment.is_empty());
            let reason_above = number
                .checked_sub(1)
                .map(|above| lines[above].trim_start())
                .is_some_and(|above| above.starts_with("//") && above.len() > 3);
            if !(reason_here || reason_above) {
                violations.push(format!("{}:{}: {}", file.path, number + 1, line.trim()));
            }
        }
    }
    assert_none("sleeps in tests without a one-line reason next to them", &violations);
}

/// `ARCHITECTURE.md` is the map: every crate is on it.
#[test]
fn every_crate_is_named_in_the_architecture_document() {
    let root = workspace_root();
    let architecture = std::fs::read_to_string(root.join("ARCHITECTURE.md")).expect("ARCHITECTURE.md");
    let violations: Vec<String> = crates(&root)
        .into_iter()
        .filter(|(folder, _)| !architecture.contains(&format!("crates/{folder}")))
        .map(|(folder, name)| format!("crates/{folder} (package {name})"))
        .collect();
    assert_none("crates missing from ARCHITECTURE.md", &violations);
}

/// Production code never unwraps: a failure it cannot handle is an `expect` that says why it
/// cannot happen, or an error it returns.
#[test]
fn no_unwrap_outside_tests() {
    let mut violations = Vec::new();
    for file in files().iter().filter(|file| file.path.contains("/src/")) {
        let test_lines = file.test_lines();
        for (number, line) in file.text.lines().enumerate() {
            if !test_lines[number] && code_part(line).contains(".unwrap()") {
                violations.push(format!("{}:{}: {}", file.path, number + 1, line.trim()));
            }
        }
    }
    assert_none("unwrap() in production code", &violations);
}

/// Nothing hides: no ignored tests, no `todo!`/`unimplemented!`, no `#[should_panic]` (assert the
/// error instead).
#[test]
fn no_hidden_or_unfinished_code() {
    let markers = ["#[ignore", "todo!(", "unimplemented!(", "#[should_panic"];
    let mut violations = Vec::new();
    for file in files().iter().filter(|file| !file.path.starts_with("crates/tidy/")) {
        for (number, line) in file.text.lines().enumerate() {
            let code = code_part(line);
            if let Some(marker) = markers.iter().find(|marker| code.contains(*marker)) {
                violations.push(format!("{}:{}: {marker}", file.path, number + 1));
            }
        }
    }
    assert_none("hidden or unfinished code", &violations);
}
