//! Gateway keys: the per-account bearer keys (`cg_…`) the LLM gateway authenticates callers with
//! (issue 13), and the record of every call made with them ([`GatewayCall`]). A key is shown once when created and stored only as the SHA-256 of its text, so
//! a copy of the database cannot call the gateway; `prefix` (the first characters) lets an admin
//! tell keys apart. A revoked key stays listed, with `revoked_at`, and never authenticates again.

use ledger::{AccountId, Amount, Timestamp};

use crate::ids::ApiKeyId;

/// Most keys one account may have (revoked ones included).
pub const KEYS_PER_ACCOUNT_MAX: usize = 100;
/// Most models one key may be limited to.
pub const KEY_MODELS_MAX: usize = 32;
/// Longest key name, in bytes.
pub const KEY_NAME_BYTES_MAX: usize = 200;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ApiKey {
    pub key_id: ApiKeyId,
    pub account_id: AccountId,
    pub name: Option<String>,
    /// Hex SHA-256 of the key's text.
    pub hash: String,
    /// The key's first characters (`cg_` and 6 more), for display.
    pub prefix: String,
    /// The most the key may spend per UTC day; `None`: no limit beyond the account's credits.
    pub daily_limit: Option<Amount>,
    /// The models the key may call; empty: every model of the catalog.
    pub models: Vec<String>,
    pub created_at: Timestamp,
    pub revoked_at: Option<Timestamp>,
}

impl ApiKey {
    pub fn allows_model(&self, model: &str) -> bool {
        self.models.is_empty() || self.models.iter().any(|allowed| allowed == model)
    }
}

/// What creating a key did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ApiKeyCreated {
    Created(ApiKey),
    /// The account has [`KEYS_PER_ACCOUNT_MAX`] keys.
    Limit,
}

/// Most rows one usage query returns (model × UTC day).
pub const USAGE_ROWS_MAX: u32 = 10_000;

/// How a gateway call was settled.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CallSettlement {
    /// Captured from the upstream's usage.
    Usage,
    /// Captured at the worst case: the answer (or stream) carried output but no usage.
    WorstCase,
    /// Nothing charged: the upstream failed or produced nothing.
    Released,
}

impl CallSettlement {
    pub fn as_str(self) -> &'static str {
        match self {
            CallSettlement::Usage => "usage",
            CallSettlement::WorstCase => "worst_case",
            CallSettlement::Released => "released",
        }
    }

    pub fn parse(text: &str) -> Option<CallSettlement> {
        [CallSettlement::Usage, CallSettlement::WorstCase, CallSettlement::Released]
            .into_iter()
            .find(|settlement| settlement.as_str() == text)
    }
}

/// One call through the gateway, recorded once it is settled. The journal is the truth about
/// money (the call's capture is there, its hold id the link); this record says what the call
/// was: model, tokens, price list, latency, upstream status.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GatewayCall {
    pub account_id: AccountId,
    pub key_id: ApiKeyId,
    pub hold_id: ledger::HoldId,
    pub model: String,
    pub catalog_version: String,
    pub prompt_tokens: Option<u64>,
    pub completion_tokens: Option<u64>,
    /// What was charged (zero when released).
    pub cost: Amount,
    pub worst_case: Amount,
    pub settlement: CallSettlement,
    /// The upstream's HTTP status; 0 when it never answered.
    pub upstream_status: u16,
    pub latency_ms: u64,
    pub at: Timestamp,
}

/// Calls of one model on one UTC day.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UsageRow {
    pub model: String,
    /// `YYYY-MM-DD` (UTC).
    pub day: String,
    pub calls: u64,
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    pub cost: Amount,
}

/// The UTC day (`YYYY-MM-DD`) of an instant, and the instant that day starts (jiff's calendar).
pub fn utc_day(at: Timestamp) -> (String, Timestamp) {
    const MICROS_PER_DAY: i64 = 86_400 * 1_000_000;
    let start = Timestamp::from_micros(at.micros().div_euclid(MICROS_PER_DAY) * MICROS_PER_DAY);
    let day = jiff::Timestamp::from_microsecond(start.micros())
        .map(|instant| instant.to_zoned(jiff::tz::TimeZone::UTC).date().to_string())
        .unwrap_or_default();
    (day, start)
}

/// Calls grouped by model and UTC day, from calls in any order (what every store returns).
pub fn usage_rows(calls: &[GatewayCall]) -> Vec<UsageRow> {
    let mut rows: std::collections::BTreeMap<(String, String), UsageRow> = std::collections::BTreeMap::new();
    for call in calls {
        let day = utc_day(call.at).0;
        let row = rows.entry((day.clone(), call.model.clone())).or_insert_with(|| UsageRow {
            model: call.model.clone(),
            day,
            calls: 0,
            prompt_tokens: 0,
            completion_tokens: 0,
            cost: Amount::ZERO,
        });
        row.calls += 1;
        row.prompt_tokens += call.prompt_tokens.unwrap_or(0);
        row.completion_tokens += call.completion_tokens.unwrap_or(0);
        row.cost = row.cost.plus(call.cost);
    }
    rows.into_values().collect()
}

/// The stored text of a key's models: their names, newline-separated (a model name has none).
pub fn encode_models(models: &[String]) -> String {
    models.join("\n")
}

pub fn decode_models(text: &str) -> Vec<String> {
    text.lines().filter(|line| !line.is_empty()).map(str::to_owned).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utc_days_are_civil_dates() {
        assert_eq!(utc_day(Timestamp::from_micros(0)).0, "1970-01-01");
        let leap = Timestamp::from_micros(1_709_208_000 * 1_000_000); // 2024-02-29T12:00:00Z
        assert_eq!(utc_day(leap), ("2024-02-29".to_owned(), Timestamp::from_micros(1_709_164_800 * 1_000_000)));
        assert_eq!(utc_day(Timestamp::from_micros(-1)).0, "1969-12-31");
    }

    #[test]
    fn models_round_trip_and_an_empty_list_allows_every_model() {
        let models = vec!["gpt-4o".to_owned(), "gpt-4o-mini".to_owned()];
        assert_eq!(decode_models(&encode_models(&models)), models);
        assert_eq!(decode_models(&encode_models(&[])), Vec::<String>::new());
        let key = ApiKey {
            key_id: ApiKeyId::parse("key-1").unwrap(),
            account_id: AccountId::parse("a").unwrap(),
            name: None,
            hash: String::new(),
            prefix: "cg_abcdef".to_owned(),
            daily_limit: None,
            models: Vec::new(),
            created_at: Timestamp::from_micros(0),
            revoked_at: None,
        };
        assert!(key.allows_model("anything"));
        let limited = ApiKey { models, ..key };
        assert!(limited.allows_model("gpt-4o") && !limited.allows_model("gpt-5"));
    }
}
