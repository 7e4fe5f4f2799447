//! Request extractors whose every rejection is a problem+json [`ApiError`].
//!
//! axum's own extractors answer with plain-text bodies and, for JSON, statuses such as 400 or
//! 415; the contract wants `422 invalid_request` (and `413 payload_too_large`) as problem+json.
//! Handlers list the auth extractor first, so a request without a valid token is answered 401
//! or 403 before its path or body is looked at.

use axum::body::Bytes;
use axum::extract::{FromRequest, FromRequestParts, Path, Query, Request};
use axum::http::request::Parts;
use axum::http::{header, Method, StatusCode};
use ledger::Amount;
use serde::de::DeserializeOwned;
use serde_json::Value;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::config::Role;
use crate::error::ApiError;
use crate::state::{token_digest, AppState};

/// Who is calling, as far as rate limits are concerned: which configured token matched, or
/// anyone at all when authentication is off (then every caller shares one budget).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Caller {
    /// The index of the token in [`crate::ApiConfig::tokens`].
    Token(usize),
    Open,
}

fn authorize(parts: &Parts, state: &AppState, required: Role) -> Result<Caller, ApiError> {
    if state.token_digests.is_empty() {
        return Ok(Caller::Open);
    }
    let header = parts
        .headers
        .get(header::AUTHORIZATION)
        .ok_or_else(|| ApiError::unauthorized("an Authorization: Bearer token is required"))?;
    let token = header
        .to_str()
        .ok()
        .and_then(|value| value.split_once(' '))
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .map(|(_, token)| token.trim())
        .ok_or_else(|| ApiError::unauthorized("the Authorization header must be `Bearer <token>`"))?;
    let digest = token_digest(token.as_bytes());
    // Compare with every configured token so timing does not tell which one nearly matched.
    let mut found = None;
    for (index, (candidate, role)) in state.token_digests.iter().enumerate() {
        if bool::from(candidate.ct_eq(&digest)) {
            found = Some((index, *role));
        }
    }
    let (index, role) = found.ok_or_else(|| ApiError::unauthorized("unknown token"))?;
    if !role.allows(required) {
        return Err(ApiError::forbidden(format!("this route needs the {} role", required.as_str())));
    }
    Ok(Caller::Token(index))
}

/// The caller holds an admin token (or auth is off).
pub struct RequireAdmin(Caller);

/// The caller holds a service or admin token (or auth is off).
pub struct RequireService(Caller);

impl RequireAdmin {
    pub fn caller(&self) -> Caller {
        self.0
    }
}

impl RequireService {
    pub fn caller(&self) -> Caller {
        self.0
    }
}

impl FromRequestParts<AppState> for RequireAdmin {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        authorize(parts, state, Role::Admin).map(RequireAdmin)
    }
}

impl FromRequestParts<AppState> for RequireService {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        authorize(parts, state, Role::Service).map(RequireService)
    }
}

/// Path parameters; a malformed one is `422 invalid_request`.
pub struct ApiPath<T>(pub T);

impl<T, S> FromRequestParts<S> for ApiPath<T>
where
    T: DeserializeOwned + Send,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        match Path::<T>::from_request_parts(parts, state).await {
            Ok(Path(value)) => Ok(ApiPath(value)),
            Err(rejection) => Err(ApiError::invalid_request(rejection.body_text())),
        }
    }
}

/// Query parameters; a malformed or unknown one is `422 invalid_request`.
pub struct ApiQuery<T>(pub T);

impl<T, S> FromRequestParts<S> for ApiQuery<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        match Query::<T>::from_request_parts(parts, state).await {
            Ok(Query(value)) => Ok(ApiQuery(value)),
            Err(rejection) => Err(ApiError::invalid_request(rejection.body_text())),
        }
    }
}

/// The optional `Idempotency-Key` header: 1..=255 visible ASCII characters.
#[derive(Debug, Clone, Default)]
pub struct IdempotencyKey(Option<String>);

impl IdempotencyKey {
    pub fn as_str(&self) -> Option<&str> {
        self.0.as_deref()
    }
}

fn parse_idempotency_key(parts: &Parts) -> Result<IdempotencyKey, ApiError> {
    let mut values = parts.headers.get_all("idempotency-key").iter();
    let Some(value) = values.next() else { return Ok(IdempotencyKey(None)) };
    if values.next().is_some() {
        return Err(ApiError::invalid_request("Idempotency-Key: give it once"));
    }
    let bytes = value.as_bytes();
    let valid = (1..=store::IDEMPOTENCY_KEY_LENGTH_MAX).contains(&bytes.len())
        && bytes.iter().all(|byte| (0x21..=0x7e).contains(byte));
    if !valid {
        return Err(ApiError::invalid_request(format!(
            "Idempotency-Key: 1-{} visible ASCII characters",
            store::IDEMPOTENCY_KEY_LENGTH_MAX
        )));
    }
    let text = String::from_utf8_lossy(bytes).into_owned();
    Ok(IdempotencyKey(Some(text)))
}

impl<S: Send + Sync> FromRequestParts<S> for IdempotencyKey {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, ApiError> {
        parse_idempotency_key(parts)
    }
}

/// A JSON object body parsed into `T`, keeping the bytes for the idempotency fingerprint.
///
/// An empty body reads as `{}` (so `release` needs none); any other body must be sent as
/// `application/json` (or a `+json` type) and be a single JSON object.
pub struct JsonBody<T> {
    pub value: T,
    bytes: Bytes,
    method: Method,
    path: String,
}

fn is_json_content_type(value: Option<&header::HeaderValue>) -> bool {
    let Some(value) = value.and_then(|value| value.to_str().ok()) else { return false };
    let essence = value.split(';').next().unwrap_or("").trim().to_ascii_lowercase();
    essence == "application/json" || (essence.starts_with("application/") && essence.ends_with("+json"))
}

impl<T: DeserializeOwned> FromRequest<AppState> for JsonBody<T> {
    type Rejection = ApiError;

    async fn from_request(request: Request, state: &AppState) -> Result<Self, ApiError> {
        let method = request.method().clone();
        let path = request.uri().path().to_owned();
        let json_content_type = is_json_content_type(request.headers().get(header::CONTENT_TYPE));
        let bytes = Bytes::from_request(request, state).await.map_err(|rejection| {
            if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
                ApiError::payload_too_large(state.config.request_body_bytes_max)
            } else {
                ApiError::invalid_request(rejection.body_text())
            }
        })?;
        let bytes = if bytes.iter().all(u8::is_ascii_whitespace) {
            Bytes::from_static(b"{}")
        } else if !json_content_type {
            return Err(ApiError::invalid_request("the body must be sent as Content-Type: application/json"));
        } else {
            bytes
        };
        if bytes.iter().find(|byte| !byte.is_ascii_whitespace()) != Some(&b'{') {
            return Err(ApiError::invalid_request("the body must be a JSON object"));
        }
        let value = serde_json::from_slice::<T>(&bytes)
            .map_err(|error| ApiError::invalid_request(format!("malformed JSON body: {error}")))?;
        Ok(JsonBody { value, bytes, method, path })
    }
}

impl<T> JsonBody<T> {
    /// Hex SHA-256 of method, path and the body as canonical JSON (keys sorted, no blanks),
    /// with `amount` replaced by its canonical text so `17`, `"17"` and `"17.0"` are the same
    /// request and two amounts that differ only past `f64` precision never are.
    pub fn fingerprint(&self, amount: Option<Amount>) -> Result<String, ApiError> {
        let mut json: Value = serde_json::from_slice(&self.bytes)
            .map_err(|error| ApiError::invalid_request(format!("malformed JSON body: {error}")))?;
        if let (Some(amount), Value::Object(object)) = (amount, &mut json) {
            object.insert("amount".to_owned(), Value::String(amount.to_string()));
        }
        let mut canonical = String::new();
        write_canonical(&json, &mut canonical);
        let mut hasher = Sha256::new();
        hasher.update(self.method.as_str().as_bytes());
        hasher.update(b"\n");
        hasher.update(self.path.as_bytes());
        hasher.update(b"\n");
        hasher.update(canonical.as_bytes());
        Ok(hex::encode(hasher.finalize()))
    }
}

/// JSON with object keys sorted at every level, whatever map order serde_json was built with.
fn write_canonical(value: &Value, out: &mut String) {
    match value {
        Value::Object(object) => {
            let mut keys: Vec<&String> = object.keys().collect();
            keys.sort();
            out.push('{');
            for (index, key) in keys.into_iter().enumerate() {
                if index > 0 {
                    out.push(',');
                }
                out.push_str(&Value::String(key.clone()).to_string());
                out.push(':');
                write_canonical(&object[key], out);
            }
            out.push('}');
        }
        Value::Array(items) => {
            out.push('[');
            for (index, item) in items.iter().enumerate() {
                if index > 0 {
                    out.push(',');
                }
                write_canonical(item, out);
            }
            out.push(']');
        }
        scalar => out.push_str(&scalar.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn canonical_json_sorts_keys_at_every_level() {
        let value: Value = serde_json::from_str(r#"{"b": [ {"z": 1, "a": null} ], "a": "x"}"#).expect("valid JSON");
        let mut out = String::new();
        write_canonical(&value, &mut out);
        assert_eq!(out, r#"{"a":"x","b":[{"a":null,"z":1}]}"#);
    }
}
