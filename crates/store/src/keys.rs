//! One key space for every idempotent POST: ledger commands, solves and the responses of the
//! cancel routes all record their `Idempotency-Key` in the ledger's idempotency table, so a key
//! applies once whatever it was first used for, and every key is forgotten after the same
//! retention (the ledger sweep's).
//!
//! A row is `(key, fingerprint, result)`. A ledger command writes its request's fingerprint and
//! its encoded result ([`crate::codec::encode_result`]). The records written here prefix the
//! fingerprint with their kind, so no ledger fingerprint (64 hex digits from the server, or the
//! engine's `Command` text) can ever equal one of theirs: a key first used by another kind of
//! request is a conflict, and a result is only ever decoded by the kind that wrote it
//! ([`crate::protocol::replay`] compares fingerprints before it decodes).

use serde_json::{json, Value};

use crate::codec::undecodable;
use crate::ids::RunId;
use crate::StoreError;

/// How a solve's fingerprint starts in the table.
pub const SOLVE_FINGERPRINT_PREFIX: &str = "solve:";
/// How a recorded response's fingerprint starts in the table.
pub const RESPONSE_FINGERPRINT_PREFIX: &str = "response:";

/// What a solve's key names.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum KeyedRun {
    /// A solve with the same fingerprint started this run.
    Started(RunId),
    /// Another request used the key.
    Conflict,
}

/// A response recorded under a key: replayed, status and body as they were, to the same request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RecordedResponse {
    /// The request's fingerprint, as the route computes it (without the prefix).
    pub fingerprint: String,
    pub status: u16,
    /// The response body, exactly as first sent.
    pub body: String,
}

/// What a key holds, as a response route sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum KeyUse {
    Response(RecordedResponse),
    /// A ledger command or a solve: any response request with this key conflicts.
    Other,
}

/// The `(fingerprint, result)` a solve records for its key.
pub fn solve_record(fingerprint: &str, run_id: &RunId) -> (String, String) {
    (format!("{SOLVE_FINGERPRINT_PREFIX}{fingerprint}"), json!({ "run_id": run_id.as_str() }).to_string())
}

/// What a stored row says to a solve whose request has `fingerprint`.
pub fn keyed_run(fingerprint: &str, stored_fingerprint: &str, stored_result: &str) -> Result<KeyedRun, StoreError> {
    let same = stored_fingerprint.strip_prefix(SOLVE_FINGERPRINT_PREFIX).is_some_and(|stored| stored == fingerprint);
    if !same {
        return Ok(KeyedRun::Conflict);
    }
    let value: Value =
        serde_json::from_str(stored_result).map_err(|error| undecodable("solve key record").with_source(error))?;
    let run_id = value.get("run_id").and_then(Value::as_str).ok_or_else(|| undecodable("solve key record"))?;
    let run_id = RunId::parse(run_id).map_err(|_| undecodable("solve key run_id"))?;
    Ok(KeyedRun::Started(run_id))
}

/// The `(fingerprint, result)` a response records for its key.
pub fn response_record(response: &RecordedResponse) -> (String, String) {
    let result = json!({ "status": response.status, "body": response.body }).to_string();
    (format!("{RESPONSE_FINGERPRINT_PREFIX}{}", response.fingerprint), result)
}

/// What a stored row is, as a response route sees it.
pub fn key_use(stored_fingerprint: &str, stored_result: &str) -> Result<KeyUse, StoreError> {
    let Some(fingerprint) = stored_fingerprint.strip_prefix(RESPONSE_FINGERPRINT_PREFIX) else {
        return Ok(KeyUse::Other);
    };
    let value: Value =
        serde_json::from_str(stored_result).map_err(|error| undecodable("recorded response").with_source(error))?;
    let status = value
        .get("status")
        .and_then(Value::as_u64)
        .and_then(|status| u16::try_from(status).ok())
        .ok_or_else(|| undecodable("recorded response status"))?;
    let body = value.get("body").and_then(Value::as_str).ok_or_else(|| undecodable("recorded response body"))?;
    Ok(KeyUse::Response(RecordedResponse { fingerprint: fingerprint.to_owned(), status, body: body.to_owned() }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_solve_record_reads_back_only_for_its_own_fingerprint() {
        let run_id = RunId::parse("run-1").expect("valid");
        let (fingerprint, result) = solve_record("abc", &run_id);
        assert_eq!(keyed_run("abc", &fingerprint, &result).expect("decodes"), KeyedRun::Started(run_id));
        assert_eq!(keyed_run("abd", &fingerprint, &result).expect("decodes"), KeyedRun::Conflict);
        // A ledger command's row (its fingerprint has no prefix) is a conflict, never decoded.
        assert_eq!(keyed_run("abc", "abc", "not json").expect("not decoded"), KeyedRun::Conflict);
    }

    #[test]
    fn a_response_record_round_trips_and_other_rows_are_other() {
        let response = RecordedResponse { fingerprint: "f".to_owned(), status: 202, body: r#"{"a":"ü"}"#.to_owned() };
        let (fingerprint, result) = response_record(&response);
        assert_eq!(key_use(&fingerprint, &result).expect("decodes"), KeyUse::Response(response));
        let (solve_fingerprint, solve_result) = solve_record("f", &RunId::parse("r").expect("valid"));
        assert_eq!(key_use(&solve_fingerprint, &solve_result).expect("not decoded"), KeyUse::Other);
        assert_eq!(key_use("f", "{}").expect("not decoded"), KeyUse::Other, "a ledger row");
        assert!(key_use(&fingerprint, "{}").is_err(), "a damaged record is corrupt");
    }
}
