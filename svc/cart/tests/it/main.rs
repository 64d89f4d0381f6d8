//! The cart service, black-box, with real products and inventory services beside it.

mod cart;
mod support;
