//! What services share without depending on each other: events, stream names, money and the
//! request/response types of internal calls.

pub mod events;
pub mod internal;
pub mod money;
pub mod text;

pub use text::Text;
