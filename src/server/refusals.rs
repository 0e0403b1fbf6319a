//! Budget refusals on the record: each closed window of a caller's refused GetAccessToken
//! requests (`usecase::caller_budget`) becomes one `token_throttled` audit record, written
//! by a background task (the refused requests themselves wait for nothing). A window whose
//! record cannot be written is kept and tried again with the next ones; at a stop, every
//! window still open is written before the server's last record.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::watch;

use super::ServerState;
use crate::audit::{Action, AuditRecord, Outcome};
use crate::usecase::Refusals;

/// How often closed windows are looked for (a window is one second long).
const TICK: Duration = Duration::from_millis(250);

/// Records closed windows until the server stops.
pub async fn record_loop(state: Arc<ServerState>, mut stopping: watch::Receiver<bool>) {
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stopping.wait_for(|s| *s) => return,
        }
        let due = state.budgets.due(Instant::now());
        if !due.is_empty() {
            record(&state, due).await;
        }
    }
}

/// Records every window, closed or not (at a stop).
pub async fn record_all(state: &ServerState) {
    let all = state.budgets.drain();
    if !all.is_empty() {
        record(state, all).await;
    }
}

async fn record(state: &ServerState, windows: Vec<Refusals>) {
    let mut unrecorded = Vec::new();
    for w in windows {
        if !unrecorded.is_empty() {
            unrecorded.push(w);
            continue;
        }
        let rec = AuditRecord::new(Action::TokenThrottled, Outcome::Denied)
            .caller(w.caller.clone(), w.serial.clone())
            .detail(w.detail())
            .request(w.first_request_id.clone(), w.peer.clone());
        if let Err(e) = state.audit.append_receipt(rec).await {
            tracing::warn!(error = %e, "budget refusals not recorded yet; kept for the next attempt");
            unrecorded.push(w);
        }
    }
    if !unrecorded.is_empty() {
        state.budgets.restore(unrecorded);
    }
}
