//! The payment provider behind a trait, and the signed webhook through which every provider
//! (the sandbox included) reports results, in Stripe's `t=…,v1=…` form.

use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;
use uuid::Uuid;

pub const SIGNATURE_HEADER: &str = "Payment-Signature";
/// How old a signed callback may be.
pub const TOLERANCE_SECONDS: i64 = 300;

/// What a provider reports about a session.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ProviderEvent {
    /// Unique per callback; a replay carries the same id.
    pub id: String,
    /// `payment.succeeded` or `payment.failed`.
    #[serde(rename = "type")]
    pub kind: String,
    pub session_id: Uuid,
    pub card_brand: Option<String>,
    pub card_last4: Option<String>,
    pub reason: Option<String>,
}

/// The card as typed on the hosted page; never stored or logged.
pub struct Card<'a> {
    pub number: &'a str,
}

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum CardError {
    #[error("the card number is not valid")]
    Invalid,
}

pub trait PaymentProvider: Send + Sync {
    /// Charges the card for the session; returns the callback the provider sends.
    fn charge(&self, session_id: Uuid, card: &Card<'_>) -> Result<ProviderEvent, CardError>;
}

/// Digits only, Luhn-checked, 12 to 19 digits.
pub fn card_digits(number: &str) -> Result<String, CardError> {
    let digits: String = number
        .chars()
        .filter(|c| !c.is_whitespace() && *c != '-')
        .collect();
    if !(12..=19).contains(&digits.len()) || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err(CardError::Invalid);
    }
    let sum: u32 = digits
        .bytes()
        .rev()
        .enumerate()
        .map(|(i, b)| {
            let d = u32::from(b - b'0');
            if i % 2 == 1 {
                let x = d * 2;
                if x > 9 { x - 9 } else { x }
            } else {
                d
            }
        })
        .sum();
    if sum.is_multiple_of(10) {
        Ok(digits)
    } else {
        Err(CardError::Invalid)
    }
}

fn brand(digits: &str) -> &'static str {
    match digits.as_bytes()[0] {
        b'4' => "visa",
        b'5' => "mastercard",
        b'3' => "amex",
        _ => "card",
    }
}

/// Follows the common sandbox conventions: 4242 4242 4242 4242 succeeds, 4000 0000 0000 0002
/// is declined, any other valid number succeeds.
pub struct SandboxProvider;

pub const DECLINED_CARD: &str = "4000000000000002";

impl PaymentProvider for SandboxProvider {
    fn charge(&self, session_id: Uuid, card: &Card<'_>) -> Result<ProviderEvent, CardError> {
        let digits = card_digits(card.number)?;
        let declined = digits == DECLINED_CARD;
        Ok(ProviderEvent {
            id: format!("sandbox_{}", Uuid::now_v7().simple()),
            kind: if declined {
                "payment.failed"
            } else {
                "payment.succeeded"
            }
            .to_owned(),
            session_id,
            card_brand: Some(brand(&digits).to_owned()),
            card_last4: Some(digits[digits.len() - 4..].to_owned()),
            reason: declined.then(|| "card declined".to_owned()),
        })
    }
}

/// `t=<unix seconds>,v1=<hex HMAC-SHA256 of "t.body">`.
pub fn sign(secret: &str, timestamp: i64, body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("HMAC takes any key");
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    format!(
        "t={timestamp},v1={}",
        hex::encode(mac.finalize().into_bytes())
    )
}

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum SignatureError {
    #[error("the signature header is missing or malformed")]
    Malformed,
    #[error("the signature is older than {TOLERANCE_SECONDS} seconds")]
    Stale,
    #[error("the signature does not match")]
    Mismatch,
}

/// Verifies a callback's signature in constant time, within the timestamp tolerance.
pub fn verify(secret: &str, header: &str, body: &[u8], now: i64) -> Result<(), SignatureError> {
    let mut timestamp = None;
    let mut signatures = Vec::new();
    for part in header.split(',') {
        match part.trim().split_once('=') {
            Some(("t", t)) => timestamp = t.parse::<i64>().ok(),
            Some(("v1", v)) => {
                signatures.push(hex::decode(v).map_err(|_| SignatureError::Malformed)?)
            }
            _ => {}
        }
    }
    let timestamp = timestamp.ok_or(SignatureError::Malformed)?;
    if signatures.is_empty() {
        return Err(SignatureError::Malformed);
    }
    // abs_diff: a timestamp at either end of i64 is merely stale, not an overflow.
    if now.abs_diff(timestamp) > TOLERANCE_SECONDS.unsigned_abs() {
        return Err(SignatureError::Stale);
    }
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("HMAC takes any key");
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    // verify_slice compares in constant time.
    if signatures
        .iter()
        .any(|s| mac.clone().verify_slice(s).is_ok())
    {
        Ok(())
    } else {
        Err(SignatureError::Mismatch)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn luhn_accepts_the_sandbox_cards_and_rejects_typos() {
        assert!(card_digits("4242 4242 4242 4242").is_ok());
        assert!(card_digits("4000-0000-0000-0002").is_ok());
        assert_eq!(card_digits("4242 4242 4242 4241"), Err(CardError::Invalid));
        assert_eq!(card_digits("abcd"), Err(CardError::Invalid));
    }

    #[test]
    fn signatures_verify_only_with_the_secret_body_and_a_fresh_timestamp() {
        let sig = sign("s3cret", 1_000, b"{}");
        assert_eq!(verify("s3cret", &sig, b"{}", 1_010), Ok(()));
        assert_eq!(
            verify("other", &sig, b"{}", 1_010),
            Err(SignatureError::Mismatch)
        );
        assert_eq!(
            verify("s3cret", &sig, b"{ }", 1_010),
            Err(SignatureError::Mismatch)
        );
        assert_eq!(
            verify("s3cret", &sig, b"{}", 1_000 + 301),
            Err(SignatureError::Stale)
        );
        assert_eq!(
            verify("s3cret", "v1=zz", b"{}", 1_000),
            Err(SignatureError::Malformed)
        );
    }

    #[test]
    fn a_timestamp_at_either_end_of_its_range_is_stale_not_an_overflow() {
        for (timestamp, now) in [(i64::MIN, 1_000), (i64::MAX, -1_000), (i64::MIN, i64::MAX)] {
            let header = format!("t={timestamp},v1=00");
            assert_eq!(
                verify("s3cret", &header, b"{}", now),
                Err(SignatureError::Stale),
                "t={timestamp} at {now}"
            );
        }
    }
}
