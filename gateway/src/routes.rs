//! Which service answers a path, and which requests need no token.

use poem::http::Method;

/// Path prefix → service, longest prefixes first where they overlap.
const ROUTES: &[(&str, &str)] = &[
    ("/api/v1/users", "users"),
    ("/.well-known/jwks.json", "users"),
    ("/api/v1/products", "products"),
    ("/api/v1/inventory", "inventory"),
    ("/api/v1/cart", "cart"),
    ("/api/v1/orders", "orders"),
    ("/api/v1/payments", "payment"),
    ("/pay", "payment"),
    ("/api/v1/notifications", "notification"),
];

/// Every service the gateway routes to.
pub fn services() -> Vec<&'static str> {
    let mut all: Vec<&str> = ROUTES.iter().map(|(_, s)| *s).collect();
    all.dedup();
    all
}

/// The service for `path`: a prefix matches the whole path or up to a `/`.
pub fn service_for(path: &str) -> Option<&'static str> {
    ROUTES.iter().find_map(|(prefix, service)| {
        let rest = path.strip_prefix(prefix)?;
        (rest.is_empty() || rest.starts_with('/')).then_some(*service)
    })
}

/// Whether `path` has a `.` or `..` segment, as is or percent-encoded (`%2e`). Clients
/// resolve those before sending (RFC 3986 §5.2.4); a path that still has them was made to
/// mean two things: the gateway routes and checks it as it is, and a service that resolved
/// it would answer another path (`/api/v1/products/../../internal/...`).
pub fn has_dot_segment(path: &str) -> bool {
    // Most paths have neither a dot nor a percent sign: one vectorised scan settles those
    // (splitting every path into segments cost ~850 instructions a request, the scan ~100).
    memchr::memchr2(b'.', b'%', path.as_bytes()).is_some()
        && path
            .split('/')
            .any(|segment| is_dot_segment(segment.as_bytes()))
}

fn is_dot_segment(mut segment: &[u8]) -> bool {
    let mut dots = 0;
    while !segment.is_empty() {
        segment = match segment {
            [b'.', rest @ ..] => rest,
            [b'%', b'2', e, rest @ ..] if e.eq_ignore_ascii_case(&b'e') => rest,
            _ => return false,
        };
        dots += 1;
    }
    matches!(dots, 1 | 2)
}

/// Requests that need no access token (SPEC.md, "Gateway").
pub fn is_public(method: &Method, path: &str) -> bool {
    let get = method == Method::GET || method == Method::HEAD;
    let post = method == Method::POST;
    match path {
        "/api/v1/users/register"
        | "/api/v1/users/login"
        | "/api/v1/users/token/refresh"
        | "/api/v1/users/password-reset"
        | "/api/v1/users/password-reset/confirm"
        | "/api/v1/payments/webhook" => post,
        "/api/v1/users/verify" | "/.well-known/jwks.json" => get,
        _ if path == "/pay" || path.starts_with("/pay/") => get || post,
        _ if is_products(path) => get,
        _ if is_availability(path) => get,
        _ => false,
    }
}

/// Among public requests, those that a valid token sent with them counts against its user's
/// rate rather than its address's: reads of the catalog and of availability, which signed-in
/// users behind one address browse together. The others (logging in, registering, resetting a
/// password, paying) stay counted by address, or any one account's token would let attempts
/// on other accounts past the address's limit.
pub fn is_catalog_read(method: &Method, path: &str) -> bool {
    (method == Method::GET || method == Method::HEAD)
        && (is_products(path) || is_availability(path))
}

fn is_products(path: &str) -> bool {
    path == "/api/v1/products" || path.starts_with("/api/v1/products/")
}

/// Availability of one product; the low-stock list is for managers.
fn is_availability(path: &str) -> bool {
    path.starts_with("/api/v1/inventory/") && path != "/api/v1/inventory/low-stock"
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefixes_match_whole_segments() {
        assert_eq!(service_for("/api/v1/users/login"), Some("users"));
        assert_eq!(service_for("/api/v1/users"), Some("users"));
        assert_eq!(service_for("/api/v1/usersx"), None);
        assert_eq!(service_for("/pay/abc"), Some("payment"));
        assert_eq!(service_for("/payroll"), None);
        assert_eq!(service_for("/internal/carts/1"), None);
        assert_eq!(service_for("/api/v1/cart/items/1"), Some("cart"));
    }

    #[test]
    fn dot_segments_are_found_as_is_and_percent_encoded_and_nothing_else() {
        for path in [
            "/api/v1/products/../../internal/carts/1",
            "/api/v1/products/./x",
            "/api/v1/products/%2e%2E/internal",
            "/api/v1/products/.%2e",
            "/api/v1/products/..",
            "/api/v1/products/x/%2E/",
        ] {
            assert!(has_dot_segment(path), "{path}");
        }
        for path in [
            "/api/v1/products/0193",
            "/.well-known/jwks.json",
            "/api/v1/products/.../x",
            "/api/v1/products/..x",
            "/api/v1/products/%2e%2e%2e",
            "/api/v1/products/%2f",
            "/api/v1/products/a.b",
            "/",
        ] {
            assert!(!has_dot_segment(path), "{path}");
        }
    }

    #[test]
    fn only_the_listed_reads_and_forms_are_public() {
        // SPEC.md's list: register, login, refresh, verify, password reset, jwks, product and
        // category reads, inventory availability, /pay/**, the payment webhook; and beside
        // them, routes that need a token.
        for (method, path, public) in [
            (Method::POST, "/api/v1/users/register", true),
            (Method::POST, "/api/v1/users/token/refresh", true),
            (Method::GET, "/api/v1/users/verify", true),
            (Method::POST, "/api/v1/users/password-reset", true),
            (Method::POST, "/api/v1/users/password-reset/confirm", true),
            (Method::GET, "/.well-known/jwks.json", true),
            (Method::GET, "/api/v1/products/0193", true),
            (Method::GET, "/api/v1/products/sku/DEMO-001", true),
            (Method::GET, "/pay/0193", true),
            (Method::POST, "/api/v1/payments/webhook", true),
            (Method::POST, "/api/v1/users/logout", false),
            (Method::GET, "/api/v1/users/register", false),
            (Method::GET, "/api/v1/payments/webhook", false),
            (Method::GET, "/api/v1/payments/0193", false),
            (Method::POST, "/api/v1/payments/0193/refunds", false),
            (Method::PUT, "/api/v1/products/0193", false),
            (Method::DELETE, "/api/v1/products/0193", false),
            (Method::GET, "/api/v1/orders", false),
            (Method::GET, "/api/v1/notifications", false),
        ] {
            assert_eq!(is_public(&method, path), public, "{method} {path}");
        }
        assert!(is_public(&Method::POST, "/api/v1/users/login"));
        assert!(!is_public(&Method::GET, "/api/v1/users/me"));
        assert!(is_public(&Method::GET, "/api/v1/products/categories"));
        assert!(!is_public(&Method::POST, "/api/v1/products"));
        assert!(is_public(&Method::GET, "/api/v1/inventory/0193"));
        assert!(!is_public(&Method::GET, "/api/v1/inventory/low-stock"));
        assert!(!is_public(&Method::PUT, "/api/v1/inventory/0193"));
        assert!(is_public(&Method::POST, "/pay/session"));
        assert!(!is_public(&Method::GET, "/api/v1/cart"));
    }
}
