//! One read transfer on its own socket: optional OACK handshake, then DATA blocks sent in
//! windows (a window of 1 is RFC 1350's lock-step), retransmitted on timeout.
//!
//! A transfer runs on a blocking thread with a blocking socket, as tftpd-hpa runs a process:
//! lock-step TFTP is one round trip per block, and a blocking `recv` wakes faster than a
//! runtime's reactor. The server bounds how many run at once.

use std::collections::VecDeque;
use std::io;
use std::net::UdpSocket;
use std::os::unix::fs::FileExt;
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

use super::codec::{self, ErrorCode, Packet};
use super::policy::Negotiated;
use super::root::Content;

/// Bytes read from a file at a time.
const CHUNK: usize = 256 * 1024;

/// How a transfer ended badly.
#[derive(Debug, thiserror::Error)]
pub(crate) enum TransferError {
    #[error("socket error")]
    Socket(#[source] io::Error),
    #[error("failed to read the file")]
    Read(#[source] io::Error),
    #[error("no acknowledgement of block {block} after {retries} retransmissions")]
    TimedOut { block: u16, retries: u32 },
    #[error("client sent error {code}: {message}")]
    Client { code: ErrorCode, message: String },
    #[error("server shutting down")]
    Cancelled,
}

/// Produces the bytes on the wire: the content, converted to netascii if asked.
struct Reader {
    content: Content,
    netascii: bool,
    pos: u64,
    chunk: Vec<u8>,
    at: usize,
    eof: bool,
}

impl Reader {
    fn new(content: Content, netascii: bool) -> Self {
        Reader {
            content,
            netascii,
            pos: 0,
            chunk: Vec::new(),
            at: 0,
            eof: false,
        }
    }

    /// Appends up to `n` bytes to `out`; fewer only at the end of the content.
    fn fill(&mut self, out: &mut Vec<u8>, n: usize) -> io::Result<()> {
        let mut need = n;
        while need > 0 {
            if self.at == self.chunk.len() && !self.refill()? {
                break;
            }
            let take = need.min(self.chunk.len() - self.at);
            out.extend_from_slice(&self.chunk[self.at..self.at + take]);
            self.at += take;
            need -= take;
        }
        Ok(())
    }

    /// Loads the next chunk; `false` at the end of the content.
    fn refill(&mut self) -> io::Result<bool> {
        if self.eof {
            return Ok(false);
        }
        let mut raw = std::mem::take(&mut self.chunk);
        raw.clear();
        match &self.content {
            Content::Memory(m) => {
                let start = usize::try_from(self.pos).unwrap_or(usize::MAX).min(m.len());
                let end = start.saturating_add(CHUNK).min(m.len());
                raw.extend_from_slice(&m[start..end]);
            }
            Content::File { file, .. } => {
                raw.resize(CHUNK, 0);
                let mut got = 0;
                while got < CHUNK {
                    match file.read_at(&mut raw[got..], self.pos + got as u64) {
                        Ok(0) => break,
                        Ok(n) => got += n,
                        Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                        Err(e) => return Err(e),
                    }
                }
                raw.truncate(got);
            }
        }
        self.pos += raw.len() as u64;
        if raw.len() < CHUNK {
            self.eof = true;
        }
        self.chunk = if self.netascii {
            to_netascii(&raw)
        } else {
            raw
        };
        self.at = 0;
        Ok(!self.chunk.is_empty())
    }
}

/// Unix text to netascii: LF becomes CR LF, a bare CR becomes CR NUL.
fn to_netascii(raw: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(raw.len() + raw.len() / 16);
    for &b in raw {
        match b {
            b'\n' => out.extend_from_slice(b"\r\n"),
            b'\r' => out.extend_from_slice(b"\r\0"),
            b => out.push(b),
        }
    }
    out
}

/// What a finished transfer sent.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Stats {
    pub(crate) bytes: u64,
    pub(crate) retransmits: u64,
}

/// Longest a blocking `recv` waits before the transfer looks at its deadline and at shutdown.
const SLICE: Duration = Duration::from_millis(200);

/// Waits up to `timeout` for the next ACK (or ERROR) on `sock`; `None` on timeout. Other
/// packets are ignored. The socket's read timeout must be at most [`SLICE`].
fn recv_ack(
    sock: &UdpSocket,
    buf: &mut [u8],
    timeout: Duration,
    cancel: &CancellationToken,
) -> Result<Option<u16>, TransferError> {
    let deadline = Instant::now() + timeout;
    loop {
        if cancel.is_cancelled() {
            return Err(TransferError::Cancelled);
        }
        match sock.recv(buf) {
            Ok(n) => match codec::decode(&buf[..n]) {
                Ok(Packet::Ack { block }) => return Ok(Some(block)),
                Ok(Packet::Error { code, message }) => {
                    return Err(TransferError::Client { code, message });
                }
                Ok(_) | Err(_) => tracing::trace!(len = n, "ignored packet during transfer"),
            },
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock
                        | io::ErrorKind::TimedOut
                        | io::ErrorKind::Interrupted
                ) => {}
            // An ICMP port unreachable from an earlier send: the client went away.
            Err(e) => return Err(TransferError::Socket(e)),
        }
        if Instant::now() >= deadline {
            return Ok(None);
        }
    }
}

/// Sends `content` to the peer `sock` is connected to.
pub(crate) fn send(
    sock: &UdpSocket,
    content: Content,
    netascii: bool,
    neg: &Negotiated,
    timeout: Duration,
    retries: u32,
    cancel: &CancellationToken,
) -> Result<Stats, TransferError> {
    sock.set_read_timeout(Some(timeout.min(SLICE)))
        .map_err(TransferError::Socket)?;
    let mut rbuf = vec![0u8; 1024];
    let mut stats = Stats {
        bytes: 0,
        retransmits: 0,
    };
    if !neg.oack.is_empty() {
        let oack = codec::encode(&Packet::Oack {
            options: neg.oack.clone(),
        });
        let mut tries = 0;
        loop {
            sock.send(&oack).map_err(TransferError::Socket)?;
            match recv_ack(sock, &mut rbuf, timeout, cancel)? {
                Some(0) => break,
                Some(_) => {}
                None if tries < retries => {
                    tries += 1;
                    stats.retransmits += 1;
                }
                None => return Err(TransferError::TimedOut { block: 0, retries }),
            }
        }
    }

    let blksize = usize::from(neg.blksize);
    let wsize = usize::from(neg.windowsize.max(1));
    let mut reader = Reader::new(content, netascii);
    // Encoded DATA packets sent and not yet acknowledged; the front one is block `base`.
    let mut window: VecDeque<Vec<u8>> = VecDeque::with_capacity(wsize);
    let mut spare: Vec<Vec<u8>> = Vec::new();
    let mut base: u16 = 1;
    let mut read_all = false;
    let mut tries = 0;
    loop {
        // Top the window up with new blocks.
        while window.len() < wsize && !read_all {
            let mut pkt = spare
                .pop()
                .unwrap_or_else(|| Vec::with_capacity(blksize + 4));
            pkt.clear();
            let block = base.wrapping_add(u16::try_from(window.len()).unwrap_or(u16::MAX));
            codec::put_data_header(&mut pkt, block);
            reader
                .fill(&mut pkt, blksize)
                .map_err(TransferError::Read)?;
            if pkt.len() - 4 < blksize {
                read_all = true;
            }
            stats.bytes += (pkt.len() - 4) as u64;
            sock.send(&pkt).map_err(TransferError::Socket)?;
            window.push_back(pkt);
        }
        if window.is_empty() {
            return Ok(stats);
        }
        match recv_ack(sock, &mut rbuf, timeout, cancel)? {
            Some(ack) => {
                let acked = usize::from(ack.wrapping_sub(base).wrapping_add(1));
                if (1..=window.len()).contains(&acked) {
                    spare.extend(window.drain(..acked));
                    base = base.wrapping_add(ack.wrapping_sub(base).wrapping_add(1));
                    tries = 0;
                    // The client acknowledged less than the full window: it lost the rest
                    // (RFC 7440 section 4), so resend what is left before adding more.
                    if wsize > 1 && !window.is_empty() {
                        resend(sock, &window, &mut stats)?;
                    }
                } else if wsize > 1 && acked == 0 {
                    // A repeated ACK of the block before the window: the first block was lost.
                    resend(sock, &window, &mut stats)?;
                }
                // In lock-step, a duplicate ACK is ignored (Sorcerer's Apprentice).
            }
            None if tries < retries => {
                tries += 1;
                resend(sock, &window, &mut stats)?;
            }
            None => {
                return Err(TransferError::TimedOut {
                    block: base,
                    retries,
                });
            }
        }
    }
}

fn resend(
    sock: &UdpSocket,
    window: &VecDeque<Vec<u8>>,
    stats: &mut Stats,
) -> Result<(), TransferError> {
    for pkt in window {
        sock.send(pkt).map_err(TransferError::Socket)?;
        stats.retransmits += 1;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn netascii_conversion() {
        assert_eq!(to_netascii(b"a\nb\rc\r\n"), b"a\r\nb\r\0c\r\0\r\n");
    }
}
