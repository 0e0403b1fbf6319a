//! Standard output for the commands: every line goes through [`line`] (the `outln!`
//! macro), so a reader that closed the pipe (`pogo-vault tenant list | head -1`) ends the
//! command quietly instead of panicking as `println!` does. The Rust runtime ignores
//! SIGPIPE, so the closed pipe arrives as an `EPIPE` write error, handled here.

use std::io::Write;

use super::error::CliError;

/// Writes `args` and a newline to standard output.
pub fn line(args: std::fmt::Arguments<'_>) -> Result<(), CliError> {
    let mut out = std::io::stdout().lock();
    writeln!(out, "{args}").and_then(|()| out.flush()).map_err(|e| write_error(&e))
}

/// A failed write to standard output: a closed pipe ends the command quietly; anything
/// else (a full disk behind a redirect) is an error worth a line.
pub fn write_error(e: &std::io::Error) -> CliError {
    if e.kind() == std::io::ErrorKind::BrokenPipe {
        CliError::closed_stdout()
    } else {
        CliError::new(format!("cannot write to standard output: {e}"))
    }
}
