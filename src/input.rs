//! Request bodies as they arrive, before any handler: JSON syntax, then shape with the
//! offending field named, and the webhook create/patch shapes. Free of the HTTP stack so
//! the fuzz targets build it without the server.

use serde::de::DeserializeOwned;
use serde::{Deserialize, Deserializer};
use thiserror::Error;
use utoipa::ToSchema;

use crate::domain::ValidationError;

/// Why a body was refused: bad syntax (400 `malformed_json`) or a bad shape (422 naming
/// the field).
#[derive(Debug, Error)]
pub enum InputError {
    #[error("{0}")]
    MalformedJson(String),
    #[error(transparent)]
    Invalid(#[from] ValidationError),
}

/// Parses bytes as JSON syntax only.
pub fn parse_json_value(bytes: &[u8]) -> Result<serde_json::Value, InputError> {
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Err(InputError::MalformedJson(
            "request body is empty; expected JSON".into(),
        ));
    }
    serde_json::from_slice(bytes)
        .map_err(|e| InputError::MalformedJson(format!("request body is not valid JSON: {e}")))
}

/// Turns a JSON value into `T`, naming the offending field on failure.
pub fn from_json_value<T: DeserializeOwned>(value: serde_json::Value) -> Result<T, InputError> {
    serde_path_to_error::deserialize(value).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner().to_string();
        // serde names missing and unknown fields in its message, not in the path.
        let named = |prefix: &str| {
            inner
                .strip_prefix(prefix)
                .and_then(|rest| rest.split('`').next())
                .map(str::to_string)
        };
        // An unknown field is already the last segment of the path; a missing one is not.
        let field = match (named("missing field `"), named("unknown field `")) {
            (Some(f), _) if path == "." => f,
            (Some(f), _) => format!("{path}.{f}"),
            (None, Some(f)) if path == "." => f,
            _ if path == "." => "body".into(),
            _ => path,
        };
        let message = if inner.starts_with("missing field") {
            "is required".to_string()
        } else if let Some(rest) = inner.strip_prefix("unknown field `") {
            let expected = rest.split_once(", ").map(|x| x.1).unwrap_or("");
            format!("unknown field; {expected}")
        } else {
            inner
        };
        InputError::Invalid(ValidationError::new(field, message))
    })
}

/// A webhook to create.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct WebhookIn {
    /// 1 to 100 characters.
    #[schema(example = "Production Alert System")]
    pub name: String,
    /// `https://` URL, at most 2048 characters, no credentials.
    #[schema(example = "https://your-domain.com/webhooks/kamiyo")]
    pub url: String,
    /// Only exploits of at least this many USD (inclusive).
    #[schema(example = 100000)]
    pub min_amount_usd: Option<f64>,
    /// Only these chains (case-insensitive); null or [] for all.
    #[schema(example = json!(["ethereum", "arbitrum"]))]
    pub chains: Option<Vec<String>>,
    /// Only these protocols (case-insensitive); null or [] for all.
    pub protocols: Option<Vec<String>>,
    /// Only these categories (case-insensitive); null or [] for all.
    pub categories: Option<Vec<String>>,
    /// Defaults to true.
    pub is_active: Option<bool>,
}

fn present<'de, D, T>(d: D) -> Result<Option<Option<T>>, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de>,
{
    Option::<T>::deserialize(d).map(Some)
}

/// A change to a webhook: absent fields stay as they are; `null` clears a filter.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct WebhookPatchIn {
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<String>)]
    pub name: Option<Option<String>>,
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<String>)]
    pub url: Option<Option<String>>,
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<bool>)]
    pub is_active: Option<Option<bool>>,
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<f64>)]
    pub min_amount_usd: Option<Option<f64>>,
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<Vec<String>>)]
    pub chains: Option<Option<Vec<String>>>,
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<Vec<String>>)]
    pub protocols: Option<Option<Vec<String>>>,
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<Vec<String>>)]
    pub categories: Option<Option<Vec<String>>>,
}
