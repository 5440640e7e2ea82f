//! DHCPv4 bytes ↔ types, on top of `dhcproto`. No I/O, no clock.
//!
//! `dhcproto` decodes the fixed header and the common options. The options this server decides
//! on (60, 77, 93, 43, 175, 82) are also taken from the raw option area, because `dhcproto` hands
//! 43 and 175 over as opaque bytes, keeps only the first architecture of 93 and re-encodes 82
//! rather than echoing it. A raw walk of the option area also rejects lengths on which
//! `dhcproto` would trip a debug assertion.

use std::net::Ipv4Addr;

use dhcproto::v4::{self, DhcpOption, MessageType, OptionCode};
use dhcproto::{Decodable, Encodable};

use crate::MacAddr;

/// Offset of the options area (after the 4-byte magic cookie).
const OPTIONS_START: usize = 240;
/// The DHCP magic cookie.
const MAGIC: [u8; 4] = [99, 130, 83, 99];
/// iPXE encapsulated options (RFC: iPXE's own space).
pub(crate) const OPT_IPXE: u8 = 175;
/// iPXE "no-pxedhcp" sub-option of 175: do not wait for ProxyDHCP offers.
pub(crate) const IPXE_NO_PXEDHCP: u8 = 176;
/// Relay agent information (RFC 3046).
const OPT_RELAY_INFO: u8 = 82;

/// A packet that is not a DHCP request this server can act on.
#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    /// Shorter than the fixed BOOTP header plus magic cookie.
    #[error("packet of {len} bytes is shorter than a DHCP header")]
    Truncated {
        /// Bytes received.
        len: usize,
    },
    /// The magic cookie is missing: plain BOOTP or garbage.
    #[error("packet has no DHCP magic cookie")]
    NoMagic,
    /// The option area does not parse as type-length-value triples.
    #[error("option {code} runs past the end of the packet")]
    OptionOverrun {
        /// The offending option code.
        code: u8,
    },
    /// An option has a length its definition does not allow.
    #[error("option {code} has invalid length {len}")]
    OptionLength {
        /// The offending option code.
        code: u8,
        /// Its length byte.
        len: u8,
    },
    /// `dhcproto` rejected the packet.
    #[error("malformed DHCP message")]
    Decode {
        /// Why.
        #[source]
        err: dhcproto::error::DecodeError,
    },
    /// Not a BOOTREQUEST.
    #[error("not a BOOTREQUEST")]
    NotRequest,
    /// No option 53.
    #[error("no DHCP message type")]
    NoMessageType,
    /// Hardware type or length is not Ethernet.
    #[error("hardware type is not Ethernet")]
    NotEthernet,
    /// Encoding a reply failed.
    #[error("failed to encode DHCP reply")]
    Encode {
        /// Why.
        #[source]
        err: dhcproto::error::EncodeError,
    },
}

/// A decoded client request with the fields the server decides on.
#[derive(Debug, Clone)]
pub struct Request {
    /// The full message, as `dhcproto` decoded it (replies are built from it).
    pub msg: v4::Message,
    /// Option 53.
    pub msg_type: MessageType,
    /// `chaddr`.
    pub mac: MacAddr,
    /// Option 61, raw.
    pub client_id: Option<Vec<u8>>,
    /// Option 50.
    pub requested_ip: Option<Ipv4Addr>,
    /// Option 54.
    pub server_id: Option<Ipv4Addr>,
    /// Option 12, with trailing NULs trimmed.
    pub hostname: Option<String>,
    /// Option 60 as text (lossy), trailing NULs trimmed.
    pub vendor_class: Option<String>,
    /// Option 77 as text (lossy), trailing NULs trimmed.
    pub user_class: Option<String>,
    /// Option 93: the client's architectures, first one preferred.
    pub arch: Vec<u16>,
    /// Option 175 sub-options, when the client sent 175 at all.
    pub ipxe: Option<Vec<SubOption>>,
    /// Option 43 sub-options, when present.
    pub vendor_opts: Option<Vec<SubOption>>,
    /// Option 82 exactly as received (value bytes), echoed in the reply.
    pub relay_info: Option<Vec<u8>>,
    /// `file`, NULs trimmed.
    pub file: Option<String>,
    /// `sname`, NULs trimmed.
    pub sname: Option<String>,
}

/// One encapsulated sub-option (inside 43 or 175).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubOption {
    /// Sub-option code.
    pub code: u8,
    /// Its value.
    pub data: Vec<u8>,
}

/// Walks the option area `opts`, calling `f(code, value)` per option. Stops at End.
fn walk_options(opts: &[u8], mut f: impl FnMut(u8, &[u8])) -> Result<(), CodecError> {
    let mut i = 0;
    while i < opts.len() {
        let code = opts[i];
        match code {
            0 => i += 1,
            255 => break,
            _ => {
                let len = *opts.get(i + 1).ok_or(CodecError::OptionOverrun { code })? as usize;
                let val = opts
                    .get(i + 2..i + 2 + len)
                    .ok_or(CodecError::OptionOverrun { code })?;
                f(code, val);
                i += 2 + len;
            }
        }
    }
    Ok(())
}

/// Parses encapsulated sub-options (RFC 2132 §8.4 layout), as in options 43 and 175.
///
/// Pad (0) is skipped and End (255) stops; a truncated sub-option is an error.
pub fn parse_suboptions(data: &[u8]) -> Result<Vec<SubOption>, CodecError> {
    let mut out = Vec::new();
    walk_options(data, |code, val| {
        out.push(SubOption {
            code,
            data: val.to_vec(),
        });
    })?;
    Ok(out)
}

/// Encodes sub-options back to bytes (no End marker; encapsulated spaces do not need one).
pub fn encode_suboptions(subs: &[SubOption]) -> Vec<u8> {
    let mut out = Vec::new();
    for s in subs {
        for chunk in s.data.chunks(255) {
            out.push(s.code);
            out.push(u8::try_from(chunk.len()).expect("invariant: chunks are at most 255 bytes"));
            out.extend_from_slice(chunk);
        }
        if s.data.is_empty() {
            out.extend_from_slice(&[s.code, 0]);
        }
    }
    out
}

fn trim_nul(bytes: &[u8]) -> Option<String> {
    let end = bytes.iter().position(|&b| b == 0).unwrap_or(bytes.len());
    let s = String::from_utf8_lossy(&bytes[..end]).trim().to_owned();
    (!s.is_empty()).then_some(s)
}

/// Checks option lengths the way dhcproto 0.15 will see them: it concatenates only
/// *consecutive* options of one code (RFC 3396), a Pad ends a run and End stops decoding.
fn check_runs(opts: &[u8]) -> Result<(), CodecError> {
    let mut run: Option<(u8, usize)> = None;
    let mut i = 0;
    while i < opts.len() {
        let code = opts[i];
        if code == 0 || code == 255 {
            if let Some((c, len)) = run.take() {
                check_len(c, len)?;
            }
            if code == 255 {
                return Ok(());
            }
            i += 1;
            continue;
        }
        let len = usize::from(*opts.get(i + 1).ok_or(CodecError::OptionOverrun { code })?);
        run = match run {
            Some((c, l)) if c == code => Some((c, l + len)),
            other => {
                if let Some((c, l)) = other {
                    check_len(c, l)?;
                }
                Some((code, len))
            }
        };
        i += 2 + len;
    }
    if let Some((c, len)) = run {
        check_len(c, len)?;
    }
    Ok(())
}

/// Rejects lengths on which dhcproto 0.15 would trip a debug assertion or underflow.
/// Called for every option present, with its total length.
fn check_len(code: u8, len: usize) -> Result<(), CodecError> {
    let ok = match code {
        // Rapid commit carries no value.
        80 => len == 0,
        81 => len >= 3,
        94 => len == 3,
        151 => len >= 1,
        50 | 51 | 54 | 58 | 59 | 152..=155 => len == 4,
        53 => len == 1,
        _ => true,
    };
    if ok {
        Ok(())
    } else {
        Err(CodecError::OptionLength {
            code,
            len: u8::try_from(len).unwrap_or(u8::MAX),
        })
    }
}

/// Decodes a client request. Anything but a well-formed Ethernet BOOTREQUEST with a message
/// type is an error; the server drops it with a debug log.
pub fn decode(bytes: &[u8]) -> Result<Request, CodecError> {
    if bytes.len() < OPTIONS_START {
        return Err(CodecError::Truncated { len: bytes.len() });
    }
    if bytes[236..240] != MAGIC {
        return Err(CodecError::NoMagic);
    }
    let mut raw = RawOpts::default();
    walk_options(&bytes[OPTIONS_START..], |code, val| raw.take(code, val))?;
    check_runs(&bytes[OPTIONS_START..])?;
    let msg = v4::Message::from_bytes(bytes).map_err(|err| CodecError::Decode { err })?;
    if msg.opcode() != v4::Opcode::BootRequest {
        return Err(CodecError::NotRequest);
    }
    if msg.htype() != v4::HType::Eth || msg.hlen() != 6 {
        return Err(CodecError::NotEthernet);
    }
    let msg_type = msg.opts().msg_type().ok_or(CodecError::NoMessageType)?;
    let mut mac = [0u8; 6];
    mac.copy_from_slice(&msg.chaddr()[..6]);
    let arch = raw
        .arch
        .as_deref()
        .map(|a| {
            a.chunks_exact(2)
                .map(|c| u16::from_be_bytes([c[0], c[1]]))
                .collect()
        })
        .unwrap_or_default();
    let ipxe = match raw.ipxe.as_deref() {
        Some(d) => Some(parse_suboptions(d)?),
        None => None,
    };
    // Vendor option 43 is informational here: a malformed one does not sink the request.
    let vendor_opts = raw
        .vendor
        .as_deref()
        .map(|d| parse_suboptions(d).unwrap_or_default());
    let ipv4 = |code| match msg.opts().get(code) {
        Some(DhcpOption::RequestedIpAddress(ip)) | Some(DhcpOption::ServerIdentifier(ip)) => {
            Some(*ip)
        }
        _ => None,
    };
    Ok(Request {
        msg_type,
        mac: MacAddr(mac),
        client_id: raw.client_id,
        requested_ip: ipv4(OptionCode::RequestedIpAddress),
        server_id: ipv4(OptionCode::ServerIdentifier),
        hostname: raw.hostname.as_deref().and_then(trim_nul),
        vendor_class: raw.vendor_class.as_deref().and_then(trim_nul),
        user_class: raw.user_class.as_deref().and_then(trim_nul),
        arch,
        ipxe,
        vendor_opts,
        relay_info: raw.relay_info,
        file: msg.fname().and_then(trim_nul),
        sname: msg.sname().and_then(trim_nul),
        msg,
    })
}

/// Raw values of the options decided on; long options (RFC 3396) are concatenated.
#[derive(Default)]
struct RawOpts {
    client_id: Option<Vec<u8>>,
    hostname: Option<Vec<u8>>,
    vendor_class: Option<Vec<u8>>,
    user_class: Option<Vec<u8>>,
    arch: Option<Vec<u8>>,
    ipxe: Option<Vec<u8>>,
    vendor: Option<Vec<u8>>,
    relay_info: Option<Vec<u8>>,
}

impl RawOpts {
    fn take(&mut self, code: u8, val: &[u8]) {
        let slot = match code {
            61 => &mut self.client_id,
            12 => &mut self.hostname,
            60 => &mut self.vendor_class,
            77 => &mut self.user_class,
            93 => &mut self.arch,
            OPT_IPXE => &mut self.ipxe,
            43 => &mut self.vendor,
            OPT_RELAY_INFO => &mut self.relay_info,
            _ => return,
        };
        slot.get_or_insert_with(Vec::new).extend_from_slice(val);
    }
}

/// A reply ready to encode: the message plus raw options appended verbatim after the ones
/// `dhcproto` encodes (option 82 is echoed this way, last, as RFC 3046 asks).
#[derive(Debug, Clone)]
pub struct Reply {
    /// The reply message.
    pub msg: v4::Message,
    /// Raw `(code, value)` options appended at the end, before End.
    pub raw_tail: Vec<(u8, Vec<u8>)>,
}

/// Encodes a reply, padded to the 300-byte BOOTP minimum some PXE ROMs insist on.
pub fn encode(reply: &Reply) -> Result<Vec<u8>, CodecError> {
    let mut out = reply
        .msg
        .to_vec()
        .map_err(|err| CodecError::Encode { err })?;
    if !reply.raw_tail.is_empty() {
        // dhcproto ends the options with End (255) when there are any; put the tail before it.
        if out.len() > OPTIONS_START && out.last() == Some(&255) {
            out.pop();
        }
        for (code, val) in &reply.raw_tail {
            for chunk in val.chunks(255) {
                out.push(*code);
                out.push(
                    u8::try_from(chunk.len()).expect("invariant: chunks are at most 255 bytes"),
                );
                out.extend_from_slice(chunk);
            }
        }
        out.push(255);
    }
    if out.len() < 300 {
        out.resize(300, 0);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    pub(crate) fn discover(mac: [u8; 6], extra: &[(u8, &[u8])]) -> Vec<u8> {
        let mut b = vec![0u8; OPTIONS_START];
        b[0] = 1;
        b[1] = 1;
        b[2] = 6;
        b[4..8].copy_from_slice(&0x1234_5678u32.to_be_bytes());
        b[28..34].copy_from_slice(&mac);
        b[236..240].copy_from_slice(&MAGIC);
        b.extend_from_slice(&[53, 1, 1]);
        for (code, val) in extra {
            b.push(*code);
            b.push(u8::try_from(val.len()).expect("short"));
            b.extend_from_slice(val);
        }
        b.push(255);
        b
    }

    #[test]
    fn decodes_pxe_fields_from_raw_options() {
        let bytes = discover(
            [0x52, 0x54, 0, 1, 2, 3],
            &[
                (60, b"PXEClient:Arch:00007:UNDI:003016"),
                (93, &[0, 7, 0, 9]),
                (77, b"iPXE\0"),
                (175, &[177, 5, 1, 0x10, 0xec, 0x81, 0x00, 19, 1, 1]),
                (82, &[1, 3, b'e', b't', b'h']),
            ],
        );
        let r = decode(&bytes).expect("valid");
        assert_eq!(r.msg_type, MessageType::Discover);
        assert_eq!(r.mac.to_string(), "52:54:00:01:02:03");
        assert_eq!(r.arch, vec![7, 9]);
        assert_eq!(r.user_class.as_deref(), Some("iPXE"));
        assert_eq!(
            r.vendor_class.as_deref(),
            Some("PXEClient:Arch:00007:UNDI:003016")
        );
        let ipxe = r.ipxe.expect("175");
        assert_eq!(ipxe.len(), 2);
        assert_eq!(
            ipxe[1],
            SubOption {
                code: 19,
                data: vec![1]
            }
        );
        assert_eq!(r.relay_info.as_deref(), Some(&[1, 3, b'e', b't', b'h'][..]));
    }

    #[test]
    fn rejects_bad_input() {
        assert!(matches!(
            decode(&[1, 2, 3]),
            Err(CodecError::Truncated { .. })
        ));
        let mut no_magic = discover([1; 6], &[]);
        no_magic[236] = 0;
        assert!(matches!(decode(&no_magic), Err(CodecError::NoMagic)));
        let fqdn = discover([1; 6], &[(81, &[0])]);
        assert!(matches!(
            decode(&fqdn),
            Err(CodecError::OptionLength { code: 81, .. })
        ));
        // Found by the fuzzer: option 94 must be 3 bytes (dhcproto asserts it).
        let nic = discover([1; 6], &[(94, &[1, 2, 3, 4])]);
        assert!(matches!(
            decode(&nic),
            Err(CodecError::OptionLength { code: 94, .. })
        ));
        let rapid = discover([1; 6], &[(80, &[1])]);
        assert!(matches!(
            decode(&rapid),
            Err(CodecError::OptionLength { code: 80, .. })
        ));
        let blq = discover([1; 6], &[(152, &[])]);
        assert!(matches!(
            decode(&blq),
            Err(CodecError::OptionLength { code: 152, .. })
        ));
        // A valid option 81 followed, not consecutively, by an empty one (fuzzer find).
        let fqdn2 = discover([1; 6], &[(81, &[0, 0, 0]), (12, b"h"), (81, &[])]);
        assert!(matches!(
            decode(&fqdn2),
            Err(CodecError::OptionLength { code: 81, .. })
        ));
        let mut overrun = discover([1; 6], &[]);
        overrun.pop();
        overrun.extend_from_slice(&[60, 10, 1]);
        assert!(matches!(
            decode(&overrun),
            Err(CodecError::OptionOverrun { code: 60 })
        ));
    }

    #[test]
    fn trims_nuls_from_file_and_sname() {
        let mut b = discover([2; 6], &[]);
        b[44..48].copy_from_slice(b"srv\0");
        b[108..114].copy_from_slice(b"boot\0\0");
        let r = decode(&b).expect("valid");
        assert_eq!(r.sname.as_deref(), Some("srv"));
        assert_eq!(r.file.as_deref(), Some("boot"));
    }

    #[test]
    fn reply_tail_goes_before_end() {
        let mut msg = v4::Message::default();
        msg.opts_mut()
            .insert(DhcpOption::MessageType(MessageType::Offer));
        let out = encode(&Reply {
            msg,
            raw_tail: vec![(82, vec![1, 1, 9])],
        })
        .expect("encodes");
        assert_eq!(out.len(), 300);
        assert_eq!(&out[240..250], &[53, 1, 2, 82, 3, 1, 1, 9, 255, 0]);
    }

    proptest! {
        #[test]
        fn suboptions_round_trip(subs in proptest::collection::vec(
            (1u8..255, proptest::collection::vec(any::<u8>(), 1..40)), 0..8)) {
            let subs: Vec<SubOption> =
                subs.into_iter().map(|(code, data)| SubOption { code, data }).collect();
            prop_assert_eq!(parse_suboptions(&encode_suboptions(&subs)).expect("parses"), subs);
        }

        #[test]
        fn request_round_trips_through_dhcproto(
            mac in any::<[u8; 6]>(),
            xid in any::<u32>(),
            arch in any::<u16>(),
            vendor in "[A-Za-z0-9:]{1,40}",
            ciaddr in any::<[u8; 4]>(),
        ) {
            let mut msg = v4::Message::new(
                Ipv4Addr::from(ciaddr), Ipv4Addr::UNSPECIFIED, Ipv4Addr::UNSPECIFIED,
                Ipv4Addr::UNSPECIFIED, &mac);
            msg.set_xid(xid);
            msg.opts_mut().insert(DhcpOption::MessageType(MessageType::Request));
            msg.opts_mut().insert(DhcpOption::ClassIdentifier(vendor.clone().into_bytes()));
            msg.opts_mut().insert(DhcpOption::ClientSystemArchitecture(arch.into()));
            let bytes = msg.to_vec().expect("encodes");
            let r = decode(&bytes).expect("decodes");
            prop_assert_eq!(r.mac, MacAddr(mac));
            prop_assert_eq!(r.msg.xid(), xid);
            prop_assert_eq!(r.msg.ciaddr(), Ipv4Addr::from(ciaddr));
            prop_assert_eq!(r.arch, vec![arch]);
            prop_assert_eq!(r.vendor_class, Some(vendor));
            prop_assert_eq!(&r.msg, &v4::Message::from_bytes(&bytes).expect("decodes"));
        }

        #[test]
        fn decode_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
            let _ = decode(&bytes);
        }
    }
}
