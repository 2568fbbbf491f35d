//! The node's background tasks (gauges, the storage sampler, the space watcher, the
//! replication streams it serves): each gets a signal to stop, and shutdown waits for
//! them, within a bound, before it closes the store they read.

use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

/// Starts tasks and stops them. Cheap to clone; all clones share the tasks.
#[derive(Clone, Default)]
pub struct Background {
    stop: CancellationToken,
    tasks: Arc<Mutex<JoinSet<()>>>,
}

impl Background {
    pub fn new() -> Self {
        Self::default()
    }

    /// Runs `task` until it ends or, at the latest, until it sees the signal it is
    /// given fire; [`Background::shutdown`] waits for it.
    pub fn spawn<F, Fut>(&self, task: F)
    where
        F: FnOnce(CancellationToken) -> Fut,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let future = task(self.stop.child_token());
        let mut tasks = self.lock();
        // Tasks that have ended leave their (empty) results behind until collected.
        while tasks.try_join_next().is_some() {}
        tasks.spawn(future);
    }

    /// Whether shutdown has begun.
    pub fn is_stopping(&self) -> bool {
        self.stop.is_cancelled()
    }

    /// Signals every task to stop and waits up to `bound` for them to end; any still
    /// running then is aborted (and named in a warning by count).
    pub async fn shutdown(&self, bound: Duration) {
        self.stop.cancel();
        let mut tasks = std::mem::take(&mut *self.lock());
        let joined = tokio::time::timeout(bound, async {
            while let Some(result) = tasks.join_next().await {
                if let Err(e) = result {
                    if e.is_panic() {
                        tracing::error!("a background task panicked: {e}");
                    }
                }
            }
        })
        .await;
        if joined.is_err() {
            tracing::warn!(
                running = tasks.len(),
                "background tasks did not stop within {bound:?}; aborting them"
            );
            tasks.shutdown().await;
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, JoinSet<()>> {
        self.tasks.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicBool, Ordering};

    use super::*;

    #[tokio::test]
    async fn shutdown_signals_and_waits_for_every_task() {
        let background = Background::new();
        let finished = Arc::new(AtomicBool::new(false));
        let seen = finished.clone();
        background.spawn(|stop| async move {
            stop.cancelled().await;
            // Some clean-up after the signal, which shutdown must wait for.
            tokio::task::yield_now().await;
            seen.store(true, Ordering::SeqCst);
        });
        assert!(!background.is_stopping());
        background.shutdown(Duration::from_secs(10)).await;
        assert!(background.is_stopping());
        assert!(finished.load(Ordering::SeqCst));
    }

    #[tokio::test]
    async fn a_task_that_ignores_the_signal_is_aborted_after_the_bound() {
        let background = Background::new();
        let (dropped_tx, dropped_rx) = tokio::sync::oneshot::channel::<()>();
        background.spawn(|_stop| async move {
            let _dropped_when_aborted = dropped_tx;
            std::future::pending::<()>().await;
        });
        let started = std::time::Instant::now();
        background.shutdown(Duration::from_millis(50)).await;
        assert!(started.elapsed() < Duration::from_secs(5));
        // Aborting dropped the task, and with it its end of the channel.
        assert!(dropped_rx.await.is_err());
    }
}
