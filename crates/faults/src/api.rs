//! The few HTTP calls the driver makes, and exact amounts.
//!
//! Why a reply is three-valued (answered, lost): a request in flight when the server is killed
//! may or may not have been applied, and the driver must not guess — it replays the request's
//! Idempotency-Key after the restart, and the replay returns the first result.

use std::time::Duration;

use serde_json::Value;

/// One request's longest wait; a request still open at a kill fails long before this.
pub const REQUEST_SECONDS_MAX: u64 = 15;

/// What came back from one request.
#[derive(Clone, Debug, PartialEq)]
pub enum Reply {
    /// An HTTP answer: status and JSON body (`Null` when the body is not JSON).
    Answered { status: u16, body: Value },
    /// No answer (connection refused or reset, timeout): the request may or may not have applied.
    Lost(String),
}

impl Reply {
    /// Answered with a status that says whether the request applied: 2xx (yes) or 4xx (no).
    /// A 5xx (e.g. `store_unavailable` while the store restarts) says nothing for certain.
    pub fn is_definite(&self) -> bool {
        matches!(self, Reply::Answered { status, .. } if *status < 500)
    }

    pub fn status(&self) -> Option<u16> {
        match self {
            Reply::Answered { status, .. } => Some(*status),
            Reply::Lost(_) => None,
        }
    }

    pub fn body(&self) -> &Value {
        match self {
            Reply::Answered { body, .. } => body,
            Reply::Lost(_) => &Value::Null,
        }
    }
}

async fn finish(sent: reqwest::Result<reqwest::Response>) -> Reply {
    match sent {
        Ok(response) => {
            let status = response.status().as_u16();
            match response.bytes().await {
                Ok(bytes) => Reply::Answered { status, body: serde_json::from_slice(&bytes).unwrap_or(Value::Null) },
                Err(error) => Reply::Lost(format!("body: {error}")),
            }
        }
        Err(error) => Reply::Lost(error.to_string()),
    }
}

/// `POST base+path` with a JSON body and, when given, an Idempotency-Key.
pub async fn post(client: &reqwest::Client, base: &str, path: &str, key: Option<&str>, body: &Value) -> Reply {
    let mut request = client.post(format!("{base}{path}")).json(body).timeout(Duration::from_secs(REQUEST_SECONDS_MAX));
    if let Some(key) = key {
        request = request.header("Idempotency-Key", key);
    }
    finish(request.send().await).await
}

/// `GET base+path`.
pub async fn get(client: &reqwest::Client, base: &str, path: &str) -> Reply {
    finish(client.get(format!("{base}{path}")).timeout(Duration::from_secs(REQUEST_SECONDS_MAX)).send().await).await
}

/// `GET` that must answer 200 or 404 (`Ok(None)`); anything else is an error of the run.
pub async fn get_ok(client: &reqwest::Client, base: &str, path: &str) -> anyhow::Result<Option<Value>> {
    match get(client, base, path).await {
        Reply::Answered { status: 200, body } => Ok(Some(body)),
        Reply::Answered { status: 404, .. } => Ok(None),
        other => anyhow::bail!("GET {path}: {other:?}"),
    }
}

/// Micro-credits of a decimal amount text ("17", "0.5", "0.000125").
pub fn micros(text: &str) -> Option<i64> {
    let (whole, fraction) = text.split_once('.').unwrap_or((text, ""));
    if whole.is_empty() || fraction.len() > 6 || !whole.bytes().chain(fraction.bytes()).all(|b| b.is_ascii_digit()) {
        return None;
    }
    let whole: i64 = whole.parse().ok()?;
    let fraction: i64 = format!("{fraction:0<6}").parse().ok()?;
    whole.checked_mul(1_000_000)?.checked_add(fraction)
}

/// The amount text of micro-credits (for messages and request bodies).
pub fn amount_text(micros: i64) -> String {
    let sign = if micros < 0 { "-" } else { "" };
    let micros = micros.unsigned_abs();
    let (whole, fraction) = (micros / 1_000_000, micros % 1_000_000);
    if fraction == 0 {
        return format!("{sign}{whole}");
    }
    let fraction = format!("{fraction:06}");
    format!("{sign}{whole}.{}", fraction.trim_end_matches('0'))
}

/// A JSON string field as micro-credits.
pub fn field_micros(value: &Value, field: &str) -> Option<i64> {
    value.get(field).and_then(Value::as_str).and_then(micros)
}

#[cfg(test)]
mod tests {
    use super::{amount_text, micros};

    #[test]
    fn amounts_round_trip() {
        assert_eq!(micros("17"), Some(17_000_000));
        assert_eq!(micros("0.5"), Some(500_000));
        assert_eq!(micros("0.000125"), Some(125));
        assert_eq!(micros("1.0000001"), None);
        assert_eq!(micros("-1"), None);
        assert_eq!(micros(""), None);
        assert_eq!(amount_text(17_000_000), "17");
        assert_eq!(amount_text(500_000), "0.5");
        assert_eq!(amount_text(-1_250_000), "-1.25");
    }
}
