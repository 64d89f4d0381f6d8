//! The deployment files checked against the services: every `jobs/*.nomad.hcl` parsed as HCL
//! (names, ports, health checks, the config keys its templates render, no secret in the
//! file) and the `Vagrantfile` (`vagrant validate`).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;

use base64::Engine;
use deploy::env_name;
use hcl::{Block, Body, Expression};

/// The services, each with one job (ports come from `http_bind` in consul/kv.json).
const SERVICES: [&str; 8] = [
    "users",
    "products",
    "inventory",
    "cart",
    "orders",
    "payment",
    "notification",
    "gateway",
];

/// Config keys that are secrets: never in KV, never in a job file, only from Nomad variables.
const SECRET_KEYS: [&str; 5] = [
    "micromart/users/jwt_signing_key",
    "micromart/shared/internal_token",
    "micromart/payment/webhook_secret",
    "micromart/notification/smtp_username",
    "micromart/notification/smtp_password",
];

/// The secrets each service needs, as the environment variables its secret template sets.
fn required_secrets(service: &str) -> Vec<String> {
    let mut keys: Vec<&str> = match service {
        "users" => vec![
            "micromart/users/jwt_signing_key",
            "micromart/shared/internal_token",
        ],
        "gateway" => vec![],
        "payment" => vec![
            "micromart/shared/internal_token",
            "micromart/payment/webhook_secret",
        ],
        "notification" => vec![
            "micromart/shared/internal_token",
            "micromart/notification/smtp_username",
            "micromart/notification/smtp_password",
        ],
        _ => vec!["micromart/shared/internal_token"],
    };
    let mut names: Vec<String> = keys.drain(..).map(env_name).collect();
    if service != "gateway" {
        names.push("PGPASSWORD".to_owned());
    }
    names
}

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("deploy/ sits in the repository")
        .to_owned()
}

/// consul/kv.json, decoded: key → value.
fn kv() -> BTreeMap<String, String> {
    let path = repo().join("consul/kv.json");
    let text = std::fs::read_to_string(&path).expect("consul/kv.json is readable");
    let entries: Vec<serde_json::Value> =
        serde_json::from_str(&text).expect("consul/kv.json is JSON");
    entries
        .iter()
        .map(|e| {
            let key = e["key"].as_str().expect("every entry has a key").to_owned();
            let b64 = e["value"].as_str().unwrap_or_default();
            let bytes = base64::engine::general_purpose::STANDARD
                .decode(b64)
                .unwrap_or_else(|err| panic!("{key}: value is not base64: {err}"));
            (key, String::from_utf8(bytes).expect("values are UTF-8"))
        })
        .collect()
}

/// Every non-secret key `service` reads from KV: `micromart/shared/*` and its own.
fn service_keys(kv: &BTreeMap<String, String>, service: &str) -> BTreeSet<String> {
    kv.keys()
        .filter(|k| {
            k.starts_with("micromart/shared/") || k.starts_with(&format!("micromart/{service}/"))
        })
        .cloned()
        .collect()
}

/// The port of the `http_bind` default in KV (0: dynamic).
fn kv_port(kv: &BTreeMap<String, String>, service: &str) -> u16 {
    let key = format!("micromart/{service}/http_bind");
    let bind = kv
        .get(&key)
        .unwrap_or_else(|| panic!("{key} is in consul/kv.json"));
    bind.rsplit(':')
        .next()
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("{key} = {bind:?} ends with a port"))
}

struct JobFile {
    path: PathBuf,
    text: String,
    body: Body,
}

fn job_files() -> Vec<JobFile> {
    let dir = repo().join("jobs");
    let mut files: Vec<JobFile> = std::fs::read_dir(&dir)
        .expect("jobs/ exists")
        .map(|e| e.expect("jobs/ is listable").path())
        .filter(|p| p.to_string_lossy().ends_with(".nomad.hcl"))
        .map(|path| {
            let text = std::fs::read_to_string(&path).expect("job file readable");
            let body = hcl::parse(&text)
                .unwrap_or_else(|e| panic!("{} is not valid HCL: {e}", path.display()));
            JobFile { path, text, body }
        })
        .collect();
    files.sort_by(|a, b| a.path.cmp(&b.path));
    assert!(!files.is_empty(), "no jobs/*.nomad.hcl found");
    files
}

fn blocks<'a>(body: &'a Body, ident: &'a str) -> impl Iterator<Item = &'a Block> + 'a {
    body.blocks().filter(move |b| b.identifier() == ident)
}

fn one<'a>(body: &'a Body, ident: &str, what: &str) -> &'a Block {
    let found: Vec<&Block> = body.blocks().filter(|b| b.identifier() == ident).collect();
    assert_eq!(found.len(), 1, "{what}: expected one `{ident}` block");
    found[0]
}

fn attr<'a>(body: &'a Body, key: &str) -> Option<&'a Expression> {
    body.attributes().find(|a| a.key() == key).map(|a| a.expr())
}

/// A string attribute, quoted or template (with `${…}` left as written).
fn text(body: &Body, key: &str) -> Option<String> {
    match attr(body, key)? {
        Expression::String(s) => Some(s.clone()),
        Expression::TemplateExpr(t) => Some(t.to_string()),
        _ => None,
    }
}

fn number(body: &Body, key: &str) -> Option<u64> {
    match attr(body, key)? {
        Expression::Number(n) => n.as_u64(),
        _ => None,
    }
}

fn boolean(body: &Body, key: &str) -> Option<bool> {
    match attr(body, key)? {
        Expression::Bool(b) => Some(*b),
        _ => None,
    }
}

/// The one job of a file, with its group and task.
struct Job<'a> {
    name: String,
    job: &'a Block,
    group: &'a Block,
    task: &'a Block,
}

fn job(file: &JobFile) -> Job<'_> {
    let what = file.path.display().to_string();
    let job = one(&file.body, "job", &what);
    let name = job
        .labels()
        .first()
        .map(|l| l.as_str().to_owned())
        .unwrap_or_else(|| panic!("{what}: the job has a name"));
    let group = one(job.body(), "group", &what);
    let task = one(group.body(), "task", &what);
    Job {
        name,
        job,
        group,
        task,
    }
}

fn all_jobs(files: &[JobFile]) -> Vec<Job<'_>> {
    files.iter().map(job).collect()
}

/// The `data` of every template of a task, with its block.
fn templates(task: &Block) -> Vec<(&Block, String)> {
    blocks(task.body(), "template")
        .map(|t| {
            let data = text(t.body(), "data").expect("a template has inline data");
            (t, data)
        })
        .collect()
}

/// Every `key "…"` a template text reads.
fn keys_read(data: &str) -> Vec<String> {
    let mut keys = Vec::new();
    let mut rest = data;
    while let Some(at) = rest.find("key \"") {
        rest = &rest[at + 5..];
        let end = rest.find('"').expect("a key name is closed");
        keys.push(rest[..end].to_owned());
        rest = &rest[end..];
    }
    keys
}

/// `NAME=value` lines of an env template.
fn assignments(data: &str) -> Vec<(String, String)> {
    data.lines()
        .map(str::trim)
        .filter_map(|l| l.split_once('='))
        .filter(|(name, _)| {
            !name.is_empty() && name.chars().all(|c| c.is_ascii_uppercase() || c == '_')
        })
        .map(|(n, v)| (n.to_owned(), v.to_owned()))
        .collect()
}

#[test]
fn there_is_exactly_one_job_per_service() {
    let files = job_files();
    let mut names = BTreeMap::new();
    for file in &files {
        let jobs: Vec<&Block> = blocks(&file.body, "job").collect();
        assert_eq!(jobs.len(), 1, "{}: one job per file", file.path.display());
        let job = job(file);
        let expected_file = format!("{}.nomad.hcl", job.name);
        assert_eq!(
            file.path.file_name().unwrap().to_string_lossy(),
            expected_file,
            "a job lives in jobs/<its name>.nomad.hcl"
        );
        *names.entry(job.name).or_insert(0) += 1;
    }
    let expected: BTreeMap<String, i32> = SERVICES.iter().map(|s| (s.to_string(), 1)).collect();
    assert_eq!(names, expected, "one job for each of the eight services");
}

#[test]
fn jobs_are_service_jobs_with_health_gated_rolling_updates() {
    let files = job_files();
    for job in all_jobs(&files) {
        let n = &job.name;
        assert_eq!(
            text(job.job.body(), "type").as_deref(),
            Some("service"),
            "{n}"
        );
        assert!(
            attr(job.job.body(), "datacenters").is_some(),
            "{n}: datacenters"
        );
        let update = one(job.group.body(), "update", n).body();
        assert_eq!(number(update, "max_parallel"), Some(1), "{n}: max_parallel");
        assert_eq!(
            text(update, "health_check").as_deref(),
            Some("checks"),
            "{n}"
        );
        assert_eq!(
            boolean(update, "auto_revert"),
            Some(true),
            "{n}: auto_revert"
        );
        for key in ["min_healthy_time", "healthy_deadline"] {
            assert!(text(update, key).is_some(), "{n}: update.{key}");
        }
        let restart = one(job.group.body(), "restart", n).body();
        assert!(
            number(restart, "attempts").is_some(),
            "{n}: restart.attempts"
        );
        let reschedule = one(job.group.body(), "reschedule", n).body();
        assert!(text(reschedule, "delay").is_some(), "{n}: reschedule.delay");
    }
}

#[test]
fn service_blocks_name_the_service_and_check_health_over_http() {
    let files = job_files();
    for job in all_jobs(&files) {
        let n = &job.name;
        let service = one(job.group.body(), "service", n).body();
        assert_eq!(text(service, "name").as_deref(), Some(n.as_str()));
        assert_eq!(text(service, "provider").as_deref(), Some("consul"), "{n}");
        assert_eq!(text(service, "port").as_deref(), Some("http"), "{n}");
        let checks: Vec<&Block> = blocks(service, "check").collect();
        assert!(!checks.is_empty(), "{n}: the service has a check");
        for check in checks {
            assert_eq!(text(check.body(), "type").as_deref(), Some("http"), "{n}");
            assert_eq!(
                text(check.body(), "path").as_deref(),
                Some("/health"),
                "{n}"
            );
        }
    }
}

#[test]
fn ports_match_the_http_bind_defaults_in_kv() {
    let kv = kv();
    let files = job_files();
    for job in all_jobs(&files) {
        let n = &job.name;
        let network = one(job.group.body(), "network", n).body();
        let port = blocks(network, "port")
            .find(|p| p.labels().first().map(|l| l.as_str()) == Some("http"))
            .unwrap_or_else(|| panic!("{n}: a port labelled http"));
        let expected = kv_port(&kv, n);
        let static_port = number(port.body(), "static");
        if expected == 0 {
            assert_eq!(
                static_port, None,
                "{n}: http_bind port 0 means a dynamic port"
            );
        } else {
            assert_eq!(static_port, Some(u64::from(expected)), "{n}: static port");
        }
        let env = one(job.task.body(), "env", n).body();
        let bind = format!("MICROMART_{}_HTTP_BIND", n.to_uppercase());
        assert_eq!(
            text(env, &bind).as_deref(),
            Some("0.0.0.0:${NOMAD_PORT_http}"),
            "{n}: listens on the port Nomad gives it"
        );
        assert!(
            attr(env, "CONSUL_HTTP_ADDR").is_some(),
            "{n}: CONSUL_HTTP_ADDR"
        );
    }
}

#[test]
fn tasks_run_the_release_binary_with_measured_resources() {
    let files = job_files();
    for (file, job) in files.iter().zip(all_jobs(&files)) {
        let n = &job.name;
        assert!(
            blocks(&file.body, "variable")
                .any(|v| v.labels().first().map(|l| l.as_str()) == Some("bin_dir")),
            "{n}: a bin_dir variable"
        );
        let driver = text(job.task.body(), "driver").unwrap_or_default();
        assert!(
            ["raw_exec", "exec"].contains(&driver.as_str()),
            "{n}: {driver}"
        );
        let config = one(job.task.body(), "config", n).body();
        assert_eq!(
            text(config, "command"),
            Some(format!("${{var.bin_dir}}/{n}")),
            "{n}: runs its binary from bin_dir"
        );
        let resources = one(job.task.body(), "resources", n).body();
        assert!(number(resources, "cpu").is_some(), "{n}: cpu");
        assert_eq!(number(resources, "memory"), Some(128), "{n}: memory");
    }
}

#[test]
fn templates_read_only_keys_that_exist_in_kv() {
    let kv = kv();
    let files = job_files();
    let mut read = 0;
    for job in all_jobs(&files) {
        for (_, data) in templates(job.task) {
            for key in keys_read(&data) {
                assert!(
                    kv.contains_key(&key),
                    "{}: {key} is not in kv.json",
                    job.name
                );
                read += 1;
            }
        }
    }
    assert!(read > 0, "the templates read no key at all");
}

#[test]
fn templates_render_every_non_secret_key_of_the_service() {
    let kv = kv();
    let files = job_files();
    for job in all_jobs(&files) {
        let n = &job.name;
        let mut rendered = BTreeSet::new();
        for (block, data) in templates(job.task) {
            let keys = keys_read(&data);
            if keys.is_empty() {
                continue;
            }
            assert_eq!(boolean(block.body(), "env"), Some(true), "{n}: env = true");
            for (name, value) in assignments(&data) {
                let key = keys_read(&value);
                assert_eq!(key.len(), 1, "{n}: {name} reads one key");
                assert_eq!(
                    name,
                    env_name(&key[0]),
                    "{n}: {name} is named after its key"
                );
                rendered.insert(key[0].clone());
            }
        }
        let mut expected = service_keys(&kv, n);
        // Set in `env` from the Nomad port instead (template env would override it).
        expected.remove(&format!("micromart/{n}/http_bind"));
        assert_eq!(rendered, expected, "{n}: the keys its template renders");
    }
}

#[test]
fn secrets_come_from_the_jobs_nomad_variable() {
    let files = job_files();
    for job in all_jobs(&files) {
        let n = &job.name;
        let required = required_secrets(n);
        let secret_templates: Vec<(&Block, String)> = templates(job.task)
            .into_iter()
            .filter(|(_, d)| d.contains("nomadVar"))
            .collect();
        if required.is_empty() {
            assert!(secret_templates.is_empty(), "{n} needs no secret");
            continue;
        }
        assert_eq!(secret_templates.len(), 1, "{n}: one secret template");
        let (block, data) = &secret_templates[0];
        assert!(
            data.contains(&format!("{{{{ with nomadVar \"nomad/jobs/{n}\" }}}}")),
            "{n}: secrets from nomad/jobs/{n}"
        );
        assert_eq!(boolean(block.body(), "env"), Some(true), "{n}: env = true");
        let dest = text(block.body(), "destination").unwrap_or_default();
        assert!(dest.starts_with("secrets/"), "{n}: rendered under secrets/");
        assert!(keys_read(data).is_empty(), "{n}: no secret read from KV");
        let set: Vec<(String, String)> = assignments(data);
        let names: BTreeSet<String> = set.iter().map(|(k, _)| k.clone()).collect();
        assert_eq!(names, required.into_iter().collect(), "{n}: its secrets");
        for (name, value) in set {
            assert!(value.starts_with("{{ ."), "{n}: {name} is a nomadVar item");
        }
    }
}

#[test]
fn no_job_file_holds_a_secret_value() {
    let files = job_files();
    let secret_envs: Vec<String> = SECRET_KEYS
        .iter()
        .map(|k| env_name(k))
        .chain(["PGPASSWORD".to_owned()])
        .collect();
    for file in &files {
        let what = file.path.display().to_string();
        let lower = file.text.to_lowercase();
        for needle in [
            "begin private key",
            "private key-----",
            "password =",
            "password=\"",
            "secret =",
            "token =",
            "postgres://micromart:",
        ] {
            assert!(!lower.contains(needle), "{what} contains {needle:?}");
        }
        for key in SECRET_KEYS {
            assert!(!file.text.contains(key), "{what} names the KV key {key}");
        }
        // Every line that sets a secret takes it from a template, never literally.
        for line in file.text.lines().map(str::trim) {
            for name in &secret_envs {
                if let Some(rest) = line.strip_prefix(name.as_str()) {
                    let value = rest.trim_start().trim_start_matches('=').trim_start();
                    assert!(value.starts_with("{{"), "{what}: {name} set literally");
                }
            }
        }
    }
}

#[test]
fn vagrantfile_passes_vagrant_validate() {
    let root = repo();
    assert!(root.join("Vagrantfile").is_file(), "the Vagrantfile exists");
    let output = match Command::new("vagrant")
        .arg("validate")
        .current_dir(&root)
        .output()
    {
        Ok(output) => output,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => panic!(
            "`vagrant` is not on PATH: install Debian's vagrant package \
             (`apt-get install -y vagrant`, as scripts/test does through ensure_vagrant)"
        ),
        Err(e) => panic!("`vagrant validate` could not run: {e}"),
    };
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "vagrant validate failed:\n{stdout}\n{stderr}"
    );
    assert!(
        stdout.contains("validated successfully"),
        "vagrant validate said:\n{stdout}\n{stderr}"
    );
}

/// The KV seed's keys in seed order.
fn seed_keys() -> Vec<String> {
    let text = std::fs::read_to_string(repo().join("consul/kv.json")).unwrap();
    let entries: Vec<serde_json::Value> = serde_json::from_str(&text).unwrap();
    entries
        .iter()
        .map(|e| e["key"].as_str().unwrap().to_owned())
        .collect()
}

#[test]
fn job_files_are_the_ones_rendered_from_the_template_and_the_kv_seed() {
    let keys = seed_keys();
    for job in &deploy::JOBS {
        let path = repo().join(format!("jobs/{}.nomad.hcl", job.name));
        let rendered = deploy::render(job, &keys);
        if std::env::var("UPDATE_JOBS").is_ok() {
            std::fs::write(&path, &rendered).unwrap();
        }
        let committed = std::fs::read_to_string(&path).unwrap_or_default();
        assert!(
            committed == rendered,
            "jobs/{}.nomad.hcl differs from its rendering: edit jobs/template/ or deploy/src/lib.rs, \
             then run `UPDATE_JOBS=1 cargo test -p deploy` and commit",
            job.name
        );
    }
    assert_eq!(
        job_files().len(),
        deploy::JOBS.len(),
        "no job file outside the template"
    );
}
