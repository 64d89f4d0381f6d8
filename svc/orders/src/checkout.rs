//! The saga step that starts here: read the cart, price it from products, reserve stock,
//! store the order PENDING and open its payment session.
//!
//! Every step is idempotent per order id, and the order id is derived from the caller and
//! the idempotency key, so a retry after a crash at any point redoes only what is missing:
//! inventory answers a repeated reservation with the one it holds, payment a repeated
//! session request with the session it opened, and the order insert is skipped.

use chrono::Utc;
use contracts::internal::{
    CartContents, PaymentSession, PaymentSessionRequest, ProductLookupRequest,
    ProductLookupResponse, Reservation, ReservationRequest, StockLine,
};
use contracts::money::Money;
use platform::http::CallError;
use platform::problem::{FieldError, Problem};
use uuid::Uuid;

use crate::Orders;
use crate::store::{self, LineRow, NewOrder};

const NO_LONGER_HELD: &str = "the stock this checkout reserved is no longer held; check out again with a new Idempotency-Key";

/// How far payment's clock may run ahead of ours.
const CLOCK_SKEW: chrono::TimeDelta = chrono::TimeDelta::seconds(5);

/// Names order ids derived from (user, idempotency key).
const ORDER_NAMESPACE: Uuid = Uuid::from_u128(0x6d6d_6f72_6465_7273_8000_0000_0000_0001);

pub fn order_id(user: Uuid, key: &str) -> Uuid {
    Uuid::new_v5(&ORDER_NAMESPACE, format!("{user}:{key}").as_bytes())
}

pub struct CheckoutInput<'a> {
    pub user: Uuid,
    pub key: &'a str,
    pub shipping_address: &'a str,
    pub phone: Option<&'a str>,
}

pub struct Placed {
    pub order: store::OrderRow,
    pub lines: Vec<LineRow>,
    pub payment_url: String,
}

/// A 409 naming lines, from a dependency's problem body when it has one.
fn conflict_with_lines(detail: &str, body: &str) -> Problem {
    let errors: Vec<FieldError> = serde_json::from_str::<serde_json::Value>(body)
        .ok()
        .and_then(|v| serde_json::from_value(v["errors"].clone()).ok())
        .unwrap_or_default();
    Problem {
        errors,
        ..Problem::conflict(detail)
    }
}

pub async fn place(state: &Orders, input: CheckoutInput<'_>) -> Result<Placed, Problem> {
    let cart: CartContents = state
        .cart
        .get(&format!("/internal/carts/{}", input.user), None)
        .await?;
    if cart.lines.is_empty() {
        return Err(Problem::unprocessable(
            "the cart is empty; add products before checking out",
        ));
    }
    let ids: Vec<Uuid> = cart.lines.iter().map(|l| l.product_id).collect();
    let products: ProductLookupResponse = state
        .products
        .post(
            "/internal/products/lookup",
            &ProductLookupRequest { ids },
            None,
            true,
        )
        .await?;
    let mut lines = Vec::with_capacity(cart.lines.len());
    let mut unavailable = Vec::new();
    for line in &cart.lines {
        match products.products.iter().find(|p| p.id == line.product_id) {
            Some(p) if p.active => lines.push((line.clone(), p.clone())),
            _ => unavailable.push(FieldError::new(
                line.product_id.to_string(),
                "no longer sold; remove it from the cart",
            )),
        }
    }
    if !unavailable.is_empty() {
        return Err(Problem {
            errors: unavailable,
            ..Problem::conflict("some products in the cart are no longer sold")
        });
    }
    let currency = lines[0].1.price.currency.clone();
    if lines.iter().any(|(_, p)| p.price.currency != currency) {
        return Err(Problem::unprocessable(
            "the cart mixes currencies; one order takes one currency",
        ));
    }
    let total = lines.iter().try_fold(0i64, |sum, (l, p)| {
        sum.checked_add(p.price.amount.checked_mul(i64::from(l.quantity))?)
    });
    // Payment takes no session for nothing, and the order would be left unpaid: refused
    // before anything is reserved or written.
    let total = match total {
        Some(total) if total > 0 => total,
        Some(_) => {
            return Err(Problem::unprocessable(format!(
                "the order's total is 0 {currency}: an order is placed by paying for it; add a product with a price"
            )));
        }
        None => {
            return Err(Problem::unprocessable(
                "the order's total is more than one payment can take; order fewer items",
            ));
        }
    };
    let order_id = order_id(input.user, input.key);
    let stock_lines: Vec<StockLine> = lines.iter().map(|(l, _)| l.clone()).collect();

    let reservation = ReservationRequest {
        order_id,
        lines: stock_lines.clone(),
        expires_at: Utc::now() + state.config.reservation_ttl,
    };
    let held_until = match state
        .inventory
        .post::<_, Reservation>("/internal/inventory/reservations", &reservation, None, true)
        .await
    {
        // A retry of an attempt that reserved and did not finish gets that attempt's
        // reservation back, as it is: one released (it expired, or its order was cancelled)
        // holds no stock, and a session opened on it would sell what is not held.
        Ok(held) if held.status != "held" || held.expires_at <= Utc::now() => {
            return Err(Problem::conflict(NO_LONGER_HELD));
        }
        Ok(held) => held.expires_at,
        Err(CallError::Status {
            status: 409, body, ..
        }) => {
            return Err(conflict_with_lines(
                "not enough stock for some lines; nothing was ordered",
                &body,
            ));
        }
        Err(e) => return Err(e.into()),
    };
    fail::fail_point!("orders::after_reserve_before_insert", |_| Err(
        Problem::unavailable("injected", 1)
    ));

    let line_rows: Vec<LineRow> = lines
        .iter()
        .map(|(l, p)| LineRow {
            product_id: l.product_id,
            name: p.name.clone(),
            unit_amount: p.price.amount,
            quantity: l.quantity,
        })
        .collect();
    let mut tx = state.base.pool.begin().await?;
    let created = store::insert_order(
        &mut tx,
        &NewOrder {
            id: order_id,
            user_id: input.user,
            total_amount: total,
            currency: &currency,
            shipping_address: input.shipping_address,
            phone: input.phone,
            lines: &line_rows,
        },
    )
    .await?;
    tx.commit().await?;
    fail::fail_point!("orders::after_insert_before_session", |_| Err(
        Problem::unavailable("injected", 1)
    ));
    // A retry whose first attempt wrote the order goes on with the order as written: its
    // total, not one priced again now, is what payment asks for.
    let amount = if created {
        Money::new(total, &currency)
    } else {
        let written = store::order(&state.base.pool, order_id)
            .await?
            .ok_or_else(|| Problem::internal("the order vanished"))?;
        if written.status != "PENDING" {
            return Err(Problem::conflict(format!(
                "this checkout's order is {} and can no longer be paid; check out again with a new Idempotency-Key",
                written.status
            )));
        }
        Money::new(written.total_amount, &written.currency)
    };

    let session: PaymentSession = state
        .payment
        .post(
            "/internal/payments/sessions",
            &PaymentSessionRequest {
                order_id,
                user_id: input.user,
                amount,
                lines: stock_lines,
                // A retry may come minutes after the attempt that reserved: the session must
                // not outlive the reservation it pays for.
                closes_by: Some(held_until),
            },
            None,
            true,
        )
        .await
        .map_err(|e| match e {
            // The reservation lapsed between inventory's answer and payment's.
            CallError::Status { status: 422, .. } if held_until <= Utc::now() + CLOCK_SKEW => {
                Problem::conflict(NO_LONGER_HELD)
            }
            e => e.into(),
        })?;
    store::set_payment_url(&state.base.pool, order_id, &session.payment_url).await?;
    let order = store::order(&state.base.pool, order_id)
        .await?
        .ok_or_else(|| Problem::internal("the order vanished"))?;
    let lines = store::lines(&state.base.pool, order_id).await?;
    Ok(Placed {
        order,
        lines,
        payment_url: session.payment_url,
    })
}
