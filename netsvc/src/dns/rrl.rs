//! Response-rate limiting of UDP answers: a token bucket per client network.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::Instant;

use super::config::RateLimit;

const SHARDS: usize = 16;
/// Buckets per shard before idle ones are dropped.
const MAX_BUCKETS: usize = 16_384;

/// What to do with one response.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// Within the limit: send it.
    Send,
    /// Over the limit, slip: send an empty truncated answer instead.
    Slip,
    /// Over the limit: send nothing.
    Drop,
}

#[derive(Debug, Clone, Copy)]
struct Bucket {
    /// Thousandths of a response.
    milli_tokens: u64,
    last_ms: u64,
    suppressed: u32,
}

/// The limiter, shared by every UDP worker.
#[derive(Debug)]
pub(crate) struct Rrl {
    limit: RateLimit,
    epoch: Instant,
    shards: Vec<Mutex<HashMap<u64, Bucket>>>,
}

/// The client network a response is accounted to: /24 for IPv4, /56 for IPv6.
fn prefix(ip: IpAddr) -> u64 {
    match ip {
        IpAddr::V4(v4) => u64::from(u32::from(v4) >> 8),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => u64::from(u32::from(v4) >> 8),
            None => {
                let hi = u128::from(v6) >> 72;
                (1 << 63) | u64::try_from(hi & 0x7FFF_FFFF_FFFF_FFFF).expect("invariant: masked")
            }
        },
    }
}

impl Rrl {
    pub(crate) fn new(limit: RateLimit) -> Self {
        Self {
            limit,
            epoch: Instant::now(),
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
        }
    }

    /// Accounts one response to `ip` and says whether to send it.
    pub(crate) fn check(&self, ip: IpAddr) -> Verdict {
        let now_ms = u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX);
        let key = prefix(ip);
        let shard = usize::try_from(key % SHARDS as u64).expect("invariant: below 16");
        let rate = u64::from(self.limit.responses_per_second.get());
        let cap = rate * 1000;
        let mut map = self.shards[shard].lock().unwrap_or_else(|e| e.into_inner());
        if map.len() >= MAX_BUCKETS {
            map.retain(|_, b| now_ms.saturating_sub(b.last_ms) < 2000);
            if map.len() >= MAX_BUCKETS {
                map.clear();
            }
        }
        let b = map.entry(key).or_insert(Bucket {
            milli_tokens: cap,
            last_ms: now_ms,
            suppressed: 0,
        });
        let elapsed = now_ms.saturating_sub(b.last_ms);
        b.milli_tokens = (b.milli_tokens + elapsed * rate).min(cap);
        b.last_ms = now_ms;
        if b.milli_tokens >= 1000 {
            b.milli_tokens -= 1000;
            return Verdict::Send;
        }
        b.suppressed = b.suppressed.wrapping_add(1);
        if self.limit.slip != 0 && b.suppressed.is_multiple_of(self.limit.slip) {
            Verdict::Slip
        } else {
            Verdict::Drop
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::num::NonZeroU32;

    #[test]
    fn limits_per_network_and_slips() {
        let rrl = Rrl::new(RateLimit {
            responses_per_second: NonZeroU32::new(10).unwrap(),
            slip: 2,
        });
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        let b: IpAddr = "192.0.2.77".parse().unwrap();
        let other: IpAddr = "198.51.100.1".parse().unwrap();
        let sent = (0..10).filter(|_| rrl.check(a) == Verdict::Send).count();
        assert_eq!(sent, 10);
        let over: Vec<Verdict> = (0..4).map(|_| rrl.check(b)).collect();
        assert_eq!(
            over,
            [Verdict::Drop, Verdict::Slip, Verdict::Drop, Verdict::Slip]
        );
        assert_eq!(rrl.check(other), Verdict::Send);
    }
}
