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
}
