//! TFTP settings: the `[tftp]` wire section of the TOML file and the validated [`Config`].

use std::net::SocketAddr;
use std::num::NonZeroUsize;
use std::time::Duration;

use camino::Utf8PathBuf;
use serde::Deserialize;

use super::ipxe::DEFAULT_IPXE_DIR;
use super::policy::{MAX_BLKSIZE, MIN_BLKSIZE};

/// The `[tftp]` section as written in the TOML file. Every key is optional.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TftpSection {
    /// Address and port of the request socket. Default `0.0.0.0:69`.
    pub listen: SocketAddr,
    /// Directory served read-only. Default `/var/lib/netsvc/boot`.
    pub boot_dir: Utf8PathBuf,
    /// Where the iPXE binaries (`undionly.kpxe`, `ipxe.efi`, `snponly.efi`) are read from; an
    /// empty string serves none. Default `/usr/lib/ipxe` (Debian package `ipxe`).
    pub ipxe_dir: Utf8PathBuf,
    /// Most transfers running at once; requests beyond it get a "server busy" error.
    /// Default 256.
    pub max_transfers: usize,
    /// Largest block size granted (RFC 2348), 8–65464. Default 1468 (fits a 1500-byte MTU).
    pub max_blksize: u16,
    /// Largest window granted (RFC 7440), at least 1. Default 64.
    pub max_windowsize: u16,
    /// Retransmission timeout in milliseconds when the client does not ask for one. Default 1000.
    pub timeout_ms: u64,
    /// Retransmissions of one packet before the transfer is abandoned. Default 5.
    pub retries: u32,
}

impl Default for TftpSection {
    fn default() -> Self {
        TftpSection {
            listen: SocketAddr::from(([0, 0, 0, 0], 69)),
            boot_dir: Utf8PathBuf::from("/var/lib/netsvc/boot"),
            ipxe_dir: Utf8PathBuf::from(DEFAULT_IPXE_DIR),
            max_transfers: 256,
            max_blksize: 1468,
            max_windowsize: 64,
            timeout_ms: 1000,
            retries: 5,
        }
    }
}

/// Validated TFTP server settings.
#[derive(Debug, Clone)]
pub struct Config {
    /// Address and port of the request socket.
    pub listen: SocketAddr,
    /// Directory served read-only.
    pub boot_dir: Utf8PathBuf,
    /// Directory of the iPXE binaries, `None` to serve none.
    pub ipxe_dir: Option<Utf8PathBuf>,
    /// Most transfers running at once.
    pub max_transfers: NonZeroUsize,
    /// Largest block size granted.
    pub max_blksize: u16,
    /// Largest window granted.
    pub max_windowsize: u16,
    /// Retransmission timeout when the client does not ask for one.
    pub timeout: Duration,
    /// Retransmissions of one packet before giving up.
    pub retries: u32,
}

/// A `[tftp]` key with a value out of range; the message names the key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid value for `tftp.{key}`: {reason}")]
pub struct TftpConfigError {
    /// The key, without the `tftp.` prefix.
    pub key: &'static str,
    /// What is wrong with its value.
    pub reason: String,
}

impl TryFrom<TftpSection> for Config {
    type Error = TftpConfigError;

    fn try_from(s: TftpSection) -> Result<Self, Self::Error> {
        let err = |key, reason: &str| TftpConfigError {
            key,
            reason: reason.to_owned(),
        };
        let max_transfers = NonZeroUsize::new(s.max_transfers)
            .ok_or_else(|| err("max_transfers", "must be at least 1"))?;
        if !(MIN_BLKSIZE..=MAX_BLKSIZE).contains(&s.max_blksize) {
            return Err(err("max_blksize", "must be between 8 and 65464"));
        }
        if s.max_windowsize == 0 {
            return Err(err("max_windowsize", "must be at least 1"));
        }
        if !(10..=255_000).contains(&s.timeout_ms) {
            return Err(err("timeout_ms", "must be between 10 and 255000"));
        }
        if s.boot_dir.as_str().is_empty() {
            return Err(err("boot_dir", "must not be empty"));
        }
        Ok(Config {
            listen: s.listen,
            boot_dir: s.boot_dir,
            ipxe_dir: (!s.ipxe_dir.as_str().is_empty()).then_some(s.ipxe_dir),
            max_transfers,
            max_blksize: s.max_blksize,
            max_windowsize: s.max_windowsize,
            timeout: Duration::from_millis(s.timeout_ms),
            retries: s.retries,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_section_gives_the_documented_defaults() {
        let s: TftpSection = toml::from_str("").expect("empty is valid");
        let c = Config::try_from(s).expect("defaults are valid");
        assert_eq!(c.listen, "0.0.0.0:69".parse().expect("addr"));
        assert_eq!(
            c.ipxe_dir.as_deref().map(|p| p.as_str()),
            Some("/usr/lib/ipxe")
        );
        assert_eq!((c.max_blksize, c.max_windowsize, c.retries), (1468, 64, 5));
        assert_eq!(c.timeout, Duration::from_secs(1));
    }

    #[test]
    fn errors_name_the_key() {
        let e = toml::from_str::<TftpSection>("blksize = 3").expect_err("unknown key");
        assert!(e.to_string().contains("blksize"), "{e}");
        for (toml, key) in [
            ("max_blksize = 4", "tftp.max_blksize"),
            ("max_windowsize = 0", "tftp.max_windowsize"),
            ("max_transfers = 0", "tftp.max_transfers"),
            ("timeout_ms = 0", "tftp.timeout_ms"),
        ] {
            let s: TftpSection = toml::from_str(toml).expect("parses");
            let e = Config::try_from(s).expect_err(toml);
            assert!(e.to_string().contains(key), "{e}");
        }
        let s: TftpSection = toml::from_str("ipxe_dir = \"\"").expect("parses");
        assert_eq!(Config::try_from(s).expect("valid").ipxe_dir, None);
    }
}
