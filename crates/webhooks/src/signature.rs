//! Standard Webhooks signatures: a delivery carries `webhook-id`, `webhook-timestamp` (Unix
//! seconds) and `webhook-signature: v1,<base64 HMAC-SHA256 of "{id}.{timestamp}.{body}">`, keyed
//! with the endpoint's secret, shown to its owner once as `whsec_<base64>`.
//!
//! Written by hand on `hmac`/`sha2` because the specification is these few lines and its Rust
//! crate pulls an HTTP stack with it; the published test vector and a property test against
//! [`verify`] hold it to the specification.

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use hmac::{Hmac, Mac};
use sha2::Sha256;
use subtle::ConstantTimeEq;

/// The prefix of a secret's text form.
pub const SECRET_PREFIX: &str = "whsec_";
/// Random bytes of a new secret (the specification asks for 24 to 64).
pub const SECRET_BYTES: usize = 32;
/// Most signatures one `webhook-signature` header may list (rotation sends old and new).
pub const SIGNATURES_MAX: usize = 8;

/// An endpoint's signing secret. `Debug` never shows it.
#[derive(Clone, PartialEq, Eq)]
pub struct SigningSecret(Vec<u8>);

impl std::fmt::Debug for SigningSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SigningSecret(…)")
    }
}

/// Why a secret or a signature header does not read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SignatureError {
    /// The secret is not `whsec_` followed by base64 of 24 to 64 bytes.
    MalformedSecret,
    /// No `v1,` signature in the header matches.
    NoMatch,
    /// The timestamp is further from now than the tolerance.
    Stale,
}

impl std::fmt::Display for SignatureError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            SignatureError::MalformedSecret => "the secret must be whsec_ followed by base64 of 24 to 64 bytes",
            SignatureError::NoMatch => "no signature matches",
            SignatureError::Stale => "the timestamp is outside the tolerance",
        })
    }
}

impl std::error::Error for SignatureError {}

impl SigningSecret {
    /// A new random secret.
    pub fn generate() -> SigningSecret {
        let mut bytes = vec![0u8; SECRET_BYTES];
        rand::fill(&mut bytes[..]);
        SigningSecret(bytes)
    }

    /// Reads `whsec_<base64>`.
    pub fn parse(text: &str) -> Result<SigningSecret, SignatureError> {
        let encoded = text.strip_prefix(SECRET_PREFIX).ok_or(SignatureError::MalformedSecret)?;
        let bytes = STANDARD.decode(encoded).map_err(|_| SignatureError::MalformedSecret)?;
        if !(24..=64).contains(&bytes.len()) {
            return Err(SignatureError::MalformedSecret);
        }
        Ok(SigningSecret(bytes))
    }

    /// The text form shown to the endpoint's owner once.
    pub fn reveal(&self) -> String {
        format!("{SECRET_PREFIX}{}", STANDARD.encode(&self.0))
    }

    fn mac(&self, message_id: &str, timestamp_seconds: i64, body: &[u8]) -> [u8; 32] {
        let mut mac = Hmac::<Sha256>::new_from_slice(&self.0).expect("HMAC takes a key of any length");
        mac.update(message_id.as_bytes());
        mac.update(b".");
        mac.update(timestamp_seconds.to_string().as_bytes());
        mac.update(b".");
        mac.update(body);
        mac.finalize().into_bytes().into()
    }
}

/// The `webhook-signature` header value of a delivery.
pub fn sign(secret: &SigningSecret, message_id: &str, timestamp_seconds: i64, body: &[u8]) -> String {
    format!("v1,{}", STANDARD.encode(secret.mac(message_id, timestamp_seconds, body)))
}

/// Checks a delivery as a receiver would: one of the header's (space-separated) `v1,`
/// signatures matches, compared in constant time, and the timestamp is within
/// `tolerance_seconds` of `now_seconds`.
pub fn verify(
    secret: &SigningSecret,
    message_id: &str,
    timestamp_seconds: i64,
    body: &[u8],
    header: &str,
    now_seconds: i64,
    tolerance_seconds: i64,
) -> Result<(), SignatureError> {
    if now_seconds.abs_diff(timestamp_seconds) > tolerance_seconds.unsigned_abs() {
        return Err(SignatureError::Stale);
    }
    let expected = secret.mac(message_id, timestamp_seconds, body);
    let matched = header
        .split(' ')
        .take(SIGNATURES_MAX)
        .filter_map(|entry| entry.strip_prefix("v1,"))
        .filter_map(|encoded| STANDARD.decode(encoded).ok())
        .any(|candidate| bool::from(candidate.as_slice().ct_eq(&expected)));
    if matched {
        Ok(())
    } else {
        Err(SignatureError::NoMatch)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// The Standard Webhooks libraries' published test vector.
    #[test]
    fn the_specifications_vector_signs_as_published() {
        let secret = SigningSecret::parse("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").expect("a valid secret");
        let body = br#"{"test": 2432232314}"#;
        let signature = sign(&secret, "msg_p5jXN8AQM9LWM0D4loKWxJek", 1_614_265_330, body);
        assert_eq!(signature, "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=");
        let header = format!("v1,bm90IHRoaXMgb25l {signature}");
        assert_eq!(
            verify(&secret, "msg_p5jXN8AQM9LWM0D4loKWxJek", 1_614_265_330, body, &header, 1_614_265_400, 300),
            Ok(())
        );
        assert_eq!(
            verify(&secret, "msg_p5jXN8AQM9LWM0D4loKWxJek", 1_614_265_330, body, &header, 1_614_266_000, 300),
            Err(SignatureError::Stale)
        );
    }

    #[test]
    fn secrets_read_back_and_bad_ones_are_refused() {
        let secret = SigningSecret::generate();
        assert_eq!(SigningSecret::parse(&secret.reveal()), Ok(secret.clone()));
        assert_ne!(SigningSecret::generate(), secret, "random");
        assert_eq!(format!("{secret:?}"), "SigningSecret(…)");
        for bad in ["MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw", "whsec_", "whsec_!!!", "whsec_c2hvcnQ="] {
            assert_eq!(SigningSecret::parse(bad), Err(SignatureError::MalformedSecret), "{bad}");
        }
    }

    proptest! {
        /// A delivery verifies under its own secret, id, time and body, and under no change of
        /// any one of them.
        #[test]
        fn a_signature_verifies_only_what_was_signed(
            id in "msg_[a-zA-Z0-9]{1,24}",
            at in 1_600_000_000i64..2_000_000_000,
            body in proptest::collection::vec(any::<u8>(), 0..256),
            flip in 0usize..256,
        ) {
            let secret = SigningSecret::generate();
            let header = sign(&secret, &id, at, &body);
            prop_assert_eq!(verify(&secret, &id, at, &body, &header, at, 300), Ok(()));
            prop_assert_eq!(verify(&SigningSecret::generate(), &id, at, &body, &header, at, 300), Err(SignatureError::NoMatch));
            prop_assert_eq!(verify(&secret, &format!("{id}x"), at, &body, &header, at, 300), Err(SignatureError::NoMatch));
            prop_assert_eq!(verify(&secret, &id, at + 1, &body, &header, at, 300), Err(SignatureError::NoMatch));
            if !body.is_empty() {
                let mut changed = body.clone();
                let index = flip % changed.len();
                changed[index] ^= 1;
                prop_assert_eq!(verify(&secret, &id, at, &changed, &header, at, 300), Err(SignatureError::NoMatch));
            }
        }
    }
}
