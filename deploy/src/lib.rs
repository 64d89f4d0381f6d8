//! The deployment files: the Nomad jobs under `jobs/` are rendered from one template
//! (`jobs/template/`) and the KV seed, so that the eight jobs cannot drift apart; the tests
//! (`tests/it`) parse them as HCL and compare them with the services' names, ports, health
//! checks and config keys, and run `vagrant validate` on the `Vagrantfile`.

/// What differs between the services' jobs.
pub struct JobSpec {
    pub name: &'static str,
    pub summary: &'static str,
    /// The fixed port of the KV default `http_bind`; `None` lets Nomad pick one (users).
    pub static_port: Option<u16>,
    /// Items of the job's Nomad variable and the environment variable each becomes.
    pub secrets: &'static [(&'static str, &'static str)],
}

const INTERNAL_TOKEN: (&str, &str) = ("internal_token", "MICROMART_SHARED_INTERNAL_TOKEN");
const PGPASSWORD: (&str, &str) = ("pgpassword", "PGPASSWORD");

pub const JOBS: [JobSpec; 8] = [
    JobSpec {
        name: "users",
        summary: "accounts, login, tokens, JWKS",
        static_port: None,
        secrets: &[
            ("jwt_signing_key", "MICROMART_USERS_JWT_SIGNING_KEY"),
            INTERNAL_TOKEN,
            PGPASSWORD,
        ],
    },
    JobSpec {
        name: "products",
        summary: "the catalogue",
        static_port: Some(7016),
        secrets: &[INTERNAL_TOKEN, PGPASSWORD],
    },
    JobSpec {
        name: "inventory",
        summary: "stock and reservations",
        static_port: Some(7061),
        secrets: &[INTERNAL_TOKEN, PGPASSWORD],
    },
    JobSpec {
        name: "cart",
        summary: "shopping carts",
        static_port: Some(7041),
        secrets: &[INTERNAL_TOKEN, PGPASSWORD],
    },
    JobSpec {
        name: "orders",
        summary: "checkout and the order status machine",
        static_port: Some(7063),
        secrets: &[INTERNAL_TOKEN, PGPASSWORD],
    },
    JobSpec {
        name: "payment",
        summary: "payment sessions and the provider webhook",
        static_port: Some(7007),
        secrets: &[
            INTERNAL_TOKEN,
            ("webhook_secret", "MICROMART_PAYMENT_WEBHOOK_SECRET"),
            PGPASSWORD,
        ],
    },
    JobSpec {
        name: "notification",
        summary: "email and SMS delivery",
        static_port: Some(7050),
        secrets: &[
            INTERNAL_TOKEN,
            ("smtp_username", "MICROMART_NOTIFICATION_SMTP_USERNAME"),
            ("smtp_password", "MICROMART_NOTIFICATION_SMTP_PASSWORD"),
            PGPASSWORD,
        ],
    },
    JobSpec {
        name: "gateway",
        summary: "the public entry point: routing, CORS, rate limits, circuit breakers",
        static_port: Some(7082),
        secrets: &[],
    },
];

const SERVICE_TEMPLATE: &str = include_str!("../../jobs/template/service.nomad.hcl.in");
const SECRETS_TEMPLATE: &str = include_str!("../../jobs/template/secrets.hcl.in");

/// The environment variable the services read a key from, as the platform names it.
pub use platform::config::env_name;

/// The job file of `job`; `seed_keys` are the KV seed's keys in seed order. Its config
/// template renders every shared key and every key of the service but `http_bind` (the task
/// binds the port Nomad allocated instead).
pub fn render(job: &JobSpec, seed_keys: &[String]) -> String {
    let own = format!("micromart/{}/", job.name);
    let config: Vec<String> = seed_keys
        .iter()
        .filter(|k| k.starts_with("micromart/shared/") || k.starts_with(&own))
        .filter(|k| **k != format!("{own}http_bind"))
        .map(|k| format!("          {}={{{{ key \"{k}\" | toJSON }}}}", env_name(k)))
        .collect();
    let port = match job.static_port {
        Some(port) => format!(
            "        # The KV default of micromart/{}/http_bind (consul/KEYS.md).\n        static = {port}",
            job.name
        ),
        None => "        # No static port: Nomad picks one (the KV default 0.0.0.0:0 lets the OS choose; under\n        # Nomad the bind below uses the port Nomad allocated, and Consul tells the gateway).".to_owned(),
    };
    let secrets_block = if job.secrets.is_empty() {
        String::new()
    } else {
        let items: Vec<&str> = job.secrets.iter().map(|(item, _)| *item).collect();
        let lines: Vec<String> = job
            .secrets
            .iter()
            .map(|(item, env)| format!("          {env}={{{{ .{item} | toJSON }}}}"))
            .collect();
        SECRETS_TEMPLATE
            .replace("@SECRET_ITEMS@", &items.join(", "))
            .replace("@SECRETS@", &lines.join("\n"))
    };
    SERVICE_TEMPLATE
        .replace("@SUMMARY@", job.summary)
        .replace("@PORT@", &port)
        .replace("@CONFIG@", &config.join("\n"))
        .replace("@SECRETS_BLOCK@", &secrets_block)
        .replace("@ENV@", &env_name(&format!("micromart/{}", job.name)))
        .replace("@NAME@", job.name)
}
