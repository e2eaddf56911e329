//! Gathering a queue's items into bounded batches: the MQTT source turns the publishes it
//! receives into one store transaction per batch ([`crate::source::mqtt`]).
//!
//! ```text
//!  queue ──► first item ──► more, while the batch is below max_items and max_bytes
//!                             │ what is queued already is taken at once
//!                             │ else wait, until no item came for `gap`,
//!                             │            or `linger` after the first item
//!                             ▼
//!                           batch (an item that would pass max_bytes opens the next one)
//! ```
//!
//! Under load the queue is never empty and batches fill up, so one transaction (one commit,
//! one signals pass per series) serves hundreds of messages. When traffic pauses, what is
//! there goes at once after the short `gap`, so a single message waits about that long, never
//! the whole `linger`. The gap also keeps a small in-flight window working: a broker that sends
//! at most 20 unacknowledged publishes (Mosquitto's default `max_inflight_messages`) stops
//! until they are acknowledged, and the batch closes after the gap instead of waiting for
//! publishes that cannot come.

use std::time::Duration;

use tokio::sync::mpsc::{self, error::TryRecvError};
use tokio::time::Instant;

/// When a batch closes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchLimits {
    /// Most items in a batch (at least 1).
    pub max_items: usize,
    /// Most bytes in a batch (an item larger than this goes alone).
    pub max_bytes: usize,
    /// Longest the first item of a batch waits for the batch to fill.
    pub linger: Duration,
    /// A batch closes when no item arrived for this long.
    pub gap: Duration,
}

impl Default for BatchLimits {
    /// 512 items, 4 MiB, 20 ms linger, 2 ms gap.
    fn default() -> BatchLimits {
        BatchLimits {
            max_items: 512,
            max_bytes: 4 * 1024 * 1024,
            linger: Duration::from_millis(20),
            gap: Duration::from_millis(2),
        }
    }
}

/// Turns a queue into batches within [`BatchLimits`].
#[derive(Debug)]
pub struct Batcher<T> {
    queue: mpsc::Receiver<T>,
    limits: BatchLimits,
    /// An item that did not fit the previous batch: the first of the next.
    carry: Option<T>,
}

impl<T> Batcher<T> {
    /// Batches of what `queue` delivers.
    pub fn new(queue: mpsc::Receiver<T>, limits: BatchLimits) -> Batcher<T> {
        Batcher {
            queue,
            limits,
            carry: None,
        }
    }

    /// The next batch, `size` telling each item's bytes: waits for a first item, then gathers
    /// more until a limit closes the batch. `None` once the queue is closed and empty.
    pub async fn next(&mut self, size: impl Fn(&T) -> usize) -> Option<Vec<T>> {
        let first = match self.carry.take() {
            Some(item) => item,
            None => self.queue.recv().await?,
        };
        let max_items = self.limits.max_items.max(1);
        let mut bytes = size(&first);
        let mut batch = Vec::with_capacity(max_items.min(1024));
        batch.push(first);
        let deadline = Instant::now() + self.limits.linger;
        while batch.len() < max_items && bytes < self.limits.max_bytes {
            // What is queued already is taken without a timer.
            let item = match self.queue.try_recv() {
                Ok(item) => item,
                Err(TryRecvError::Disconnected) => break,
                Err(TryRecvError::Empty) => {
                    let quiet_at = (Instant::now() + self.limits.gap).min(deadline);
                    tokio::select! {
                        item = self.queue.recv() => match item {
                            Some(item) => item,
                            None => break,
                        },
                        _ = tokio::time::sleep_until(quiet_at) => break,
                    }
                }
            };
            let n = size(&item);
            if bytes.saturating_add(n) > self.limits.max_bytes {
                self.carry = Some(item);
                break;
            }
            bytes += n;
            batch.push(item);
        }
        Some(batch)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(max_items: usize, max_bytes: usize) -> BatchLimits {
        BatchLimits {
            max_items,
            max_bytes,
            linger: Duration::from_millis(200),
            gap: Duration::from_millis(50),
        }
    }

    #[tokio::test]
    async fn a_full_queue_makes_full_batches() {
        let (tx, rx) = mpsc::channel(100);
        for i in 0..25u32 {
            tx.send(i).await.unwrap();
        }
        drop(tx);
        let mut b = Batcher::new(rx, limits(10, usize::MAX));
        let mut sizes = Vec::new();
        while let Some(batch) = b.next(|_| 1).await {
            sizes.push(batch.len());
        }
        assert_eq!(sizes, [10, 10, 5]);
    }

    #[tokio::test]
    async fn bytes_close_a_batch_and_the_next_item_opens_the_next() {
        let (tx, rx) = mpsc::channel(100);
        for n in [400u32, 400, 400, 2000, 10] {
            tx.send(n).await.unwrap();
        }
        drop(tx);
        let mut b = Batcher::new(rx, limits(100, 1000));
        let size = |n: &u32| *n as usize;
        assert_eq!(b.next(size).await.unwrap(), [400, 400]);
        assert_eq!(b.next(size).await.unwrap(), [400]);
        // Larger than max_bytes: alone.
        assert_eq!(b.next(size).await.unwrap(), [2000]);
        assert_eq!(b.next(size).await.unwrap(), [10]);
        assert!(b.next(size).await.is_none());
    }

    #[tokio::test(start_paused = true)]
    async fn a_pause_closes_the_batch_after_the_gap() {
        let (tx, rx) = mpsc::channel(100);
        let mut b = Batcher::new(rx, limits(100, usize::MAX));
        tx.send(1u32).await.unwrap();
        tx.send(2).await.unwrap();
        let start = Instant::now();
        assert_eq!(b.next(|_| 1).await.unwrap(), [1, 2]);
        assert_eq!(start.elapsed(), Duration::from_millis(50));
    }

    #[tokio::test(start_paused = true)]
    async fn a_steady_trickle_closes_the_batch_at_the_linger() {
        let (tx, rx) = mpsc::channel(100);
        let mut b = Batcher::new(rx, limits(100, usize::MAX));
        tokio::spawn(async move {
            for i in 0..100u32 {
                if tx.send(i).await.is_err() {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(30)).await;
            }
        });
        let start = Instant::now();
        let batch = b.next(|_| 1).await.unwrap();
        // Items at 0, 30, ..., 180 ms; the linger ends the batch at 200 ms.
        assert_eq!(batch, [0, 1, 2, 3, 4, 5, 6]);
        assert_eq!(start.elapsed(), Duration::from_millis(200));
    }
}
