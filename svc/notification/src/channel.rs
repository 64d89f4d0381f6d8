//! Where messages go: email over SMTP, SMS through an HTTP provider, or the log when neither
//! is configured (the local run). Each behind the one `Channel` trait.

use std::time::Duration;

use async_trait::async_trait;
use lettre::message::Mailbox;
use lettre::message::header::ContentType;
use lettre::transport::smtp::authentication::Credentials;
use lettre::{AsyncSmtpTransport, AsyncTransport, Tokio1Executor};
use serde::Serialize;

use crate::{NotificationConfig, SmtpTls};

/// The medium of a notification, as stored in `notifications.channel`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Medium {
    Email,
    Sms,
}

impl Medium {
    pub fn as_str(self) -> &'static str {
        match self {
            Medium::Email => "email",
            Medium::Sms => "sms",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "email" => Some(Medium::Email),
            "sms" => Some(Medium::Sms),
            _ => None,
        }
    }
}

/// One message to one recipient.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    pub medium: Medium,
    /// An email address or a phone number.
    pub recipient: String,
    /// The email subject (SMS have none; kept for the record).
    pub subject: String,
    pub body: String,
}

/// Why a send did not happen.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{reason}")]
pub struct SendError {
    pub reason: String,
    /// The receiving side refused the message itself (an SMTP 5xx, an HTTP 4xx): sending it
    /// again would fail the same way, so it is not retried.
    pub permanent: bool,
}

impl SendError {
    pub fn transient(reason: impl Into<String>) -> Self {
        Self {
            reason: reason.into(),
            permanent: false,
        }
    }

    pub fn permanent(reason: impl Into<String>) -> Self {
        Self {
            reason: reason.into(),
            permanent: true,
        }
    }
}

/// A way to deliver messages.
#[async_trait]
pub trait Channel: Send + Sync {
    /// What the message went out through when this channel sent it (`smtp`, `log`, `http`).
    fn name(&self) -> &'static str;
    async fn send(&self, message: &Message) -> Result<(), SendError>;
}

/// Email through an SMTP server.
pub struct SmtpChannel {
    transport: AsyncSmtpTransport<Tokio1Executor>,
    from: Mailbox,
}

impl SmtpChannel {
    pub fn new(config: &NotificationConfig) -> Result<Self, String> {
        let host = config.smtp_host.as_str();
        let builder = match config.smtp_tls {
            SmtpTls::None => AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(host),
            SmtpTls::Starttls => AsyncSmtpTransport::<Tokio1Executor>::starttls_relay(host)
                .map_err(|e| format!("smtp_host {host:?}: {e}"))?,
            SmtpTls::Tls => AsyncSmtpTransport::<Tokio1Executor>::relay(host)
                .map_err(|e| format!("smtp_host {host:?}: {e}"))?,
        };
        // relay() and starttls_relay() choose the TLS mode; the port is ours.
        let mut builder = builder
            .port(config.smtp_port)
            .timeout(Some(Duration::from_secs(15)));
        if !config.smtp_username.is_empty() {
            builder = builder.credentials(Credentials::new(
                config.smtp_username.clone(),
                config.smtp_password.clone(),
            ));
        }
        let from: Mailbox = config
            .mail_from
            .parse()
            .map_err(|e| format!("mail_from {:?}: {e}", config.mail_from))?;
        Ok(Self {
            transport: builder.build(),
            from,
        })
    }
}

#[async_trait]
impl Channel for SmtpChannel {
    fn name(&self) -> &'static str {
        "smtp"
    }

    async fn send(&self, message: &Message) -> Result<(), SendError> {
        let to: Mailbox = message.recipient.parse().map_err(|e| {
            SendError::permanent(format!("invalid recipient {:?}: {e}", message.recipient))
        })?;
        let email = lettre::Message::builder()
            .from(self.from.clone())
            .to(to)
            .subject(message.subject.clone())
            .header(ContentType::TEXT_PLAIN)
            .body(message.body.clone())
            .map_err(|e| SendError::permanent(format!("the email cannot be built: {e}")))?;
        match self.transport.send(email).await {
            Ok(_) => Ok(()),
            Err(e) if e.is_permanent() => {
                Err(SendError::permanent(format!("SMTP server refused: {e}")))
            }
            Err(e) => Err(SendError::transient(format!("SMTP: {e}"))),
        }
    }
}

/// No server configured: the message is written to the log, and counts as sent. Its body
/// only where `with_bodies` (the local run): bodies carry password-reset and verification
/// links, which would let whoever reads a deployment's logs take any account over.
pub struct LogChannel {
    pub with_bodies: bool,
}

#[async_trait]
impl Channel for LogChannel {
    fn name(&self) -> &'static str {
        "log"
    }

    async fn send(&self, message: &Message) -> Result<(), SendError> {
        let body = if self.with_bodies {
            message.body.as_str()
        } else {
            "(not logged: set log_message_bodies to see it)"
        };
        tracing::info!(
            channel = message.medium.as_str(),
            recipient = %message.recipient,
            subject = %message.subject,
            body,
            "notification (no server configured, logged instead of sent)"
        );
        Ok(())
    }
}

/// SMS through an HTTP provider: `POST {to, body}` as JSON to a URL from config.
pub struct HttpSmsChannel {
    client: reqwest::Client,
    url: String,
}

#[derive(Serialize)]
struct SmsRequest<'a> {
    to: &'a str,
    body: &'a str,
}

impl HttpSmsChannel {
    pub fn new(url: &str, timeout: Duration) -> Result<Self, String> {
        let client = reqwest::Client::builder()
            .timeout(timeout)
            .build()
            .map_err(|e| format!("SMS client: {e}"))?;
        Ok(Self {
            client,
            url: url.to_owned(),
        })
    }
}

#[async_trait]
impl Channel for HttpSmsChannel {
    fn name(&self) -> &'static str {
        "http"
    }

    async fn send(&self, message: &Message) -> Result<(), SendError> {
        let resp = self
            .client
            .post(&self.url)
            .json(&SmsRequest {
                to: &message.recipient,
                body: &message.body,
            })
            .send()
            .await
            .map_err(|e| SendError::transient(format!("SMS provider unreachable: {e}")))?;
        let status = resp.status();
        if status.is_success() {
            Ok(())
        } else if status.is_client_error() && status.as_u16() != 429 && status.as_u16() != 408 {
            Err(SendError::permanent(format!(
                "SMS provider refused the message: {status}"
            )))
        } else {
            Err(SendError::transient(format!(
                "SMS provider answered {status}"
            )))
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use super::*;

    /// What the log says while `channel` sends `message`.
    fn logged(channel: &LogChannel, message: &Message) -> String {
        #[derive(Clone, Default)]
        struct Lines(Arc<Mutex<Vec<u8>>>);
        impl std::io::Write for Lines {
            fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
                self.0.lock().unwrap().extend_from_slice(buf);
                Ok(buf.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let lines = Lines::default();
        let writer = lines.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_writer(move || writer.clone())
            .with_ansi(false)
            .finish();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        tracing::subscriber::with_default(subscriber, || {
            runtime.block_on(channel.send(message)).unwrap();
        });
        String::from_utf8(lines.0.lock().unwrap().clone()).unwrap()
    }

    #[test]
    fn a_logged_message_shows_its_links_only_where_bodies_are_asked_for() {
        let message = Message {
            medium: Medium::Email,
            recipient: "ada@example.com".into(),
            subject: "Reset your password".into(),
            body: "Open http://localhost:7082/reset-password?token=secret-token".into(),
        };
        let deployed = logged(&LogChannel { with_bodies: false }, &message);
        assert!(deployed.contains("Reset your password"), "{deployed}");
        assert!(!deployed.contains("secret-token"), "{deployed}");
        let local = logged(&LogChannel { with_bodies: true }, &message);
        assert!(local.contains("secret-token"), "{local}");
    }
}
