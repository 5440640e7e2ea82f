//! Template specs: `image.toml` parsed strictly (unknown keys name the file, line and key),
//! then validated into a [`Spec`] with the `--set` variables applied.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::render;

/// The file every template folder holds.
pub const SPEC_FILE: &str = "image.toml";

/// A template spec that cannot be loaded.
#[derive(Debug, thiserror::Error)]
pub enum SpecError {
    /// The spec file could not be read.
    #[error("failed to read template spec `{path}`")]
    Read {
        /// The spec file.
        path: PathBuf,
        /// Why.
        #[source]
        err: std::io::Error,
    },
    /// A key the spec format does not know.
    #[error("{path}:{line}: unknown key `{key}`")]
    UnknownKey {
        /// The spec file.
        path: PathBuf,
        /// 1-based line of the key.
        line: usize,
        /// The key as written.
        key: String,
    },
    /// Any other syntax or type error.
    #[error("{path}:{line}: invalid template spec: {message}")]
    Syntax {
        /// The spec file.
        path: PathBuf,
        /// 1-based line of the problem.
        line: usize,
        /// What the parser said.
        message: String,
    },
    /// A `--set` for a variable the template does not declare in `[vars]`.
    #[error("{path}: `--set {key}`: the template declares no such variable in [vars]")]
    UnknownVariable {
        /// The spec file.
        path: PathBuf,
        /// The variable.
        key: String,
    },
    /// A spec field that references a variable could not be rendered.
    #[error("{path}: key `{key}` could not be rendered")]
    Render {
        /// The spec file.
        path: PathBuf,
        /// The spec key being rendered.
        key: String,
        /// Why.
        #[source]
        err: render::RenderError,
    },
    /// A value is syntactically fine but not acceptable.
    #[error("{path}: key `{key}`: {reason}")]
    Invalid {
        /// The spec file.
        path: PathBuf,
        /// The offending key.
        key: String,
        /// Why it is rejected.
        reason: String,
    },
}

/// Which program bootstraps the root file system.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum BootstrapTool {
    /// `debootstrap` (the default).
    #[default]
    Debootstrap,
    /// `mmdebstrap` (faster).
    Mmdebstrap,
}

/// The boot modes a disk image supports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum BootMode {
    /// SeaBIOS/legacy BIOS only (syslinux).
    Bios,
    /// UEFI only (systemd-boot).
    Uefi,
    /// Both from one disk.
    #[default]
    Both,
}

impl BootMode {
    /// Whether BIOS boot is installed.
    pub fn bios(self) -> bool {
        matches!(self, Self::Bios | Self::Both)
    }
    /// Whether UEFI boot is installed.
    pub fn uefi(self) -> bool {
        matches!(self, Self::Uefi | Self::Both)
    }
}

/// What the template produces.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    /// A golden image: rootfs tarball, raw and qcow2 disks.
    #[default]
    Disk,
    /// Only the customised `rootfs.tar.zst` (no kernel needed; `[disk]` is not used).
    Rootfs,
    /// The deploy ramdisk: kernel + initramfs with busybox and the imager.
    Ramdisk,
}

/// The hook points a template can run scripts at, in pipeline order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum HookStage {
    /// After files, users and services are applied.
    Customise,
    /// Where the host agent gets installed.
    Agent,
    /// Last, just before packing.
    Finalise,
}

impl HookStage {
    /// Name as written in specs and events.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Customise => "customise",
            Self::Agent => "agent",
            Self::Finalise => "finalise",
        }
    }
}

mod wire {
    use super::*;

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    pub(super) struct Spec {
        pub(super) name: String,
        pub(super) version: String,
        #[serde(default)]
        pub(super) kind: Kind,
        pub(super) bootstrap: Bootstrap,
        #[serde(default)]
        pub(super) apt: Apt,
        #[serde(default)]
        pub(super) system: System,
        #[serde(default)]
        pub(super) users: Vec<User>,
        #[serde(default)]
        pub(super) services: Services,
        #[serde(default)]
        pub(super) files: Vec<File>,
        #[serde(default)]
        pub(super) hooks: Vec<Hook>,
        #[serde(default)]
        pub(super) vars: BTreeMap<String, String>,
        #[serde(default)]
        pub(super) disk: Disk,
        #[serde(default)]
        pub(super) firstboot: Firstboot,
        pub(super) ramdisk: Option<Ramdisk>,
    }

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    pub(super) struct Bootstrap {
        #[serde(default)]
        pub(super) tool: BootstrapTool,
        pub(super) suite: String,
        #[serde(default = "default_variant")]
        pub(super) variant: String,
        pub(super) mirror: Option<String>,
        #[serde(default = "default_components")]
        pub(super) components: Vec<String>,
        #[serde(default)]
        pub(super) packages: Vec<String>,
        pub(super) kernel: Option<String>,
    }

    fn default_variant() -> String {
        "minbase".into()
    }
    fn default_components() -> Vec<String> {
        vec!["main".into()]
    }

    #[derive(Debug, Default, Deserialize)]
    #[serde(deny_unknown_fields)]
    pub(super) struct Apt {
        #[serde(default)]
        pub(super) sources: Vec<AptSource>,
    }

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    pub(super) struct AptSource {
        pub(super) line: String,
        pub(super) key: Option<PathBuf>,
    }

    #[derive(Debug, Default, Deserialize)]
    #[serde(deny_unknown_fields)]
    pub(super) struct System {
        pub(super) hostname: Option<String>,
        pub(super) locale: Option<String>,
        pub(super) timezone: Option<String>,
    }

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    pub(super) struct User {
        pub(super) name: String,
        pub(super) password_hash: Option<String>,
        #[serde(default)]
        pub(super) ssh_keys: Vec<String>,
        #[serde(default)]
        pub(super) groups: Vec<String>,
        pub(super) shell: Option<String>,
    }

    #[derive(Debug, Default, Deserialize)]
    #[serde(deny_unknown_fields)]
    pub(super) struct Services {
        #[serde(default)]
        pub(super) enable: Vec<String>,
        #[serde(default)]
        pub(super) disable: Vec<String>,
    }

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    pub(super) struct File {
        pub(super) src: PathBuf,
        pub(super) dest: String,
        pub(super) mode: Option<String>,
        #[serde(default = "yes")]
        pub(super) render: bool,
    }

    fn yes() -> bool {
        true
    }

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    pub(super) struct Hook {
        pub(super) name: String,
        pub(super) stage: HookStage,
        pub(super) script: PathBuf,
    }

    #[derive(Debug, Default, Deserialize)]
    #[serde(deny_unknown_fields)]
    pub(super) struct Disk {
        pub(super) size_mib: Option<u64>,
        pub(super) esp_mib: Option<u64>,
        #[serde(default)]
        pub(super) boot: BootMode,
        #[serde(default)]
        pub(super) qcow2_compress: bool,
        pub(super) zstd: Option<bool>,
        pub(super) kernel_args: Option<String>,
    }

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    pub(super) struct Firstboot {
        #[serde(default = "yes")]
        pub(super) regenerate_machine_id: bool,
        #[serde(default = "yes")]
        pub(super) regenerate_host_keys: bool,
        #[serde(default = "yes")]
        pub(super) grow_root: bool,
    }

    impl Default for Firstboot {
        fn default() -> Self {
            Self {
                regenerate_machine_id: true,
                regenerate_host_keys: true,
                grow_root: true,
            }
        }
    }

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    pub(super) struct Ramdisk {
        pub(super) imager: String,
        pub(super) init: PathBuf,
        #[serde(default)]
        pub(super) module_dirs: Vec<String>,
    }
}

/// A user account created in the image.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct User {
    /// Login name.
    pub name: String,
    /// A crypt(3) hash for `/etc/shadow`; `None` locks the password.
    pub password_hash: Option<String>,
    /// Lines for `~/.ssh/authorized_keys`.
    pub ssh_keys: Vec<String>,
    /// Supplementary groups.
    pub groups: Vec<String>,
    /// Login shell.
    pub shell: String,
}

/// A file of the template folder installed into the image.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FileSpec {
    /// Path inside the template folder.
    pub src: PathBuf,
    /// Absolute path inside the image.
    pub dest: String,
    /// Permission bits.
    pub mode: u32,
    /// Whether the content goes through handlebars.
    pub render: bool,
}

/// A script of the template folder run in the image's chroot at a hook point.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Hook {
    /// Name used in events and errors.
    pub name: String,
    /// When it runs.
    pub stage: HookStage,
    /// Path inside the template folder.
    pub script: PathBuf,
}

/// An extra apt source, with its signing key file from the template folder.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AptSource {
    /// A one-line `deb URI SUITE COMPONENTS` source.
    pub line: String,
    /// An ASCII-armoured or binary key file inside the template folder.
    pub key: Option<PathBuf>,
}

/// How the bootstrap stage runs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct BootstrapSpec {
    /// debootstrap or mmdebstrap.
    pub tool: BootstrapTool,
    /// Debian suite, e.g. `bookworm`.
    pub suite: String,
    /// Bootstrap variant, e.g. `minbase`.
    pub variant: String,
    /// The mirror URI; `None` takes it from the machine's apt sources.
    pub mirror: Option<String>,
    /// Archive components.
    pub components: Vec<String>,
    /// Packages installed on top of the variant (the kernel included).
    pub packages: Vec<String>,
    /// The kernel package, if any.
    pub kernel: Option<String>,
}

/// Disk layout and boot options.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DiskSpec {
    /// Whole disk size in MiB.
    pub size_mib: u64,
    /// EFI system partition size in MiB.
    pub esp_mib: u64,
    /// Boot modes installed.
    pub boot: BootMode,
    /// Whether `disk.qcow2` is compressed.
    pub qcow2_compress: bool,
    /// Whether `disk.raw.zst` (a zstd stream of `disk.raw`, what the imager downloads) is built.
    /// Not part of the disk stage key: `disk.raw` does not depend on it.
    #[serde(skip)]
    pub zstd: bool,
    /// Extra kernel command line arguments after `root=` and `console=`.
    pub kernel_args: String,
}

/// The first-boot units installed in the image.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct FirstbootSpec {
    /// Empty `/etc/machine-id` so systemd generates a new one.
    pub regenerate_machine_id: bool,
    /// Remove SSH host keys and generate them on first boot.
    pub regenerate_host_keys: bool,
    /// Grow the root partition and file system to the disk.
    pub grow_root: bool,
}

/// The deploy ramdisk's own settings.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RamdiskSpec {
    /// Host path of the imager binary copied to `/bin/imager`.
    pub imager: PathBuf,
    /// The `/init` template inside the template folder.
    pub init: PathBuf,
    /// Directories under `lib/modules/VERSION/kernel/` copied into the initramfs.
    pub module_dirs: Vec<String>,
}

/// A validated template spec with its variables resolved.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Spec {
    /// The template folder.
    pub dir: PathBuf,
    /// Template name.
    pub name: String,
    /// Template version.
    pub version: String,
    /// Disk image or deploy ramdisk.
    pub kind: Kind,
    /// Bootstrap stage inputs.
    pub bootstrap: BootstrapSpec,
    /// Extra apt sources.
    pub apt_sources: Vec<AptSource>,
    /// Hostname written to `/etc/hostname`.
    pub hostname: String,
    /// `LANG` written to `/etc/default/locale`.
    pub locale: String,
    /// Zone written to `/etc/timezone` and `/etc/localtime`.
    pub timezone: String,
    /// Accounts created.
    pub users: Vec<User>,
    /// Units enabled.
    pub enable: Vec<String>,
    /// Units disabled.
    pub disable: Vec<String>,
    /// Files installed.
    pub files: Vec<FileSpec>,
    /// Hooks, in spec order.
    pub hooks: Vec<Hook>,
    /// Template variables after `--set`.
    pub vars: BTreeMap<String, String>,
    /// Disk layout.
    pub disk: DiskSpec,
    /// First-boot units.
    pub firstboot: FirstbootSpec,
    /// Ramdisk settings (only for `kind = "ramdisk"`).
    pub ramdisk: Option<RamdiskSpec>,
}

fn line_of(text: &str, offset: usize) -> usize {
    text[..offset.min(text.len())].matches('\n').count() + 1
}

impl Spec {
    /// Loads `DIR/image.toml` and applies `--set` overrides (`sets`), which must name
    /// variables declared in `[vars]`.
    pub fn load(dir: &Path, sets: &[(String, String)]) -> Result<Spec, SpecError> {
        let path = dir.join(SPEC_FILE);
        let text = std::fs::read_to_string(&path).map_err(|err| SpecError::Read {
            path: path.clone(),
            err,
        })?;
        Self::parse(dir, &path, &text, sets)
    }

    /// Parses spec `text` read from `path` for the template folder `dir`.
    pub fn parse(
        dir: &Path,
        path: &Path,
        text: &str,
        sets: &[(String, String)],
    ) -> Result<Spec, SpecError> {
        let wire: wire::Spec = toml::from_str(text).map_err(|e| {
            let span = e.span().unwrap_or(0..0);
            let line = line_of(text, span.start);
            if e.message().starts_with("unknown field") {
                let key = text
                    .get(span.clone())
                    .unwrap_or_default()
                    .trim_matches(|c| c == '"' || c == '\'')
                    .to_owned();
                SpecError::UnknownKey {
                    path: path.to_owned(),
                    line,
                    key,
                }
            } else {
                SpecError::Syntax {
                    path: path.to_owned(),
                    line,
                    message: e.message().trim().to_owned(),
                }
            }
        })?;
        Self::validate(dir, path, wire, sets)
    }

    fn validate(
        dir: &Path,
        path: &Path,
        w: wire::Spec,
        sets: &[(String, String)],
    ) -> Result<Spec, SpecError> {
        let invalid = |key: &str, reason: &str| SpecError::Invalid {
            path: path.to_owned(),
            key: key.to_owned(),
            reason: reason.to_owned(),
        };
        let mut vars = w.vars;
        for (k, v) in sets {
            match vars.get_mut(k) {
                Some(slot) => *slot = v.clone(),
                None => {
                    return Err(SpecError::UnknownVariable {
                        path: path.to_owned(),
                        key: k.clone(),
                    });
                }
            }
        }
        let r = |key: &str, value: &str| {
            render::render_str(key, value, &vars).map_err(|err| SpecError::Render {
                path: path.to_owned(),
                key: key.to_owned(),
                err,
            })
        };

        if w.name.is_empty()
            || !w
                .name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
        {
            return Err(invalid("name", "must be non-empty [A-Za-z0-9._-]"));
        }
        let kernel = match &w.bootstrap.kernel {
            Some(k) => Some(r("bootstrap.kernel", k)?).filter(|k| !k.is_empty()),
            None => None,
        };
        let mut packages = Vec::new();
        for p in &w.bootstrap.packages {
            packages.push(r("bootstrap.packages", p)?);
        }
        if let Some(k) = &kernel {
            packages.push(k.clone());
        }
        packages.sort();
        packages.dedup();
        if w.bootstrap.suite.is_empty() {
            return Err(invalid("bootstrap.suite", "must not be empty"));
        }

        let mut files = Vec::new();
        for f in w.files {
            if !f.dest.starts_with('/') {
                return Err(invalid(
                    "files.dest",
                    "must be an absolute path in the image",
                ));
            }
            let mode = match &f.mode {
                Some(m) => u32::from_str_radix(m, 8)
                    .ok()
                    .filter(|m| *m <= 0o7777)
                    .ok_or_else(|| invalid("files.mode", "must be an octal mode like \"0644\""))?,
                None => 0o644,
            };
            files.push(FileSpec {
                src: f.src,
                dest: f.dest,
                mode,
                render: f.render,
            });
        }
        let hooks = w
            .hooks
            .into_iter()
            .map(|h| Hook {
                name: h.name,
                stage: h.stage,
                script: h.script,
            })
            .collect();
        let mut users = Vec::new();
        for u in w.users {
            let mut ssh_keys = Vec::new();
            for k in &u.ssh_keys {
                let k = r("users.ssh_keys", k)?;
                if !k.trim().is_empty() {
                    ssh_keys.push(k);
                }
            }
            users.push(User {
                name: u.name,
                password_hash: u.password_hash,
                ssh_keys,
                groups: u.groups,
                shell: u.shell.unwrap_or_else(|| "/bin/bash".into()),
            });
        }
        let ramdisk = match (w.kind, w.ramdisk) {
            (Kind::Ramdisk, Some(rd)) => {
                let imager = r("ramdisk.imager", &rd.imager)?;
                if imager.is_empty() {
                    return Err(invalid(
                        "ramdisk.imager",
                        "no imager binary given: pass `--set imager=PATH`",
                    ));
                }
                Some(RamdiskSpec {
                    imager: PathBuf::from(imager),
                    init: rd.init,
                    module_dirs: rd.module_dirs,
                })
            }
            (Kind::Ramdisk, None) => {
                return Err(invalid(
                    "ramdisk",
                    "kind = \"ramdisk\" needs a [ramdisk] table",
                ));
            }
            (Kind::Disk | Kind::Rootfs, Some(_)) => {
                return Err(invalid("ramdisk", "only allowed with kind = \"ramdisk\""));
            }
            (Kind::Disk | Kind::Rootfs, None) => None,
        };
        if w.kind == Kind::Disk && kernel.is_none() {
            return Err(invalid(
                "bootstrap.kernel",
                "a disk image needs a kernel package",
            ));
        }
        let size_mib = w.disk.size_mib.unwrap_or(2048);
        let esp_mib = w.disk.esp_mib.unwrap_or(256);
        if esp_mib < 33 || size_mib < esp_mib + 64 {
            return Err(invalid(
                "disk.size_mib",
                "the disk must hold the ESP (>= 33 MiB) and at least 64 MiB of root",
            ));
        }
        Ok(Spec {
            dir: dir.to_owned(),
            name: w.name,
            version: w.version,
            kind: w.kind,
            bootstrap: BootstrapSpec {
                tool: w.bootstrap.tool,
                suite: w.bootstrap.suite,
                variant: w.bootstrap.variant,
                mirror: w.bootstrap.mirror,
                components: w.bootstrap.components,
                packages,
                kernel,
            },
            apt_sources: w
                .apt
                .sources
                .into_iter()
                .map(|s| AptSource {
                    line: s.line,
                    key: s.key,
                })
                .collect(),
            hostname: r(
                "system.hostname",
                w.system.hostname.as_deref().unwrap_or("debian"),
            )?,
            locale: w.system.locale.unwrap_or_else(|| "C.UTF-8".into()),
            timezone: w.system.timezone.unwrap_or_else(|| "Etc/UTC".into()),
            users,
            enable: w.services.enable,
            disable: w.services.disable,
            files,
            hooks,
            vars,
            disk: DiskSpec {
                size_mib,
                esp_mib,
                boot: w.disk.boot,
                qcow2_compress: w.disk.qcow2_compress,
                zstd: w.disk.zstd.unwrap_or(true),
                kernel_args: w.disk.kernel_args.unwrap_or_default(),
            },
            firstboot: FirstbootSpec {
                regenerate_machine_id: w.firstboot.regenerate_machine_id,
                regenerate_host_keys: w.firstboot.regenerate_host_keys,
                grow_root: w.firstboot.grow_root,
            },
            ramdisk,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIN: &str = r#"
name = "t"
version = "1"
[bootstrap]
suite = "bookworm"
kernel = "{{kernel}}"
[vars]
kernel = "linux-image-amd64"
"#;

    fn parse(text: &str, sets: &[(String, String)]) -> Result<Spec, SpecError> {
        Spec::parse(Path::new("/t"), Path::new("/t/image.toml"), text, sets)
    }

    #[test]
    fn unknown_key_names_file_line_and_key() {
        let text = format!("{MIN}\n[disk]\nsize_mib = 1024\nbogus_key = 3\n");
        let err = parse(&text, &[]).expect_err("unknown key");
        assert_eq!(err.to_string(), "/t/image.toml:12: unknown key `bogus_key`");
        let err = parse("name = \"x\"\nversion = \"1\"\nwat = 1\n", &[]).expect_err("unknown");
        assert_eq!(err.to_string(), "/t/image.toml:3: unknown key `wat`");
    }

    #[test]
    fn defaults_and_set_override() {
        let s = parse(MIN, &[]).expect("valid");
        assert_eq!(s.bootstrap.tool, BootstrapTool::Debootstrap);
        assert_eq!(s.bootstrap.variant, "minbase");
        assert_eq!(s.bootstrap.packages, vec!["linux-image-amd64"]);
        assert_eq!(s.disk.boot, BootMode::Both);
        let s = parse(MIN, &[("kernel".into(), "linux-image-cloud-amd64".into())]).expect("valid");
        assert_eq!(
            s.bootstrap.kernel.as_deref(),
            Some("linux-image-cloud-amd64")
        );
    }

    #[test]
    fn set_of_undeclared_variable_is_an_error() {
        let err = parse(MIN, &[("nope".into(), "1".into())]).expect_err("undeclared");
        assert!(err.to_string().contains("`--set nope`"), "{err}");
    }

    #[test]
    fn type_errors_name_the_line() {
        let err = parse("name = \"x\"\nversion = 1\n", &[]).expect_err("type");
        assert!(err.to_string().starts_with("/t/image.toml:2: "), "{err}");
    }

    #[test]
    fn bad_mode_and_relative_dest_are_rejected() {
        let text = format!("{MIN}\n[[files]]\nsrc = \"a\"\ndest = \"etc/a\"\n");
        assert!(
            parse(&text, &[])
                .expect_err("relative")
                .to_string()
                .contains("files.dest")
        );
        let text = format!("{MIN}\n[[files]]\nsrc = \"a\"\ndest = \"/etc/a\"\nmode = \"999\"\n");
        assert!(
            parse(&text, &[])
                .expect_err("mode")
                .to_string()
                .contains("files.mode")
        );
    }

    #[test]
    fn only_disk_images_need_a_kernel() {
        let no_kernel = "name = \"t\"\nversion = \"1\"\n[bootstrap]\nsuite = \"bookworm\"\n";
        let err = parse(no_kernel, &[]).expect_err("disk without kernel");
        assert!(err.to_string().contains("bootstrap.kernel"), "{err}");
        let s = parse(&format!("kind = \"rootfs\"\n{no_kernel}"), &[]).expect("rootfs");
        assert_eq!((s.kind, s.bootstrap.kernel), (Kind::Rootfs, None));
        assert!(s.bootstrap.packages.is_empty());
    }

    #[test]
    fn ramdisk_refuses_to_build_without_imager() {
        let text = r#"
name = "rd"
version = "1"
kind = "ramdisk"
[bootstrap]
suite = "bookworm"
kernel = "linux-image-cloud-amd64"
[vars]
imager = ""
[ramdisk]
imager = "{{imager}}"
init = "init.hbs"
"#;
        let err = parse(text, &[]).expect_err("no imager");
        assert!(err.to_string().contains("--set imager=PATH"), "{err}");
        let s = parse(text, &[("imager".into(), "/bin/true".into())]).expect("imager given");
        assert_eq!(
            s.ramdisk.expect("ramdisk").imager,
            PathBuf::from("/bin/true")
        );
    }
}
