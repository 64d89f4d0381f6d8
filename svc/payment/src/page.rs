//! The hosted payment page: plain HTML, no script, every value escaped.

use contracts::money::Money;

use crate::store::{PaymentRow, SessionRow};

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
        .replace('\'', "&#39;")
}

/// The amount as the customer reads it (`contracts::money::Money`'s text); the form escapes
/// it, and `message` escapes the texts it is put in.
fn amount_text(s: &SessionRow) -> String {
    Money::new(s.amount, &s.currency).to_string()
}

fn layout(title: &str, body: &str) -> String {
    format!(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>{t} · MicroMart</title>\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
         <style>body{{font-family:sans-serif;max-width:28rem;margin:3rem auto;padding:0 1rem}}\
         label{{display:block;margin:.6rem 0}}input{{width:100%;padding:.4rem}}\
         .error{{color:#b00020}}button{{padding:.6rem 1.2rem;margin-top:1rem}}</style></head>\
         <body><h1>{t}</h1>{body}</body></html>",
        t = escape(title)
    )
}

pub fn message(title: &str, text: &str) -> String {
    layout(title, &format!("<p>{}</p>", escape(text)))
}

pub fn form(s: &SessionRow, error: Option<&str>) -> String {
    let error = error
        .map(|e| format!("<p class=\"error\" role=\"alert\">{}</p>", escape(e)))
        .unwrap_or_default();
    layout(
        "Pay for your order",
        &format!(
            "<p>Order <code>{order}</code><br>Amount due: <strong>{amount}</strong></p>{error}\
             <form method=\"post\" action=\"/pay/{id}\">\
             <label>Card number <input name=\"card_number\" inputmode=\"numeric\" autocomplete=\"cc-number\" required></label>\
             <label>Expiry (MM/YY) <input name=\"expiry\" autocomplete=\"cc-exp\" required></label>\
             <label>CVC <input name=\"cvc\" inputmode=\"numeric\" autocomplete=\"cc-csc\" required></label>\
             <label>Name on card <input name=\"name\" autocomplete=\"cc-name\" required></label>\
             <button type=\"submit\">Pay {amount}</button></form>\
             <p><small>Sandbox: 4242 4242 4242 4242 succeeds, 4000 0000 0000 0002 is declined.</small></p>",
            order = s.order_id,
            amount = escape(&amount_text(s)),
            id = s.id,
        ),
    )
}

pub fn closed(s: &SessionRow) -> String {
    let text = match s.status.as_str() {
        "succeeded" => "This order is already paid.",
        "failed" => "The payment of this order was declined.",
        "cancelled" => "This order was cancelled.",
        _ => "This payment session has expired.",
    };
    message("Payment closed", text)
}

pub fn result(s: &SessionRow, payment: Option<&PaymentRow>) -> String {
    // "12.50 EUR by visa ending 4242"
    let paid = |p: &PaymentRow| {
        format!(
            "{} by {} ending {}",
            amount_text(s),
            p.card_brand.as_deref().unwrap_or("card"),
            p.card_last4.as_deref().unwrap_or("????")
        )
    };
    match payment {
        Some(p) if p.status == "refunded" => message(
            "Payment refunded",
            &format!("Your payment of {} was refunded in full.", paid(p)),
        ),
        Some(p) if p.status != "failed" => message(
            "Thank you!",
            &format!(
                "Your payment of {} was received. A confirmation is on its way.",
                paid(p)
            ),
        ),
        Some(p) => message(
            "Payment declined",
            &format!(
                "The payment was declined ({}). Your order was not charged.",
                p.failure_reason.as_deref().unwrap_or("declined")
            ),
        ),
        None => closed(s),
    }
}

/// Checks of the fields beside the card number: expiry MM/YY, a 3-4 digit CVC, a name.
pub fn check_form(expiry: &str, cvc: &str, name: &str) -> Option<String> {
    let expiry_ok = expiry.trim().split_once('/').is_some_and(|(m, y)| {
        m.trim().parse::<u8>().is_ok_and(|m| (1..=12).contains(&m))
            && y.trim().len() == 2
            && y.trim().bytes().all(|b| b.is_ascii_digit())
    });
    if !expiry_ok {
        return Some("the expiry must be MM/YY".into());
    }
    if !(3..=4).contains(&cvc.trim().len()) || !cvc.trim().bytes().all(|b| b.is_ascii_digit()) {
        return Some("the CVC must be 3 or 4 digits".into());
    }
    if name.trim().is_empty() || name.len() > 100 {
        return Some("the name on the card is required".into());
    }
    None
}
