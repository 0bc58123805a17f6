//! Small helpers shared by the harness and the tests.

use std::net::TcpListener;
use std::path::PathBuf;
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

/// How often [`poll_until`] re-checks its condition.
const POLL_INTERVAL: Duration = Duration::from_millis(20);

/// The Cargo workspace root (the directory holding `envoy.yaml` and `target/`).
pub fn workspace_root() -> PathBuf {
    // devtools/ lives directly under the workspace root.
    let here = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    here.parent().map(PathBuf::from).unwrap_or(here)
}

/// A TCP port on 127.0.0.1 that was free a moment ago.
///
/// Only for things that cannot bind port 0 themselves (e.g. "a URL where nothing listens"). The
/// harness's own servers bind port 0 and keep their socket, so they never race.
pub fn free_port() -> Result<u16> {
    let listener = TcpListener::bind("127.0.0.1:0").context("binding 127.0.0.1:0")?;
    Ok(listener.local_addr()?.port())
}

/// Re-evaluates `cond` until it is true, or fails after `timeout` naming `what` was awaited.
///
/// Tests wait for events with this instead of sleeping: they go on as soon as the event happened,
/// and a missing event fails with a clear message instead of a flaky assertion.
pub async fn poll_until<F>(timeout: Duration, what: &str, mut cond: F) -> Result<()>
where
    F: AsyncFnMut() -> bool,
{
    let deadline = Instant::now() + timeout;
    loop {
        if cond().await {
            return Ok(());
        }
        if Instant::now() >= deadline {
            bail!("timed out after {timeout:?} waiting for {what}");
        }
        tokio::time::sleep(POLL_INTERVAL).await;
    }
}

/// An HTTP client for tests: no proxy from the environment (everything is on 127.0.0.1), no
/// redirects followed (a 3xx must be seen as such), a generous overall timeout.
pub fn http_client() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap_or_else(|_| reqwest::Client::new())
}

/// Locks a mutex, recovering the data if a panicking test thread poisoned it.
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Waits for Ctrl-C, or SIGTERM as sent by `docker stop`: how the demo programs end.
pub async fn shutdown_signal() -> Result<()> {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        r = tokio::signal::ctrl_c() => r?,
        _ = term.recv() => {}
    }
    Ok(())
}
