//! Group commit per account: concurrent commands of one account are applied together, in one
//! transaction, by one task.
//!
//! Why: every change of an account happens under its row lock (see [`crate::execute`]), so the
//! commands of a hot account run one after another whatever the number of connections, and each
//! one paid its own transaction (begin, key claim, lock, loads, writes, commit: about five round
//! trips and a WAL flush). Applied in a batch they share all of that: the account is locked and
//! loaded once, decided command by command in memory, written once and committed once.
//!
//! How: a command is queued under its account with a channel for its answer. If no task leads
//! that account, the caller spawns one; the leader repeatedly takes up to `commands_max` queued
//! commands, applies them (`BatchRunner::apply` in the crate root), answers each, and ends, removing
//! the account's entry, once the queue is empty. The leader is spawned rather than run by the
//! first caller so that a caller dropping its future (a client hanging up) never abandons a
//! transaction midway nor leaves the others waiting: every batch finishes on its own.
//!
//! Two commands with the same idempotency key never share a batch: the second waits for the next
//! one, where it finds the first one's recorded result and replays it.
//!
//! The map holds an entry only while a leader runs for that account, so its size is bounded by
//! the number of accounts with commands in flight. As with the per-account queue this replaces,
//! each process uses at most one connection per account for its commands (N waiters on a hot
//! account do not take N pooled connections to sit in a row-lock wait): the rest wait here,
//! holding nothing.

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::hash::Hash;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use tokio::sync::oneshot;

/// Most commands applied in one transaction, by default. Large enough that a hot account's
/// queue drains in few transactions; small enough that one transaction's pipelined statements
/// (a few per command) and its row lock stay short, so another process's batch of the same
/// account is not kept waiting long.
pub const BATCH_COMMANDS_MAX: usize = 128;

/// A queued request that may have to wait for a later batch: two requests with the same
/// conflict key (an idempotency key) never share one.
pub(crate) trait Batched {
    fn conflict_key(&self) -> Option<&str>;
}

/// What a leader runs for one batch: the account, its requests in arrival order, and one answer
/// per request, in the same order.
pub(crate) type ApplyBatch<K, R, A> =
    Arc<dyn Fn(K, Vec<R>) -> Pin<Box<dyn Future<Output = Vec<A>> + Send>> + Send + Sync>;

struct Waiting<R, A> {
    request: R,
    answer: oneshot::Sender<A>,
}

type Queues<K, R, A> = Arc<Mutex<HashMap<K, VecDeque<Waiting<R, A>>>>>;

pub(crate) struct Batcher<K, R, A> {
    queues: Queues<K, R, A>,
    commands_max: usize,
    apply: ApplyBatch<K, R, A>,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // The map is consistent between statements (no code under the lock can panic midway).
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

impl<K, R, A> Batcher<K, R, A>
where
    K: Hash + Eq + Clone + Send + 'static,
    R: Batched + Send + 'static,
    A: Send + 'static,
{
    pub(crate) fn new(commands_max: usize, apply: ApplyBatch<K, R, A>) -> Batcher<K, R, A> {
        Batcher { queues: Arc::default(), commands_max: commands_max.max(1), apply }
    }

    /// Queues `request` for `key`'s next batch and waits for its answer. `None`: the batch
    /// ended without answering (its leader panicked or the runtime is shutting down).
    ///
    /// Dropping the returned future only drops the wait: the request stays queued and is applied.
    pub(crate) async fn submit(&self, key: K, request: R) -> Option<A> {
        let (answer, receiver) = oneshot::channel();
        let waiting = Waiting { request, answer };
        let leads = {
            let mut queues = lock(&self.queues);
            match queues.get_mut(&key) {
                Some(queue) => {
                    queue.push_back(waiting);
                    false
                }
                None => {
                    queues.insert(key.clone(), VecDeque::from([waiting]));
                    true
                }
            }
        };
        if leads {
            let leader = Leader { queues: self.queues.clone(), key, finished: false };
            tokio::spawn(leader.run(self.commands_max, self.apply.clone()));
        }
        receiver.await.ok()
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        lock(&self.queues).len()
    }
}

/// The task applying one account's batches. Dropped unfinished (a panic, runtime shutdown), it
/// removes the account's entry, so the waiters' answers are dropped (they see `None`) and the
/// next request starts a new leader instead of queuing behind a dead one.
struct Leader<K: Hash + Eq, R, A> {
    queues: Queues<K, R, A>,
    key: K,
    finished: bool,
}

impl<K: Hash + Eq, R: Batched, A> Leader<K, R, A> {
    async fn run(mut self, commands_max: usize, apply: ApplyBatch<K, R, A>)
    where
        K: Clone,
    {
        loop {
            let batch = {
                let mut queues = lock(&self.queues);
                let queue = queues.get_mut(&self.key).expect("a led account keeps its entry");
                if queue.is_empty() {
                    queues.remove(&self.key);
                    self.finished = true;
                    return;
                }
                take(queue, commands_max)
            };
            let (requests, answers): (Vec<R>, Vec<oneshot::Sender<A>>) =
                batch.into_iter().map(|waiting| (waiting.request, waiting.answer)).unzip();
            let results = apply(self.key.clone(), requests).await;
            debug_assert_eq!(results.len(), answers.len(), "one answer per request");
            for (answer, result) in answers.into_iter().zip(results) {
                // The caller may have stopped waiting; its command was applied all the same.
                let _ = answer.send(result);
            }
        }
    }
}

impl<K: Hash + Eq, R, A> Drop for Leader<K, R, A> {
    fn drop(&mut self) {
        if !self.finished {
            lock(&self.queues).remove(&self.key);
        }
    }
}

/// Takes the next batch off `queue`: up to `commands_max` requests in arrival order, skipping
/// (and leaving queued, in order) any whose conflict key an earlier request of the batch has.
fn take<R: Batched, A>(queue: &mut VecDeque<Waiting<R, A>>, commands_max: usize) -> Vec<Waiting<R, A>> {
    let mut batch: Vec<Waiting<R, A>> = Vec::with_capacity(queue.len().min(commands_max));
    let mut left = VecDeque::new();
    while batch.len() < commands_max {
        let Some(waiting) = queue.pop_front() else { break };
        let repeated = waiting
            .request
            .conflict_key()
            .is_some_and(|key| batch.iter().any(|taken| taken.request.conflict_key() == Some(key)));
        if repeated {
            left.push_back(waiting);
        } else {
            batch.push(waiting);
        }
    }
    left.append(queue);
    *queue = left;
    batch
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU32, Ordering};
    use std::sync::{Arc, Mutex};
    use std::time::Duration;

    use super::{ApplyBatch, Batched, Batcher};

    impl Batched for (u32, Option<&'static str>) {
        fn conflict_key(&self) -> Option<&str> {
            self.1
        }
    }

    type Request = (u32, Option<&'static str>);
    type Recorded = Arc<Mutex<Vec<Vec<Request>>>>;

    /// A batcher whose batches sleep 1 ms, check that no other batch of their account runs,
    /// record their requests, and answer each request with its number.
    fn recording(commands_max: usize) -> (Batcher<&'static str, Request, u32>, Recorded) {
        let inside = Arc::new([AtomicU32::new(0), AtomicU32::new(0)]);
        let batches = Arc::new(Mutex::new(Vec::new()));
        let recorded = batches.clone();
        let apply: ApplyBatch<&'static str, Request, u32> = Arc::new(move |key, requests: Vec<Request>| {
            let (inside, batches) = (inside.clone(), batches.clone());
            Box::pin(async move {
                let account = usize::from(key == "b");
                assert_eq!(inside[account].fetch_add(1, Ordering::SeqCst), 0, "one batch per account at a time");
                // A batch that takes time, so that concurrent submits queue up behind it.
                tokio::time::sleep(Duration::from_millis(1)).await;
                inside[account].fetch_sub(1, Ordering::SeqCst);
                batches.lock().expect("batches").push(requests.clone());
                requests.iter().map(|request| request.0).collect()
            })
        });
        (Batcher::new(commands_max, apply), recorded)
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn one_batch_per_account_every_answer_and_no_leftover_entries() {
        let (batcher, batches) = recording(8);
        let batcher = Arc::new(batcher);
        let tasks: Vec<_> = (0..200_u32)
            .map(|index| {
                let batcher = batcher.clone();
                tokio::spawn(async move {
                    let account = ["a", "b"][index as usize % 2];
                    assert_eq!(batcher.submit(account, (index, None)).await, Some(index));
                })
            })
            .collect();
        for task in tasks {
            task.await.expect("task");
        }
        assert_eq!(batcher.len(), 0);
        let batches = batches.lock().expect("batches");
        assert_eq!(batches.iter().map(Vec::len).sum::<usize>(), 200);
        assert!(batches.iter().all(|batch| batch.len() <= 8));
        assert!(batches.len() < 200, "some requests shared a batch");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn a_repeated_key_waits_for_the_next_batch() {
        let (batcher, batches) = recording(8);
        let batcher = Arc::new(batcher);
        let requests = [(0, Some("k")), (1, Some("k")), (2, None), (3, Some("j")), (4, Some("k"))];
        let tasks: Vec<_> = requests
            .into_iter()
            .map(|request| {
                let batcher = batcher.clone();
                tokio::spawn(async move { batcher.submit("a", request).await })
            })
            .collect();
        for task in tasks {
            task.await.expect("task").expect("answered");
        }
        for batch in batches.lock().expect("batches").iter() {
            let keys: Vec<_> = batch.iter().filter_map(|request| request.1).collect();
            let mut unique = keys.clone();
            unique.sort_unstable();
            unique.dedup();
            assert_eq!(keys.len(), unique.len(), "a key twice in one batch: {batch:?}");
        }
        assert_eq!(batcher.len(), 0);
    }

    #[tokio::test]
    async fn a_dropped_caller_is_still_applied() {
        let (batcher, batches) = recording(8);
        let waiting = tokio::time::timeout(Duration::ZERO, batcher.submit("a", (7, None))).await;
        assert!(waiting.is_err(), "the batch takes a millisecond");
        for _ in 0..500 {
            if !batches.lock().expect("batches").is_empty() && batcher.len() == 0 {
                break;
            }
            // The leader is a spawned task nobody waits for any more: poll (bounded) until it recorded.
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        assert_eq!(*batches.lock().expect("batches"), vec![vec![(7, None)]]);
        assert_eq!(batcher.len(), 0);
    }

    #[tokio::test]
    async fn a_panicking_batch_answers_none_and_leaves_no_entry() {
        let apply: ApplyBatch<&'static str, Request, u32> =
            Arc::new(|_, _| Box::pin(async { panic!("a broken invariant") }));
        let batcher = Batcher::new(8, apply);
        assert_eq!(batcher.submit("a", (1, None)).await, None);
        assert_eq!(batcher.len(), 0);
    }
}
