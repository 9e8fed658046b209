//! Webhook filters and the rule deciding whether an exploit matches them.

use serde::{Deserialize, Serialize};

use super::ValidationError;

pub const MAX_FILTER_ENTRIES: usize = 100;
pub const MAX_FILTER_ENTRY_CHARS: usize = 256;

/// Every set filter must match; within a list any entry may match. `None` is no filter.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Filters {
    pub min_amount_usd: Option<f64>,
    pub chains: Option<Vec<String>>,
    pub protocols: Option<Vec<String>>,
    pub categories: Option<Vec<String>>,
}

/// The facts of an exploit that filters look at.
#[derive(Debug, Clone, Copy)]
pub struct ExploitFacts<'a> {
    pub chain: &'a str,
    pub protocol: &'a str,
    pub category: Option<&'a str>,
    pub amount_usd: f64,
}

fn same_name(a: &str, b: &str) -> bool {
    if a.is_ascii() && b.is_ascii() {
        a.eq_ignore_ascii_case(b)
    } else {
        a.to_lowercase() == b.to_lowercase()
    }
}

fn list_matches(list: &Option<Vec<String>>, value: Option<&str>) -> bool {
    match list {
        None => true,
        Some(entries) if entries.is_empty() => true,
        Some(entries) => value.is_some_and(|v| entries.iter().any(|e| same_name(e, v))),
    }
}

impl Filters {
    pub fn matches(&self, e: &ExploitFacts<'_>) -> bool {
        self.min_amount_usd.is_none_or(|min| e.amount_usd >= min)
            && list_matches(&self.chains, Some(e.chain))
            && list_matches(&self.protocols, Some(e.protocol))
            && list_matches(&self.categories, e.category)
    }
}

/// A minimum amount: finite and not negative.
pub fn validate_min_amount(v: f64) -> Result<f64, ValidationError> {
    if !v.is_finite() {
        return Err(ValidationError::new(
            "min_amount_usd",
            "must be a finite number",
        ));
    }
    if v < 0.0 {
        return Err(ValidationError::new(
            "min_amount_usd",
            "must be greater than or equal to 0",
        ));
    }
    Ok(if v == 0.0 { 0.0 } else { v })
}

/// A filter list: at most 100 non-empty names without control characters. `[]` is no filter.
pub fn validate_list(
    field: &str,
    entries: Vec<String>,
) -> Result<Option<Vec<String>>, ValidationError> {
    if entries.len() > MAX_FILTER_ENTRIES {
        return Err(ValidationError::new(
            field,
            format!(
                "at most {MAX_FILTER_ENTRIES} entries are allowed, got {}",
                entries.len()
            ),
        ));
    }
    let mut out = Vec::with_capacity(entries.len());
    for (i, entry) in entries.into_iter().enumerate() {
        let trimmed = entry.trim();
        if trimmed.is_empty() {
            return Err(ValidationError::new(
                format!("{field}[{i}]"),
                "must not be empty",
            ));
        }
        if trimmed.chars().count() > MAX_FILTER_ENTRY_CHARS {
            return Err(ValidationError::new(
                format!("{field}[{i}]"),
                format!("must be at most {MAX_FILTER_ENTRY_CHARS} characters"),
            ));
        }
        if trimmed.chars().any(char::is_control) {
            return Err(ValidationError::new(
                format!("{field}[{i}]"),
                "must not contain control characters",
            ));
        }
        if !out.iter().any(|e: &String| same_name(e, trimmed)) {
            out.push(trimmed.to_string());
        }
    }
    Ok(if out.is_empty() { None } else { Some(out) })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn facts(
        chain: &'static str,
        amount: f64,
        category: Option<&'static str>,
    ) -> ExploitFacts<'static> {
        ExploitFacts {
            chain,
            protocol: "Uniswap",
            category,
            amount_usd: amount,
        }
    }

    #[test]
    fn no_filter_matches_everything() {
        assert!(Filters::default().matches(&facts("Ethereum", 0.0, None)));
    }

    #[test]
    fn every_set_filter_must_match() {
        let f = Filters {
            min_amount_usd: Some(50_000.0),
            chains: Some(vec!["ethereum".into()]),
            protocols: None,
            categories: Some(vec!["flash_loan".into()]),
        };
        assert!(f.matches(&facts("Ethereum", 50_000.0, Some("FLASH_LOAN"))));
        assert!(!f.matches(&facts("Ethereum", 49_999.99, Some("flash_loan"))));
        assert!(!f.matches(&facts("Arbitrum", 60_000.0, Some("flash_loan"))));
        assert!(!f.matches(&facts("Ethereum", 60_000.0, None)));
    }

    #[test]
    fn lists_are_checked_and_empty_means_unset() {
        assert_eq!(validate_list("chains", vec![]).unwrap(), None);
        assert!(validate_list("chains", vec![" ".into()]).unwrap_err().field == "chains[0]");
        assert!(validate_list("chains", vec!["a\nb".into()]).is_err());
        assert!(validate_list("chains", vec!["x".into(); 101]).is_err());
        assert_eq!(
            validate_list("chains", vec!["Eth".into(), "eth".into()]).unwrap(),
            Some(vec!["Eth".to_string()])
        );
        assert!(validate_min_amount(-1.0).is_err());
        assert!(validate_min_amount(f64::INFINITY).is_err());
    }
}
