//! The inventory in the rack zone: every host with a hostname (from its deployment plan) is
//! published as A and PTR records at its current DHCP lease's address, the moment either the
//! name or the lease appears, and removed when the host is deleted or the lease ends.
//!
//! [`InventoryDns`] is a netsvc DHCP hook (it learns the leases) fed with names from the
//! control node's events ([`InventoryDns::follow`]). Records are owned by the host's MAC, the
//! owner netsvc uses for a client's own hostname, so the inventory's name replaces whatever
//! the client called itself (and deleting the host removes both).

use std::collections::HashMap;
use std::net::Ipv4Addr;
use std::sync::{Arc, Mutex, OnceLock};

use netsvc::MacAddr;
use netsvc::dhcp::{DhcpHooks, Lease};
use netsvc::dns::RecordsHandle;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use crate::control::Control;
use crate::store::Store;

#[derive(Debug, Default)]
struct Known {
    names: HashMap<MacAddr, String>,
    leases: HashMap<MacAddr, Ipv4Addr>,
}

/// Publishes inventory hostnames at the hosts' leased addresses; see the module docs.
#[derive(Debug, Default)]
pub struct InventoryDns {
    known: Mutex<Known>,
    records: OnceLock<RecordsHandle>,
}

impl InventoryDns {
    /// Hooks with no zone yet: names and leases are remembered until [`InventoryDns::attach`].
    pub fn new() -> Arc<Self> {
        Arc::new(InventoryDns::default())
    }

    fn known(&self) -> std::sync::MutexGuard<'_, Known> {
        // The maps stay consistent even if a holder panicked: keep serving.
        self.known.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn publish(&self, mac: MacAddr, name: &str, ip: Ipv4Addr) {
        if let Some(records) = self.records.get() {
            let outcome = records.upsert_host(name, ip, &mac.to_string());
            debug!(%mac, %ip, name, ?outcome, "inventory host published in DNS");
        }
    }

    /// Starts publishing into `records`, with everything learnt so far.
    pub fn attach(&self, records: RecordsHandle) {
        if self.records.set(records).is_err() {
            return;
        }
        let known = self.known();
        for (mac, name) in &known.names {
            if let Some(ip) = known.leases.get(mac) {
                self.publish(*mac, name, *ip);
            }
        }
    }

    /// The host with `mac` is called `name` (`None`: it has no name, or was deleted).
    pub fn set_name(&self, mac: MacAddr, name: Option<String>) {
        let mut known = self.known();
        match name {
            Some(name) => {
                if known.names.get(&mac) == Some(&name) {
                    return;
                }
                if let Some(ip) = known.leases.get(&mac).copied() {
                    self.publish(mac, &name, ip);
                }
                known.names.insert(mac, name);
            }
            None => {
                if known.names.remove(&mac).is_some()
                    && let Some(records) = self.records.get()
                {
                    records.remove_owner(&mac.to_string());
                }
            }
        }
    }

    /// Loads every host's name from `control`, then follows its events until `shutdown`.
    pub async fn follow<S: Store>(
        self: Arc<Self>,
        control: Control<S>,
        shutdown: CancellationToken,
    ) {
        // Subscribe first, so nothing between the snapshot and the stream is missed.
        let mut events = control.subscribe();
        match control.hosts().await {
            Ok(hosts) => {
                for h in hosts {
                    self.set_name(h.mac, h.hostname);
                }
            }
            Err(err) => warn!(error = %common::ErrorChain(&err), "cannot load host names for DNS"),
        }
        loop {
            let ev = tokio::select! {
                () = shutdown.cancelled() => return,
                ev = events.recv() => ev,
            };
            match ev {
                Ok(ev) if ev.to.is_none() => self.set_name(ev.mac, None),
                Ok(ev) => match control.host_by_id(ev.host).await {
                    Ok(h) => self.set_name(h.mac, h.hostname),
                    Err(err) => {
                        debug!(host = %ev.host, error = %common::ErrorChain(&err), "host gone before DNS update");
                    }
                },
                Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => {
                    warn!(
                        missed = n,
                        "DNS fell behind the events: reloading every host name"
                    );
                    if let Ok(hosts) = control.hosts().await {
                        for h in hosts {
                            self.set_name(h.mac, h.hostname);
                        }
                    }
                }
                Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
            }
        }
    }
}

impl DhcpHooks for InventoryDns {
    fn lease_bound(&self, lease: &Lease) {
        // Every time, not only when the address moved: netsvc has just published the name the
        // client sent under the same owner, and the inventory's name must win. An unchanged
        // record does not bump the serial.
        let mut known = self.known();
        known.leases.insert(lease.mac, lease.ip);
        if let Some(name) = known.names.get(&lease.mac) {
            self.publish(lease.mac, name, lease.ip);
        }
    }

    fn lease_ended(&self, lease: &Lease) {
        self.known().leases.remove(&lease.mac);
    }
}
