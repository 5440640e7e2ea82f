//! Daemon plumbing for thin `main`s: logging, shutdown, and a polling helper for tests.

use std::future::Future;
use std::io::IsTerminal;
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;
use tracing_subscriber::EnvFilter;

/// Installs the process-wide tracing subscriber: `RUST_LOG`-style filtering (default `info`),
/// human output on a terminal and JSON lines otherwise, always on stderr.
///
/// Only binaries call this; libraries never install a subscriber.
pub fn init_tracing() {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if std::io::stderr().is_terminal() {
        builder.init();
    } else {
        builder.json().flatten_event(true).init();
    }
}

/// Returns a token that is cancelled on the first SIGTERM or SIGINT.
///
/// Must be called inside a tokio runtime.
pub fn shutdown_token() -> std::io::Result<CancellationToken> {
    use tokio::signal::unix::{SignalKind, signal};
    let token = CancellationToken::new();
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let t = token.clone();
    tokio::spawn(async move {
        tokio::select! {
            _ = term.recv() => tracing::info!(signal = "SIGTERM", "shutting down"),
            _ = int.recv() => tracing::info!(signal = "SIGINT", "shutting down"),
        }
        t.cancel();
    });
    Ok(token)
}

/// Polls `cond` every 50 ms until it returns `Some`, or gives up after `timeout`.
///
/// Tests use this rather than sleeping and then asserting.
pub async fn wait_for<T, F, Fut>(timeout: Duration, mut cond: F) -> Option<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = cond().await {
            return Some(v);
        }
        if Instant::now() >= deadline {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
