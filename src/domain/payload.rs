//! The delivery body: compact JSON in the spec's shape, byte-identical to what
//! `JSON.stringify(JSON.parse(body))` produces, so the spec's Node.js verifier accepts it.

use std::fmt::Write;

use super::exploit::Exploit;
use super::time::format_ms;

pub const EVENT_EXPLOIT_DETECTED: &str = "exploit.detected";
pub const EVENT_WEBHOOK_TEST: &str = "webhook.test";

/// Formats a finite number exactly as JavaScript's `Number.prototype.toString` does.
pub fn js_number(v: f64) -> String {
    if v == 0.0 {
        return "0".into();
    }
    if !v.is_finite() {
        // JSON.stringify writes null for these; ingestion never lets them in.
        return "null".into();
    }
    // Rust's `{:e}` gives the shortest round-trip digits, like JavaScript.
    let sci = format!("{:e}", v.abs());
    let (mantissa, exp) = sci.split_once('e').expect("exponent");
    let exp: i32 = exp.parse().expect("exponent digits");
    let digits: String = mantissa.chars().filter(|c| *c != '.').collect();
    let k = digits.len() as i32;
    let n = exp + 1; // the decimal point sits after n digits
    let mut out = String::with_capacity(24);
    if v < 0.0 {
        out.push('-');
    }
    if k <= n && n <= 21 {
        out.push_str(&digits);
        out.extend(std::iter::repeat_n('0', (n - k) as usize));
    } else if 0 < n && n <= 21 {
        out.push_str(&digits[..n as usize]);
        out.push('.');
        out.push_str(&digits[n as usize..]);
    } else if -6 < n && n <= 0 {
        out.push_str("0.");
        out.extend(std::iter::repeat_n('0', (-n) as usize));
        out.push_str(&digits);
    } else {
        out.push_str(&digits[..1]);
        if k > 1 {
            out.push('.');
            out.push_str(&digits[1..]);
        }
        let e = n - 1;
        let _ = write!(out, "e{}{}", if e >= 0 { "+" } else { "-" }, e.abs());
    }
    out
}

fn push_str(out: &mut String, s: &str) {
    // serde_json escapes exactly what JSON.stringify escapes: quote, backslash, and
    // control characters (\b \f \n \r \t, the rest as lowercase \u00xx).
    out.push_str(&serde_json::to_string(s).expect("string encodes"));
}

fn push_opt(out: &mut String, s: Option<&str>) {
    match s {
        Some(s) => push_str(out, s),
        None => out.push_str("null"),
    }
}

/// The body sent for an exploit event.
pub fn encode_event(event: &str, exploit: &Exploit) -> String {
    let mut out = String::with_capacity(384 + exploit.description.as_ref().map_or(0, String::len));
    out.push_str("{\"event\":");
    push_str(&mut out, event);
    let _ = write!(
        out,
        ",\"timestamp\":{}",
        exploit.detected_at_ms.div_euclid(1000)
    );
    let _ = write!(out, ",\"exploit\":{{\"id\":{}", exploit.id);
    out.push_str(",\"tx_hash\":");
    push_str(&mut out, &exploit.tx_hash);
    out.push_str(",\"chain\":");
    push_str(&mut out, &exploit.chain);
    out.push_str(",\"protocol\":");
    push_str(&mut out, &exploit.protocol);
    out.push_str(",\"amount_usd\":");
    out.push_str(&js_number(exploit.amount_usd));
    out.push_str(",\"timestamp\":");
    push_str(&mut out, &format_ms(exploit.timestamp_ms));
    out.push_str(",\"source\":");
    push_opt(&mut out, exploit.source.as_deref());
    out.push_str(",\"source_url\":");
    push_opt(&mut out, exploit.source_url.as_deref());
    out.push_str(",\"category\":");
    push_opt(&mut out, exploit.category.as_deref());
    out.push_str(",\"description\":");
    push_opt(&mut out, exploit.description.as_deref());
    out.push_str("}}");
    out
}

/// The sample exploit a test call sends.
pub fn sample_exploit(now_ms: i64) -> Exploit {
    Exploit {
        id: 0,
        tx_hash: "0x0000000000000000000000000000000000000000000000000000000000000000".into(),
        chain: "Ethereum".into(),
        protocol: "Kamiyo Test".into(),
        amount_usd: 1_000_000.0,
        timestamp_ms: now_ms,
        source: Some("Kamiyo".into()),
        source_url: None,
        category: Some("test".into()),
        description: Some("Test event sent from the Kamiyo webhook test endpoint".into()),
        detected_at_ms: now_ms,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_print_like_javascript() {
        let cases = [
            (250000.0, "250000"),
            (250000.5, "250000.5"),
            (0.1, "0.1"),
            (1e21, "1e+21"),
            (1.5e21, "1.5e+21"),
            (123456789012345680000.0, "123456789012345680000"),
            (0.000001, "0.000001"),
            (0.0000001, "1e-7"),
            (1.25e-7, "1.25e-7"),
            (100.0, "100"),
            (1.0 / 3.0, "0.3333333333333333"),
            (5e-324, "5e-324"),
            (1.7976931348623157e308, "1.7976931348623157e+308"),
            (-0.0, "0"),
        ];
        for (v, want) in cases {
            assert_eq!(js_number(v), want, "{v}");
        }
    }

    #[test]
    fn body_has_the_spec_shape_and_reencodes_identically() {
        let e = Exploit {
            id: 789,
            tx_hash: "0xabc123".into(),
            chain: "Ethereum".into(),
            protocol: "Uniswap \"v3\" 🦄".into(),
            amount_usd: 250000.0,
            timestamp_ms: 1_760_099_400_000,
            source: Some("PeckShield".into()),
            source_url: None,
            category: Some("flash_loan".into()),
            description: Some("line1\nline2\u{1}\u{7f}\u{2028}".into()),
            detected_at_ms: 1_728_564_890_123,
        };
        let body = encode_event(EVENT_EXPLOIT_DETECTED, &e);
        assert!(body.starts_with(
            r#"{"event":"exploit.detected","timestamp":1728564890,"exploit":{"id":789,"tx_hash":"0xabc123","#
        ));
        assert!(body.contains(r#""amount_usd":250000,"timestamp":"2025-10-10T12:30:00""#));
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(
            v["exploit"]["description"],
            "line1\nline2\u{1}\u{7f}\u{2028}"
        );
        assert!(body.contains(r#"line1\nline2\u0001"#));
    }
}
