//! The platform's black-box tests; one binary, modules by subject.

mod authorized;
mod consul;
mod contract;
mod events;
mod http;
mod key_set;
mod migrations;
mod retention;
mod seed_file;
mod workers;
