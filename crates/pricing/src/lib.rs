//! Prices and plans: what a metered turn may cost, decided before anything is spent.
//!
//! Why a crate of its own: the rule "no price exists outside the catalog" is then a crate
//! boundary, not a convention. Everything here is pure — no I/O, no clock, no async — so the
//! estimate a hold is taken at is a function of the catalog and the plan, testable as such, and
//! the HTTP estimate route needs nothing else.
//!
//! Layout: [`catalog`] (the one source of prices and limits, TOML text with a content-hash
//! version), [`estimate`] (the worst case of a plan, line by line).

pub mod catalog;
pub mod estimate;

pub use catalog::{Action, Catalog, CatalogError, Difficulty, Limits, Tier};
pub use estimate::{Estimate, ExplanationMode, Line, Step};
