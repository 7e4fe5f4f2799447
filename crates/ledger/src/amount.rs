//! Exact credit amounts.
//!
//! An [`Amount`] is a count of micro-credits (10^-6 credit) in a `u64`. Parsing accepts only plain
//! decimal text, so no value ever passes through floating point. The largest single amount is
//! [`Amount::MAX`] (10^12 credits); an account's balance is capped at [`Amount::BALANCE_MAX`] so
//! every sum the ledger forms fits in an `i64` column of either store.

use std::fmt;

/// Micro-credits per credit: amounts have at most six fractional digits.
pub const MICROS_PER_CREDIT: u64 = 1_000_000;
const FRACTION_DIGITS_MAX: usize = 6;

/// A non-negative, exact number of credits.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Amount(u64);

/// Why a text is not an amount. Every variant maps to the API's `invalid_amount`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AmountError {
    /// Not of the form `digits[.digits]` (signs, exponents, NaN, blanks, empty parts).
    Malformed,
    /// More than six digits after the point.
    TooPrecise,
    /// Above [`Amount::MAX`].
    TooLarge,
    /// Zero where a positive amount is required.
    Zero,
}

impl fmt::Display for AmountError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let text = match self {
            AmountError::Malformed => "an amount is a decimal string such as \"17\" or \"0.5\"",
            AmountError::TooPrecise => "an amount has at most 6 fractional digits",
            AmountError::TooLarge => "an amount is at most 1000000000000 credits",
            AmountError::Zero => "the amount must be greater than zero",
        };
        f.write_str(text)
    }
}

impl Amount {
    pub const ZERO: Amount = Amount(0);
    /// The largest amount a single request may carry: 10^12 credits.
    pub const MAX: Amount = Amount(1_000_000_000_000 * MICROS_PER_CREDIT);
    /// The largest balance an account may reach (10^12 credits), so sums stay within `i64`.
    pub const BALANCE_MAX: Amount = Amount(1_000_000_000_000 * MICROS_PER_CREDIT);

    pub const fn from_micros(micros: u64) -> Amount {
        Amount(micros)
    }

    pub const fn from_credits(credits: u64) -> Amount {
        Amount(credits * MICROS_PER_CREDIT)
    }

    pub const fn micros(self) -> u64 {
        self.0
    }

    pub fn is_zero(self) -> bool {
        self.0 == 0
    }

    /// Parses `digits[.digits]` with at most six fractional digits, up to [`Amount::MAX`].
    pub fn parse(text: &str) -> Result<Amount, AmountError> {
        let (whole, fraction) = match text.split_once('.') {
            Some((whole, fraction)) => (whole, Some(fraction)),
            None => (text, None),
        };
        let all_digits = |part: &str| !part.is_empty() && part.bytes().all(|b| b.is_ascii_digit());
        if !all_digits(whole) {
            return Err(AmountError::Malformed);
        }
        if let Some(fraction) = fraction {
            if !all_digits(fraction) {
                return Err(AmountError::Malformed);
            }
            if fraction.len() > FRACTION_DIGITS_MAX {
                return Err(AmountError::TooPrecise);
            }
        }
        let whole = whole.trim_start_matches('0');
        // 10^12 has 13 digits; anything longer is too large without risking overflow.
        if whole.len() > 13 {
            return Err(AmountError::TooLarge);
        }
        let whole_value: u64 = if whole.is_empty() { 0 } else { whole.parse().map_err(|_| AmountError::Malformed)? };
        let mut fraction_value: u64 = 0;
        let fraction = fraction.unwrap_or("");
        for index in 0..FRACTION_DIGITS_MAX {
            let digit = fraction.as_bytes().get(index).map_or(0, |b| u64::from(b - b'0'));
            fraction_value = fraction_value * 10 + digit;
        }
        let micros = whole_value
            .checked_mul(MICROS_PER_CREDIT)
            .and_then(|value| value.checked_add(fraction_value))
            .ok_or(AmountError::TooLarge)?;
        let amount = Amount(micros);
        if amount > Amount::MAX {
            return Err(AmountError::TooLarge);
        }
        Ok(amount)
    }

    /// Parses an amount that must be greater than zero.
    pub fn parse_positive(text: &str) -> Result<Amount, AmountError> {
        let amount = Amount::parse(text)?;
        if amount.is_zero() {
            return Err(AmountError::Zero);
        }
        Ok(amount)
    }

    pub fn checked_add(self, other: Amount) -> Option<Amount> {
        self.0.checked_add(other.0).map(Amount)
    }

    pub fn checked_sub(self, other: Amount) -> Option<Amount> {
        self.0.checked_sub(other.0).map(Amount)
    }

    /// Addition for sums the ledger has already bounded; overflow is a broken invariant.
    pub fn plus(self, other: Amount) -> Amount {
        self.checked_add(other).expect("amount overflow: a bounded sum exceeded u64")
    }

    /// Subtraction the caller has proven cannot go below zero; underflow is a broken invariant.
    pub fn minus(self, other: Amount) -> Amount {
        self.checked_sub(other).expect("amount underflow: a ledger invariant is broken")
    }

    pub fn saturating_sub(self, other: Amount) -> Amount {
        Amount(self.0.saturating_sub(other.0))
    }

    pub fn min(self, other: Amount) -> Amount {
        Amount(self.0.min(other.0))
    }

    pub fn sum<I: IntoIterator<Item = Amount>>(amounts: I) -> Amount {
        amounts.into_iter().fold(Amount::ZERO, Amount::plus)
    }
}

/// Canonical form: no trailing zeros, no trailing point (`17`, `0.5`, `0.000125`).
impl fmt::Display for Amount {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let whole = self.0 / MICROS_PER_CREDIT;
        let fraction = self.0 % MICROS_PER_CREDIT;
        if fraction == 0 {
            return write!(f, "{whole}");
        }
        let digits = format!("{fraction:06}");
        write!(f, "{whole}.{}", digits.trim_end_matches('0'))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn parses_canonical_and_padded_forms() {
        let cases = [("17", 17_000_000), ("0.5", 500_000), ("0.000125", 125), ("007.50", 7_500_000)];
        for (text, micros) in cases {
            assert_eq!(Amount::parse(text), Ok(Amount::from_micros(micros)), "{text}");
        }
        assert_eq!(Amount::parse("1000000000000"), Ok(Amount::MAX));
    }

    #[test]
    fn rejects_everything_else() {
        let malformed = ["", "-1", "+1", "1e3", "NaN", "Infinity", ".5", "5.", " 1", "1 ", "1,5", "0x10"];
        for text in malformed {
            assert_eq!(Amount::parse(text), Err(AmountError::Malformed), "{text:?}");
        }
        assert_eq!(Amount::parse("0.0000001"), Err(AmountError::TooPrecise));
        assert_eq!(Amount::parse("1000000000000.000001"), Err(AmountError::TooLarge));
        assert_eq!(Amount::parse("99999999999999999999999"), Err(AmountError::TooLarge));
        assert_eq!(Amount::parse_positive("0"), Err(AmountError::Zero));
        assert_eq!(Amount::parse_positive("0.000"), Err(AmountError::Zero));
    }

    #[test]
    fn displays_without_trailing_zeros() {
        assert_eq!(Amount::from_micros(17_000_000).to_string(), "17");
        assert_eq!(Amount::from_micros(17_500_000).to_string(), "17.5");
        assert_eq!(Amount::from_micros(125).to_string(), "0.000125");
        assert_eq!(Amount::ZERO.to_string(), "0");
    }

    /// The grammar written a second way, in `u128` so nothing overflows: what [`Amount::parse`]
    /// must answer for `text`. A disagreement is a parser bug.
    fn oracle(text: &str) -> Result<Amount, AmountError> {
        let (whole, fraction) = text.split_once('.').unwrap_or((text, ""));
        let digits = |part: &str| !part.is_empty() && part.chars().all(|c| c.is_ascii_digit());
        if !digits(whole) || (text.contains('.') && !digits(fraction)) {
            return Err(AmountError::Malformed);
        }
        if fraction.len() > FRACTION_DIGITS_MAX {
            return Err(AmountError::TooPrecise);
        }
        let mut micros: u128 = 0;
        for c in whole.trim_start_matches('0').chars() {
            micros = micros.saturating_mul(10).saturating_add(u128::from(c as u8 - b'0'));
        }
        micros = micros.saturating_mul(u128::from(MICROS_PER_CREDIT));
        let padded = format!("{fraction:0<6}");
        micros = micros.saturating_add(padded.parse::<u128>().unwrap_or(0));
        if micros > u128::from(Amount::MAX.micros()) {
            return Err(AmountError::TooLarge);
        }
        Ok(Amount::from_micros(u64::try_from(micros).expect("bounded by Amount::MAX")))
    }

    /// Texts near the grammar: digits, points, signs, exponents, blanks and non-ASCII digits.
    fn amount_like() -> impl Strategy<Value = String> {
        prop_oneof![
            "[0-9]{1,20}(\\.[0-9]{0,9})?",
            "[0-9.+eE -]{0,24}",
            "[0-9]{0,3}[\\u{0660}-\\u{0669}\\u{ff10}-\\u{ff19}٫][0-9]{0,3}",
            ".{0,40}",
        ]
    }

    /// Fixed seed and bounded cases: CI runs the same inputs every time, and writes no files.
    fn config() -> ProptestConfig {
        ProptestConfig {
            cases: 4096,
            rng_seed: proptest::test_runner::RngSeed::Fixed(0x5EED_A40F),
            failure_persistence: None,
            ..ProptestConfig::default()
        }
    }

    proptest! {
        #![proptest_config(config())]

        #[test]
        fn display_then_parse_round_trips(micros in 0..=Amount::MAX.micros()) {
            let amount = Amount::from_micros(micros);
            prop_assert_eq!(Amount::parse(&amount.to_string()), Ok(amount));
        }

        #[test]
        fn parse_accepts_exactly_the_grammar(text in amount_like()) {
            let parsed = Amount::parse(&text);
            prop_assert_eq!(&parsed, &oracle(&text), "{:?}", text);
            if let Ok(amount) = parsed {
                // The canonical text parses back to the same amount.
                prop_assert_eq!(Amount::parse(&amount.to_string()), Ok(amount));
            }
        }

        #[test]
        fn parse_positive_is_parse_without_zero(text in amount_like()) {
            let expected = match Amount::parse(&text) {
                Ok(amount) if amount.is_zero() => Err(AmountError::Zero),
                other => other,
            };
            prop_assert_eq!(Amount::parse_positive(&text), expected);
        }
    }
}
