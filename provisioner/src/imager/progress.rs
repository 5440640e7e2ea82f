//! Progress of a long phase, sent to the control node at most once a second and only every few
//! percent (or every [`KEEPALIVE`] when it is slow), and printed on the console every 5 %. Each
//! report is an event in the control node's log, so a deploy makes about fifty, not one a second.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::debug;

use super::console::Console;
use crate::api::{DeployPhase, Progress, ProgressReport};
use crate::client::Client;

/// Least time between two progress reports to the control node.
const REPORT_EVERY: Duration = Duration::from_secs(1);
/// Least percentage step between two console lines.
const PRINT_STEP: u64 = 5;
/// Least percentage step between two progress reports.
const REPORT_STEP: u64 = 2;
/// A report goes out after this long even without [`REPORT_STEP`] percent of progress.
const KEEPALIVE: Duration = Duration::from_secs(10);

/// Reports the position a worker publishes in [`Reporter::position`] until finished.
#[derive(Debug)]
pub(crate) struct Reporter {
    pos: Arc<AtomicU64>,
    stop: CancellationToken,
    task: JoinHandle<State>,
    client: Client,
    console: Console,
    phase: DeployPhase,
    label: String,
    total: u64,
}

#[derive(Debug, Clone, Copy, Default)]
struct State {
    printed: Option<u64>,
}

fn line(phase: DeployPhase, label: &str, pct: u64) -> String {
    if label.is_empty() {
        format!("{phase} {pct}%")
    } else {
        format!("{phase} {label} {pct}%")
    }
}

impl Reporter {
    /// Starts reporting `phase` of `total` bytes; `label` names what is processed (the artifact).
    pub(crate) fn start(
        client: &Client,
        console: &Console,
        phase: DeployPhase,
        label: &str,
        total: u64,
    ) -> Reporter {
        let pos = Arc::new(AtomicU64::new(0));
        let stop = CancellationToken::new();
        let task = {
            let (pos, stop, client, console, label) = (
                Arc::clone(&pos),
                stop.clone(),
                client.clone(),
                console.clone(),
                label.to_owned(),
            );
            tokio::spawn(async move {
                let mut st = State::default();
                let mut posted: Option<(u64, u64, tokio::time::Instant)> = None;
                let mut tick = tokio::time::interval(REPORT_EVERY);
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                tick.tick().await; // The first tick is immediate.
                loop {
                    tokio::select! {
                        () = stop.cancelled() => return st,
                        _ = tick.tick() => {}
                    }
                    let done = pos.load(Ordering::Relaxed);
                    let progress = Progress { done, total };
                    let pct = progress.percent();
                    if st.printed.is_none_or(|p| pct >= p + PRINT_STEP) {
                        console.say(&line(phase, &label, pct));
                        st.printed = Some(pct);
                    }
                    let due = posted.is_none_or(|(d, p, at)| {
                        d != done && (pct >= p + REPORT_STEP || at.elapsed() >= KEEPALIVE)
                    });
                    if !due {
                        continue;
                    }
                    posted = Some((done, pct, tokio::time::Instant::now()));
                    if let Err(err) = client
                        .report_progress(&ProgressReport { phase, progress })
                        .await
                    {
                        debug!(error = %common::ErrorChain(&err), "progress report failed");
                    }
                }
            })
        };
        Reporter {
            pos,
            stop,
            task,
            client: client.clone(),
            console: console.clone(),
            phase,
            label: label.to_owned(),
            total,
        }
    }

    /// The position the worker updates.
    pub(crate) fn position(&self) -> Arc<AtomicU64> {
        Arc::clone(&self.pos)
    }

    /// Stops reporting; after a success, reports (and prints) the phase complete.
    pub(crate) async fn finish(self, ok: bool) {
        self.stop.cancel();
        let st = self.task.await.unwrap_or_default();
        if !ok {
            return;
        }
        let progress = Progress {
            done: self.total,
            total: self.total,
        };
        if st.printed != Some(100) {
            self.console.say(&line(self.phase, &self.label, 100));
        }
        let report = ProgressReport {
            phase: self.phase,
            progress,
        };
        if let Err(err) = self.client.report_progress(&report).await {
            debug!(error = %common::ErrorChain(&err), "progress report failed");
        }
    }
}
