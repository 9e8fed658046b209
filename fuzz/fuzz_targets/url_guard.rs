//! URL validation and the network guard on arbitrary text: never a panic, and never an
//! accepted URL whose host is a blocked IP literal.
#![no_main]

use std::net::IpAddr;

use kamiyo_webhooks::domain::netguard::{blocked_reason, NetworkPolicy};
use kamiyo_webhooks::domain::webhook::WebhookUrl;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    // Both the raw text and the text as a host of an https URL.
    for raw in [text.to_string(), format!("https://{text}/")] {
        let Ok(url) = WebhookUrl::parse(&raw, true) else {
            continue;
        };
        let accepted = NetworkPolicy::default().check_url(url.url()).is_ok();
        let ip = match url.url().host() {
            Some(url::Host::Ipv4(v4)) => IpAddr::V4(v4),
            Some(url::Host::Ipv6(v6)) => IpAddr::V6(v6),
            _ => continue,
        };
        if accepted {
            assert!(
                blocked_reason(ip).is_none(),
                "{raw:?} names {ip}, which is blocked"
            );
        }
    }
});
