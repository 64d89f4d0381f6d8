//! The inventory API, as SPEC.md describes it.

use chrono::{DateTime, Utc};
use contracts::Text;
use contracts::internal::{
    MAX_LINES, Reservation, ReservationRequest, StockCheckRequest, StockCheckResponse, StockLine,
};
use platform::auth::{Authorized, InternalAuth, authority, needs, optional_caller};
use platform::problem::{ApiResult, Checks, FieldError, Problem};
use poem::Request;
use poem_openapi::param::{Path, Query};
use poem_openapi::payload::Json;
use poem_openapi::{ApiResponse, Object, OpenApi, Tags};
use uuid::Uuid;

use crate::Inventory;
use crate::store::{self, Reserve, StockChange, StockRow};

#[derive(Tags)]
enum Tag {
    /// Stock levels
    Stock,
    /// Service-to-service calls
    Internal,
}

pub struct InventoryApi {
    pub(crate) state: Inventory,
}

/// Stock of one product. Everyone sees `available` and `in_stock`; holders of
/// `inventory:write` also see the counts behind them.
#[derive(Debug, Object)]
#[oai(skip_serializing_if_is_none)]
struct StockView {
    product_id: Uuid,
    available: i32,
    in_stock: bool,
    on_hand: Option<i32>,
    reserved: Option<i32>,
    safety_stock: Option<i32>,
    updated_at: Option<DateTime<Utc>>,
}

impl StockView {
    fn new(row: &StockRow, full: bool) -> Self {
        let available = row.available();
        Self {
            product_id: row.product_id,
            available,
            in_stock: available > 0,
            on_hand: full.then_some(row.on_hand),
            reserved: full.then_some(row.reserved),
            safety_stock: full.then_some(row.safety_stock),
            updated_at: full.then_some(row.updated_at),
        }
    }
}

#[derive(Debug, Object)]
#[oai(deny_unknown_fields)]
struct SetStock {
    on_hand: i32,
    safety_stock: i32,
}

#[derive(Debug, Object)]
#[oai(deny_unknown_fields)]
struct Adjustment {
    /// Added to on_hand; negative to remove stock.
    delta: i32,
    /// Why, for the audit trail (1 to 200 characters).
    reason: Text,
}

#[derive(Debug, Object)]
#[oai(skip_serializing_if_is_none)]
struct StockPage {
    items: Vec<StockView>,
    next_cursor: Option<String>,
}

#[derive(ApiResponse)]
enum ReservationResponse {
    /// The reservation was made.
    #[oai(status = 201)]
    Created(Json<Reservation>),
    /// The order already held this reservation (a replay).
    #[oai(status = 200)]
    Existing(Json<Reservation>),
}

const MAX_QUANTITY: i32 = 10_000;

fn validate_lines(lines: &[StockLine]) -> ApiResult<()> {
    let mut errors = Vec::new();
    if lines.is_empty() {
        errors.push(FieldError::new("lines", "must not be empty"));
    }
    if lines.len() > MAX_LINES {
        errors.push(FieldError::new(
            "lines",
            format!("at most {MAX_LINES} lines"),
        ));
    }
    for (i, line) in lines.iter().enumerate() {
        if !(1..=MAX_QUANTITY).contains(&line.quantity) {
            errors.push(FieldError::new(
                format!("lines[{i}].quantity"),
                format!("must be 1 to {MAX_QUANTITY}"),
            ));
        }
        if lines[..i].iter().any(|l| l.product_id == line.product_id) {
            errors.push(FieldError::new(
                format!("lines[{i}].product_id"),
                "appears twice; merge the lines",
            ));
        }
    }
    if errors.is_empty() {
        Ok(())
    } else {
        Err(Problem::invalid(errors))
    }
}

fn short_problem(short: Vec<contracts::internal::StockCheckLine>) -> Problem {
    let errors = short
        .iter()
        .map(|l| {
            FieldError::new(
                l.product_id.to_string(),
                format!("requested {}, available {}", l.requested, l.available),
            )
        })
        .collect();
    Problem {
        errors,
        ..Problem::conflict("not enough stock for some lines; nothing was reserved")
    }
}

#[OpenApi]
impl InventoryApi {
    /// Products whose available stock is at or below `threshold` (manager).
    #[oai(
        path = "/api/v1/inventory/low-stock",
        method = "get",
        operation_id = "low_stock",
        tag = "Tag::Stock"
    )]
    async fn low_stock(
        &self,
        _auth: Authorized<needs::InventoryWrite>,
        threshold: Query<Option<i32>>,
        limit: Query<Option<platform::web::PageLimit>>,
        cursor: Query<Option<Uuid>>,
    ) -> ApiResult<Json<StockPage>> {
        let threshold = threshold.0.unwrap_or(self.state.config.low_stock_threshold);
        let limit = platform::web::page_size(limit.0);
        Checks::default()
            .check(
                "threshold",
                (threshold < 0).then(|| "must not be negative".to_owned()),
            )
            .check("limit", platform::web::page_size_problem(limit))
            .finish()?;
        let mut rows = store::low_stock(
            &self.state.base.pool,
            threshold,
            cursor.0,
            i64::from(limit) + 1,
        )
        .await?;
        let next_cursor = platform::web::next_page(&mut rows, limit, |r| r.product_id.to_string());
        Ok(Json(StockPage {
            items: rows.iter().map(|r| StockView::new(r, true)).collect(),
            next_cursor,
        }))
    }

    /// Availability of one product; managers see every count.
    #[oai(
        path = "/api/v1/inventory/:product_id",
        method = "get",
        operation_id = "get_stock",
        tag = "Tag::Stock"
    )]
    async fn get(&self, req: &Request, product_id: Path<Uuid>) -> ApiResult<Json<StockView>> {
        let full = optional_caller(req)
            .await?
            .is_some_and(|c| c.has(authority::INVENTORY_WRITE));
        match store::stock(&self.state.base.pool, product_id.0).await? {
            Some(row) => Ok(Json(StockView::new(&row, full))),
            None => Err(Problem::not_found("no stock is recorded for this product")),
        }
    }

    /// Set on_hand and safety stock (manager). on_hand cannot go below what is reserved.
    #[oai(
        path = "/api/v1/inventory/:product_id",
        method = "put",
        operation_id = "set_stock",
        tag = "Tag::Stock"
    )]
    async fn set(
        &self,
        auth: Authorized<needs::InventoryWrite>,
        product_id: Path<Uuid>,
        body: Json<SetStock>,
    ) -> ApiResult<Json<StockView>> {
        let mut errors = Vec::new();
        if body.on_hand < 0 {
            errors.push(FieldError::new("on_hand", "must not be negative"));
        }
        if body.safety_stock < 0 {
            errors.push(FieldError::new("safety_stock", "must not be negative"));
        }
        if !errors.is_empty() {
            return Err(Problem::invalid(errors));
        }
        let mut tx = self.state.base.pool.begin().await?;
        let change = store::set_stock(
            &mut tx,
            product_id.0,
            body.on_hand,
            body.safety_stock,
            auth.0.id,
        )
        .await?;
        let row = self.finish_change(change)?;
        tx.commit().await?;
        Ok(Json(StockView::new(&row, true)))
    }

    /// Add to or remove from on_hand, with a reason for the audit trail (manager).
    #[oai(
        path = "/api/v1/inventory/:product_id/adjust",
        method = "post",
        operation_id = "adjust_stock",
        tag = "Tag::Stock"
    )]
    async fn adjust(
        &self,
        auth: Authorized<needs::InventoryWrite>,
        product_id: Path<Uuid>,
        body: Json<Adjustment>,
    ) -> ApiResult<Json<StockView>> {
        let reason = body.reason.trim();
        let mut errors = Vec::new();
        if body.delta == 0 {
            errors.push(FieldError::new("delta", "must not be zero"));
        }
        if !(1..=200).contains(&reason.chars().count()) {
            errors.push(FieldError::new("reason", "must be 1 to 200 characters"));
        }
        if !errors.is_empty() {
            return Err(Problem::invalid(errors));
        }
        let mut tx = self.state.base.pool.begin().await?;
        let change =
            store::adjust_stock(&mut tx, product_id.0, body.delta, reason, auth.0.id).await?;
        let row = self.finish_change(change)?;
        tx.commit().await?;
        Ok(Json(StockView::new(&row, true)))
    }

    /// Whether each line could be met now (for cart).
    #[oai(
        path = "/internal/inventory/check",
        method = "post",
        operation_id = "check_stock",
        tag = "Tag::Internal"
    )]
    async fn check(
        &self,
        _auth: InternalAuth,
        body: Json<StockCheckRequest>,
    ) -> ApiResult<Json<StockCheckResponse>> {
        validate_lines(&body.lines)?;
        let lines = store::check(&self.state.base.pool, &body.lines).await?;
        Ok(Json(StockCheckResponse { lines }))
    }

    /// Reserve every line for an order, or none (409 naming the short lines). Idempotent
    /// per order id.
    #[oai(
        path = "/internal/inventory/reservations",
        method = "post",
        operation_id = "reserve_stock",
        tag = "Tag::Internal"
    )]
    async fn reserve(
        &self,
        _auth: InternalAuth,
        body: Json<ReservationRequest>,
    ) -> ApiResult<ReservationResponse> {
        let req = body.0;
        validate_lines(&req.lines)?;
        let now = Utc::now();
        if req.expires_at <= now || req.expires_at > now + self.state.config.max_reservation {
            return Err(Problem::invalid(vec![FieldError::new(
                "expires_at",
                format!(
                    "must be in the future and within {} seconds",
                    self.state.config.max_reservation.as_secs()
                ),
            )]));
        }
        let mut lines = req.lines.clone();
        lines.sort_by_key(|l| l.product_id);
        let mut tx = self.state.base.pool.begin().await?;
        match store::reserve(&mut tx, req.order_id, &lines, req.expires_at).await? {
            Reserve::Created => {
                tx.commit().await?;
                Ok(ReservationResponse::Created(Json(Reservation {
                    order_id: req.order_id,
                    lines,
                    expires_at: req.expires_at,
                    status: "held".into(),
                })))
            }
            Reserve::Exists => {
                let (row, held) = store::reservation(&mut tx, req.order_id)
                    .await?
                    .ok_or_else(|| Problem::internal("a reservation vanished"))?;
                tx.commit().await?;
                if held != lines {
                    return Err(Problem::conflict(
                        "this order already holds a reservation with other lines",
                    ));
                }
                Ok(ReservationResponse::Existing(Json(Reservation {
                    order_id: row.order_id,
                    lines: held,
                    expires_at: row.expires_at,
                    status: row.status,
                })))
            }
            Reserve::Short => {
                tx.rollback().await?;
                let checked = store::check(&self.state.base.pool, &lines).await?;
                Err(short_problem(
                    checked.into_iter().filter(|l| !l.sufficient).collect(),
                ))
            }
        }
    }
}

impl InventoryApi {
    fn finish_change(&self, change: StockChange) -> ApiResult<StockRow> {
        match change {
            StockChange::Done(row) => Ok(row),
            StockChange::BelowReserved { reserved } => Err(Problem::conflict(format!(
                "on_hand cannot go below the {reserved} units reserved by open orders"
            ))),
            StockChange::Missing => Err(Problem::not_found(
                "no stock is recorded for this product; set it first",
            )),
        }
    }
}
