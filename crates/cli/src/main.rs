//! The `creditgraph` binary: everything lives in the `cli` library, so tests can build the same
//! application in-process.

fn main() -> std::process::ExitCode {
    cli::main()
}
