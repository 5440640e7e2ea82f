//! HTTP boot settings: the `[http]` wire section of the TOML file and the validated [`Config`].

use std::net::SocketAddr;

use camino::Utf8PathBuf;
use serde::Deserialize;

use crate::tftp::DEFAULT_IPXE_DIR;

/// The `[http]` section as written in the TOML file. Every key is optional.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HttpSection {
    /// Address and port to listen on. Default `0.0.0.0:80`.
    pub listen: SocketAddr,
    /// Directory served under `/files/`, read-only. Default `/var/lib/netsvc/boot`.
    pub boot_dir: Utf8PathBuf,
    /// Where the iPXE binaries served under `/ipxe/` are read from; an empty string serves
    /// none. Default `/usr/lib/ipxe` (Debian package `ipxe`).
    pub ipxe_dir: Utf8PathBuf,
    /// Directory of `*.ipxe.hbs` templates replacing or adding to the embedded ones; an empty
    /// string uses only the embedded templates. Default empty.
    pub template_dir: Utf8PathBuf,
    /// Kernel the default script boots: a URL, an absolute path on this server, or a path
    /// under `boot_dir`; empty boots the local disk instead. Default empty.
    pub kernel: String,
    /// Initrd of the default script, in the same forms as `kernel`; empty for none. Default empty.
    pub initrd: String,
    /// Kernel command line of the default script. Default empty.
    pub cmdline: String,
}

impl Default for HttpSection {
    fn default() -> Self {
        HttpSection {
            listen: SocketAddr::from(([0, 0, 0, 0], 80)),
            boot_dir: Utf8PathBuf::from("/var/lib/netsvc/boot"),
            ipxe_dir: Utf8PathBuf::from(DEFAULT_IPXE_DIR),
            template_dir: Utf8PathBuf::new(),
            kernel: String::new(),
            initrd: String::new(),
            cmdline: String::new(),
        }
    }
}

/// What the default script boots for hosts without a choice of their own.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DefaultBoot {
    /// Kernel URL or path (see [`HttpSection::kernel`]), `None` to boot the local disk.
    pub kernel: Option<String>,
    /// Initrd URL or path, if any.
    pub initrd: Option<String>,
    /// Kernel command line.
    pub cmdline: String,
}

/// Validated HTTP boot server settings.
#[derive(Debug, Clone)]
pub struct Config {
    /// Address and port to listen on.
    pub listen: SocketAddr,
    /// Directory served under `/files/`.
    pub boot_dir: Utf8PathBuf,
    /// Directory of the iPXE binaries served under `/ipxe/`, `None` to serve none.
    pub ipxe_dir: Option<Utf8PathBuf>,
    /// Directory of template overrides, if any.
    pub template_dir: Option<Utf8PathBuf>,
    /// The default script's kernel and initrd.
    pub default_boot: DefaultBoot,
}

/// An `[http]` key with a value that cannot be used; the message names the key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid value for `http.{key}`: {reason}")]
pub struct HttpConfigError {
    /// The key, without the `http.` prefix.
    pub key: &'static str,
    /// What is wrong with its value.
    pub reason: String,
}

fn non_empty(s: String) -> Option<String> {
    (!s.trim().is_empty()).then(|| s.trim().to_owned())
}

impl TryFrom<HttpSection> for Config {
    type Error = HttpConfigError;

    fn try_from(s: HttpSection) -> Result<Self, Self::Error> {
        let err = |key, reason: &str| HttpConfigError {
            key,
            reason: reason.to_owned(),
        };
        if s.boot_dir.as_str().is_empty() {
            return Err(err("boot_dir", "must not be empty"));
        }
        for (key, v) in [
            ("kernel", &s.kernel),
            ("initrd", &s.initrd),
            ("cmdline", &s.cmdline),
        ] {
            if v.contains(['\n', '\r']) {
                return Err(err(key, "must be a single line"));
            }
        }
        for (key, v) in [("kernel", &s.kernel), ("initrd", &s.initrd)] {
            if v.trim().contains(char::is_whitespace) {
                return Err(err(key, "must not contain spaces"));
            }
        }
        let kernel = non_empty(s.kernel);
        let initrd = non_empty(s.initrd);
        if kernel.is_none() && initrd.is_some() {
            return Err(err("initrd", "needs `http.kernel` to be set"));
        }
        Ok(Config {
            listen: s.listen,
            boot_dir: s.boot_dir,
            ipxe_dir: (!s.ipxe_dir.as_str().is_empty()).then_some(s.ipxe_dir),
            template_dir: (!s.template_dir.as_str().is_empty()).then_some(s.template_dir),
            default_boot: DefaultBoot {
                kernel,
                initrd,
                cmdline: s.cmdline.trim().to_owned(),
            },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_section_gives_the_documented_defaults() {
        let s: HttpSection = toml::from_str("").expect("empty is valid");
        let c = Config::try_from(s).expect("defaults are valid");
        assert_eq!(c.listen, "0.0.0.0:80".parse().expect("addr"));
        assert_eq!(c.boot_dir, "/var/lib/netsvc/boot");
        assert_eq!(
            c.ipxe_dir.as_deref().map(|p| p.as_str()),
            Some("/usr/lib/ipxe")
        );
        assert_eq!(c.template_dir, None);
        assert_eq!(c.default_boot, DefaultBoot::default());
    }

    #[test]
    fn errors_name_the_key() {
        let e = toml::from_str::<HttpSection>("port = 80").expect_err("unknown key");
        assert!(e.to_string().contains("port"), "{e}");
        for (toml, key) in [
            ("initrd = \"initrd.img\"", "http.initrd"),
            ("kernel = \"a b\"", "http.kernel"),
            ("cmdline = \"a\\nb\"", "http.cmdline"),
            ("boot_dir = \"\"", "http.boot_dir"),
        ] {
            let s: HttpSection = toml::from_str(toml).expect("parses");
            let e = Config::try_from(s).expect_err(toml);
            assert!(e.to_string().contains(key), "{e}");
        }
    }
}
