//! Batched UDP receive and send (`recvmmsg`/`sendmmsg`): one system call for up to [`BATCH`]
//! datagrams each way. Under load most of the serving cost is in the kernel, so this is where
//! the fast path gains most.

use std::io;
use std::mem::{size_of, zeroed};
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};
use std::os::fd::RawFd;
use std::ptr::null_mut;

/// Datagrams per system call.
pub(crate) const BATCH: usize = 32;
const BATCH_U32: u32 = 32;
/// Largest query kept; longer ones arrive truncated (flagged) and are answered FORMERR.
const SLOT: usize = 4096;

fn storage_len() -> libc::socklen_t {
    libc::socklen_t::try_from(size_of::<libc::sockaddr_storage>())
        .expect("invariant: sockaddr_storage is 128 bytes")
}

/// The peer address in `ss`, if it is IPv4 or IPv6.
fn to_socket_addr(ss: &libc::sockaddr_storage) -> Option<SocketAddr> {
    match i32::from(ss.ss_family) {
        libc::AF_INET => {
            // SAFETY: the family says the storage holds a sockaddr_in, which it is large and
            // aligned enough for.
            let sin = unsafe { &*std::ptr::from_ref(ss).cast::<libc::sockaddr_in>() };
            Some(SocketAddr::V4(SocketAddrV4::new(
                Ipv4Addr::from(u32::from_be(sin.sin_addr.s_addr)),
                u16::from_be(sin.sin_port),
            )))
        }
        libc::AF_INET6 => {
            // SAFETY: as above, for sockaddr_in6.
            let sin6 = unsafe { &*std::ptr::from_ref(ss).cast::<libc::sockaddr_in6>() };
            Some(SocketAddr::V6(SocketAddrV6::new(
                Ipv6Addr::from(sin6.sin6_addr.s6_addr),
                u16::from_be(sin6.sin6_port),
                sin6.sin6_flowinfo,
                sin6.sin6_scope_id,
            )))
        }
        _ => None,
    }
}

/// Receive side: buffers, addresses and headers for [`BATCH`] datagrams.
pub(crate) struct RecvBatch {
    bufs: Box<[[u8; SLOT]]>,
    addrs: Box<[libc::sockaddr_storage]>,
    /// Kept alive only: the headers point into it.
    _iov: Box<[libc::iovec]>,
    hdrs: Box<[libc::mmsghdr]>,
}

impl RecvBatch {
    pub(crate) fn new() -> Self {
        let mut bufs = vec![[0u8; SLOT]; BATCH].into_boxed_slice();
        // SAFETY: sockaddr_storage is plain old data; all zeroes is a valid (unspecified) value.
        let mut addrs =
            vec![unsafe { zeroed::<libc::sockaddr_storage>() }; BATCH].into_boxed_slice();
        let mut iov: Box<[libc::iovec]> = bufs
            .iter_mut()
            .map(|b| libc::iovec {
                iov_base: b.as_mut_ptr().cast(),
                iov_len: SLOT,
            })
            .collect();
        let hdrs = iov
            .iter_mut()
            .zip(addrs.iter_mut())
            .map(|(v, a)| {
                // SAFETY: mmsghdr is plain old data; zero is a valid start before the fields
                // below are set.
                let mut h: libc::mmsghdr = unsafe { zeroed() };
                h.msg_hdr.msg_iov = std::ptr::from_mut(v);
                h.msg_hdr.msg_iovlen = 1;
                h.msg_hdr.msg_name = std::ptr::from_mut(a).cast();
                h.msg_hdr.msg_namelen = storage_len();
                h
            })
            .collect();
        Self {
            bufs,
            addrs,
            _iov: iov,
            hdrs,
        }
    }

    /// Blocks for at least one datagram (bounded by the socket's receive timeout), then takes
    /// whatever else is queued, up to [`BATCH`]. Returns how many arrived.
    pub(crate) fn recv(&mut self, fd: RawFd) -> io::Result<usize> {
        for h in self.hdrs.iter_mut() {
            h.msg_hdr.msg_namelen = storage_len();
            h.msg_hdr.msg_flags = 0;
            h.msg_len = 0;
        }
        // SAFETY: every header points at live buffers, iovecs and address storage owned by
        // `self`, with their true sizes; the kernel writes at most that much.
        let n = unsafe {
            libc::recvmmsg(
                fd,
                self.hdrs.as_mut_ptr(),
                BATCH_U32,
                libc::MSG_WAITFORONE,
                null_mut(),
            )
        };
        usize::try_from(n).map_err(|_| io::Error::last_os_error())
    }

    /// Datagram `i` of the last batch; `None` when it was longer than the buffer.
    pub(crate) fn packet(&self, i: usize) -> Option<&[u8]> {
        let h = &self.hdrs[i];
        if h.msg_hdr.msg_flags & libc::MSG_TRUNC != 0 {
            return None;
        }
        let len = usize::try_from(h.msg_len).unwrap_or(0).min(SLOT);
        Some(&self.bufs[i][..len])
    }

    /// The first bytes of datagram `i`, truncated or not.
    pub(crate) fn packet_prefix(&self, i: usize) -> &[u8] {
        let len = usize::try_from(self.hdrs[i].msg_len).unwrap_or(0).min(SLOT);
        &self.bufs[i][..len]
    }

    /// Sender of datagram `i`, raw (to answer it) and decoded.
    pub(crate) fn addr(
        &self,
        i: usize,
    ) -> (&libc::sockaddr_storage, libc::socklen_t, Option<SocketAddr>) {
        let a = &self.addrs[i];
        (a, self.hdrs[i].msg_hdr.msg_namelen, to_socket_addr(a))
    }
}

/// Send side: up to [`BATCH`] responses, flushed with one `sendmmsg`.
pub(crate) struct SendBatch {
    bufs: Vec<Vec<u8>>,
    addrs: Box<[libc::sockaddr_storage]>,
    lens: [libc::socklen_t; BATCH],
    iov: Box<[libc::iovec]>,
    hdrs: Box<[libc::mmsghdr]>,
    n: usize,
}

impl SendBatch {
    pub(crate) fn new() -> Self {
        Self {
            bufs: (0..BATCH).map(|_| Vec::with_capacity(1500)).collect(),
            // SAFETY: plain old data, zero is valid.
            addrs: vec![unsafe { zeroed::<libc::sockaddr_storage>() }; BATCH].into_boxed_slice(),
            lens: [0; BATCH],
            iov: (0..BATCH)
                .map(|_| libc::iovec {
                    iov_base: null_mut(),
                    iov_len: 0,
                })
                .collect(),
            // SAFETY: plain old data, zero is valid; pointers are set in `flush`.
            hdrs: (0..BATCH).map(|_| unsafe { zeroed() }).collect(),
            n: 0,
        }
    }

    /// The buffer for the next response (cleared by the writer).
    pub(crate) fn next_buf(&mut self) -> &mut Vec<u8> {
        &mut self.bufs[self.n]
    }

    /// Queues the next buffer for `addr`.
    pub(crate) fn commit(&mut self, addr: &libc::sockaddr_storage, len: libc::socklen_t) {
        self.addrs[self.n] = *addr;
        self.lens[self.n] = len;
        self.n += 1;
    }

    /// Sends every queued response; errors on individual datagrams are skipped.
    pub(crate) fn flush(&mut self, fd: RawFd) {
        let total = self.n;
        for i in 0..total {
            self.iov[i].iov_base = self.bufs[i].as_mut_ptr().cast();
            self.iov[i].iov_len = self.bufs[i].len();
            let h = &mut self.hdrs[i];
            h.msg_hdr.msg_iov = std::ptr::from_mut(&mut self.iov[i]);
            h.msg_hdr.msg_iovlen = 1;
            h.msg_hdr.msg_name = std::ptr::from_mut(&mut self.addrs[i]).cast();
            h.msg_hdr.msg_namelen = self.lens[i];
        }
        let mut sent = 0;
        while sent < total {
            let count = u32::try_from(total - sent).expect("invariant: at most BATCH");
            // SAFETY: headers `sent..total` point at live iovecs, buffers and addresses owned
            // by `self`, with their true lengths.
            let r = unsafe { libc::sendmmsg(fd, self.hdrs[sent..].as_mut_ptr(), count, 0) };
            match usize::try_from(r) {
                Ok(0) => break,
                Ok(k) => sent += k,
                Err(_) => {
                    let err = io::Error::last_os_error();
                    if err.kind() == io::ErrorKind::Interrupted {
                        continue;
                    }
                    // Skip the datagram that failed (for example an unreachable peer).
                    tracing::debug!(error = %err, "udp send failed");
                    sent += 1;
                }
            }
        }
        self.n = 0;
    }

    /// Queued responses.
    pub(crate) fn len(&self) -> usize {
        self.n
    }
}
