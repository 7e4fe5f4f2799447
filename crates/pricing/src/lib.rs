//! Prices and plans: what a metered turn may cost, decided before anything is spent.
//!
//! Why a crate of its own: the rule "no price exists outside the catalog" is then a crate
//! boundary, not a convention. Everything here is pure — no I/O, no clock, no async — so the
//! estimate a hold is taken at is a function of the catalog and the plan, testable as such, and
//! the HTTP estimate route needs nothing else.
//!
//! Layout: [`catalog`] (the one source of prices and limits, TOML text with a content-hash
//! version; [`SharedCatalog`], the one in force), [`plan`] (a turn's steps, tier and explanation
//! mode, normalised once for every caller), [`estimate`] (the worst case of a plan, line by
//! line), [`amount_text`] (amounts in stored documents, as decimal text).

pub mod amount_text;
pub mod catalog;
pub mod estimate;
pub mod plan;

pub use catalog::{Action, Catalog, CatalogError, Difficulty, Limits, SharedCatalog, Tier};
pub use estimate::{Estimate, Line};
pub use plan::{ExplanationMode, Plan, PlanError, Step, PLAN_STEPS_MAX};
