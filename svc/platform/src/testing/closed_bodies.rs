//! What a served document says of request bodies, checked against the service: an object it
//! closes (`additionalProperties: false`, see [`crate::document`]) is refused when a field it
//! does not name comes with it.

use serde_json::{Map, Value, json};

use super::INTERNAL_TOKEN;

/// The field no request object names.
const UNNAMED: &str = "zz_named_by_no_schema";

/// Sends every operation of `document` (as served at `base_url`) whose JSON body is an object
/// the document closes a body it would take but for one field it does not name, as the caller
/// of `token` (one allowed every operation: an admin's) with the internal token, and fails
/// unless each is refused with 400 naming that field. Returns how many operations it sent.
pub async fn assert_closed_bodies_refuse_unnamed_fields(
    base_url: &str,
    document: &Value,
    token: &str,
) -> usize {
    let client = reqwest::Client::new();
    let mut sent = 0;
    let paths = document["paths"].as_object().expect("paths");
    for (template, item) in paths {
        for (method, operation) in item.as_object().expect("path item") {
            let Some((media_type, schema)) = closed_json_body(document, operation) else {
                continue;
            };
            let mut body = minimal(document, &schema);
            body.as_object_mut()
                .expect("a closed body is an object")
                .insert(UNNAMED.to_owned(), json!(true));
            let path = fill_path(template, operation);
            let mut request = client
                .request(
                    method.to_uppercase().parse().expect("a method"),
                    format!("{base_url}{path}"),
                )
                .bearer_auth(token)
                .header(crate::auth::INTERNAL_TOKEN_HEADER, INTERNAL_TOKEN)
                .header("content-type", media_type)
                .body(body.to_string());
            for parameter in operation["parameters"].as_array().into_iter().flatten() {
                if parameter["in"] == "header" && parameter["required"] == true {
                    let name = parameter["name"].as_str().expect("a header's name");
                    request = request.header(name, "\"1\"");
                }
            }
            let answer = request.send().await.expect("the service answers");
            let status = answer.status();
            let problem: Value = answer.json().await.unwrap_or_default();
            assert!(
                status == 400
                    && problem["detail"]
                        .as_str()
                        .is_some_and(|d| d.contains(UNNAMED)),
                "{method} {template}: a body with a field its schema does not name was answered \
                 {status} {problem}, though the document says the object takes no other field"
            );
            sent += 1;
        }
    }
    sent
}

/// The media type and schema of `operation`'s JSON body, when the document closes it.
fn closed_json_body(document: &Value, operation: &Value) -> Option<(String, Value)> {
    let content = operation.pointer("/requestBody/content")?.as_object()?;
    let (media_type, body) = content
        .iter()
        .find(|(media_type, _)| crate::document::is_json(media_type))?;
    let schema = resolved(document, &body["schema"]);
    (schema["additionalProperties"] == false).then(|| (media_type.clone(), schema))
}

fn resolved(document: &Value, schema: &Value) -> Value {
    if let Some(reference) = schema["$ref"].as_str() {
        let pointer = reference.trim_start_matches('#');
        return resolved(
            document,
            document.pointer(pointer).expect("a reference resolves"),
        );
    }
    // A reference poem-openapi describes: wrapped in an allOf beside a description.
    if let Some(all) = schema["allOf"].as_array() {
        let mut wholes = all.iter().filter(|s| crate::document::constrains(s));
        if let (Some(whole), None) = (wholes.next(), wholes.next()) {
            return resolved(document, whole);
        }
    }
    schema.clone()
}

/// A value `schema` takes: its required properties only, each the simplest of its type.
fn minimal(document: &Value, schema: &Value) -> Value {
    let schema = resolved(document, schema);
    if let Some(first) = schema["enum"].as_array().and_then(|e| e.first()) {
        return first.clone();
    }
    match schema["type"].as_str() {
        Some("object") | None if schema.get("properties").is_some() => {
            let mut object = Map::new();
            for name in schema["required"].as_array().into_iter().flatten() {
                let name = name.as_str().expect("a property's name");
                object.insert(
                    name.to_owned(),
                    minimal(document, &schema["properties"][name]),
                );
            }
            Value::Object(object)
        }
        Some("object") => json!({}),
        Some("array") => json!([]),
        Some("integer") | Some("number") => json!(schema["minimum"].as_i64().unwrap_or(1)),
        Some("boolean") => json!(false),
        _ => json!(match schema["format"].as_str() {
            Some("uuid") => "00000000-0000-0000-0000-000000000000",
            Some("date-time") => "2026-01-01T00:00:00Z",
            Some("email") => "someone@example.com",
            _ => "x",
        }),
    }
}

/// `template` with each path parameter given a value of its type.
fn fill_path(template: &str, operation: &Value) -> String {
    let mut path = template.to_owned();
    for parameter in operation["parameters"].as_array().into_iter().flatten() {
        if parameter["in"] != "path" {
            continue;
        }
        let name = parameter["name"].as_str().expect("a parameter's name");
        let value = match parameter["schema"]["format"].as_str() {
            Some("uuid") => "00000000-0000-0000-0000-000000000000",
            _ if parameter["schema"]["type"] == "integer" => "1",
            _ => "x",
        };
        path = path.replace(&format!("{{{name}}}"), value);
    }
    path
}
