use std::fmt;

use crate::Text;
use poem_openapi::Object;
use serde::{Deserialize, Serialize};

/// An amount in minor units (cents) of an ISO 4217 currency; never floating point.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize, Object)]
#[oai(deny_unknown_fields)]
pub struct Money {
    /// Minor units, e.g. 1999 for 19.99.
    pub amount: i64,
    /// ISO 4217 code, e.g. EUR.
    pub currency: Text,
}

impl Money {
    /// The most a price may be, in minor units: ten billion of a currency with two decimals.
    /// An order's total (at most 99 of a product a line, at most `internal::MAX_LINES` lines)
    /// then stays far inside an `i64`.
    pub const MAX_PRICE: i64 = 1_000_000_000_000;

    pub fn new(amount: i64, currency: &str) -> Self {
        Self {
            amount,
            currency: Text::from(currency),
        }
    }

    /// Three upper-case letters.
    pub fn valid_currency(code: &str) -> bool {
        code.len() == 3 && code.bytes().all(|b| b.is_ascii_uppercase())
    }

    /// How many digits of `currency`'s amounts are minor units (ISO 4217's exponent): 2 for
    /// most, 0 for the yen, 3 for the Kuwaiti dinar.
    pub fn minor_digits(currency: &str) -> u32 {
        const NONE: &[&str] = &[
            "BIF", "CLP", "DJF", "GNF", "ISK", "JPY", "KMF", "KRW", "PYG", "RWF", "UGX", "UYI",
            "VND", "VUV", "XAF", "XOF", "XPF",
        ];
        const THREE: &[&str] = &["BHD", "IQD", "JOD", "KWD", "LYD", "OMR", "TND"];
        const FOUR: &[&str] = &["CLF", "UYW"];
        if NONE.contains(&currency) {
            0
        } else if THREE.contains(&currency) {
            3
        } else if FOUR.contains(&currency) {
            4
        } else {
            2
        }
    }
}

/// In major units with the currency, as a customer reads it: 1999 EUR is "19.99 EUR",
/// 1200 JPY "1200 JPY", 1999 KWD "1.999 KWD".
impl fmt::Display for Money {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let digits = Self::minor_digits(&self.currency);
        let sign = if self.amount < 0 { "-" } else { "" };
        let abs = self.amount.unsigned_abs();
        if digits == 0 {
            return write!(f, "{sign}{abs} {}", self.currency);
        }
        let unit = 10u64.pow(digits);
        write!(
            f,
            "{sign}{}.{:0width$} {}",
            abs / unit,
            abs % unit,
            self.currency,
            width = digits as usize
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn money_is_written_in_major_units_as_its_currency_has_them() {
        for (amount, currency, text) in [
            (1999, "EUR", "19.99 EUR"),
            (5, "USD", "0.05 USD"),
            (-250, "EUR", "-2.50 EUR"),
            (1200, "JPY", "1200 JPY"),
            (-7, "KRW", "-7 KRW"),
            (1999, "KWD", "1.999 KWD"),
            (5, "BHD", "0.005 BHD"),
            (12345, "CLF", "1.2345 CLF"),
            (i64::MIN, "EUR", "-92233720368547758.08 EUR"),
        ] {
            assert_eq!(Money::new(amount, currency).to_string(), text);
        }
    }
}
