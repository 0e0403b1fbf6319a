//! The CLI's one error type: the line a failed command prints on standard error, and its
//! exit code (1 for a failure, 2 for a usage error, 141 for a reader that went away). Every
//! command file returns it; it names no other file of the CLI, so any of them may use it.

use crate::domain::InvalidInput;
use crate::vault::VaultError;

/// A command failed: the one line to print, and the exit code.
#[derive(Debug)]
pub struct CliError {
    pub message: String,
    pub code: u8,
}

impl CliError {
    pub fn new(message: impl Into<String>) -> Self {
        Self { message: message.into(), code: 1 }
    }

    pub fn usage(message: impl Into<String>) -> Self {
        Self { message: message.into(), code: 2 }
    }

    /// Standard output was closed by its reader (`| head`): nothing more to say, and nobody
    /// to say it to. Exit code 141, as a shell reports a process ended by SIGPIPE.
    pub fn closed_stdout() -> Self {
        Self { message: String::new(), code: 141 }
    }
}

impl From<VaultError> for CliError {
    fn from(e: VaultError) -> Self {
        CliError::new(e.to_string())
    }
}

impl From<InvalidInput> for CliError {
    fn from(e: InvalidInput) -> Self {
        CliError::new(e.to_string())
    }
}

impl From<crate::store::StoreError> for CliError {
    fn from(e: crate::store::StoreError) -> Self {
        CliError::new(e.to_string())
    }
}
