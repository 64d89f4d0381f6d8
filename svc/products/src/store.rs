//! The products database: every query of the service, named for what it means.

use chrono::{DateTime, Utc};
use sqlx::types::Json;
use sqlx::{PgConnection, PgExecutor, PgPool, Postgres, QueryBuilder};
use uuid::Uuid;

use crate::listing::{Cursor, Listing, Sort};

// ---- categories -----------------------------------------------------------------------

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct CategoryRow {
    pub id: Uuid,
    pub slug: String,
    pub name: String,
    pub created_at: DateTime<Utc>,
}

pub async fn categories(db: impl PgExecutor<'_>) -> Result<Vec<CategoryRow>, sqlx::Error> {
    sqlx::query_as("SELECT id, slug, name, created_at FROM categories ORDER BY name, slug")
        .fetch_all(db)
        .await
}

pub async fn category_id_by_slug(
    db: impl PgExecutor<'_>,
    slug: &str,
) -> Result<Option<Uuid>, sqlx::Error> {
    sqlx::query_scalar("SELECT id FROM categories WHERE slug = $1")
        .bind(slug)
        .fetch_optional(db)
        .await
}

/// Inserts the category; `None` when the slug is taken.
pub async fn insert_category(
    db: impl PgExecutor<'_>,
    id: Uuid,
    slug: &str,
    name: &str,
) -> Result<Option<CategoryRow>, sqlx::Error> {
    sqlx::query_as(
        "INSERT INTO categories (id, slug, name) VALUES ($1, $2, $3)
         ON CONFLICT (slug) DO NOTHING
         RETURNING id, slug, name, created_at",
    )
    .bind(id)
    .bind(slug)
    .bind(name)
    .fetch_optional(db)
    .await
}

/// Renames the category; `None` when no category has this slug.
pub async fn rename_category(
    db: impl PgExecutor<'_>,
    slug: &str,
    name: &str,
) -> Result<Option<CategoryRow>, sqlx::Error> {
    sqlx::query_as(
        "UPDATE categories SET name = $2 WHERE slug = $1 RETURNING id, slug, name, created_at",
    )
    .bind(slug)
    .bind(name)
    .fetch_optional(db)
    .await
}

pub enum CategoryDeletion {
    Deleted,
    NotFound,
    /// Products (active or not) still belong to it.
    InUse,
}

/// Deletes the category unless a product uses it; the foreign key decides, so a product
/// created concurrently cannot be left without its category.
pub async fn delete_category(
    db: impl PgExecutor<'_>,
    slug: &str,
) -> Result<CategoryDeletion, sqlx::Error> {
    match sqlx::query("DELETE FROM categories WHERE slug = $1")
        .bind(slug)
        .execute(db)
        .await
    {
        Ok(done) if done.rows_affected() == 1 => Ok(CategoryDeletion::Deleted),
        Ok(_) => Ok(CategoryDeletion::NotFound),
        Err(sqlx::Error::Database(e)) if e.is_foreign_key_violation() => {
            Ok(CategoryDeletion::InUse)
        }
        Err(e) => Err(e),
    }
}

// ---- products -------------------------------------------------------------------------

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct ProductRow {
    pub id: Uuid,
    pub sku: String,
    pub name: String,
    pub description: String,
    pub price_amount: i64,
    pub currency: String,
    /// The category's slug.
    pub category: String,
    pub image_urls: Vec<String>,
    pub attributes: Json<serde_json::Value>,
    pub active: bool,
    pub version: i32,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

const PRODUCT_COLUMNS: &str = "p.id, p.sku, p.name, p.description, p.price_amount, p.currency, \
     c.slug AS category, p.image_urls, p.attributes, p.active, p.version, p.created_at, p.updated_at";

const PRODUCTS_WITH_CATEGORY: &str = "products p JOIN categories c ON c.id = p.category_id";

pub async fn product_by_id(
    db: impl PgExecutor<'_>,
    id: Uuid,
) -> Result<Option<ProductRow>, sqlx::Error> {
    sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {PRODUCT_COLUMNS} FROM {PRODUCTS_WITH_CATEGORY} WHERE p.id = $1"
    )))
    .bind(id)
    .fetch_optional(db)
    .await
}

pub async fn product_by_sku(
    db: impl PgExecutor<'_>,
    sku: &str,
) -> Result<Option<ProductRow>, sqlx::Error> {
    sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {PRODUCT_COLUMNS} FROM {PRODUCTS_WITH_CATEGORY} WHERE p.sku = $1"
    )))
    .bind(sku)
    .fetch_optional(db)
    .await
}

pub struct NewProduct<'a> {
    pub id: Uuid,
    pub sku: &'a str,
    pub name: &'a str,
    pub description: &'a str,
    pub price_amount: i64,
    pub currency: &'a str,
    pub category_id: Uuid,
    pub image_urls: &'a [String],
    pub attributes: &'a serde_json::Value,
}

/// Inserts the product; `false` when the SKU is taken.
pub async fn insert_product(
    db: impl PgExecutor<'_>,
    p: &NewProduct<'_>,
) -> Result<bool, sqlx::Error> {
    let done = sqlx::query(
        "INSERT INTO products (id, sku, name, description, price_amount, currency, category_id,
                               image_urls, attributes)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)
         ON CONFLICT (sku) DO NOTHING",
    )
    .bind(p.id)
    .bind(p.sku)
    .bind(p.name)
    .bind(p.description)
    .bind(p.price_amount)
    .bind(p.currency)
    .bind(p.category_id)
    .bind(p.image_urls)
    .bind(Json(p.attributes))
    .execute(db)
    .await?;
    Ok(done.rows_affected() == 1)
}

/// The product's current version, its row locked until the transaction ends.
pub async fn lock_product_version(
    tx: &mut PgConnection,
    id: Uuid,
) -> Result<Option<i32>, sqlx::Error> {
    sqlx::query_scalar("SELECT version FROM products WHERE id = $1 FOR UPDATE")
        .bind(id)
        .fetch_optional(tx)
        .await
}

/// What an update changes; `None` keeps the current value.
#[derive(Default)]
pub struct ProductChanges<'a> {
    pub name: Option<&'a str>,
    pub description: Option<&'a str>,
    pub price: Option<(i64, &'a str)>,
    pub category_id: Option<Uuid>,
    pub image_urls: Option<&'a [String]>,
    pub attributes: Option<&'a serde_json::Value>,
    pub active: Option<bool>,
}

/// Applies the changes and bumps the version (the ETag).
pub async fn update_product(
    db: impl PgExecutor<'_>,
    id: Uuid,
    c: &ProductChanges<'_>,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE products SET name = COALESCE($2, name),
                             description = COALESCE($3, description),
                             price_amount = COALESCE($4, price_amount),
                             currency = COALESCE($5, currency),
                             category_id = COALESCE($6, category_id),
                             image_urls = COALESCE($7, image_urls),
                             attributes = COALESCE($8, attributes),
                             active = COALESCE($9, active),
                             version = version + 1,
                             updated_at = now()
         WHERE id = $1",
    )
    .bind(id)
    .bind(c.name)
    .bind(c.description)
    .bind(c.price.map(|(amount, _)| amount))
    .bind(c.price.map(|(_, currency)| currency))
    .bind(c.category_id)
    .bind(c.image_urls)
    .bind(c.attributes.map(Json))
    .bind(c.active)
    .execute(db)
    .await?;
    Ok(())
}

/// The soft delete: the product leaves the listing but stays readable. `false` when no such
/// product exists; deactivating an inactive product changes nothing.
pub async fn deactivate_product(db: impl PgExecutor<'_>, id: Uuid) -> Result<bool, sqlx::Error> {
    let found: Option<bool> = sqlx::query_scalar(
        "WITH changed AS (
             UPDATE products SET active = false, version = version + 1, updated_at = now()
             WHERE id = $1 AND active
             RETURNING id)
         SELECT true FROM products WHERE id = $1",
    )
    .bind(id)
    .fetch_optional(db)
    .await?;
    Ok(found.is_some())
}

/// Current name, price and active flag of each product that exists among `ids`.
pub async fn products_by_ids(
    db: impl PgExecutor<'_>,
    ids: &[Uuid],
) -> Result<Vec<ProductRow>, sqlx::Error> {
    sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {PRODUCT_COLUMNS} FROM {PRODUCTS_WITH_CATEGORY} WHERE p.id = ANY($1) ORDER BY p.id"
    )))
    .bind(ids)
    .fetch_all(db)
    .await
}

// ---- the listing ----------------------------------------------------------------------

/// Appends the listing's query to `qb`: active products, filtered, searched, after the
/// cursor, in the listing's order. The API and `explain_listing` both build it here, so the
/// plan explained is the plan run.
fn push_listing(qb: &mut QueryBuilder<Postgres>, l: &Listing) {
    qb.push(format_args!(
        "SELECT {PRODUCT_COLUMNS} FROM {PRODUCTS_WITH_CATEGORY} WHERE p.active"
    ));
    if let Some(slug) = &l.category {
        qb.push(" AND c.slug = ").push_bind(slug.clone());
    }
    if let Some(q) = &l.q {
        qb.push(" AND p.search @@ websearch_to_tsquery('english', ")
            .push_bind(q.clone())
            .push(")");
    }
    match &l.after {
        Some(Cursor::Name { k, id }) => {
            qb.push(" AND (p.name, p.id) > (")
                .push_bind(k.clone())
                .push(", ")
                .push_bind(*id)
                .push(")");
        }
        Some(Cursor::Price { k, id }) => {
            qb.push(" AND (p.price_amount, p.id) > (")
                .push_bind(*k)
                .push(", ")
                .push_bind(*id)
                .push(")");
        }
        Some(Cursor::Newest { k, id }) => {
            qb.push(" AND (p.created_at, p.id) < (")
                .push_bind(*k)
                .push(", ")
                .push_bind(*id)
                .push(")");
        }
        Some(Cursor::Relevance { .. }) | None => {}
    }
    match (l.sort, &l.q) {
        (Sort::Name, _) => qb.push(" ORDER BY p.name, p.id"),
        (Sort::Price, _) => qb.push(" ORDER BY p.price_amount, p.id"),
        (Sort::Relevance, Some(q)) => qb
            .push(" ORDER BY ts_rank(p.search, websearch_to_tsquery('english', ")
            .push_bind(q.clone())
            .push(")) DESC, p.id"),
        (Sort::Newest, _) | (Sort::Relevance, None) => {
            qb.push(" ORDER BY p.created_at DESC, p.id DESC")
        }
    };
    qb.push(" LIMIT ").push_bind(l.fetch);
    if let Some(Cursor::Relevance { o }) = &l.after {
        qb.push(" OFFSET ").push_bind(*o);
    }
}

pub async fn list_products(db: &PgPool, l: &Listing) -> Result<Vec<ProductRow>, sqlx::Error> {
    let mut qb = QueryBuilder::new("");
    push_listing(&mut qb, l);
    qb.build_query_as().fetch_all(db).await
}

/// The plan of the listing's query, one line per plan line.
pub async fn explain_listing(db: &PgPool, l: &Listing) -> Result<String, sqlx::Error> {
    let mut qb = QueryBuilder::new("EXPLAIN ");
    push_listing(&mut qb, l);
    let lines: Vec<String> = qb.build_query_scalar().fetch_all(db).await?;
    Ok(lines.join("\n"))
}
