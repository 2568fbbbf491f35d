//! Batching of the requests a node sends on behalf of many clients at once: writes a
//! follower forwards to the leader, and the read index linearizable reads wait for.
//!
//! Sending each in its own request would cost a whole exchange per client request. A
//! [`Batcher`] instead queues them and sends what has queued up as one batch, with at
//! most [`IN_FLIGHT`] batches outstanding per destination. Under light load a batch
//! holds one request and waits for nothing; under heavy load batches grow on their own,
//! up to [`MAX_BATCH`] requests and a bound on their bytes (so that a batch of large
//! values stays one message of bounded size; a request larger than the bound goes alone).
//!
//! A batch is sent only after every request in it was queued, so a read index fetched
//! for a batch was asked for after each of its reads began: sharing it keeps every read
//! linearizable.

use std::collections::HashMap;
use std::future::Future;
use std::hash::Hash;
use std::sync::Arc;

use tokio::sync::{mpsc, oneshot, Semaphore};

/// Batches on their way to one destination at once.
const IN_FLIGHT: usize = 4;
/// The most requests in one batch.
const MAX_BATCH: usize = 256;

/// A queued request: where it goes, what it is, and who waits for its result.
type Queued<K, I, R> = (K, I, oneshot::Sender<R>);

/// How a batch is bounded by bytes: what one request weighs, and the most a batch may
/// weigh.
#[derive(Clone, Copy)]
pub(crate) struct ByteBound<I> {
    pub weigh: fn(&I) -> usize,
    pub max_bytes: usize,
}

impl<I> ByteBound<I> {
    /// For requests that carry no data of their own: only [`MAX_BATCH`] bounds a batch.
    pub(crate) fn weightless() -> Self {
        ByteBound {
            weigh: |_| 0,
            max_bytes: 0,
        }
    }

    /// How many of `requests`, from the front, make the next batch: at least one.
    fn batch_len<T>(&self, requests: &[(I, T)]) -> usize {
        let mut bytes = 0usize;
        let mut take = 0;
        for (item, _) in requests.iter().take(MAX_BATCH) {
            bytes = bytes.saturating_add((self.weigh)(item));
            if take > 0 && bytes > self.max_bytes {
                break;
            }
            take += 1;
        }
        take
    }
}

/// Queues requests of type `I` for destinations `K`; a batch for one destination
/// yields one `R` per request, in order. Cheap to clone.
pub(crate) struct Batcher<K, I, R> {
    queue: mpsc::UnboundedSender<Queued<K, I, R>>,
}

impl<K, I, R> Clone for Batcher<K, I, R> {
    fn clone(&self) -> Self {
        Self {
            queue: self.queue.clone(),
        }
    }
}

impl<K, I, R> Batcher<K, I, R>
where
    K: Eq + Hash + Clone + Send + 'static,
    I: Send + 'static,
    R: Send + 'static,
{
    /// Starts the task that sends batches with `send`, which must answer with one
    /// result per request, in order. The task ends when every handle is dropped.
    pub(crate) fn start<F, Fut>(bound: ByteBound<I>, send: F) -> Self
    where
        F: Fn(K, Vec<I>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Vec<R>> + Send + 'static,
    {
        let (queue, queued) = mpsc::unbounded_channel();
        tokio::spawn(run(queued, bound, send));
        Self { queue }
    }

    /// Queues `item` for `to` and waits for its result; `None` if no result came (the
    /// sending task is gone, or `send` answered too few results).
    pub(crate) async fn submit(&self, to: K, item: I) -> Option<R> {
        let (reply, result) = oneshot::channel();
        self.queue.send((to, item, reply)).ok()?;
        result.await.ok()
    }
}

async fn run<K, I, R, F, Fut>(
    mut queued: mpsc::UnboundedReceiver<Queued<K, I, R>>,
    bound: ByteBound<I>,
    send: F,
) where
    K: Eq + Hash + Clone + Send + 'static,
    I: Send + 'static,
    R: Send + 'static,
    F: Fn(K, Vec<I>) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Vec<R>> + Send + 'static,
{
    // Requests waiting for a free slot, and the slots, per destination: a destination
    // that stopped answering holds only its own slots.
    let mut waiting: HashMap<K, Vec<(I, oneshot::Sender<R>)>> = HashMap::new();
    let mut slots: HashMap<K, Arc<Semaphore>> = HashMap::new();
    let (slot_freed, mut freed) = mpsc::unbounded_channel::<()>();
    loop {
        tokio::select! {
            next = queued.recv() => match next {
                Some((to, item, reply)) => waiting.entry(to).or_default().push((item, reply)),
                None => return,
            },
            Some(()) = freed.recv() => {}
        }
        while let Ok((to, item, reply)) = queued.try_recv() {
            waiting.entry(to).or_default().push((item, reply));
        }
        for (to, requests) in waiting.iter_mut() {
            // A caller that gave up (its deadline passed) needs no answer: its request
            // is not sent at all.
            requests.retain(|(_, reply)| !reply.is_closed());
            let slots = slots
                .entry(to.clone())
                .or_insert_with(|| Arc::new(Semaphore::new(IN_FLIGHT)));
            while !requests.is_empty() {
                let Ok(slot) = slots.clone().try_acquire_owned() else {
                    break;
                };
                let take = bound.batch_len(requests);
                let (items, replies): (Vec<I>, Vec<_>) = requests.drain(..take).unzip();
                let sent = send(to.clone(), items);
                let slot_freed = slot_freed.clone();
                tokio::spawn(async move {
                    for (reply, result) in replies.into_iter().zip(sent.await) {
                        let _ = reply.send(result);
                    }
                    drop(slot);
                    let _ = slot_freed.send(());
                });
            }
        }
        waiting.retain(|_, requests| !requests.is_empty());
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    use super::*;

    #[tokio::test]
    async fn each_request_gets_its_own_result_in_order() {
        let batcher = Batcher::start(
            ByteBound::weightless(),
            |to: u64, items: Vec<u64>| async move {
                items.into_iter().map(|i| to * 1000 + i).collect::<Vec<_>>()
            },
        );
        let results =
            futures::future::join_all((0..100u64).map(|i| batcher.submit(i % 3, i))).await;
        for (i, result) in results.into_iter().enumerate() {
            let i = i as u64;
            assert_eq!(result, Some((i % 3) * 1000 + i));
        }
    }

    #[tokio::test]
    async fn requests_queued_while_slots_are_busy_share_a_batch() {
        let batches = Arc::new(AtomicUsize::new(0));
        let counted = batches.clone();
        let batcher = Batcher::start(
            ByteBound::weightless(),
            move |_to: (), items: Vec<usize>| {
                counted.fetch_add(1, Ordering::SeqCst);
                async move {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    items
                }
            },
        );
        let results = futures::future::join_all((0..200).map(|i| batcher.submit((), i))).await;
        assert_eq!(results, (0..200).map(Some).collect::<Vec<_>>());
        let batches = batches.load(Ordering::SeqCst);
        assert!(
            (1..=IN_FLIGHT).contains(&batches),
            "200 concurrent requests went out in {batches} batches"
        );
    }

    #[tokio::test]
    async fn a_destination_that_never_answers_does_not_hold_up_another() {
        let batcher = Batcher::start(
            ByteBound::weightless(),
            |to: &'static str, items: Vec<u8>| async move {
                if to == "stuck" {
                    futures::future::pending::<()>().await;
                }
                items
            },
        );
        // Fill every slot of the stuck destination, and more.
        for i in 0..(IN_FLIGHT as u8 * 2) {
            let stuck = batcher.clone();
            tokio::spawn(async move { stuck.submit("stuck", i).await });
            tokio::task::yield_now().await;
        }
        let answer = tokio::time::timeout(Duration::from_secs(5), batcher.submit("live", 7)).await;
        assert_eq!(answer.expect("the live destination answers"), Some(7));
    }

    #[tokio::test]
    async fn a_request_whose_caller_gave_up_is_not_sent() {
        let sent = Arc::new(AtomicUsize::new(0));
        let counted = sent.clone();
        let batcher = Batcher::start(ByteBound::weightless(), move |_to: (), items: Vec<u8>| {
            counted.fetch_add(items.len(), Ordering::SeqCst);
            async move {
                tokio::time::sleep(Duration::from_millis(100)).await;
                items
            }
        });
        // Occupy every slot (one request per batch), then queue a request and give up
        // on it at once.
        let mut busy = Vec::new();
        for i in 0..IN_FLIGHT as u8 {
            let b = batcher.clone();
            busy.push(tokio::spawn(async move { b.submit((), i).await }));
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let _ = tokio::time::timeout(Duration::from_millis(1), batcher.submit((), 99)).await;
        for b in busy {
            b.await.unwrap();
        }
        assert_eq!(batcher.submit((), 1).await, Some(1));
        assert_eq!(
            sent.load(Ordering::SeqCst),
            IN_FLIGHT + 1,
            "the abandoned request was sent"
        );
    }

    #[test]
    fn a_batch_stops_before_its_bytes_pass_the_bound_but_holds_at_least_one() {
        let bound = ByteBound {
            weigh: |n: &usize| *n,
            max_bytes: 10,
        };
        let requests = |sizes: &[usize]| sizes.iter().map(|s| (*s, ())).collect::<Vec<_>>();
        assert_eq!(bound.batch_len(&requests(&[4, 4, 4])), 2);
        assert_eq!(bound.batch_len(&requests(&[4, 6, 1])), 2);
        assert_eq!(bound.batch_len(&requests(&[50, 1])), 1);
        assert_eq!(bound.batch_len(&requests(&[1; 300])), 10);
        let weightless = ByteBound::weightless();
        assert_eq!(weightless.batch_len(&requests(&[7; 300])), MAX_BATCH);
    }

    #[tokio::test]
    async fn a_short_answer_leaves_the_rest_without_a_result() {
        let batcher = Batcher::start(ByteBound::weightless(), |_to: (), _items: Vec<u8>| async {
            Vec::<u8>::new()
        });
        assert_eq!(batcher.submit((), 1).await, None);
    }
}
