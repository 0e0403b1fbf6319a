//! TOML syntax errors told with their line and column, for the files an operator edits
//! (the configuration, the policy). Low in the house: it knows only the `toml` crate.

/// `message (line N, column M)` from a TOML error, so the operator finds the line.
pub fn with_line(e: &toml::de::Error, text: &str) -> String {
    let msg = e.message().trim().to_owned();
    match e.span() {
        Some(span) => {
            let before = &text[..span.start.min(text.len())];
            let line = before.matches('\n').count() + 1;
            let col = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
            format!("line {line}, column {col}: {msg}")
        }
        None => msg,
    }
}
