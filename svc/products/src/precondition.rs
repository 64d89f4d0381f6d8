//! Optimistic concurrency (RFC 9110 §13): a product's version is its strong ETag, and an
//! update must name the version it was based on in `If-Match`.

use std::borrow::Cow;

use platform::problem::Problem;
use poem::http::StatusCode;
use poem_openapi::registry::{MetaSchema, MetaSchemaRef};
use poem_openapi::types::{ParseFromParameter, ParseResult, Type};

/// The ETag of a product version: `"<version>"`.
pub fn etag(version: i32) -> String {
    format!("\"{version}\"")
}

/// The `If-Match` request header. Documented as required, but read even when absent, so that
/// a missing one is answered 428 (RFC 6585) rather than as a malformed request.
pub struct IfMatch(pub Option<String>);

impl IfMatch {
    /// The header's value; 428 when it is missing.
    pub fn required(&self) -> Result<&str, Problem> {
        self.0.as_deref().ok_or_else(|| {
            Problem::new(
                StatusCode::PRECONDITION_REQUIRED,
                "precondition-required",
                "this update needs an If-Match header with the product's ETag, as the last GET returned it",
            )
        })
    }

    /// Ok when the header matches `current` (strong comparison; `*` matches any version);
    /// 428 when it is missing, 412 when it names other versions.
    pub fn check(&self, current: i32) -> Result<(), Problem> {
        let wanted = etag(current);
        let matches = self
            .required()?
            .split(',')
            .map(str::trim)
            .any(|tag| tag == "*" || tag == wanted);
        if matches {
            Ok(())
        } else {
            Err(Problem::precondition_failed(format!(
                "the product changed since you read it: its ETag is now {wanted}; GET it again and reapply your change"
            )))
        }
    }
}

impl Type for IfMatch {
    const IS_REQUIRED: bool = true;

    type RawValueType = String;

    type RawElementValueType = String;

    fn name() -> Cow<'static, str> {
        "string".into()
    }

    fn schema_ref() -> MetaSchemaRef {
        MetaSchemaRef::Inline(Box::new(MetaSchema::new("string")))
    }

    fn as_raw_value(&self) -> Option<&Self::RawValueType> {
        self.0.as_ref()
    }

    fn raw_element_iter<'a>(
        &'a self,
    ) -> Box<dyn Iterator<Item = &'a Self::RawElementValueType> + 'a> {
        Box::new(self.0.iter())
    }
}

impl ParseFromParameter for IfMatch {
    fn parse_from_parameter(value: &str) -> ParseResult<Self> {
        Ok(Self(Some(value.to_owned())))
    }

    /// Several `If-Match` lines are one list (RFC 9110 §5.3); none is `None`.
    fn parse_from_parameters<I: IntoIterator<Item = A>, A: AsRef<str>>(
        iter: I,
    ) -> ParseResult<Self> {
        let values: Vec<String> = iter.into_iter().map(|v| v.as_ref().to_owned()).collect();
        Ok(Self((!values.is_empty()).then(|| values.join(", "))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn if_match_compares_strongly_and_accepts_lists_and_star() {
        assert!(IfMatch(Some("\"3\"".into())).check(3).is_ok());
        assert!(IfMatch(Some("\"1\", \"3\"".into())).check(3).is_ok());
        assert!(IfMatch(Some("*".into())).check(7).is_ok());
        assert_eq!(
            IfMatch(Some("W/\"3\"".into())).check(3).unwrap_err().status,
            StatusCode::PRECONDITION_FAILED
        );
        assert_eq!(
            IfMatch(Some("\"2\"".into())).check(3).unwrap_err().status,
            StatusCode::PRECONDITION_FAILED
        );
        assert_eq!(
            IfMatch(None).check(3).unwrap_err().status,
            StatusCode::PRECONDITION_REQUIRED
        );
    }
}
