//! Parsing request values into ledger types at the edge, and rendering ledger values for the
//! wire. Everything here is a pure function; every failure is an [`ApiError`] naming the field.
//! The CLI uses the same functions, so its output has the API's shapes. [`runs`] renders runs and
//! their events, [`jobs`] renders jobs and parses the worker protocol.

pub mod allowances;
pub mod jobs;
pub mod runs;

use ledger::{AccountId, Amount, Entry, Grant, HoldId, IdError, Reference, Timestamp};
use serde_json::value::RawValue;
use serde_json::{Map, Value};
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

use crate::dto::{AccountResponse, EntryResponse, GrantResponse, HoldResponse};
use crate::error::ApiError;

const NANOS_PER_MICRO: i128 = 1_000;

/// Parses an amount from its raw JSON: a string holding a decimal, or a number whose literal
/// text is such a decimal. Zero is allowed; see [`parse_positive_amount`].
pub fn parse_amount(field: &str, raw: &RawValue) -> Result<Amount, ApiError> {
    let text = raw.get().trim();
    let literal = if text.starts_with('"') {
        serde_json::from_str::<String>(text)
            .map_err(|_| ApiError::invalid_amount(format!("{field}: not a valid JSON string")))?
    } else if text.starts_with(|c: char| c.is_ascii_digit() || c == '-') {
        text.to_owned()
    } else {
        return Err(ApiError::invalid_amount(format!(
            "{field}: an amount is a decimal string such as \"17\" or \"0.5\""
        )));
    };
    Amount::parse(&literal).map_err(|error| ApiError::invalid_amount(format!("{field}: {error}")))
}

pub fn parse_positive_amount(field: &str, raw: &RawValue) -> Result<Amount, ApiError> {
    let amount = parse_amount(field, raw)?;
    if amount.is_zero() {
        return Err(ApiError::invalid_amount(format!("{field}: {}", ledger::AmountError::Zero)));
    }
    Ok(amount)
}

pub fn parse_account_id(text: &str) -> Result<AccountId, ApiError> {
    AccountId::parse(text).map_err(|error| ApiError::invalid_request(error.to_string()))
}

/// A run, thread, job or artifact id (in a path or a body) parsed with `parse` (`RunId::parse`,
/// …): the id grammar (`[A-Za-z0-9._-]`, 1–128), checked at the edge so nothing else ever reaches
/// a store query. `field` names the field in the error.
pub fn parse_id<T>(field: &str, text: &str, parse: fn(&str) -> Result<T, IdError>) -> Result<T, ApiError> {
    parse(text).map_err(|error| ApiError::invalid_request(format!("{field}: {}", error.rule)))
}

pub fn parse_hold_id(text: &str) -> Result<HoldId, ApiError> {
    HoldId::parse(text).map_err(|error| ApiError::invalid_request(error.to_string()))
}

pub fn parse_reference(text: Option<&str>) -> Result<Option<Reference>, ApiError> {
    text.map(|text| Reference::parse(text).map_err(|error| ApiError::invalid_request(error.to_string()))).transpose()
}

/// Parses an RFC 3339 time (any offset) into the ledger's UTC microseconds. Sub-microsecond
/// digits are truncated toward the past.
pub fn parse_time(field: &str, text: &str) -> Result<Timestamp, ApiError> {
    let at = OffsetDateTime::parse(text, &Rfc3339).map_err(|_| {
        ApiError::invalid_request(format!("{field}: expected an RFC 3339 time such as 2030-01-31T12:00:00Z"))
    })?;
    let micros = at.unix_timestamp_nanos().div_euclid(NANOS_PER_MICRO);
    let micros = i64::try_from(micros).map_err(|_| ApiError::invalid_request(format!("{field}: out of range")))?;
    Ok(Timestamp::from_micros(micros))
}

/// RFC 3339 in UTC (`Z`), with fractional seconds only when there are some.
pub fn format_time(at: Timestamp) -> String {
    OffsetDateTime::from_unix_timestamp_nanos(i128::from(at.micros()) * NANOS_PER_MICRO)
        .ok()
        .and_then(|at| at.format(&Rfc3339).ok())
        // Only times beyond year 9999 land here; the ledger never makes one from valid input.
        .unwrap_or_else(|| "9999-12-31T23:59:59.999999Z".to_owned())
}

/// A time to live in seconds: the default when absent, else 1..=`max`.
pub fn parse_ttl(ttl_seconds: Option<u64>, default: u64, max: u64) -> Result<u64, ApiError> {
    let ttl_seconds = ttl_seconds.unwrap_or(default);
    if !(1..=max).contains(&ttl_seconds) {
        return Err(ApiError::invalid_request(format!("ttl_seconds: must be between 1 and {max}")));
    }
    Ok(ttl_seconds)
}

/// Metadata as stored: a JSON object in compact form, at most `bytes_max` bytes. Absent or
/// null is the empty object.
pub fn metadata_text(metadata: Option<&Value>, bytes_max: usize) -> Result<String, ApiError> {
    let object = match metadata {
        None | Some(Value::Null) => return Ok("{}".to_owned()),
        Some(Value::Object(object)) => object,
        Some(_) => return Err(ApiError::invalid_request("metadata: must be a JSON object")),
    };
    let text = Value::Object(object.clone()).to_string();
    if text.len() > bytes_max {
        return Err(ApiError::invalid_request(format!("metadata: at most {bytes_max} bytes of JSON")));
    }
    Ok(text)
}

/// Stored metadata back as JSON. Stores keep what [`metadata_text`] produced; anything else
/// would be corruption, shown as an empty object rather than failing the read.
pub fn metadata_value(text: &str) -> Value {
    match serde_json::from_str::<Value>(text) {
        Ok(value @ Value::Object(_)) => value,
        _ => {
            tracing::warn!("stored metadata is not a JSON object; shown as {{}}");
            Value::Object(Map::new())
        }
    }
}

pub fn hold_response(hold: &ledger::Hold) -> HoldResponse {
    HoldResponse {
        hold_id: hold.hold_id.to_string(),
        account_id: hold.account_id.to_string(),
        amount: hold.amount.to_string(),
        captured: hold.captured.to_string(),
        remaining: hold.remaining.to_string(),
        state: hold.state.as_str().to_owned(),
        expires_at: format_time(hold.expires_at),
        created_at: format_time(hold.created_at),
        reference: hold.reference.as_ref().map(ToString::to_string),
        metadata: metadata_value(&hold.metadata),
    }
}

/// A grant with `remaining` given by the caller (free plus pinned credits, where known).
pub fn grant_response(grant: &Grant, remaining: Amount) -> GrantResponse {
    GrantResponse {
        grant_id: grant.grant_id.to_string(),
        kind: grant.kind.as_str().to_owned(),
        amount: grant.amount.to_string(),
        remaining: remaining.to_string(),
        priority: grant.priority,
        expires_at: grant.expires_at.map(format_time),
        reference: grant.reference.as_ref().map(ToString::to_string),
        metadata: metadata_value(&grant.metadata),
        created_at: format_time(grant.created_at),
        voided_at: grant.voided_at.map(format_time),
    }
}

/// An account as it reads now: its figures and every grant with credits left, in spend order.
/// A grant's `remaining` is its free part plus what active holds reserved from it (its kept
/// `pinned`; the view has already returned what due holds reserved).
pub fn account_response(view: &store::AccountView) -> AccountResponse {
    let mut grants: Vec<&Grant> = view.state.grants.iter().collect();
    grants.sort_by(|a, b| a.spend_order_key().cmp(&b.spend_order_key()));
    let grants = grants
        .into_iter()
        .filter_map(|grant| {
            let remaining = grant.free.plus(grant.pinned);
            (!remaining.is_zero()).then(|| grant_response(grant, remaining))
        })
        .collect();
    AccountResponse {
        account_id: view.state.account_id.to_string(),
        balance: view.balances.balance.to_string(),
        held: view.balances.held.to_string(),
        available: view.balances.available.to_string(),
        low_balance_threshold: view.state.low_balance_threshold.map(|threshold| threshold.to_string()),
        grants,
    }
}

pub fn entry_response(entry: &Entry) -> EntryResponse {
    EntryResponse {
        seq: entry.seq,
        kind: entry.kind.as_str().to_owned(),
        amount: entry.amount.to_string(),
        hold_id: entry.hold_id.as_ref().map(ToString::to_string),
        grant_id: entry.grant_id.as_ref().map(ToString::to_string),
        reference: entry.reference.as_ref().map(ToString::to_string),
        balance_after: entry.balance_after.to_string(),
        held_after: entry.held_after.to_string(),
        at: format_time(entry.at),
        idempotency_key: entry.idempotency_key.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw(text: &str) -> Box<RawValue> {
        RawValue::from_string(text.to_owned()).expect("valid JSON in test")
    }

    #[test]
    fn amounts_parse_from_strings_and_exact_number_literals() {
        assert_eq!(parse_amount("amount", &raw("\"17\"")).map(|a| a.micros()), Ok(17_000_000));
        assert_eq!(parse_amount("amount", &raw("0.5")).map(|a| a.micros()), Ok(500_000));
        assert_eq!(parse_amount("amount", &raw("\"0.000125\"")).map(|a| a.micros()), Ok(125));
        for bad in ["1e3", "-1", "\"-1\"", "\"NaN\"", "1.0000001", "1000000000001", "null", "true", "{}", "[]", "\"\""]
        {
            let error = parse_amount("amount", &raw(bad)).expect_err(bad);
            assert_eq!(error.code(), "invalid_amount", "{bad}");
        }
        assert_eq!(parse_positive_amount("amount", &raw("0")).map_err(|e| e.code()), Err("invalid_amount"));
    }

    #[test]
    fn times_round_trip_in_utc() {
        let at = parse_time("expires_at", "2030-01-31T12:00:00.5+01:00").expect("valid time");
        assert_eq!(format_time(at), "2030-01-31T11:00:00.5Z");
        assert_eq!(format_time(Timestamp::from_micros(0)), "1970-01-01T00:00:00Z");
        assert!(parse_time("expires_at", "tomorrow").is_err());
    }

    #[test]
    fn metadata_must_be_a_small_object() {
        assert_eq!(metadata_text(None, 10).ok().as_deref(), Some("{}"));
        assert_eq!(metadata_text(Some(&serde_json::json!({"a": 1})), 10).ok().as_deref(), Some(r#"{"a":1}"#));
        assert!(metadata_text(Some(&serde_json::json!([1])), 10).is_err());
        assert!(metadata_text(Some(&serde_json::json!({"a": "0123456789"})), 10).is_err());
    }

    #[test]
    fn ttl_is_bounded() {
        assert_eq!(parse_ttl(None, 1200, 86_400).ok(), Some(1200));
        assert!(parse_ttl(Some(0), 1200, 86_400).is_err());
        assert!(parse_ttl(Some(86_401), 1200, 86_400).is_err());
    }
}
