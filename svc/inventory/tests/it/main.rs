//! The inventory service, black-box, against its own database.

mod reservations;
mod stock;
mod support;
