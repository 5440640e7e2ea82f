//! The boot decision: which network-boot program or script a client gets. Pure.

use crate::MacAddr;

/// What a booting client told us about itself (options 93, 60, 77 and 175).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct BootClient {
    /// Option 93 (RFC 4578) client architecture, the first one listed.
    pub arch: Option<u16>,
    /// Option 60 vendor class (`PXEClient:...`, `HTTPClient:...`).
    pub vendor_class: Option<String>,
    /// Option 77 user class.
    pub user_class: Option<String>,
    /// Whether option 175 (iPXE encapsulated options) was present.
    pub has_ipxe_options: bool,
}

impl BootClient {
    /// The client is already running iPXE (user class `iPXE` or option 175 present).
    pub fn is_ipxe(&self) -> bool {
        self.has_ipxe_options || self.user_class.as_deref() == Some("iPXE")
    }

    /// The client asks to network-boot at all (PXE, UEFI HTTP boot or iPXE).
    pub fn is_boot_client(&self) -> bool {
        self.is_ipxe()
            || self.arch.is_some()
            || self
                .vendor_class
                .as_deref()
                .is_some_and(|v| v.starts_with("PXEClient") || v.starts_with("HTTPClient"))
    }

    fn is_http_client(&self) -> bool {
        self.vendor_class
            .as_deref()
            .is_some_and(|v| v.starts_with("HTTPClient"))
            || matches!(self.arch, Some(ARCH_X64_HTTP))
    }
}

/// RFC 4578 / IANA processor architecture types this server knows.
const ARCH_BIOS: u16 = 0;
const ARCH_EFI_X64: u16 = 7;
const ARCH_EFI_BC: u16 = 9;
const ARCH_X64_HTTP: u16 = 16;

/// Boot settings the decision needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BootConfig {
    /// TFTP file for legacy BIOS PXE clients (`undionly.kpxe`).
    pub bios_file: String,
    /// TFTP file for UEFI x64 PXE clients (`snponly.efi` or `ipxe.efi`).
    pub uefi_file: String,
    /// The iPXE binary UEFI HTTP boot clients fetch from `/ipxe/` (`snponly.efi`).
    pub http_uefi_file: String,
}

impl Default for BootConfig {
    fn default() -> Self {
        BootConfig {
            bios_file: "undionly.kpxe".into(),
            uefi_file: "snponly.efi".into(),
            http_uefi_file: "snponly.efi".into(),
        }
    }
}

/// Where a client boots from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BootDecision {
    /// Fetch `file` over TFTP from next-server.
    Tftp {
        /// The boot file name.
        file: String,
    },
    /// Fetch `url` over HTTP.
    Http {
        /// The boot file or script URL.
        url: String,
        /// Echo option 60 `HTTPClient` (UEFI HTTP boot requires it).
        echo_http_client: bool,
    },
}

impl BootDecision {
    /// The value for the `file` field / option 67.
    pub fn file(&self) -> &str {
        match self {
            BootDecision::Tftp { file } => file,
            BootDecision::Http { url, .. } => url,
        }
    }
}

/// Decides how `client` boots. `http_base` is `http://<our address>[:port]`, no trailing slash.
/// `None` means the client is not a network-boot client we serve (only an address for it).
pub fn decide(
    client: &BootClient,
    cfg: &BootConfig,
    mac: MacAddr,
    http_base: &str,
) -> Option<BootDecision> {
    if client.is_ipxe() {
        return Some(BootDecision::Http {
            url: format!("{http_base}/boot/{}.ipxe", mac.hyphenated()),
            echo_http_client: false,
        });
    }
    if client.is_http_client() {
        return Some(BootDecision::Http {
            url: format!("{http_base}/ipxe/{}", cfg.http_uefi_file),
            echo_http_client: true,
        });
    }
    if !client.is_boot_client() {
        return None;
    }
    // A PXE client without option 93 is a legacy BIOS (RFC 4578 made 93 mandatory for UEFI).
    match client.arch.unwrap_or(ARCH_BIOS) {
        ARCH_BIOS => Some(BootDecision::Tftp {
            file: cfg.bios_file.clone(),
        }),
        ARCH_EFI_X64 | ARCH_EFI_BC => Some(BootDecision::Tftp {
            file: cfg.uefi_file.clone(),
        }),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAC: MacAddr = MacAddr([0x52, 0x54, 0, 0xab, 0xcd, 1]);
    const BASE: &str = "http://10.61.0.1:8080";

    fn client(
        arch: Option<u16>,
        vendor: Option<&str>,
        user: Option<&str>,
        o175: bool,
    ) -> BootClient {
        BootClient {
            arch,
            vendor_class: vendor.map(str::to_owned),
            user_class: user.map(str::to_owned),
            has_ipxe_options: o175,
        }
    }

    fn tftp(f: &str) -> Option<BootDecision> {
        Some(BootDecision::Tftp { file: f.into() })
    }

    #[test]
    fn decision_table() {
        let cfg = BootConfig::default();
        let script = Some(BootDecision::Http {
            url: "http://10.61.0.1:8080/boot/52-54-00-ab-cd-01.ipxe".into(),
            echo_http_client: false,
        });
        let http_efi = Some(BootDecision::Http {
            url: "http://10.61.0.1:8080/ipxe/snponly.efi".into(),
            echo_http_client: true,
        });
        let pxe = Some("PXEClient:Arch:00000:UNDI:002001");
        let pxe7 = Some("PXEClient:Arch:00007:UNDI:003016");
        let http = Some("HTTPClient:Arch:00016:UNDI:003001");
        let table: &[(BootClient, Option<BootDecision>)] = &[
            // Plain DHCP clients get no boot information.
            (client(None, None, None, false), None),
            (client(None, Some("udhcp 1.35.0"), None, false), None),
            // Legacy BIOS PXE, with and without option 93.
            (client(Some(0), pxe, None, false), tftp("undionly.kpxe")),
            (client(None, pxe, None, false), tftp("undionly.kpxe")),
            // UEFI x64 PXE (7 and 9).
            (client(Some(7), pxe7, None, false), tftp("snponly.efi")),
            (client(Some(9), pxe, None, false), tftp("snponly.efi")),
            (client(Some(7), None, None, false), tftp("snponly.efi")),
            // Unknown architectures (ARM, IA32 EFI) get nothing rather than a wrong binary.
            (client(Some(11), pxe, None, false), None),
            (client(Some(6), pxe, None, false), None),
            // UEFI HTTP boot.
            (client(Some(16), http, None, false), http_efi.clone()),
            (client(Some(16), None, None, false), http_efi),
            // Already iPXE: by user class or by option 175, whatever the arch.
            (client(Some(0), pxe, Some("iPXE"), false), script.clone()),
            (client(Some(7), pxe7, None, true), script.clone()),
            (client(Some(16), http, Some("iPXE"), true), script.clone()),
            (client(None, None, Some("iPXE"), false), script),
            // Another user class is not iPXE.
            (
                client(Some(0), pxe, Some("gPXE"), false),
                tftp("undionly.kpxe"),
            ),
        ];
        for (c, want) in table {
            assert_eq!(&decide(c, &cfg, MAC, BASE), want, "{c:?}");
        }
    }

    #[test]
    fn uefi_file_is_configurable() {
        let cfg = BootConfig {
            uefi_file: "ipxe.efi".into(),
            ..BootConfig::default()
        };
        assert_eq!(
            decide(&client(Some(7), None, None, false), &cfg, MAC, BASE),
            tftp("ipxe.efi")
        );
    }
}
