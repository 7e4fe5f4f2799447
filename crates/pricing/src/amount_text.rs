//! Amounts in stored documents, as serde helpers: canonical decimal text (`"17"`, `"0.5"`),
//! never a JSON number, so no reader of a document can pass an amount through a float.
//!
//! Use with `#[serde(with = "pricing::amount_text")]` on an [`Amount`] field, or
//! `#[serde(with = "pricing::amount_text::option")]` on an `Option<Amount>` (absent is `null`).
//! Reading goes through [`Amount::parse`], so a stored amount that is not one is an error.

use std::borrow::Cow;

use ledger::Amount;
use serde::de::Error as _;
use serde::{Deserialize, Deserializer, Serializer};

pub fn serialize<S: Serializer>(amount: &Amount, serializer: S) -> Result<S::Ok, S::Error> {
    serializer.collect_str(amount)
}

pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Amount, D::Error> {
    let text = Cow::<'de, str>::deserialize(deserializer)?;
    Amount::parse(&text).map_err(|error| D::Error::custom(format!("amount {text:?}: {error}")))
}

/// The same for `Option<Amount>`: `None` is `null`.
pub mod option {
    use super::*;

    pub fn serialize<S: Serializer>(amount: &Option<Amount>, serializer: S) -> Result<S::Ok, S::Error> {
        match amount {
            Some(amount) => serializer.collect_str(amount),
            None => serializer.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<Amount>, D::Error> {
        let text = Option::<Cow<'de, str>>::deserialize(deserializer)?;
        text.map(|text| Amount::parse(&text).map_err(|error| D::Error::custom(format!("amount {text:?}: {error}"))))
            .transpose()
    }
}

#[cfg(test)]
mod tests {
    use ledger::Amount;
    use serde::{Deserialize, Serialize};

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    struct Document {
        #[serde(with = "crate::amount_text")]
        cost: Amount,
        #[serde(default, with = "crate::amount_text::option")]
        captured: Option<Amount>,
    }

    #[test]
    fn amounts_are_canonical_text_and_read_back_exactly() {
        let document = Document { cost: Amount::from_micros(500_001), captured: None };
        let text = serde_json::to_string(&document).expect("serializes");
        assert_eq!(text, r#"{"cost":"0.500001","captured":null}"#);
        assert_eq!(serde_json::from_str::<Document>(&text).expect("reads back"), document);
        let full = Document { cost: Amount::from_credits(17), captured: Some(Amount::ZERO) };
        let text = serde_json::to_string(&full).expect("serializes");
        assert_eq!(text, r#"{"cost":"17","captured":"0"}"#);
        assert_eq!(serde_json::from_str::<Document>(&text).expect("reads back"), full);
        assert_eq!(serde_json::from_str::<Document>(r#"{"cost":"1"}"#).expect("absent is none").captured, None);
    }

    #[test]
    fn numbers_and_malformed_text_are_refused() {
        for bad in [r#"{"cost":17}"#, r#"{"cost":"1e3"}"#, r#"{"cost":"-1"}"#, r#"{"cost":"1","captured":0.5}"#] {
            assert!(serde_json::from_str::<Document>(bad).is_err(), "{bad}");
        }
    }
}
