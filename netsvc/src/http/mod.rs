//! HTTP boot server (axum): per-host iPXE scripts, the iPXE binaries and static boot files.
//!
//! Routes of [`Server::start`]:
//! - `GET /boot/{mac}.ipxe`: the host's iPXE script. [`BootScripts`] (implemented by the control
//!   node) picks a template and its variables per MAC; hosts it has no choice for get the
//!   `default` template, which boots the kernel and initrd of [`DefaultBoot`] or else the local
//!   disk. Templates are the `templates/ipxe/*.ipxe.hbs` files compiled in, overridable from
//!   [`Config::template_dir`], rendered by handlebars in strict mode without escaping.
//! - `GET|HEAD /ipxe/{file}`: `undionly.kpxe`, `ipxe.efi`, `snponly.efi` (UEFI HTTP boot).
//! - `GET|HEAD /files/{path}`: files of the boot directory, with single `Range` requests
//!   (206/416) and exact `Content-Length`; names climbing out of the directory, also through
//!   symlinks, are not found.
//! - whatever [`HttpDeps::extra_routes`] adds (the control node's REST API).

mod config;
mod files;
mod scripts;
mod server;

pub use config::{Config, DefaultBoot, HttpConfigError, HttpSection};
pub use files::{RangeReply, parse_range};
pub use scripts::{
    BootScripts, ChooseError, DEFAULT_TEMPLATE, DefaultScripts, ScriptChoice, TEMPLATE_SUFFIX,
    TemplateError,
};
pub use server::{DRAIN_TIMEOUT, HttpDeps, HttpStartError, Server, ServerHandle};
