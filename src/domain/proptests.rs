//! Property tests of the parsers and encoders that face hostile input: filter matching
//! against a plain reference, the payload encoding round trip, JavaScript number
//! formatting, and URL validation with the network guard.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use proptest::prelude::*;
use serde::{Deserialize, Serialize};

use super::exploit::Exploit;
use super::filter::{ExploitFacts, Filters};
use super::netguard::{blocked_reason, NetworkPolicy};
use super::payload::{encode_event, js_number};
use super::webhook::WebhookUrl;

/// Names that collide under case folding, ASCII and not.
fn name() -> impl Strategy<Value = String> {
    prop::sample::select(vec![
        "ethereum", "Ethereum", "ETHEREUM", "arbitrum", "Arbitrum", "élan", "ÉLAN", "Élan", "ß",
        "SS", "", "x",
    ])
    .prop_map(String::from)
}

fn list() -> impl Strategy<Value = Option<Vec<String>>> {
    prop::option::of(prop::collection::vec(name(), 0..4))
}

/// The rule as the spec words it, written as plainly as possible.
fn reference_matches(
    f: &Filters,
    chain: &str,
    protocol: &str,
    category: Option<&str>,
    amount: f64,
) -> bool {
    fn in_list(list: &Option<Vec<String>>, value: Option<&str>) -> bool {
        let Some(entries) = list else { return true };
        if entries.is_empty() {
            return true;
        }
        let Some(value) = value else { return false };
        entries
            .iter()
            .any(|e| e.to_lowercase() == value.to_lowercase())
    }
    let amount_ok = match f.min_amount_usd {
        None => true,
        Some(min) => amount >= min,
    };
    amount_ok
        && in_list(&f.chains, Some(chain))
        && in_list(&f.protocols, Some(protocol))
        && in_list(&f.categories, category)
}

/// The body's shape, fields in the order they are sent.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Body {
    event: String,
    timestamp: i64,
    exploit: BodyExploit,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct BodyExploit {
    id: i64,
    tx_hash: String,
    chain: String,
    protocol: String,
    amount_usd: f64,
    timestamp: String,
    source: Option<String>,
    source_url: Option<String>,
    category: Option<String>,
    description: Option<String>,
}

fn finite() -> impl Strategy<Value = f64> {
    prop_oneof![
        any::<f64>(),
        (0i64..10_000_000_000).prop_map(|n| n as f64 / 100.0),
        (-320i32..309).prop_map(|e| 10f64.powi(e)),
    ]
    .prop_filter("finite", |v| v.is_finite())
}

fn exploit() -> impl Strategy<Value = Exploit> {
    (
        (any::<i64>(), ".*", ".*", ".*", finite()),
        // Years 1970 to 2100.
        (0i64..4_102_444_800_000, 0i64..4_102_444_800_000),
        prop::option::of(".*"),
        prop::option::of(".*"),
        prop::option::of(".*"),
        prop::option::of(".*"),
    )
        .prop_map(
            |(
                (id, tx_hash, chain, protocol, amount_usd),
                (timestamp_ms, detected_at_ms),
                source,
                source_url,
                category,
                description,
            )| Exploit {
                id,
                tx_hash,
                chain,
                protocol,
                amount_usd,
                timestamp_ms,
                source,
                source_url,
                category,
                description,
                detected_at_ms,
            },
        )
}

/// Spellings of an IP address in a URL host that URL parsers accept.
fn ip_host() -> impl Strategy<Value = (IpAddr, String)> {
    prop_oneof![
        any::<u32>().prop_map(|n| {
            let ip = Ipv4Addr::from(n);
            (IpAddr::V4(ip), ip.to_string())
        }),
        any::<u32>().prop_map(|n| (IpAddr::V4(Ipv4Addr::from(n)), n.to_string())),
        any::<u32>().prop_map(|n| (IpAddr::V4(Ipv4Addr::from(n)), format!("{n:#x}"))),
        any::<u32>().prop_map(|n| {
            let o = Ipv4Addr::from(n).octets();
            let host = format!("0{:o}.0{:o}.0{:o}.0{:o}", o[0], o[1], o[2], o[3]);
            (IpAddr::V4(Ipv4Addr::from(n)), host)
        }),
        any::<u128>().prop_map(|n| {
            let ip = Ipv6Addr::from(n);
            (IpAddr::V6(ip), format!("[{ip}]"))
        }),
        any::<u32>().prop_map(|n| {
            let ip = Ipv4Addr::from(n).to_ipv6_mapped();
            (IpAddr::V6(ip), format!("[::ffff:{}]", Ipv4Addr::from(n)))
        }),
        // The interesting neighbourhoods, so they are not left to chance.
        (
            prop::sample::select(vec![0u8, 10, 100, 127, 169, 172, 192, 224, 255]),
            any::<[u8; 3]>()
        )
            .prop_map(|(a, [b, c, d])| {
                let ip = Ipv4Addr::new(a, b, c, d);
                (IpAddr::V4(ip), ip.to_string())
            }),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn filter_matching_agrees_with_the_reference(
        min in prop::option::of(prop_oneof![Just(0.0), Just(100.0), 0.0f64..1e6]),
        chains in list(), protocols in list(), categories in list(),
        chain in name(), protocol in name(), category in prop::option::of(name()),
        amount in prop_oneof![Just(0.0), Just(100.0), 0.0f64..1e6],
    ) {
        let f = Filters { min_amount_usd: min, chains, protocols, categories };
        let facts = ExploitFacts { chain: &chain, protocol: &protocol, category: category.as_deref(), amount_usd: amount };
        prop_assert_eq!(
            f.matches(&facts),
            reference_matches(&f, &chain, &protocol, category.as_deref(), amount)
        );
    }

    #[test]
    fn js_number_round_trips_and_matches_the_fixed_notation_range(x in finite()) {
        let s = js_number(x);
        prop_assert_eq!(s.parse::<f64>().unwrap(), if x == 0.0 { 0.0 } else { x }, "{}", s);
        // Between 1e-6 and 1e21 JavaScript writes plain decimals with the shortest digits
        // that round-trip, which is exactly Rust's `Display`; outside, an exponent.
        let a = x.abs();
        if x == 0.0 {
            prop_assert_eq!(s, "0");
        } else if (1e-6..1e21).contains(&a) {
            prop_assert_eq!(s, format!("{x}"));
        } else {
            prop_assert!(s.contains("e+") || s.contains("e-"), "{}", s);
            prop_assert!(!s.contains(".e") && !s.contains("0e"), "{}", s);
        }
    }

    #[test]
    fn payload_is_json_that_reserialises_to_itself(e in exploit(), event in prop::sample::select(vec!["exploit.detected", "webhook.test"])) {
        let body = encode_event(event, &e);
        let parsed: Body = serde_json::from_str(&body).expect("the body is JSON of the spec's shape");
        prop_assert_eq!(&parsed.event, event);
        prop_assert_eq!(parsed.timestamp, e.detected_at_ms.div_euclid(1000));
        prop_assert_eq!(&parsed.exploit.description, &e.description);
        prop_assert_eq!(&parsed.exploit.chain, &e.chain);
        prop_assert_eq!(parsed.exploit.amount_usd, if e.amount_usd == 0.0 { 0.0 } else { e.amount_usd });
        // serde_json writes numbers its own way; everything else must be byte-identical.
        let again = serde_json::to_string(&parsed).unwrap().replacen(
            &format!("\"amount_usd\":{}", serde_json::to_string(&parsed.exploit.amount_usd).unwrap()),
            &format!("\"amount_usd\":{}", js_number(e.amount_usd)),
            1,
        );
        prop_assert_eq!(again, body);
    }

    #[test]
    fn url_validation_never_panics(raw in ".{0,80}", allow_http in any::<bool>()) {
        if let Ok(url) = WebhookUrl::parse(&raw, allow_http) {
            let _ = NetworkPolicy::default().check_url(url.url());
        }
    }

    #[test]
    fn a_url_naming_a_blocked_ip_is_never_accepted((ip, host) in ip_host(), path in "[a-z/]{0,8}", port in prop::option::of(1u16..)) {
        let port = port.map(|p| format!(":{p}")).unwrap_or_default();
        let raw = format!("https://{host}{port}/{path}");
        let accepted = WebhookUrl::parse(&raw, false)
            .map(|u| NetworkPolicy::default().check_url(u.url()).is_ok())
            .unwrap_or(false);
        if blocked_reason(ip).is_some() {
            prop_assert!(!accepted, "{} ({}) was accepted", raw, ip);
        } else {
            prop_assert!(accepted, "{} ({}) was refused", raw, ip);
        }
    }
}
