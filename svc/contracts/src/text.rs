//! Text that a request gives as a JSON string, and only as one.

use std::borrow::Cow;
use std::fmt;
use std::ops::Deref;

use poem_openapi::registry::MetaSchemaRef;
use poem_openapi::types::{ParseError, ParseFromJSON, ParseResult, ToJSON, Type};
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// A string field of a request body. poem-openapi's `String` also takes a JSON number or
/// boolean and reads it as its text, so `{"name": false}` would name a category "false" and
/// `{"currency": 978}` would be read as the code "978". A request object's text fields are
/// `Text`, which takes a JSON string only: anything else is refused as a malformed body, saying
/// that a string was expected and what was found. Documented exactly as a string; serialized as
/// one.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Text(pub String);

impl Text {
    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn into_string(self) -> String {
        self.0
    }
}

impl Deref for Text {
    type Target = str;

    fn deref(&self) -> &str {
        &self.0
    }
}

impl AsRef<str> for Text {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Text {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl From<String> for Text {
    fn from(text: String) -> Self {
        Self(text)
    }
}

impl From<&str> for Text {
    fn from(text: &str) -> Self {
        Self(text.to_owned())
    }
}

impl From<Text> for String {
    fn from(text: Text) -> Self {
        text.0
    }
}

impl PartialEq<str> for Text {
    fn eq(&self, other: &str) -> bool {
        self.0 == other
    }
}

impl PartialEq<&str> for Text {
    fn eq(&self, other: &&str) -> bool {
        self.0 == *other
    }
}

impl Type for Text {
    const IS_REQUIRED: bool = true;

    type RawValueType = Self;

    type RawElementValueType = Self;

    fn name() -> Cow<'static, str> {
        String::name()
    }

    fn schema_ref() -> MetaSchemaRef {
        String::schema_ref()
    }

    fn as_raw_value(&self) -> Option<&Self::RawValueType> {
        Some(self)
    }

    fn raw_element_iter<'a>(
        &'a self,
    ) -> Box<dyn Iterator<Item = &'a Self::RawElementValueType> + 'a> {
        Box::new(self.as_raw_value().into_iter())
    }

    fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl ParseFromJSON for Text {
    fn parse_from_json(value: Option<Value>) -> ParseResult<Self> {
        match value.unwrap_or_default() {
            Value::String(text) => Ok(Self(text)),
            other => Err(ParseError::expected_type(other)),
        }
    }
}

impl ToJSON for Text {
    fn to_json(&self) -> Option<Value> {
        Some(Value::String(self.0.clone()))
    }
}

#[cfg(test)]
mod tests {
    use poem_openapi::Object;
    use serde_json::json;

    use super::*;

    #[derive(Debug, Object)]
    #[oai(deny_unknown_fields)]
    struct Named {
        name: Text,
        nickname: Option<Text>,
        tags: Vec<Text>,
    }

    #[test]
    fn a_json_string_is_taken_as_it_is() {
        let named = Named::parse_from_json(Some(
            json!({"name": "Mugs", "nickname": "m", "tags": ["a", "b"]}),
        ))
        .unwrap();
        assert_eq!(named.name, "Mugs");
        assert_eq!(named.nickname.as_deref(), Some("m"));
        assert_eq!(named.tags, [Text::from("a"), Text::from("b")]);
    }

    #[test]
    fn a_number_or_a_boolean_is_refused_where_poem_openapi_would_read_it_as_text() {
        for (body, found) in [
            (json!({"name": false, "tags": []}), "found false"),
            (json!({"name": 978, "tags": []}), "found 978"),
            (
                json!({"name": "x", "nickname": 1.5, "tags": []}),
                "found 1.5",
            ),
            (json!({"name": "x", "tags": ["a", true]}), "found true"),
        ] {
            let refused = Named::parse_from_json(Some(body.clone()))
                .expect_err(&format!("{body} is refused"));
            assert!(
                refused.message().contains("Expected input type \"string\"")
                    && refused.message().contains(found),
                "{body}: {}",
                refused.message()
            );
        }
        // poem-openapi's own String is what this guards against.
        assert_eq!(
            String::parse_from_json(Some(json!(false))).unwrap(),
            "false"
        );
    }

    #[test]
    fn it_is_documented_and_written_as_a_string() {
        assert_eq!(Text::name(), String::name());
        assert_eq!(serde_json::to_value(Text::from("x")).unwrap(), json!("x"));
        assert_eq!(Text::from("x").to_json(), Some(json!("x")));
    }
}
