//! Metered runs: a solve request becomes a plan, the plan's worst case is held before any paid
//! step, every step meters into the run, and the settler captures the real cost.
//!
//! Layout: [`catalog`] (the one source of prices and limits), [`estimate`] (worst case per plan),
//! [`provider`] (the LLM port and its OpenAI-compatible client), [`sandbox`] (the `code_execute`
//! port and the local Python sandbox), [`pdf`] (solution PDFs), [`events`] (the per-run SSE
//! buffer), [`run`] (the graph: router → planner → hold → steps → settler).

pub mod catalog;
pub mod estimate;
pub mod events;
pub mod jobs;
pub mod pdf;
pub mod provider;
pub mod render;
pub mod run;
pub mod sandbox;
pub mod testing;
