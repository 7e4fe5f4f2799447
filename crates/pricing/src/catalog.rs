//! The pricing catalog: the one source of truth for every price and limit of a metered run.
//!
//! The first version kept prices in two tables that drifted apart, so the estimate and the real
//! cost disagreed. Here a single TOML file (`catalog/default.toml`, replaceable by configuration)
//! holds them all, and the estimate, the budget guard and the settler read this type only.
//!
//! Prices are exact [`Amount`]s: a TOML integer or a quoted decimal string, never a float. A
//! broken catalog stops start-up with a [`CatalogError`] naming the file, the line and the key, so
//! an operator fixes the right line instead of a service running with a wrong price.
//!
//! The version is a hash of the file's bytes: a hold records the version it was estimated at, and
//! the run is metered and settled at that version even if the catalog is reloaded mid-run.

use std::collections::BTreeMap;
use std::fmt;
use std::ops::Range;
use std::sync::{Arc, RwLock};

use ledger::Amount;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use toml::Spanned;

/// A catalog file larger than this is not a catalog; refusing it bounds start-up work.
pub const CATALOG_BYTES_MAX: usize = 64 * 1024;
/// The largest price of one call or action. Larger is surely a typo, and the bound keeps every
/// worst-case product of the estimate far inside `u64` micro-credits.
pub const PRICE_CREDITS_MAX: u64 = 1_000_000;
/// The largest value of a limit. Larger is absurd for one solve step and would make holds huge.
pub const LIMIT_MAX: u32 = 100;
/// Most models the gateway section may price.
pub const GATEWAY_MODELS_MAX: usize = 64;
/// The largest output cap a gateway model may have, in tokens.
pub const OUTPUT_TOKENS_MAX: u32 = 1_000_000;
/// How many hex digits of the SHA-256 the version keeps: enough to tell versions apart in logs.
const VERSION_HEX_DIGITS: usize = 16;
/// The `key` of an error that is not about one key (syntax, unreadable file).
const NO_KEY: &str = "";

/// A price tier of the catalog; the LLM provider maps each to a model name.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Tier {
    Flash,
    Sonnet,
    Opus,
}

impl Tier {
    pub const ALL: [Tier; 3] = [Tier::Flash, Tier::Sonnet, Tier::Opus];

    pub fn as_str(self) -> &'static str {
        match self {
            Tier::Flash => "flash",
            Tier::Sonnet => "sonnet",
            Tier::Opus => "opus",
        }
    }

    pub fn parse(text: &str) -> Option<Tier> {
        Tier::ALL.into_iter().find(|tier| tier.as_str() == text)
    }
}

/// A priced action that is not a plain model call at the selected tier.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Action {
    Router,
    Planner,
    GeneralChat,
    CodeGenerate,
    CodeExecute,
    Pdf,
    Video,
    Image,
}

impl Action {
    pub const ALL: [Action; 8] = [
        Action::Router,
        Action::Planner,
        Action::GeneralChat,
        Action::CodeGenerate,
        Action::CodeExecute,
        Action::Pdf,
        Action::Video,
        Action::Image,
    ];

    /// The key of this action in the catalog's `[actions]` section, and its name in credit logs.
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Router => "router",
            Action::Planner => "planner",
            Action::GeneralChat => "general_chat",
            Action::CodeGenerate => "code_generate",
            Action::CodeExecute => "code_execute",
            Action::Pdf => "pdf",
            Action::Video => "video",
            Action::Image => "image",
        }
    }

    pub fn parse(text: &str) -> Option<Action> {
        Action::ALL.into_iter().find(|action| action.as_str() == text)
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// How hard the planner judged a problem; the catalog maps it to the model tier that solves it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Difficulty {
    Easy,
    Medium,
    Hard,
}

impl Difficulty {
    pub const ALL: [Difficulty; 3] = [Difficulty::Easy, Difficulty::Medium, Difficulty::Hard];

    pub fn as_str(self) -> &'static str {
        match self {
            Difficulty::Easy => "easy",
            Difficulty::Medium => "medium",
            Difficulty::Hard => "hard",
        }
    }

    pub fn parse(text: &str) -> Option<Difficulty> {
        Difficulty::ALL.into_iter().find(|difficulty| difficulty.as_str() == text)
    }

    fn index(self) -> usize {
        self as usize
    }
}

fn tier_index(tier: Tier) -> usize {
    match tier {
        Tier::Flash => 0,
        Tier::Sonnet => 1,
        Tier::Opus => 2,
    }
}

/// What the solver may do in one solve step. The estimate assumes exactly these and the run
/// engine enforces exactly these, which is why the real cost never exceeds the hold.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Solver model calls per solve step; also the bound on `code_generate` and on `code_execute`.
    pub max_iterations: u32,
    /// Model calls that summarize when the iteration limit is hit.
    pub limit_summary_calls: u32,
    /// Model calls that explain the solution when the explanation mode is `full`.
    pub explain_calls: u32,
}

const LIMIT_KEYS: [&str; 3] = ["max_iterations", "limit_summary_calls", "explain_calls"];

/// A validated catalog: every price and limit present and in range.
#[derive(Clone, Debug, PartialEq)]
pub struct Catalog {
    origin: String,
    version: String,
    /// Indexed by [`tier_index`].
    model_prices: [Amount; 3],
    /// Indexed by [`Action::index`].
    action_prices: [Amount; 8],
    limits: Limits,
    /// Indexed by [`Difficulty::index`].
    difficulty_tiers: [Tier; 3],
    /// The LLM gateway's models by name (`[gateway."<model>"]`), each with its token prices.
    gateway_models: BTreeMap<String, TokenPrices>,
}

/// What one model costs through the LLM gateway: credits per million input and output tokens,
/// and how many output tokens a call may ask for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TokenPrices {
    pub input_per_million: Amount,
    pub output_per_million: Amount,
    /// A request asking for more output tokens is refused.
    pub max_output_tokens: u32,
    /// The output cap held for (and forced on the upstream) when a request names none.
    pub default_max_output_tokens: u32,
}

impl TokenPrices {
    /// The exact cost of a call that used these tokens, rounded up to the next micro-credit
    /// (never below what was used); `None` beyond [`Amount::MAX`]. Monotonic in both counts, so
    /// the cost of a call's real usage never exceeds the cost of its bound.
    pub fn cost(&self, input_tokens: u64, output_tokens: u64) -> Option<Amount> {
        let micros_times_million = u128::from(self.input_per_million.micros()) * u128::from(input_tokens)
            + u128::from(self.output_per_million.micros()) * u128::from(output_tokens);
        let micros = micros_times_million.div_ceil(1_000_000);
        let micros = u64::try_from(micros).ok()?;
        (micros <= Amount::MAX.micros()).then(|| Amount::from_micros(micros))
    }
}

/// Why a catalog was refused, precise enough to fix the file: `{origin}:{line}: {key}: {message}`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CatalogError {
    /// The file's path, or `built-in`.
    pub origin: String,
    /// 1-based; `None` when the problem has no line (a missing section, an unreadable file).
    pub line: Option<usize>,
    /// The dotted key (`models.gpt5`, `limits.max_iterations`); empty when the problem is not
    /// about one key (an unreadable file, a syntax error on a line that defines no key).
    pub key: String,
    pub message: String,
}

impl fmt::Display for CatalogError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.origin)?;
        if let Some(line) = self.line {
            write!(f, ":{line}")?;
        }
        if !self.key.is_empty() {
            write!(f, ": {}", self.key)?;
        }
        write!(f, ": {}", self.message)
    }
}

impl std::error::Error for CatalogError {}

impl Catalog {
    /// The TOML text of the catalog shipped with the binary (a starting point for your own).
    pub fn builtin_text() -> &'static str {
        include_str!("../catalog/default.toml")
    }

    /// The catalog shipped with the binary.
    pub fn builtin() -> Catalog {
        // A constant of the build; the `builtin_catalog_is_valid` test proves it parses.
        Catalog::parse(Catalog::builtin_text(), "built-in")
            .unwrap_or_else(|error| panic!("the built-in catalog is broken: {error}"))
    }

    /// Validates catalog text. `origin` names it in errors (a path, or `built-in`).
    pub fn parse(text: &str, origin: &str) -> Result<Catalog, CatalogError> {
        Parser { text, origin }.parse()
    }

    /// `sha256:` and the first 16 hex digits of the SHA-256 of the catalog's bytes.
    pub fn version(&self) -> &str {
        &self.version
    }

    pub fn origin(&self) -> &str {
        &self.origin
    }

    /// The price of one LLM call at this tier.
    pub fn model_call(&self, tier: Tier) -> Amount {
        self.model_prices[tier_index(tier)]
    }

    pub fn action(&self, action: Action) -> Amount {
        self.action_prices[action.index()]
    }

    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// The model tier that solves problems of this difficulty.
    pub fn tier_for(&self, difficulty: Difficulty) -> Tier {
        self.difficulty_tiers[difficulty.index()]
    }

    /// A gateway model's token prices; `None` for a model the gateway does not serve.
    pub fn gateway_model(&self, model: &str) -> Option<&TokenPrices> {
        self.gateway_models.get(model)
    }

    /// Every gateway model, in name order.
    pub fn gateway_models(&self) -> impl Iterator<Item = (&str, &TokenPrices)> {
        self.gateway_models.iter().map(|(name, prices)| (name.as_str(), prices))
    }
}

/// The catalog new turns are priced at, shared by everything that prices (the run engine, the
/// estimate route). It is replaced whole: a turn keeps the catalog it started with, so a reload
/// mid-turn never changes the prices of a hold already taken.
#[derive(Debug)]
pub struct SharedCatalog(RwLock<Arc<Catalog>>);

impl SharedCatalog {
    pub fn new(catalog: Arc<Catalog>) -> SharedCatalog {
        SharedCatalog(RwLock::new(catalog))
    }

    /// The catalog in force now.
    pub fn current(&self) -> Arc<Catalog> {
        Arc::clone(&self.0.read().unwrap_or_else(|poisoned| poisoned.into_inner()))
    }

    /// Replaces the catalog for turns and estimates from now on.
    pub fn replace(&self, catalog: Arc<Catalog>) {
        *self.0.write().unwrap_or_else(|poisoned| poisoned.into_inner()) = catalog;
    }
}

type Entries = BTreeMap<Spanned<String>, Spanned<toml::Value>>;

/// The second reading of the file, once the first has shown every top-level key is a known
/// section holding a table.
#[derive(Deserialize)]
struct Sections {
    #[serde(default)]
    models: Entries,
    #[serde(default)]
    actions: Entries,
    #[serde(default)]
    limits: Entries,
    #[serde(default)]
    difficulty: Entries,
    /// Model name → its table (checked one by one in [`Parser::gateway_model`]).
    #[serde(default)]
    gateway: Entries,
}

const SECTION_NAMES: [&str; 5] = ["models", "actions", "limits", "difficulty", "gateway"];
const GATEWAY_KEYS: [&str; 4] =
    ["input_per_million", "output_per_million", "max_output_tokens", "default_max_output_tokens"];

struct Parser<'a> {
    text: &'a str,
    origin: &'a str,
}

/// One `key = value` of a known section, kept with its position so errors come in file order.
struct Entry<'a> {
    section: &'static str,
    key: &'a Spanned<String>,
    value: &'a Spanned<toml::Value>,
}

impl Parser<'_> {
    fn parse(&self) -> Result<Catalog, CatalogError> {
        if self.text.len() > CATALOG_BYTES_MAX {
            return Err(self.error(None, NO_KEY, format!("the catalog is larger than {CATALOG_BYTES_MAX} bytes")));
        }
        let top: BTreeMap<Spanned<String>, toml::Value> = toml::from_str(self.text).map_err(|e| self.toml_error(&e))?;
        let mut section_lines: BTreeMap<&'static str, usize> = BTreeMap::new();
        let mut top_keys: Vec<_> = top.iter().collect();
        top_keys.sort_by_key(|(key, _)| key.span().start);
        for (key, value) in top_keys {
            let line = self.line_of(key.span());
            let Some(name) = SECTION_NAMES.into_iter().find(|name| *name == key.get_ref()) else {
                let expected = SECTION_NAMES.join(", ");
                return Err(self.error(line, key.get_ref(), format!("unknown section; the sections are {expected}")));
            };
            if !value.is_table() {
                return Err(self.error(line, name, format!("`{name}` must be a table: write `[{name}]`")));
            }
            section_lines.insert(name, line.unwrap_or(1));
        }
        let sections: Sections = toml::from_str(self.text).map_err(|e| self.toml_error(&e))?;
        let mut entries: Vec<Entry<'_>> = [
            ("models", &sections.models),
            ("actions", &sections.actions),
            ("limits", &sections.limits),
            ("difficulty", &sections.difficulty),
        ]
        .into_iter()
        .flat_map(|(section, table)| table.iter().map(move |(key, value)| Entry { section, key, value }))
        .collect();
        entries.sort_by_key(|entry| entry.key.span().start);

        let mut model_prices: [Option<Amount>; 3] = [None; 3];
        let mut action_prices: [Option<Amount>; 8] = [None; 8];
        let mut limit_values: [Option<u32>; 3] = [None; 3];
        let mut difficulty_tiers: [Option<Tier>; 3] = [None; 3];
        for entry in &entries {
            let name = entry.key.get_ref().as_str();
            let dotted = format!("{}.{name}", entry.section);
            let line = self.line_of(entry.key.span());
            let fail = |message: String| self.error(line, &dotted, message);
            match entry.section {
                "models" => {
                    let tier = Tier::parse(name).ok_or_else(|| fail(unknown("model", &Tier::ALL.map(Tier::as_str))))?;
                    model_prices[tier_index(tier)] = Some(self.price(entry.value).map_err(fail)?);
                }
                "actions" => {
                    let action =
                        Action::parse(name).ok_or_else(|| fail(unknown("action", &Action::ALL.map(Action::as_str))))?;
                    action_prices[action.index()] = Some(self.price(entry.value).map_err(fail)?);
                }
                "limits" => {
                    let index = LIMIT_KEYS
                        .iter()
                        .position(|key| *key == name)
                        .ok_or_else(|| fail(unknown("limit", &LIMIT_KEYS)))?;
                    limit_values[index] = Some(limit(entry.value.get_ref()).map_err(fail)?);
                }
                _ => {
                    let difficulty = Difficulty::parse(name)
                        .ok_or_else(|| fail(unknown("difficulty", &Difficulty::ALL.map(Difficulty::as_str))))?;
                    let value_line = self.line_of(entry.value.span());
                    let tier = entry
                        .value
                        .get_ref()
                        .as_str()
                        .and_then(Tier::parse)
                        .ok_or_else(|| self.error(value_line, &dotted, unknown_tier()))?;
                    difficulty_tiers[difficulty.index()] = Some(tier);
                }
            }
        }

        let missing = |section: &'static str, key: &str| {
            let line = section_lines.get(section).copied();
            let message = match line {
                Some(_) => format!("missing; `[{section}]` must set `{key}`"),
                None => format!("missing; the catalog needs a `[{section}]` section with `{key}`"),
            };
            self.error(line, &format!("{section}.{key}"), message)
        };
        let model_prices = fill(model_prices, |index| missing("models", Tier::ALL[index].as_str()))?;
        let action_prices = fill(action_prices, |index| missing("actions", Action::ALL[index].as_str()))?;
        let [max_iterations, limit_summary_calls, explain_calls] =
            fill(limit_values, |index| missing("limits", LIMIT_KEYS[index]))?;
        let difficulty_tiers = fill(difficulty_tiers, |index| missing("difficulty", Difficulty::ALL[index].as_str()))?;

        if sections.gateway.len() > GATEWAY_MODELS_MAX {
            let line = section_lines.get("gateway").copied();
            return Err(self.error(line, "gateway", format!("at most {GATEWAY_MODELS_MAX} models")));
        }
        let mut gateway_models = BTreeMap::new();
        for (name, table) in &sections.gateway {
            gateway_models.insert(name.get_ref().clone(), self.gateway_model(name, table)?);
        }

        let digest = hex::encode(Sha256::digest(self.text.as_bytes()));
        Ok(Catalog {
            origin: self.origin.to_owned(),
            version: format!("sha256:{}", &digest[..VERSION_HEX_DIGITS]),
            model_prices,
            action_prices,
            limits: Limits { max_iterations, limit_summary_calls, explain_calls },
            difficulty_tiers,
            gateway_models,
        })
    }

    /// One `[gateway."<model>"]` table: both prices and both output caps, the default within
    /// the cap.
    fn gateway_model(&self, name: &Spanned<String>, table: &Spanned<toml::Value>) -> Result<TokenPrices, CatalogError> {
        let model = name.get_ref();
        let dotted = format!("gateway.{model}");
        let line = self.line_of(name.span());
        let name_ok = (1..=128).contains(&model.len())
            && model.bytes().all(|byte| byte.is_ascii_alphanumeric() || b"._:/-".contains(&byte));
        if !name_ok {
            return Err(self.error(line, &dotted, "a model name is 1-128 characters of [A-Za-z0-9._:/-]".to_owned()));
        }
        let Some(entries) = table.get_ref().as_table() else {
            return Err(self.error(
                line,
                &dotted,
                format!("a gateway model is a table: write `[gateway.\"{model}\"]`"),
            ));
        };
        if let Some(unknown_key) = entries.keys().find(|key| !GATEWAY_KEYS.contains(&key.as_str())) {
            return Err(self.error(line, &format!("{dotted}.{unknown_key}"), unknown("key", &GATEWAY_KEYS)));
        }
        let value = |key: &str| {
            entries.get(key).ok_or_else(|| {
                self.error(line, &format!("{dotted}.{key}"), format!("missing; `[{dotted}]` must set `{key}`"))
            })
        };
        // The values of a nested table carry no spans of their own: errors point at the model.
        let price = |key: &str| -> Result<Amount, CatalogError> {
            let raw = value(key)?;
            if raw.is_float() {
                let message = format!("a price must be exact, and {raw} is a TOML float; quote it as a decimal string");
                return Err(self.error(line, &format!("{dotted}.{key}"), message));
            }
            let spanned = Spanned::new(table.span(), raw.clone());
            self.price(&spanned).map_err(|message| self.error(line, &format!("{dotted}.{key}"), message))
        };
        let tokens = |key: &str| -> Result<u32, CatalogError> {
            let fail = |message: String| self.error(line, &format!("{dotted}.{key}"), message);
            let toml::Value::Integer(integer) = value(key)? else {
                return Err(fail("a token count is an integer".to_owned()));
            };
            match u32::try_from(*integer) {
                Ok(count) if (1..=OUTPUT_TOKENS_MAX).contains(&count) => Ok(count),
                _ => Err(fail(format!("a token count is between 1 and {OUTPUT_TOKENS_MAX}, not {integer}"))),
            }
        };
        let prices = TokenPrices {
            input_per_million: price("input_per_million")?,
            output_per_million: price("output_per_million")?,
            max_output_tokens: tokens("max_output_tokens")?,
            default_max_output_tokens: tokens("default_max_output_tokens")?,
        };
        if prices.default_max_output_tokens > prices.max_output_tokens {
            let key = format!("{dotted}.default_max_output_tokens");
            return Err(self.error(line, &key, "must not exceed max_output_tokens".to_owned()));
        }
        Ok(prices)
    }

    /// A price: a TOML integer or a decimal string, in `0..=PRICE_CREDITS_MAX` credits.
    fn price(&self, value: &Spanned<toml::Value>) -> Result<Amount, String> {
        let amount = match value.get_ref() {
            toml::Value::Integer(integer) if *integer < 0 => return Err("a price cannot be negative".to_owned()),
            toml::Value::Integer(integer) => Amount::parse(&integer.to_string()).map_err(|error| error.to_string())?,
            toml::Value::String(text) if text.starts_with('-') => {
                return Err("a price cannot be negative".to_owned());
            }
            toml::Value::String(text) => {
                Amount::parse(text).map_err(|error| format!("`{text}` is not a price: {error}"))?
            }
            toml::Value::Float(_) => {
                let literal = self.text.get(value.span()).unwrap_or("the number").trim();
                return Err(format!(
                    "a price must be exact, and `{literal}` is a TOML float; quote it as a decimal string: \"{literal}\""
                ));
            }
            other => {
                return Err(format!(
                    "a price is an integer or a quoted decimal such as \"0.5\", not a {}",
                    other.type_str()
                ))
            }
        };
        if amount > Amount::from_credits(PRICE_CREDITS_MAX) {
            return Err(format!("a price is at most {PRICE_CREDITS_MAX} credits"));
        }
        Ok(amount)
    }

    fn toml_error(&self, error: &toml::de::Error) -> CatalogError {
        let line = error.span().and_then(|span| self.line_of(span));
        let key = line.map(|line| self.key_on_line(line)).unwrap_or_default();
        // The message is the parser's own, on one line; the span already gives the position.
        let message = error.message().trim().replace('\n', " ");
        self.error(line, &key, format!("not valid TOML: {message}"))
    }

    /// The dotted key a line of text defines (`models.sonnet` for `sonnet = = 3` under
    /// `[models]`, `models` for the header itself), read from the raw text because a line that
    /// does not parse has no span; empty when the line defines no key.
    fn key_on_line(&self, line: usize) -> String {
        let mut section = "";
        for (index, text) in self.text.lines().enumerate().take(line) {
            let text = text.trim();
            let is_header = text.starts_with('[');
            if is_header {
                section = text.trim_start_matches('[').split(']').next().unwrap_or_default().trim();
            }
            if index + 1 < line {
                continue;
            }
            if is_header {
                return section.to_owned();
            }
            let Some((key, _)) = text.split_once('=') else { return String::new() };
            let key = key.trim().trim_matches(|quote| quote == '"' || quote == '\'');
            if key.is_empty() || key.starts_with('#') {
                return String::new();
            }
            return if section.is_empty() { key.to_owned() } else { format!("{section}.{key}") };
        }
        String::new()
    }

    /// The 1-based line of a byte offset into the text.
    fn line_of(&self, span: Range<usize>) -> Option<usize> {
        let prefix = self.text.get(..span.start)?;
        Some(prefix.bytes().filter(|byte| *byte == b'\n').count() + 1)
    }

    fn error(&self, line: Option<usize>, key: &str, message: String) -> CatalogError {
        CatalogError { origin: self.origin.to_owned(), line, key: key.to_owned(), message }
    }
}

/// A limit: an integer in `1..=LIMIT_MAX`.
fn limit(value: &toml::Value) -> Result<u32, String> {
    let toml::Value::Integer(integer) = value else {
        return Err(format!("a limit is an integer, not a {}", value.type_str()));
    };
    match u32::try_from(*integer) {
        Ok(count) if (1..=LIMIT_MAX).contains(&count) => Ok(count),
        _ => Err(format!("a limit is between 1 and {LIMIT_MAX}, not {integer}")),
    }
}

fn unknown(what: &str, known: &[&str]) -> String {
    format!("unknown {what}; the known ones are {}", known.join(", "))
}

fn unknown_tier() -> String {
    format!("names no model; the models are {}", Tier::ALL.map(Tier::as_str).join(", "))
}

/// Turns `[Option<T>; N]` into `[T; N]`, or the error for the first missing index.
fn fill<T: Copy, const N: usize>(
    values: [Option<T>; N],
    missing: impl Fn(usize) -> CatalogError,
) -> Result<[T; N], CatalogError> {
    let mut filled = Vec::with_capacity(N);
    for (index, value) in values.into_iter().enumerate() {
        filled.push(value.ok_or_else(|| missing(index))?);
    }
    // `filled` has exactly N elements: one per input, or the loop returned early.
    Ok(std::array::from_fn(|index| filled[index]))
}

#[cfg(test)]
mod tests {
    use super::*;

    const DEFAULT: &str = include_str!("../catalog/default.toml");

    /// The default text with one line replaced; panics if `from` is not in it, so a test cannot
    /// silently test the default.
    fn replaced(from: &str, to: &str) -> String {
        assert!(DEFAULT.contains(from), "{from:?} is not in the default catalog");
        DEFAULT.replacen(from, to, 1)
    }

    fn line_in(text: &str, needle: &str) -> usize {
        let offset = text.find(needle).unwrap_or_else(|| panic!("{needle:?} not in the text"));
        text[..offset].matches('\n').count() + 1
    }

    fn broken(text: &str) -> CatalogError {
        match Catalog::parse(text, "test.toml") {
            Ok(catalog) => panic!("accepted a broken catalog: {catalog:?}"),
            Err(error) => error,
        }
    }

    #[track_caller]
    fn assert_broken(text: &str, key: &str, line: Option<usize>, message_part: &str) {
        let error = broken(text);
        assert_eq!(error.origin, "test.toml");
        assert_eq!(error.key, key, "{error}");
        assert_eq!(error.line, line, "{error}");
        assert!(error.message.contains(message_part), "{error:?} does not say {message_part:?}");
    }

    #[test]
    fn gateway_models_are_priced_per_token_and_rounded_up() {
        let catalog = Catalog::builtin();
        let mini = catalog.gateway_model("gpt-4o-mini").expect("the built-in catalog serves gpt-4o-mini");
        assert_eq!(
            (mini.input_per_million, mini.output_per_million),
            (Amount::from_credits(15), Amount::from_credits(60))
        );
        assert_eq!((mini.max_output_tokens, mini.default_max_output_tokens), (16_384, 1_024));
        assert!(catalog.gateway_model("gpt-5-nonexistent").is_none());
        assert_eq!(catalog.gateway_models().count(), 2);
        // 1,000 input and 500 output tokens: 15 × 0.001 + 60 × 0.0005 = 0.045 credits, exactly.
        assert_eq!(mini.cost(1_000, 500), Some(Amount::parse("0.045").unwrap()));
        // One input token is 0.000015 credits: 15 micro-credits, exact.
        assert_eq!(mini.cost(1, 0), Some(Amount::from_micros(15)));
        let odd = TokenPrices {
            input_per_million: Amount::parse("0.7").unwrap(),
            output_per_million: Amount::from_credits(0),
            max_output_tokens: 1,
            default_max_output_tokens: 1,
        };
        // 0.7 credits per million tokens: one token is 0.7 micro-credits, charged as 1.
        assert_eq!(odd.cost(1, 0), Some(Amount::from_micros(1)));
        assert_eq!(odd.cost(0, 0), Some(Amount::ZERO));
        let dear = TokenPrices { input_per_million: Amount::from_credits(PRICE_CREDITS_MAX), ..odd };
        assert_eq!(dear.cost(u64::MAX, 0), None, "beyond Amount::MAX");
    }

    #[test]
    fn gateway_tables_are_checked_key_by_key() {
        let with = |table: &str| format!("{DEFAULT}\n[gateway.\"m\"]\n{table}\n");
        let complete = "input_per_million = 1\noutput_per_million = \"0.5\"\nmax_output_tokens = 10\ndefault_max_output_tokens = 5";
        let catalog = Catalog::parse(&with(complete), "test").expect("a complete table parses");
        assert_eq!(catalog.gateway_model("m").map(|m| m.output_per_million), Some(Amount::parse("0.5").unwrap()));
        let cases = [
            (complete.replace("= 1\n", "= 1.5\n"), "gateway.m.input_per_million", "TOML float"),
            (
                complete.replace("max_output_tokens = 10", "max_output_tokens = 0"),
                "gateway.m.max_output_tokens",
                "between 1",
            ),
            (complete.replace("= 5", "= 11"), "gateway.m.default_max_output_tokens", "must not exceed"),
            (complete.replace("output_per_million = \"0.5\"\n", ""), "gateway.m.output_per_million", "missing"),
            (format!("{complete}\ncolour = 1"), "gateway.m.colour", "unknown key"),
        ];
        for (table, key, message) in cases {
            let error = Catalog::parse(&with(&table), "test").expect_err("refused");
            assert_eq!(error.key, key, "{error}");
            assert!(error.message.contains(message), "{error}");
            assert!(error.line.is_some(), "{error}");
        }
        let bad_name = format!("{DEFAULT}\n[gateway.\"a b\"]\n{complete}\n");
        assert!(Catalog::parse(&bad_name, "test").expect_err("refused").message.contains("model name"));
    }

    proptest::proptest! {
        /// The cost is monotonic in both counts (so real usage within the bound never costs more
        /// than the hold) and never below the exact value.
        #[test]
        fn token_costs_are_monotonic_and_never_undercharge(
            input_micros in 0u64..=1_000_000_000_000, output_micros in 0u64..=1_000_000_000_000,
            input in 0u64..10_000_000, output in 0u64..10_000_000, more_input in 0u64..1_000, more_output in 0u64..1_000,
        ) {
            let prices = TokenPrices {
                input_per_million: Amount::from_micros(input_micros),
                output_per_million: Amount::from_micros(output_micros),
                max_output_tokens: 1,
                default_max_output_tokens: 1,
            };
            let cost = prices.cost(input, output).expect("in range");
            let bound = prices.cost(input + more_input, output + more_output).expect("in range");
            proptest::prop_assert!(cost <= bound);
            let exact_times_million = u128::from(input_micros) * u128::from(input) + u128::from(output_micros) * u128::from(output);
            proptest::prop_assert!(u128::from(cost.micros()) * 1_000_000 >= exact_times_million);
            proptest::prop_assert!(u128::from(cost.micros()) * 1_000_000 < exact_times_million + 1_000_000);
        }
    }

    #[test]
    fn builtin_catalog_is_valid_and_has_the_issue_defaults() {
        let catalog = Catalog::parse(DEFAULT, "built-in").expect("the default catalog parses");
        assert_eq!(catalog, Catalog::builtin());
        assert_eq!(catalog.origin(), "built-in");
        let credits = |text: &str| Amount::parse(text).expect("test amount");
        assert_eq!(catalog.model_call(Tier::Flash), credits("1"));
        assert_eq!(catalog.model_call(Tier::Sonnet), credits("3"));
        assert_eq!(catalog.model_call(Tier::Opus), credits("8"));
        let actions = [
            (Action::Router, "1"),
            (Action::Planner, "1"),
            (Action::GeneralChat, "0.5"),
            (Action::CodeGenerate, "1"),
            (Action::CodeExecute, "1"),
            (Action::Pdf, "1"),
            (Action::Video, "10"),
            (Action::Image, "2"),
        ];
        for (action, price) in actions {
            assert_eq!(catalog.action(action), credits(price), "{action:?}");
        }
        assert_eq!(catalog.limits(), &Limits { max_iterations: 5, limit_summary_calls: 1, explain_calls: 1 });
        assert_eq!(catalog.tier_for(Difficulty::Easy), Tier::Flash);
        assert_eq!(catalog.tier_for(Difficulty::Medium), Tier::Sonnet);
        assert_eq!(catalog.tier_for(Difficulty::Hard), Tier::Opus);
    }

    #[test]
    fn version_is_a_content_hash() {
        let catalog = Catalog::builtin();
        let expected = format!("sha256:{}", &hex::encode(Sha256::digest(DEFAULT.as_bytes()))[..16]);
        assert_eq!(catalog.version(), expected);
        assert_eq!(catalog.version().len(), "sha256:".len() + 16);
        // Same prices, different bytes: a different version, because the version names the file.
        let commented = Catalog::parse(&format!("# edited\n{DEFAULT}"), "edited").expect("parses");
        assert_ne!(commented.version(), catalog.version());
        assert_eq!(commented.model_call(Tier::Opus), catalog.model_call(Tier::Opus));
        let repriced = Catalog::parse(&replaced("opus = 8", "opus = 9"), "edited").expect("parses");
        assert_ne!(repriced.version(), catalog.version());
        assert_eq!(repriced.model_call(Tier::Opus), Amount::from_credits(9));
    }

    #[test]
    fn prices_may_be_integers_or_exact_decimal_strings() {
        let text = replaced("flash = 1", "flash = \"0.000125\"").replace("video = 10", "video = \"0\"");
        let catalog = Catalog::parse(&text, "t").expect("parses");
        assert_eq!(catalog.model_call(Tier::Flash), Amount::from_micros(125));
        assert_eq!(catalog.action(Action::Video), Amount::ZERO);
    }

    #[test]
    fn enums_round_trip_through_their_names() {
        for action in Action::ALL {
            assert_eq!(Action::parse(action.as_str()), Some(action));
        }
        for difficulty in Difficulty::ALL {
            assert_eq!(Difficulty::parse(difficulty.as_str()), Some(difficulty));
        }
        assert_eq!(Action::parse("Router"), None);
        assert_eq!(Difficulty::parse("extreme"), None);
    }

    #[test]
    fn unknown_model_names_the_line_and_key() {
        let text = replaced("opus = 8", "opus = 8\ngpt5 = 20");
        assert_broken(&text, "models.gpt5", Some(line_in(&text, "gpt5")), "unknown model");
    }

    #[test]
    fn unknown_action_names_the_line_and_key() {
        let text = replaced("image = 2", "image = 2\ntranslate = 1");
        assert_broken(&text, "actions.translate", Some(line_in(&text, "translate")), "unknown action");
    }

    #[test]
    fn unknown_section_names_the_line() {
        let text = format!("{DEFAULT}\n[discounts]\nflash = 1\n");
        assert_broken(&text, "discounts", Some(line_in(&text, "[discounts]")), "unknown section");
    }

    #[test]
    fn a_section_that_is_not_a_table_is_refused() {
        let text = format!("limits = 5\n{}", DEFAULT.replace("[limits]", "[limits_gone]"));
        assert_broken(&text, "limits", Some(1), "must be a table");
    }

    #[test]
    fn unknown_limit_is_refused() {
        let text = replaced("explain_calls = 1", "explain_calls = 1\nretries = 3");
        assert_broken(&text, "limits.retries", Some(line_in(&text, "retries")), "unknown limit");
    }

    #[test]
    fn negative_prices_are_refused() {
        let text = replaced("sonnet = 3", "sonnet = -3");
        assert_broken(&text, "models.sonnet", Some(line_in(&text, "sonnet = -3")), "negative");
        let text = replaced("pdf = 1", "pdf = \"-1\"");
        assert_broken(&text, "actions.pdf", Some(line_in(&text, "pdf = \"-1\"")), "negative");
    }

    #[test]
    fn malformed_prices_are_refused() {
        let text = replaced("video = 10", "video = \"ten\"");
        assert_broken(&text, "actions.video", Some(line_in(&text, "video = \"ten\"")), "not a price");
        let text = replaced("video = 10", "video = \"1e3\"");
        assert_broken(&text, "actions.video", Some(line_in(&text, "\"1e3\"")), "not a price");
        let text = replaced("video = 10", "video = true");
        assert_broken(&text, "actions.video", Some(line_in(&text, "video = true")), "not a boolean");
    }

    #[test]
    fn too_precise_and_too_large_prices_are_refused() {
        let text = replaced("image = 2", "image = \"0.0000001\"");
        assert_broken(&text, "actions.image", Some(line_in(&text, "0.0000001")), "at most 6 fractional digits");
        let text = replaced("opus = 8", "opus = 1000001");
        assert_broken(&text, "models.opus", Some(line_in(&text, "1000001")), "at most 1000000 credits");
        let text = replaced("opus = 8", "opus = \"1000000.000001\"");
        assert_broken(&text, "models.opus", Some(line_in(&text, "1000000.000001")), "at most 1000000 credits");
        // The bound itself is allowed.
        let catalog = Catalog::parse(&replaced("opus = 8", "opus = 1000000"), "t").expect("parses");
        assert_eq!(catalog.model_call(Tier::Opus), Amount::from_credits(PRICE_CREDITS_MAX));
    }

    #[test]
    fn float_prices_are_refused_with_a_hint_to_quote_them() {
        let text = replaced("general_chat = \"0.5\"", "general_chat = 0.5");
        let error = broken(&text);
        assert_eq!((error.key.as_str(), error.line), ("actions.general_chat", Some(line_in(&text, "general_chat"))));
        assert!(error.message.contains("quote it") && error.message.contains("\"0.5\""), "{error}");
    }

    #[test]
    fn missing_price_is_refused() {
        let text = replaced("planner = 1\n", "");
        assert_broken(&text, "actions.planner", Some(line_in(&text, "[actions]")), "missing");
        let text = replaced("sonnet = 3\n", "");
        assert_broken(&text, "models.sonnet", Some(line_in(&text, "[models]")), "missing");
    }

    #[test]
    fn missing_limit_is_refused() {
        let text = replaced("limit_summary_calls = 1\n", "");
        assert_broken(&text, "limits.limit_summary_calls", Some(line_in(&text, "[limits]")), "missing");
    }

    #[test]
    fn missing_section_is_refused_without_a_line() {
        let start = DEFAULT.find("# Which model tier").expect("difficulty comment");
        let text = &DEFAULT[..start];
        assert_broken(text, "difficulty.easy", None, "needs a `[difficulty]` section");
    }

    #[test]
    fn zero_absurd_and_non_integer_limits_are_refused() {
        let text = replaced("max_iterations = 5", "max_iterations = 0");
        assert_broken(&text, "limits.max_iterations", Some(line_in(&text, "max_iterations = 0")), "between 1 and 100");
        let text = replaced("max_iterations = 5", "max_iterations = 101");
        assert_broken(&text, "limits.max_iterations", Some(line_in(&text, "max_iterations = 101")), "between 1");
        let text = replaced("max_iterations = 5", "max_iterations = -5");
        assert_broken(&text, "limits.max_iterations", Some(line_in(&text, "max_iterations = -5")), "between 1");
        let text = replaced("explain_calls = 1", "explain_calls = \"1\"");
        assert_broken(&text, "limits.explain_calls", Some(line_in(&text, "explain_calls = \"1\"")), "integer");
        let text = replaced("explain_calls = 1", "explain_calls = 1.0");
        assert_broken(&text, "limits.explain_calls", Some(line_in(&text, "explain_calls = 1.0")), "integer");
        // The bound itself is allowed.
        let catalog = Catalog::parse(&replaced("max_iterations = 5", "max_iterations = 100"), "t").expect("parses");
        assert_eq!(catalog.limits().max_iterations, LIMIT_MAX);
    }

    #[test]
    fn unknown_tier_or_difficulty_is_refused() {
        let text = replaced("hard = \"opus\"", "hard = \"gpt5\"");
        assert_broken(&text, "difficulty.hard", Some(line_in(&text, "\"gpt5\"")), "names no model");
        let text = replaced("hard = \"opus\"", "hard = \"opus\"\nextreme = \"opus\"");
        assert_broken(&text, "difficulty.extreme", Some(line_in(&text, "extreme")), "unknown difficulty");
        let text = replaced("hard = \"opus\"", "hard = 3");
        assert_broken(&text, "difficulty.hard", Some(line_in(&text, "hard = 3")), "names no model");
    }

    #[test]
    fn syntax_errors_name_the_line() {
        let text = replaced("sonnet = 3", "sonnet = = 3");
        assert_broken(&text, "models.sonnet", Some(line_in(&text, "sonnet = = 3")), "not valid TOML");
        let text = replaced("opus = 8", "opus = 8\nflash = 2");
        assert_broken(&text, "models.flash", Some(line_in(&text, "flash = 2")), "duplicate");
        let text = replaced("[limits]", "[limits");
        assert_broken(&text, "limits", Some(line_in(&text, "[limits")), "not valid TOML");
        // A line that defines no key: the error still has the line.
        let text = replaced("sonnet = 3", "sonnet 3");
        assert_broken(&text, "", Some(line_in(&text, "sonnet 3")), "not valid TOML");
    }

    #[test]
    fn the_first_problem_in_file_order_is_reported() {
        let text = replaced("flash = 1", "flash = -1").replace("image = 2", "image = 0.5");
        assert_broken(&text, "models.flash", Some(line_in(&text, "flash = -1")), "negative");
    }

    #[test]
    fn display_is_file_line_key_message() {
        let text = replaced("opus = 8", "opus = 8\ngpt5 = 20");
        let error = broken(&text);
        let line = line_in(&text, "gpt5");
        assert_eq!(error.to_string(), format!("test.toml:{line}: models.gpt5: {}", error.message));
        let no_line = CatalogError { origin: "x.toml".into(), line: None, key: "limits.a".into(), message: "m".into() };
        assert_eq!(no_line.to_string(), "x.toml: limits.a: m");
    }
}
