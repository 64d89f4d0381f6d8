//! Generates one progenitor client per committed OpenAPI document.
//!
//! `application/problem+json` is renamed to `application/json` first, so that error
//! responses come back as a typed `Problem` rather than raw bytes. An operation progenitor
//! cannot generate (the payment page's HTML and form payloads) is dropped with a warning;
//! any other failure stops the build.

use std::path::{Path, PathBuf};

use serde_json::Value;

const SERVICES: [&str; 7] = [
    "users",
    "products",
    "inventory",
    "cart",
    "orders",
    "payment",
    "notification",
];

const METHODS: [&str; 8] = [
    "get", "put", "post", "delete", "options", "head", "patch", "trace",
];

fn main() {
    let root = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").unwrap());
    let out = PathBuf::from(std::env::var("OUT_DIR").unwrap());
    for service in SERVICES {
        let src = root
            .join("..")
            .join("openapi")
            .join(format!("{service}.json"));
        println!("cargo:rerun-if-changed={}", src.display());
        generate(service, &src, &out.join(format!("{service}.rs")));
    }
}

fn generate(service: &str, src: &Path, dest: &Path) {
    let text = std::fs::read_to_string(src)
        .unwrap_or_else(|e| panic!("{service}: cannot read {}: {e}", src.display()));
    let mut doc: Value = serde_json::from_str(&text)
        .unwrap_or_else(|e| panic!("{service}: {} is not JSON: {e}", src.display()));
    rename_problem_json(&mut doc);

    let code = match render(&doc) {
        Ok(code) => code,
        Err(whole) => {
            // Find the operations that cannot be generated on their own; drop only those.
            let failing: Vec<(String, String, String)> = operations(&doc)
                .into_iter()
                .filter(|(path, method, _)| render(&only(&doc, path, method)).is_err())
                .collect();
            if failing.is_empty() {
                panic!("{service}: progenitor failed on the whole document: {whole}");
            }
            for (path, method, _) in &failing {
                let item = doc["paths"][path.as_str()].as_object_mut().unwrap();
                item.remove(method.as_str());
                if !item.keys().any(|k| METHODS.contains(&k.as_str())) {
                    doc["paths"].as_object_mut().unwrap().remove(path.as_str());
                }
            }
            let names: Vec<String> = failing
                .iter()
                .map(|(path, method, id)| format!("{id} ({} {path})", method.to_uppercase()))
                .collect();
            println!(
                "cargo:warning={service}: progenitor cannot generate {} ({whole}); left out of the client",
                names.join(", ")
            );
            render(&doc).unwrap_or_else(|e| {
                panic!("{service}: still fails without {}: {e}", names.join(", "))
            })
        }
    };
    std::fs::write(dest, code)
        .unwrap_or_else(|e| panic!("{service}: cannot write {}: {e}", dest.display()));
}

/// Generates pretty-printed client code for a document, or says why it cannot.
fn render(doc: &Value) -> Result<String, String> {
    let spec: openapiv3::OpenAPI =
        serde_json::from_value(doc.clone()).map_err(|e| format!("not OpenAPI 3.0: {e}"))?;
    // progenitor reports some unsupported shapes by panicking (`todo!`, `assert!`), not
    // through its `Error`: catch those too, quietly, so the caller can name the operation.
    let hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(|_| {}));
    let result = std::panic::catch_unwind(|| {
        let mut generator = progenitor::Generator::default();
        generator.generate_tokens(&spec)
    });
    std::panic::set_hook(hook);
    let tokens = match result {
        Ok(generated) => generated.map_err(|e| e.to_string())?,
        Err(panic) => {
            let message = panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|s| (*s).to_owned()))
                .unwrap_or_else(|| "progenitor panicked".to_owned());
            return Err(message.lines().next().unwrap_or_default().to_owned());
        }
    };
    let file: syn::File = syn::parse2(tokens).map_err(|e| e.to_string())?;
    Ok(prettyplease::unparse(&file))
}

/// Every `application/problem+json` content key becomes `application/json`.
fn rename_problem_json(value: &mut Value) {
    match value {
        Value::Object(map) => {
            if let Some(problem) = map.remove("application/problem+json") {
                map.insert("application/json".to_owned(), problem);
            }
            for v in map.values_mut() {
                rename_problem_json(v);
            }
        }
        Value::Array(items) => items.iter_mut().for_each(rename_problem_json),
        _ => {}
    }
}

/// (path, method, operationId) of every operation.
fn operations(doc: &Value) -> Vec<(String, String, String)> {
    let mut ops = Vec::new();
    if let Some(paths) = doc["paths"].as_object() {
        for (path, item) in paths {
            for (method, op) in item.as_object().into_iter().flatten() {
                if METHODS.contains(&method.as_str()) {
                    let id = op["operationId"].as_str().unwrap_or("<no operationId>");
                    ops.push((path.clone(), method.clone(), id.to_owned()));
                }
            }
        }
    }
    ops
}

/// The document with a single operation.
fn only(doc: &Value, path: &str, method: &str) -> Value {
    let mut one = doc.clone();
    let mut item = doc["paths"][path].clone();
    if let Some(map) = item.as_object_mut() {
        map.retain(|k, _| k == method || !METHODS.contains(&k.as_str()));
    }
    one["paths"] = serde_json::json!({ path: item });
    one
}
