//! Unicast to a client that has no address yet.
//!
//! RFC 2131 asks the server to unicast OFFER/ACK to `yiaddr` at `chaddr` when the client did
//! not set the broadcast flag. A UDP socket cannot do that: the kernel would ARP for an address
//! nobody answers yet. The two known ways are an ARP-cache entry (`SIOCSARP`, dnsmasq's way)
//! or a packet socket. We use an `AF_PACKET`/`SOCK_DGRAM` socket and build the IPv4 and UDP
//! headers ourselves while the kernel adds the Ethernet header for the MAC we name: it leaves
//! no state behind in the neighbour table (stale entries, races between concurrent replies,
//! entries for addresses that get declined), needs no cleanup and works for any `chaddr`.

use std::io;
use std::net::Ipv4Addr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use crate::MacAddr;

/// A send-only packet socket.
#[derive(Debug)]
pub(crate) struct RawSender {
    fd: OwnedFd,
}

const ETH_P_IP: u16 = 0x0800;

impl RawSender {
    /// Opens the socket (needs `CAP_NET_RAW`).
    pub(crate) fn new() -> io::Result<Self> {
        // Protocol 0: the socket receives nothing, it only sends.
        // SAFETY: plain socket(2) call with constant arguments; the result is checked.
        let fd = unsafe {
            libc::socket(
                libc::AF_PACKET,
                libc::SOCK_DGRAM | libc::SOCK_CLOEXEC | libc::SOCK_NONBLOCK,
                0,
            )
        };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `fd` is a fresh, valid descriptor that nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        Ok(RawSender { fd })
    }

    /// Sends `payload` as UDP `src:67 → dst:68` in a frame to `mac` on interface `ifindex`.
    pub(crate) fn send(
        &self,
        ifindex: u32,
        mac: MacAddr,
        src: Ipv4Addr,
        dst: Ipv4Addr,
        payload: &[u8],
    ) -> io::Result<()> {
        let packet = ipv4_udp(src, 67, dst, 68, payload)?;
        // SAFETY: sockaddr_ll is plain old data; all-zero is a valid value.
        let mut sll: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        sll.sll_family = u16::try_from(libc::AF_PACKET).expect("invariant: AF_PACKET fits u16");
        sll.sll_protocol = ETH_P_IP.to_be();
        sll.sll_ifindex = i32::try_from(ifindex)
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "interface index"))?;
        sll.sll_halen = 6;
        sll.sll_addr[..6].copy_from_slice(&mac.octets());
        let len =
            u32::try_from(size_of::<libc::sockaddr_ll>()).expect("invariant: sockaddr_ll is small");
        // SAFETY: the buffer and the address point to live memory of the lengths given.
        let rc = unsafe {
            libc::sendto(
                self.fd.as_raw_fd(),
                packet.as_ptr().cast(),
                packet.len(),
                0,
                std::ptr::from_ref(&sll).cast(),
                len,
            )
        };
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }
}

fn checksum(chunks: &[&[u8]]) -> u16 {
    let mut sum: u32 = 0;
    for chunk in chunks {
        let mut it = chunk.chunks_exact(2);
        for w in &mut it {
            sum += u32::from(u16::from_be_bytes([w[0], w[1]]));
        }
        if let [b] = it.remainder() {
            sum += u32::from(u16::from_be_bytes([*b, 0]));
        }
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !u16::try_from(sum).expect("invariant: folded to 16 bits")
}

/// An IPv4 + UDP packet around `payload` (with both checksums).
fn ipv4_udp(
    src: Ipv4Addr,
    sport: u16,
    dst: Ipv4Addr,
    dport: u16,
    payload: &[u8],
) -> io::Result<Vec<u8>> {
    let udp_len = u16::try_from(8 + payload.len())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "payload too large"))?;
    let total = udp_len
        .checked_add(20)
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "payload too large"))?;
    let mut ip = [0u8; 20];
    ip[0] = 0x45;
    ip[2..4].copy_from_slice(&total.to_be_bytes());
    ip[6] = 0x40; // don't fragment
    ip[8] = 64;
    ip[9] = 17;
    ip[12..16].copy_from_slice(&src.octets());
    ip[16..20].copy_from_slice(&dst.octets());
    let c = checksum(&[&ip]);
    ip[10..12].copy_from_slice(&c.to_be_bytes());
    let mut udp = [0u8; 8];
    udp[0..2].copy_from_slice(&sport.to_be_bytes());
    udp[2..4].copy_from_slice(&dport.to_be_bytes());
    udp[4..6].copy_from_slice(&udp_len.to_be_bytes());
    let mut pseudo = [0u8; 12];
    pseudo[0..4].copy_from_slice(&src.octets());
    pseudo[4..8].copy_from_slice(&dst.octets());
    pseudo[9] = 17;
    pseudo[10..12].copy_from_slice(&udp_len.to_be_bytes());
    let mut c = checksum(&[&pseudo, &udp, payload]);
    if c == 0 {
        c = 0xffff;
    }
    udp[6..8].copy_from_slice(&c.to_be_bytes());
    let mut out = Vec::with_capacity(usize::from(total));
    out.extend_from_slice(&ip);
    out.extend_from_slice(&udp);
    out.extend_from_slice(payload);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers_checksum_to_zero() {
        let p = ipv4_udp(
            Ipv4Addr::new(10, 61, 0, 1),
            67,
            Ipv4Addr::new(10, 61, 0, 50),
            68,
            b"hello",
        )
        .expect("small");
        assert_eq!(p.len(), 33);
        // A correct header checksums to zero (ones' complement of 0xffff).
        assert_eq!(checksum(&[&p[..20]]), 0);
        let mut pseudo = [0u8; 12];
        pseudo[0..4].copy_from_slice(&p[12..16]);
        pseudo[4..8].copy_from_slice(&p[16..20]);
        pseudo[9] = 17;
        pseudo[10..12].copy_from_slice(&p[24..26]);
        assert_eq!(checksum(&[&pseudo, &p[20..]]), 0);
    }
}
