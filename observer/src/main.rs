//! The `observer` binary: see the library for everything.
fn main() -> std::process::ExitCode {
    observer::app::main()
}
