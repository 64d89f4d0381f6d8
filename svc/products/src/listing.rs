//! What the public catalog listing asks for: filter, text search, sort order and the page it
//! continues from (an opaque cursor).

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use chrono::{DateTime, Utc};
use poem_openapi::Enum;
use serde::{Deserialize, Serialize};
use sqlx::PgPool;
use uuid::Uuid;

use crate::store;

/// The order of the listing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Enum)]
#[oai(rename_all = "lowercase")]
pub enum Sort {
    /// By name, A to Z.
    Name,
    /// By price, cheapest first.
    Price,
    /// Newest first.
    Newest,
    /// Best match of `q` first (needs `q`).
    Relevance,
}

/// Where the next page starts. Keyset pagination on (sort key, id) for the stable orders; an
/// offset for relevance, whose ranks are not stored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "s", rename_all = "lowercase", deny_unknown_fields)]
pub enum Cursor {
    Name { k: String, id: Uuid },
    Price { k: i64, id: Uuid },
    Newest { k: DateTime<Utc>, id: Uuid },
    Relevance { o: i64 },
}

impl Cursor {
    pub fn encode(&self) -> String {
        URL_SAFE_NO_PAD.encode(serde_json::to_vec(self).expect("a cursor serialises"))
    }

    /// `None` for anything this service did not hand out.
    pub fn decode(raw: &str) -> Option<Self> {
        let bytes = URL_SAFE_NO_PAD.decode(raw.trim()).ok()?;
        let cursor: Cursor = serde_json::from_slice(&bytes).ok()?;
        match cursor {
            Cursor::Relevance { o } if o < 0 => None,
            c => Some(c),
        }
    }

    pub fn sort(&self) -> Sort {
        match self {
            Cursor::Name { .. } => Sort::Name,
            Cursor::Price { .. } => Sort::Price,
            Cursor::Newest { .. } => Sort::Newest,
            Cursor::Relevance { .. } => Sort::Relevance,
        }
    }
}

/// One page request of the listing.
#[derive(Debug, Clone)]
pub struct Listing {
    /// Only products of the category with this slug.
    pub category: Option<String>,
    /// Full-text search (`websearch_to_tsquery` syntax: words, "phrases", -not, or).
    pub q: Option<String>,
    pub sort: Sort,
    pub after: Option<Cursor>,
    /// Rows to fetch (one more than the page, to know whether another follows).
    pub fetch: i64,
}

impl Listing {
    /// The first page of a text search as the API runs it by default.
    pub fn search(q: &str, fetch: i64) -> Self {
        Self {
            category: None,
            q: Some(q.to_owned()),
            sort: Sort::Relevance,
            after: None,
            fetch,
        }
    }
}

/// The `EXPLAIN` plan of the SQL the listing runs for a text search of `q` (first page of 20,
/// by relevance), one plan line per line.
pub async fn explain_search(pool: &PgPool, q: &str) -> Result<String, sqlx::Error> {
    store::explain_listing(pool, &Listing::search(q, 21)).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursors_round_trip_and_foreign_ones_are_refused() {
        let id = Uuid::now_v7();
        for c in [
            Cursor::Name {
                k: "Mug ☕".into(),
                id,
            },
            Cursor::Price { k: 1999, id },
            Cursor::Newest { k: Utc::now(), id },
            Cursor::Relevance { o: 40 },
        ] {
            assert_eq!(Cursor::decode(&c.encode()), Some(c));
        }
        assert_eq!(Cursor::decode("not a cursor"), None);
        assert_eq!(
            Cursor::decode(&URL_SAFE_NO_PAD.encode(b"{\"s\":\"relevance\",\"o\":-5}")),
            None
        );
    }
}
