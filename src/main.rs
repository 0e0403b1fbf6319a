//! The `pogo-vault` binary: everything lives in the library (`pogo_vault::cli`).
#![forbid(unsafe_code)]

fn main() -> std::process::ExitCode {
    pogo_vault::cli::main()
}
