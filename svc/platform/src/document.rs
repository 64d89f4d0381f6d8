//! The OpenAPI document a service serves (and commits under `openapi/`): poem-openapi's, saying
//! what poem-openapi leaves out.
//!
//! A request object refuses a field it does not name (`#[oai(deny_unknown_fields)]`, which
//! every JSON request object here has: a misspelt optional field is an error, not silently
//! ignored), but poem-openapi's schema does not say so, and a client, a generated one or a
//! fuzzer reading the document would expect such fields to be ignored. So every object schema
//! that only JSON request bodies reach says `additionalProperties: false`. One that answers
//! reach too (`Money`, say) does not: there it would promise that answers never gain a field,
//! which adding one must stay free to do.

use std::collections::BTreeSet;

use serde_json::Value;

use crate::json_keys::NoDuplicateKeys;

const COMPONENT: &str = "#/components/schemas/";

/// `spec` (poem-openapi's JSON) as served, its keys in alphabetical order. One that names a key
/// twice (poem-openapi writes one response per variant, so two variants of one status do) is
/// served as generated, for the committed documents' check to find
/// (`testing::assert_served_openapi_matches`): parsed, the first would silently go.
pub fn served(spec: &str) -> String {
    if serde_json::from_str::<NoDuplicateKeys>(spec).is_err() {
        return spec.to_owned();
    }
    let mut doc: Value = serde_json::from_str(spec).expect("poem-openapi writes JSON");
    let mut in_requests = BTreeSet::new();
    let mut in_answers = BTreeSet::new();
    for operation in operations(&doc) {
        if let Some(content) = operation
            .pointer("/requestBody/content")
            .and_then(Value::as_object)
        {
            for (media_type, body) in content {
                if is_json(media_type) {
                    refs_in(body, &mut in_requests);
                }
            }
        }
        if let Some(responses) = operation.get("responses") {
            refs_in(responses, &mut in_answers);
        }
    }
    let components = doc.pointer("/components/schemas").cloned();
    let components = components.as_ref();
    let in_requests = reachable(in_requests, components);
    let in_answers = reachable(in_answers, components);
    // A part of an allOf holds only some of the fields the whole takes (a union's tag, say).
    let mut parts = BTreeSet::new();
    for name in &in_requests {
        if let Some(schema) = components.and_then(|c| c.get(name)) {
            parts_of_all_of(schema, &mut parts);
        }
    }
    if let Some(schemas) = doc
        .pointer_mut("/components/schemas")
        .and_then(Value::as_object_mut)
    {
        let marked = in_requests
            .difference(&in_answers)
            .filter(|name| !parts.contains(*name));
        for name in marked {
            if let Some(schema) = schemas.get_mut(name) {
                refuse_unnamed_fields(schema);
            }
        }
    }
    serde_json::to_string_pretty(&doc).expect("JSON renders")
}

/// poem-openapi's Swagger UI page `page`, made with the document `generated`, showing
/// `document` instead.
pub fn swagger_page(page: &str, generated: &str, document: &str) -> String {
    // The last: the bundled Swagger UI script comes first, and could hold the same text.
    let at = page
        .rfind(generated)
        .expect("poem-openapi's page holds the document it was made with");
    format!("{}{document}{}", &page[..at], &page[at + generated.len()..])
}

fn operations(doc: &Value) -> impl Iterator<Item = &Value> {
    doc.get("paths")
        .and_then(Value::as_object)
        .into_iter()
        .flat_map(|paths| paths.values())
        .filter_map(Value::as_object)
        .flat_map(|item| item.values())
}

/// Whether a body of `media_type` is JSON (`application/json`, with or without parameters, or
/// a `+json` type).
pub(crate) fn is_json(media_type: &str) -> bool {
    let essence = media_type.split(';').next().unwrap_or_default().trim();
    essence == "application/json" || essence.ends_with("+json")
}

/// The component schemas `value` refers to, directly.
fn refs_in(value: &Value, found: &mut BTreeSet<String>) {
    match value {
        Value::Object(map) => {
            for (key, v) in map {
                match (key.as_str(), v) {
                    ("$ref", Value::String(r)) => {
                        if let Some(name) = r.strip_prefix(COMPONENT) {
                            found.insert(name.to_owned());
                        }
                    }
                    _ => refs_in(v, found),
                }
            }
        }
        Value::Array(items) => items.iter().for_each(|v| refs_in(v, found)),
        _ => {}
    }
}

/// `names` and every component schema they refer to, however indirectly.
fn reachable(names: BTreeSet<String>, components: Option<&Value>) -> BTreeSet<String> {
    let mut seen = BTreeSet::new();
    let mut pending: Vec<String> = names.into_iter().collect();
    while let Some(name) = pending.pop() {
        if !seen.insert(name.clone()) {
            continue;
        }
        let mut further = BTreeSet::new();
        if let Some(schema) = components.and_then(|c| c.get(&name)) {
            refs_in(schema, &mut further);
        }
        pending.extend(further.into_iter().filter(|n| !seen.contains(n)));
    }
    seen
}

/// The component schemas referred to from inside an `allOf` of several schemas anywhere in
/// `value`. poem-openapi describes a reference by wrapping it in an `allOf` beside a schema
/// that only describes: that reference is the whole.
fn parts_of_all_of(value: &Value, parts: &mut BTreeSet<String>) {
    match value {
        Value::Object(map) => {
            for (key, v) in map {
                match v {
                    Value::Array(all)
                        if key == "allOf" && all.iter().filter(|s| constrains(s)).count() > 1 =>
                    {
                        refs_in(v, parts)
                    }
                    _ => parts_of_all_of(v, parts),
                }
            }
        }
        Value::Array(items) => items.iter().for_each(|v| parts_of_all_of(v, parts)),
        _ => {}
    }
}

/// Whether `schema` says something of the value (refers to a schema, or names a type or
/// properties), not only describes it.
pub(crate) fn constrains(schema: &Value) -> bool {
    ["$ref", "type", "properties", "allOf", "anyOf", "oneOf"]
        .iter()
        .any(|k| schema.get(k).is_some())
}

/// An object schema with named properties, and each such schema inside it, says that no other
/// property is taken; one that says what other properties may be (a map) is left as it is, and
/// so are the parts of an `allOf`, each of which holds only some of the whole's properties.
fn refuse_unnamed_fields(schema: &mut Value) {
    let Value::Object(map) = schema else { return };
    if map.contains_key("properties") && !map.contains_key("additionalProperties") {
        map.insert("additionalProperties".to_owned(), Value::Bool(false));
    }
    if let Some(Value::Object(properties)) = map.get_mut("properties") {
        properties.values_mut().for_each(refuse_unnamed_fields);
    }
    for key in ["items", "anyOf", "oneOf"] {
        match map.get_mut(key) {
            Some(Value::Array(schemas)) => schemas.iter_mut().for_each(refuse_unnamed_fields),
            Some(one @ Value::Object(_)) => refuse_unnamed_fields(one),
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn served_json(doc: Value) -> Value {
        serde_json::from_str(&served(&doc.to_string())).unwrap()
    }

    fn object(properties: Value) -> Value {
        json!({"type": "object", "properties": properties})
    }

    fn reference(name: &str) -> Value {
        json!({"$ref": format!("{COMPONENT}{name}")})
    }

    #[test]
    fn objects_only_json_requests_reach_refuse_unnamed_fields_and_no_others() {
        let doc = json!({
            "paths": {
                "/things": {
                    "post": {
                        "requestBody": {"content": {
                            "application/json; charset=utf-8": {"schema": reference("NewThing")}
                        }},
                        "responses": {"201": {"content": {
                            "application/json; charset=utf-8": {"schema": reference("Thing")}
                        }}}
                    },
                    "put": {
                        "requestBody": {"content": {
                            "application/x-www-form-urlencoded": {"schema": reference("Form")}
                        }},
                        "responses": {}
                    }
                }
            },
            "components": {"schemas": {
                "NewThing": object(json!({
                    "price": reference("Money"),
                    "parts": {"type": "array", "items": reference("Part")},
                    "inline": object(json!({"a": {"type": "string"}})),
                    "labels": {"type": "object", "additionalProperties": {"type": "string"}},
                    "tagged": reference("Tagged"),
                    "described": {
                        "allOf": [reference("Described"), {"description": "why"}],
                        "description": "why",
                    },
                })),
                "Part": object(json!({"sku": {"type": "string"}})),
                "Tagged": {"allOf": [
                    object(json!({"kind": {"type": "string"}})),
                    reference("Variant"),
                ]},
                "Variant": object(json!({"size": {"type": "integer"}})),
                "Described": object(json!({"note": {"type": "string"}})),
                "Money": object(json!({"amount": {"type": "integer"}})),
                "Thing": object(json!({"price": reference("Money")})),
                "Form": object(json!({"card": {"type": "string"}})),
            }}
        });
        let served = served_json(doc);
        let schemas = &served["components"]["schemas"];
        assert_eq!(schemas["NewThing"]["additionalProperties"], false);
        assert_eq!(
            schemas["Part"]["additionalProperties"], false,
            "reached through items"
        );
        assert_eq!(
            schemas["NewThing"]["properties"]["inline"]["additionalProperties"],
            false
        );
        assert_eq!(
            schemas["NewThing"]["properties"]["labels"]["additionalProperties"],
            json!({"type": "string"}),
            "a map stays a map"
        );
        assert_eq!(
            schemas["Described"]["additionalProperties"], false,
            "a lone reference in an allOf is the whole"
        );
        assert!(
            schemas["Tagged"]["allOf"][0]
                .get("additionalProperties")
                .is_none(),
            "a part of an allOf: {}",
            schemas["Tagged"]
        );
        for answered_or_not_json in ["Money", "Thing", "Form", "Variant"] {
            assert!(
                schemas[answered_or_not_json]
                    .get("additionalProperties")
                    .is_none(),
                "{answered_or_not_json}: {}",
                schemas[answered_or_not_json]
            );
        }
    }

    #[test]
    fn a_document_naming_a_key_twice_is_served_as_generated_for_the_check_to_find() {
        let twice = r#"{"paths": {"/p": {"post": {"requestBody": {"content": {"application/json": {"schema": {"type": "object", "properties": {}}}}}, "responses": {"404": {}, "404": {}}}}}}"#;
        assert_eq!(served(twice), twice);
    }

    #[test]
    fn the_page_shows_the_document_it_is_given() {
        let generated = r#"{"a": 1}"#;
        let page = format!(
            "<head><script>{generated}</script></head><body>let spec = {generated};</body>"
        );
        assert_eq!(
            swagger_page(&page, generated, r#"{"b": 2}"#),
            format!(
                r#"<head><script>{generated}</script></head><body>let spec = {{"b": 2}};</body>"#
            )
        );
    }

    #[test]
    fn a_document_without_request_bodies_is_served_as_it_is() {
        let doc = json!({
            "paths": {"/things": {"get": {"responses": {}}}},
            "components": {"schemas": {"Thing": object(json!({}))}}
        });
        assert_eq!(served_json(doc.clone()), doc);
    }
}
