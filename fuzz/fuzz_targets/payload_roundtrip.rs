//! The delivery body: any exploit encodes to JSON whose fields read back unchanged, and
//! numbers read back as the same f64.
#![no_main]

use kamiyo_webhooks::domain::exploit::Exploit;
use kamiyo_webhooks::domain::payload::{encode_event, js_number};
use libfuzzer_sys::arbitrary::{Result, Unstructured};
use libfuzzer_sys::fuzz_target;

fn exploit(u: &mut Unstructured<'_>) -> Result<Exploit> {
    Ok(Exploit {
        id: u.arbitrary()?,
        tx_hash: u.arbitrary()?,
        chain: u.arbitrary()?,
        protocol: u.arbitrary()?,
        amount_usd: u.arbitrary()?,
        // Years 1970 to 2100, as ingestion allows.
        timestamp_ms: u.int_in_range(0..=4_102_444_800_000)?,
        source: u.arbitrary()?,
        source_url: u.arbitrary()?,
        category: u.arbitrary()?,
        description: u.arbitrary()?,
        detected_at_ms: u.int_in_range(0..=4_102_444_800_000)?,
    })
}

fuzz_target!(|data: &[u8]| {
    let mut u = Unstructured::new(data);
    let Ok(e) = exploit(&mut u) else {
        return;
    };
    if !e.amount_usd.is_finite() {
        // Ingestion refuses these; js_number writes null for them.
        assert_eq!(js_number(e.amount_usd), "null");
        return;
    }
    let n = js_number(e.amount_usd);
    assert_eq!(n.parse::<f64>().unwrap(), e.amount_usd, "{n}");
    let body = encode_event("exploit.detected", &e);
    let v: serde_json::Value = serde_json::from_str(&body).expect("the body is JSON");
    let x = &v["exploit"];
    assert_eq!(x["tx_hash"], e.tx_hash.as_str());
    assert_eq!(x["chain"], e.chain.as_str());
    assert_eq!(x["protocol"], e.protocol.as_str());
    assert_eq!(x["description"].as_str(), e.description.as_deref());
    assert_eq!(x["category"].as_str(), e.category.as_deref());
    assert_eq!(x["amount_usd"].as_f64(), Some(e.amount_usd));
    assert_eq!(x["id"].as_i64(), Some(e.id));
});
