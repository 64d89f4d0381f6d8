//! The users service, black-box: started on port 0 against its own database and Redis prefix.

mod support;

mod accounts;
mod admin;
mod contract;
mod devices;
mod input;
mod retention;
mod tokens;
