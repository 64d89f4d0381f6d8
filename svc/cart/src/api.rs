//! The cart API: one cart per customer, priced and checked against products and inventory.

use contracts::internal::{
    CartContents, MAX_LINES, ProductLookupRequest, ProductLookupResponse, ProductSummary,
    StockCheckRequest, StockCheckResponse, StockLine,
};
use contracts::money::Money;
use platform::auth::{Authorized, InternalAuth, needs};
use platform::problem::{ApiResult, FieldError, Problem};
use poem_openapi::param::Path;
use poem_openapi::payload::Json;
use poem_openapi::{ApiResponse, Object, OpenApi, Tags};
use uuid::Uuid;

use crate::{Cart, store};

#[derive(Tags)]
enum Tag {
    /// The caller's cart
    Cart,
    /// Service-to-service calls
    Internal,
}

pub struct CartApi {
    pub(crate) state: Cart,
}

#[derive(Debug, Object)]
#[oai(deny_unknown_fields)]
struct SetQuantity {
    /// 1 to 99.
    quantity: i32,
}

#[derive(Debug, Object)]
#[oai(skip_serializing_if_is_none)]
struct CartLine {
    product_id: Uuid,
    name: Option<String>,
    quantity: i32,
    unit_price: Option<Money>,
    line_total: Option<Money>,
    /// False when the product is no longer sold or stock cannot cover the quantity.
    available: bool,
    /// Why the line is unavailable.
    unavailable_reason: Option<String>,
}

#[derive(Debug, Object)]
struct CartView {
    lines: Vec<CartLine>,
    /// The sum of the available lines, one entry per currency.
    totals: Vec<Money>,
    /// Number of units in the cart.
    item_count: i32,
}

#[derive(ApiResponse)]
enum NoContent {
    /// Done.
    #[oai(status = 204)]
    Done,
}

pub const MIN_QUANTITY: i32 = 1;
pub const MAX_QUANTITY: i32 = 99;

impl CartApi {
    async fn lookup(&self, ids: Vec<Uuid>) -> ApiResult<Vec<ProductSummary>> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let resp: ProductLookupResponse = self
            .state
            .products
            .post(
                "/internal/products/lookup",
                &ProductLookupRequest { ids },
                None,
                true,
            )
            .await?;
        Ok(resp.products)
    }

    async fn check(&self, lines: Vec<StockLine>) -> ApiResult<StockCheckResponse> {
        Ok(self
            .state
            .inventory
            .post(
                "/internal/inventory/check",
                &StockCheckRequest { lines },
                None,
                true,
            )
            .await?)
    }

    async fn view(&self, user: Uuid) -> ApiResult<CartView> {
        let lines = store::lines(&self.state.base.pool, user).await?;
        if lines.is_empty() {
            return Ok(CartView {
                lines: vec![],
                totals: vec![],
                item_count: 0,
            });
        }
        let (products, stock) = tokio::try_join!(
            self.lookup(lines.iter().map(|l| l.product_id).collect()),
            self.check(lines.clone())
        )?;
        let mut totals: Vec<Money> = Vec::new();
        let mut view_lines = Vec::with_capacity(lines.len());
        for line in &lines {
            let product = products.iter().find(|p| p.id == line.product_id);
            let sufficient = stock
                .lines
                .iter()
                .find(|s| s.product_id == line.product_id)
                .is_some_and(|s| s.sufficient);
            let reason = match product {
                None => Some("this product no longer exists".to_owned()),
                Some(p) if !p.active => Some("this product is no longer sold".to_owned()),
                Some(_) if !sufficient => Some("not enough stock for this quantity".to_owned()),
                Some(_) => None,
            };
            let line_total = product
                .map(|p| Money::new(p.price.amount * i64::from(line.quantity), &p.price.currency));
            if reason.is_none()
                && let Some(total) = &line_total
            {
                match totals.iter_mut().find(|t| t.currency == total.currency) {
                    Some(t) => t.amount += total.amount,
                    None => totals.push(total.clone()),
                }
            }
            view_lines.push(CartLine {
                product_id: line.product_id,
                name: product.map(|p| p.name.clone()),
                quantity: line.quantity,
                unit_price: product.map(|p| p.price.clone()),
                line_total,
                available: reason.is_none(),
                unavailable_reason: reason,
            });
        }
        Ok(CartView {
            item_count: lines.iter().map(|l| l.quantity).sum(),
            lines: view_lines,
            totals,
        })
    }
}

#[OpenApi]
impl CartApi {
    /// The caller's cart, priced from products, with lines no longer available flagged.
    #[oai(
        path = "/api/v1/cart",
        method = "get",
        operation_id = "get_cart",
        tag = "Tag::Cart"
    )]
    async fn get(&self, auth: Authorized<needs::Shop>) -> ApiResult<Json<CartView>> {
        Ok(Json(self.view(auth.0.id).await?))
    }

    /// Set how many of a product the cart holds (1 to 99), if stock covers it; answers the line.
    /// A cart holds at most 100 different products (409 for one more).
    #[oai(
        path = "/api/v1/cart/items/:product_id",
        method = "put",
        operation_id = "set_cart_item",
        tag = "Tag::Cart"
    )]
    async fn set_item(
        &self,
        auth: Authorized<needs::Shop>,
        product_id: Path<Uuid>,
        body: Json<SetQuantity>,
    ) -> ApiResult<Json<CartLine>> {
        let quantity = body.quantity;
        if !(MIN_QUANTITY..=MAX_QUANTITY).contains(&quantity) {
            return Err(Problem::invalid(vec![FieldError::new(
                "quantity",
                format!("must be {MIN_QUANTITY} to {MAX_QUANTITY}"),
            )]));
        }
        let line = StockLine {
            product_id: product_id.0,
            quantity,
        };
        let (products, stock) =
            tokio::try_join!(self.lookup(vec![product_id.0]), self.check(vec![line]))?;
        let product = match products.into_iter().next() {
            None => return Err(Problem::not_found("no such product")),
            Some(p) if !p.active => {
                return Err(Problem::conflict("this product is no longer sold"));
            }
            Some(p) => p,
        };
        if let Some(short) = stock.lines.iter().find(|l| !l.sufficient) {
            return Err(Problem {
                errors: vec![FieldError::new(
                    "quantity",
                    format!("only {} available", short.available),
                )],
                ..Problem::conflict(format!(
                    "not enough stock: {} requested, {} available",
                    quantity, short.available
                ))
            });
        }
        let mut tx = self.state.base.pool.begin().await?;
        let set =
            store::set_quantity(&mut tx, auth.0.id, product_id.0, quantity, MAX_LINES).await?;
        if set == store::LineSet::CartFull {
            return Err(Problem::conflict(format!(
                "the cart holds {MAX_LINES} different products, the most it may; remove one or check out first"
            )));
        }
        tx.commit().await?;
        Ok(Json(CartLine {
            product_id: product.id,
            line_total: Some(Money::new(
                product.price.amount * i64::from(quantity),
                &product.price.currency,
            )),
            name: Some(product.name),
            quantity,
            unit_price: Some(product.price),
            available: true,
            unavailable_reason: None,
        }))
    }

    /// Remove a product from the cart.
    #[oai(
        path = "/api/v1/cart/items/:product_id",
        method = "delete",
        operation_id = "remove_cart_item",
        tag = "Tag::Cart"
    )]
    async fn remove_item(
        &self,
        auth: Authorized<needs::Shop>,
        product_id: Path<Uuid>,
    ) -> ApiResult<NoContent> {
        let mut tx = self.state.base.pool.begin().await?;
        store::remove_line(&mut tx, auth.0.id, product_id.0).await?;
        tx.commit().await?;
        Ok(NoContent::Done)
    }

    /// Empty the cart.
    #[oai(
        path = "/api/v1/cart",
        method = "delete",
        operation_id = "clear_cart",
        tag = "Tag::Cart"
    )]
    async fn clear(&self, auth: Authorized<needs::Shop>) -> ApiResult<NoContent> {
        store::clear(&self.state.base.pool, auth.0.id).await?;
        Ok(NoContent::Done)
    }

    /// A customer's cart lines (for orders at checkout).
    #[oai(
        path = "/internal/carts/:user_id",
        method = "get",
        operation_id = "internal_get_cart",
        tag = "Tag::Internal"
    )]
    async fn internal_get(
        &self,
        _auth: InternalAuth,
        user_id: Path<Uuid>,
    ) -> ApiResult<Json<CartContents>> {
        let lines = store::lines(&self.state.base.pool, user_id.0).await?;
        Ok(Json(CartContents {
            user_id: user_id.0,
            lines,
        }))
    }
}
