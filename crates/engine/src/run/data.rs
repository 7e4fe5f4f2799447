//! What a run records: its credit log and the JSON document kept in `RunRecord::data`.

use ledger::Amount;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use store::{ArtifactId, JobId};

/// One metered call: `{node, action, model?, cost}`. `cost` is canonical decimal text.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CreditEntry {
    pub node: String,
    pub action: String,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub model: Option<String>,
    pub cost: String,
}

impl CreditEntry {
    pub fn new(node: &str, action: &str, model: Option<&str>, cost: Amount) -> CreditEntry {
        CreditEntry {
            node: node.to_owned(),
            action: action.to_owned(),
            model: model.map(str::to_owned),
            cost: cost.to_string(),
        }
    }

    pub fn amount(&self) -> Amount {
        Amount::parse(&self.cost).expect("credit log costs are written from amounts")
    }

    /// Video is charged by its job (captured when the job is created), not by the settler.
    pub fn is_synchronous(&self) -> bool {
        self.node != "video"
    }
}

/// The sum of the synchronous part of a log: what the settler captures.
pub fn synchronous_cost(log: &[CreditEntry]) -> Amount {
    Amount::sum(log.iter().filter(|entry| entry.is_synchronous()).map(CreditEntry::amount))
}

pub fn log_json(log: &[CreditEntry]) -> Value {
    serde_json::to_value(log).unwrap_or_else(|_| json!([]))
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlanData {
    pub steps: Vec<String>,
    pub difficulty: String,
    pub explanation_mode: String,
    pub use_page: bool,
    pub model: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorData {
    pub code: String,
    pub message: String,
}

/// The run document stored with each run (`RunRecord::data`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunData {
    pub problem: String,
    #[serde(default)]
    pub action: Option<String>,
    #[serde(default)]
    pub retry_source_job_id: Option<JobId>,
    pub catalog_version: String,
    #[serde(default)]
    pub route: Option<String>,
    #[serde(default)]
    pub plan: Option<PlanData>,
    /// Amounts as canonical decimal text.
    #[serde(default)]
    pub reserved: Option<String>,
    #[serde(default)]
    pub breakdown: Vec<Value>,
    #[serde(default)]
    pub log: Vec<CreditEntry>,
    #[serde(default)]
    pub actual: Option<String>,
    #[serde(default)]
    pub captured: Option<String>,
    #[serde(default)]
    pub refunded: Option<String>,
    #[serde(default)]
    pub answer: Option<String>,
    #[serde(default)]
    pub explanation: Option<String>,
    #[serde(default)]
    pub artifacts: Vec<ArtifactId>,
    #[serde(default)]
    pub jobs: Vec<JobId>,
    #[serde(default)]
    pub error: Option<ErrorData>,
    /// True once the hold is captured or released (the hold needs no more care).
    #[serde(default)]
    pub hold_resolved: bool,
}

impl RunData {
    pub fn to_text(&self) -> String {
        serde_json::to_string(self).expect("run data always serializes")
    }

    pub fn from_text(text: &str) -> Option<RunData> {
        serde_json::from_str(text).ok()
    }
}
