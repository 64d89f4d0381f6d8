//! The whole checkout saga across real services: products, inventory, cart, orders and
//! payment on port 0, one Redis prefix carrying the events between them.

mod checkout;
mod support;
