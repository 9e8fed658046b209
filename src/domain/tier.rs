//! Account tiers and the number of webhooks each allows.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Tier {
    Free,
    Pro,
    Team,
    Enterprise,
}

pub const ALL_TIERS: [Tier; 4] = [Tier::Free, Tier::Pro, Tier::Team, Tier::Enterprise];

impl Tier {
    /// Webhooks a user of this tier may own at once.
    pub fn max_webhooks(self) -> u32 {
        match self {
            Tier::Free | Tier::Pro => 0,
            Tier::Team => 5,
            Tier::Enterprise => 50,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Tier::Free => "free",
            Tier::Pro => "pro",
            Tier::Team => "team",
            Tier::Enterprise => "enterprise",
        }
    }

    /// The lowest tier that allows more webhooks than this one, if any.
    pub fn next_with_more_webhooks(self) -> Option<Tier> {
        ALL_TIERS
            .into_iter()
            .find(|t| t.max_webhooks() > self.max_webhooks())
    }

    /// The words a user sees when this tier's limit stops a create.
    pub fn limit_message(self) -> String {
        let max = self.max_webhooks();
        match (max, self.next_with_more_webhooks()) {
            (0, Some(next)) => format!(
                "webhooks need the {} tier or higher (up to {} webhooks); your tier is {}",
                next.as_str(),
                next.max_webhooks(),
                self.as_str()
            ),
            (_, Some(next)) => format!(
                "the {} tier allows {} webhooks and you have {}; the {} tier allows up to {}",
                self.as_str(),
                max,
                max,
                next.as_str(),
                next.max_webhooks()
            ),
            (_, None) => format!(
                "the {} tier allows {} webhooks and you have {}; delete one to create another",
                self.as_str(),
                max,
                max
            ),
        }
    }
}

impl std::fmt::Display for Tier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for Tier {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "free" => Ok(Tier::Free),
            "pro" => Ok(Tier::Pro),
            "team" => Ok(Tier::Team),
            "enterprise" => Ok(Tier::Enterprise),
            other => Err(format!(
                "{other:?} is not a tier; use free, pro, team or enterprise"
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_follow_the_spec() {
        assert_eq!(Tier::Free.max_webhooks(), 0);
        assert_eq!(Tier::Pro.max_webhooks(), 0);
        assert_eq!(Tier::Team.max_webhooks(), 5);
        assert_eq!(Tier::Enterprise.max_webhooks(), 50);
    }

    #[test]
    fn limit_message_names_the_tier_needed() {
        assert!(Tier::Free.limit_message().contains("team tier"));
        assert!(Tier::Pro.limit_message().contains("team tier"));
        assert!(Tier::Team.limit_message().contains("enterprise tier"));
        assert!(Tier::Enterprise.limit_message().contains("delete one"));
    }

    #[test]
    fn tiers_parse_case_insensitively() {
        assert_eq!("Team".parse::<Tier>().unwrap(), Tier::Team);
        assert!("gold".parse::<Tier>().unwrap_err().contains("gold"));
    }
}
