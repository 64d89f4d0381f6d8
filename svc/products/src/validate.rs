//! Field checks of this service's requests (collected by `platform::problem::Checks`).

use std::collections::BTreeMap;

use contracts::money::Money;

pub const MAX_NAME_CHARS: usize = 200;
pub const MAX_DESCRIPTION_CHARS: usize = 10_000;
pub const MAX_IMAGES: usize = 20;
pub const MAX_URL_CHARS: usize = 2048;
pub const MAX_ATTRIBUTES_BYTES: usize = 16 * 1024;

/// Letters, digits, `-`, `_` and `.`; 1 to 64 characters.
pub fn sku(sku: &str) -> Option<String> {
    let ok = (1..=64).contains(&sku.len())
        && sku
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.');
    (!ok).then(|| "must be 1 to 64 letters, digits, '-', '_' or '.'".to_owned())
}

pub fn product_name(name: &str) -> Option<String> {
    let n = name.trim().chars().count();
    (!(1..=MAX_NAME_CHARS).contains(&n))
        .then(|| format!("must be 1 to {MAX_NAME_CHARS} characters long"))
}

pub fn description(description: &str) -> Option<String> {
    (description.chars().count() > MAX_DESCRIPTION_CHARS)
        .then(|| format!("must be at most {MAX_DESCRIPTION_CHARS} characters long"))
}

/// Problems of a price, as (field, message): the amount and the currency separately.
pub fn price(field: &str, price: &Money) -> Vec<(String, String)> {
    let mut problems = Vec::new();
    if !(0..=Money::MAX_PRICE).contains(&price.amount) {
        problems.push((
            format!("{field}.amount"),
            format!(
                "must be 0 to {} (minor units, e.g. 1999 for 19.99)",
                Money::MAX_PRICE
            ),
        ));
    }
    if !Money::valid_currency(&price.currency) {
        problems.push((
            format!("{field}.currency"),
            "must be an ISO 4217 code of three upper-case letters, e.g. EUR".to_owned(),
        ));
    }
    problems
}

pub fn image_urls(urls: &[String]) -> Option<String> {
    if urls.len() > MAX_IMAGES {
        return Some(format!("must list at most {MAX_IMAGES} images"));
    }
    let absolute = |u: &str| {
        u.strip_prefix("https://")
            .or_else(|| u.strip_prefix("http://"))
            .is_some_and(|rest| !rest.is_empty())
    };
    let bad = urls
        .iter()
        .find(|u| u.len() > MAX_URL_CHARS || u.chars().any(char::is_whitespace) || !absolute(u));
    bad.map(|u| {
        format!("{u:?} is not an absolute http(s) URL of at most {MAX_URL_CHARS} characters")
    })
}

pub fn attributes(attributes: &BTreeMap<String, serde_json::Value>) -> Option<String> {
    let size = serde_json::to_vec(attributes).map(|v| v.len()).unwrap_or(0);
    (size > MAX_ATTRIBUTES_BYTES)
        .then(|| format!("must be at most {MAX_ATTRIBUTES_BYTES} bytes of JSON"))
}

/// Lower-case letters, digits and `-`; 1 to 64 characters.
pub fn slug(slug: &str) -> Option<String> {
    let ok = (1..=64).contains(&slug.len())
        && slug
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
    (!ok).then(|| "must be 1 to 64 characters of a-z, 0-9 and '-'".to_owned())
}

pub fn category_name(name: &str) -> Option<String> {
    let n = name.trim().chars().count();
    (!(1..=100).contains(&n)).then(|| "must be 1 to 100 characters long".to_owned())
}
