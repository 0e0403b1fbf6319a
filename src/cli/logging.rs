//! Where the commands' logs go: standard error, never standard output (which carries what a
//! command prints for scripts), with colours only for a person at a terminal.

use crate::config::LogFormat;

/// Colours only for a person: not when standard error is a file, a pipe or a log collector.
pub(crate) fn ansi_stderr() -> bool {
    use std::io::IsTerminal;
    std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty())
}

pub fn init_logging(format: LogFormat, level: &str) {
    let filter = crate::config::env_log_filter(level);
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Json => builder.json().flatten_event(true).with_current_span(true).try_init(),
        // Colour codes only for a terminal: a log file or collector gets plain text.
        LogFormat::Human => builder.with_ansi(ansi_stderr()).try_init(),
    };
}
