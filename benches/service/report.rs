//! The report: the machine and load it ran on, one table row per scenario and server
//! (vault rows compared with the floor's), and the audit writer's figures from the vault's
//! own metrics.

use pogo_vault::server;

use crate::load::Run;

/// Nearest-rank percentile of sorted microseconds, in milliseconds.
pub fn pct(sorted: &[u32], p: f64) -> Option<f64> {
    if sorted.is_empty() {
        return None;
    }
    let rank = ((p * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    Some(f64::from(sorted[rank - 1]) / 1000.0)
}

/// A refusal as a table note shows it: its code and the first 120 bytes of its message.
pub fn status_line(s: &tonic::Status) -> String {
    let mut m = s.message().to_owned();
    m.truncate(120);
    format!("{:?}: {m}", s.code())
}

/// One row of the table: one scenario against one server.
pub struct Row {
    pub scenario: String,
    pub server: &'static str,
    pub requests: u64,
    pub per_sec: Option<f64>,
    pub p50: Option<f64>,
    pub p99: Option<f64>,
    pub p999: Option<f64>,
    pub cpu_us: Option<f64>,
    pub errors: u64,
    pub ratio: String,
    pub notes: String,
}

impl Row {
    pub fn new(scenario: impl Into<String>, server: &'static str) -> Row {
        Row {
            scenario: scenario.into(),
            server,
            requests: 0,
            per_sec: None,
            p50: None,
            p99: None,
            p999: None,
            cpu_us: None,
            errors: 0,
            ratio: String::new(),
            notes: String::new(),
        }
    }

    pub fn from_run(scenario: impl Into<String>, server: &'static str, r: &Run) -> Row {
        Row {
            requests: r.ok,
            per_sec: Some(r.ok as f64 / r.secs),
            p50: pct(&r.lat, 0.50),
            p99: pct(&r.lat, 0.99),
            p999: pct(&r.lat, 0.999),
            cpu_us: (r.ok > 0).then(|| r.cpu / r.ok as f64 * 1e6),
            errors: r.errors,
            notes: r.first_error.clone().map(|e| format!("first error: {e}")).unwrap_or_default(),
            ..Row::new(scenario, server)
        }
    }
}

pub fn print_table(rows: &[Row]) {
    let f = |v: Option<f64>, prec: usize| v.map_or_else(|| "-".to_owned(), |x| format!("{x:.prec$}"));
    println!(
        "| {:<30} | {:<7} | {:>8} | {:>9} | {:>8} | {:>8} | {:>8} | {:>9} | {:>6} | {:<44} | notes",
        "scenario",
        "server",
        "ok",
        "per s",
        "p50 ms",
        "p99 ms",
        "p99.9 ms",
        "CPU µs/op",
        "errors",
        "vault/floor; vault/durable floor",
    );
    println!(
        "|{}|{}|{}|{}|{}|{}|{}|{}|{}|{}|---",
        "-".repeat(32),
        "-".repeat(9),
        "-".repeat(10),
        "-".repeat(11),
        "-".repeat(10),
        "-".repeat(10),
        "-".repeat(10),
        "-".repeat(11),
        "-".repeat(8),
        "-".repeat(46),
    );
    for r in rows {
        println!(
            "| {:<30} | {:<7} | {:>8} | {:>9} | {:>8} | {:>8} | {:>8} | {:>9} | {:>6} | {:<44} | {}",
            r.scenario,
            r.server,
            r.requests,
            f(r.per_sec, 0),
            f(r.p50, 2),
            f(r.p99, 2),
            f(r.p999, 2),
            f(r.cpu_us, 0),
            r.errors,
            if r.ratio.is_empty() { "-" } else { &r.ratio },
            r.notes
        );
    }
}

/// Fills the vault row's ratio column against the floor rows (`floor`, `durable`).
pub fn compare(vault: &mut Row, floors: &[Row]) {
    let div = |a: Option<f64>, b: Option<f64>| match (a, b) {
        (Some(a), Some(b)) if b > 0.0 => format!("{:.2}", a / b),
        _ => "-".to_owned(),
    };
    let part = |name: &str| {
        floors.iter().find(|f| f.server == name).map_or_else(
            || "-".to_owned(),
            |f| format!("rate {} p99 {}", div(vault.per_sec, f.per_sec), div(vault.p99, f.p99)),
        )
    };
    vault.ratio = format!("{}; {}", part("floor"), part("durable"));
    if vault.ratio == "-; -" {
        vault.ratio.clear();
    }
}

/// The audit writer's counters, read from the server's own Prometheus text.
#[derive(Default)]
pub struct AuditSnap {
    records: f64,
    commits: f64,
    commit_secs: f64,
    /// Cumulative commit-latency buckets: (upper bound in seconds, count).
    buckets: Vec<(f64, f64)>,
}

pub async fn audit_snap(server: &server::RunningServer) -> AuditSnap {
    let text = server.state.metrics_text().await;
    let mut a = AuditSnap::default();
    for line in text.lines() {
        let Some((k, v)) = line.rsplit_once(' ') else { continue };
        let Ok(v) = v.parse::<f64>() else { continue };
        match k {
            "pogo_vault_audit_records_total" => a.records = v,
            "pogo_vault_audit_commit_seconds_count" => a.commits = v,
            "pogo_vault_audit_commit_seconds_sum" => a.commit_secs = v,
            _ => {
                if let Some(le) =
                    k.strip_prefix("pogo_vault_audit_commit_seconds_bucket{le=\"").and_then(|r| r.strip_suffix("\"}"))
                {
                    a.buckets.push((le.parse().unwrap_or(f64::INFINITY), v));
                }
            }
        }
    }
    a
}

/// Group-commit figures between two snapshots taken `secs` apart.
pub fn audit_note(a: &AuditSnap, b: &AuditSnap, secs: f64) -> String {
    let commits = b.commits - a.commits;
    if commits <= 0.0 || a.buckets.len() != b.buckets.len() {
        return "audit metrics n/a".to_owned();
    }
    let bound = |p: f64| {
        let le = b
            .buckets
            .iter()
            .zip(&a.buckets)
            .find(|((_, cb), (_, ca))| cb - ca >= p * commits)
            .map_or(f64::INFINITY, |((le, _), _)| *le);
        if le.is_finite() { format!("{}", le * 1000.0) } else { "inf".to_owned() }
    };
    format!(
        "audit: {:.1} records/commit, {:.0} commits/s, commit mean {:.2} ms, p99 <= {} ms, max <= {} ms",
        (b.records - a.records) / commits,
        commits / secs,
        (b.commit_secs - a.commit_secs) / commits * 1000.0,
        bound(0.99),
        bound(1.0)
    )
}

pub fn add_note(row: &mut Row, note: &str) {
    row.notes = if row.notes.is_empty() { note.to_owned() } else { format!("{}; {note}", row.notes) };
}

/// Appends a vault row and its floor rows (any may be missing), the vault row compared with
/// the floor (`floor`) and the durable floor (`durable`).
pub fn push_pair(rows: &mut Vec<Row>, mut pair: Vec<Row>) {
    if let Some((vault, floors)) = pair.split_first_mut()
        && vault.server == "vault"
    {
        compare(vault, floors);
    }
    rows.extend(pair);
}

// ---------------------------------------------------------------- the run's circumstances

pub fn machine() -> String {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name").and_then(|r| r.split_once(':')).map(|(_, v)| v.trim().to_owned()))
        .unwrap_or_else(|| "unknown CPU".to_owned());
    let mem = std::fs::read_to_string("/proc/meminfo")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:").map(|v| v.trim().to_owned()))
        .unwrap_or_default();
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    format!(
        "nproc={} | {model} | MemTotal {mem} | Linux {}",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        kernel.trim()
    )
}

pub fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .split_whitespace()
        .take(3)
        .collect::<Vec<_>>()
        .join(" ")
}

pub fn now_rfc3339() -> String {
    time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_else(|_| "unknown time".to_owned())
}
