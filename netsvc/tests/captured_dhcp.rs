//! Decoding of DHCP packets captured from real clients (`tests/data/*.pcap`, recreated by
//! `tests/data/dhcp.gen.sh`): QEMU's iPXE ROM, OVMF's UEFI PXE client and ISC dhclient, and
//! the boot decision each gets.

use dhcproto::v4::MessageType;
use netsvc::MacAddr;
use netsvc::dhcp::{BootClient, BootConfig, BootDecision, Request, decide, decode};

/// UDP payloads of the frames in a classic (microsecond, Ethernet) pcap file, sent to port 67.
fn dhcp_requests(name: &str) -> Vec<Request> {
    let path = format!("{}/tests/data/{name}", env!("CARGO_MANIFEST_DIR"));
    let b = std::fs::read(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
    assert_eq!(
        &b[..4],
        &[0xd4, 0xc3, 0xb2, 0xa1],
        "{path}: not a little-endian pcap"
    );
    let mut out = Vec::new();
    let mut i = 24;
    while i + 16 <= b.len() {
        let caplen = u32::from_le_bytes(b[i + 8..i + 12].try_into().expect("4 bytes")) as usize;
        let frame = &b[i + 16..i + 16 + caplen];
        i += 16 + caplen;
        // Ethernet (IPv4 only), IPv4 header of IHL words, UDP.
        if frame.len() < 42 || frame[12..14] != [8, 0] || frame[23] != 17 {
            continue;
        }
        let ihl = usize::from(frame[14] & 0xf) * 4;
        let udp = &frame[14 + ihl..];
        if u16::from_be_bytes([udp[2], udp[3]]) != 67 {
            continue;
        }
        out.push(decode(&udp[8..]).unwrap_or_else(|e| panic!("{name}: {e}")));
    }
    assert!(!out.is_empty(), "{name}: no DHCP requests captured");
    out
}

fn boot_client(r: &Request) -> BootClient {
    BootClient {
        arch: r.arch.first().copied(),
        vendor_class: r.vendor_class.clone(),
        user_class: r.user_class.clone(),
        has_ipxe_options: r.ipxe.is_some(),
    }
}

const BASE: &str = "http://10.61.0.1";

#[test]
fn ipxe_rom_is_recognised_as_ipxe() {
    let reqs = dhcp_requests("ipxe-bios.pcap");
    let d = &reqs[0];
    assert_eq!(d.msg_type, MessageType::Discover);
    assert_eq!(d.mac, "52:54:00:61:00:01".parse::<MacAddr>().expect("mac"));
    assert_eq!(d.arch, vec![0]);
    assert_eq!(d.user_class.as_deref(), Some("iPXE"));
    assert!(
        d.vendor_class
            .as_deref()
            .is_some_and(|v| v.starts_with("PXEClient:Arch:00000"))
    );
    let ipxe = d.ipxe.as_ref().expect("iPXE sends option 175");
    assert!(!ipxe.is_empty());
    assert_eq!(
        decide(&boot_client(d), &BootConfig::default(), d.mac, BASE),
        Some(BootDecision::Http {
            url: "http://10.61.0.1/boot/52-54-00-61-00-01.ipxe".into(),
            echo_http_client: false
        })
    );
}

#[test]
fn ovmf_pxe_gets_the_uefi_binary() {
    let reqs = dhcp_requests("ovmf-pxe.pcap");
    let d = &reqs[0];
    assert_eq!(d.msg_type, MessageType::Discover);
    assert_eq!(d.arch, vec![7]);
    assert!(
        d.vendor_class
            .as_deref()
            .is_some_and(|v| v.starts_with("PXEClient:Arch:00007"))
    );
    assert!(d.ipxe.is_none() && d.user_class.is_none());
    assert_eq!(
        decide(&boot_client(d), &BootConfig::default(), d.mac, BASE),
        Some(BootDecision::Tftp {
            file: "snponly.efi".into()
        })
    );
}

#[test]
fn dhclient_is_a_plain_client() {
    let reqs = dhcp_requests("dhclient.pcap");
    let d = &reqs[0];
    assert_eq!(d.msg_type, MessageType::Discover);
    assert_eq!(d.mac, "52:54:00:61:00:03".parse::<MacAddr>().expect("mac"));
    assert_eq!(
        decide(&boot_client(d), &BootConfig::default(), d.mac, BASE),
        None
    );
}
