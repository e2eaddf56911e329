//! The stop signal shared by the pipeline's tasks: a `watch` channel that turns `true` once.

use tokio::sync::watch;

/// Resolves once `stop_rx` is `true`, or when its sender is gone (nobody can stop us any
/// more, so treat it as a stop too).
///
/// Unlike awaiting `wait_for` directly, this does not hold the channel's read guard in the
/// caller's future, which keeps `select!` futures `Send`.
pub(crate) async fn stopped(stop_rx: &mut watch::Receiver<bool>) {
    let _ = stop_rx.wait_for(|stop| *stop).await;
}
