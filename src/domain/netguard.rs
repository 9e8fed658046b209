//! The outbound network guard's rules: which IP addresses a webhook may never reach
//! (loopback, private, link-local, CGNAT, multicast, ...) unless an operator allows a CIDR.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use super::ValidationError;

/// An address range such as `10.0.0.0/8` or `::1/128`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    network: IpAddr,
    prefix: u8,
}

impl Cidr {
    pub fn parse(s: &str) -> Result<Cidr, String> {
        let s = s.trim();
        let (addr, prefix) = match s.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (s, None),
        };
        let network: IpAddr = addr
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse()
            .map_err(|_| format!("{s:?} is not a CIDR such as 10.0.0.0/8"))?;
        let max = if network.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            None => max,
            Some(p) => p
                .parse::<u8>()
                .ok()
                .filter(|p| *p <= max)
                .ok_or_else(|| format!("{s:?} has a prefix length outside 0..={max}"))?,
        };
        Ok(Cidr { network, prefix })
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.network, ip) {
            (IpAddr::V4(n), IpAddr::V4(a)) => prefix_eq(&n.octets(), &a.octets(), self.prefix),
            (IpAddr::V6(n), IpAddr::V6(a)) => prefix_eq(&n.octets(), &a.octets(), self.prefix),
            _ => false,
        }
    }
}

fn prefix_eq(a: &[u8], b: &[u8], prefix: u8) -> bool {
    let full = (prefix / 8) as usize;
    if a[..full] != b[..full] {
        return false;
    }
    let rest = prefix % 8;
    rest == 0 || {
        let mask = 0xffu8 << (8 - rest);
        a[full] & mask == b[full] & mask
    }
}

/// Why an IPv4 address is not a public destination, if it is not.
fn v4_reason(ip: Ipv4Addr) -> Option<&'static str> {
    let o = ip.octets();
    Some(match o {
        [0, ..] => "an unspecified (0.0.0.0/8) address",
        [127, ..] => "a loopback address",
        [10, ..] => "a private (RFC 1918) address",
        [172, b, ..] if (16..32).contains(&b) => "a private (RFC 1918) address",
        [192, 168, ..] => "a private (RFC 1918) address",
        [169, 254, ..] => "a link-local address (cloud metadata lives here)",
        [100, b, ..] if (64..128).contains(&b) => "a carrier-grade NAT (100.64.0.0/10) address",
        [192, 0, 0, _] => "an IETF protocol assignment (192.0.0.0/24)",
        [192, 0, 2, _] | [198, 51, 100, _] | [203, 0, 113, _] => "a documentation address",
        [198, b, ..] if b == 18 || b == 19 => "a benchmarking (198.18.0.0/15) address",
        [255, 255, 255, 255] => "the broadcast address",
        [a, ..] if (224..240).contains(&a) => "a multicast address",
        [a, ..] if a >= 240 => "a reserved (240.0.0.0/4) address",
        _ => return None,
    })
}

/// Why an IPv6 address is not a public destination, if it is not. Addresses that embed
/// an IPv4 address (mapped, compatible, NAT64, 6to4) are judged by that address.
fn v6_reason(ip: Ipv6Addr) -> Option<&'static str> {
    let s = ip.segments();
    if ip.is_unspecified() {
        return Some("an unspecified (::) address");
    }
    if ip.is_loopback() {
        return Some("a loopback address");
    }
    if let Some(v4) = embedded_v4(ip) {
        return v4_reason(v4);
    }
    Some(match s[0] {
        x if x & 0xfe00 == 0xfc00 => "a unique local (fc00::/7) address",
        x if x & 0xffc0 == 0xfe80 => "a link-local (fe80::/10) address",
        x if x & 0xffc0 == 0xfec0 => "a site-local (fec0::/10) address",
        x if x & 0xff00 == 0xff00 => "a multicast address",
        0x2001 if s[1] == 0x0db8 => "a documentation address",
        0x0100 if s[1..4] == [0, 0, 0] => "a discard-only (100::/64) address",
        _ => return None,
    })
}

fn embedded_v4(ip: Ipv6Addr) -> Option<Ipv4Addr> {
    let s = ip.segments();
    let o = ip.octets();
    let tail = Ipv4Addr::new(o[12], o[13], o[14], o[15]);
    if s[..5] == [0, 0, 0, 0, 0] && (s[5] == 0xffff || s[5] == 0) {
        return Some(tail); // IPv4-mapped ::ffff:a.b.c.d and IPv4-compatible ::a.b.c.d
    }
    if s[..6] == [0x64, 0xff9b, 0, 0, 0, 0] {
        return Some(tail); // NAT64
    }
    if s[0] == 0x2002 {
        return Some(Ipv4Addr::new(o[2], o[3], o[4], o[5])); // 6to4
    }
    None
}

/// Why `ip` is not a public destination, if it is not.
pub fn blocked_reason(ip: IpAddr) -> Option<&'static str> {
    match ip {
        IpAddr::V4(v4) => v4_reason(v4),
        IpAddr::V6(v6) => v6_reason(v6),
    }
}

/// The guard as configured: the rules plus the operator's allow-list.
#[derive(Debug, Clone, Default)]
pub struct NetworkPolicy {
    allow: Vec<Cidr>,
}

impl NetworkPolicy {
    pub fn new(allow: &[String]) -> Result<NetworkPolicy, String> {
        Ok(NetworkPolicy {
            allow: allow
                .iter()
                .map(|c| Cidr::parse(c))
                .collect::<Result<_, _>>()?,
        })
    }

    fn allowed(&self, ip: IpAddr) -> bool {
        let v4 = match ip {
            IpAddr::V6(v6) => embedded_v4(v6).map(IpAddr::V4),
            IpAddr::V4(_) => None,
        };
        self.allow
            .iter()
            .any(|c| c.contains(ip) || v4.is_some_and(|v4| c.contains(v4)))
    }

    /// `Err` with the reason when `ip` may not be reached.
    pub fn check(&self, ip: IpAddr) -> Result<(), String> {
        match blocked_reason(ip) {
            Some(reason) if !self.allowed(ip) => Err(format!(
                "{ip} is {reason}; webhooks may only target public addresses"
            )),
            _ => Ok(()),
        }
    }

    /// The create/update check: IP literals (in any spelling the URL parser normalises)
    /// and `localhost` names are judged now; other names at every attempt.
    pub fn check_url(&self, url: &url::Url) -> Result<(), ValidationError> {
        let ip = match url.host() {
            Some(url::Host::Ipv4(v4)) => IpAddr::V4(v4),
            Some(url::Host::Ipv6(v6)) => IpAddr::V6(v6),
            Some(url::Host::Domain(d)) => {
                let d = d.trim_end_matches('.').to_ascii_lowercase();
                if d == "localhost" || d.ends_with(".localhost") {
                    IpAddr::V4(Ipv4Addr::LOCALHOST)
                } else {
                    return Ok(());
                }
            }
            None => return Ok(()),
        };
        self.check(ip).map_err(|m| ValidationError::new("url", m))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn url_check(policy: &NetworkPolicy, u: &str) -> Result<(), ValidationError> {
        policy.check_url(&url::Url::parse(u).unwrap())
    }

    #[test]
    fn every_private_class_is_blocked() {
        for ip in [
            "0.0.0.0",
            "127.0.0.1",
            "127.1.2.3",
            "10.1.2.3",
            "172.16.0.1",
            "172.31.255.255",
            "192.168.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "100.127.255.255",
            "224.0.0.1",
            "255.255.255.255",
            "240.0.0.1",
            "192.0.2.1",
            "198.51.100.7",
            "203.0.113.9",
            "198.18.0.1",
            "::",
            "::1",
            "fc00::1",
            "fd12:3456::1",
            "fe80::1",
            "ff02::1",
            "2001:db8::1",
            "::ffff:127.0.0.1",
            "::ffff:169.254.169.254",
            "::127.0.0.1",
            "64:ff9b::a9fe:a9fe",
            "2002:7f00:1::1",
            "fec0::1",
        ] {
            let ip: IpAddr = ip.parse().unwrap();
            assert!(blocked_reason(ip).is_some(), "{ip} should be blocked");
        }
        for ip in [
            "8.8.8.8",
            "1.1.1.1",
            "172.32.0.1",
            "100.128.0.1",
            "2606:4700::1111",
            "::ffff:8.8.8.8",
        ] {
            let ip: IpAddr = ip.parse().unwrap();
            assert!(blocked_reason(ip).is_none(), "{ip} should be allowed");
        }
    }

    #[test]
    fn url_parsers_spellings_of_loopback_are_caught() {
        let p = NetworkPolicy::default();
        for u in [
            "https://127.0.0.1/",
            "https://2130706433/",
            "https://0x7f000001/",
            "https://0177.0.0.1/",
            "https://127.1/",
            "https://[::1]/",
            "https://[::ffff:7f00:1]/",
            "https://localhost/",
            "https://LOCALHOST./",
            "https://a.localhost/",
            "https://0/",
            "https://[0:0:0:0:0:0:0:1]/",
        ] {
            assert!(url_check(&p, u).is_err(), "{u} should be refused");
        }
        assert!(url_check(&p, "https://example.com/").is_ok());
        assert!(url_check(&p, "https://93.184.216.34/").is_ok());
    }

    #[test]
    fn the_allow_list_lets_exactly_its_cidrs_through() {
        let p = NetworkPolicy::new(&["127.0.0.0/8".into(), "10.1.0.0/16".into()]).unwrap();
        assert!(p.check("127.0.0.1".parse().unwrap()).is_ok());
        assert!(p.check("::ffff:127.0.0.1".parse().unwrap()).is_ok());
        assert!(p.check("10.1.200.1".parse().unwrap()).is_ok());
        assert!(p.check("10.2.0.1".parse().unwrap()).is_err());
        assert!(p.check("::1".parse().unwrap()).is_err());
        assert!(NetworkPolicy::new(&["10.0.0.0/33".into()]).is_err());
        assert!(NetworkPolicy::new(&["banana".into()]).is_err());
    }
}
