//! The authoritative data: zones built from the config, live host records, the SOA serials, and
//! the derived fast-path map. The master copy lives here; hickory's in-memory zone handlers in the
//! `Catalog` get every change shortly after (see `server.rs`), the fast map at once.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::net::Ipv4Addr;
use std::sync::{Arc, Mutex, MutexGuard, RwLock};
use std::time::{SystemTime, UNIX_EPOCH};

use hickory_proto::rr::rdata::{A, NS, PTR, SOA, SRV};
use hickory_proto::rr::{LowerName, Name, RData, Record, RecordSet, RecordType, RrKey};
use hickory_proto::serialize::txt::Parser;
use hickory_server::store::in_memory::InMemoryZoneHandler;
use hickory_server::zone_handler::{AxfrPolicy, ZoneType};
use ipnet::Ipv4Net;
use tokio::sync::Notify;
use tracing::{info, warn};

use super::codec::{self, CLASS_IN, FastAnswer, FastMap, FastName, FastZone, TYPE_SOA};
use super::{Config, DnsError};

/// Owner string of records from the configuration and zone files.
const STATIC_OWNER: &str = "(static)";

/// Result of [`RecordsHandle::upsert_host`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UpsertOutcome {
    /// The host now has A (and PTR, when a reverse zone covers its address) under `name`:
    /// the requested label, or with the conflict suffix when `suffixed`.
    Published {
        /// The label the host is published under.
        name: String,
        /// The requested label was taken by an earlier owner.
        suffixed: bool,
    },
    /// The owner already had exactly this name and address: nothing changed.
    Unchanged {
        /// The label the host is published under.
        name: String,
    },
    /// The label belongs to an earlier owner and no suffix is configured: no record.
    Conflict {
        /// The owner holding the label.
        holder: String,
    },
    /// The requested name is not a single valid DNS label (letters, digits, hyphens, 1–63).
    InvalidName,
}

/// Normalised (lowercase) label if `s` is a valid single host label.
pub(crate) fn valid_label(s: &str) -> Option<String> {
    let ok = !s.is_empty()
        && s.len() <= 63
        && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-');
    ok.then(|| s.to_ascii_lowercase())
}

fn unix_now() -> u32 {
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    u32::try_from(secs).unwrap_or(u32::MAX)
}

/// Reverse name of `ip` (`4.3.2.1.in-addr.arpa.`).
fn reverse_name(ip: Ipv4Addr) -> Name {
    let [a, b, c, d] = ip.octets();
    Name::from_ascii(format!("{d}.{c}.{b}.{a}.in-addr.arpa."))
        .expect("invariant: a reverse name of an IPv4 address is valid")
}

/// Reverse zones for `net`, split at octet boundaries (at most 256 zones per subnet).
fn reverse_zones(net: Ipv4Net) -> Vec<(Ipv4Net, Name)> {
    let plen = net.prefix_len();
    let zone_len = plen.div_ceil(8) * 8;
    let zone_len = zone_len.clamp(8, 24);
    let nets: Vec<Ipv4Net> = if zone_len <= plen {
        vec![Ipv4Net::new(net.network(), zone_len).expect("invariant: prefix length <= 24")]
    } else {
        net.subnets(zone_len)
            .map(|s| s.collect())
            .unwrap_or_default()
    };
    nets.into_iter()
        .map(|n| {
            let octets = n.network().octets();
            let labels = usize::from(n.prefix_len() / 8);
            let mut s = String::new();
            for o in octets[..labels].iter().rev() {
                s.push_str(&format!("{o}."));
            }
            s.push_str("in-addr.arpa.");
            (
                n,
                Name::from_ascii(s).expect("invariant: reverse zone name is valid"),
            )
        })
        .collect()
}

/// One authoritative zone.
struct Zone {
    origin: Name,
    origin_wire: Vec<u8>,
    soa: SOA,
    soa_ttl: u32,
    /// Every RRset of the zone, SOA included (hashed: hickory's name ordering is costly).
    records: HashMap<RrKey, RecordSet>,
    /// Static PTR RRsets (merged with host PTRs).
    static_ptr: HashMap<RrKey, RecordSet>,
    /// Lowercase wire names with RRsets other than A/PTR: the fast path leaves them alone.
    other_types: HashSet<Vec<u8>>,
    /// Owner names of static records: host names never take them.
    static_names: HashSet<LowerName>,
    /// Hickory's copy, in the catalog.
    handler: Arc<InMemoryZoneHandler>,
}

impl Zone {
    fn soa_record(&self) -> Record {
        Record::from_rdata(
            self.origin.clone(),
            self.soa_ttl,
            RData::SOA(self.soa.clone()),
        )
    }

    /// The SOA RR after its owner, as the fast path appends it to NXDOMAIN answers.
    fn soa_tail(&self) -> Vec<u8> {
        let mut rdata = codec::wire(&self.soa.mname);
        rdata.extend(codec::wire(&self.soa.rname));
        for v in [
            self.soa.serial,
            self.soa.refresh.cast_unsigned(),
            self.soa.retry.cast_unsigned(),
            self.soa.expire.cast_unsigned(),
            self.soa.minimum,
        ] {
            rdata.extend_from_slice(&v.to_be_bytes());
        }
        let mut out = Vec::with_capacity(rdata.len() + 10);
        out.extend_from_slice(&TYPE_SOA.to_be_bytes());
        out.extend_from_slice(&CLASS_IN.to_be_bytes());
        // RFC 2308: the negative TTL is the smaller of the SOA TTL and its minimum field.
        out.extend_from_slice(&self.soa_ttl.min(self.soa.minimum).to_be_bytes());
        let rdlen = u16::try_from(rdata.len()).expect("invariant: two names and 20 bytes");
        out.extend_from_slice(&rdlen.to_be_bytes());
        out.extend(rdata);
        out
    }
}

/// Changed RRsets of one zone (`None`: removed) with the handler to copy them into.
pub(crate) type DirtyBatch = (Arc<InMemoryZoneHandler>, Vec<(RrKey, Option<RecordSet>)>);

/// A host published by an owner.
#[derive(Debug, Clone)]
struct Host {
    requested: String,
    name: String,
    ip: Ipv4Addr,
}

/// All mutable authoritative state, under one mutex.
pub(crate) struct ZoneSet {
    zones: Vec<Zone>,
    forward: usize,
    reverse: Vec<(Ipv4Net, usize)>,
    hosts: HashMap<String, Host>,
    name_owner: HashMap<String, String>,
    ptr_names: HashMap<Ipv4Addr, BTreeSet<String>>,
    conflicts_logged: HashSet<(String, String)>,
    conflict_suffix: Option<String>,
    ttl: u32,
    /// RRsets changed since the catalog was last synced.
    dirty: HashSet<(usize, RrKey)>,
    /// Zones changed since secondaries were last notified.
    changed_zones: BTreeSet<usize>,
}

/// Shared between the records handle and the serving path.
pub(crate) struct Shared {
    state: Mutex<ZoneSet>,
    /// The fast path's map, updated under `state`'s lock.
    pub(crate) fast: RwLock<FastMap>,
    /// Woken on every change for the catalog sync.
    pub(crate) sync_wake: Notify,
    /// Woken on every change for NOTIFY.
    pub(crate) notify_wake: Notify,
}

/// Handle on the live host records of a running server: cheap to clone, `Send + Sync`.
#[derive(Clone)]
pub struct RecordsHandle {
    pub(crate) shared: Arc<Shared>,
}

impl std::fmt::Debug for RecordsHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RecordsHandle").finish_non_exhaustive()
    }
}

impl RecordsHandle {
    /// Host `name` (a single label under the rack domain) at `ip`, owned by `owner` (a MAC or host
    /// id string). Publishes A and, when a reverse zone covers `ip`, PTR. The first owner keeps a
    /// name; a later one gets the configured suffix (`name-dup`, `name-dup2`, ...) or no record,
    /// and the conflict is logged once. An owner has one name: upserting another name moves it.
    /// Bumps the serial of every zone touched; the records answer at once.
    pub fn upsert_host(&self, name: &str, ip: Ipv4Addr, owner: &str) -> UpsertOutcome {
        let mut st = self.shared.lock();
        let outcome = st.upsert_host(name, ip, owner, &self.shared.fast);
        let changed = !st.dirty.is_empty();
        drop(st);
        if changed {
            self.shared.wake();
        }
        outcome
    }

    /// Removes every record of `owner` (no-op when it has none), bumping the serials.
    pub fn remove_owner(&self, owner: &str) {
        let mut st = self.shared.lock();
        st.remove_owner(owner, &self.shared.fast);
        let changed = !st.dirty.is_empty();
        drop(st);
        if changed {
            self.shared.wake();
        }
    }

    /// Current SOA serial of the rack domain.
    ///
    /// Serials start at the current Unix time (or the zone file's, when higher) and every change
    /// moves them to `max(serial + 1, now)`, so a restart that replays the persisted hosts does
    /// not go backwards for secondaries unless the previous run made more changes than seconds
    /// have passed since.
    pub fn serial(&self) -> u32 {
        let st = self.shared.lock();
        st.zones[st.forward].soa.serial
    }
}

impl Shared {
    pub(crate) fn lock(&self) -> MutexGuard<'_, ZoneSet> {
        // A panic while holding the lock leaves consistent-enough data: keep serving.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn wake(&self) {
        self.sync_wake.notify_one();
        self.notify_wake.notify_one();
    }
}

/// Parses master-file `text` for `origin`.
fn parse_zone_text(
    text: &str,
    origin: &Name,
    what: &str,
) -> Result<BTreeMap<RrKey, RecordSet>, DnsError> {
    let (_, records) = Parser::new(text, None, Some(origin.clone()))
        .parse()
        .map_err(|err| DnsError::ZoneParse {
            what: what.to_owned(),
            err: Box::new(err),
        })?;
    Ok(records)
}

/// Builder input of one zone before the handler exists.
struct ZoneInit {
    origin: Name,
    soa: Option<(SOA, u32)>,
    records: BTreeMap<RrKey, RecordSet>,
}

impl ZoneInit {
    fn new(origin: Name) -> Self {
        Self {
            origin,
            soa: None,
            records: BTreeMap::new(),
        }
    }

    fn add(&mut self, records: BTreeMap<RrKey, RecordSet>) {
        for (key, rrset) in records {
            if rrset.record_type() == RecordType::SOA {
                if let Some(r) = rrset.records_without_rrsigs().next()
                    && let RData::SOA(soa) = &r.data
                {
                    self.soa = Some((soa.clone(), r.ttl));
                }
                continue;
            }
            // NS at the apex from a file replaces the generated one; other RRsets merge.
            if rrset.record_type() == RecordType::NS && Name::from(key.name()) == self.origin {
                self.records.insert(key, rrset);
                continue;
            }
            match self.records.get_mut(&key) {
                Some(existing) => {
                    for r in rrset.records_without_rrsigs() {
                        existing.insert(r.clone(), 0);
                    }
                }
                None => {
                    self.records.insert(key, rrset);
                }
            }
        }
    }

    fn add_record(&mut self, record: Record) {
        let key = RrKey::new(LowerName::new(&record.name), record.record_type());
        self.records
            .entry(key)
            .or_insert_with(|| RecordSet::new(record.name.clone(), record.record_type(), 0))
            .insert(record, 0);
    }
}

impl ZoneSet {
    /// Builds every zone from the config; returns the state and the zone handlers for the catalog.
    pub(crate) fn build(cfg: &Config) -> Result<(Shared, Vec<Arc<InMemoryZoneHandler>>), DnsError> {
        let domain = cfg.domain.to_lowercase();
        let ns_name = Name::from_ascii("ns")
            .and_then(|n| n.append_domain(&domain))
            .map_err(|err| DnsError::ConfigName {
                key: "dns.domain",
                value: domain.to_ascii(),
                err,
            })?;
        let label_name = |l: &str| -> Result<Name, DnsError> {
            Name::from_ascii(l)
                .and_then(|n| n.append_domain(&domain))
                .map_err(|err| DnsError::ConfigName {
                    key: "dns.well_known",
                    value: l.to_owned(),
                    err,
                })
        };

        let mut inits = vec![ZoneInit::new(domain.clone())];
        let mut reverse = Vec::new();
        for net in &cfg.subnets {
            for (rnet, origin) in reverse_zones(*net) {
                let idx = match inits.iter().position(|z| z.origin == origin) {
                    Some(i) => i,
                    None => {
                        inits.push(ZoneInit::new(origin));
                        inits.len() - 1
                    }
                };
                reverse.push((rnet, idx));
            }
        }

        // Generated records: NS at the apex, well-known names, SRV for the API.
        inits[0].add_record(Record::from_rdata(
            domain.clone(),
            cfg.ttl,
            RData::NS(NS(ns_name.clone())),
        ));
        if let Some(ip) = cfg.appliance {
            for l in &cfg.well_known {
                inits[0].add_record(Record::from_rdata(label_name(l)?, cfg.ttl, RData::A(A(ip))));
            }
            for &(net, idx) in &reverse {
                if net.contains(&ip) {
                    let target = label_name(cfg.well_known.first().map_or("ns", String::as_str))?;
                    inits[idx].add_record(Record::from_rdata(
                        reverse_name(ip),
                        cfg.ttl,
                        RData::PTR(PTR(target)),
                    ));
                }
            }
        }
        if let Some(port) = cfg.api_port {
            let srv_name = label_name("_tcp").and_then(|n| {
                n.prepend_label("_provisioner")
                    .map_err(|err| DnsError::ConfigName {
                        key: "dns.domain",
                        value: domain.to_ascii(),
                        err,
                    })
            })?;
            let target = label_name(cfg.well_known.first().map_or("provisioner", String::as_str))?;
            inits[0].add_record(Record::from_rdata(
                srv_name,
                cfg.ttl,
                RData::SRV(SRV::new(0, 0, port, target)),
            ));
        }
        if !cfg.records.is_empty() {
            let text = format!("$TTL {}\n{}\n", cfg.ttl, cfg.records.join("\n"));
            inits[0].add(parse_zone_text(&text, &domain, "dns.records")?);
        }
        for zf in &cfg.zone_files {
            let text = std::fs::read_to_string(&zf.path).map_err(|err| DnsError::ZoneRead {
                path: zf.path.clone(),
                err,
            })?;
            let origin = zf.origin.to_lowercase();
            let records = parse_zone_text(&text, &origin, &zf.path.display().to_string())?;
            match inits.iter_mut().find(|z| z.origin == origin) {
                Some(z) => z.add(records),
                None => {
                    let mut z = ZoneInit::new(origin);
                    z.add(records);
                    if z.soa.is_none() {
                        return Err(DnsError::ZoneNoSoa {
                            path: zf.path.clone(),
                        });
                    }
                    inits.push(z);
                }
            }
        }

        let now = unix_now();
        let hostmaster = Name::from_ascii("hostmaster")
            .and_then(|n| n.append_domain(&domain))
            .expect("invariant: the domain already took an `ns` label");
        let mut zones = Vec::with_capacity(inits.len());
        let mut handlers = Vec::with_capacity(inits.len());
        let mut fast = FastMap::default();
        for init in inits {
            let (mut soa, soa_ttl) = init.soa.unwrap_or_else(|| {
                (
                    SOA::new(
                        ns_name.clone(),
                        hostmaster.clone(),
                        0,
                        3600,
                        600,
                        604_800,
                        60,
                    ),
                    cfg.ttl,
                )
            });
            // Start at least at the clock so a restart never goes backwards for secondaries.
            if soa.serial < now {
                soa.serial = now;
            }
            let origin = init.origin.clone();
            let mut records = init.records;
            // Out-of-zone data in a zone file is ignored rather than served from the wrong zone.
            records.retain(|k, _| LowerName::new(&origin).zone_of(k.name()));
            let mut zone = Zone {
                origin_wire: codec::wire_lower(&origin),
                origin: origin.clone(),
                soa,
                soa_ttl,
                records: HashMap::new(),
                static_ptr: HashMap::new(),
                other_types: HashSet::new(),
                static_names: records.keys().map(|k| k.name().clone()).collect(),
                handler: Arc::new(InMemoryZoneHandler::empty(
                    origin.clone(),
                    ZoneType::Primary,
                    AxfrPolicy::Deny,
                )),
            };
            let soa_rec = zone.soa_record();
            records.insert(
                RrKey::new(LowerName::new(&origin), RecordType::SOA),
                single_set(soa_rec),
            );
            let mut nx_ok = true;
            for (key, rrset) in &records {
                let wire = codec::wire_lower(&Name::from(key.name()));
                match key.record_type {
                    RecordType::A => {}
                    RecordType::PTR => {
                        zone.static_ptr.insert(key.clone(), rrset.clone());
                    }
                    t => {
                        if t == RecordType::NS && *key.name() != LowerName::new(&origin) {
                            nx_ok = false;
                        }
                        zone.other_types.insert(wire.clone());
                    }
                }
                if key.name().is_wildcard() {
                    nx_ok = false;
                }
            }
            let handler = InMemoryZoneHandler::new(
                origin.clone(),
                records.clone(),
                ZoneType::Primary,
                AxfrPolicy::Deny,
            )
            .map_err(|reason| DnsError::ZoneBuild {
                origin: origin.to_ascii(),
                reason,
            })?;
            zone.handler = Arc::new(handler);
            fast.zones.insert(
                zone.origin_wire.clone().into(),
                FastZone {
                    origin_len: zone.origin_wire.len(),
                    soa_tail: zone.soa_tail(),
                    nx_ok,
                },
            );
            let keys: Vec<RrKey> = records.keys().cloned().collect();
            zone.records = records.into_iter().collect();
            for key in keys {
                exists_add(&mut fast, &zone, key.name());
                refresh_fast_name(&mut fast, &zone, key.name());
            }
            handlers.push(Arc::clone(&zone.handler));
            info!(zone = %zone.origin, records = zone.records.len(), serial = zone.soa.serial, "zone loaded");
            zones.push(zone);
        }

        let set = ZoneSet {
            zones,
            forward: 0,
            reverse,
            hosts: HashMap::new(),
            name_owner: HashMap::new(),
            ptr_names: HashMap::new(),
            conflicts_logged: HashSet::new(),
            conflict_suffix: cfg.conflict_suffix.clone(),
            ttl: cfg.ttl,
            dirty: HashSet::new(),
            changed_zones: BTreeSet::new(),
        };
        let shared = Shared {
            state: Mutex::new(set),
            fast: RwLock::new(fast),
            sync_wake: Notify::new(),
            notify_wake: Notify::new(),
        };
        Ok((shared, handlers))
    }

    fn label_taken_by(&self, label: &str) -> Option<&str> {
        if let Some(owner) = self.name_owner.get(label) {
            return Some(owner);
        }
        let zone = &self.zones[self.forward];
        let name = Name::from_ascii(label)
            .ok()?
            .append_domain(&zone.origin)
            .ok()?;
        let statically = zone.static_names.contains(&LowerName::new(&name));
        statically.then_some(STATIC_OWNER)
    }

    fn upsert_host(
        &mut self,
        name: &str,
        ip: Ipv4Addr,
        owner: &str,
        fast: &RwLock<FastMap>,
    ) -> UpsertOutcome {
        let Some(requested) = valid_label(name) else {
            return UpsertOutcome::InvalidName;
        };
        if let Some(h) = self.hosts.get(owner).cloned() {
            if h.requested == requested {
                if h.ip == ip {
                    return UpsertOutcome::Unchanged { name: h.name };
                }
                self.hosts
                    .insert(owner.to_owned(), Host { ip, ..h.clone() });
                self.ptr_unlink(h.ip, &h.name);
                self.ptr_link(ip, &h.name);
                let mut fast = fast.write().unwrap_or_else(|e| e.into_inner());
                self.refresh_a(&h.name, &mut fast);
                self.refresh_ptr(h.ip, &mut fast);
                self.refresh_ptr(ip, &mut fast);
                return UpsertOutcome::Published {
                    suffixed: h.name != requested,
                    name: h.name,
                };
            }
            self.remove_owner(owner, fast);
        }

        let mut chosen = None;
        let mut holder = None;
        match self.label_taken_by(&requested) {
            None => chosen = Some(requested.clone()),
            Some(h) => {
                let h = h.to_owned();
                if self
                    .conflicts_logged
                    .insert((requested.clone(), owner.to_owned()))
                {
                    warn!(name = %requested, %owner, holder = %h, "host name conflict");
                }
                if let Some(suffix) = self.conflict_suffix.clone() {
                    for k in 1..=100u32 {
                        let cand = if k == 1 {
                            format!("{requested}{suffix}")
                        } else {
                            format!("{requested}{suffix}{k}")
                        };
                        let Some(cand) = valid_label(&cand) else {
                            break;
                        };
                        if self.label_taken_by(&cand).is_none() {
                            chosen = Some(cand);
                            break;
                        }
                    }
                }
                holder = Some(h);
            }
        }
        let Some(label) = chosen else {
            return UpsertOutcome::Conflict {
                holder: holder.unwrap_or_default(),
            };
        };
        self.hosts.insert(
            owner.to_owned(),
            Host {
                requested: requested.clone(),
                name: label.clone(),
                ip,
            },
        );
        self.name_owner.insert(label.clone(), owner.to_owned());
        self.ptr_link(ip, &label);
        let mut fast = fast.write().unwrap_or_else(|e| e.into_inner());
        self.refresh_a(&label, &mut fast);
        self.refresh_ptr(ip, &mut fast);
        UpsertOutcome::Published {
            suffixed: label != requested,
            name: label,
        }
    }

    fn remove_owner(&mut self, owner: &str, fast: &RwLock<FastMap>) -> bool {
        let Some(h) = self.hosts.remove(owner) else {
            return false;
        };
        self.name_owner.remove(&h.name);
        self.ptr_unlink(h.ip, &h.name);
        let mut fast = fast.write().unwrap_or_else(|e| e.into_inner());
        self.refresh_a(&h.name, &mut fast);
        self.refresh_ptr(h.ip, &mut fast);
        true
    }

    fn ptr_link(&mut self, ip: Ipv4Addr, label: &str) {
        self.ptr_names
            .entry(ip)
            .or_default()
            .insert(label.to_owned());
    }

    fn ptr_unlink(&mut self, ip: Ipv4Addr, label: &str) {
        if let Some(set) = self.ptr_names.get_mut(&ip) {
            set.remove(label);
            if set.is_empty() {
                self.ptr_names.remove(&ip);
            }
        }
    }

    fn host_name(&self, label: &str) -> Option<Name> {
        Name::from_ascii(label)
            .ok()?
            .append_domain(&self.zones[self.forward].origin)
            .ok()
    }

    /// Recomputes the A RRset of host `label` from the host table.
    fn refresh_a(&mut self, label: &str, fast: &mut FastMap) {
        let Some(name) = self.host_name(label) else {
            return;
        };
        let ip = self
            .name_owner
            .get(label)
            .and_then(|o| self.hosts.get(o))
            .map(|h| h.ip);
        let rrset =
            ip.map(|ip| single_set(Record::from_rdata(name.clone(), self.ttl, RData::A(A(ip)))));
        let zi = self.forward;
        self.set_rrset(
            zi,
            RrKey::new(LowerName::new(&name), RecordType::A),
            rrset,
            fast,
        );
    }

    /// Recomputes the PTR RRset of `ip` from static PTRs and the host table.
    fn refresh_ptr(&mut self, ip: Ipv4Addr, fast: &mut FastMap) {
        let Some(&(_, zi)) = self.reverse.iter().find(|(n, _)| n.contains(&ip)) else {
            return;
        };
        let name = reverse_name(ip);
        let key = RrKey::new(LowerName::new(&name), RecordType::PTR);
        let mut rrset = self.zones[zi].static_ptr.get(&key).cloned();
        let targets: Vec<Name> = self
            .ptr_names
            .get(&ip)
            .into_iter()
            .flatten()
            .filter_map(|l| self.host_name(l))
            .collect();
        for t in targets {
            let rec = Record::from_rdata(name.clone(), self.ttl, RData::PTR(PTR(t)));
            match &mut rrset {
                Some(s) => {
                    s.insert(rec, 0);
                }
                None => rrset = Some(single_set(rec)),
            }
        }
        self.set_rrset(zi, key, rrset, fast);
    }

    /// Stores an RRset (or removes it), updates the fast map and bumps the zone serial.
    fn set_rrset(&mut self, zi: usize, key: RrKey, rrset: Option<RecordSet>, fast: &mut FastMap) {
        let zone = &mut self.zones[zi];
        let old = match rrset {
            Some(s) => {
                if zone.records.get(&key).is_some_and(|o| same_rrset(o, &s)) {
                    return;
                }
                zone.records.insert(key.clone(), s)
            }
            None => zone.records.remove(&key),
        };
        let now_present = zone.records.contains_key(&key);
        match (old.is_some(), now_present) {
            (false, true) => exists_add(fast, zone, key.name()),
            (true, false) => exists_remove(fast, zone, key.name()),
            (false, false) => return,
            (true, true) => {}
        }
        refresh_fast_name(fast, zone, key.name());
        self.dirty.insert((zi, key));
        self.bump_serial(zi, fast);
    }

    fn bump_serial(&mut self, zi: usize, fast: &mut FastMap) {
        let zone = &mut self.zones[zi];
        let next = zone.soa.serial.wrapping_add(1).max(unix_now());
        zone.soa.serial = next;
        let key = RrKey::new(LowerName::new(&zone.origin), RecordType::SOA);
        zone.records
            .insert(key.clone(), single_set(zone.soa_record()));
        if let Some(fz) = fast.zones.get_mut(zone.origin_wire.as_slice()) {
            fz.soa_tail = zone.soa_tail();
        }
        self.dirty.insert((zi, key));
        self.changed_zones.insert(zi);
    }

    /// Takes the RRsets changed since the last call, grouped by zone handler.
    pub(crate) fn take_dirty(&mut self) -> Vec<DirtyBatch> {
        let mut by_zone: BTreeMap<usize, Vec<(RrKey, Option<RecordSet>)>> = BTreeMap::new();
        for (zi, key) in self.dirty.drain() {
            let rrset = self.zones[zi].records.get(&key).cloned();
            by_zone.entry(zi).or_default().push((key, rrset));
        }
        by_zone
            .into_iter()
            .map(|(zi, v)| (Arc::clone(&self.zones[zi].handler), v))
            .collect()
    }

    /// Takes the zones changed since the last call: (origin, SOA record) for NOTIFY.
    pub(crate) fn take_changed_zones(&mut self) -> Vec<(Name, Record)> {
        std::mem::take(&mut self.changed_zones)
            .into_iter()
            .map(|zi| (self.zones[zi].origin.clone(), self.zones[zi].soa_record()))
            .collect()
    }

    /// Index of the zone that holds `name` (longest origin), if it is ours.
    pub(crate) fn zone_for(&self, name: &Name) -> Option<usize> {
        self.zones
            .iter()
            .enumerate()
            .filter(|(_, z)| z.origin.zone_of(name))
            .max_by_key(|(_, z)| z.origin.num_labels())
            .map(|(i, _)| i)
    }

    /// The zone is the apex `name` exactly.
    pub(crate) fn is_apex(&self, zi: usize, name: &Name) -> bool {
        self.zones[zi].origin == name.to_lowercase()
    }

    /// Every record of zone `zi` in transfer order: SOA, the rest, SOA.
    pub(crate) fn transfer_records(&self, zi: usize) -> Vec<Record> {
        let zone = &self.zones[zi];
        let soa = zone.soa_record();
        let mut out = Vec::with_capacity(zone.records.len() + 2);
        out.push(soa.clone());
        for (key, rrset) in &zone.records {
            if key.record_type == RecordType::SOA {
                continue;
            }
            out.extend(rrset.records_without_rrsigs().cloned());
        }
        out.push(soa);
        out
    }

    /// The SOA record of zone `zi`.
    pub(crate) fn soa_record(&self, zi: usize) -> Record {
        self.zones[zi].soa_record()
    }

    /// The RR type to answer a minimal ANY with at `name` (RFC 8482), if the name has records.
    pub(crate) fn any_type(&self, zi: usize, name: &Name) -> Option<RecordType> {
        let lower = LowerName::new(name);
        let zone = &self.zones[zi];
        for t in [
            RecordType::A,
            RecordType::AAAA,
            RecordType::PTR,
            RecordType::CNAME,
        ] {
            if zone.records.contains_key(&RrKey::new(lower.clone(), t)) {
                return Some(t);
            }
        }
        zone.records
            .keys()
            .find(|k| *k.name() == lower)
            .map(|k| k.record_type)
    }
}

fn single_set(rec: Record) -> RecordSet {
    let mut s = RecordSet::new(rec.name.clone(), rec.record_type(), 0);
    s.insert(rec, 0);
    s
}

fn same_rrset(a: &RecordSet, b: &RecordSet) -> bool {
    a.ttl() == b.ttl()
        && a.records_without_rrsigs()
            .map(|r| &r.data)
            .eq(b.records_without_rrsigs().map(|r| &r.data))
}

/// Names from `name` up to (excluding) the origin, as lowercase wire.
fn ancestors(zone: &Zone, name: &LowerName) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    let mut n = Name::from(name);
    let stop = zone.origin.num_labels();
    while n.num_labels() > stop {
        out.push(codec::wire_lower(&n));
        n = n.base_name();
    }
    out
}

fn exists_add(fast: &mut FastMap, zone: &Zone, name: &LowerName) {
    for w in ancestors(zone, name) {
        *fast.exists.entry(w.into()).or_insert(0) += 1;
    }
}

fn exists_remove(fast: &mut FastMap, zone: &Zone, name: &LowerName) {
    for w in ancestors(zone, name) {
        if let Some(c) = fast.exists.get_mut(w.as_slice()) {
            *c -= 1;
            if *c == 0 {
                fast.exists.remove(w.as_slice());
            }
        }
    }
}

fn fast_answer_of(rrset: Option<&RecordSet>) -> Option<FastAnswer> {
    let rrset = rrset?;
    let mut ans = FastAnswer::default();
    for r in rrset.records_without_rrsigs() {
        match &r.data {
            RData::A(a) => ans.push(codec::TYPE_A, r.ttl, &a.0.octets()),
            RData::PTR(p) => ans.push(codec::TYPE_PTR, r.ttl, &codec::wire(&p.0)),
            _ => return None,
        }
    }
    (ans.count > 0).then_some(ans)
}

/// Recomputes the fast-path entry of `name` from the zone's records.
fn refresh_fast_name(fast: &mut FastMap, zone: &Zone, name: &LowerName) {
    let wire = codec::wire_lower(&Name::from(name));
    if wire == zone.origin_wire || zone.other_types.contains(&wire) {
        fast.names.remove(wire.as_slice());
        return;
    }
    let a = fast_answer_of(zone.records.get(&RrKey::new(name.clone(), RecordType::A)));
    let ptr = fast_answer_of(zone.records.get(&RrKey::new(name.clone(), RecordType::PTR)));
    if a.is_none() && ptr.is_none() {
        fast.names.remove(wire.as_slice());
    } else {
        fast.names.insert(wire.into(), FastName { a, ptr });
    }
}
