//! Where webhook deliveries may go: public unicast addresses, plus the networks the operator
//! allows (`--webhook-allow-network`). Any account may set any `callbackUrl`, so without this
//! a tenant could make the server POST to its own REST API, a cloud metadata service or
//! anything else on its private network, and read the answers' fate in the delivery log.
//!
//! The rules are data: the IANA special-purpose address registries (IPv4 and IPv6), as
//! CIDRs, plus the IPv6 forms that embed an IPv4 address (mapped, NAT64, 6to4), which are
//! judged by the address they embed. `std`'s `is_global` is not stable yet; the one stable
//! backport on crates.io is a single unmaintained release, so the table is ours, and its tests
//! name every range.
//!
//! The runtime checks the URL before connecting ([`Destinations::check_url`]: scheme, no
//! credentials, an IP literal host) and every address a host name resolves to
//! ([`Destinations::allows`]), connecting only to allowed ones, so a name that resolves to a
//! private address (or starts to, between two deliveries) is refused as well.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::LazyLock;

use ipnet::IpNet;

/// Networks that are not public unicast destinations: IANA's IPv4 and IPv6 special-purpose
/// registries (RFC 6890 and successors), multicast and the reserved blocks.
const SPECIAL_PURPOSE: &[&str] = &[
    // IPv4
    "0.0.0.0/8",       // "this network"
    "10.0.0.0/8",      // private
    "100.64.0.0/10",   // shared address space (carrier-grade NAT)
    "127.0.0.0/8",     // loopback
    "169.254.0.0/16",  // link-local (cloud metadata services live here)
    "172.16.0.0/12",   // private
    "192.0.0.0/24",    // IETF protocol assignments
    "192.0.2.0/24",    // documentation (TEST-NET-1)
    "192.31.196.0/24", // AS112-v4
    "192.52.193.0/24", // AMT
    "192.88.99.0/24",  // deprecated 6to4 relay anycast
    "192.168.0.0/16",  // private
    "192.175.48.0/24", // direct delegation AS112
    "198.18.0.0/15",   // benchmarking
    "198.51.100.0/24", // documentation (TEST-NET-2)
    "203.0.113.0/24",  // documentation (TEST-NET-3)
    "224.0.0.0/4",     // multicast
    "240.0.0.0/4",     // reserved, and the limited broadcast address
    // IPv6
    "::/128",        // unspecified
    "::1/128",       // loopback
    "100::/64",      // discard-only
    "2001::/23",     // IETF protocol assignments (Teredo, benchmarking, ORCHID, …)
    "2001:db8::/32", // documentation
    "3fff::/20",     // documentation
    "5f00::/16",     // segment routing SIDs
    "fc00::/7",      // unique local
    "fe80::/10",     // link-local
    "fec0::/10",     // deprecated site-local
    "ff00::/8",      // multicast
];

/// The parsed table.
static SPECIAL: LazyLock<Vec<IpNet>> = LazyLock::new(|| {
    SPECIAL_PURPOSE
        .iter()
        .filter_map(|net| net.parse().ok())
        .collect()
});

/// The IPv4 address an IPv6 address carries, for the forms that route to it: IPv4-mapped
/// (`::ffff:a.b.c.d`), IPv4-compatible (`::a.b.c.d`, deprecated), NAT64 (`64:ff9b::/96`,
/// `64:ff9b:1::/48`) and 6to4 (`2002:AABB:CCDD::/48`).
fn embedded_v4(v6: Ipv6Addr) -> Option<Ipv4Addr> {
    let s = v6.segments();
    let tail = |hi: u16, lo: u16| Ipv4Addr::from((u32::from(hi) << 16) | u32::from(lo));
    match s {
        [0, 0, 0, 0, 0, 0xffff, hi, lo] => Some(tail(hi, lo)),
        [0, 0, 0, 0, 0, 0, hi, lo] if (hi, lo) != (0, 0) && (hi, lo) != (0, 1) => {
            Some(tail(hi, lo))
        }
        [0x64, 0xff9b, 0, 0, 0, 0, hi, lo] => Some(tail(hi, lo)),
        [0x64, 0xff9b, 1, _, _, _, hi, lo] => Some(tail(hi, lo)),
        [0x2002, hi, lo, ..] => Some(tail(hi, lo)),
        _ => None,
    }
}

/// Whether `ip` is a public unicast address: in no special-purpose network, and, for an
/// IPv6 address that embeds an IPv4 one, that IPv4 address is public too.
pub fn is_public(ip: IpAddr) -> bool {
    if SPECIAL.iter().any(|net| net.contains(&ip)) {
        return false;
    }
    match ip {
        IpAddr::V4(_) => true,
        IpAddr::V6(v6) => embedded_v4(v6).is_none_or(|v4| is_public(IpAddr::V4(v4))),
    }
}

/// Why a delivery was refused before any connection.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// The URL does not parse, or is not http(s).
    #[error("not an http(s) URL")]
    NotHttp,
    /// The URL carries a user name or password: the server never sends credentials a tenant
    /// put in a URL.
    #[error("the URL carries credentials")]
    Credentials,
    /// The destination address is not public and no allowed network holds it.
    #[error("{0} is not a public address (an operator may allow its network with --webhook-allow-network)")]
    NotAllowed(IpAddr),
    /// The host name resolves only to addresses that are not allowed.
    #[error("{0} resolves to no allowed address (an operator may allow its network with --webhook-allow-network)")]
    NoAllowedAddress(String),
}

/// Where deliveries may go. See the module docs.
#[derive(Debug, Clone, Default)]
pub struct Destinations {
    allowed: Vec<IpNet>,
    anywhere: bool,
}

impl Destinations {
    /// Public addresses, plus the addresses of `allowed`.
    pub fn new(allowed: Vec<IpNet>) -> Destinations {
        Destinations {
            allowed,
            anywhere: false,
        }
    }

    /// Every address (`--webhook-allow-private`): URLs are still checked for scheme and
    /// credentials.
    pub fn anywhere() -> Destinations {
        Destinations {
            allowed: Vec::new(),
            anywhere: true,
        }
    }

    /// Whether a delivery may connect to `ip`.
    pub fn allows(&self, ip: IpAddr) -> bool {
        let ip = match ip {
            // An IPv4-mapped address is the IPv4 address, for the allowed networks too.
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
            v4 => v4,
        };
        self.anywhere || is_public(ip) || self.allowed.iter().any(|net| net.contains(&ip))
    }

    /// Checks `url` before any connection: http(s), no credentials, and an IP literal host
    /// allowed (a host name is checked when it resolves). Decimal, octal and hexadecimal
    /// spellings of IPv4 hosts are read as IPv4 addresses, as a browser would.
    pub fn check_url(&self, url: &str) -> Result<(), Refusal> {
        let url = url::Url::parse(url).map_err(|_| Refusal::NotHttp)?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err(Refusal::NotHttp);
        }
        if !url.username().is_empty() || url.password().is_some() {
            return Err(Refusal::Credentials);
        }
        let ip = match url.host() {
            Some(url::Host::Ipv4(v4)) => IpAddr::V4(v4),
            Some(url::Host::Ipv6(v6)) => IpAddr::V6(v6),
            Some(url::Host::Domain(_)) => return Ok(()),
            None => return Err(Refusal::NotHttp),
        };
        if self.allows(ip) {
            Ok(())
        } else {
            Err(Refusal::NotAllowed(ip))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    #[test]
    fn every_special_purpose_range_parses() {
        assert_eq!(SPECIAL.len(), SPECIAL_PURPOSE.len());
    }

    #[test]
    fn public_addresses_are_public() {
        for a in [
            "8.8.8.8",
            "1.1.1.1",
            "93.184.215.14",
            "2606:4700:4700::1111",
            "::ffff:8.8.8.8",
            "64:ff9b::808:808",
            "2002:808:808::1",
        ] {
            assert!(is_public(ip(a)), "{a}");
        }
    }

    #[test]
    fn internal_and_special_addresses_are_not() {
        for a in [
            "127.0.0.1",
            "127.1.2.3",
            "0.0.0.0",
            "10.1.2.3",
            "172.16.0.1",
            "172.31.255.255",
            "192.168.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "192.0.0.8",
            "192.0.2.1",
            "198.18.0.1",
            "198.51.100.1",
            "203.0.113.1",
            "224.0.0.1",
            "239.255.255.250",
            "240.0.0.1",
            "255.255.255.255",
            "::",
            "::1",
            "fc00::1",
            "fd12:3456::1",
            "fe80::1",
            "fec0::1",
            "ff02::1",
            "2001:db8::1",
            "2001::1",
            "::ffff:127.0.0.1",
            "::ffff:169.254.169.254",
            "::127.0.0.1",
            "64:ff9b::a00:1",
            "64:ff9b:1::a00:1",
            "2002:7f00:1::1",
            "2002:a9fe:a9fe::1",
        ] {
            assert!(!is_public(ip(a)), "{a}");
        }
    }

    #[test]
    fn an_allowed_network_is_allowed_and_nothing_else_is() {
        let d = Destinations::new(vec!["10.0.0.0/8".parse().unwrap_or_else(|e| panic!("{e}"))]);
        assert!(d.allows(ip("10.9.8.7")));
        assert!(d.allows(ip("::ffff:10.9.8.7")));
        assert!(!d.allows(ip("192.168.1.1")));
        assert!(!d.allows(ip("127.0.0.1")));
        assert!(d.allows(ip("8.8.8.8")));
    }

    #[test]
    fn urls_are_checked_before_connecting() {
        let d = Destinations::default();
        assert_eq!(d.check_url("https://hooks.example.com/x"), Ok(()));
        assert_eq!(d.check_url("http://8.8.8.8:8080/x"), Ok(()));
        assert_eq!(d.check_url("ftp://example.com/"), Err(Refusal::NotHttp));
        assert_eq!(d.check_url("not a url"), Err(Refusal::NotHttp));
        assert_eq!(
            d.check_url("http://user:pass@example.com/"),
            Err(Refusal::Credentials)
        );
        assert_eq!(
            d.check_url("http://user@example.com/"),
            Err(Refusal::Credentials)
        );
        for (url, addr) in [
            ("http://127.0.0.1:8080/v1/accounts", "127.0.0.1"),
            ("http://[::1]/", "::1"),
            (
                "http://169.254.169.254/latest/meta-data/",
                "169.254.169.254",
            ),
            ("http://2130706433/", "127.0.0.1"),
            ("http://0x7f000001/", "127.0.0.1"),
            ("http://0177.0.0.1/", "127.0.0.1"),
            ("http://127.1/", "127.0.0.1"),
            ("http://[::ffff:7f00:1]/", "::ffff:127.0.0.1"),
            ("http://10.0.0.5/", "10.0.0.5"),
        ] {
            assert_eq!(
                d.check_url(url),
                Err(Refusal::NotAllowed(ip(addr))),
                "{url}"
            );
        }
        let lan = Destinations::new(vec!["127.0.0.0/8"
            .parse()
            .unwrap_or_else(|e| panic!("{e}"))]);
        assert_eq!(lan.check_url("http://127.0.0.1:9/hook"), Ok(()));
        assert_eq!(
            lan.check_url("http://u:p@127.0.0.1:9/hook"),
            Err(Refusal::Credentials)
        );
        let any = Destinations::anywhere();
        assert_eq!(any.check_url("http://10.1.2.3/hook"), Ok(()));
        assert_eq!(any.check_url("http://[::1]/hook"), Ok(()));
        assert_eq!(
            any.check_url("http://u:p@10.1.2.3/"),
            Err(Refusal::Credentials)
        );
    }
}
