//! Tidy checks: the conventions of `docs/dev/style.md` and `ARCHITECTURE.md`, checked by tests
//! (`tests/tidy.rs`) instead of by discipline, in the manner of rust-analyzer's `tidy.rs`.
//!
//! The library holds the small source scanner the checks share: which lines of a Rust file are
//! test code (a `#[cfg(test)]` item, a file under `tests/`, the shared test kits), and where the
//! code of a line ends and its comment begins. It is deliberately textual: the checks must run in
//! a second on the whole workspace and need no compiler.

use std::path::{Path, PathBuf};

/// One Rust source file of the workspace, read whole.
pub struct SourceFile {
    /// Relative to the workspace root, with `/` separators.
    pub path: String,
    pub text: String,
}

impl SourceFile {
    /// Whether the whole file is test code: integration tests, benches, examples, and the test
    /// kits that production builds compile but never call (`conformance`, `testing`).
    pub fn is_test_file(&self) -> bool {
        let path = self.path.as_str();
        path.contains("/tests/")
            || path.contains("/benches/")
            || path.contains("/examples/")
            || path.contains("/conformance/")
            || path.ends_with("/conformance.rs")
            || path.ends_with("/testing.rs")
            || path.contains("/testing/")
            || path.ends_with("/tests.rs")
            || path.ends_with("_tests.rs")
    }

    /// For each line: whether it is test code (the file is, or the line is inside an item
    /// marked `#[cfg(test)]`).
    pub fn test_lines(&self) -> Vec<bool> {
        let lines: Vec<&str> = self.text.lines().collect();
        if self.is_test_file() {
            return vec![true; lines.len()];
        }
        let mut marks = vec![false; lines.len()];
        let mut index = 0;
        while index < lines.len() {
            if lines[index].trim_start().starts_with("#[cfg(test)]") {
                let end = item_end(&lines, index + 1);
                for mark in &mut marks[index..=end.min(lines.len() - 1)] {
                    *mark = true;
                }
                index = end + 1;
            } else {
                index += 1;
            }
        }
        marks
    }
}

/// The last line of the item that starts at or after `start`: an item ends at the `;` of a
/// one-line item or where the braces it opened close again.
fn item_end(lines: &[&str], start: usize) -> usize {
    let mut depth: i64 = 0;
    let mut opened = false;
    for (offset, line) in lines[start..].iter().enumerate() {
        let code = code_part(line);
        for character in code.chars() {
            match character {
                '{' => {
                    depth += 1;
                    opened = true;
                }
                '}' => depth -= 1,
                _ => {}
            }
        }
        let attribute = code.trim_start().starts_with("#[");
        if opened && depth <= 0 {
            return start + offset;
        }
        if !opened && !attribute && code.trim_end().ends_with(';') {
            return start + offset;
        }
    }
    lines.len().saturating_sub(1)
}

/// The part of a line before its `//` comment, with string and char literals blanked, so
/// braces and words inside them are not mistaken for code. Strings spanning lines are rare in
/// this workspace and only make a check stricter, never laxer.
pub fn code_part(line: &str) -> String {
    let mut code = String::with_capacity(line.len());
    let mut chars = line.chars().peekable();
    let mut in_string = false;
    while let Some(character) = chars.next() {
        if in_string {
            match character {
                '\\' => {
                    chars.next();
                }
                '"' => {
                    in_string = false;
                    code.push('"');
                }
                _ => code.push(' '),
            }
            continue;
        }
        match character {
            '"' => {
                in_string = true;
                code.push('"');
            }
            '/' if chars.peek() == Some(&'/') => break,
            '\'' => {
                // A char literal such as '{' or '\n' (a lifetime has no closing quote nearby).
                let rest: String = chars.clone().take(3).collect();
                let literal_length = if rest.starts_with('\\') {
                    rest.find('\'').map(|end| end + 1)
                } else {
                    (rest.chars().nth(1) == Some('\'')).then_some(2)
                };
                match literal_length {
                    Some(length) => {
                        for _ in 0..length {
                            chars.next();
                        }
                        code.push_str("' '");
                    }
                    None => code.push('\''),
                }
            }
            _ => code.push(character),
        }
    }
    code
}

/// The comment of a line (after `//`), if it has one outside string literals.
pub fn comment_part(line: &str) -> Option<&str> {
    let code = code_part(line);
    let rest = line.get(code.len()..)?;
    rest.strip_prefix("//").map(str::trim)
}

/// The workspace root (this crate lives at `crates/tidy`).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .ancestors()
        .nth(2)
        .expect("crates/tidy sits two levels below the workspace root")
        .to_path_buf()
}

/// Every `.rs` file under `crates/`, sorted by path (no `target` directory lives there).
pub fn rust_files(root: &Path) -> Vec<SourceFile> {
    let mut files = Vec::new();
    let mut pending = vec![root.join("crates")];
    while let Some(directory) = pending.pop() {
        let entries = std::fs::read_dir(&directory).expect("a workspace directory is readable");
        for entry in entries {
            let path = entry.expect("a directory entry is readable").path();
            if path.is_dir() {
                if path.file_name().is_some_and(|name| name != "target" && name != "node_modules") {
                    pending.push(path);
                }
            } else if path.extension().is_some_and(|extension| extension == "rs") {
                let text = std::fs::read_to_string(&path).expect("a source file is UTF-8");
                let relative = path.strip_prefix(root).expect("under the root").to_string_lossy().replace('\\', "/");
                files.push(SourceFile { path: relative, text });
            }
        }
    }
    files.sort_by(|left, right| left.path.cmp(&right.path));
    files
}

/// The workspace's crates: `(directory name, package name)` of each `crates/*/Cargo.toml`.
pub fn crates(root: &Path) -> Vec<(String, String)> {
    let mut crates = Vec::new();
    for entry in std::fs::read_dir(root.join("crates")).expect("crates/ is readable") {
        let directory = entry.expect("a directory entry is readable").path();
        let Ok(manifest) = std::fs::read_to_string(directory.join("Cargo.toml")) else { continue };
        let name = manifest
            .lines()
            .find_map(|line| line.strip_prefix("name = "))
            .map(|name| name.trim().trim_matches('"').to_owned())
            .expect("every crate manifest names its package");
        let folder = directory.file_name().expect("a crate folder has a name").to_string_lossy().into_owned();
        crates.push((folder, name));
    }
    crates.sort();
    crates
}

/// The entries of one `[section]` of a manifest, as the names before `=` or `.workspace`.
pub fn manifest_section(manifest: &str, section: &str) -> Vec<String> {
    let header = format!("[{section}]");
    let mut inside = false;
    let mut names = Vec::new();
    for line in manifest.lines() {
        let line = line.trim();
        if line.starts_with('[') {
            inside = line == header;
            continue;
        }
        if !inside || line.is_empty() || line.starts_with('#') {
            continue;
        }
        let name = line.split(['=', '.']).next().unwrap_or_default().trim();
        if !name.is_empty() {
            names.push(name.to_owned());
        }
    }
    names
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(path: &str, text: &str) -> SourceFile {
        SourceFile { path: path.to_owned(), text: text.to_owned() }
    }

    #[test]
    fn cfg_test_items_are_test_lines_and_the_rest_is_not() {
        let source = file(
            "crates/x/src/lib.rs",
            "//! x\nfn a() {}\n#[cfg(test)]\nfn b() {\n    let s = \"}\";\n}\nfn c() {}\n#[cfg(test)]\nmod tests {\n    #[test]\n    fn t() { x(); }\n}\n",
        );
        let marks = source.test_lines();
        assert_eq!(marks, vec![false, false, true, true, true, true, false, true, true, true, true, true]);
    }

    #[test]
    fn a_cfg_test_use_line_ends_at_its_semicolon() {
        let source = file("crates/x/src/lib.rs", "#[cfg(test)]\nuse std::fmt;\nfn a() {}\n");
        assert_eq!(source.test_lines(), vec![true, true, false]);
    }

    #[test]
    fn test_files_are_whole() {
        assert!(file("crates/x/tests/api/main.rs", "").is_test_file());
        assert!(file("crates/store/src/conformance/runs.rs", "").is_test_file());
        assert!(!file("crates/store/src/runs.rs", "").is_test_file());
    }

    #[test]
    fn comments_and_strings_are_told_apart() {
        assert_eq!(
            comment_part("sleep(x); // the provider is slow on purpose"),
            Some("the provider is slow on purpose")
        );
        assert_eq!(comment_part("let url = \"http://host\";"), None);
        assert_eq!(code_part("let c = '{'; // {"), "let c = ' '; ");
        assert_eq!(code_part("fn f<'a>(x: &'a str) {"), "fn f<'a>(x: &'a str) {");
    }

    #[test]
    fn manifest_sections_list_their_names() {
        let manifest = "[package]\nname = \"a\"\n\n[dependencies]\nledger.workspace = true\nserde = { version = \"1\" }\n\n[dev-dependencies]\nproptest = \"1\"\n";
        assert_eq!(manifest_section(manifest, "dependencies"), vec!["ledger", "serde"]);
        assert_eq!(manifest_section(manifest, "dev-dependencies"), vec!["proptest"]);
        assert!(manifest_section(manifest, "build-dependencies").is_empty());
    }
}
