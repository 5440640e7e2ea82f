//! Router Advertisement and Router Solicitation bytes (RFC 4861), without I/O.

use std::net::Ipv6Addr;

use ipnet::Ipv6Net;

use crate::MacAddr;

const TYPE_RS: u8 = 133;
const TYPE_RA: u8 = 134;
const OPT_SOURCE_LLADDR: u8 = 1;
const OPT_PREFIX_INFO: u8 = 3;
/// Prefix Information flags: on-link (L) and autonomous address configuration (A).
const FLAGS_ON_LINK_AUTONOMOUS: u8 = 0xc0;

/// What one advertisement announces.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Advert {
    /// The announced prefix (on-link, autonomous).
    pub prefix: Ipv6Net,
    /// Seconds the prefix stays valid.
    pub valid_lifetime: u32,
    /// Seconds addresses formed from it stay preferred.
    pub preferred_lifetime: u32,
    /// Our link-layer address, sent as the Source Link-Layer Address option.
    pub source_mac: Option<MacAddr>,
}

/// Encodes `advert` as an ICMPv6 Router Advertisement with router lifetime 0 (not a default
/// router) and the checksum left zero (the kernel computes it for ICMPv6 raw sockets).
pub fn encode_advert(advert: &Advert) -> Vec<u8> {
    let mut out = Vec::with_capacity(56);
    out.extend_from_slice(&[TYPE_RA, 0, 0, 0]);
    // Current hop limit 64, no M/O flags (no DHCPv6), router lifetime 0.
    out.extend_from_slice(&[64, 0, 0, 0]);
    // Reachable time and retransmission timer: unspecified.
    out.extend_from_slice(&[0; 8]);
    if let Some(mac) = advert.source_mac {
        out.extend_from_slice(&[OPT_SOURCE_LLADDR, 1]);
        out.extend_from_slice(&mac.0);
    }
    out.extend_from_slice(&[OPT_PREFIX_INFO, 4, advert.prefix.prefix_len()]);
    out.push(FLAGS_ON_LINK_AUTONOMOUS);
    out.extend_from_slice(&advert.valid_lifetime.to_be_bytes());
    out.extend_from_slice(&advert.preferred_lifetime.to_be_bytes());
    out.extend_from_slice(&[0; 4]);
    out.extend_from_slice(&advert.prefix.trunc().addr().octets());
    out
}

/// Whether `icmp` (an ICMPv6 message without the IPv6 header) is a well-formed Router
/// Solicitation: type 133, code 0, and options that each have a non-zero length and fit.
pub fn is_solicitation(icmp: &[u8]) -> bool {
    let [TYPE_RS, 0, _, _, _, _, _, _, options @ ..] = icmp else {
        return false;
    };
    let mut rest = options;
    while !rest.is_empty() {
        let len = match rest {
            [_, len, ..] if *len > 0 => usize::from(*len) * 8,
            _ => return false,
        };
        match rest.get(len..) {
            Some(r) => rest = r,
            None => return false,
        }
    }
    true
}

/// The default prefix of `iface`: a unique-local `fdXX:XXXX:XXXX::/64` whose 40-bit global ID
/// is an FNV-1a hash of the interface name, so it is the same across restarts.
pub fn default_prefix(iface: &str) -> Ipv6Net {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in iface.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    let id = h.to_be_bytes();
    let mut octets = [0u8; 16];
    octets[0] = 0xfd;
    octets[1..6].copy_from_slice(&id[3..8]);
    Ipv6Net::new(Ipv6Addr::from(octets), 64).expect("invariant: 64 is a valid prefix length")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn advert_bytes() {
        let a = Advert {
            prefix: "fd12:3456:789a::/64".parse().expect("prefix"),
            valid_lifetime: 1800,
            preferred_lifetime: 900,
            source_mac: Some("52:54:00:65:00:01".parse().expect("mac")),
        };
        let b = encode_advert(&a);
        assert_eq!(b.len(), 16 + 8 + 32);
        assert_eq!(&b[..8], &[134, 0, 0, 0, 64, 0, 0, 0]);
        assert_eq!(&b[16..24], &[1, 1, 0x52, 0x54, 0, 0x65, 0, 1]);
        assert_eq!(&b[24..28], &[3, 4, 64, 0xc0]);
        assert_eq!(&b[28..32], &1800u32.to_be_bytes());
        assert_eq!(&b[32..36], &900u32.to_be_bytes());
        assert_eq!(
            &b[40..],
            &"fd12:3456:789a::".parse::<Ipv6Addr>().expect("a").octets()
        );
        let no_mac = encode_advert(&Advert {
            source_mac: None,
            ..a
        });
        assert_eq!(no_mac.len(), 16 + 32);
    }

    #[test]
    fn solicitations() {
        assert!(is_solicitation(&[133, 0, 1, 2, 0, 0, 0, 0]));
        assert!(is_solicitation(&[
            133, 0, 1, 2, 0, 0, 0, 0, 1, 1, 2, 3, 4, 5, 6, 7
        ]));
        assert!(!is_solicitation(&[134, 0, 1, 2, 0, 0, 0, 0]));
        assert!(!is_solicitation(&[133, 1, 1, 2, 0, 0, 0, 0]));
        assert!(!is_solicitation(&[133, 0, 1, 2, 0, 0, 0]));
        assert!(!is_solicitation(&[133, 0, 1, 2, 0, 0, 0, 0, 1, 0]));
        assert!(!is_solicitation(&[133, 0, 1, 2, 0, 0, 0, 0, 1, 2, 0, 0]));
    }

    #[test]
    fn default_prefix_is_stable_ula() {
        let p = default_prefix("eth1");
        assert_eq!(p, default_prefix("eth1"));
        assert_ne!(p, default_prefix("eth2"));
        assert_eq!(p.prefix_len(), 64);
        assert_eq!(p.addr().octets()[0], 0xfd);
        assert_eq!(p, p.trunc());
    }
}
