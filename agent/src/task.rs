//! A spawned task that is aborted when its handle is dropped, so that an early return from
//! [`crate::run`] (or an abandoned connection) never leaves tasks running behind it: the demo
//! runs many agents in one process.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::task::{JoinError, JoinHandle};

/// A [`JoinHandle`] that aborts its task on drop.
#[derive(Debug)]
pub(crate) struct OwnedTask<T>(JoinHandle<T>);

impl<T: Send + 'static> OwnedTask<T> {
    /// Spawns `future` on the current runtime.
    pub(crate) fn spawn(future: impl Future<Output = T> + Send + 'static) -> OwnedTask<T> {
        OwnedTask(tokio::spawn(future))
    }
}

impl<T> Future for OwnedTask<T> {
    type Output = Result<T, JoinError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        Pin::new(&mut self.0).poll(cx)
    }
}

impl<T> Drop for OwnedTask<T> {
    fn drop(&mut self) {
        // A no-op when the task has already finished.
        self.0.abort();
    }
}
