//! Pure decisions on a decoded request: which options to grant (RFC 2347/2348/2349/7440) and
//! whether a requested file name stays inside the served root. No I/O.

use std::time::Duration;

use super::codec::{Mode, Request};

/// Smallest block size RFC 2348 allows.
pub const MIN_BLKSIZE: u16 = 8;
/// Largest block size RFC 2348 allows.
pub const MAX_BLKSIZE: u16 = 65464;
/// Block size without the option.
pub const DEFAULT_BLKSIZE: u16 = 512;

/// What the server is willing to grant.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Largest block size granted (a larger request is lowered to this).
    pub max_blksize: u16,
    /// Largest window granted (a larger request is lowered to this).
    pub max_windowsize: u16,
}

/// The parameters of one transfer after negotiation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Negotiated {
    /// Bytes per DATA packet.
    pub blksize: u16,
    /// DATA packets sent before waiting for an ACK.
    pub windowsize: u16,
    /// Retransmission timeout asked for by the client, if any.
    pub timeout: Option<Duration>,
    /// The options to acknowledge in an OACK, in the client's order; empty means no OACK.
    pub oack: Vec<(String, String)>,
}

/// A request whose options cannot be granted: answered with TFTP error 8.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OptionError {
    /// Not a decimal number, or out of its range.
    #[error("option `{name}` has invalid value `{value}`")]
    Invalid {
        /// Option name as sent.
        name: String,
        /// Value as sent.
        value: String,
    },
}

fn number(name: &str, value: &str, min: u64, max: u64) -> Result<u64, OptionError> {
    let invalid = || OptionError::Invalid {
        name: name.to_owned(),
        value: value.to_owned(),
    };
    if value.is_empty() || value.len() > 20 || !value.bytes().all(|b| b.is_ascii_digit()) {
        return Err(invalid());
    }
    let n: u64 = value.parse().map_err(|_| invalid())?;
    if n < min || n > max {
        return Err(invalid());
    }
    Ok(n)
}

/// Decides the options of a read request for a file of `size` bytes (`None` when unknown,
/// as in netascii mode where the size on the wire differs).
///
/// Unknown options are ignored, as RFC 2347 requires; malformed or out-of-range values of
/// known options refuse the request.
pub fn negotiate(
    req: &Request,
    limits: &Limits,
    size: Option<u64>,
) -> Result<Negotiated, OptionError> {
    let mut out = Negotiated {
        blksize: DEFAULT_BLKSIZE,
        windowsize: 1,
        timeout: None,
        oack: Vec::new(),
    };
    let size = if req.mode == Mode::Netascii {
        None
    } else {
        size
    };
    for (name, value) in &req.options {
        match name.to_ascii_lowercase().as_str() {
            "blksize" => {
                // Values above the RFC maximum are lowered like any other too-large value.
                let asked = number(name, value, u64::from(MIN_BLKSIZE), u64::MAX)?;
                let cap = limits.max_blksize.clamp(MIN_BLKSIZE, MAX_BLKSIZE);
                out.blksize = u16::try_from(asked.min(u64::from(cap)))
                    .expect("invariant: clamped to a u16 limit");
                out.oack.push((name.clone(), out.blksize.to_string()));
            }
            "windowsize" => {
                let asked = number(name, value, 1, 65535)?;
                let cap = limits.max_windowsize.max(1);
                out.windowsize = u16::try_from(asked.min(u64::from(cap)))
                    .expect("invariant: clamped to a u16 limit");
                out.oack.push((name.clone(), out.windowsize.to_string()));
            }
            "timeout" => {
                let secs = number(name, value, 1, 255)?;
                out.timeout = Some(Duration::from_secs(secs));
                out.oack.push((name.clone(), secs.to_string()));
            }
            "tsize" => {
                number(name, value, 0, u64::MAX)?;
                if let Some(size) = size {
                    out.oack.push((name.clone(), size.to_string()));
                }
            }
            _ => {}
        }
    }
    Ok(out)
}

/// A file name that must not be served.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    /// A `..` component, which would climb out of the root.
    #[error("path `{path}` climbs out of the root")]
    Traversal {
        /// The name as requested.
        path: String,
    },
    /// Nothing left after removing separators, or a control character.
    #[error("path `{path}` is not a file name")]
    Invalid {
        /// The name as requested.
        path: String,
    },
}

/// Turns a requested file name into a relative path of normal components joined by `/`.
///
/// Backslashes count as separators (some PXE firmware sends them). A leading `/` is taken
/// relative to the root, and a name starting with `root` itself (as clients configured with the
/// server's absolute directory send) has that prefix removed. Any `..` is refused.
pub fn relative_path(requested: &str, root: &str) -> Result<String, PathError> {
    let path = requested.replace('\\', "/");
    let root = root.trim_end_matches('/');
    let path = match path.strip_prefix(root) {
        Some(rest) if !root.is_empty() && rest.starts_with('/') => rest.to_owned(),
        _ => path,
    };
    if path.chars().any(char::is_control) {
        return Err(PathError::Invalid {
            path: requested.to_owned(),
        });
    }
    let mut parts = Vec::new();
    for part in path.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                return Err(PathError::Traversal {
                    path: requested.to_owned(),
                });
            }
            p => parts.push(p),
        }
    }
    if parts.is_empty() {
        return Err(PathError::Invalid {
            path: requested.to_owned(),
        });
    }
    Ok(parts.join("/"))
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: Limits = Limits {
        max_blksize: 1468,
        max_windowsize: 64,
    };

    fn req(mode: Mode, opts: &[(&str, &str)]) -> Request {
        Request {
            filename: "f".into(),
            mode,
            options: opts
                .iter()
                .map(|(n, v)| ((*n).to_owned(), (*v).to_owned()))
                .collect(),
        }
    }

    fn owned(v: &[(&str, &str)]) -> Vec<(String, String)> {
        v.iter()
            .map(|(n, v)| ((*n).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn no_options_means_lock_step_512_and_no_oack() {
        let n = negotiate(&req(Mode::Octet, &[]), &LIMITS, Some(10)).expect("ok");
        assert_eq!((n.blksize, n.windowsize, n.timeout), (512, 1, None));
        assert!(n.oack.is_empty());
    }

    #[test]
    fn grants_and_lowers_options_in_client_order() {
        let r = req(
            Mode::Octet,
            &[
                ("TSIZE", "0"),
                ("blksize", "65464"),
                ("windowsize", "1000"),
                ("timeout", "3"),
                ("multicast", ""),
            ],
        );
        let n = negotiate(&r, &LIMITS, Some(4096)).expect("ok");
        assert_eq!(n.blksize, 1468);
        assert_eq!(n.windowsize, 64);
        assert_eq!(n.timeout, Some(Duration::from_secs(3)));
        assert_eq!(
            n.oack,
            owned(&[
                ("TSIZE", "4096"),
                ("blksize", "1468"),
                ("windowsize", "64"),
                ("timeout", "3")
            ])
        );
    }

    #[test]
    fn small_values_are_kept_and_tsize_is_omitted_in_netascii() {
        let r = req(Mode::Netascii, &[("blksize", "8"), ("tsize", "0")]);
        let n = negotiate(&r, &LIMITS, Some(10)).expect("ok");
        assert_eq!(n.blksize, 8);
        assert_eq!(n.oack, owned(&[("blksize", "8")]));
    }

    #[test]
    fn refuses_bad_values() {
        for (name, value) in [
            ("blksize", "7"),
            ("blksize", "0"),
            ("blksize", "abc"),
            ("blksize", "-1"),
            ("blksize", ""),
            ("windowsize", "0"),
            ("windowsize", "65536"),
            ("timeout", "0"),
            ("timeout", "256"),
            ("tsize", "x"),
            ("tsize", "+1"),
        ] {
            assert!(
                negotiate(&req(Mode::Octet, &[(name, value)]), &LIMITS, Some(1)).is_err(),
                "{name}={value}"
            );
        }
    }

    #[test]
    fn relative_paths() {
        let ok = [
            ("pxelinux.0", "pxelinux.0"),
            ("/pxelinux.0", "pxelinux.0"),
            ("//a/./b", "a/b"),
            ("\\EFI\\BOOT\\grubx64.efi", "EFI/BOOT/grubx64.efi"),
            ("/srv/tftp/ipxe.efi", "ipxe.efi"),
            ("/srv/tftpx/ipxe.efi", "srv/tftpx/ipxe.efi"),
            ("/etc/passwd", "etc/passwd"),
        ];
        for (input, want) in ok {
            assert_eq!(
                relative_path(input, "/srv/tftp/").as_deref(),
                Ok(want),
                "{input}"
            );
        }
        for bad in [
            "../outside.txt",
            "a/../../b",
            "/srv/tftp/../x",
            "..\\x",
            "/",
            "a\nb",
        ] {
            assert!(relative_path(bad, "/srv/tftp").is_err(), "{bad}");
        }
    }
}
