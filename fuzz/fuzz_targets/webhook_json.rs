//! Webhook create and patch bodies: bytes through the API's own body parsing steps
//! (`parse_json_value`, `from_json_value` into the DTOs), then every domain validator.
#![no_main]

use kamiyo_webhooks::domain::filter::{validate_list, validate_min_amount};
use kamiyo_webhooks::domain::netguard::NetworkPolicy;
use kamiyo_webhooks::domain::webhook::{validate_name, WebhookUrl};
use kamiyo_webhooks::input::{from_json_value, parse_json_value, WebhookIn, WebhookPatchIn};
use libfuzzer_sys::fuzz_target;

fn check_url(raw: &str) {
    for allow_http in [false, true] {
        if let Ok(url) = WebhookUrl::parse(raw, allow_http) {
            let _ = NetworkPolicy::default().check_url(url.url());
        }
    }
}

fn check_list(field: &str, list: Option<Vec<String>>) {
    if let Some(list) = list {
        let _ = validate_list(field, list);
    }
}

fuzz_target!(|data: &[u8]| {
    let Ok(value) = parse_json_value(data) else {
        return;
    };
    if let Ok(w) = from_json_value::<WebhookIn>(value.clone()) {
        let _ = validate_name(&w.name);
        check_url(&w.url);
        if let Some(min) = w.min_amount_usd {
            let _ = validate_min_amount(min);
        }
        check_list("chains", w.chains);
        check_list("protocols", w.protocols);
        check_list("categories", w.categories);
    }
    if let Ok(p) = from_json_value::<WebhookPatchIn>(value) {
        if let Some(Some(name)) = p.name {
            let _ = validate_name(&name);
        }
        if let Some(Some(url)) = p.url {
            check_url(&url);
        }
        if let Some(Some(min)) = p.min_amount_usd {
            let _ = validate_min_amount(min);
        }
        check_list("chains", p.chains.flatten());
        check_list("protocols", p.protocols.flatten());
        check_list("categories", p.categories.flatten());
    }
});
