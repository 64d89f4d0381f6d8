//! The orders API, as SPEC.md describes it.

use chrono::{DateTime, Utc};
use contracts::Text;
use contracts::internal::{OrderRefund, OrderRefundRequest};
use contracts::money::Money;
use platform::auth::{Authorized, BearerAuth, Caller, InternalAuth, authority, needs};
use platform::problem::{ApiResult, Checks, Problem};
use poem_openapi::param::{Header, Path, Query};
use poem_openapi::payload::Json;
use poem_openapi::types::{ParseFromJSON, ToJSON};
use poem_openapi::{ApiResponse, Object, OpenApi, Tags};
use sha2::{Digest, Sha256};
use uuid::Uuid;

use crate::Orders;
use crate::checkout::{self, CheckoutInput};
use crate::store::{self, Filter, KeyClaim, LineRow, OrderRow};

#[derive(Tags)]
enum Tag {
    /// Checkout and the caller's orders
    Orders,
    /// Fulfilment (managers)
    Fulfilment,
    /// Service-to-service calls
    Internal,
}

pub struct OrdersApi {
    pub(crate) state: Orders,
}

#[derive(Debug, Object)]
#[oai(skip_serializing_if_is_none, deny_unknown_fields)]
struct CheckoutRequest {
    /// Where to ship, as one block of text (1 to 500 characters).
    shipping_address: Text,
    /// For an SMS when the order is confirmed (E.164).
    phone: Option<Text>,
}

#[derive(Debug, Clone, Object)]
struct OrderLineView {
    product_id: Uuid,
    name: String,
    unit_price: Money,
    quantity: i32,
    line_total: Money,
}

#[derive(Debug, Clone, Object)]
#[oai(skip_serializing_if_is_none)]
struct HistoryView {
    from: Option<String>,
    to: String,
    cause: String,
    at: DateTime<Utc>,
}

#[derive(Debug, Clone, Object)]
#[oai(skip_serializing_if_is_none)]
struct OrderView {
    id: Uuid,
    user_id: Uuid,
    /// PENDING, PAID, SHIPPED, DELIVERED, CANCELLED or REFUNDED.
    status: String,
    /// Why the order is in its status (e.g. the cancellation reason).
    status_reason: Option<String>,
    total: Money,
    shipping_address: String,
    phone: Option<String>,
    lines: Vec<OrderLineView>,
    /// Where the customer pays a PENDING order.
    payment_url: Option<String>,
    history: Vec<HistoryView>,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
}

#[derive(Debug, Clone, Object)]
struct CheckoutResult {
    order: OrderView,
    payment_url: String,
}

#[derive(Debug, Object)]
#[oai(skip_serializing_if_is_none)]
struct OrderPage {
    items: Vec<OrderView>,
    next_cursor: Option<String>,
}

#[derive(ApiResponse)]
enum CheckoutResponse {
    /// The order is placed (or, for a repeated key, was placed): pay at `payment_url`.
    #[oai(status = 201)]
    Created(Json<CheckoutResult>),
}

const STATUSES: [&str; 6] = [
    "PENDING",
    "PAID",
    "SHIPPED",
    "DELIVERED",
    "CANCELLED",
    "REFUNDED",
];

fn view(order: OrderRow, lines: Vec<LineRow>, history: Vec<store::HistoryRow>) -> OrderView {
    let currency = order.currency.clone();
    OrderView {
        id: order.id,
        user_id: order.user_id,
        status: order.status,
        status_reason: order.status_reason,
        total: Money::new(order.total_amount, &currency),
        shipping_address: order.shipping_address,
        phone: order.phone,
        lines: lines
            .into_iter()
            .map(|l| OrderLineView {
                product_id: l.product_id,
                name: l.name,
                unit_price: Money::new(l.unit_amount, &currency),
                quantity: l.quantity,
                line_total: Money::new(l.unit_amount * i64::from(l.quantity), &currency),
            })
            .collect(),
        payment_url: order.payment_url,
        history: history
            .into_iter()
            .map(|h| HistoryView {
                from: h.from_status,
                to: h.to_status,
                cause: h.cause,
                at: h.at,
            })
            .collect(),
        created_at: order.created_at,
        updated_at: order.updated_at,
    }
}

fn valid_key(key: &str) -> bool {
    (1..=255).contains(&key.len()) && key.bytes().all(|b| b.is_ascii_graphic())
}

impl OrdersApi {
    async fn full(&self, order: OrderRow) -> ApiResult<OrderView> {
        let pool = &self.state.base.pool;
        let (lines, history) =
            tokio::try_join!(store::lines(pool, order.id), store::history(pool, order.id))?;
        Ok(view(order, lines, history))
    }

    /// The order if the caller may see it: their own, or any for a manager; else 404.
    async fn visible(&self, caller: &Caller, id: Uuid) -> ApiResult<OrderRow> {
        match store::order(&self.state.base.pool, id).await? {
            Some(o) if o.user_id == caller.id || caller.has(authority::ORDER_MANAGE) => Ok(o),
            _ => Err(Problem::not_found("no such order")),
        }
    }

    async fn move_order(
        &self,
        manager: &Authorized<needs::OrderManage>,
        id: Uuid,
        from: &str,
        to: &str,
        cause: &str,
    ) -> ApiResult<Json<OrderView>> {
        let caller = &manager.0;
        let order = self.visible(caller, id).await?;
        let mut tx = self.state.base.pool.begin().await?;
        if !store::transition(&mut tx, id, &[from], to, cause).await? {
            return Err(Problem::conflict(format!(
                "a {} order cannot become {to}; only a {from} one can",
                order.status
            )));
        }
        tx.commit().await?;
        let order = self.visible(caller, id).await?;
        Ok(Json(self.full(order).await?))
    }
}

#[OpenApi]
impl OrdersApi {
    /// Check out the caller's cart. Needs an `Idempotency-Key`: a repeat with the same key
    /// and body answers the same order; with another body 422; while the first still runs 409.
    #[oai(
        path = "/api/v1/orders/checkout",
        method = "post",
        operation_id = "checkout",
        tag = "Tag::Orders"
    )]
    async fn checkout(
        &self,
        auth: Authorized<needs::Shop>,
        #[oai(name = "Idempotency-Key")] key: Header<Option<String>>,
        body: Json<CheckoutRequest>,
    ) -> ApiResult<CheckoutResponse> {
        let key = key.0.ok_or_else(|| {
            Problem::bad_request(
                "the Idempotency-Key header is required (any unique string, e.g. a UUID)",
            )
        })?;
        if !valid_key(&key) {
            return Err(Problem::bad_request(
                "the Idempotency-Key must be 1 to 255 visible ASCII characters",
            ));
        }
        let req = body.0;
        let address = req.shipping_address.trim();
        Checks::default()
            .check(
                "shipping_address",
                (!(1..=500).contains(&address.chars().count()))
                    .then(|| "must be 1 to 500 characters".into()),
            )
            .check(
                "phone",
                req.phone
                    .as_deref()
                    .filter(|p| {
                        !p.strip_prefix('+').is_some_and(|d| {
                            (8..=15).contains(&d.len()) && d.bytes().all(|b| b.is_ascii_digit())
                        })
                    })
                    .map(|_| "must be in E.164 form, such as +4915112345678".into()),
            )
            .finish()?;
        let hash = hex::encode(Sha256::digest(
            format!("{address}\n{}", req.phone.as_deref().unwrap_or("")).as_bytes(),
        ));
        let user = auth.0.id;
        match store::claim_key(&self.state.base.pool, user, &key, &hash).await? {
            KeyClaim::Claimed => {}
            KeyClaim::Running => {
                return Err(Problem::conflict(
                    "a checkout with this Idempotency-Key is still running; retry shortly",
                ));
            }
            KeyClaim::OtherBody => {
                return Err(Problem::unprocessable(
                    "this Idempotency-Key was used with another request body",
                ));
            }
            KeyClaim::Done { body, .. } => {
                let stored = CheckoutResult::parse_from_json(Some(body))
                    .map_err(|e| Problem::internal(e.into_message()))?;
                return Ok(CheckoutResponse::Created(Json(stored)));
            }
        }
        let input = CheckoutInput {
            user,
            key: &key,
            shipping_address: address,
            phone: req.phone.as_deref(),
        };
        match checkout::place(&self.state, input).await {
            Ok(placed) => {
                let result = CheckoutResult {
                    payment_url: placed.payment_url,
                    order: self.full(placed.order).await?,
                };
                store::finish_key(
                    &self.state.base.pool,
                    user,
                    &key,
                    201,
                    &result.to_json().unwrap_or_default(),
                )
                .await?;
                Ok(CheckoutResponse::Created(Json(result)))
            }
            Err(problem) => {
                // Only a placed order is kept under the key: after any failure the client
                // may fix the cause and retry with the same key.
                store::release_key(&self.state.base.pool, user, &key).await?;
                Err(problem)
            }
        }
    }

    /// Orders newest first: the caller's; a manager may filter everyone's.
    #[oai(
        path = "/api/v1/orders",
        method = "get",
        operation_id = "list_orders",
        tag = "Tag::Orders"
    )]
    #[allow(clippy::too_many_arguments)]
    async fn list(
        &self,
        auth: BearerAuth,
        status: Query<Option<String>>,
        user_id: Query<Option<Uuid>>,
        from: Query<Option<DateTime<Utc>>>,
        to: Query<Option<DateTime<Utc>>>,
        limit: Query<Option<platform::web::PageLimit>>,
        cursor: Query<Option<Uuid>>,
    ) -> ApiResult<Json<OrderPage>> {
        let limit = platform::web::page_limit(limit.0)?;
        if let Some(s) = &status.0
            && !STATUSES.contains(&s.as_str())
        {
            return Err(Problem::invalid(vec![platform::problem::FieldError::new(
                "status",
                format!("must be one of {}", STATUSES.join(", ")),
            )]));
        }
        let manager = auth.0.has(authority::ORDER_MANAGE);
        if user_id.0.is_some_and(|u| u != auth.0.id) && !manager {
            return Err(Problem::forbidden(
                "only managers may list other customers' orders",
            ));
        }
        let user = if manager { user_id.0 } else { Some(auth.0.id) };
        let mut rows = store::list(
            &self.state.base.pool,
            &Filter {
                user,
                status: status.0,
                from: from.0,
                to: to.0,
                before: cursor.0,
                limit: i64::from(limit) + 1,
            },
        )
        .await?;
        let next_cursor = platform::web::next_page(&mut rows, limit, |o| o.id.to_string());
        let mut items = Vec::with_capacity(rows.len());
        for row in rows {
            items.push(self.full(row).await?);
        }
        Ok(Json(OrderPage { items, next_cursor }))
    }

    /// One order with its lines and history.
    #[oai(
        path = "/api/v1/orders/:id",
        method = "get",
        operation_id = "get_order",
        tag = "Tag::Orders"
    )]
    async fn get(&self, auth: BearerAuth, id: Path<Uuid>) -> ApiResult<Json<OrderView>> {
        let order = self.visible(&auth.0, id.0).await?;
        Ok(Json(self.full(order).await?))
    }

    /// Cancel a PENDING order; its stock is released and it can no longer be paid.
    #[oai(
        path = "/api/v1/orders/:id/cancel",
        method = "post",
        operation_id = "cancel_order",
        tag = "Tag::Orders"
    )]
    async fn cancel(&self, auth: BearerAuth, id: Path<Uuid>) -> ApiResult<Json<OrderView>> {
        let order = self.visible(&auth.0, id.0).await?;
        let mut tx = self.state.base.pool.begin().await?;
        if !store::cancel(&mut tx, &order, "cancelled by the customer").await? {
            return Err(Problem::conflict(format!(
                "a {} order cannot be cancelled; only a PENDING one can",
                order.status
            )));
        }
        tx.commit().await?;
        self.state.relay.wake();
        let order = self.visible(&auth.0, id.0).await?;
        Ok(Json(self.full(order).await?))
    }

    /// PAID → SHIPPED (manager).
    #[oai(
        path = "/api/v1/orders/:id/ship",
        method = "post",
        operation_id = "ship_order",
        tag = "Tag::Fulfilment"
    )]
    async fn ship(
        &self,
        auth: Authorized<needs::OrderManage>,
        id: Path<Uuid>,
    ) -> ApiResult<Json<OrderView>> {
        self.move_order(&auth, id.0, "PAID", "SHIPPED", "shipped")
            .await
    }

    /// SHIPPED → DELIVERED (manager).
    #[oai(
        path = "/api/v1/orders/:id/deliver",
        method = "post",
        operation_id = "deliver_order",
        tag = "Tag::Fulfilment"
    )]
    async fn deliver(
        &self,
        auth: Authorized<needs::OrderManage>,
        id: Path<Uuid>,
    ) -> ApiResult<Json<OrderView>> {
        self.move_order(&auth, id.0, "SHIPPED", "DELIVERED", "delivered")
            .await
    }

    /// Agree to a refund (payment asks before it refunds the order's payment): a PAID order
    /// becomes REFUNDED, and a REFUNDED one stays so (a repeat). Any other is 409: a shipped
    /// order's goods would be put back on sale by the refund's restock. A PENDING order whose
    /// payment's success has not reached orders yet goes through PAID. Decided under the
    /// order's row lock, as shipping is, so an order is either shipped or refunded.
    #[oai(
        path = "/internal/orders/:id/refund",
        method = "post",
        operation_id = "internal_refund_order",
        tag = "Tag::Internal"
    )]
    async fn internal_refund(
        &self,
        _auth: InternalAuth,
        id: Path<Uuid>,
        body: Json<OrderRefundRequest>,
    ) -> ApiResult<Json<OrderRefund>> {
        let mut tx = self.state.base.pool.begin().await?;
        store::transition(
            &mut tx,
            id.0,
            &["PENDING"],
            "PAID",
            "payment succeeded (its refund asked first)",
        )
        .await?;
        let cause = format!("payment {} refunded", body.0.payment_id);
        store::transition(&mut tx, id.0, &["PAID"], "REFUNDED", &cause).await?;
        let order = store::order(&mut *tx, id.0)
            .await?
            .ok_or_else(|| Problem::not_found("no such order"))?;
        if order.status != "REFUNDED" {
            return Err(Problem::conflict(format!(
                "the order is {}: only a paid order that has not shipped is refunded",
                order.status
            )));
        }
        tx.commit().await?;
        Ok(Json(OrderRefund {
            order_id: order.id,
            status: order.status,
        }))
    }
}
