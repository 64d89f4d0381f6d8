//! Field checks of this service's requests (collected by `platform::problem::Checks`).

/// Lower-cased and trimmed, so that one mailbox is one account.
pub fn normalise_email(email: &str) -> String {
    email.trim().to_lowercase()
}

pub fn email(email: &str) -> Option<String> {
    let ok = email.len() <= 254
        && email.split_once('@').is_some_and(|(local, domain)| {
            !local.is_empty()
                && !domain.is_empty()
                && !domain.contains('@')
                && domain.contains('.')
                && !domain.starts_with('.')
                && !domain.ends_with('.')
                && !email.chars().any(char::is_whitespace)
        });
    (!ok).then(|| "must be an email address such as ada@example.com".to_owned())
}

pub fn name(name: &str) -> Option<String> {
    let n = name.trim().chars().count();
    (!(1..=100).contains(&n)).then(|| "must be 1 to 100 characters long".to_owned())
}

/// E.164: a plus sign and 8 to 15 digits.
pub fn phone(phone: &str) -> Option<String> {
    let ok = phone
        .strip_prefix('+')
        .is_some_and(|d| (8..=15).contains(&d.len()) && d.bytes().all(|b| b.is_ascii_digit()));
    (!ok).then(|| "must be in E.164 form, such as +4915112345678".to_owned())
}
