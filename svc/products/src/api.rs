//! The products API, as SPEC.md describes it.

use contracts::Text;
use platform::web::{page_size, page_size_problem};
use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use contracts::internal::{MAX_LINES, ProductLookupRequest, ProductLookupResponse, ProductSummary};
use contracts::money::Money;
use platform::auth::{Authorized, InternalAuth, needs};
use platform::problem::{ApiResult, FieldError, Problem};
use poem_openapi::param::{Header, Path, Query};
use poem_openapi::payload::Json;
use poem_openapi::{ApiResponse, Object, OpenApi, Tags};
use uuid::Uuid;

use crate::Products;
use crate::listing::{Cursor, Listing, Sort};
use crate::precondition::{IfMatch, etag};
use crate::store::{self, CategoryDeletion, CategoryRow, ProductRow};
use crate::validate;
use platform::problem::Checks;

#[derive(Tags)]
enum Tag {
    /// Reading the catalog (public)
    Catalog,
    /// Managing products and categories (`product:write`)
    Management,
    /// Service-to-service calls (`X-Internal-Token`)
    Internal,
}

pub struct ProductsApi {
    pub(crate) state: Products,
}

#[derive(Debug, Object)]
struct Category {
    id: Uuid,
    /// The category's name in URLs and filters: a-z, 0-9 and '-'.
    slug: String,
    name: String,
    created_at: DateTime<Utc>,
}

impl From<CategoryRow> for Category {
    fn from(c: CategoryRow) -> Self {
        Self {
            id: c.id,
            slug: c.slug,
            name: c.name,
            created_at: c.created_at,
        }
    }
}

#[derive(Debug, Object)]
struct CategoryList {
    items: Vec<Category>,
}

#[derive(Debug, Object)]
#[oai(deny_unknown_fields)]
struct CreateCategoryRequest {
    /// 1 to 64 characters of a-z, 0-9 and '-'; unique.
    slug: Text,
    /// 1 to 100 characters.
    name: Text,
}

#[derive(Debug, Object)]
#[oai(deny_unknown_fields)]
struct RenameCategoryRequest {
    /// 1 to 100 characters.
    name: Text,
}

#[derive(Debug, Object)]
struct Product {
    id: Uuid,
    sku: String,
    name: String,
    description: String,
    price: Money,
    /// The slug of the product's category.
    category: String,
    image_urls: Vec<String>,
    /// Free-form attributes (size, colour, material, …).
    attributes: BTreeMap<String, serde_json::Value>,
    /// False once deleted: no longer listed, still readable by id and SKU.
    active: bool,
    /// Bumped by every change; the `ETag` is this number in quotes.
    version: i32,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
}

impl From<ProductRow> for Product {
    fn from(p: ProductRow) -> Self {
        let attributes = match p.attributes.0 {
            serde_json::Value::Object(map) => map.into_iter().collect(),
            _ => BTreeMap::new(),
        };
        Self {
            id: p.id,
            sku: p.sku,
            name: p.name,
            description: p.description,
            price: Money {
                amount: p.price_amount,
                currency: p.currency.into(),
            },
            category: p.category,
            image_urls: p.image_urls,
            attributes,
            active: p.active,
            version: p.version,
            created_at: p.created_at,
            updated_at: p.updated_at,
        }
    }
}

#[derive(Debug, Object)]
#[oai(skip_serializing_if_is_none)]
struct ProductPage {
    items: Vec<Product>,
    /// Pass as `cursor` (with the same `sort`) to get the next page; absent on the last page.
    #[oai(skip_serializing_if_is_none)]
    next_cursor: Option<String>,
}

#[derive(Debug, Object)]
#[oai(deny_unknown_fields)]
struct CreateProductRequest {
    /// 1 to 64 letters, digits, '-', '_' or '.'; unique.
    sku: Text,
    /// 1 to 200 characters.
    name: Text,
    /// Up to 10,000 characters.
    #[oai(default)]
    description: Text,
    /// A non-negative amount in minor units and an ISO 4217 currency.
    price: Money,
    /// The slug of an existing category.
    category: Text,
    /// Up to 20 absolute http(s) URLs.
    #[oai(default)]
    image_urls: Vec<Text>,
    /// A JSON object of free-form attributes (up to 16 KiB).
    #[oai(default)]
    attributes: BTreeMap<String, serde_json::Value>,
}

/// Only the fields present change; the product's `ETag` must be sent as `If-Match`.
#[derive(Debug, Object)]
#[oai(skip_serializing_if_is_none, deny_unknown_fields)]
struct UpdateProductRequest {
    name: Option<Text>,
    description: Option<Text>,
    price: Option<Money>,
    /// The slug of an existing category.
    category: Option<Text>,
    /// Replaces the list.
    image_urls: Option<Vec<Text>>,
    /// Replaces the attributes.
    attributes: Option<BTreeMap<String, serde_json::Value>>,
    /// True brings a deleted product back into the listing.
    active: Option<bool>,
}

#[derive(ApiResponse)]
enum ProductResponse {
    /// The product. `ETag` is its version, to send as `If-Match` with an update.
    #[oai(status = 200)]
    Ok(Json<Product>, #[oai(header = "ETag")] String),
}

#[derive(ApiResponse)]
enum CreatedProduct {
    /// The product was created.
    #[oai(status = 201)]
    Created(
        Json<Product>,
        #[oai(header = "ETag")] String,
        #[oai(header = "Location")] String,
    ),
}

#[derive(ApiResponse)]
enum CreatedCategory {
    /// The category was created.
    #[oai(status = 201)]
    Created(Json<Category>),
}

#[derive(ApiResponse)]
enum NoContent {
    /// Done.
    #[oai(status = 204)]
    Done,
}

const MAX_QUERY_CHARS: usize = 200;

fn product_response(p: ProductRow) -> ProductResponse {
    let tag = etag(p.version);
    ProductResponse::Ok(Json(p.into()), tag)
}

fn no_such_product() -> Problem {
    Problem::not_found("no product has this id")
}

fn no_such_category(slug: &str) -> Problem {
    Problem::not_found(format!("no category has the slug {slug:?}"))
}

fn unknown_category(slug: &str) -> Problem {
    Problem::invalid(vec![FieldError::new(
        "category",
        format!(
            "no category has the slug {slug:?}; create it first or pick one from GET /api/v1/products/categories"
        ),
    )])
}

/// A request's texts as the store binds them.
fn strings(texts: Vec<Text>) -> Vec<String> {
    texts.into_iter().map(String::from).collect()
}

fn check_price(checks: &mut Checks, price: &Money) {
    for (field, message) in validate::price("price", price) {
        checks.check(&field, Some(message));
    }
}

/// The cursor that continues after `rows` (already cut to the page).
fn next_cursor(sort: Sort, after: Option<&Cursor>, rows: &[ProductRow]) -> Option<Cursor> {
    let last = rows.last()?;
    Some(match sort {
        Sort::Name => Cursor::Name {
            k: last.name.clone(),
            id: last.id,
        },
        Sort::Price => Cursor::Price {
            k: last.price_amount,
            id: last.id,
        },
        Sort::Newest => Cursor::Newest {
            k: last.created_at,
            id: last.id,
        },
        Sort::Relevance => {
            let before = match after {
                Some(Cursor::Relevance { o }) => *o,
                _ => 0,
            };
            Cursor::Relevance {
                o: before + rows.len() as i64,
            }
        }
    })
}

impl ProductsApi {
    fn db(&self) -> &sqlx::PgPool {
        &self.state.base.pool
    }
}

#[OpenApi]
impl ProductsApi {
    /// List active products: filter by category, search name and description, sort, page.
    #[oai(
        path = "/api/v1/products",
        method = "get",
        operation_id = "list_products",
        tag = "Tag::Catalog"
    )]
    async fn list_products(
        &self,
        /// Only products of the category with this slug.
        category: Query<Option<String>>,
        /// Full-text search over name and description: words, "a phrase", -excluded, or.
        q: Query<Option<String>>,
        /// `relevance` (default with `q`, and only with `q`), `newest` (default otherwise),
        /// `name` or `price`.
        sort: Query<Option<Sort>>,
        /// 1 to 100; default 20.
        limit: Query<Option<platform::web::PageLimit>>,
        /// The `next_cursor` of the previous page.
        cursor: Query<Option<String>>,
    ) -> ApiResult<Json<ProductPage>> {
        let limit = page_size(limit.0);
        let q = q.0.map(|q| q.trim().to_owned()).filter(|q| !q.is_empty());
        let sort = sort.0.unwrap_or(if q.is_some() {
            Sort::Relevance
        } else {
            Sort::Newest
        });
        let mut checks = Checks::default();
        checks
            .check("limit", page_size_problem(limit))
            .check(
                "q",
                q.as_ref()
                    .filter(|q| q.chars().count() > MAX_QUERY_CHARS)
                    .map(|_| format!("must be at most {MAX_QUERY_CHARS} characters long")),
            )
            .check(
                "sort",
                (sort == Sort::Relevance && q.is_none())
                    .then(|| "relevance needs a search text in q".to_owned()),
            );
        checks.finish()?;
        let after = match cursor.0.as_deref() {
            None => None,
            Some(raw) => match Cursor::decode(raw) {
                Some(c) if c.sort() == sort => Some(c),
                Some(_) => {
                    return Err(Problem::bad_request(
                        "this cursor continues a listing in another sort order; pass the same sort as the request that returned it",
                    ));
                }
                None => {
                    return Err(Problem::bad_request(
                        "the cursor is not one this service handed out; pass next_cursor unchanged",
                    ));
                }
            },
        };
        let category = category
            .0
            .map(|c| c.trim().to_owned())
            .filter(|c| !c.is_empty());
        let listing = Listing {
            category,
            q,
            sort,
            after,
            fetch: i64::from(limit) + 1,
        };
        let mut rows = store::list_products(self.db(), &listing).await?;
        let more = rows.len() > limit as usize;
        rows.truncate(limit as usize);
        let next_cursor = if more {
            next_cursor(sort, listing.after.as_ref(), &rows).map(|c| c.encode())
        } else {
            None
        };
        Ok(Json(ProductPage {
            items: rows.into_iter().map(Product::from).collect(),
            next_cursor,
        }))
    }

    /// One product by id, active or not (old orders still show deleted products).
    #[oai(
        path = "/api/v1/products/:id",
        method = "get",
        operation_id = "get_product",
        tag = "Tag::Catalog"
    )]
    async fn get_product(&self, id: Path<Uuid>) -> ApiResult<ProductResponse> {
        match store::product_by_id(self.db(), id.0).await? {
            Some(p) => Ok(product_response(p)),
            None => Err(no_such_product()),
        }
    }

    /// One product by SKU, active or not.
    #[oai(
        path = "/api/v1/products/sku/:sku",
        method = "get",
        operation_id = "get_product_by_sku",
        tag = "Tag::Catalog"
    )]
    async fn get_product_by_sku(&self, sku: Path<String>) -> ApiResult<ProductResponse> {
        match store::product_by_sku(self.db(), &sku.0).await? {
            Some(p) => Ok(product_response(p)),
            None => Err(Problem::not_found(format!(
                "no product has the SKU {:?}",
                sku.0
            ))),
        }
    }

    /// Every category, by name.
    #[oai(
        path = "/api/v1/products/categories",
        method = "get",
        operation_id = "list_categories",
        tag = "Tag::Catalog"
    )]
    async fn list_categories(&self) -> ApiResult<Json<CategoryList>> {
        let items = store::categories(self.db()).await?;
        Ok(Json(CategoryList {
            items: items.into_iter().map(Category::from).collect(),
        }))
    }

    /// Create a category.
    #[oai(
        path = "/api/v1/products/categories",
        method = "post",
        operation_id = "create_category",
        tag = "Tag::Management"
    )]
    async fn create_category(
        &self,
        _auth: Authorized<needs::ProductWrite>,
        body: Json<CreateCategoryRequest>,
    ) -> ApiResult<CreatedCategory> {
        let req = body.0;
        Checks::default()
            .check("slug", validate::slug(&req.slug))
            .check("name", validate::category_name(&req.name))
            .finish()?;
        match store::insert_category(self.db(), Uuid::now_v7(), &req.slug, req.name.trim()).await? {
            Some(c) => Ok(CreatedCategory::Created(Json(c.into()))),
            None => Err(Problem::conflict(format!(
                "a category with the slug {:?} already exists",
                req.slug
            ))),
        }
    }

    /// Rename a category (its slug stays).
    #[oai(
        path = "/api/v1/products/categories/:slug",
        method = "patch",
        operation_id = "rename_category",
        tag = "Tag::Management"
    )]
    async fn rename_category(
        &self,
        _auth: Authorized<needs::ProductWrite>,
        slug: Path<String>,
        body: Json<RenameCategoryRequest>,
    ) -> ApiResult<Json<Category>> {
        Checks::default()
            .check("name", validate::category_name(&body.0.name))
            .finish()?;
        match store::rename_category(self.db(), &slug.0, body.0.name.trim()).await? {
            Some(c) => Ok(Json(c.into())),
            None => Err(no_such_category(&slug.0)),
        }
    }

    /// Delete a category; 409 while any product, active or not, belongs to it.
    #[oai(
        path = "/api/v1/products/categories/:slug",
        method = "delete",
        operation_id = "delete_category",
        tag = "Tag::Management"
    )]
    async fn delete_category(
        &self,
        _auth: Authorized<needs::ProductWrite>,
        slug: Path<String>,
    ) -> ApiResult<NoContent> {
        match store::delete_category(self.db(), &slug.0).await? {
            CategoryDeletion::Deleted => Ok(NoContent::Done),
            CategoryDeletion::NotFound => Err(no_such_category(&slug.0)),
            CategoryDeletion::InUse => Err(Problem::conflict(format!(
                "products still belong to the category {:?}; move them to another category first",
                slug.0
            ))),
        }
    }

    /// Create a product.
    #[oai(
        path = "/api/v1/products",
        method = "post",
        operation_id = "create_product",
        tag = "Tag::Management"
    )]
    async fn create_product(
        &self,
        _auth: Authorized<needs::ProductWrite>,
        body: Json<CreateProductRequest>,
    ) -> ApiResult<CreatedProduct> {
        let req = body.0;
        let image_urls = strings(req.image_urls);
        let mut checks = Checks::default();
        checks
            .check("sku", validate::sku(&req.sku))
            .check("name", validate::product_name(&req.name))
            .check("description", validate::description(&req.description));
        check_price(&mut checks, &req.price);
        checks
            .check("image_urls", validate::image_urls(&image_urls))
            .check("attributes", validate::attributes(&req.attributes))
            .finish()?;
        let Some(category_id) = store::category_id_by_slug(self.db(), &req.category).await? else {
            return Err(unknown_category(&req.category));
        };
        let id = Uuid::now_v7();
        let attributes = serde_json::Value::Object(req.attributes.into_iter().collect());
        let created = store::insert_product(
            self.db(),
            &store::NewProduct {
                id,
                sku: &req.sku,
                name: req.name.trim(),
                description: &req.description,
                price_amount: req.price.amount,
                currency: &req.price.currency,
                category_id,
                image_urls: &image_urls,
                attributes: &attributes,
            },
        )
        .await;
        match created {
            Ok(true) => {}
            Ok(false) => {
                return Err(Problem::conflict(format!(
                    "a product with the SKU {:?} already exists",
                    req.sku
                )));
            }
            // The category was deleted between the lookup and the insert.
            Err(sqlx::Error::Database(e)) if e.is_foreign_key_violation() => {
                return Err(unknown_category(&req.category));
            }
            Err(e) => return Err(e.into()),
        }
        let product = store::product_by_id(self.db(), id)
            .await?
            .ok_or_else(|| Problem::internal("product vanished"))?;
        let tag = etag(product.version);
        Ok(CreatedProduct::Created(
            Json(product.into()),
            tag,
            format!("/api/v1/products/{id}"),
        ))
    }

    /// Change a product. Needs `If-Match` with the ETag of the version the change is based
    /// on: 428 without it, 412 when the product changed since.
    #[oai(
        path = "/api/v1/products/:id",
        method = "patch",
        operation_id = "update_product",
        tag = "Tag::Management"
    )]
    async fn update_product(
        &self,
        _auth: Authorized<needs::ProductWrite>,
        id: Path<Uuid>,
        /// The product's ETag as a GET returned it (or `*` for any version).
        #[oai(name = "If-Match")]
        if_match: Header<IfMatch>,
        body: Json<UpdateProductRequest>,
    ) -> ApiResult<ProductResponse> {
        // Without it no update can go through, whatever the body says.
        if_match.0.required()?;
        let req = body.0;
        let image_urls = req.image_urls.map(strings);
        let mut checks = Checks::default();
        checks
            .check("name", req.name.as_deref().and_then(validate::product_name))
            .check(
                "description",
                req.description.as_deref().and_then(validate::description),
            );
        if let Some(price) = &req.price {
            check_price(&mut checks, price);
        }
        checks
            .check(
                "image_urls",
                image_urls.as_deref().and_then(validate::image_urls),
            )
            .check(
                "attributes",
                req.attributes.as_ref().and_then(validate::attributes),
            );
        let nothing = req.name.is_none()
            && req.description.is_none()
            && req.price.is_none()
            && req.category.is_none()
            && image_urls.is_none()
            && req.attributes.is_none()
            && req.active.is_none();
        checks.check(
            "body",
            nothing.then(|| "names nothing to change".to_owned()),
        );
        checks.finish()?;

        let mut tx = self.db().begin().await?;
        let Some(version) = store::lock_product_version(&mut tx, id.0).await? else {
            return Err(no_such_product());
        };
        if_match.0.check(version)?;
        let category_id = match &req.category {
            None => None,
            Some(slug) => match store::category_id_by_slug(&mut *tx, slug).await? {
                Some(c) => Some(c),
                None => return Err(unknown_category(slug)),
            },
        };
        let attributes = req
            .attributes
            .map(|a| serde_json::Value::Object(a.into_iter().collect()));
        store::update_product(
            &mut *tx,
            id.0,
            &store::ProductChanges {
                name: req.name.as_deref().map(str::trim),
                description: req.description.as_deref(),
                price: req.price.as_ref().map(|p| (p.amount, p.currency.as_str())),
                category_id,
                image_urls: image_urls.as_deref(),
                attributes: attributes.as_ref(),
                active: req.active,
            },
        )
        .await?;
        let product = store::product_by_id(&mut *tx, id.0)
            .await?
            .ok_or_else(no_such_product)?;
        tx.commit().await?;
        Ok(product_response(product))
    }

    /// Delete a product: it leaves the listing but stays readable by id and SKU.
    #[oai(
        path = "/api/v1/products/:id",
        method = "delete",
        operation_id = "delete_product",
        tag = "Tag::Management"
    )]
    async fn delete_product(
        &self,
        _auth: Authorized<needs::ProductWrite>,
        id: Path<Uuid>,
    ) -> ApiResult<NoContent> {
        if store::deactivate_product(self.db(), id.0).await? {
            Ok(NoContent::Done)
        } else {
            Err(no_such_product())
        }
    }

    /// Current name, price and active flag of up to 100 products (for cart and orders).
    /// Unknown ids are left out.
    #[oai(
        path = "/internal/products/lookup",
        method = "post",
        operation_id = "lookup_products",
        tag = "Tag::Internal"
    )]
    async fn lookup_products(
        &self,
        _auth: InternalAuth,
        body: Json<ProductLookupRequest>,
    ) -> ApiResult<Json<ProductLookupResponse>> {
        let mut ids = body.0.ids;
        if ids.len() > MAX_LINES {
            return Err(Problem::invalid(vec![FieldError::new(
                "ids",
                format!("must list at most {MAX_LINES} ids"),
            )]));
        }
        ids.sort();
        ids.dedup();
        let rows = store::products_by_ids(self.db(), &ids).await?;
        Ok(Json(ProductLookupResponse {
            products: rows
                .into_iter()
                .map(|p| ProductSummary {
                    id: p.id,
                    sku: p.sku,
                    name: p.name,
                    price: Money {
                        amount: p.price_amount,
                        currency: p.currency.into(),
                    },
                    active: p.active,
                })
                .collect(),
        }))
    }
}
