//! Metered runs: a solve request becomes a plan, the plan's worst case is held before any paid
//! step, every step meters into the run, and the settler captures the real cost.
//!
//! Layout: [`run`] (the graph: router → planner → hold → steps → settler; its supervisor and
//! crash recovery), [`events`] (the per-run SSE buffer), [`provider`] (the LLM port and its
//! OpenAI-compatible client), [`sandbox`] (the `code_execute` port: bubblewrap, and the local Python
//! sandbox), [`pdf`] (solution PDFs). Prices and plans come from the `pricing` crate, video jobs
//! are the `jobs` crate's; `testing` (feature `testing`) holds the test doubles.

pub mod events;
pub mod pdf;
pub mod provider;
pub mod run;
pub mod sandbox;
#[cfg(feature = "testing")]
pub mod testing;
