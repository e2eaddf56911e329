//! A shutdown signal that many tasks can wait on, and a one-way "ready" flag.

use tokio::sync::watch;

/// The sending side: [`Trigger::trigger`] tells every [`Shutdown`] to stop.
#[derive(Debug)]
pub struct Trigger(watch::Sender<bool>);

/// The receiving side; cheap to clone.
#[derive(Debug, Clone)]
pub struct Shutdown(watch::Receiver<bool>);

/// A new, untriggered signal.
pub fn channel() -> (Trigger, Shutdown) {
    let (tx, rx) = watch::channel(false);
    (Trigger(tx), Shutdown(rx))
}

impl Trigger {
    /// Asks every task holding a [`Shutdown`] to stop.
    pub fn trigger(&self) {
        self.0.send_replace(true);
    }
}

impl Shutdown {
    /// Resolves once shutdown is triggered (or the trigger is dropped).
    pub async fn wait(&mut self) {
        // An error means the trigger is gone: nobody can call for shutdown any more, which
        // only happens when the owner itself is going away, so treat it as shutdown.
        let _ = self.0.wait_for(|stop| *stop).await;
    }

    /// Whether shutdown has been triggered.
    pub fn is_triggered(&self) -> bool {
        *self.0.borrow()
    }
}

/// Set once when a source is ready (subscribed, or shards listed); waited on by [`Ready::wait`].
#[derive(Debug, Clone)]
pub struct Ready(watch::Receiver<bool>);

/// The setting side of [`Ready`].
#[derive(Debug, Clone)]
pub struct SetReady(watch::Sender<bool>);

/// A new, unset ready flag.
pub fn ready() -> (SetReady, Ready) {
    let (tx, rx) = watch::channel(false);
    (SetReady(tx), Ready(rx))
}

impl SetReady {
    /// Marks ready.
    pub fn set(&self) {
        self.0.send_replace(true);
    }
}

impl Ready {
    /// Resolves once ready. Never resolves if the setter is dropped without setting.
    pub async fn wait(&self) {
        let mut rx = self.0.clone();
        if rx.wait_for(|ready| *ready).await.is_err() {
            std::future::pending::<()>().await;
        }
    }

    /// Whether ready has been set.
    pub fn is_set(&self) -> bool {
        *self.0.borrow()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn every_clone_sees_the_trigger() {
        let (trigger, shutdown) = channel();
        let mut a = shutdown.clone();
        let mut b = shutdown;
        assert!(!a.is_triggered());
        trigger.trigger();
        a.wait().await;
        b.wait().await;
        assert!(b.is_triggered());
    }

    #[tokio::test]
    async fn ready_resolves_after_set() {
        let (set, ready) = ready();
        assert!(!ready.is_set());
        set.set();
        ready.wait().await;
        assert!(ready.is_set());
    }
}
