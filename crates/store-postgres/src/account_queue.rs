//! An in-process queue per account in front of the database's row lock.
//!
//! Correctness does not depend on it: the `SELECT … FOR UPDATE` of the account row serialises
//! every process. It exists for the pool's sake: without it, N concurrent commands on one hot
//! account hold N pooled connections, N-1 of them idle in a row-lock wait, and every other
//! account of this process waits for a connection. With it, each process sends one command per
//! account at a time, and the rest wait here, holding nothing.
//!
//! The map holds an entry only while some task holds or awaits that account's lock, so its size
//! is bounded by the number of commands in flight.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tokio::sync::{Mutex as AsyncMutex, OwnedMutexGuard};

#[derive(Default)]
pub(crate) struct AccountQueue {
    entries: Mutex<HashMap<String, Arc<AsyncMutex<()>>>>,
}

/// Holds one account's turn; dropping it (also when the waiting future is cancelled) passes
/// the turn on and removes the map entry once nobody else uses it.
pub(crate) struct Turn<'a> {
    queue: &'a AccountQueue,
    account_id: String,
    mutex: Arc<AsyncMutex<()>>,
    guard: Option<OwnedMutexGuard<()>>,
}

impl AccountQueue {
    pub(crate) async fn turn(&self, account_id: &str) -> Turn<'_> {
        let mutex = {
            let mut entries = self.entries.lock().expect("account queue map poisoned");
            entries.entry(account_id.to_owned()).or_default().clone()
        };
        let mut turn = Turn { queue: self, account_id: account_id.to_owned(), mutex, guard: None };
        turn.guard = Some(turn.mutex.clone().lock_owned().await);
        turn
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.entries.lock().expect("account queue map poisoned").len()
    }
}

impl Drop for Turn<'_> {
    fn drop(&mut self) {
        drop(self.guard.take());
        let mut entries = self.queue.entries.lock().expect("account queue map poisoned");
        // Two references left: the map's and ours. Any other waiter holds a third, and new
        // waiters can only appear through the map, whose lock we hold.
        if Arc::strong_count(&self.mutex) == 2 {
            entries.remove(&self.account_id);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU32, Ordering};
    use std::sync::Arc;
    use std::time::Duration;

    use super::AccountQueue;

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn one_turn_per_account_and_no_leftover_entries() {
        let queue = Arc::new(AccountQueue::default());
        let inside = Arc::new([AtomicU32::new(0), AtomicU32::new(0)]);
        let tasks: Vec<_> = (0..32)
            .map(|index| {
                let (queue, inside) = (queue.clone(), inside.clone());
                tokio::spawn(async move {
                    let account = index % 2;
                    let _turn = queue.turn(["a", "b"][account]).await;
                    assert_eq!(inside[account].fetch_add(1, Ordering::SeqCst), 0, "one turn per account at a time");
                    tokio::time::sleep(Duration::from_millis(1)).await;
                    inside[account].fetch_sub(1, Ordering::SeqCst);
                })
            })
            .collect();
        for task in tasks {
            task.await.expect("task");
        }
        assert_eq!(queue.len(), 0);
    }

    #[tokio::test]
    async fn a_cancelled_wait_leaves_no_entry() {
        let queue = AccountQueue::default();
        let first = queue.turn("a").await;
        let waiting = tokio::time::timeout(Duration::from_millis(5), queue.turn("a")).await;
        assert!(waiting.is_err(), "the second turn waits for the first");
        drop(first);
        assert_eq!(queue.len(), 0);
    }
}
