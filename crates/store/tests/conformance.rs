//! The conformance suite on the in-memory store: it keeps the suite itself honest.

use std::sync::Arc;

use store::memory::MemoryStore;
use store::ManualClock;

async fn new_store(clock: Arc<ManualClock>) -> Arc<MemoryStore> {
    Arc::new(MemoryStore::new(clock, 86_400))
}

store::conformance_tests!(new_store);
