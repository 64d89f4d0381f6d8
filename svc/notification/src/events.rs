//! What notification consumes and what it says for each event. The handler runs inside the
//! consumer's transaction and only queues rows (and keeps contacts): nothing is sent here,
//! so a rolled-back transaction never leaves a sent message behind. The sender sends later.

use async_trait::async_trait;
use contracts::events::{
    Envelope, Event, OrderCancelled, PasswordResetRequested, PaymentExpired, PaymentFailed,
    PaymentRefunded, PaymentSucceeded, UserRegistered,
};
use contracts::internal::UserContact;
use platform::consumer::{EventHandler, HandlerError};
use platform::http::{CallError, ServiceClient};
use sqlx::{PgConnection, PgPool};
use uuid::Uuid;

use crate::channel::{Medium, Message};
use crate::store::{self, Contact};

/// The consumer group and what it reads.
pub const GROUP: &str = "notification";
pub const STREAMS: [&str; 3] = [
    contracts::events::streams::USERS,
    contracts::events::streams::PAYMENT,
    contracts::events::streams::ORDERS,
];

/// Why a message was recorded as failed without an attempt.
pub const NO_CONTACT: &str = "no contact for user";

/// The events notification acts on.
enum Incoming {
    Registered(UserRegistered),
    ResetRequested(PasswordResetRequested),
    Paid(PaymentSucceeded),
    PaymentFailed(PaymentFailed),
    PaymentExpired(PaymentExpired),
    Refunded(PaymentRefunded),
    Cancelled(OrderCancelled),
}

fn open<E: Event>(event: &Envelope) -> Option<Result<E, HandlerError>> {
    event.open::<E>().map(|r| {
        r.map_err(|e| {
            HandlerError::Failed(format!(
                "{} {} has an unreadable payload: {e}",
                event.kind, event.id
            ))
        })
    })
}

impl Incoming {
    /// Users' own events carry the address to write to.
    fn names_its_address(&self) -> bool {
        matches!(self, Incoming::Registered(_) | Incoming::ResetRequested(_))
    }

    /// `None` for event types notification does not act on.
    fn parse(event: &Envelope) -> Result<Option<Self>, HandlerError> {
        let parsed = if let Some(e) = open(event) {
            e.map(Incoming::Registered)
        } else if let Some(e) = open(event) {
            e.map(Incoming::ResetRequested)
        } else if let Some(e) = open(event) {
            e.map(Incoming::Paid)
        } else if let Some(e) = open(event) {
            e.map(Incoming::PaymentFailed)
        } else if let Some(e) = open(event) {
            e.map(Incoming::PaymentExpired)
        } else if let Some(e) = open(event) {
            e.map(Incoming::Refunded)
        } else if let Some(e) = open(event) {
            e.map(Incoming::Cancelled)
        } else {
            return Ok(None);
        };
        parsed.map(Some)
    }

    /// The order this event says was cancelled (by its customer, or its payment session
    /// expiring), if it says so.
    fn cancelled_order(&self) -> Option<Uuid> {
        match self {
            Incoming::PaymentExpired(e) => Some(e.order_id),
            Incoming::Cancelled(e) => Some(e.order_id),
            _ => None,
        }
    }

    fn user_id(&self) -> Uuid {
        match self {
            Incoming::Registered(e) => e.user_id,
            Incoming::ResetRequested(e) => e.user_id,
            Incoming::Paid(e) => e.user_id,
            Incoming::PaymentFailed(e) => e.user_id,
            Incoming::PaymentExpired(e) => e.user_id,
            Incoming::Refunded(e) => e.user_id,
            Incoming::Cancelled(e) => e.user_id,
        }
    }
}

/// What one event says to its user: an email, and for some events an SMS.
struct Notice {
    /// The address the event itself names (users' events); otherwise the contact's.
    address: Option<String>,
    subject: String,
    body: String,
    sms: Option<String>,
}

/// Queues the notifications of each event.
pub struct Notifier {
    /// Base of links in messages (the gateway).
    pub shop_base_url: String,
    pub users: ServiceClient,
}

impl Notifier {
    /// Keeps the contact of `user_id` as users knows it now; nothing when users has no such
    /// (active) account. When users cannot say: the contact already kept (`kept`) serves, and
    /// without one, the event waits for users (for as long as the consumer waits on a
    /// service's outage).
    async fn look_up(&self, db: &PgPool, user_id: Uuid, kept: bool) -> Result<(), HandlerError> {
        let path = format!("/internal/users/{user_id}/contact");
        match self.users.get::<UserContact>(&path, None).await {
            Ok(found) => {
                let contact = Contact {
                    user_id: found.user_id,
                    email: found.email,
                    name: found.name,
                    phone: found.phone.filter(|p| !p.trim().is_empty()),
                };
                store::upsert_contact(&mut *db.acquire().await?, &contact).await?;
                Ok(())
            }
            Err(err) if err.status() == Some(404) => Ok(()),
            Err(err) if kept => {
                tracing::warn!(user_id = %user_id, error = %err, "users cannot be asked for a current contact; the one kept serves");
                Ok(())
            }
            // Down or too slow: the event waits for users to be back, for a while. Any other answer would
            // come again the same way: the event fails, and is dead-lettered once it has as
            // often as a failing handler may.
            Err(err @ (CallError::Unavailable { .. } | CallError::Timeout { .. })) => {
                Err(HandlerError::Unavailable(format!(
                    "no contact yet for user {user_id} and users cannot be asked: {err}"
                )))
            }
            Err(err) => Err(HandlerError::Failed(format!(
                "no contact yet for user {user_id} and users answered: {err}"
            ))),
        }
    }
}

/// How every message ends.
const SIGN_OFF: &str = "\n\nMicroMart";

/// The email a new account gets: a link to confirm its address, unless it has none to confirm.
fn welcome(e: &UserRegistered) -> Notice {
    let name = e.name.trim();
    let (subject, body) = match &e.verification_url {
        Some(url) => (
            "Welcome to MicroMart: please confirm your email",
            format!(
                "Hello {name},\n\nwelcome to MicroMart. Please confirm your email address by opening this link:\n\n{url}\n\nIf you did not register, ignore this email."
            ),
        ),
        None => (
            "Welcome to MicroMart",
            format!(
                "Hello {name},\n\nwelcome to MicroMart. Your account is ready: sign in with this email address."
            ),
        ),
    };
    Notice {
        address: Some(e.email.clone()),
        subject: subject.into(),
        body: format!("{body}{SIGN_OFF}"),
        sms: None,
    }
}

fn greeting(contact: Option<&Contact>) -> String {
    match contact {
        Some(c) if !c.name.trim().is_empty() => format!("Hello {},", c.name.trim()),
        _ => "Hello,".to_owned(),
    }
}

fn short(id: Uuid) -> String {
    id.simple().to_string()[..8].to_owned()
}

impl Notifier {
    fn order_url(&self, order_id: Uuid) -> String {
        format!(
            "{}/api/v1/orders/{order_id}",
            self.shop_base_url.trim_end_matches('/')
        )
    }

    fn compose(&self, incoming: &Incoming, contact: Option<&Contact>) -> Notice {
        let hello = greeting(contact);
        match incoming {
            Incoming::Registered(e) => welcome(e),
            Incoming::ResetRequested(e) => Notice {
                address: Some(e.email.clone()),
                subject: "Reset your MicroMart password".into(),
                body: format!(
                    "{hello}\n\nsomeone asked to reset the password of your MicroMart account. To choose a new password, open this link:\n\n{}\n\nThe link works once and expires soon. If it was not you, ignore this email: your password stays as it is.{SIGN_OFF}",
                    e.reset_url
                ),
                sms: None,
            },
            Incoming::Paid(e) => {
                let items: i32 = e.lines.iter().map(|l| l.quantity).sum();
                Notice {
                    address: None,
                    subject: format!("Your MicroMart order {} is confirmed", short(e.order_id)),
                    body: format!(
                        "{hello}\n\nthank you for your order. We received your payment of {} for {items} item(s).\n\nOrder: {}\nDetails: {}{SIGN_OFF}",
                        e.amount,
                        e.order_id,
                        self.order_url(e.order_id)
                    ),
                    sms: Some(format!(
                        "MicroMart: order {} confirmed, {} paid. Thank you!",
                        short(e.order_id),
                        e.amount
                    )),
                }
            }
            Incoming::PaymentFailed(e) => Notice {
                address: None,
                subject: format!("Payment for MicroMart order {} failed", short(e.order_id)),
                body: format!(
                    "{hello}\n\nthe payment for your order {} did not go through: {}.\nThe order was cancelled and nothing was charged. You are welcome to try again.{SIGN_OFF}",
                    e.order_id, e.reason
                ),
                sms: None,
            },
            // The provider may charge as the session closes; payment then refunds at once.
            Incoming::PaymentExpired(e) => Notice {
                address: None,
                subject: format!("Your MicroMart order {} expired", short(e.order_id)),
                body: format!(
                    "{hello}\n\nwe did not receive a payment for your order {} in time, so it was cancelled. If a payment for it went through all the same, it is refunded in full, and we will write to you when it is.{SIGN_OFF}",
                    e.order_id
                ),
                sms: None,
            },
            Incoming::Refunded(e) => Notice {
                address: None,
                subject: format!("Refund for MicroMart order {}", short(e.order_id)),
                body: format!(
                    "{hello}\n\nwe refunded {} for your order {}. Depending on your bank it can take a few days to show.\n\nDetails: {}{SIGN_OFF}",
                    e.amount,
                    e.order_id,
                    self.order_url(e.order_id)
                ),
                sms: None,
            },
            // A customer may pay on the page just as they cancel; payment then refunds, so
            // the notice cannot say that nothing was charged.
            Incoming::Cancelled(e) => Notice {
                address: None,
                subject: format!("Your MicroMart order {} was cancelled", short(e.order_id)),
                body: format!(
                    "{hello}\n\nyour order {} was cancelled ({}). If a payment for it went through all the same, it is refunded in full, and we will write to you when it is.{SIGN_OFF}",
                    e.order_id, e.reason
                ),
                sms: None,
            },
        }
    }
}

#[async_trait]
impl EventHandler for Notifier {
    /// Users is asked for the customer's contact as it is now, before the event's
    /// transaction opens (so a slow users holds no transaction open), and what it gives is
    /// kept: the customer may have changed their name or removed their phone since they
    /// registered (users publishes no event for that), and an order's event can overtake
    /// their UserRegistered (they travel on different streams).
    async fn prepare(&self, db: &PgPool, event: &Envelope) -> Result<(), HandlerError> {
        let Some(incoming) = Incoming::parse(event)? else {
            return Ok(());
        };
        if incoming.names_its_address() {
            return Ok(());
        }
        let kept = store::contact(db, incoming.user_id()).await?.is_some();
        self.look_up(db, incoming.user_id(), kept).await
    }

    async fn handle(&self, tx: &mut PgConnection, event: &Envelope) -> Result<(), HandlerError> {
        let Some(incoming) = Incoming::parse(event)? else {
            return Ok(());
        };
        let user_id = incoming.user_id();
        // A customer who cancels while payment's consumer is behind also gets the session's
        // expiry: one notice of the cancellation is enough.
        if let Some(order) = incoming.cancelled_order()
            && !store::first_cancellation(&mut *tx, order).await?
        {
            tracing::info!(event = %event.id, order_id = %order, "a second notice of an order's cancellation: not told");
            return Ok(());
        }
        match &incoming {
            Incoming::Refunded(e) => {
                store::record_refund(&mut *tx, e.order_id).await?;
            }
            // Handled after the refund of the same payment (it waited for a retry, or payment
            // published the two out of order): the customer was told of the refund, and is
            // not told now that the order is paid.
            Incoming::Paid(e) if store::is_refunded(&mut *tx, e.order_id).await? => {
                tracing::info!(event = %event.id, order_id = %e.order_id, "a payment's success after its refund: not told");
                return Ok(());
            }
            Incoming::Registered(e) => {
                store::upsert_contact(
                    &mut *tx,
                    &Contact {
                        user_id: e.user_id,
                        email: e.email.clone(),
                        name: e.name.clone(),
                        phone: e.phone.clone().filter(|p| !p.trim().is_empty()),
                    },
                )
                .await?;
            }
            _ => {}
        }
        // None here: users has no such account either (see `prepare`).
        let contact = store::contact(&mut *tx, user_id).await?;
        let notice = self.compose(&incoming, contact.as_ref());
        let address = notice
            .address
            .clone()
            .or_else(|| contact.as_ref().map(|c| c.email.clone()));
        let email = Message {
            medium: Medium::Email,
            recipient: address.clone().unwrap_or_default(),
            subject: notice.subject.clone(),
            body: notice.body,
        };
        if address.is_some() {
            store::queue(tx, event.id, &event.kind, user_id, &email).await?;
        } else {
            tracing::warn!(event = %event.id, kind = %event.kind, user = %user_id, "no contact is known for the user; the email is recorded as failed");
            store::record_unsendable(tx, event.id, &event.kind, user_id, &email, NO_CONTACT)
                .await?;
        }
        if let (Some(text), Some(phone)) =
            (notice.sms, contact.as_ref().and_then(|c| c.phone.clone()))
        {
            let sms = Message {
                medium: Medium::Sms,
                recipient: phone,
                subject: notice.subject,
                body: text,
            };
            store::queue(tx, event.id, &event.kind, user_id, &sms).await?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_account_with_an_address_to_confirm_gets_the_link_and_one_without_is_just_welcomed() {
        let mut registered = UserRegistered {
            user_id: Uuid::now_v7(),
            email: "ada@example.com".into(),
            name: " Ada ".into(),
            phone: None,
            verification_url: Some("https://shop.example/api/v1/users/verify?token=t".into()),
        };
        let notice = welcome(&registered);
        assert_eq!(notice.address.as_deref(), Some("ada@example.com"));
        assert!(notice.subject.contains("confirm"), "{}", notice.subject);
        assert!(notice.body.starts_with("Hello Ada,"), "{}", notice.body);
        assert!(notice.body.contains("/verify?token=t"), "{}", notice.body);

        registered.verification_url = None;
        let notice = welcome(&registered);
        assert_eq!(notice.subject, "Welcome to MicroMart");
        assert!(!notice.body.contains("confirm"), "{}", notice.body);
        assert!(!notice.body.contains("http"), "{}", notice.body);
        assert!(notice.body.ends_with("\n\nMicroMart"), "{}", notice.body);
    }
}
