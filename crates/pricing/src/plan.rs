//! A plan: the steps a math turn will take, the model tier that solves it and the explanation
//! mode — everything the worst case of the turn depends on besides the catalog.
//!
//! A plan is listed by a client (`POST /v1/estimate`) or by the planner model (a turn), and both
//! are normalised by [`Plan::normalise`], so the estimate a client is shown and the hold a turn
//! takes come from the same steps: at most [`PLAN_STEPS_MAX`] listed, duplicates dropped, `solve`
//! first (pdf and video render a solution, so every plan solves).

use serde::{Deserialize, Serialize};

use crate::catalog::{Catalog, Tier};
use crate::estimate::{estimate_turn, Estimate, Line};

/// Most steps a plan may list (duplicates included): a longer list is refused, not truncated.
pub const PLAN_STEPS_MAX: usize = 8;

/// A planned step of a math turn.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Step {
    Solve,
    Pdf,
    Video,
}

impl Step {
    pub const ALL: [Step; 3] = [Step::Solve, Step::Pdf, Step::Video];

    pub fn as_str(self) -> &'static str {
        match self {
            Step::Solve => "solve",
            Step::Pdf => "pdf",
            Step::Video => "video",
        }
    }

    pub fn parse(text: &str) -> Option<Step> {
        Step::ALL.into_iter().find(|step| step.as_str() == text)
    }
}

/// Whether the solver ends with an explain call (`full`) or not (`brief`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ExplanationMode {
    Full,
    Brief,
}

impl ExplanationMode {
    pub const ALL: [ExplanationMode; 2] = [ExplanationMode::Full, ExplanationMode::Brief];

    pub fn as_str(self) -> &'static str {
        match self {
            ExplanationMode::Full => "full",
            ExplanationMode::Brief => "brief",
        }
    }

    pub fn parse(text: &str) -> Option<ExplanationMode> {
        ExplanationMode::ALL.into_iter().find(|mode| mode.as_str() == text)
    }
}

/// Why a listed plan was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PlanError {
    /// More than [`PLAN_STEPS_MAX`] steps were listed.
    TooManySteps,
}

impl std::fmt::Display for PlanError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PlanError::TooManySteps => write!(f, "at most {PLAN_STEPS_MAX} steps"),
        }
    }
}

impl std::error::Error for PlanError {}

/// A normalised plan: `steps` start with [`Step::Solve`] and hold each step once.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Plan {
    pub steps: Vec<Step>,
    pub tier: Tier,
    pub mode: ExplanationMode,
}

impl Plan {
    /// The plan of `listed` steps: at most [`PLAN_STEPS_MAX`] of them, duplicates dropped (the
    /// first kept), and `solve` moved (or added) to the front.
    pub fn normalise(listed: &[Step], tier: Tier, mode: ExplanationMode) -> Result<Plan, PlanError> {
        if listed.len() > PLAN_STEPS_MAX {
            return Err(PlanError::TooManySteps);
        }
        let mut steps = vec![Step::Solve];
        for step in listed {
            if !steps.contains(step) {
                steps.push(*step);
            }
        }
        Ok(Plan { steps, tier, mode })
    }

    /// What a turn following this plan holds: `already_spent` (this turn's calls so far) plus
    /// the worst case of each step.
    pub fn estimate(&self, catalog: &Catalog, already_spent: &[Line]) -> Estimate {
        estimate_turn(catalog, already_spent, &self.steps, self.tier, self.mode)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::estimate::routing_lines;

    #[test]
    fn normalising_puts_solve_first_and_drops_duplicates() {
        let cases: [(&[Step], &[Step]); 5] = [
            (&[], &[Step::Solve]),
            (&[Step::Pdf], &[Step::Solve, Step::Pdf]),
            (&[Step::Video, Step::Solve, Step::Pdf], &[Step::Solve, Step::Video, Step::Pdf]),
            (&[Step::Pdf, Step::Pdf, Step::Solve, Step::Pdf], &[Step::Solve, Step::Pdf]),
            (&[Step::Video, Step::Pdf, Step::Video], &[Step::Solve, Step::Video, Step::Pdf]),
        ];
        for (listed, expected) in cases {
            let plan = Plan::normalise(listed, Tier::Flash, ExplanationMode::Full).expect("a valid plan");
            assert_eq!(plan.steps, expected, "{listed:?}");
        }
    }

    #[test]
    fn a_plan_lists_at_most_the_bound() {
        let at_bound = [Step::Pdf; PLAN_STEPS_MAX];
        assert!(Plan::normalise(&at_bound, Tier::Opus, ExplanationMode::Brief).is_ok());
        let over = [Step::Pdf; PLAN_STEPS_MAX + 1];
        assert_eq!(Plan::normalise(&over, Tier::Opus, ExplanationMode::Brief), Err(PlanError::TooManySteps));
        assert_eq!(PlanError::TooManySteps.to_string(), "at most 8 steps");
    }

    #[test]
    fn a_plans_estimate_is_the_turns_estimate() {
        let catalog = Catalog::builtin();
        let plan = Plan::normalise(&[Step::Video, Step::Pdf], Tier::Opus, ExplanationMode::Brief).expect("valid");
        let spent = routing_lines(&catalog);
        let expected = estimate_turn(&catalog, &spent, &[Step::Solve, Step::Video, Step::Pdf], Tier::Opus, plan.mode);
        assert_eq!(plan.estimate(&catalog, &spent), expected);
        assert_eq!(expected.total, ledger::Amount::from_credits(71));
    }

    #[test]
    fn names_round_trip_as_text_and_in_documents() {
        for step in Step::ALL {
            assert_eq!(Step::parse(step.as_str()), Some(step));
            let text = serde_json::to_string(&step).expect("serializes");
            assert_eq!(text, format!("\"{}\"", step.as_str()));
            assert_eq!(serde_json::from_str::<Step>(&text).expect("reads back"), step);
        }
        for mode in ExplanationMode::ALL {
            assert_eq!(ExplanationMode::parse(mode.as_str()), Some(mode));
            assert_eq!(serde_json::to_string(&mode).expect("serializes"), format!("\"{}\"", mode.as_str()));
        }
        assert_eq!(Step::parse("image"), None);
        assert_eq!(ExplanationMode::parse("Full"), None);
        assert!(serde_json::from_str::<Step>("\"image\"").is_err());
    }
}
