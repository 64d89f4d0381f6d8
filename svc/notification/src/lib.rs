//! The notification service: turns events into emails and SMS, records every message and
//! each attempt, and retries with backoff.

mod api;
pub mod channel;
pub mod events;
pub mod sender;
pub mod store;

use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use platform::config::{ConfigError, Settings};
use platform::consumer::Consumer;
use platform::discovery::Discovery;
use platform::http::ServiceClient;
use platform::retention::OwnRows;
use platform::runtime::Background;
use platform::service::{Base, BaseConfig, StartError};
use poem::{Endpoint, Response};
use poem_openapi::OpenApiService;

pub use api::NotificationApi;

use crate::channel::{Channel, HttpSmsChannel, LogChannel, SmtpChannel};
use crate::sender::Sender;

pub const SERVICE: &str = "notification";

static MIGRATIONS: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

/// How the connection to the SMTP server is secured.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SmtpTls {
    /// Plain SMTP (a trusted local relay).
    None,
    /// Plain connection upgraded with STARTTLS, which is required.
    Starttls,
    /// TLS from the first byte (SMTPS).
    Tls,
}

impl FromStr for SmtpTls {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "none" | "" => Ok(SmtpTls::None),
            "starttls" => Ok(SmtpTls::Starttls),
            "tls" => Ok(SmtpTls::Tls),
            other => Err(format!("{other:?} is not one of none, starttls, tls")),
        }
    }
}

#[derive(Clone)]
pub struct NotificationConfig {
    pub base: BaseConfig,
    /// Empty: no SMTP server; emails are written to the log and recorded as sent via `log`.
    pub smtp_host: String,
    pub smtp_port: u16,
    pub smtp_tls: SmtpTls,
    /// Empty: no authentication.
    pub smtp_username: String,
    /// A secret: from Nomad variables or the environment, never the KV seed.
    pub smtp_password: String,
    pub mail_from: String,
    /// Empty: SMS are written to the log; otherwise `POST {to, body}` as JSON to this URL.
    pub sms_url: String,
    /// Attempts per message before it is marked failed.
    pub max_attempts: i32,
    /// The wait after the first failed attempt; doubled after each further one.
    pub retry_base_delay: Duration,
    /// How often the sender looks for due messages.
    pub send_interval: Duration,
    /// Base of links in messages (the gateway).
    pub shop_base_url: String,
    /// Whether messages written to the log (no SMTP server or SMS provider) show their
    /// bodies, links included: for a local run only.
    pub log_message_bodies: bool,
}

impl std::fmt::Debug for NotificationConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NotificationConfig")
            .field("smtp_host", &self.smtp_host)
            .field("smtp_port", &self.smtp_port)
            .field("smtp_tls", &self.smtp_tls)
            .field("smtp_username", &self.smtp_username)
            .field("smtp_password", &"<redacted>")
            .field("mail_from", &self.mail_from)
            .field("sms_url", &self.sms_url)
            .field("max_attempts", &self.max_attempts)
            .field("retry_base_delay", &self.retry_base_delay)
            .field("shop_base_url", &self.shop_base_url)
            .field("log_message_bodies", &self.log_message_bodies)
            .finish_non_exhaustive()
    }
}

impl NotificationConfig {
    pub fn from_settings(s: &Settings) -> Result<Self, ConfigError> {
        let invalid = |key: &str, value: String, reason: &str| ConfigError::Invalid {
            key: format!("micromart/{SERVICE}/{key}"),
            value,
            reason: reason.to_owned(),
        };
        let max_attempts: i32 = s.get_or("max_attempts", 5)?;
        if max_attempts < 1 {
            return Err(invalid(
                "max_attempts",
                max_attempts.to_string(),
                "must be at least 1",
            ));
        }
        Ok(Self {
            base: BaseConfig::from_settings(SERVICE, s)?,
            smtp_host: s.get_or("smtp_host", String::new())?.trim().to_owned(),
            smtp_port: s.get_or("smtp_port", 25)?,
            smtp_tls: s.get_or("smtp_tls", SmtpTls::None)?,
            smtp_username: s.get_or("smtp_username", String::new())?,
            smtp_password: s.get_or("smtp_password", String::new())?,
            mail_from: s.get_or("mail_from", "MicroMart <shop@micromart.local>".to_owned())?,
            sms_url: s.get_or("sms_url", String::new())?.trim().to_owned(),
            max_attempts,
            retry_base_delay: s.millis("retry_base_delay_ms", 1000)?,
            send_interval: s.millis("send_interval_ms", 1000)?,
            shop_base_url: s.get_or("shop_base_url", "http://localhost:7082".to_owned())?,
            log_message_bodies: s.get_or("log_message_bodies", false)?,
        })
    }

    fn email_channel(&self) -> Result<Arc<dyn Channel>, ConfigError> {
        if self.smtp_host.is_empty() {
            return Ok(Arc::new(LogChannel {
                with_bodies: self.log_message_bodies,
            }));
        }
        SmtpChannel::new(self)
            .map(|c| Arc::new(c) as Arc<dyn Channel>)
            .map_err(|reason| ConfigError::Invalid {
                key: format!("micromart/{SERVICE}/smtp_host"),
                value: self.smtp_host.clone(),
                reason,
            })
    }

    fn sms_channel(&self) -> Result<Arc<dyn Channel>, ConfigError> {
        if self.sms_url.is_empty() {
            return Ok(Arc::new(LogChannel {
                with_bodies: self.log_message_bodies,
            }));
        }
        HttpSmsChannel::new(&self.sms_url, self.base.call_timeout)
            .map(|c| Arc::new(c) as Arc<dyn Channel>)
            .map_err(|reason| ConfigError::Invalid {
                key: format!("micromart/{SERVICE}/sms_url"),
                value: self.sms_url.clone(),
                reason,
            })
    }
}

#[derive(Clone)]
pub struct Notification {
    pub(crate) base: Base,
    pub(crate) config: Arc<NotificationConfig>,
    email: Arc<dyn Channel>,
    sms: Arc<dyn Channel>,
    /// Asked for a contact when an event about a customer arrives before their
    /// `UserRegistered`.
    users: ServiceClient,
}

impl Notification {
    pub fn pool(&self) -> &sqlx::PgPool {
        &self.base.pool
    }

    pub fn redis(&self) -> &platform::redis::Redis {
        &self.base.redis
    }

    pub fn app(&self) -> impl Endpoint<Output = Response> + use<> {
        self.base.routes(openapi(self.clone()))
    }

    /// The consumer of users, payment and orders events (group `notification`).
    pub fn consumer(&self) -> Consumer {
        self.base.consumer(
            events::GROUP,
            &events::STREAMS,
            Arc::new(events::Notifier {
                shop_base_url: self.config.shop_base_url.clone(),
                users: self.users.clone(),
            }),
        )
    }

    fn sender(&self) -> Sender {
        Sender::new(
            self.base.pool.clone(),
            self.email.clone(),
            self.sms.clone(),
            self.config.max_attempts,
            self.config.retry_base_delay,
            self.config.send_interval,
        )
    }

    /// The event consumer, the sender, and retention, which also deletes old records of
    /// refunds told.
    pub fn background(&self) -> Background {
        let mut tasks = self.base.background_pruning(self.expired_rows());
        let consumer = self.consumer();
        tasks.add("notification consumer", move |shutdown| {
            consumer.run(shutdown)
        });
        let sender = self.sender();
        tasks.add("notification sender", move |shutdown| sender.run(shutdown));
        tasks
    }

    /// What retention deletes of notification's own tables.
    pub fn expired_rows(&self) -> Vec<OwnRows> {
        let keep = self.base.config.retention.applied_events;
        vec![store::old_refunds(keep), store::old_cancellations(keep)]
    }

    /// Tries every message due now once (sent, or retried later, or failed for good);
    /// returns how many were sent.
    pub async fn send_due(&self) -> Result<usize, sqlx::Error> {
        self.sender().send_due().await
    }
}

pub fn openapi(state: Notification) -> OpenApiService<NotificationApi, ()> {
    platform::web::openapi_service(NotificationApi { state }, "MicroMart notification")
}

pub async fn app(
    config: NotificationConfig,
    discovery: Arc<dyn Discovery>,
) -> Result<(Notification, impl Endpoint<Output = Response>), StartError> {
    let email = config.email_channel()?;
    let sms = config.sms_channel()?;
    let base = Base::connect(config.base.clone(), &MIGRATIONS, discovery).await?;
    let users = base.client("users");
    let notification = Notification {
        base,
        config: Arc::new(config),
        email,
        sms,
        users,
    };
    let app = notification.app();
    Ok((notification, app))
}
