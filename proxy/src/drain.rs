//! One drain root, in two steps. [`Drain::start`]: `/ready` turns 503, the control plane is told
//! the endpoint leaves, and every HTTP connection gets a graceful shutdown (GOAWAY /
//! `Connection: close` after its in-flight response) — also the connections accepted from then
//! on, which are served and closed, so a caller that has not yet heard of the withdrawal is
//! answered rather than refused (as Envoy keeps accepting while it drains).
//! [`Drain::close_listeners`]: the listeners stop accepting. `main` waits for the tracked
//! connections to finish up to the drain deadline.
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::sync::{Notify, watch};

/// The drain root, owned by the app.
#[derive(Clone, Debug)]
pub struct Drain {
    /// True once draining has started.
    draining: Arc<watch::Sender<bool>>,
    /// True once the listeners are to stop accepting.
    closed: Arc<watch::Sender<bool>>,
    inner: Arc<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    active: AtomicUsize,
    idle: Notify,
}

/// A cloneable view of the drain signal, handed to listeners and connections.
#[derive(Clone, Debug)]
pub struct Signal {
    draining: watch::Receiver<bool>,
    closed: watch::Receiver<bool>,
    inner: Arc<Inner>,
}

/// Held by each live connection; the drain waits until all are dropped.
#[derive(Debug)]
pub struct ConnGuard {
    inner: Arc<Inner>,
}

impl Drop for ConnGuard {
    fn drop(&mut self) {
        if self.inner.active.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.inner.idle.notify_waiters();
        }
    }
}

impl Default for Drain {
    fn default() -> Self {
        Self::new()
    }
}

impl Drain {
    pub fn new() -> Self {
        let (draining, _) = watch::channel(false);
        let (closed, _) = watch::channel(false);
        Self { draining: Arc::new(draining), closed: Arc::new(closed), inner: Arc::default() }
    }

    pub fn signal(&self) -> Signal {
        Signal { draining: self.draining.subscribe(), closed: self.closed.subscribe(), inner: self.inner.clone() }
    }

    /// Start draining; the listeners keep accepting until [`Drain::close_listeners`].
    /// Idempotent.
    pub fn start(&self) {
        self.draining.send_if_modified(|d| !std::mem::replace(d, true));
    }

    /// Stop accepting (and start draining, if it had not started). Idempotent.
    pub fn close_listeners(&self) {
        self.start();
        self.closed.send_if_modified(|c| !std::mem::replace(c, true));
    }

    pub fn is_draining(&self) -> bool {
        *self.draining.borrow()
    }

    /// Number of connections still open.
    pub fn active(&self) -> usize {
        self.inner.active.load(Ordering::Acquire)
    }

    /// Resolves when every tracked connection has finished.
    pub async fn idle(&self) {
        loop {
            let notified = self.inner.idle.notified();
            if self.active() == 0 {
                return;
            }
            notified.await;
        }
    }
}

impl Signal {
    /// Resolves once draining has started.
    pub async fn draining(&mut self) {
        // An error means the root is gone, which also means: stop.
        let _ = self.draining.wait_for(|d| *d).await;
    }

    /// Resolves once the listeners are to stop accepting.
    pub async fn closing(&mut self) {
        let _ = self.closed.wait_for(|c| *c).await;
    }

    pub fn is_draining(&self) -> bool {
        *self.draining.borrow()
    }

    /// The draining flag itself, for code outside the proxy (the xDS client) that watches it.
    pub fn flag(&self) -> watch::Receiver<bool> {
        self.draining.clone()
    }

    /// Track a connection until the guard is dropped.
    pub fn track(&self) -> ConnGuard {
        self.inner.active.fetch_add(1, Ordering::AcqRel);
        ConnGuard { inner: self.inner.clone() }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn idle_waits_for_guards() {
        let drain = Drain::new();
        let sig = drain.signal();
        let g1 = sig.track();
        let g2 = sig.track();
        assert_eq!(drain.active(), 2);
        let d = drain.clone();
        let waiter = tokio::spawn(async move { d.idle().await });
        drop(g1);
        tokio::task::yield_now().await;
        assert!(!waiter.is_finished());
        drop(g2);
        waiter.await.unwrap();
        assert_eq!(drain.active(), 0);
    }

    #[tokio::test]
    async fn signal_fires_once_started() {
        let drain = Drain::new();
        let mut sig = drain.signal();
        assert!(!sig.is_draining());
        drain.start();
        sig.draining().await;
        assert!(sig.is_draining());
    }

    #[tokio::test]
    async fn listeners_close_only_when_told() {
        let drain = Drain::new();
        let mut sig = drain.signal();
        drain.start();
        let mut closing = sig.clone();
        let closed = tokio::spawn(async move { closing.closing().await });
        tokio::task::yield_now().await;
        assert!(!closed.is_finished(), "draining alone keeps the listeners open");
        drain.close_listeners();
        closed.await.unwrap();
        // Closing without a start drains too.
        let other = Drain::new();
        other.close_listeners();
        assert!(other.is_draining());
        sig.draining().await;
    }
}
