//! Events that cross services, in the envelope of DESIGN.md. Adding a field is compatible;
//! removing or renaming one needs a new `version`. An optional field that is left out when it
//! has no value (`skip_serializing_if`) can be read only by consumers built since it became
//! optional: roll them out before any producer leaves it out.

use chrono::{DateTime, Utc};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// Stream names, one per producer.
pub mod streams {
    pub const USERS: &str = "users.events";
    pub const ORDERS: &str = "orders.events";
    pub const PAYMENT: &str = "payment.events";

    /// The consumer groups (one per consuming service) that read `stream`. A producer trims
    /// its stream only past what every one of them has acknowledged, so a group that has not
    /// been created yet (its service never started) holds trimming back instead of missing
    /// entries.
    pub fn consumer_groups(stream: &str) -> &'static [&'static str] {
        match stream {
            PAYMENT => &["orders", "inventory", "cart", "notification"],
            ORDERS => &["inventory", "notification", "payment"],
            USERS => &["notification"],
            _ => &[],
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Envelope {
    pub id: Uuid,
    #[serde(rename = "type")]
    pub kind: String,
    pub version: u32,
    pub occurred_at: DateTime<Utc>,
    pub source: String,
    pub correlation_id: Option<String>,
    pub data: serde_json::Value,
}

/// A payload type with its envelope name and version.
pub trait Event: Serialize + DeserializeOwned {
    const TYPE: &'static str;
    const VERSION: u32 = 1;
    const STREAM: &'static str;
}

impl Envelope {
    pub fn wrap<E: Event>(event: &E, source: &str, correlation_id: Option<String>) -> Self {
        Self {
            id: Uuid::now_v7(),
            kind: E::TYPE.to_owned(),
            version: E::VERSION,
            occurred_at: Utc::now(),
            source: source.to_owned(),
            correlation_id,
            data: serde_json::to_value(event).expect("events serialize to JSON"),
        }
    }

    /// The payload, when this envelope carries an `E`.
    pub fn open<E: Event>(&self) -> Option<Result<E, serde_json::Error>> {
        (self.kind == E::TYPE).then(|| serde_json::from_value(self.data.clone()))
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct UserRegistered {
    pub user_id: Uuid,
    pub email: String,
    pub name: String,
    pub phone: Option<String>,
    /// Where the user confirms the email address; none for an account created already
    /// verified (the local demo's), which gets a welcome without a link.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub verification_url: Option<String>,
}
impl Event for UserRegistered {
    const TYPE: &'static str = "UserRegistered";
    const STREAM: &'static str = streams::USERS;
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PasswordResetRequested {
    pub user_id: Uuid,
    pub email: String,
    pub reset_url: String,
}
impl Event for PasswordResetRequested {
    const TYPE: &'static str = "PasswordResetRequested";
    const STREAM: &'static str = streams::USERS;
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OrderLine {
    pub product_id: Uuid,
    pub quantity: i32,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OrderCancelled {
    pub order_id: Uuid,
    pub user_id: Uuid,
    pub reason: String,
}
impl Event for OrderCancelled {
    const TYPE: &'static str = "OrderCancelled";
    const STREAM: &'static str = streams::ORDERS;
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PaymentSucceeded {
    pub payment_id: Uuid,
    pub order_id: Uuid,
    pub user_id: Uuid,
    pub amount: crate::money::Money,
    pub lines: Vec<OrderLine>,
}
impl Event for PaymentSucceeded {
    const TYPE: &'static str = "PaymentSucceeded";
    const STREAM: &'static str = streams::PAYMENT;
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PaymentFailed {
    pub payment_id: Uuid,
    pub order_id: Uuid,
    pub user_id: Uuid,
    pub reason: String,
}
impl Event for PaymentFailed {
    const TYPE: &'static str = "PaymentFailed";
    const STREAM: &'static str = streams::PAYMENT;
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PaymentExpired {
    pub payment_id: Uuid,
    pub order_id: Uuid,
    pub user_id: Uuid,
}
impl Event for PaymentExpired {
    const TYPE: &'static str = "PaymentExpired";
    const STREAM: &'static str = streams::PAYMENT;
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PaymentRefunded {
    pub payment_id: Uuid,
    pub order_id: Uuid,
    pub user_id: Uuid,
    pub amount: crate::money::Money,
    /// The provider charged after the payment session had closed (expired, or its order
    /// cancelled), and the charge was refunded at once: no `PaymentSucceeded` comes for it, and
    /// the order was never paid. Absent (false) in events of earlier versions.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub charged_after_close: bool,
}
impl Event for PaymentRefunded {
    const TYPE: &'static str = "PaymentRefunded";
    const STREAM: &'static str = streams::PAYMENT;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_registration_without_a_link_is_sent_and_read_without_the_field() {
        let registered = UserRegistered {
            user_id: Uuid::now_v7(),
            email: "demo@example.com".into(),
            name: "Demo".into(),
            phone: None,
            verification_url: None,
        };
        let json = serde_json::to_value(&registered).unwrap();
        assert!(json.get("verification_url").is_none(), "{json}");
        let read: UserRegistered = serde_json::from_value(json).unwrap();
        assert_eq!(read, registered);
    }
}
