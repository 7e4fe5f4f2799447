//! The worst case of a turn's plan: what the turn holds, all or nothing, before any paid step.
//!
//! The first version estimated a solve step at 4 credits while the solver could spend 17, and let
//! earlier turns' costs leak into each new hold. Here the worst case is derived from the same
//! catalog limits the run engine enforces (its budget guard), so the real cost cannot exceed the
//! hold by construction; and a turn's hold counts only what this turn has spent and will spend.
//! Every number comes from the [`Catalog`]; no price is written here.

use ledger::Amount;

use serde::{Deserialize, Serialize};

use crate::catalog::{Action, Catalog, Tier};
use crate::plan::{ExplanationMode, Step};

/// One line of a breakdown: a call already made, or the worst case of a planned step. Stored in
/// run documents (the amount as decimal text).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Line {
    /// `router`, `planner`, or a step name (`solve`, `pdf`, `video`).
    pub label: String,
    #[serde(with = "crate::amount_text")]
    pub amount: Amount,
    /// How the amount was formed, for people reading a hold (`sonnet/full: 3 × (5 + 1 + 1) + …`).
    pub detail: Option<String>,
}

/// What a turn holds, and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Estimate {
    pub total: Amount,
    pub breakdown: Vec<Line>,
    /// The catalog the amounts come from; the run is metered and settled at this version.
    pub catalog_version: String,
}

/// `price × count`. The catalog bounds prices and limits, so the product fits in `u64`
/// micro-credits with a wide margin; overflow would mean the catalog's bounds are broken.
fn times(price: Amount, count: u32) -> Amount {
    let micros = price.micros().checked_mul(u64::from(count)).expect("catalog bounds keep price × count in u64");
    Amount::from_micros(micros)
}

/// Explain calls the solver may make in this mode.
fn explain_calls(catalog: &Catalog, mode: ExplanationMode) -> u32 {
    match mode {
        ExplanationMode::Full => catalog.limits().explain_calls,
        ExplanationMode::Brief => 0,
    }
}

/// The most a solve step can cost: every model call the budget guard allows (`max_iterations`
/// solver calls, the limit-summary calls, the explain calls in `full` mode) at the tier's price,
/// plus `max_iterations` code_generate and `max_iterations` code_execute calls.
pub fn solve_worst_case(catalog: &Catalog, tier: Tier, mode: ExplanationMode) -> Amount {
    let limits = catalog.limits();
    let model_calls = limits.max_iterations + limits.limit_summary_calls + explain_calls(catalog, mode);
    times(catalog.model_call(tier), model_calls)
        .plus(times(catalog.action(Action::CodeGenerate), limits.max_iterations))
        .plus(times(catalog.action(Action::CodeExecute), limits.max_iterations))
}

/// The most a planned step can cost.
pub fn step_worst_case(catalog: &Catalog, step: Step, tier: Tier, mode: ExplanationMode) -> Amount {
    match step {
        Step::Solve => solve_worst_case(catalog, tier, mode),
        Step::Pdf => catalog.action(Action::Pdf),
        Step::Video => catalog.action(Action::Video),
    }
}

/// The formula of a solve step with the catalog's numbers, so a hold explains itself.
fn solve_detail(catalog: &Catalog, tier: Tier, mode: ExplanationMode) -> String {
    let limits = catalog.limits();
    format!(
        "{}/{}: {} × ({} + {} + {}) + {} × {} + {} × {}",
        tier.as_str(),
        mode.as_str(),
        catalog.model_call(tier),
        limits.max_iterations,
        limits.limit_summary_calls,
        explain_calls(catalog, mode),
        catalog.action(Action::CodeGenerate),
        limits.max_iterations,
        catalog.action(Action::CodeExecute),
        limits.max_iterations,
    )
}

/// A turn's hold: what this turn has already spent plus the worst case of each planned step, one
/// breakdown line each. Earlier turns never enter it: the caller passes only this turn's calls.
pub fn estimate_turn(
    catalog: &Catalog,
    already_spent: &[Line],
    steps: &[Step],
    tier: Tier,
    mode: ExplanationMode,
) -> Estimate {
    let mut breakdown = already_spent.to_vec();
    for step in steps {
        let detail = match step {
            Step::Solve => Some(solve_detail(catalog, tier, mode)),
            Step::Pdf | Step::Video => None,
        };
        breakdown.push(Line {
            label: step.as_str().to_owned(),
            amount: step_worst_case(catalog, *step, tier, mode),
            detail,
        });
    }
    let total = Amount::sum(breakdown.iter().map(|line| line.amount));
    Estimate { total, breakdown, catalog_version: catalog.version().to_owned() }
}

/// What a math turn has spent before its hold: the router and the planner calls.
pub fn routing_lines(catalog: &Catalog) -> Vec<Line> {
    [Action::Router, Action::Planner]
        .into_iter()
        .map(|action| Line { label: action.as_str().to_owned(), amount: catalog.action(action), detail: None })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const DEFAULT: &str = include_str!("../catalog/default.toml");

    fn credits(text: &str) -> Amount {
        Amount::parse(text).expect("test amount")
    }

    fn turn(catalog: &Catalog, steps: &[Step], tier: Tier, mode: ExplanationMode) -> Estimate {
        estimate_turn(catalog, &routing_lines(catalog), steps, tier, mode)
    }

    #[test]
    fn solve_worst_cases_of_the_issue() {
        let catalog = Catalog::builtin();
        let cases = [
            (Tier::Flash, ExplanationMode::Full, "17"),
            (Tier::Flash, ExplanationMode::Brief, "16"),
            (Tier::Sonnet, ExplanationMode::Full, "31"),
            (Tier::Sonnet, ExplanationMode::Brief, "28"),
            (Tier::Opus, ExplanationMode::Full, "66"),
            (Tier::Opus, ExplanationMode::Brief, "58"),
        ];
        for (tier, mode, total) in cases {
            assert_eq!(solve_worst_case(&catalog, tier, mode), credits(total), "{tier:?}/{mode:?}");
            assert_eq!(step_worst_case(&catalog, Step::Solve, tier, mode), credits(total), "{tier:?}/{mode:?}");
        }
        assert_eq!(step_worst_case(&catalog, Step::Pdf, Tier::Opus, ExplanationMode::Full), credits("1"));
        assert_eq!(step_worst_case(&catalog, Step::Video, Tier::Flash, ExplanationMode::Brief), credits("10"));
    }

    #[test]
    fn turn_holds_of_the_issue() {
        let catalog = Catalog::builtin();
        let cases: [(&[Step], Tier, ExplanationMode, &str); 4] = [
            (&[Step::Solve, Step::Pdf], Tier::Flash, ExplanationMode::Full, "20"),
            (&[Step::Solve, Step::Video], Tier::Flash, ExplanationMode::Full, "29"),
            (&[Step::Solve], Tier::Sonnet, ExplanationMode::Full, "33"),
            (&[Step::Solve, Step::Pdf, Step::Video], Tier::Opus, ExplanationMode::Brief, "71"),
        ];
        for (steps, tier, mode, total) in cases {
            let estimate = turn(&catalog, steps, tier, mode);
            assert_eq!(estimate.total, credits(total), "{steps:?} {tier:?}/{mode:?}");
            assert_eq!(estimate.breakdown.len(), 2 + steps.len());
            assert_eq!(Amount::sum(estimate.breakdown.iter().map(|line| line.amount)), estimate.total);
            assert_eq!(estimate.catalog_version, catalog.version());
        }
    }

    #[test]
    fn breakdown_has_one_line_per_spent_call_and_per_step() {
        let catalog = Catalog::builtin();
        let estimate = turn(&catalog, &[Step::Solve, Step::Pdf, Step::Video], Tier::Sonnet, ExplanationMode::Full);
        let labels: Vec<&str> = estimate.breakdown.iter().map(|line| line.label.as_str()).collect();
        assert_eq!(labels, ["router", "planner", "solve", "pdf", "video"]);
        let amounts: Vec<Amount> = estimate.breakdown.iter().map(|line| line.amount).collect();
        assert_eq!(amounts, [credits("1"), credits("1"), credits("31"), credits("1"), credits("10")]);
        assert_eq!(estimate.breakdown[2].detail.as_deref(), Some("sonnet/full: 3 × (5 + 1 + 1) + 1 × 5 + 1 × 5"));
        let brief = turn(&catalog, &[Step::Solve], Tier::Opus, ExplanationMode::Brief);
        assert_eq!(brief.breakdown[2].detail.as_deref(), Some("opus/brief: 8 × (5 + 1 + 0) + 1 × 5 + 1 × 5"));
    }

    #[test]
    fn only_what_the_caller_passes_as_spent_enters_the_hold() {
        let catalog = Catalog::builtin();
        let spent = [
            Line { label: "router".into(), amount: credits("1"), detail: None },
            Line { label: "general_chat".into(), amount: credits("0.5"), detail: None },
        ];
        let estimate = estimate_turn(&catalog, &spent, &[], Tier::Flash, ExplanationMode::Full);
        assert_eq!(estimate.total, credits("1.5"));
        assert_eq!(estimate.breakdown, spent);
        let nothing = estimate_turn(&catalog, &[], &[Step::Pdf], Tier::Flash, ExplanationMode::Full);
        assert_eq!(nothing.total, credits("1"));
    }

    #[test]
    fn routing_lines_are_the_router_and_planner_prices() {
        let text = DEFAULT.replacen("router = 1", "router = \"0.25\"", 1).replacen("planner = 1", "planner = 2", 1);
        let catalog = Catalog::parse(&text, "t").expect("parses");
        let lines = routing_lines(&catalog);
        assert_eq!(lines.len(), 2);
        assert_eq!((lines[0].label.as_str(), lines[0].amount), ("router", credits("0.25")));
        assert_eq!((lines[1].label.as_str(), lines[1].amount), ("planner", credits("2")));
    }

    #[test]
    fn a_changed_catalog_changes_every_number() {
        let edits = [
            ("flash = 1", "flash = \"1.5\""),
            ("router = 1", "router = 2"),
            ("planner = 1", "planner = 3"),
            ("code_generate = 1", "code_generate = \"0.25\""),
            ("code_execute = 1", "code_execute = \"0.5\""),
            ("pdf = 1", "pdf = 4"),
            ("video = 10", "video = 20"),
            ("max_iterations = 5", "max_iterations = 3"),
            ("limit_summary_calls = 1", "limit_summary_calls = 2"),
            ("explain_calls = 1", "explain_calls = 4"),
            ("easy = \"flash\"", "easy = \"opus\""),
        ];
        let mut text = DEFAULT.to_owned();
        for (from, to) in edits {
            assert!(text.contains(from), "{from}");
            text = text.replacen(from, to, 1);
        }
        let catalog = Catalog::parse(&text, "edited").expect("parses");
        // 1.5 × (3 + 2 + 4) + 0.25 × 3 + 0.5 × 3 = 13.5 + 0.75 + 1.5
        assert_eq!(solve_worst_case(&catalog, Tier::Flash, ExplanationMode::Full), credits("15.75"));
        // 1.5 × (3 + 2 + 0) + 0.75 + 1.5
        assert_eq!(solve_worst_case(&catalog, Tier::Flash, ExplanationMode::Brief), credits("9.75"));
        let estimate = turn(&catalog, &[Step::Solve, Step::Pdf, Step::Video], Tier::Flash, ExplanationMode::Full);
        // 2 + 3 + 15.75 + 4 + 20
        assert_eq!(estimate.total, credits("44.75"));
        assert_eq!(estimate.catalog_version, catalog.version());
        assert_ne!(estimate.catalog_version, Catalog::builtin().version());
        assert_eq!(estimate.breakdown[2].detail.as_deref(), Some("flash/full: 1.5 × (3 + 2 + 4) + 0.25 × 3 + 0.5 × 3"));
        assert_eq!(catalog.tier_for(crate::catalog::Difficulty::Easy), Tier::Opus);
    }
}
