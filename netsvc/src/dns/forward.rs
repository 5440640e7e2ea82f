//! Forwarding of names outside our zones to upstream resolvers, with a small answer cache.
//!
//! The query is forwarded as received (new ID, from a fresh random port); a truncated upstream
//! answer is retried over TCP. Positive answers are cached for their smallest TTL, negative ones
//! for the SOA minimum (RFC 2308); TTLs are decremented on the way out.

use std::collections::HashMap;
use std::hash::{BuildHasher, Hasher};
use std::net::SocketAddr;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use hickory_proto::op::{Message, ResponseCode};
use hickory_proto::rr::RData;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};
use tokio::time::timeout;
use tracing::debug;

use super::codec::{self, HEADER_LEN};

const UPSTREAM_TIMEOUT: Duration = Duration::from_millis(1500);
const MAX_CACHE_TTL: u32 = 86_400;

#[derive(Debug)]
struct Entry {
    stored: Instant,
    ttl: u32,
    response: Vec<u8>,
}

/// Forwarder with its cache.
#[derive(Debug)]
pub(crate) struct Forwarder {
    upstreams: Vec<SocketAddr>,
    capacity: usize,
    cache: Mutex<HashMap<Vec<u8>, Entry>>,
    counter: AtomicU64,
    hasher: std::hash::RandomState,
}

/// Cache key: the lowercased question (name, type, class).
fn cache_key(pkt: &[u8]) -> Option<Vec<u8>> {
    let end = codec::question_end(pkt)?;
    Some(pkt[HEADER_LEN..end].to_ascii_lowercase())
}

/// Smallest TTL of an answer, or the negative TTL from the SOA; `None` when not cacheable.
fn cache_ttl(msg: &Message) -> Option<u32> {
    match msg.metadata.response_code {
        ResponseCode::NoError if !msg.answers.is_empty() => msg.answers.iter().map(|r| r.ttl).min(),
        ResponseCode::NoError | ResponseCode::NXDomain => {
            msg.authorities.iter().find_map(|r| match &r.data {
                RData::SOA(soa) => Some(r.ttl.min(soa.minimum)),
                _ => None,
            })
        }
        _ => None,
    }
    .map(|t| t.min(MAX_CACHE_TTL))
    .filter(|&t| t > 0)
}

impl Forwarder {
    pub(crate) fn new(upstreams: Vec<SocketAddr>, capacity: usize) -> Self {
        Self {
            upstreams,
            capacity,
            cache: Mutex::new(HashMap::new()),
            counter: AtomicU64::new(0),
            hasher: std::hash::RandomState::new(),
        }
    }

    fn random_id(&self) -> u16 {
        let mut h = self.hasher.build_hasher();
        h.write_u64(self.counter.fetch_add(1, Ordering::Relaxed));
        h.write_u128(Instant::now().elapsed().as_nanos());
        u16::try_from(h.finish() & 0xFFFF).expect("invariant: masked to 16 bits")
    }

    /// Answers `pkt` (a query for a name outside our zones) from the cache or an upstream.
    /// `None` when every upstream failed.
    pub(crate) async fn resolve(&self, pkt: &[u8]) -> Option<Vec<u8>> {
        let key = cache_key(pkt)?;
        let client_id = [pkt[0], pkt[1]];
        if let Some(resp) = self.cached(&key, pkt) {
            return Some(resp);
        }
        let mut query = pkt.to_vec();
        for upstream in &self.upstreams {
            let id = self.random_id();
            query[..2].copy_from_slice(&id.to_be_bytes());
            let Some(mut resp) = self.ask(*upstream, &query, id).await else {
                continue;
            };
            if let Ok(msg) = Message::from_vec(&resp)
                && let Some(ttl) = cache_ttl(&msg)
            {
                let mut cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
                if cache.len() >= self.capacity {
                    cache.retain(|_, e| e.stored.elapsed().as_secs() < u64::from(e.ttl));
                    if cache.len() >= self.capacity {
                        cache.clear();
                    }
                }
                cache.insert(
                    key,
                    Entry {
                        stored: Instant::now(),
                        ttl,
                        response: resp.clone(),
                    },
                );
            }
            resp[..2].copy_from_slice(&client_id);
            return Some(resp);
        }
        None
    }

    fn cached(&self, key: &[u8], pkt: &[u8]) -> Option<Vec<u8>> {
        let (elapsed, response) = {
            let cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
            let e = cache.get(key)?;
            let elapsed = e.stored.elapsed().as_secs();
            if elapsed >= u64::from(e.ttl) {
                return None;
            }
            (
                u32::try_from(elapsed).unwrap_or(u32::MAX),
                e.response.clone(),
            )
        };
        let mut msg = Message::from_vec(&response).ok()?;
        for r in msg
            .answers
            .iter_mut()
            .chain(msg.authorities.iter_mut())
            .chain(msg.additionals.iter_mut())
        {
            r.decrement_ttl(elapsed);
        }
        let mut out = msg.to_vec().ok()?;
        out[..2].copy_from_slice(&pkt[..2]);
        // Give the client back its question exactly (case included, for 0x20 checks).
        let (Some(qa), Some(qb)) = (codec::question_end(pkt), codec::question_end(&out)) else {
            return Some(out);
        };
        if qa == qb {
            out[HEADER_LEN..qa].copy_from_slice(&pkt[HEADER_LEN..qa]);
        }
        debug!("forward cache hit");
        Some(out)
    }

    async fn ask(&self, upstream: SocketAddr, query: &[u8], id: u16) -> Option<Vec<u8>> {
        let bind: SocketAddr = if upstream.is_ipv4() {
            SocketAddr::from(([0, 0, 0, 0], 0))
        } else {
            SocketAddr::from(([0u16; 8], 0))
        };
        let sock = UdpSocket::bind(bind).await.ok()?;
        sock.connect(upstream).await.ok()?;
        sock.send(query).await.ok()?;
        let mut buf = vec![0u8; 65_535];
        let deadline = Instant::now() + UPSTREAM_TIMEOUT;
        loop {
            let left = deadline.checked_duration_since(Instant::now())?;
            let n = timeout(left, sock.recv(&mut buf)).await.ok()?.ok()?;
            let resp = &buf[..n];
            let Some(h) = codec::RawHeader::read(resp) else {
                continue;
            };
            if h.id != id || !h.is_response() {
                continue;
            }
            if h.flags & 0x0200 != 0 {
                debug!(%upstream, "upstream answer truncated, retrying over tcp");
                return self.ask_tcp(upstream, query).await;
            }
            return Some(resp.to_vec());
        }
    }

    async fn ask_tcp(&self, upstream: SocketAddr, query: &[u8]) -> Option<Vec<u8>> {
        let work = async {
            let mut s = TcpStream::connect(upstream).await.ok()?;
            let len = u16::try_from(query.len()).ok()?;
            let mut framed = len.to_be_bytes().to_vec();
            framed.extend_from_slice(query);
            s.write_all(&framed).await.ok()?;
            let n = usize::from(s.read_u16().await.ok()?);
            let mut buf = vec![0u8; n];
            s.read_exact(&mut buf).await.ok()?;
            Some(buf)
        };
        timeout(UPSTREAM_TIMEOUT, work).await.ok()?
    }
}
