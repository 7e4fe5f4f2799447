//! Cross-account group commit: the commands queued in this process, whatever their accounts, are
//! applied together in few transactions, by a bounded number of leader tasks.
//!
//! Why: every transaction costs its round trips and a WAL flush whatever it does, and on
//! PostgreSQL that fixed cost, not the work, bounds throughput: a per-account batch helps only a
//! hot account, while load spread over many accounts still paid one transaction per command.
//! Here a transaction applies up to `commands_max` commands of any accounts: keys read, every
//! account locked and loaded, each account's commands decided in arrival order, one write per
//! table, one commit (see [`crate::execute`]).
//!
//! How: a command is queued with its account (a command naming a hold: that hold's account,
//! resolved before it is queued) and a channel for its answer. When fewer than `batches_max`
//! leaders run, the caller spawns one; a leader repeatedly takes a batch off the queue, applies
//! it (`BatchRunner::apply` in the crate root), answers each command, and ends once it finds
//! nothing to take. Several leaders run at once (each on its own connection), so one batch's
//! commit overlaps the next one's work. The leader is spawned rather than run by the first caller
//! so that a caller dropping its future (a client hanging up) never abandons a transaction
//! midway nor leaves the others waiting: every batch finishes on its own.
//!
//! What a batch takes: queued commands in arrival order, up to `commands_max`, skipping (and
//! leaving queued, in order) a command
//! - whose account is in another running batch of this process: an account is in at most one
//!   batch at a time here, so one process never has two connections waiting on one row lock, and
//!   an account's batches run in arrival order (a command answered means every command of its
//!   account queued before it was applied);
//! - whose idempotency key an earlier command of the batch has: it waits for a later batch,
//!   where it finds the first one's recorded result and replays it.
//!
//! Account reads use the same machinery (see `ReadRunner` in the crate root) keyed by a sequence
//! number rather than an account, so reads never wait for each other's accounts.
//!
//! Bounds: the queue holds only commands whose callers are waiting (or stopped waiting after
//! queuing), at most `batches_max` leaders run, and the busy set holds the accounts of the running
//! batches only (at most `batches_max × commands_max`).

use std::collections::{HashSet, VecDeque};
use std::future::Future;
use std::hash::Hash;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use tokio::sync::oneshot;

/// Most commands applied in one transaction, by default. Large enough that a burst drains in few
/// transactions; small enough that one transaction's locks (every account of the batch) stay
/// short, so another process's batch of one of those accounts is not kept waiting long.
pub const BATCH_COMMANDS_MAX: usize = 128;

/// Most batches running at once in one process, by default: each holds a pooled connection
/// while it runs, and the rest of the pool serves reads, sweeps, runs and jobs. Two: one
/// batch's commit (its WAL flush) overlaps the next one's work, while the commands that arrive
/// meanwhile still gather into large batches; each batch in flight more splits them smaller,
/// and a batch's fixed cost (its statements) is most of its cost. Measured in-process, uniform
/// load, 64 callers, 2 cores: 1 in flight 6,476 ops/s (33 commands per commit), 2: 7,709 (15),
/// 3: 7,285 (11), 4: 6,416 (8), 8: 4,403 (4).
pub const BATCHES_IN_FLIGHT_MAX: usize = 2;

/// Most account reads answered by one statement, by default (see `ReadRunner` in the crate
/// root).
pub const READ_ACCOUNTS_MAX: usize = 64;

/// Most account-read statements running at once in one process, by default.
pub const READS_IN_FLIGHT_MAX: usize = 2;

/// A queued request that may have to wait for a later batch: two requests with the same
/// conflict key (an idempotency key) never share one.
pub(crate) trait Batched {
    fn conflict_key(&self) -> Option<&str>;
}

/// What a leader runs for one batch: `(account, request)` pairs in arrival order, and one answer
/// per request, in the same order.
pub(crate) type ApplyBatch<K, R, A> =
    Arc<dyn Fn(Vec<(K, R)>) -> Pin<Box<dyn Future<Output = Vec<A>> + Send>> + Send + Sync>;

struct Waiting<K, R, A> {
    key: K,
    request: R,
    answer: oneshot::Sender<A>,
}

struct Queue<K, R, A> {
    waiting: VecDeque<Waiting<K, R, A>>,
    /// The accounts of the running batches.
    busy: HashSet<K>,
    /// Leaders running (at most `batches_max`).
    leaders: usize,
}

type Shared<K, R, A> = Arc<Mutex<Queue<K, R, A>>>;

pub(crate) struct Batcher<K, R, A> {
    queue: Shared<K, R, A>,
    commands_max: usize,
    batches_max: usize,
    apply: ApplyBatch<K, R, A>,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // The queue is consistent between statements (no code under the lock can panic midway).
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

impl<K, R, A> Batcher<K, R, A>
where
    K: Hash + Eq + Clone + Send + 'static,
    R: Batched + Send + 'static,
    A: Send + 'static,
{
    pub(crate) fn new(commands_max: usize, batches_max: usize, apply: ApplyBatch<K, R, A>) -> Batcher<K, R, A> {
        let queue = Queue { waiting: VecDeque::new(), busy: HashSet::new(), leaders: 0 };
        Batcher {
            queue: Arc::new(Mutex::new(queue)),
            commands_max: commands_max.max(1),
            batches_max: batches_max.max(1),
            apply,
        }
    }

    /// Queues `request` (of account `key`) for a batch and waits for its answer. `None`: the
    /// batch ended without answering (its leader panicked or the runtime is shutting down).
    ///
    /// Dropping the returned future only drops the wait: the request stays queued and is applied.
    pub(crate) async fn submit(&self, key: K, request: R) -> Option<A> {
        let (answer, receiver) = oneshot::channel();
        let leads = {
            let mut queue = lock(&self.queue);
            queue.waiting.push_back(Waiting { key, request, answer });
            let leads = queue.leaders < self.batches_max;
            if leads {
                queue.leaders += 1;
            }
            leads
        };
        if leads {
            let leader = Leader { queue: self.queue.clone(), taken: Vec::new(), finished: false };
            tokio::spawn(leader.run(self.commands_max, self.apply.clone()));
        }
        receiver.await.ok()
    }

    #[cfg(test)]
    fn idle(&self) -> bool {
        let queue = lock(&self.queue);
        queue.waiting.is_empty() && queue.busy.is_empty() && queue.leaders == 0
    }
}

/// A task applying batches until the queue has nothing it may take. Dropped unfinished (a panic,
/// runtime shutdown), it frees the accounts of its batch and its place among the leaders,
/// so the waiters of a dead batch see `None` and the next request is not stuck behind it.
struct Leader<K: Hash + Eq, R, A> {
    queue: Shared<K, R, A>,
    /// The accounts of the batch this leader is running.
    taken: Vec<K>,
    /// Whether it gave back its place among the leaders (it found nothing to take).
    finished: bool,
}

impl<K: Hash + Eq + Clone, R: Batched, A> Leader<K, R, A> {
    async fn run(mut self, commands_max: usize, apply: ApplyBatch<K, R, A>) {
        loop {
            let batch = {
                let mut queue = lock(&self.queue);
                for key in self.taken.drain(..) {
                    queue.busy.remove(&key);
                }
                let batch = take(&mut queue, commands_max);
                if batch.is_empty() {
                    // Under the same lock as the decision, so a command queued from now on
                    // sees a free place and spawns a leader.
                    queue.leaders -= 1;
                    self.finished = true;
                }
                self.taken = batch.iter().map(|waiting| waiting.key.clone()).collect();
                batch
            };
            if batch.is_empty() {
                return;
            }
            let (requests, answers): (Vec<(K, R)>, Vec<oneshot::Sender<A>>) =
                batch.into_iter().map(|waiting| ((waiting.key, waiting.request), waiting.answer)).unzip();
            let results = apply(requests).await;
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
        let mut queue = lock(&self.queue);
        for key in self.taken.drain(..) {
            queue.busy.remove(&key);
        }
        if !self.finished {
            queue.leaders -= 1;
        }
    }
}

/// Takes the next batch off `queue` (see the module docs for what is skipped) and marks its
/// accounts busy.
fn take<K: Hash + Eq + Clone, R: Batched, A>(queue: &mut Queue<K, R, A>, commands_max: usize) -> Vec<Waiting<K, R, A>> {
    let mut batch: Vec<Waiting<K, R, A>> = Vec::with_capacity(queue.waiting.len().min(commands_max));
    let mut accounts: HashSet<K> = HashSet::new();
    let mut left = VecDeque::new();
    while batch.len() < commands_max {
        let Some(waiting) = queue.waiting.pop_front() else { break };
        let busy = queue.busy.contains(&waiting.key);
        let repeated = waiting
            .request
            .conflict_key()
            .is_some_and(|key| batch.iter().any(|taken| taken.request.conflict_key() == Some(key)));
        if busy || repeated {
            left.push_back(waiting);
        } else {
            accounts.insert(waiting.key.clone());
            batch.push(waiting);
        }
    }
    left.append(&mut queue.waiting);
    queue.waiting = left;
    queue.busy.extend(accounts);
    batch
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::{Arc, Mutex};
    use std::time::Duration;

    use super::{ApplyBatch, Batched, Batcher};

    impl Batched for (u32, Option<&'static str>) {
        fn conflict_key(&self) -> Option<&str> {
            self.1
        }
    }

    type Request = (u32, Option<&'static str>);
    type Recorded = Arc<Mutex<Vec<Vec<(&'static str, Request)>>>>;

    /// A batcher whose batches sleep 1 ms, check that no running batch shares an account with
    /// them and that at most `batches_max` run at once, record their requests, and answer each
    /// request with its number.
    fn recording(commands_max: usize, batches_max: usize) -> (Batcher<&'static str, Request, u32>, Recorded) {
        let running: Arc<Mutex<Vec<&'static str>>> = Arc::default();
        let leaders = Arc::new(AtomicUsize::new(0));
        let batches = Arc::new(Mutex::new(Vec::new()));
        let recorded = batches.clone();
        let apply: ApplyBatch<&'static str, Request, u32> = Arc::new(move |requests: Vec<(&'static str, Request)>| {
            let (running, leaders, batches) = (running.clone(), leaders.clone(), batches.clone());
            Box::pin(async move {
                let accounts: HashSet<&'static str> = requests.iter().map(|request| request.0).collect();
                {
                    let mut running = running.lock().expect("running");
                    assert!(
                        accounts.iter().all(|account| !running.contains(account)),
                        "an account in two running batches"
                    );
                    running.extend(accounts.iter().copied());
                }
                assert!(leaders.fetch_add(1, Ordering::SeqCst) < batches_max, "too many batches at once");
                // A batch that takes time, so that concurrent submits queue up behind it.
                tokio::time::sleep(Duration::from_millis(1)).await;
                leaders.fetch_sub(1, Ordering::SeqCst);
                running.lock().expect("running").retain(|account| !accounts.contains(account));
                batches.lock().expect("batches").push(requests.clone());
                requests.iter().map(|request| request.1 .0).collect()
            })
        });
        (Batcher::new(commands_max, batches_max, apply), recorded)
    }

    const ACCOUNTS: [&str; 5] = ["a", "b", "c", "d", "e"];

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn batches_span_accounts_never_share_one_and_answer_everything() {
        let (batcher, batches) = recording(8, 2);
        let batcher = Arc::new(batcher);
        let tasks: Vec<_> = (0..300_u32)
            .map(|index| {
                let batcher = batcher.clone();
                tokio::spawn(async move {
                    let account = ACCOUNTS[index as usize % ACCOUNTS.len()];
                    assert_eq!(batcher.submit(account, (index, None)).await, Some(index));
                })
            })
            .collect();
        for task in tasks {
            task.await.expect("task");
        }
        assert!(batcher.idle());
        let batches = batches.lock().expect("batches");
        assert_eq!(batches.iter().map(Vec::len).sum::<usize>(), 300);
        assert!(batches.iter().all(|batch| batch.len() <= 8));
        assert!(batches.len() < 300, "some requests shared a batch");
        let spanning = |batch: &Vec<(&str, Request)>| batch.iter().any(|request| request.0 != batch[0].0);
        assert!(batches.iter().any(spanning), "some batch spans accounts");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn an_accounts_commands_are_applied_in_arrival_order() {
        let (batcher, batches) = recording(4, 3);
        let batcher = Arc::new(batcher);
        // Submitted one after another per account (each task waits for its previous answer), from
        // five concurrent tasks.
        let tasks: Vec<_> = ACCOUNTS
            .iter()
            .map(|&account| {
                let batcher = batcher.clone();
                tokio::spawn(async move {
                    for index in 0..40 {
                        assert_eq!(batcher.submit(account, (index, None)).await, Some(index));
                    }
                })
            })
            .collect();
        for task in tasks {
            task.await.expect("task");
        }
        let batches = batches.lock().expect("batches");
        for account in ACCOUNTS {
            let order: Vec<u32> =
                batches.iter().flatten().filter(|request| request.0 == account).map(|request| request.1 .0).collect();
            assert_eq!(order, (0..40).collect::<Vec<_>>());
        }
        assert!(batcher.idle());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn a_repeated_key_waits_for_the_next_batch() {
        let (batcher, batches) = recording(8, 1);
        let batcher = Arc::new(batcher);
        let requests = [
            ("a", (0, Some("k"))),
            ("b", (1, Some("k"))),
            ("a", (2, None)),
            ("c", (3, Some("j"))),
            ("a", (4, Some("k"))),
        ];
        let tasks: Vec<_> = requests
            .into_iter()
            .map(|(account, request)| {
                let batcher = batcher.clone();
                tokio::spawn(async move { batcher.submit(account, request).await })
            })
            .collect();
        for task in tasks {
            task.await.expect("task").expect("answered");
        }
        for batch in batches.lock().expect("batches").iter() {
            let keys: Vec<_> = batch.iter().filter_map(|request| request.1 .1).collect();
            let unique: HashSet<_> = keys.iter().collect();
            assert_eq!(keys.len(), unique.len(), "a key twice in one batch: {batch:?}");
        }
        assert!(batcher.idle());
    }

    #[tokio::test]
    async fn a_dropped_caller_is_still_applied() {
        let (batcher, batches) = recording(8, 2);
        let waiting = tokio::time::timeout(Duration::ZERO, batcher.submit("a", (7, None))).await;
        assert!(waiting.is_err(), "the batch takes a millisecond");
        for _ in 0..500 {
            if !batches.lock().expect("batches").is_empty() && batcher.idle() {
                break;
            }
            // The leader is a spawned task nobody waits for any more: poll (bounded) until it recorded.
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        assert_eq!(*batches.lock().expect("batches"), vec![vec![("a", (7, None))]]);
        assert!(batcher.idle());
    }

    #[tokio::test]
    async fn a_panicking_batch_answers_none_and_leaves_nothing_behind() {
        let apply: ApplyBatch<&'static str, Request, u32> =
            Arc::new(|_| Box::pin(async { panic!("a broken invariant") }));
        let batcher = Batcher::new(8, 2, apply);
        assert_eq!(batcher.submit("a", (1, None)).await, None);
        assert!(batcher.idle());
    }
}
