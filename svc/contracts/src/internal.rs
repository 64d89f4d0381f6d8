//! Bodies of the internal (service-to-service) routes.

use chrono::{DateTime, Utc};
use poem_openapi::Object;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::money::Money;

/// The most lines one internal call about a cart or an order carries (ids to look up, stock
/// lines to check or reserve), and so the most different products a cart may hold: a cart
/// with more could be neither priced nor checked out.
pub const MAX_LINES: usize = 100;

/// `POST /internal/products/lookup`
#[derive(Debug, Clone, Serialize, Deserialize, Object)]
#[oai(deny_unknown_fields)]
pub struct ProductLookupRequest {
    pub ids: Vec<Uuid>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Object)]
pub struct ProductSummary {
    pub id: Uuid,
    pub sku: String,
    pub name: String,
    pub price: Money,
    pub active: bool,
}

/// Only the ids that exist; an unknown id is absent.
#[derive(Debug, Clone, Serialize, Deserialize, Object)]
pub struct ProductLookupResponse {
    pub products: Vec<ProductSummary>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Object)]
#[oai(deny_unknown_fields)]
pub struct StockLine {
    pub product_id: Uuid,
    pub quantity: i32,
}

/// `POST /internal/inventory/check`
#[derive(Debug, Clone, Serialize, Deserialize, Object)]
#[oai(deny_unknown_fields)]
pub struct StockCheckRequest {
    pub lines: Vec<StockLine>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Object)]
pub struct StockCheckLine {
    pub product_id: Uuid,
    pub requested: i32,
    pub available: i32,
    pub sufficient: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize, Object)]
pub struct StockCheckResponse {
    pub lines: Vec<StockCheckLine>,
}

/// `POST /internal/inventory/reservations`
#[derive(Debug, Clone, Serialize, Deserialize, Object)]
#[oai(deny_unknown_fields)]
pub struct ReservationRequest {
    pub order_id: Uuid,
    pub lines: Vec<StockLine>,
    pub expires_at: DateTime<Utc>,
}

#[derive(Debug, Clone, Serialize, Deserialize, Object)]
pub struct Reservation {
    pub order_id: Uuid,
    pub lines: Vec<StockLine>,
    pub expires_at: DateTime<Utc>,
    /// held, committed, released, restocked (committed, then refunded) or refunded (released,
    /// then refunded).
    pub status: String,
}

/// `GET /internal/users/{user_id}/contact`: where to reach a customer, for notification when
/// an event about them arrives before their `UserRegistered`.
#[derive(Debug, Clone, Serialize, Deserialize, Object)]
#[oai(skip_serializing_if_is_none)]
pub struct UserContact {
    pub user_id: Uuid,
    pub email: String,
    pub name: String,
    pub phone: Option<String>,
}

/// `GET /internal/carts/{user_id}`
#[derive(Debug, Clone, Serialize, Deserialize, Object)]
pub struct CartContents {
    pub user_id: Uuid,
    pub lines: Vec<StockLine>,
}

/// `POST /internal/payments/sessions`: one session per order (idempotent).
#[derive(Debug, Clone, Serialize, Deserialize, Object)]
#[oai(skip_serializing_if_is_none, deny_unknown_fields)]
pub struct PaymentSessionRequest {
    pub order_id: Uuid,
    pub user_id: Uuid,
    pub amount: Money,
    /// What was ordered, carried to `PaymentSucceeded` for inventory and cart.
    pub lines: Vec<StockLine>,
    /// When the order's stock stops being held: the session closes by then at the latest, so
    /// that nobody pays for goods no longer kept for them. Absent: payment's own limit alone.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub closes_by: Option<DateTime<Utc>>,
}

#[derive(Debug, Clone, Serialize, Deserialize, Object)]
pub struct PaymentSession {
    pub session_id: Uuid,
    pub payment_url: String,
    pub expires_at: DateTime<Utc>,
}

/// `POST /internal/orders/{id}/refund`: payment, about to refund the order's payment, asks
/// orders to agree.
#[derive(Debug, Clone, Serialize, Deserialize, Object)]
#[oai(deny_unknown_fields)]
pub struct OrderRefundRequest {
    pub payment_id: Uuid,
}

/// The order agreed to be refunded: it is REFUNDED.
#[derive(Debug, Clone, Serialize, Deserialize, Object)]
pub struct OrderRefund {
    pub order_id: Uuid,
    pub status: String,
}
