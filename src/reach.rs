//! How devices and phones reach this server: the public IP addresses the media plane and the
//! SIP bridge advertise (`--public-ip`, several allowed, `auto` asks a STUN server), and the
//! summary of every address a client will be told to use, printed at startup.
//!
//! It owns the STUN client used for `auto` (one Binding request, RFC 8489, answered with the
//! address the request came from as the STUN server saw it).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::str::FromStr;
use std::time::Duration;

use tokio::net::UdpSocket;

/// One `--public-ip` value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PublicIp {
    /// This address.
    Ip(IpAddr),
    /// The address a STUN server sees this host's requests come from.
    Auto,
}

impl FromStr for PublicIp {
    type Err = String;

    fn from_str(s: &str) -> Result<PublicIp, String> {
        let s = s.trim();
        if s.eq_ignore_ascii_case("auto") {
            return Ok(PublicIp::Auto);
        }
        let ip: IpAddr = s
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse()
            .map_err(|_| format!("{s:?} is neither an IP address nor `auto`"))?;
        if ip.is_unspecified() || ip.is_multicast() {
            return Err(format!(
                "{s:?} cannot be reached: give the address devices send media to"
            ));
        }
        Ok(PublicIp::Ip(ip))
    }
}

/// The `--media-tcp-listen` value: where ICE-TCP connections are accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MediaTcpListen {
    /// On the address and port each shard's UDP socket got (TCP and UDP ports are separate
    /// namespaces, so one number serves both).
    Same,
    /// No ICE over TCP: devices are offered UDP candidates only.
    Off,
    /// On this address; shard `i` listens on its port + `i` (port 0: any free port).
    Addr(SocketAddr),
}

impl FromStr for MediaTcpListen {
    type Err = String;

    fn from_str(s: &str) -> Result<MediaTcpListen, String> {
        let s = s.trim();
        if s.eq_ignore_ascii_case("same") {
            return Ok(MediaTcpListen::Same);
        }
        if s.eq_ignore_ascii_case("off") {
            return Ok(MediaTcpListen::Off);
        }
        s.parse()
            .map(MediaTcpListen::Addr)
            .map_err(|_| format!("{s:?} is neither ADDR:PORT, `same` nor `off`"))
    }
}

/// How long `auto` waits for each of its STUN attempts (three in all).
const STUN_WAITS: [Duration; 3] = [
    Duration::from_millis(500),
    Duration::from_millis(1000),
    Duration::from_millis(2000),
];

/// The addresses `values` name, in order and without repeats, `auto` asked of `stun_server`.
pub async fn resolve(values: &[PublicIp], stun_server: &str) -> anyhow::Result<Vec<IpAddr>> {
    let mut ips = Vec::new();
    for value in values {
        let ip = match value {
            PublicIp::Ip(ip) => *ip,
            PublicIp::Auto => stun_public_ip(stun_server).await.map_err(|e| {
                anyhow::anyhow!(
                    "--public-ip auto: no answer from the STUN server {stun_server} ({e}); \
                     give the address with --public-ip IP, or another --stun-server HOST:PORT"
                )
            })?,
        };
        if !ips.contains(&ip) {
            ips.push(ip);
        }
    }
    Ok(ips)
}

/// The IP address `server` (`HOST:PORT`) sees a UDP request from this host come from.
pub async fn stun_public_ip(server: &str) -> anyhow::Result<IpAddr> {
    let target = tokio::net::lookup_host(server)
        .await?
        .next()
        .ok_or_else(|| anyhow::anyhow!("{server} resolves to no address"))?;
    let local: IpAddr = if target.is_ipv4() {
        Ipv4Addr::UNSPECIFIED.into()
    } else {
        Ipv6Addr::UNSPECIFIED.into()
    };
    let socket = UdpSocket::bind(SocketAddr::new(local, 0)).await?;
    let mut buf = [0u8; 1024];
    for wait in STUN_WAITS {
        let transaction: [u8; 12] = rand::random();
        socket
            .send_to(&binding_request(&transaction), target)
            .await?;
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let received = tokio::time::timeout_at(deadline, socket.recv_from(&mut buf)).await;
            let Ok(received) = received else { break };
            let (n, from) = received?;
            if from != target {
                continue;
            }
            if let Some(addr) = mapped_address(&buf[..n], &transaction) {
                return Ok(addr.ip());
            }
        }
    }
    anyhow::bail!(
        "no STUN Binding response after {} attempts",
        STUN_WAITS.len()
    )
}

/// The STUN magic cookie (RFC 8489 §5).
const MAGIC_COOKIE: u32 = 0x2112_A442;
const BINDING_REQUEST: u16 = 0x0001;
const BINDING_SUCCESS: u16 = 0x0101;
const ATTR_MAPPED_ADDRESS: u16 = 0x0001;
const ATTR_XOR_MAPPED_ADDRESS: u16 = 0x0020;

/// A Binding request without attributes.
fn binding_request(transaction: &[u8; 12]) -> [u8; 20] {
    let mut m = [0u8; 20];
    m[0..2].copy_from_slice(&BINDING_REQUEST.to_be_bytes());
    // Message length 0: no attributes.
    m[4..8].copy_from_slice(&MAGIC_COOKIE.to_be_bytes());
    m[8..20].copy_from_slice(transaction);
    m
}

/// The reflexive address of a Binding success response to `transaction`: its
/// XOR-MAPPED-ADDRESS, else its MAPPED-ADDRESS. `None` for anything else.
fn mapped_address(message: &[u8], transaction: &[u8; 12]) -> Option<SocketAddr> {
    let header = message.get(..20)?;
    if u16::from_be_bytes([header[0], header[1]]) != BINDING_SUCCESS
        || header[4..8] != MAGIC_COOKIE.to_be_bytes()
        || header[8..20] != transaction[..]
    {
        return None;
    }
    let length = usize::from(u16::from_be_bytes([header[2], header[3]]));
    let mut attributes = message.get(20..20 + length)?;
    let mut plain = None;
    while attributes.len() >= 4 {
        let kind = u16::from_be_bytes([attributes[0], attributes[1]]);
        let len = usize::from(u16::from_be_bytes([attributes[2], attributes[3]]));
        let value = attributes.get(4..4 + len)?;
        match kind {
            ATTR_XOR_MAPPED_ADDRESS => return address(value, Some(transaction)),
            ATTR_MAPPED_ADDRESS => plain = address(value, None),
            _ => {}
        }
        // Attributes are padded to a multiple of 4 bytes.
        let padded = (4 + len).div_ceil(4) * 4;
        attributes = attributes.get(padded..).unwrap_or(&[]);
    }
    plain
}

/// A (XOR-)MAPPED-ADDRESS value; `xor` carries the transaction id for the XOR form.
fn address(value: &[u8], xor: Option<&[u8; 12]>) -> Option<SocketAddr> {
    let family = *value.get(1)?;
    let cookie = MAGIC_COOKIE.to_be_bytes();
    let mut port = u16::from_be_bytes([*value.get(2)?, *value.get(3)?]);
    let mut key = [0u8; 16];
    key[..4].copy_from_slice(&cookie);
    if let Some(transaction) = xor {
        port ^= u16::from_be_bytes([cookie[0], cookie[1]]);
        key[4..].copy_from_slice(transaction);
    }
    let unmask = |bytes: &[u8]| -> Vec<u8> {
        bytes
            .iter()
            .zip(key.iter())
            .map(|(b, k)| if xor.is_some() { b ^ k } else { *b })
            .collect()
    };
    let ip: IpAddr = match family {
        0x01 => {
            let b: [u8; 4] = unmask(value.get(4..8)?).try_into().ok()?;
            Ipv4Addr::from(b).into()
        }
        0x02 => {
            let b: [u8; 16] = unmask(value.get(4..20)?).try_into().ok()?;
            Ipv6Addr::from(b).into()
        }
        _ => return None,
    };
    Some(SocketAddr::new(ip, port))
}

/// The addresses a media socket bound to `bound` is advertised at: those of `public` it can
/// receive on (an IPv4 socket cannot receive IPv6, and the other way round unless it is the
/// dual-stack `[::]`), each with the socket's port. Without public addresses: the bound
/// address, 127.0.0.1 standing in for an unspecified one.
pub fn advertised(public: &[IpAddr], bound: SocketAddr) -> Vec<SocketAddr> {
    let usable: Vec<SocketAddr> = public
        .iter()
        .filter(|ip| receivable(**ip, bound))
        .map(|ip| SocketAddr::new(*ip, bound.port()))
        .collect();
    if !usable.is_empty() {
        return usable;
    }
    let ip = if bound.ip().is_unspecified() {
        Ipv4Addr::LOCALHOST.into()
    } else {
        bound.ip()
    };
    vec![SocketAddr::new(ip, bound.port())]
}

/// Whether a socket bound to `bound` receives datagrams sent to the family of `ip`.
pub fn receivable(ip: IpAddr, bound: SocketAddr) -> bool {
    ip.is_ipv4() == bound.is_ipv4() || (bound.is_ipv6() && bound.ip().is_unspecified())
}

/// Every address a device or phone is told to use, as printed at startup.
#[derive(Debug, Clone)]
pub struct Addresses {
    /// The REST API and the device WebSocket.
    pub http: SocketAddr,
    /// The ICE host candidates of each media shard (UDP).
    pub media: Vec<Vec<SocketAddr>>,
    /// The passive ICE-TCP host candidates of each media shard (none: ICE over TCP is off).
    pub media_tcp: Vec<Vec<SocketAddr>>,
    /// The SIP bridge's bound address (UDP and TCP).
    pub sip: SocketAddr,
    /// The address phones are told to send RTP to, and the port range.
    pub rtp_ip: IpAddr,
    /// The RTP port range (`(0, 0)`: any free port).
    pub rtp_ports: (u16, u16),
    /// Whether the media socket is on an unspecified address and no `--public-ip` was given
    /// (the advertised address is then 127.0.0.1: reachable from this machine only).
    pub loopback_only: bool,
}

impl std::fmt::Display for Addresses {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(f, "patchbay HTTP (REST, device WebSocket) on {}", self.http)?;
        for (shard, addrs) in self.media.iter().enumerate() {
            let list: Vec<String> = addrs.iter().map(ToString::to_string).collect();
            writeln!(
                f,
                "patchbay media shard {shard}: UDP, ICE candidates {}",
                list.join(" ")
            )?;
        }
        for (shard, addrs) in self.media_tcp.iter().enumerate() {
            let list: Vec<String> = addrs.iter().map(ToString::to_string).collect();
            writeln!(
                f,
                "patchbay media shard {shard}: TCP (ICE-TCP, passive), ICE candidates {}",
                list.join(" ")
            )?;
        }
        let (low, high) = self.rtp_ports;
        let range = if low == 0 {
            "any free port".to_owned()
        } else {
            format!("ports {low}-{high}")
        };
        write!(
            f,
            "patchbay phone RTP: UDP to {} on {range} (SIP on {})",
            self.rtp_ip, self.sip
        )?;
        if self.loopback_only {
            write!(
                f,
                "\npatchbay WARNING: the media socket listens on every interface but no --public-ip \
                 is set, so devices and phones are told 127.0.0.1: only this machine can reach a \
                 call. Set --public-ip IP (repeatable) or --public-ip auto."
            )?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn public_ip_values() {
        assert_eq!("auto".parse::<PublicIp>(), Ok(PublicIp::Auto));
        assert_eq!(
            "203.0.113.7".parse::<PublicIp>(),
            Ok(PublicIp::Ip("203.0.113.7".parse().unwrap()))
        );
        assert_eq!(
            "[2001:db8::7]".parse::<PublicIp>(),
            Ok(PublicIp::Ip("2001:db8::7".parse().unwrap()))
        );
        assert!("0.0.0.0".parse::<PublicIp>().is_err());
        assert!("example.com".parse::<PublicIp>().is_err());
    }

    #[test]
    fn media_tcp_listen_values() {
        assert_eq!("same".parse(), Ok(MediaTcpListen::Same));
        assert_eq!("OFF".parse(), Ok(MediaTcpListen::Off));
        assert_eq!(
            "0.0.0.0:3478".parse(),
            Ok(MediaTcpListen::Addr("0.0.0.0:3478".parse().unwrap()))
        );
        assert!("3478".parse::<MediaTcpListen>().is_err());
    }

    #[test]
    fn advertised_keeps_what_the_socket_receives() {
        let v4: IpAddr = "203.0.113.7".parse().unwrap();
        let v6: IpAddr = "2001:db8::7".parse().unwrap();
        let any4: SocketAddr = "0.0.0.0:3478".parse().unwrap();
        let any6: SocketAddr = "[::]:3478".parse().unwrap();
        assert_eq!(advertised(&[v4, v6], any4), vec![SocketAddr::new(v4, 3478)]);
        assert_eq!(
            advertised(&[v4, v6], any6),
            vec![SocketAddr::new(v4, 3478), SocketAddr::new(v6, 3478)]
        );
        assert_eq!(
            advertised(&[], any4),
            vec!["127.0.0.1:3478".parse().unwrap()]
        );
        let bound: SocketAddr = "10.0.0.5:4000".parse().unwrap();
        assert_eq!(advertised(&[], bound), vec![bound]);
    }

    #[test]
    fn parses_binding_responses() {
        let transaction = [7u8; 12];
        // XOR-MAPPED-ADDRESS 192.0.2.1:32853 (RFC 5769 §2.2's address, our transaction).
        let mut m = vec![0x01, 0x01, 0, 12];
        m.extend_from_slice(&MAGIC_COOKIE.to_be_bytes());
        m.extend_from_slice(&transaction);
        m.extend_from_slice(&[
            0x00, 0x20, 0x00, 0x08, 0x00, 0x01, 0xa1, 0x47, 0xe1, 0x12, 0xa6, 0x43,
        ]);
        assert_eq!(
            mapped_address(&m, &transaction),
            Some("192.0.2.1:32853".parse().unwrap())
        );
        // Another transaction's answer is not ours.
        assert_eq!(mapped_address(&m, &[8u8; 12]), None);
        // Truncated: nothing.
        assert_eq!(mapped_address(&m[..26], &transaction), None);
    }
}
