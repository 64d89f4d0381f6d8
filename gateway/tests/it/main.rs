//! The gateway, black-box, in front of controllable upstreams (and the real users service).

mod breaker;
mod edge;
mod routing;
mod support;
