//! The numbers operators may change in Consul KV while the gateway runs: breaker, timeout,
//! CORS and rate limit. A watch re-reads them and applies them without a restart.

use std::net::{IpAddr, Ipv6Addr};
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use platform::CancellationToken;
use platform::config::{ConfigError, ConfigSource, ROOT, Settings};

use crate::Gateway;
use crate::breaker::BreakerConfig;

/// The most calls a breaker's window may hold.
const MAX_BREAKER_WINDOW: usize = 10_000;

/// Whom a rate limit counts: the signed-in user, else the client's address.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ClientKey {
    User(uuid::Uuid),
    Address(IpAddr),
}

impl ClientKey {
    /// The key of a client known only by its address. An IPv6 host is usually given a whole
    /// /64 and may send from any address in it: the /64 is the client, so that stepping
    /// through its addresses neither escapes the limit nor fills the limiter with keys. An
    /// IPv4-mapped address (as a dual-stack listener sees IPv4 clients) is its IPv4 address.
    pub fn address(ip: IpAddr) -> Self {
        Self::Address(match ip.to_canonical() {
            IpAddr::V6(v6) => IpAddr::V6(Ipv6Addr::from_bits(v6.to_bits() & !u128::from(u64::MAX))),
            v4 => v4,
        })
    }
}

/// Forgets the clients whose buckets have refilled (their state is no different from a client
/// never seen), so that the limiter holds the clients of the last moments rather than every
/// client since the start; the number it still holds.
pub fn forget_idle_clients(limiter: &DefaultKeyedRateLimiter<ClientKey>) -> usize {
    limiter.retain_recent();
    limiter.shrink_to_fit();
    limiter.len()
}

#[derive(Debug, Clone, PartialEq)]
pub struct Live {
    pub breaker: BreakerConfig,
    /// Limit of an upstream call, counted from when the request's body has all been sent.
    pub upstream_timeout: Duration,
    /// How long a caller may take to send its whole request body.
    pub caller_body_timeout: Duration,
    /// Origins allowed by CORS, exactly as browsers send them.
    pub cors_origins: Vec<String>,
    /// Requests per second each client may make, and the burst above it.
    pub rate_per_second: u32,
    pub rate_burst: u32,
}

impl Live {
    pub fn from_settings(s: &Settings) -> Result<Self, ConfigError> {
        let origins: String =
            s.get_or("cors_allowed_origins", "http://localhost:3000".to_owned())?;
        let rate_percent: u32 = s.get_or("breaker_failure_rate_percent", 50)?;
        let invalid = |key: &str, value: String, reason: &str| ConfigError::Invalid {
            key: format!("{ROOT}/gateway/{key}"),
            value,
            reason: reason.to_owned(),
        };
        if !(1..=100).contains(&rate_percent) {
            return Err(invalid(
                "breaker_failure_rate_percent",
                rate_percent.to_string(),
                "must be 1 to 100",
            ));
        }
        let upstream_timeout = s.millis("upstream_timeout_ms", 5_000)?;
        let live = Self {
            breaker: BreakerConfig {
                window: s.get_or("breaker_window", 10)?,
                failure_rate: f64::from(rate_percent) / 100.0,
                open_for: s.millis("breaker_open_ms", 10_000)?,
                half_open_calls: s.get_or("breaker_half_open_calls", 3)?,
                // As long as an instance may pause mid-answer: the same patience either way.
                trial_caller_wait: upstream_timeout,
            },
            upstream_timeout,
            caller_body_timeout: s.millis("caller_body_timeout_ms", 30_000)?,
            cors_origins: origins
                .split(',')
                .map(|o| o.trim().trim_end_matches('/').to_owned())
                .filter(|o| !o.is_empty())
                .collect(),
            rate_per_second: s.get_or("rate_limit_per_second", 50)?,
            rate_burst: s.get_or("rate_limit_burst", 100)?,
        };
        if live.breaker.window == 0 || live.breaker.half_open_calls == 0 {
            return Err(invalid(
                "breaker_window",
                live.breaker.window.to_string(),
                "window and half-open calls must be positive",
            ));
        }
        // A breaker keeps its window's outcomes: bounded, and judged within a sensible count.
        if live.breaker.window > MAX_BREAKER_WINDOW {
            return Err(invalid(
                "breaker_window",
                live.breaker.window.to_string(),
                &format!("must be at most {MAX_BREAKER_WINDOW}"),
            ));
        }
        // A limit of 0 would time out every call (and open every breaker) or every body.
        for (key, limit) in [
            ("upstream_timeout_ms", live.upstream_timeout),
            ("caller_body_timeout_ms", live.caller_body_timeout),
        ] {
            if limit.is_zero() {
                return Err(invalid(key, "0".to_owned(), "must be positive"));
            }
        }
        if live.cors_origins.iter().any(|o| o == "*") {
            return Err(invalid(
                "cors_allowed_origins",
                origins,
                "list origins; a wildcard cannot go with credentials",
            ));
        }
        if live.rate_per_second == 0 || live.rate_burst == 0 {
            return Err(invalid(
                "rate_limit_per_second",
                live.rate_per_second.to_string(),
                "rate and burst must be positive",
            ));
        }
        Ok(live)
    }

    pub fn limiter(&self) -> Arc<DefaultKeyedRateLimiter<ClientKey>> {
        let per_second = NonZeroU32::new(self.rate_per_second).expect("checked positive");
        let burst = NonZeroU32::new(self.rate_burst).expect("checked positive");
        Arc::new(RateLimiter::keyed(
            Quota::per_second(per_second).allow_burst(burst),
        ))
    }
}

/// Follows `micromart/gateway/`, where every live key is, and applies each change (read, as at
/// start, over `micromart/shared/`).
pub async fn follow(
    gateway: Gateway,
    source: Arc<dyn ConfigSource>,
    wait: Duration,
    shutdown: CancellationToken,
) {
    let prefix = format!("{ROOT}/gateway/");
    let mut index = 0;
    loop {
        let watched = tokio::select! {
            w = source.watch(&prefix, index, wait) => w,
            _ = shutdown.cancelled() => return,
        };
        let failed = match watched {
            // The wait ended with nothing new.
            Ok(w) if w.index == index => false,
            Ok(w) => {
                // Never 0 again, which asks for an answer at once (Consul's advice for an
                // index that reads 0).
                index = w.index.max(1);
                // Read whatever the index says: the first answer (at start, or after a
                // failure) may follow a change nobody was watching for.
                reload(&gateway, source.as_ref())
                    .await
                    .inspect_err(|err| {
                        tracing::warn!(error = %err, "cannot read the gateway configuration; retrying");
                    })
                    .is_err()
            }
            Err(err) => {
                tracing::warn!(error = %err, "config watch failed; retrying");
                true
            }
        };
        if failed {
            // Read again from the start: a change made meanwhile is not lost.
            index = 0;
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                _ = shutdown.cancelled() => return,
            }
        }
    }
}

/// Reads the gateway's numbers and applies them if they differ from those in force. An
/// invalid configuration is logged and left aside, the numbers in force kept until the next
/// change; the error is a failure to read.
async fn reload(gateway: &Gateway, source: &dyn ConfigSource) -> Result<(), ConfigError> {
    let settings = Settings::load(source, "gateway").await?;
    match Live::from_settings(&settings) {
        Ok(live) if live != *gateway.live() => {
            tracing::info!(?live, "gateway configuration changed");
            gateway.apply(live);
        }
        Ok(_) => {}
        Err(err) => tracing::error!(error = %err, "ignoring an invalid gateway configuration"),
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limiter(per_second: &str) -> Arc<DefaultKeyedRateLimiter<ClientKey>> {
        let settings = Settings::default()
            .with("rate_limit_per_second", per_second)
            .with("rate_limit_burst", "1");
        Live::from_settings(&settings).unwrap().limiter()
    }

    #[test]
    fn zero_limits_and_oversized_windows_are_refused() {
        for (key, value) in [
            ("upstream_timeout_ms", "0"),
            ("caller_body_timeout_ms", "0"),
            ("breaker_window", "10001"),
        ] {
            let settings = Settings::default().with(key, value);
            let err = Live::from_settings(&settings).unwrap_err();
            assert!(err.to_string().contains(key), "{key}: {err}");
        }
        let settings = Settings::default().with("breaker_window", "10000");
        assert!(Live::from_settings(&settings).is_ok());
    }

    #[test]
    fn a_wildcard_origin_is_refused_as_credentials_are_allowed() {
        let settings = Settings::default().with("cors_allowed_origins", "http://localhost:3000, *");
        let err = Live::from_settings(&settings).unwrap_err().to_string();
        assert!(
            err.contains("cors_allowed_origins") && err.contains("wildcard"),
            "{err}"
        );
        let settings = Settings::default().with(
            "cors_allowed_origins",
            "http://localhost:3000, https://shop.example/",
        );
        assert_eq!(
            Live::from_settings(&settings).unwrap().cors_origins,
            ["http://localhost:3000", "https://shop.example"]
        );
    }

    #[test]
    fn an_ipv6_client_is_its_64_and_a_mapped_ipv4_one_its_ipv4_address() {
        let key = |ip: &str| ClientKey::address(ip.parse().unwrap());
        assert_eq!(
            key("2001:db8:1:2::1"),
            key("2001:db8:1:2:ffff:ffff:ffff:ffff")
        );
        assert_eq!(key("2001:db8:1:2::1"), key("2001:db8:1:2::"));
        assert_ne!(key("2001:db8:1:2::1"), key("2001:db8:1:3::1"));
        assert_eq!(key("::ffff:203.0.113.7"), key("203.0.113.7"));
        assert_ne!(key("203.0.113.7"), key("203.0.113.8"));
    }

    #[test]
    fn clients_whose_buckets_have_refilled_are_forgotten_and_the_others_kept() {
        let clients: Vec<ClientKey> = (0..100u8)
            .map(|i| ClientKey::address(IpAddr::from([10, 0, 0, i])))
            .collect();
        // One request a second: each bucket is still refilling a moment later.
        let slow = limiter("1");
        // A thousand a second: each bucket is full again after a millisecond.
        let fast = limiter("1000");
        for client in &clients {
            slow.check_key(client).unwrap();
            fast.check_key(client).unwrap();
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
        assert_eq!(forget_idle_clients(&slow), 100);
        assert_eq!(forget_idle_clients(&fast), 0);
        // A forgotten client starts again with a full bucket.
        assert!(fast.check_key(&clients[0]).is_ok());
        assert!(
            slow.check_key(&clients[0]).is_err(),
            "its bucket is still empty"
        );
    }
}
