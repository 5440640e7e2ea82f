//! Leases and the in-memory address table the server allocates from. Pure: the caller
//! passes the clock in and persists what the methods return.

use std::collections::HashMap;
use std::net::Ipv4Addr;

use crate::MacAddr;

/// Where a lease stands. A row per address is kept; only `Bound` and `Declined` hold the address.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum LeaseState {
    /// ACKed and live until `expires`.
    Bound,
    /// The client released it.
    Released,
    /// The client declined it (address in use on the link): quarantined until `expires`.
    Declined,
    /// It ran out.
    Expired,
}

impl LeaseState {
    /// Stable name used in the store.
    pub fn as_str(self) -> &'static str {
        match self {
            LeaseState::Bound => "bound",
            LeaseState::Released => "released",
            LeaseState::Declined => "declined",
            LeaseState::Expired => "expired",
        }
    }

    /// Inverse of [`LeaseState::as_str`].
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "bound" => LeaseState::Bound,
            "released" => LeaseState::Released,
            "declined" => LeaseState::Declined,
            "expired" => LeaseState::Expired,
            _ => return None,
        })
    }
}

/// One address lease.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    /// The leased address.
    pub ip: Ipv4Addr,
    /// The client's hardware address.
    pub mac: MacAddr,
    /// Option 61, when the client sent one.
    pub client_id: Option<Vec<u8>>,
    /// Hostname: the reservation's, else what the client sent.
    pub hostname: Option<String>,
    /// End of the lease (or of the quarantine), seconds since the Unix epoch.
    pub expires: u64,
    /// Its state.
    pub state: LeaseState,
    /// Where this binding stands in the order bindings began: taken from a counter that only
    /// grows (across restarts too) when a client first binds an address or changes its
    /// hostname; renewals keep it, and so does a move to another address under the same name.
    /// Replaying leases by `seq` replays who got a name first (0: stored before it existed).
    pub seq: u64,
}

impl Lease {
    /// Live: bound and not yet expired at `now`.
    pub fn is_live(&self, now: u64) -> bool {
        self.state == LeaseState::Bound && self.expires > now
    }
}

/// The state of one address in the table.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Slot {
    /// Offered to `mac`, held until `until`; not persisted (an offer is not a promise).
    Offered { mac: MacAddr, until: u64 },
    /// Bound or quarantined (`Declined`), per the lease.
    Held(Lease),
}

/// A request for an address that another client holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("address {ip} is held by another client")]
pub struct Conflict {
    /// The address asked for.
    pub ip: Ipv4Addr,
}

/// Inclusive address ranges a subnet allocates from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pool {
    ranges: Vec<(u32, u32)>,
}

impl Pool {
    /// A pool over inclusive `(start, end)` ranges (empty ranges are ignored).
    pub fn new(ranges: &[(Ipv4Addr, Ipv4Addr)]) -> Self {
        Pool {
            ranges: ranges
                .iter()
                .map(|(s, e)| (u32::from(*s), u32::from(*e)))
                .filter(|(s, e)| s <= e)
                .collect(),
        }
    }

    /// Whether `ip` is in one of the ranges.
    pub fn contains(&self, ip: Ipv4Addr) -> bool {
        let ip = u32::from(ip);
        self.ranges.iter().any(|(s, e)| (*s..=*e).contains(&ip))
    }

    fn size(&self) -> u64 {
        self.ranges.iter().map(|(s, e)| u64::from(e - s) + 1).sum()
    }

    /// The `n`-th address of the pool (modulo its size).
    fn nth(&self, n: u64) -> Option<Ipv4Addr> {
        let size = self.size();
        if size == 0 {
            return None;
        }
        let mut n = n % size;
        for (s, e) in &self.ranges {
            let len = u64::from(e - s) + 1;
            if n < len {
                let off = u32::try_from(n).expect("invariant: offset within a u32 range");
                return Some(Ipv4Addr::from(s + off));
            }
            n -= len;
        }
        None
    }
}

/// The address table: who holds what, plus each client's last address for stickiness.
#[derive(Debug, Default)]
pub struct LeaseTable {
    slots: HashMap<Ipv4Addr, Slot>,
    last_ip: HashMap<MacAddr, Ipv4Addr>,
    cursor: u64,
    /// The next [`Lease::seq`].
    next_seq: u64,
}

impl LeaseTable {
    /// Rebuilds the table from stored leases (after a restart).
    ///
    /// A client holds one address: when the store has several live bindings of one MAC (a move
    /// persists only the new address), the one that expires last wins and the others are free.
    pub fn from_leases(leases: impl IntoIterator<Item = Lease>, now: u64) -> Self {
        let mut leases: Vec<Lease> = leases.into_iter().collect();
        leases.sort_by_key(|l| (l.is_live(now), l.expires));
        let mut t = LeaseTable::default();
        for l in leases {
            t.next_seq = t.next_seq.max(l.seq + 1);
            if l.is_live(now)
                && let Some(old) = t.last_ip.get(&l.mac).copied()
                && matches!(t.slots.get(&old), Some(Slot::Held(h)) if h.mac == l.mac && h.is_live(now))
            {
                t.slots.remove(&old);
            }
            t.last_ip.insert(l.mac, l.ip);
            let holds = matches!(l.state, LeaseState::Bound | LeaseState::Declined);
            if holds && l.expires > now {
                t.slots.insert(l.ip, Slot::Held(l));
            }
        }
        t
    }

    /// Who holds `ip` at `now`, if anyone (expired holds count as free).
    fn holder(&self, ip: Ipv4Addr, now: u64) -> Option<Option<MacAddr>> {
        match self.slots.get(&ip)? {
            Slot::Offered { mac, until } => (*until > now).then_some(Some(*mac)),
            Slot::Held(l) if l.expires <= now => None,
            Slot::Held(l) if l.state == LeaseState::Declined => Some(None),
            Slot::Held(l) => Some(Some(l.mac)),
        }
    }

    /// `ip` is free for `mac`: nobody else holds it.
    pub fn available_to(&self, ip: Ipv4Addr, mac: MacAddr, now: u64) -> bool {
        match self.holder(ip, now) {
            None => true,
            Some(holder) => holder == Some(mac),
        }
    }

    /// The table has a record of `mac`: an offer, or a lease in any state (stored ones too).
    pub fn knows(&self, mac: MacAddr) -> bool {
        self.last_ip.contains_key(&mac)
    }

    /// The live lease `mac` holds, if any.
    pub fn lease_of(&self, mac: MacAddr, now: u64) -> Option<&Lease> {
        let ip = self.last_ip.get(&mac)?;
        match self.slots.get(ip)? {
            Slot::Held(l) if l.mac == mac && l.is_live(now) => Some(l),
            _ => None,
        }
    }

    /// Picks an address to offer `mac` and holds it until `until`. Preference: `fixed`
    /// (a reservation), the client's current or last address, `requested`, then the first free
    /// pool address. `reserved` says whether an address is reserved for some other client;
    /// `(now, until)` is the clock and the end of the hold.
    pub fn offer(
        &mut self,
        pool: &Pool,
        mac: MacAddr,
        fixed: Option<Ipv4Addr>,
        requested: Option<Ipv4Addr>,
        reserved: impl Fn(Ipv4Addr) -> bool,
        (now, until): (u64, u64),
    ) -> Option<Ipv4Addr> {
        let ip = if let Some(ip) = fixed {
            self.available_to(ip, mac, now).then_some(ip)?
        } else {
            let usable = |t: &Self, ip: Ipv4Addr| {
                pool.contains(ip) && !reserved(ip) && t.available_to(ip, mac, now)
            };
            let sticky = self.last_ip.get(&mac).copied();
            if let Some(ip) = sticky.filter(|ip| usable(self, *ip)) {
                ip
            } else if let Some(ip) = requested.filter(|ip| usable(self, *ip)) {
                ip
            } else {
                let size = pool.size();
                let mut found = None;
                for i in 0..size {
                    let ip = pool.nth(self.cursor + i)?;
                    // Skip addresses that some other client used last, while others are free.
                    if usable(self, ip) && !self.slots.contains_key(&ip) {
                        self.cursor = self.cursor + i + 1;
                        found = Some(ip);
                        break;
                    }
                }
                match found {
                    Some(ip) => ip,
                    // Pool exhausted of never-held slots: reuse an expired or released one.
                    None => (0..size)
                        .filter_map(|i| pool.nth(i))
                        .find(|ip| usable(self, *ip))?,
                }
            }
        };
        if !matches!(self.slots.get(&ip), Some(Slot::Held(l)) if l.mac == mac && l.is_live(now)) {
            self.slots.insert(ip, Slot::Offered { mac, until });
        }
        self.last_ip.insert(mac, ip);
        Some(ip)
    }

    /// Binds (or renews) `ip` to `mac` until `expires`. The returned lease must be persisted
    /// before the ACK goes out.
    pub fn bind(
        &mut self,
        ip: Ipv4Addr,
        mac: MacAddr,
        client_id: Option<Vec<u8>>,
        hostname: Option<String>,
        now: u64,
        expires: u64,
    ) -> Result<Lease, Conflict> {
        if !self.available_to(ip, mac, now) {
            return Err(Conflict { ip });
        }
        // The binding this one continues, if any: this client's live lease of this address
        // (a renewal) or of its previous one (a move), under the same hostname.
        let continued = |slot: Option<&Slot>| match slot {
            Some(Slot::Held(l)) if l.mac == mac && l.is_live(now) && l.hostname == hostname => {
                Some(l.seq)
            }
            _ => None,
        };
        let mut seq = continued(self.slots.get(&ip));
        // A client holds one address: moving frees the old one.
        if let Some(old) = self.last_ip.insert(mac, ip).filter(|old| *old != ip)
            && match self.slots.get(&old) {
                Some(Slot::Held(l)) => l.mac == mac && l.state == LeaseState::Bound,
                Some(Slot::Offered { mac: m, .. }) => *m == mac,
                None => false,
            }
        {
            seq = seq.or(continued(self.slots.get(&old)));
            self.slots.remove(&old);
        }
        let seq = seq.unwrap_or_else(|| self.take_seq());
        let lease = Lease {
            ip,
            mac,
            client_id,
            hostname,
            expires,
            state: LeaseState::Bound,
            seq,
        };
        self.slots.insert(ip, Slot::Held(lease.clone()));
        Ok(lease)
    }

    fn take_seq(&mut self) -> u64 {
        // A table not built by `from_leases` starts at 1 too: 0 means "unknown".
        let seq = self.next_seq.max(1);
        self.next_seq = seq + 1;
        seq
    }

    /// The client gave `ip` back. Returns the ended lease to persist.
    pub fn release(&mut self, ip: Ipv4Addr, mac: MacAddr, now: u64) -> Option<Lease> {
        match self.slots.get(&ip) {
            Some(Slot::Held(l)) if l.mac == mac && l.state == LeaseState::Bound => {
                let mut l = l.clone();
                self.slots.remove(&ip);
                l.state = LeaseState::Released;
                l.expires = now;
                Some(l)
            }
            Some(Slot::Offered { mac: m, .. }) if *m == mac => {
                self.slots.remove(&ip);
                None
            }
            _ => None,
        }
    }

    /// The client found `ip` in use on the link: quarantine it until `until`.
    pub fn decline(&mut self, ip: Ipv4Addr, mac: MacAddr, now: u64, until: u64) -> Option<Lease> {
        if !self.available_to(ip, mac, now) {
            return None;
        }
        let lease = Lease {
            ip,
            mac,
            client_id: None,
            hostname: None,
            expires: until,
            state: LeaseState::Declined,
            seq: self.take_seq(),
        };
        self.slots.insert(ip, Slot::Held(lease.clone()));
        self.last_ip.remove(&mac);
        Some(lease)
    }

    /// Drops an offer `mac` did not take (it chose another server).
    pub fn withdraw_offer(&mut self, mac: MacAddr) {
        if let Some(ip) = self.last_ip.get(&mac)
            && matches!(self.slots.get(ip), Some(Slot::Offered { mac: m, .. }) if *m == mac)
        {
            self.slots.remove(ip);
        }
    }

    /// Removes what ran out by `now`; returns the bound leases that expired (to persist and
    /// report).
    pub fn expire(&mut self, now: u64) -> Vec<Lease> {
        let mut ended = Vec::new();
        self.slots.retain(|_, slot| match slot {
            Slot::Offered { until, .. } => *until > now,
            Slot::Held(l) if l.expires > now => true,
            Slot::Held(l) => {
                if l.state == LeaseState::Bound {
                    let mut l = l.clone();
                    l.state = LeaseState::Expired;
                    ended.push(l);
                }
                false
            }
        });
        ended
    }

    /// Every live lease at `now`.
    pub fn live_leases(&self, now: u64) -> Vec<Lease> {
        let mut v: Vec<Lease> = self
            .slots
            .values()
            .filter_map(|s| match s {
                Slot::Held(l) if l.is_live(now) => Some(l.clone()),
                _ => None,
            })
            .collect();
        v.sort_by_key(|l| l.ip);
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: MacAddr = MacAddr([2, 0, 0, 0, 0, 1]);
    const B: MacAddr = MacAddr([2, 0, 0, 0, 0, 2]);

    fn ip(last: u8) -> Ipv4Addr {
        Ipv4Addr::new(10, 61, 0, last)
    }

    fn pool() -> Pool {
        Pool::new(&[(ip(10), ip(12))])
    }

    fn none(_: Ipv4Addr) -> bool {
        false
    }

    #[test]
    fn offer_bind_renew_release() {
        let mut t = LeaseTable::default();
        let p = pool();
        let a = t.offer(&p, A, None, None, none, (0, 30)).expect("free");
        assert_eq!(a, ip(10));
        // The offer holds the address against others until it times out.
        assert!(!t.available_to(a, B, 10));
        assert!(t.available_to(a, B, 31));
        let b = t.offer(&p, B, None, Some(a), none, (10, 40)).expect("free");
        assert_eq!(b, ip(11));
        let l = t.bind(a, A, None, None, 10, 100).expect("bind");
        assert!(l.is_live(50));
        assert_eq!(t.bind(a, B, None, None, 20, 100), Err(Conflict { ip: a }));
        // Renew moves the expiry.
        assert_eq!(
            t.bind(a, A, None, None, 90, 200).expect("renew").expires,
            200
        );
        assert_eq!(t.lease_of(A, 150).map(|l| l.ip), Some(a));
        // Release frees it, but A gets the same address back next time.
        let ended = t.release(a, A, 150).expect("released");
        assert_eq!(ended.state, LeaseState::Released);
        assert!(t.available_to(a, B, 151));
        assert_eq!(t.offer(&p, A, None, None, none, (160, 190)), Some(a));
        // Releasing someone else's address does nothing.
        assert_eq!(t.release(b, A, 161), None);
    }

    #[test]
    fn decline_quarantines() {
        let mut t = LeaseTable::default();
        let p = pool();
        let a = t.offer(&p, A, None, None, none, (0, 30)).expect("free");
        t.bind(a, A, None, None, 0, 100).expect("bind");
        let q = t.decline(a, A, 1, 1000).expect("declined");
        assert_eq!(q.state, LeaseState::Declined);
        assert!(!t.available_to(a, A, 500));
        assert!(!t.available_to(a, B, 500));
        assert_ne!(t.offer(&p, A, None, Some(a), none, (2, 30)), Some(a));
        assert!(t.available_to(a, B, 1001));
    }

    #[test]
    fn expiry_and_restart() {
        let mut t = LeaseTable::default();
        let p = pool();
        let a = t.offer(&p, A, None, None, none, (0, 30)).expect("free");
        let l = t.bind(a, A, None, Some("h1".into()), 0, 100).expect("bind");
        let b = t.offer(&p, B, None, None, none, (0, 30)).expect("free");
        // After a restart the bound lease holds, the bare offer does not.
        let t2 = LeaseTable::from_leases([l.clone()], 50);
        assert!(!t2.available_to(a, B, 50));
        assert!(t2.available_to(b, A, 50));
        assert_eq!(t2.live_leases(50), vec![l]);
        let ended = t.expire(100);
        assert_eq!(ended.len(), 1);
        assert_eq!(ended[0].state, LeaseState::Expired);
        assert!(t.live_leases(100).is_empty());
    }

    #[test]
    fn pool_exhaustion_and_reservations() {
        let mut t = LeaseTable::default();
        let p = pool();
        let reserved = |ip: Ipv4Addr| ip == Ipv4Addr::new(10, 61, 0, 11);
        let macs: Vec<MacAddr> = (0..4).map(|i| MacAddr([2, 1, 0, 0, 0, i])).collect();
        assert_eq!(
            t.offer(&p, macs[0], None, None, reserved, (0, 30)),
            Some(ip(10))
        );
        assert_eq!(
            t.offer(&p, macs[1], None, None, reserved, (0, 30)),
            Some(ip(12))
        );
        assert_eq!(t.offer(&p, macs[2], None, None, reserved, (0, 30)), None);
        // The reservation holder gets its address even outside the pool.
        let fixed = Ipv4Addr::new(10, 61, 0, 200);
        assert_eq!(
            t.offer(&p, macs[3], Some(fixed), None, reserved, (0, 30)),
            Some(fixed)
        );
        assert_eq!(
            t.offer(&p, macs[2], None, None, reserved, (31, 60)),
            Some(ip(10))
        );
    }

    #[test]
    fn moving_frees_old_address() {
        let mut t = LeaseTable::default();
        t.bind(ip(10), A, None, None, 0, 100).expect("bind");
        t.bind(ip(11), A, None, None, 1, 100).expect("bind");
        assert!(t.available_to(ip(10), B, 2));
        assert_eq!(t.live_leases(2).len(), 1);
    }

    #[test]
    fn seq_orders_bindings_and_survives_renewal_move_and_restart() {
        let mut t = LeaseTable::default();
        let web = || Some("web".to_owned());
        let a = t.bind(ip(10), A, None, web(), 0, 100).expect("bind").seq;
        let b = t.bind(ip(11), B, None, web(), 1, 100).expect("bind").seq;
        assert!(0 < a && a < b, "{a} {b}");
        // Renewing, or moving under the same name, continues the binding.
        assert_eq!(
            t.bind(ip(10), A, None, web(), 50, 150).expect("renew").seq,
            a
        );
        assert_eq!(
            t.bind(ip(12), A, None, web(), 60, 160).expect("move").seq,
            a
        );
        // A new name, or binding again after the lease ran out, is a new binding.
        let renamed = t
            .bind(ip(11), B, None, Some("db".into()), 70, 170)
            .expect("rename");
        assert!(renamed.seq > b);
        let late = t
            .bind(ip(12), A, None, web(), 200, 300)
            .expect("after expiry");
        assert!(late.seq > renamed.seq);
        // After a restart the counter goes on from the highest stored value.
        let mut t2 = LeaseTable::from_leases([renamed.clone(), late.clone()], 250);
        assert_eq!(
            t2.bind(ip(12), A, None, web(), 260, 360)
                .expect("renew")
                .seq,
            late.seq
        );
        assert!(t2.bind(ip(13), B, None, None, 260, 360).expect("bind").seq > late.seq);
    }

    #[test]
    fn restart_keeps_one_address_per_client() {
        let mut t = LeaseTable::default();
        let old = t.bind(ip(10), A, None, None, 0, 200).expect("bind");
        // The move persists only the new lease: the store still has both as bound.
        let new = t.bind(ip(11), A, None, None, 10, 210).expect("move");
        for stored in [
            vec![old.clone(), new.clone()],
            vec![new.clone(), old.clone()],
        ] {
            let t2 = LeaseTable::from_leases(stored, 50);
            assert_eq!(t2.live_leases(50), vec![new.clone()]);
            assert_eq!(t2.lease_of(A, 50).map(|l| l.ip), Some(ip(11)));
            assert!(t2.available_to(ip(10), B, 50));
        }
    }
}
