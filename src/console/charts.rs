//! Charts of the log over time: tokens handed out and denials, per caller, as stacked bars
//! drawn on the server in SVG (no script, no chart library). Each chart comes with the
//! table of its numbers, which is what a screen reader or a copy into a report needs.

use std::collections::HashMap;
use std::fmt::Write as _;

use time::OffsetDateTime;

use super::filter::{from_timestamp, rfc3339};
use super::html::esc;
use crate::proto::v1 as pb;

/// At most this many bars.
const MAX_BUCKETS: i64 = 48;
/// Bar widths to choose from, in seconds.
const STEPS: &[i64] = &[60, 300, 900, 1800, 3600, 3 * 3600, 6 * 3600, 12 * 3600, 86_400, 7 * 86_400, 30 * 86_400];
/// Callers drawn on their own; the rest are summed as "others".
const MAX_SERIES: usize = 8;
const COLOURS: &[&str] =
    &["#4e79a7", "#f28e2b", "#59a14f", "#e15759", "#76b7b2", "#edc948", "#b07aa1", "#ff9da7", "#9c755f"];

/// Counts per caller in equal time buckets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Chart {
    pub start: i64,
    pub step: i64,
    pub buckets: usize,
    /// (caller, count per bucket), the busiest first; "others" last when callers were cut.
    pub series: Vec<(String, Vec<u64>)>,
}

/// `a / b` rounded up, for `a >= 0` and `b > 0`.
fn ceil_div(a: i64, b: i64) -> i64 {
    (a + b - 1) / b
}

/// The smallest bar width that fits `[since, until)` in [`MAX_BUCKETS`] bars: a round one
/// when one fits, else the range divided evenly.
pub fn step_for(range_secs: i64) -> i64 {
    let range = range_secs.max(1);
    STEPS.iter().copied().find(|s| ceil_div(range, *s) <= MAX_BUCKETS).unwrap_or_else(|| ceil_div(range, MAX_BUCKETS))
}

impl Chart {
    /// Buckets `events` (already filtered to the range) from `since` to `until`.
    pub fn of(events: &[pb::AuditEvent], since: OffsetDateTime, until: OffsetDateTime) -> Chart {
        // Whole seconds around the range (the vault chose the events to the millisecond).
        let from = since.unix_timestamp();
        let to = until.unix_timestamp() + i64::from(until.nanosecond() > 0);
        let step = step_for(to - from);
        // Bars start on a round time, unless that would make one bar too many.
        let aligned = from.div_euclid(step) * step;
        let start = if ceil_div((to - aligned).max(1), step) <= MAX_BUCKETS { aligned } else { from };
        let buckets = ceil_div((to - start).max(1), step) as usize;
        let bucket = |e: &pb::AuditEvent| {
            let t = from_timestamp(&e.time)?.unix_timestamp();
            if t < from || t >= to {
                return None; // the first and last bars may reach past the range
            }
            let i = (t - start).div_euclid(step);
            usize::try_from(i).ok().filter(|i| *i < buckets)
        };
        // Totals first, so only the drawn callers get a row of buckets.
        let mut totals: HashMap<&str, u64> = HashMap::new();
        for e in events.iter().filter(|e| bucket(e).is_some()) {
            *totals.entry(e.caller.as_str()).or_default() += 1;
        }
        let mut order: Vec<(&str, u64)> = totals.into_iter().collect();
        order.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(b.0)));
        let own = if order.len() > MAX_SERIES { MAX_SERIES - 1 } else { order.len() };
        let row: HashMap<&str, usize> = order.iter().take(own).enumerate().map(|(i, (c, _))| (*c, i)).collect();
        let mut series: Vec<(String, Vec<u64>)> =
            order.iter().take(own).map(|(c, _)| ((*c).to_owned(), vec![0; buckets])).collect();
        if order.len() > own {
            series.push(("(others)".into(), vec![0; buckets]));
        }
        for e in events {
            if let Some(i) = bucket(e) {
                let r = row.get(e.caller.as_str()).copied().unwrap_or(own);
                series[r].1[i] += 1;
            }
        }
        Chart { start, step, buckets, series }
    }

    pub fn total(&self) -> u64 {
        self.series.iter().flat_map(|(_, v)| v).sum()
    }

    fn bucket_start(&self, i: usize) -> String {
        OffsetDateTime::from_unix_timestamp(self.start + i as i64 * self.step)
            .map(rfc3339)
            .unwrap_or_default()
            .replace('T', " ")
    }

    /// Stacked bars with a legend; `id` names the figure for links and tests.
    pub fn svg(&self, id: &str, title: &str) -> String {
        let (w, h, left, bottom) = (960.0_f64, 260.0_f64, 48.0_f64, 40.0_f64);
        let plot_h = h - bottom - 10.0;
        let bar_w = (w - left - 10.0) / self.buckets.max(1) as f64;
        let totals: Vec<u64> = (0..self.buckets).map(|i| self.series.iter().map(|(_, v)| v[i]).sum()).collect();
        let max = totals.iter().copied().max().unwrap_or(0).max(1);
        let mut s = format!(
            "<figure id=\"{id}\"><figcaption>{}</figcaption><svg viewBox=\"0 0 {w} {h}\" role=\"img\" \
             aria-label=\"{}\" xmlns=\"http://www.w3.org/2000/svg\">",
            esc(title),
            esc(title)
        );
        let _ = write!(
            s,
            "<line x1=\"{left}\" y1=\"{y}\" x2=\"{x2}\" y2=\"{y}\" stroke=\"#888\"/>\
             <text x=\"{tx}\" y=\"18\" font-size=\"11\" text-anchor=\"end\">{max}</text>\
             <text x=\"{tx}\" y=\"{y}\" font-size=\"11\" text-anchor=\"end\">0</text>",
            y = plot_h + 10.0,
            x2 = w - 10.0,
            tx = left - 6.0,
        );
        for i in 0..self.buckets {
            let x = left + i as f64 * bar_w;
            let mut y = plot_h + 10.0;
            for (k, (caller, v)) in self.series.iter().enumerate() {
                if v[i] == 0 {
                    continue;
                }
                let bh = v[i] as f64 / max as f64 * plot_h;
                y -= bh;
                let _ = write!(
                    s,
                    "<rect x=\"{x:.1}\" y=\"{y:.1}\" width=\"{bw:.1}\" height=\"{bh:.1}\" fill=\"{c}\"><title>{t}: {n} ({who})</title></rect>",
                    bw = (bar_w - 1.0).max(1.0),
                    c = COLOURS[k % COLOURS.len()],
                    t = esc(&self.bucket_start(i)),
                    n = v[i],
                    who = esc(caller),
                );
            }
            if i % (self.buckets / 6).max(1) == 0 {
                let _ = write!(
                    s,
                    "<text x=\"{x:.1}\" y=\"{ty}\" font-size=\"10\">{}</text>",
                    esc(&self.bucket_start(i)[5..16.min(self.bucket_start(i).len())]),
                    ty = h - bottom + 24.0,
                );
            }
        }
        s.push_str("</svg><ul class=\"legend\">");
        for (k, (caller, v)) in self.series.iter().enumerate() {
            let _ = write!(
                s,
                "<li><svg width=\"12\" height=\"12\" xmlns=\"http://www.w3.org/2000/svg\"><rect width=\"12\" height=\"12\" fill=\"{}\"/></svg> {} ({})</li>",
                COLOURS[k % COLOURS.len()],
                esc(caller),
                v.iter().sum::<u64>()
            );
        }
        s.push_str("</ul></figure>");
        s
    }

    /// The numbers behind the bars: a row per bucket with any event, a column per caller.
    pub fn table(&self, id: &str) -> String {
        let mut s = format!("<table id=\"{id}\" class=\"numbers\"><thead><tr><th>From (UTC)</th>");
        for (caller, _) in &self.series {
            let _ = write!(s, "<th>{}</th>", esc(caller));
        }
        s.push_str("</tr></thead><tbody>");
        for i in 0..self.buckets {
            if self.series.iter().all(|(_, v)| v[i] == 0) {
                continue;
            }
            let _ = write!(s, "<tr><td>{}</td>", esc(&self.bucket_start(i)));
            for (_, v) in &self.series {
                let _ = write!(s, "<td>{}</td>", v[i]);
            }
            s.push_str("</tr>");
        }
        s.push_str("</tbody></table>");
        s
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn at(caller: &str, secs: i64) -> pb::AuditEvent {
        pb::AuditEvent {
            caller: caller.into(),
            time: Some(prost_types::Timestamp { seconds: secs, nanos: 0 }),
            ..Default::default()
        }
    }

    #[test]
    fn bar_widths_keep_at_most_48_bars() {
        assert_eq!(step_for(3600), 300, "an hour: 12 bars of 5 minutes");
        assert_eq!(step_for(86_400), 1800, "a day: 48 bars of 30 minutes");
        assert_eq!(step_for(60), 60);
    }

    /// Any range, however long or oddly placed, is at most 48 bars (once 49: a round
    /// start one bar too early; once unbounded: ranges past the longest round width).
    #[test]
    fn any_range_is_at_most_48_bars_and_counts_every_event_in_it() {
        let t0 = 1_800_000_123;
        for (offset, range) in
            [(0, 1), (7, 59), (13, 3601), (1799, 86_400), (5, 40 * 86_400), (0, 5000 * 86_400), (17, 86_399)]
        {
            let since = OffsetDateTime::from_unix_timestamp(t0 + offset).unwrap();
            let until = since + time::Duration::seconds(range);
            // Fractional ends as a user may type them: still at most 48 bars.
            let odd =
                Chart::of(&[], since + time::Duration::milliseconds(900), until + time::Duration::milliseconds(100));
            assert!(odd.buckets as i64 <= MAX_BUCKETS, "fractional range {range}: {} bars", odd.buckets);
            let events = [at("a", t0 + offset), at("a", t0 + offset + range - 1), at("a", t0 + offset + range)];
            let c = Chart::of(&events, since, until);
            assert!(c.buckets as i64 <= MAX_BUCKETS, "range {range} at +{offset}: {} bars", c.buckets);
            assert_eq!(c.total(), 2, "range {range}: its first and last second, not its end");
        }
    }

    #[test]
    fn events_land_in_their_bucket_and_small_callers_are_summed() {
        let since = OffsetDateTime::from_unix_timestamp(1_800_000_000).unwrap();
        let until = since + time::Duration::hours(1);
        let t0 = since.unix_timestamp();
        let mut events =
            vec![at("a", t0), at("a", t0 + 299), at("a", t0 + 300), at("b", t0 + 3599), at("b", t0 + 3600)];
        for k in 0..10 {
            events.push(at(&format!("small-{k}"), t0 + 10));
        }
        let c = Chart::of(&events, since, until);
        assert_eq!((c.step, c.buckets), (300, 12));
        assert_eq!(c.series[0], ("a".to_owned(), [vec![2, 1], vec![0; 10]].concat()));
        assert_eq!(c.series[1].1[11], 1, "b's event at the hour's end; the one after it is out of range");
        assert_eq!(c.series.len(), MAX_SERIES);
        assert_eq!(c.series.last().unwrap().0, "(others)");
        assert_eq!(c.total(), 14);
        let svg = c.svg("tokens", "Tokens <handed> out");
        assert!(svg.contains("Tokens &lt;handed&gt; out") && svg.matches("<rect x=").count() == 7 + 1 + 1);
        assert!(c.table("n").contains("<td>2</td>"));
    }
}
