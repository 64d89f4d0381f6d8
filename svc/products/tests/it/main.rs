//! The products service, black-box: started on port 0 against its own database, with access
//! tokens minted by the tests' own identity.

mod support;

mod access;
mod catalog;
mod concurrency;
mod contract;
mod input;
mod search;
