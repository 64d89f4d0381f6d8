//! The notification service, black-box: started on port 0 against its own database and Redis
//! prefix, fed events the way producers publish them (outbox, relay, stream), sending real
//! SMTP to a real SMTP server (aiosmtpd) and SMS to a local HTTP endpoint.

mod support;

mod access;
mod contract;
mod delivery;
mod input;
mod retries;
