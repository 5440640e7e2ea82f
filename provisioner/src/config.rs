//! Daemon configuration: TOML `wire` types (unknown keys refused) → merged with drop-ins and
//! command-line overrides → validated [`Settings`]. With no file, built-in defaults apply.
//!
//! ```toml
//! # Address of the REST API for operators; machines use it on the HTTP boot server, at
//! # public_url. Default 0.0.0.0:8080.
//! listen = "0.0.0.0:8080"
//! # Inventory database, image store and admin token live here. Default /var/lib/provisioner.
//! state_dir = "/var/lib/provisioner"
//! # The admin API token (created at first start, mode 0600). Default <state_dir>/admin-token.
//! token_file = "/var/lib/provisioner/admin-token"
//! # The rack network services (DHCP, TFTP, HTTP boot, DNS) as a netsvc config file. Default:
//! # none; `--interface` alone also enables them.
//! netsvc_config = "/etc/provisioner/netsvc.toml"
//! # The deploy ramdisk (image-builder's deploy-ramdisk output). Default <state_dir>/ramdisk.
//! ramdisk_dir = "/var/lib/provisioner/ramdisk"
//! # URL machines reach the control node at. Default http://<HTTP boot server address>.
//! public_url = "http://10.61.0.1"
//! # Kernel arguments of the deploy ramdisk. Default "console=ttyS0 quiet panic=10".
//! ramdisk_cmdline = "console=ttyS0 quiet panic=10"
//! # OpenSSH public keys installed for root on every deployed host. Default none.
//! ssh_authorized_keys = ["ssh-ed25519 AAAAC3Nza... operator@example"]
//! ```

use std::net::SocketAddr;

use camino::{Utf8Path, Utf8PathBuf};
use serde::Deserialize;

/// Default API listen address.
pub const DEFAULT_LISTEN: &str = "0.0.0.0:8080";
/// Default state directory.
pub const DEFAULT_STATE_DIR: &str = "/var/lib/provisioner";
/// Name of the admin token file inside the state directory.
pub const TOKEN_FILE_NAME: &str = "admin-token";

/// Errors loading the configuration; each names the file (and the key, in the TOML message).
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("failed to read config file `{path}`")]
    Read {
        /// The file.
        path: Utf8PathBuf,
        /// Cause.
        #[source]
        err: std::io::Error,
    },
    /// The embedded network services' configuration is invalid.
    #[error("invalid network services configuration")]
    Netsvc {
        /// Cause (names the file and key).
        #[source]
        err: netsvc::config::ConfigError,
    },
    /// The file is not valid TOML for this schema (unknown key, wrong type...).
    #[error("invalid config file `{path}`")]
    Parse {
        /// The file.
        path: Utf8PathBuf,
        /// Cause (names the key and line).
        #[source]
        err: toml::de::Error,
    },
    /// A value is out of range.
    #[error("invalid value for `{key}` in {source_name}: {problem}")]
    Invalid {
        /// Where the value came from (a file or the command line).
        source_name: String,
        /// The key.
        key: &'static str,
        /// What is wrong.
        problem: &'static str,
    },
}

/// One configuration file or drop-in, as written.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WireConfig {
    /// See [`Settings::listen`].
    #[serde(default)]
    pub listen: Option<SocketAddr>,
    /// See [`Settings::state_dir`].
    #[serde(default)]
    pub state_dir: Option<Utf8PathBuf>,
    /// See [`Settings::token_file`].
    #[serde(default)]
    pub token_file: Option<Utf8PathBuf>,
    /// A netsvc config file: enables the embedded rack network services.
    #[serde(default)]
    pub netsvc_config: Option<Utf8PathBuf>,
    /// See [`BootSettings::ramdisk_dir`].
    #[serde(default)]
    pub ramdisk_dir: Option<Utf8PathBuf>,
    /// See [`BootSettings::public_url`].
    #[serde(default)]
    pub public_url: Option<String>,
    /// See [`BootSettings::ramdisk_cmdline`].
    #[serde(default)]
    pub ramdisk_cmdline: Option<String>,
    /// See [`Settings::ssh_authorized_keys`].
    #[serde(default)]
    pub ssh_authorized_keys: Option<Vec<String>>,
}

impl WireConfig {
    /// `other`'s keys win over `self`'s.
    pub fn merge(self, other: WireConfig) -> WireConfig {
        WireConfig {
            listen: other.listen.or(self.listen),
            state_dir: other.state_dir.or(self.state_dir),
            token_file: other.token_file.or(self.token_file),
            netsvc_config: other.netsvc_config.or(self.netsvc_config),
            ramdisk_dir: other.ramdisk_dir.or(self.ramdisk_dir),
            public_url: other.public_url.or(self.public_url),
            ramdisk_cmdline: other.ramdisk_cmdline.or(self.ramdisk_cmdline),
            ssh_authorized_keys: other.ssh_authorized_keys.or(self.ssh_authorized_keys),
        }
    }

    fn parse(path: &Utf8Path) -> Result<WireConfig, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|err| ConfigError::Read {
            path: path.to_owned(),
            err,
        })?;
        toml::from_str(&text).map_err(|err| ConfigError::Parse {
            path: path.to_owned(),
            err,
        })
    }

    /// Reads `path`, then every `*.toml` in `<path>.d/` in lexical order (later wins).
    pub fn load(path: &Utf8Path) -> Result<WireConfig, ConfigError> {
        let layers = common::config_layers(path.as_std_path()).map_err(|e| ConfigError::Read {
            path: Utf8PathBuf::from(format!("{path}.d")),
            err: e.err,
        })?;
        let mut cfg = WireConfig::default();
        for layer in layers
            .into_iter()
            .filter_map(|p| Utf8PathBuf::from_path_buf(p).ok())
        {
            cfg = cfg.merge(WireConfig::parse(&layer)?);
        }
        Ok(cfg)
    }
}

/// Validated daemon settings; the only configuration type that passes beyond `main`.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Address of the REST API.
    pub listen: SocketAddr,
    /// Holds `inventory.db`, `images/` and (by default) the admin token.
    pub state_dir: Utf8PathBuf,
    /// The admin API token file (mode 0600).
    pub token_file: Utf8PathBuf,
    /// The embedded rack network services, when enabled.
    pub boot: Option<BootSettings>,
    /// OpenSSH public keys installed for `root` on every deployed host.
    pub ssh_authorized_keys: Vec<String>,
}

/// The embedded rack network services and what they boot.
#[derive(Debug, Clone)]
pub struct BootSettings {
    /// DHCP, TFTP, HTTP boot and DNS, validated by netsvc. The HTTP boot server also carries
    /// the REST API, the image store (`/images/`) and the deploy ramdisk (`/ramdisk/`).
    pub netsvc: netsvc::config::Settings,
    /// Holds `vmlinuz` and `initrd.img` of the deploy ramdisk.
    pub ramdisk_dir: Utf8PathBuf,
    /// Base URL (no trailing slash) that imagers and installed hosts use; `None`: the HTTP boot
    /// server's own address.
    pub public_url: Option<String>,
    /// Kernel arguments of the deploy ramdisk, before the `provisioner.*` ones.
    pub ramdisk_cmdline: String,
}

/// The rack network services requested on the command line (`provisioner serve --interface`).
#[derive(Debug, Clone, Default)]
pub struct NetOverrides {
    /// DHCP interfaces (enables the services even without `netsvc_config`).
    pub interfaces: Vec<String>,
    /// Dynamic range `START-END` on the first interface's subnet.
    pub dhcp_range: Option<String>,
}

/// Default kernel arguments of the deploy ramdisk: serial console, no kernel chatter (the
/// command line carries a secret), reboot 10 s after a panic.
pub const DEFAULT_RAMDISK_CMDLINE: &str = "console=ttyS0 quiet panic=10";

impl Settings {
    /// The inventory database.
    pub fn db_path(&self) -> Utf8PathBuf {
        self.state_dir.join("inventory.db")
    }

    /// The image store.
    pub fn image_dir(&self) -> Utf8PathBuf {
        self.state_dir.join("images")
    }

    /// Loads `path` (and its drop-ins) if given, applies `overrides`, and validates.
    pub fn load(path: Option<&Utf8Path>, overrides: WireConfig) -> Result<Settings, ConfigError> {
        Settings::load_with_net(path, overrides, &NetOverrides::default())
    }

    /// [`Settings::load`], plus the network services asked for on the command line.
    pub fn load_with_net(
        path: Option<&Utf8Path>,
        overrides: WireConfig,
        net: &NetOverrides,
    ) -> Result<Settings, ConfigError> {
        let (base, source_name) = match path {
            Some(p) => (WireConfig::load(p)?, format!("`{p}`")),
            None => (WireConfig::default(), "built-in defaults".to_owned()),
        };
        Settings::from_wire(base.merge(overrides), &source_name, net)
    }

    fn from_wire(
        w: WireConfig,
        source_name: &str,
        net: &NetOverrides,
    ) -> Result<Settings, ConfigError> {
        let invalid = |key, problem| ConfigError::Invalid {
            source_name: source_name.to_owned(),
            key,
            problem,
        };
        let listen = match w.listen {
            Some(l) => l,
            None => DEFAULT_LISTEN
                .parse()
                .expect("invariant: the default listen address parses"),
        };
        let state_dir = w
            .state_dir
            .unwrap_or_else(|| Utf8PathBuf::from(DEFAULT_STATE_DIR));
        if !state_dir.is_absolute() {
            return Err(invalid("state_dir", "must be an absolute path"));
        }
        let token_file = w
            .token_file
            .unwrap_or_else(|| state_dir.join(TOKEN_FILE_NAME));
        if !token_file.is_absolute() {
            return Err(invalid("token_file", "must be an absolute path"));
        }
        let boot = if w.netsvc_config.is_some() || !net.interfaces.is_empty() {
            // Without a netsvc file its state and boot directories live under ours.
            let own_dirs = w.netsvc_config.is_none();
            let args = netsvc::config::Args {
                config: w.netsvc_config.clone(),
                interfaces: net.interfaces.clone(),
                dhcp_range: net.dhcp_range.clone(),
                state_dir: own_dirs.then(|| state_dir.join("netsvc")),
                boot_dir: own_dirs.then(|| state_dir.join("boot")),
                ..netsvc::config::Args::default()
            };
            let netsvc =
                netsvc::config::Settings::load(&args).map_err(|err| ConfigError::Netsvc { err })?;
            if netsvc.http.is_none() {
                return Err(invalid(
                    "netsvc_config",
                    "the network services need the HTTP boot server (iPXE scripts, images)",
                ));
            }
            let ramdisk_dir = w
                .ramdisk_dir
                .clone()
                .unwrap_or_else(|| state_dir.join("ramdisk"));
            if !ramdisk_dir.is_absolute() {
                return Err(invalid("ramdisk_dir", "must be an absolute path"));
            }
            let public_url = match w.public_url.as_deref().map(|u| u.trim_end_matches('/')) {
                Some(u) if !(u.starts_with("http://") || u.starts_with("https://")) => {
                    return Err(invalid("public_url", "must be an http:// or https:// URL"));
                }
                Some(u) if u.contains(char::is_whitespace) => {
                    return Err(invalid("public_url", "must not contain white space"));
                }
                u => u.map(str::to_owned),
            };
            let ramdisk_cmdline = w
                .ramdisk_cmdline
                .clone()
                .unwrap_or_else(|| DEFAULT_RAMDISK_CMDLINE.to_owned());
            if ramdisk_cmdline.chars().any(char::is_control) {
                return Err(invalid("ramdisk_cmdline", "must be one line"));
            }
            // The kernel prints its command line, which carries the host's secret, unless quiet.
            if !ramdisk_cmdline.split_whitespace().any(|w| w == "quiet") {
                return Err(invalid(
                    "ramdisk_cmdline",
                    "must contain `quiet` (the command line carries a secret the kernel would print)",
                ));
            }
            Some(BootSettings {
                netsvc,
                ramdisk_dir,
                public_url,
                ramdisk_cmdline,
            })
        } else {
            None
        };
        let ssh_authorized_keys = w.ssh_authorized_keys.clone().unwrap_or_default();
        for key in &ssh_authorized_keys {
            let kind = key.split_whitespace().next().unwrap_or("");
            let known = ["ssh-", "ecdsa-", "sk-"]
                .iter()
                .any(|p| kind.starts_with(p));
            if !known || key.contains('\n') || key.split_whitespace().count() < 2 {
                return Err(invalid(
                    "ssh_authorized_keys",
                    "each entry must be one OpenSSH public key line (`ssh-ed25519 AAAA... comment`)",
                ));
            }
        }
        Ok(Settings {
            listen,
            state_dir,
            token_file,
            boot,
            ssh_authorized_keys,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_without_a_file() {
        let s = Settings::load(None, WireConfig::default()).unwrap();
        assert_eq!(s.listen, DEFAULT_LISTEN.parse().unwrap());
        assert_eq!(s.state_dir, DEFAULT_STATE_DIR);
        assert_eq!(s.token_file, "/var/lib/provisioner/admin-token");
        assert_eq!(s.db_path(), "/var/lib/provisioner/inventory.db");
    }

    #[test]
    fn shipped_example_parses() {
        let path =
            Utf8Path::new(env!("CARGO_MANIFEST_DIR")).join("../templates/config/provisioner.toml");
        let s = Settings::load(Some(&path), WireConfig::default()).unwrap();
        assert_eq!(s.state_dir, DEFAULT_STATE_DIR);
    }

    #[test]
    fn dropins_and_overrides_win_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let root = Utf8Path::from_path(dir.path()).unwrap();
        let main = root.join("p.toml");
        std::fs::write(&main, "listen = \"127.0.0.1:1\"\nstate_dir = \"/a\"\n").unwrap();
        std::fs::create_dir(root.join("p.toml.d")).unwrap();
        std::fs::write(root.join("p.toml.d/20-b.toml"), "state_dir = \"/c\"\n").unwrap();
        std::fs::write(root.join("p.toml.d/10-a.toml"), "state_dir = \"/b\"\n").unwrap();
        std::fs::write(root.join("p.toml.d/ignored.txt"), "junk").unwrap();
        let s = Settings::load(Some(&main), WireConfig::default()).unwrap();
        assert_eq!(s.listen, "127.0.0.1:1".parse().unwrap());
        assert_eq!(s.state_dir, "/c");
        assert_eq!(s.token_file, "/c/admin-token");
        let o = WireConfig {
            listen: Some("127.0.0.1:2".parse().unwrap()),
            ..WireConfig::default()
        };
        assert_eq!(
            Settings::load(Some(&main), o).unwrap().listen,
            "127.0.0.1:2".parse().unwrap()
        );
    }

    #[test]
    fn errors_name_file_and_key() {
        let dir = tempfile::tempdir().unwrap();
        let root = Utf8Path::from_path(dir.path()).unwrap();
        let f = root.join("bad.toml");
        std::fs::write(&f, "listen = \"127.0.0.1:1\"\nstate_dri = \"/x\"\n").unwrap();
        let err = Settings::load(Some(&f), WireConfig::default()).unwrap_err();
        let msg = common::ErrorChain(&err).to_string();
        assert!(
            msg.contains("bad.toml") && msg.contains("state_dri"),
            "{msg}"
        );
        std::fs::write(&f, "state_dir = \"relative\"\n").unwrap();
        let msg = Settings::load(Some(&f), WireConfig::default())
            .unwrap_err()
            .to_string();
        assert!(
            msg.contains("bad.toml") && msg.contains("state_dir"),
            "{msg}"
        );
        std::fs::write(
            &f,
            format!(
                "netsvc_config = \"{}\"\nramdisk_cmdline = \"console=ttyS0\"\n",
                root.join("n.toml")
            ),
        )
        .unwrap();
        std::fs::write(root.join("n.toml"), "[http]\nlisten = \"127.0.0.1:0\"\n").unwrap();
        let msg = Settings::load(Some(&f), WireConfig::default())
            .unwrap_err()
            .to_string();
        assert!(
            msg.contains("bad.toml") && msg.contains("ramdisk_cmdline") && msg.contains("quiet"),
            "{msg}"
        );
        std::fs::write(&f, "ssh_authorized_keys = [\"not a key\"]\n").unwrap();
        let msg = Settings::load(Some(&f), WireConfig::default())
            .unwrap_err()
            .to_string();
        assert!(
            msg.contains("bad.toml") && msg.contains("ssh_authorized_keys"),
            "{msg}"
        );
        let err = Settings::load(Some(&root.join("missing.toml")), WireConfig::default());
        assert!(matches!(err, Err(ConfigError::Read { .. })));
    }
}
