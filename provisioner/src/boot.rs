//! The control node's answer to a network boot: each host's iPXE script follows its lifecycle
//! state ([`Control::pxe_boot`]): the deploy ramdisk, with the URL of the control node and a
//! fresh one-time imager secret on its kernel line, or the host's own disk.

use std::time::Duration;

use netsvc::MacAddr;
use netsvc::http::{BootScripts, ChooseError, ScriptChoice};
use serde_json::{Map, Value};
use tracing::info;

use crate::control::{BootDirective, Control};
use crate::store::Store;

/// URL path, below the public URL, where the deploy ramdisk's files are served.
pub const RAMDISK_PATH: &str = "/ramdisk";
/// The deploy ramdisk's kernel, in the ramdisk directory.
pub const RAMDISK_KERNEL: &str = "vmlinuz";
/// The deploy ramdisk's initramfs, in the ramdisk directory.
pub const RAMDISK_INITRD: &str = "initrd.img";

/// Chooses every host's iPXE script from the inventory ([`BootScripts`] for netsvc's HTTP
/// boot server).
pub struct ControlBoot<S> {
    control: Control<S>,
    base_url: tokio::sync::watch::Sender<Option<String>>,
    cmdline: String,
}

/// How long a request that arrives before the public URL is known waits for it (the HTTP
/// server accepts before the embedder learns its bound address).
const URL_WAIT: Duration = Duration::from_secs(5);

impl<S> std::fmt::Debug for ControlBoot<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ControlBoot")
            .field("base_url", &*self.base_url.borrow())
            .field("cmdline", &self.cmdline)
            .finish_non_exhaustive()
    }
}

impl<S: Store> ControlBoot<S> {
    /// Scripts for `control`'s hosts; the ramdisk gets `cmdline` before its `provisioner.*`
    /// arguments. Requests wait (briefly) for [`ControlBoot::base_url_setter`] to be used.
    pub fn new(control: Control<S>, cmdline: String) -> Self {
        ControlBoot {
            control,
            base_url: tokio::sync::watch::Sender::new(None),
            cmdline,
        }
    }

    /// Sets the URL (no trailing slash) machines reach the control node at, once the HTTP
    /// server knows its address.
    pub fn base_url_setter(&self) -> impl FnOnce(String) + Send + 'static {
        let tx = self.base_url.clone();
        move |url| {
            tx.send_replace(Some(url));
        }
    }
}

#[async_trait::async_trait]
impl<S: Store> BootScripts for ControlBoot<S> {
    /// Cancel safety: a dropped request may leave a new host `discovered` and a fresh imager
    /// secret stored; the host's next request issues another one.
    async fn script_for(&self, mac: MacAddr) -> Result<Option<ScriptChoice>, ChooseError> {
        let mut rx = self.base_url.subscribe();
        let base = tokio::time::timeout(URL_WAIT, rx.wait_for(Option::is_some))
            .await
            .map_err(|_| "the control node's public URL is not known yet")?
            .map_err(Box::new)?
            .clone()
            .expect("invariant: wait_for returned a value that is Some");
        let directive = self.control.pxe_boot(mac).await.map_err(Box::new)?;
        Ok(Some(match directive {
            BootDirective::Ramdisk {
                host,
                imager_secret,
            } => {
                info!(%mac, %host, "network boot: deploy ramdisk");
                let mut vars = Map::new();
                let url = |file: &str| Value::String(format!("{base}{RAMDISK_PATH}/{file}"));
                vars.insert("kernel".into(), url(RAMDISK_KERNEL));
                vars.insert("initrd".into(), url(RAMDISK_INITRD));
                vars.insert("initrd_name".into(), RAMDISK_INITRD.into());
                vars.insert(
                    "cmdline".into(),
                    Value::String(format!(
                        "{} provisioner.url={base} provisioner.secret={}",
                        self.cmdline,
                        imager_secret.expose()
                    )),
                );
                ScriptChoice {
                    template: "deploy".into(),
                    vars,
                }
            }
            BootDirective::LocalDisk { host } => {
                info!(%mac, %host, "network boot: local disk");
                ScriptChoice {
                    template: "local".into(),
                    vars: Map::new(),
                }
            }
        }))
    }
}
