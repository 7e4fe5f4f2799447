//! Gateway keys: the per-account bearer keys (`cg_…`) the LLM gateway authenticates callers with
//! (issue 13). A key is shown once when created and stored only as the SHA-256 of its text, so
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
