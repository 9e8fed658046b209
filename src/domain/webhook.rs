//! Webhooks: the validated URL and name, and the records the store keeps.

use super::filter::Filters;
use super::ValidationError;

pub const MAX_URL_CHARS: usize = 2048;
pub const MAX_NAME_CHARS: usize = 100;

/// A webhook target URL that passed every rule: absolute, `https://` (or `http://` when
/// allowed), a host, no credentials, no whitespace or control characters, bounded length.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WebhookUrl(url::Url);

impl WebhookUrl {
    pub fn parse(raw: &str, allow_http: bool) -> Result<WebhookUrl, ValidationError> {
        let err = |m: &str| ValidationError::new("url", m);
        if raw.chars().count() > MAX_URL_CHARS {
            return Err(err("must be at most 2048 characters"));
        }
        if raw.is_empty() {
            return Err(err("must not be empty"));
        }
        if raw.chars().any(|c| c.is_control() || c.is_whitespace()) {
            return Err(err("must not contain spaces or control characters"));
        }
        let url = url::Url::parse(raw)
            .map_err(|e| ValidationError::new("url", format!("is not an absolute URL ({e})")))?;
        match url.scheme() {
            "https" => {}
            "http" if allow_http => {}
            "http" => return Err(err("must use https://")),
            _ => return Err(err("must use https://")),
        }
        if url.host_str().is_none_or(str::is_empty) {
            return Err(err("must name a host"));
        }
        if !url.username().is_empty() || url.password().is_some() {
            return Err(err("must not contain credentials (user:password@)"));
        }
        if url.as_str().len() > MAX_URL_CHARS {
            return Err(err("must be at most 2048 characters once normalised"));
        }
        Ok(WebhookUrl(url))
    }

    pub fn as_str(&self) -> &str {
        self.0.as_str()
    }

    pub fn url(&self) -> &url::Url {
        &self.0
    }
}

/// A webhook name: 1 to 100 characters, no control characters, surrounding space trimmed.
pub fn validate_name(raw: &str) -> Result<String, ValidationError> {
    let name = raw.trim();
    if name.is_empty() {
        return Err(ValidationError::new("name", "must not be empty"));
    }
    if name.chars().count() > MAX_NAME_CHARS {
        return Err(ValidationError::new(
            "name",
            format!("must be at most {MAX_NAME_CHARS} characters"),
        ));
    }
    if name.chars().any(char::is_control) {
        return Err(ValidationError::new(
            "name",
            "must not contain control characters",
        ));
    }
    Ok(name.to_string())
}

/// A webhook to create, every field already valid.
#[derive(Debug, Clone)]
pub struct NewWebhook {
    pub name: String,
    pub url: WebhookUrl,
    pub filters: Filters,
    pub is_active: bool,
    pub secret: String,
}

/// A change to a webhook: `None` leaves a field as it is; for filters `Some(None)` clears.
#[derive(Debug, Clone, Default)]
pub struct WebhookPatch {
    pub name: Option<String>,
    pub url: Option<WebhookUrl>,
    pub is_active: Option<bool>,
    pub min_amount_usd: Option<Option<f64>>,
    pub chains: Option<Option<Vec<String>>>,
    pub protocols: Option<Option<Vec<String>>>,
    pub categories: Option<Option<Vec<String>>>,
}

impl WebhookPatch {
    pub fn apply_to(&self, w: &mut Webhook) {
        if let Some(v) = &self.name {
            w.name = v.clone();
        }
        if let Some(v) = &self.url {
            w.url = v.as_str().to_string();
        }
        if let Some(v) = self.is_active {
            w.is_active = v;
            if v {
                w.disabled_reason = None;
            }
        }
        if let Some(v) = self.min_amount_usd {
            w.filters.min_amount_usd = v;
        }
        if let Some(v) = &self.chains {
            w.filters.chains = v.clone();
        }
        if let Some(v) = &self.protocols {
            w.filters.protocols = v.clone();
        }
        if let Some(v) = &self.categories {
            w.filters.categories = v.clone();
        }
    }
}

/// A stored webhook.
#[derive(Debug, Clone, PartialEq)]
pub struct Webhook {
    pub id: i64,
    pub user_id: i64,
    pub name: String,
    pub url: String,
    pub filters: Filters,
    pub is_active: bool,
    pub secret: String,
    /// Why the service deactivated it (e.g. the endpoint answered 410 Gone).
    pub disabled_reason: Option<String>,
    pub created_at_ms: i64,
    pub updated_at_ms: i64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_must_be_https_absolute_and_without_credentials() {
        assert!(WebhookUrl::parse("https://example.com/hook", false).is_ok());
        assert_eq!(
            WebhookUrl::parse("http://example.com/hook", false)
                .unwrap_err()
                .message,
            "must use https://"
        );
        assert!(WebhookUrl::parse("http://example.com/hook", true).is_ok());
        assert!(WebhookUrl::parse("/relative", false).is_err());
        assert!(WebhookUrl::parse("ftp://example.com", false).is_err());
        assert!(WebhookUrl::parse("https://u:p@example.com/", false).is_err());
        assert!(WebhookUrl::parse("https://u@example.com/", false).is_err());
        assert!(WebhookUrl::parse("https://example.com/a\r\nX-Evil: 1", false).is_err());
        let long = format!("https://example.com/{}", "a".repeat(2048));
        assert!(WebhookUrl::parse(&long, false).is_err());
    }

    #[test]
    fn names_are_bounded_in_characters() {
        assert!(validate_name("").is_err());
        assert!(validate_name("   ").is_err());
        assert_eq!(validate_name(" Prod ").unwrap(), "Prod");
        assert!(validate_name(&"é".repeat(100)).is_ok());
        assert!(validate_name(&"é".repeat(101)).is_err());
        assert!(validate_name("a\u{1b}[31m").is_err());
    }
}
