//! The notification API: each customer's own notifications, and for admins every user's.

use chrono::{DateTime, Utc};
use platform::auth::{BearerAuth, authority};
use platform::problem::{ApiResult, Problem};
use poem_openapi::param::Query;
use poem_openapi::payload::Json;
use poem_openapi::{Enum, Object, OpenApi, Tags};
use uuid::Uuid;

use crate::Notification;
use crate::store::{self, Filter, NotificationRow};

#[derive(Tags)]
enum Tag {
    /// Emails and SMS sent to customers
    Notifications,
}

pub struct NotificationApi {
    pub(crate) state: Notification,
}

/// Where a notification is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Enum)]
#[oai(rename = "NotificationStatus", rename_all = "lowercase")]
enum Status {
    /// Waiting to be sent (or to be retried).
    Queued,
    /// Accepted by the mail server or SMS provider (or logged, where none is configured).
    Sent,
    /// Given up on; `last_error` says why.
    Failed,
}

impl Status {
    fn as_str(self) -> &'static str {
        match self {
            Status::Queued => "queued",
            Status::Sent => "sent",
            Status::Failed => "failed",
        }
    }

    fn parse(s: &str) -> Self {
        match s {
            "sent" => Status::Sent,
            "failed" => Status::Failed,
            _ => Status::Queued,
        }
    }
}

/// How a notification reaches its recipient.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Enum)]
#[oai(rename = "NotificationChannel", rename_all = "lowercase")]
enum ChannelKind {
    Email,
    Sms,
}

/// One message to one recipient. The body is not returned: it can carry one-time links
/// (email verification, password reset) that must stay in the recipient's mailbox.
#[derive(Debug, Object)]
#[oai(skip_serializing_if_is_none, rename = "Notification")]
struct NotificationView {
    id: Uuid,
    user_id: Uuid,
    /// The event that caused it, e.g. `PaymentSucceeded`.
    event_type: String,
    event_id: Uuid,
    channel: ChannelKind,
    /// The email address or phone number it goes to (empty when none is known).
    recipient: String,
    subject: String,
    status: Status,
    /// Attempts made so far.
    attempts: i32,
    /// Why the last attempt failed.
    last_error: Option<String>,
    /// What it went out through: `smtp`, `http` (SMS provider) or `log` (no server configured).
    sent_via: Option<String>,
    /// When the next attempt is due (queued notifications only).
    next_attempt_at: Option<DateTime<Utc>>,
    created_at: DateTime<Utc>,
    sent_at: Option<DateTime<Utc>>,
}

impl From<NotificationRow> for NotificationView {
    fn from(row: NotificationRow) -> Self {
        let status = Status::parse(&row.status);
        Self {
            id: row.id,
            user_id: row.user_id,
            event_type: row.event_type,
            event_id: row.event_id,
            channel: if row.channel == "sms" {
                ChannelKind::Sms
            } else {
                ChannelKind::Email
            },
            recipient: row.recipient,
            subject: row.subject,
            status,
            attempts: row.attempts,
            last_error: row.last_error,
            sent_via: row.sent_via,
            next_attempt_at: (status == Status::Queued).then_some(row.next_attempt_at),
            created_at: row.created_at,
            sent_at: row.sent_at,
        }
    }
}

/// One page of notifications.
#[derive(Debug, Object)]
#[oai(skip_serializing_if_is_none)]
struct NotificationPage {
    items: Vec<NotificationView>,
    /// Pass as `cursor` to get the next page; absent on the last page.
    next_cursor: Option<String>,
}

#[OpenApi]
impl NotificationApi {
    /// Notifications, newest first. A customer sees their own (`status` filters them).
    /// Holders of `user:manage` (admins) see every user's, filtered by `status` and
    /// `user_id`; anyone else naming another `user_id` gets 403.
    #[oai(
        path = "/api/v1/notifications",
        method = "get",
        operation_id = "list_notifications",
        tag = "Tag::Notifications"
    )]
    async fn list(
        &self,
        auth: BearerAuth,
        /// Only notifications in this state.
        status: Query<Option<Status>>,
        /// Only this user's (admins; others may name only themselves).
        user_id: Query<Option<Uuid>>,
        /// Page size, 1 to 100 (default 20).
        limit: Query<Option<platform::web::PageLimit>>,
        /// The `next_cursor` of the previous page.
        cursor: Query<Option<Uuid>>,
    ) -> ApiResult<Json<NotificationPage>> {
        let caller = &auth.0;
        let limit = platform::web::page_limit(limit.0)?;
        let admin = caller.has(authority::USER_MANAGE);
        let user_id = match user_id.0 {
            Some(id) if id != caller.id && !admin => {
                return Err(Problem::forbidden(format!(
                    "only holders of `{}` may list another user's notifications",
                    authority::USER_MANAGE
                )));
            }
            Some(id) => Some(id),
            None if admin => None,
            None => Some(caller.id),
        };
        let filter = Filter {
            user_id,
            status: status.0.map(Status::as_str),
            before: cursor.0,
        };
        let mut rows = store::list(&self.state.base.pool, &filter, i64::from(limit) + 1).await?;
        let next_cursor = platform::web::next_page(&mut rows, limit, |r| r.id.to_string());
        Ok(Json(NotificationPage {
            items: rows.into_iter().map(NotificationView::from).collect(),
            next_cursor,
        }))
    }
}
