//! The payment API: sessions (internal), the hosted payment page, the provider webhook,
//! billing history and refunds.

use chrono::{DateTime, Utc};
use contracts::internal::{PaymentSession, PaymentSessionRequest};
use contracts::money::Money;
use platform::auth::{Authorized, BearerAuth, InternalAuth, authority, needs};
use platform::problem::{ApiResult, Checks, Problem};
use poem::Request;
use poem_openapi::error::ParsePathError;
use poem_openapi::param::{Path, Query};
use poem_openapi::payload::{Form, Html, Json, PlainText};
use poem_openapi::{ApiResponse, Object, OpenApi, Tags};
use serde::Deserialize;
use uuid::Uuid;

use crate::Payment;
use crate::page;
use crate::provider::{self, Card, ProviderEvent};
use crate::store::{self, Applied, PaymentRow};

#[derive(Tags)]
enum Tag {
    /// Billing history and refunds
    Payments,
    /// The hosted payment page
    Page,
    /// The provider's callbacks
    Webhook,
    /// Service-to-service calls
    Internal,
}

pub struct PaymentApi {
    pub(crate) state: Payment,
}

#[derive(Debug, Object)]
#[oai(skip_serializing_if_is_none)]
struct PaymentView {
    id: Uuid,
    order_id: Uuid,
    amount: Money,
    /// succeeded, failed or refunded.
    status: String,
    card_brand: Option<String>,
    card_last4: Option<String>,
    failure_reason: Option<String>,
    created_at: DateTime<Utc>,
    refunded_at: Option<DateTime<Utc>>,
}

impl From<PaymentRow> for PaymentView {
    fn from(p: PaymentRow) -> Self {
        Self {
            id: p.id,
            order_id: p.order_id,
            amount: Money::new(p.amount, &p.currency),
            status: p.status,
            card_brand: p.card_brand,
            card_last4: p.card_last4,
            failure_reason: p.failure_reason,
            created_at: p.created_at,
            refunded_at: p.refunded_at,
        }
    }
}

#[derive(Debug, Object)]
#[oai(skip_serializing_if_is_none)]
struct PaymentPage {
    items: Vec<PaymentView>,
    next_cursor: Option<String>,
}

/// The hosted form's fields.
#[derive(Debug, Object, Deserialize)]
pub struct CardForm {
    card_number: String,
    expiry: String,
    cvc: String,
    name: String,
}

#[derive(ApiResponse)]
enum SessionResponse {
    /// The session was opened.
    #[oai(status = 201)]
    Created(Json<PaymentSession>),
    /// The order already had this session.
    #[oai(status = 200)]
    Existing(Json<PaymentSession>),
}

#[derive(ApiResponse)]
#[oai(bad_request_handler = "unreadable_page_request")]
enum PageResponse {
    /// The page.
    #[oai(status = 200)]
    Page(Html<String>),
    /// The link is not one of a session (its id is malformed).
    #[oai(status = 400)]
    BadRequest(Html<String>),
    /// No such session.
    #[oai(status = 404)]
    NotFound(Html<String>),
    /// The session can no longer be paid.
    #[oai(status = 410)]
    Gone(Html<String>),
    /// Something failed on our side.
    #[oai(status = 500)]
    Failed(Html<String>),
}

#[derive(ApiResponse)]
#[oai(bad_request_handler = "unreadable_payment")]
enum PayResponse {
    /// Paid or declined: see the result page.
    #[oai(status = 303)]
    SeeOther(#[oai(header = "Location")] String),
    /// The link is not one of a session, or what was sent is not the page's form.
    #[oai(status = 400)]
    BadRequest(Html<String>),
    /// No such session.
    #[oai(status = 404)]
    NotFound(Html<String>),
    /// The session can no longer be paid.
    #[oai(status = 410)]
    Gone(Html<String>),
    /// The card was not accepted on the form.
    #[oai(status = 422)]
    Invalid(Html<String>),
    /// Something failed on our side.
    #[oai(status = 500)]
    Failed(Html<String>),
}

/// A page asked for with a malformed session id: browsers get a page, as for every other
/// answer of the hosted pages.
fn unreadable_page_request(_: poem::Error) -> PageResponse {
    PageResponse::BadRequest(not_a_payment_link())
}

/// A payment whose session id or form cannot be read.
fn unreadable_payment(err: poem::Error) -> PayResponse {
    PayResponse::BadRequest(if err.is::<ParsePathError>() {
        not_a_payment_link()
    } else {
        Html(page::message(
            "The form could not be read",
            "Nothing was charged. Go back to the payment page and send its form again.",
        ))
    })
}

fn not_a_payment_link() -> Html<String> {
    Html(page::message(
        "This is not a payment link",
        "Check the link you were given; nothing was charged.",
    ))
}

/// The hosted pages answer browsers, so even a failure is a page, not problem+json (whose
/// declared responses would also repeat the pages' own 404 and 422).
fn failure_page(problem: Problem) -> Html<String> {
    tracing::error!(?problem, "a payment page failed");
    Html(page::message(
        "Something went wrong",
        "We could not process this page and nothing was charged twice. Please try again in a moment.",
    ))
}

impl PaymentApi {
    fn session_view(&self, s: &store::SessionRow) -> PaymentSession {
        PaymentSession {
            session_id: s.id,
            payment_url: format!(
                "{}/pay/{}",
                self.state.config.public_base_url.trim_end_matches('/'),
                s.id
            ),
            expires_at: s.expires_at,
        }
    }
}

#[OpenApi]
impl PaymentApi {
    /// Open the payment session of an order (one per order; a repeat returns it).
    #[oai(
        path = "/internal/payments/sessions",
        method = "post",
        operation_id = "open_payment_session",
        tag = "Tag::Internal"
    )]
    async fn open_session(
        &self,
        _auth: InternalAuth,
        body: Json<PaymentSessionRequest>,
    ) -> ApiResult<SessionResponse> {
        let req = body.0;
        let mut checks = Checks::default();
        checks
            .check(
                "amount.amount",
                (req.amount.amount <= 0).then(|| "must be positive".to_owned()),
            )
            .check(
                "amount.currency",
                (!Money::valid_currency(&req.amount.currency))
                    .then(|| "must be an ISO 4217 code".to_owned()),
            )
            .check(
                "lines",
                req.lines.is_empty().then(|| "must not be empty".to_owned()),
            )
            .check(
                "closes_by",
                req.closes_by
                    .is_some_and(|by| by <= Utc::now())
                    .then(|| "must be in the future".to_owned()),
            );
        checks.finish()?;
        let own_limit = Utc::now() + self.state.config.session_ttl;
        let expires_at = req.closes_by.map_or(own_limit, |by| by.min(own_limit));
        let mut tx = self.state.base.pool.begin().await?;
        let (session, created) = store::open_session(
            &mut tx,
            req.order_id,
            req.user_id,
            &req.amount,
            &req.lines,
            expires_at,
        )
        .await?;
        tx.commit().await?;
        if session.user_id != req.user_id || session.amount != req.amount.amount {
            return Err(Problem::conflict(
                "this order already has a session for another customer or amount",
            ));
        }
        let view = self.session_view(&session);
        Ok(if created {
            SessionResponse::Created(Json(view))
        } else {
            SessionResponse::Existing(Json(view))
        })
    }

    /// The hosted payment page of a session.
    #[oai(
        path = "/pay/:session_id",
        method = "get",
        operation_id = "payment_page",
        tag = "Tag::Page"
    )]
    async fn page(&self, session_id: Path<Uuid>) -> PageResponse {
        self.show_page(session_id)
            .await
            .unwrap_or_else(|p| PageResponse::Failed(failure_page(p)))
    }

    /// Pay a session with a card; redirects to the result page. Paying twice charges once.
    #[oai(
        path = "/pay/:session_id",
        method = "post",
        operation_id = "pay",
        tag = "Tag::Page"
    )]
    async fn pay(&self, session_id: Path<Uuid>, form: Form<CardForm>) -> PayResponse {
        self.pay_session(session_id, form)
            .await
            .unwrap_or_else(|p| PayResponse::Failed(failure_page(p)))
    }

    /// Where the form leads: paid, declined, or still being processed.
    #[oai(
        path = "/pay/:session_id/result",
        method = "get",
        operation_id = "payment_result",
        tag = "Tag::Page"
    )]
    async fn result(&self, session_id: Path<Uuid>) -> PageResponse {
        self.show_result(session_id)
            .await
            .unwrap_or_else(|p| PageResponse::Failed(failure_page(p)))
    }

    /// The provider's result callback, signed with HMAC-SHA256 (`Payment-Signature: t=…,v1=…`).
    #[oai(
        path = "/api/v1/payments/webhook",
        method = "post",
        operation_id = "payment_webhook",
        tag = "Tag::Webhook"
    )]
    async fn webhook(
        &self,
        req: &Request,
        body: PlainText<String>,
    ) -> ApiResult<PlainText<String>> {
        let signature = req
            .headers()
            .get(provider::SIGNATURE_HEADER)
            .and_then(|v| v.to_str().ok())
            .ok_or_else(|| {
                Problem::bad_request(format!(
                    "the {} header is missing",
                    provider::SIGNATURE_HEADER
                ))
            })?;
        let applied = self
            .state
            .receive_webhook(signature, body.0.as_bytes())
            .await?;
        Ok(PlainText(format!("{applied:?}")))
    }

    /// The caller's billing history, newest first; an admin may ask for one order's payments.
    #[oai(
        path = "/api/v1/payments",
        method = "get",
        operation_id = "list_payments",
        tag = "Tag::Payments"
    )]
    async fn list(
        &self,
        auth: BearerAuth,
        order_id: Query<Option<Uuid>>,
        limit: Query<Option<platform::web::PageLimit>>,
        cursor: Query<Option<Uuid>>,
    ) -> ApiResult<Json<PaymentPage>> {
        let limit = platform::web::page_limit(limit.0)?;
        let user = if auth.0.has(authority::PAYMENT_REFUND) {
            None
        } else {
            Some(auth.0.id)
        };
        let mut rows = store::list_payments(
            &self.state.base.pool,
            user,
            order_id.0,
            cursor.0,
            i64::from(limit) + 1,
        )
        .await?;
        let next_cursor = platform::web::next_page(&mut rows, limit, |p| p.id.to_string());
        Ok(Json(PaymentPage {
            items: rows.into_iter().map(PaymentView::from).collect(),
            next_cursor,
        }))
    }

    /// One payment: the caller's own (another customer's is 404), or any for an admin.
    #[oai(
        path = "/api/v1/payments/:id",
        method = "get",
        operation_id = "get_payment",
        tag = "Tag::Payments"
    )]
    async fn get(&self, auth: BearerAuth, id: Path<Uuid>) -> ApiResult<Json<PaymentView>> {
        match store::payment(&self.state.base.pool, id.0).await? {
            Some(p) if p.user_id == auth.0.id || auth.0.has(authority::PAYMENT_REFUND) => {
                Ok(Json(p.into()))
            }
            _ => Err(Problem::not_found("no such payment")),
        }
    }

    /// Refund a succeeded payment in full (admin); emits `PaymentRefunded`. Only a paid
    /// order that has not shipped is refunded (409 for any other, as orders decides); 503 when
    /// orders cannot be asked, and the refund then goes ahead by itself once orders agrees.
    #[oai(
        path = "/api/v1/payments/:id/refund",
        method = "post",
        operation_id = "refund_payment",
        tag = "Tag::Payments"
    )]
    async fn refund(
        &self,
        _auth: Authorized<needs::PaymentRefund>,
        id: Path<Uuid>,
    ) -> ApiResult<Json<PaymentView>> {
        Ok(Json(self.state.refund(id.0).await?.into()))
    }
}

impl Payment {
    /// Verifies and applies a provider callback.
    pub async fn receive_webhook(&self, signature: &str, body: &[u8]) -> Result<Applied, Problem> {
        provider::verify(
            &self.config.webhook_secret,
            signature,
            body,
            Utc::now().timestamp(),
        )
        .map_err(|e| Problem::bad_request(format!("webhook refused: {e}")))?;
        let event: ProviderEvent = serde_json::from_slice(body)
            .map_err(|e| Problem::bad_request(format!("webhook body unreadable: {e}")))?;
        if event.kind != "payment.succeeded" && event.kind != "payment.failed" {
            return Err(Problem::unprocessable(format!(
                "unknown event type {:?}",
                event.kind
            )));
        }
        let mut tx = self.base.pool.begin().await?;
        let applied = store::apply_provider_event(&mut tx, &event).await?;
        tx.commit().await?;
        if matches!(applied, Applied::Recorded | Applied::RefundedLate) {
            self.relay.wake();
        }
        if applied == Applied::UnknownSession {
            return Err(Problem::not_found("no such payment session"));
        }
        Ok(applied)
    }
}

/// The hosted pages' work; their errors become a failure page.
impl PaymentApi {
    async fn show_page(&self, session_id: Path<Uuid>) -> ApiResult<PageResponse> {
        let Some(session) = store::session(&self.state.base.pool, session_id.0).await? else {
            return Ok(PageResponse::NotFound(Html(page::message(
                "Unknown payment",
                "There is no such payment session.",
            ))));
        };
        if session.status != "open" || session.expires_at <= Utc::now() {
            return Ok(PageResponse::Gone(Html(page::closed(&session))));
        }
        Ok(PageResponse::Page(Html(page::form(&session, None))))
    }

    async fn pay_session(
        &self,
        session_id: Path<Uuid>,
        form: Form<CardForm>,
    ) -> ApiResult<PayResponse> {
        let Some(session) = store::session(&self.state.base.pool, session_id.0).await? else {
            return Ok(PayResponse::NotFound(Html(page::message(
                "Unknown payment",
                "There is no such payment session.",
            ))));
        };
        if session.status != "open" || session.expires_at <= Utc::now() {
            return Ok(PayResponse::Gone(Html(page::closed(&session))));
        }
        let card = Card {
            number: &form.0.card_number,
        };
        let form_errors = page::check_form(&form.0.expiry, &form.0.cvc, &form.0.name);
        let event = match (self.state.provider.charge(session.id, &card), form_errors) {
            (Ok(event), None) => event,
            (Err(e), _) => {
                return Ok(PayResponse::Invalid(Html(page::form(
                    &session,
                    Some(&e.to_string()),
                ))));
            }
            (_, Some(e)) => return Ok(PayResponse::Invalid(Html(page::form(&session, Some(&e))))),
        };
        // The sandbox reports through the same signed path a real provider calls.
        let body = serde_json::to_vec(&event).map_err(Problem::internal)?;
        let signature = provider::sign(
            &self.state.config.webhook_secret,
            Utc::now().timestamp(),
            &body,
        );
        self.state.receive_webhook(&signature, &body).await?;
        Ok(PayResponse::SeeOther(format!("/pay/{}/result", session.id)))
    }

    async fn show_result(&self, session_id: Path<Uuid>) -> ApiResult<PageResponse> {
        let Some(session) = store::session(&self.state.base.pool, session_id.0).await? else {
            return Ok(PageResponse::NotFound(Html(page::message(
                "Unknown payment",
                "There is no such payment session.",
            ))));
        };
        let payment = store::payment_of_session(&self.state.base.pool, session.id).await?;
        Ok(PageResponse::Page(Html(page::result(
            &session,
            payment.as_ref(),
        ))))
    }
}
