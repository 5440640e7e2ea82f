//! The control node: daemon, CLI, REST API, inventory, host lifecycle and imaging workflow.
//!
//! - [`api`] holds the wire types, the only types serialized over HTTP.
//! - [`lifecycle`] is the host state machine: [`lifecycle::step`] maps a
//!   [`api::HostState`] and a [`lifecycle::HostEvent`] to the next state and
//!   [`lifecycle::Effect`]s.
//! - [`store`] persists hosts, inventories, images, rules, events and hashed secrets behind the
//!   [`store::Store`] trait; [`store::SqliteStore`] is the embedded default.
//! - [`rules`] picks a deployment plan for an inventory (first match wins).
//! - [`boot`] answers network boots from the inventory ([`boot::ControlBoot`] implements
//!   netsvc's `BootScripts`); [`dns::InventoryDns`] publishes every named host at its lease's
//!   address; [`server`] embeds netsvc when [`config::Settings::boot`] is set.
//! - [`imager`] runs in the deploy ramdisk: inventory, image write and read-back verify, host
//!   identity, and the installed system's enrolment; [`client::Client`] is how it talks.
//! - [`secret`] generates and hashes the admin token and per-host one-time secrets.
#![warn(clippy::print_stdout)]

pub mod api;
pub mod boot;
pub mod cli;
pub mod client;
pub mod config;
pub mod control;
pub mod dns;
pub mod http;
pub mod imager;
pub mod images;
pub mod lifecycle;
pub mod rules;
pub mod secret;
pub mod server;
pub mod store;
