//! Closing connections that make no progress: a client that sends a request and then never
//! reads the answer holds its connection slot with a blocked write, which hyper's header
//! timeout does not cover (it only watches request heads).
//!
//! [`Watched`] wraps a connection's stream and notes the time of every read or write that
//! moves bytes; [`Progress::stalled`] resolves once nothing moved for the stall timeout, and
//! the connection task then drops the connection. A handler that computes for longer than
//! the stall timeout without writing is cut off too, so the timeout is far above any query's
//! time (60 s by default).

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Instant;

/// When the wrapped stream last moved bytes.
#[derive(Debug, Clone)]
pub struct Progress {
    start: Instant,
    /// Milliseconds after `start` of the last progress.
    last_ms: Arc<AtomicU64>,
}

impl Progress {
    fn touch(&self) {
        let ms = self.start.elapsed().as_millis() as u64;
        self.last_ms.store(ms, Ordering::Relaxed);
    }

    /// Resolves once no byte moved for `limit`.
    pub async fn stalled(&self, limit: Duration) {
        loop {
            let last = self.start + Duration::from_millis(self.last_ms.load(Ordering::Relaxed));
            let deadline = last + limit;
            if Instant::now() >= deadline {
                return;
            }
            tokio::time::sleep_until(deadline).await;
        }
    }
}

/// A stream whose progress is watched.
#[derive(Debug)]
pub struct Watched<S> {
    inner: S,
    progress: Progress,
}

impl<S> Watched<S> {
    /// Wraps `inner`; its progress clock starts now.
    pub fn new(inner: S) -> (Watched<S>, Progress) {
        let progress = Progress {
            start: Instant::now(),
            last_ms: Arc::new(AtomicU64::new(0)),
        };
        (
            Watched {
                inner,
                progress: progress.clone(),
            },
            progress,
        )
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Watched<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let polled = Pin::new(&mut this.inner).poll_read(cx, buf);
        if matches!(polled, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            this.progress.touch();
        }
        polled
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Watched<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.inner).poll_write(cx, buf);
        if matches!(polled, Poll::Ready(Ok(n)) if n > 0) {
            this.progress.touch();
        }
        polled
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.inner).poll_write_vectored(cx, bufs);
        if matches!(polled, Poll::Ready(Ok(n)) if n > 0) {
            this.progress.touch();
        }
        polled
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    #[tokio::test]
    async fn a_blocked_write_is_a_stall_and_moving_bytes_is_progress() {
        let (client, server) = tokio::io::duplex(16);
        let (mut server, progress) = Watched::new(server);
        let mut client = client;
        // Bytes keep moving: no stall at 300 ms although the limit is 200 ms. (Real time:
        // tokio's test-util, for paused time, is not enabled in this crate.)
        let limit = Duration::from_millis(200);
        for _ in 0..3 {
            tokio::time::sleep(Duration::from_millis(100)).await;
            server.write_all(b"0123456789").await.unwrap();
            let mut b = [0u8; 10];
            client.read_exact(&mut b).await.unwrap();
        }
        let stalled = tokio::time::timeout(
            Duration::from_millis(1500),
            progress.stalled(Duration::from_secs(2)),
        );
        assert!(stalled.await.is_err(), "progress 0 s ago is no stall");
        // The client stops reading: the 16-byte pipe fills and the write blocks.
        let writer = tokio::spawn(async move { server.write_all(&[0u8; 64]).await });
        let t = Instant::now();
        progress.stalled(limit).await;
        assert!(t.elapsed() <= limit + Duration::from_millis(100));
        assert!(!writer.is_finished());
        writer.abort();
    }
}
