//! One drain root. Listeners stop accepting when it fires, HTTP connections get a
//! graceful shutdown (GOAWAY / `Connection: close`), and `main` waits for the
//! tracked connections to finish up to the drain deadline.
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::sync::{Notify, watch};

/// The drain root, owned by the app.
#[derive(Clone, Debug)]
pub struct Drain {
    tx: Arc<watch::Sender<bool>>,
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
    rx: watch::Receiver<bool>,
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
        let (tx, _) = watch::channel(false);
        Self { tx: Arc::new(tx), inner: Arc::default() }
    }

    pub fn signal(&self) -> Signal {
        Signal { rx: self.tx.subscribe(), inner: self.inner.clone() }
    }

    /// Start draining. Idempotent.
    pub fn start(&self) {
        self.tx.send_replace(true);
    }

    pub fn is_draining(&self) -> bool {
        *self.tx.borrow()
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
        let _ = self.rx.wait_for(|d| *d).await;
    }

    pub fn is_draining(&self) -> bool {
        *self.rx.borrow()
    }

    /// The flag itself, for code outside the proxy (the xDS client) that watches it.
    pub fn flag(&self) -> watch::Receiver<bool> {
        self.rx.clone()
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
}
