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

/// [`init_logging`] plus, when `[traces]` names a collector, the layer that exports the
/// vault's spans (`telemetry`). The log level filters the log lines only: spans reach the
/// exporter whatever it is. Keep the returned exporter until the process stops.
pub fn init_logging_and_traces(
    format: LogFormat,
    level: &str,
    traces: &crate::telemetry::TracesConfig,
) -> Result<Option<crate::telemetry::Tracing>, String> {
    use tracing_subscriber::Layer;
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    let Some((exporter_layer, tracing)) = crate::telemetry::layer(traces)? else {
        init_logging(format, level);
        return Ok(None);
    };
    let filter = crate::config::env_log_filter(level);
    let lines = tracing_subscriber::fmt::layer().with_writer(std::io::stderr);
    let lines = match format {
        LogFormat::Json => lines.json().flatten_event(true).with_current_span(true).with_filter(filter).boxed(),
        LogFormat::Human => lines.with_ansi(ansi_stderr()).with_filter(filter).boxed(),
    };
    let _ = tracing_subscriber::registry().with(lines).with(exporter_layer).try_init();
    Ok(Some(tracing))
}
