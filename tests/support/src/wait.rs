//! Waiting for something to be true instead of sleeping for long enough.

use std::future::Future;
use std::time::Duration;

/// How long [`eventually`] waits by default before it fails the test.
pub const DEADLINE: Duration = Duration::from_secs(10);

/// How often a condition is checked again.
const RECHECK: Duration = Duration::from_millis(10);

/// Checks `condition` until it holds, re-checking every few milliseconds; panics naming `what`
/// if it still does not hold after `deadline`. The deadline is a bound against hanging, not an
/// assertion about speed.
pub async fn eventually<F, Fut>(what: &str, deadline: Duration, mut condition: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let give_up = tokio::time::Instant::now() + deadline;
    loop {
        if condition().await {
            return;
        }
        if tokio::time::Instant::now() >= give_up {
            panic!("still not true after {deadline:?}: {what}");
        }
        tokio::time::sleep(RECHECK).await;
    }
}

/// Receives from `events` until one satisfies `wanted` and returns it; panics naming `what` if
/// none has come after `deadline` or the sender is gone. Missed (lagged) events are skipped.
pub async fn event<T, F>(
    events: &mut tokio::sync::broadcast::Receiver<T>,
    what: &str,
    deadline: Duration,
    mut wanted: F,
) -> T
where
    T: Clone,
    F: FnMut(&T) -> bool,
{
    use tokio::sync::broadcast::error::RecvError;
    let give_up = tokio::time::Instant::now() + deadline;
    loop {
        match tokio::time::timeout_at(give_up, events.recv()).await {
            Err(_) => panic!("no event after {deadline:?}: {what}"),
            Ok(Err(RecvError::Closed)) => panic!("event sender gone while waiting for {what}"),
            Ok(Err(RecvError::Lagged(_))) => {}
            Ok(Ok(event)) if wanted(&event) => return event,
            Ok(Ok(_)) => {}
        }
    }
}
