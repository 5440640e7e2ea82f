//! Per-host iPXE scripts: which template a host gets ([`BootScripts`]) and rendering it with
//! handlebars (strict mode, no escaping) from the embedded templates or a directory of overrides.

use camino::{Utf8Path, Utf8PathBuf};
use handlebars::Handlebars;
use serde_json::{Map, Value};

use super::config::DefaultBoot;
use crate::MacAddr;

/// File name suffix of iPXE script templates.
pub const TEMPLATE_SUFFIX: &str = ".ipxe.hbs";

/// The template rendered when [`BootScripts::script_for`] has no choice for a host.
pub const DEFAULT_TEMPLATE: &str = "default";

/// Templates compiled into the binary, from `templates/ipxe/`.
const EMBEDDED: [(&str, &str); 3] = [
    (
        "default",
        include_str!("../../../templates/ipxe/default.ipxe.hbs"),
    ),
    (
        "deploy",
        include_str!("../../../templates/ipxe/deploy.ipxe.hbs"),
    ),
    (
        "local",
        include_str!("../../../templates/ipxe/local.ipxe.hbs"),
    ),
];

/// The script chosen for one host.
#[derive(Debug, Clone, PartialEq)]
pub struct ScriptChoice {
    /// Template name: a file `<name>.ipxe.hbs` (embedded or in the template directory).
    pub template: String,
    /// Variables the template uses. `mac` and `mac_hyphenated` are always added.
    pub vars: Map<String, Value>,
}

/// Why a [`BootScripts`] implementation could not choose (its inventory is unreachable, say).
/// The client gets a 500 and iPXE retries; the chain is logged.
pub type ChooseError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// Chooses the boot script of each host; the control node implements it from its inventory.
#[async_trait::async_trait]
pub trait BootScripts: Send + Sync + 'static {
    /// Which template and variables to render for this MAC (`Ok(None)` = the default template).
    ///
    /// Cancel safety: the request is dropped when the client goes away; whatever the
    /// implementation has persisted by then stays.
    async fn script_for(&self, mac: MacAddr) -> Result<Option<ScriptChoice>, ChooseError>;
}

/// A [`BootScripts`] that gives every host the default script (the standalone `netsvc`).
#[derive(Debug, Clone, Copy, Default)]
pub struct DefaultScripts;

#[async_trait::async_trait]
impl BootScripts for DefaultScripts {
    async fn script_for(&self, _mac: MacAddr) -> Result<Option<ScriptChoice>, ChooseError> {
        Ok(None)
    }
}

/// A template that cannot be loaded or rendered.
#[derive(Debug, thiserror::Error)]
pub enum TemplateError {
    /// The template directory could not be listed or a file read.
    #[error("failed to read template `{path}`")]
    Read {
        /// File or directory.
        path: Utf8PathBuf,
        /// The cause.
        #[source]
        err: std::io::Error,
    },
    /// A template does not parse.
    #[error("template `{name}` does not parse")]
    Parse {
        /// Template name.
        name: String,
        /// The cause.
        #[source]
        err: Box<handlebars::TemplateError>,
    },
    /// No template of that name.
    #[error("no template `{name}`")]
    Unknown {
        /// Template name.
        name: String,
    },
    /// Rendering failed (in strict mode, a variable the template uses is missing).
    #[error("failed to render template `{name}` for {mac}")]
    Render {
        /// Template name.
        name: String,
        /// The host.
        mac: MacAddr,
        /// The cause.
        #[source]
        err: Box<handlebars::RenderError>,
    },
}

/// The loaded templates and the default boot settings.
#[derive(Debug)]
pub(crate) struct Scripts {
    registry: Handlebars<'static>,
    default_vars: Map<String, Value>,
}

/// Turns a configured kernel or initrd into the URL put in the script: URLs and absolute paths
/// as given, anything else relative to `/files/` (iPXE resolves it against the script's URL).
fn boot_url(v: &str) -> String {
    if v.contains("://") || v.starts_with('/') {
        v.to_owned()
    } else {
        format!("/files/{v}")
    }
}

/// The variables of the default template.
pub(crate) fn default_vars(boot: &DefaultBoot) -> Map<String, Value> {
    let mut m = Map::new();
    let s = |v: Option<String>| v.map_or(Value::Null, Value::String);
    m.insert("kernel".into(), s(boot.kernel.as_deref().map(boot_url)));
    m.insert("initrd".into(), s(boot.initrd.as_deref().map(boot_url)));
    let name = boot.initrd.as_deref().map(|i| {
        i.rsplit('/')
            .next()
            .filter(|n| !n.is_empty())
            .unwrap_or("initrd")
            .to_owned()
    });
    m.insert("initrd_name".into(), s(name));
    m.insert("cmdline".into(), Value::String(boot.cmdline.clone()));
    m
}

impl Scripts {
    /// Loads the embedded templates, then every `*.ipxe.hbs` of `dir` (replacing same names).
    pub(crate) fn load(dir: Option<&Utf8Path>, boot: &DefaultBoot) -> Result<Self, TemplateError> {
        let mut registry = Handlebars::new();
        registry.set_strict_mode(true);
        registry.register_escape_fn(handlebars::no_escape);
        for (name, text) in EMBEDDED {
            register(&mut registry, name, text)?;
        }
        if let Some(dir) = dir {
            for (name, path) in template_files(dir)? {
                let text = std::fs::read_to_string(&path)
                    .map_err(|err| TemplateError::Read { path, err })?;
                register(&mut registry, &name, &text)?;
            }
        }
        Ok(Scripts {
            registry,
            default_vars: default_vars(boot),
        })
    }

    /// Renders the script of `mac`.
    pub(crate) fn render(
        &self,
        mac: MacAddr,
        choice: Option<ScriptChoice>,
    ) -> Result<String, TemplateError> {
        let (name, mut vars) = match choice {
            Some(c) => (c.template, c.vars),
            None => (DEFAULT_TEMPLATE.to_owned(), self.default_vars.clone()),
        };
        if !self.registry.has_template(&name) {
            return Err(TemplateError::Unknown { name });
        }
        vars.insert("mac".into(), Value::String(mac.to_string()));
        vars.insert("mac_hyphenated".into(), Value::String(mac.hyphenated()));
        self.registry
            .render(&name, &vars)
            .map_err(|err| TemplateError::Render {
                name,
                mac,
                err: Box::new(err),
            })
    }
}

fn register(
    registry: &mut Handlebars<'static>,
    name: &str,
    text: &str,
) -> Result<(), TemplateError> {
    registry
        .register_template_string(name, text)
        .map_err(|err| TemplateError::Parse {
            name: name.to_owned(),
            err: Box::new(err),
        })
}

/// The `(name, path)` of every `*.ipxe.hbs` in `dir`, sorted by name.
pub(crate) fn template_files(dir: &Utf8Path) -> Result<Vec<(String, Utf8PathBuf)>, TemplateError> {
    let read_err = |err| TemplateError::Read {
        path: dir.to_owned(),
        err,
    };
    let mut out = Vec::new();
    for entry in dir.read_dir_utf8().map_err(read_err)? {
        let entry = entry.map_err(read_err)?;
        if let Some(name) = entry.file_name().strip_suffix(TEMPLATE_SUFFIX) {
            out.push((name.to_owned(), entry.path().to_owned()));
        }
    }
    out.sort();
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use expectorate::assert_contents;
    use serde_json::json;

    const MAC: MacAddr = MacAddr([0x52, 0x54, 0x00, 0x12, 0x34, 0x56]);

    fn shipped_dir() -> Utf8PathBuf {
        Utf8PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../templates/ipxe")
    }

    fn render_default(boot: DefaultBoot) -> String {
        let s = Scripts::load(None, &boot).expect("embedded templates load");
        s.render(MAC, None).expect("renders")
    }

    #[test]
    fn default_script_with_kernel_and_initrd() {
        let out = render_default(DefaultBoot {
            kernel: Some("deploy/vmlinuz".into()),
            initrd: Some("deploy/initrd.img".into()),
            cmdline: "console=ttyS0 ip=dhcp".into(),
        });
        assert_contents("tests/output/ipxe-default-kernel-initrd.txt", &out);
    }

    #[test]
    fn default_script_with_absolute_urls_and_no_initrd() {
        let out = render_default(DefaultBoot {
            kernel: Some("http://10.62.0.1/k?a=1&b=2".into()),
            initrd: None,
            cmdline: String::new(),
        });
        assert_contents("tests/output/ipxe-default-kernel-only.txt", &out);
    }

    #[test]
    fn default_script_without_kernel_boots_locally() {
        let out = render_default(DefaultBoot::default());
        assert_contents("tests/output/ipxe-default-local.txt", &out);
    }

    #[test]
    fn strict_mode_refuses_missing_variables() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let dir = Utf8Path::from_path(tmp.path()).expect("utf-8");
        std::fs::write(dir.join("deploy.ipxe.hbs"), "#!ipxe\nchain {{url}}\n").expect("write");
        let s = Scripts::load(Some(dir), &DefaultBoot::default()).expect("loads");
        let choice = ScriptChoice {
            template: "deploy".into(),
            vars: Map::new(),
        };
        let err = s.render(MAC, Some(choice)).expect_err("url missing");
        assert!(matches!(err, TemplateError::Render { .. }), "{err:?}");
        let unknown = ScriptChoice {
            template: "nope".into(),
            vars: Map::new(),
        };
        assert!(matches!(
            s.render(MAC, Some(unknown)),
            Err(TemplateError::Unknown { .. })
        ));
    }

    #[test]
    fn every_shipped_template_is_embedded_and_renders() {
        let files = template_files(&shipped_dir()).expect("templates/ipxe is readable");
        let names: Vec<&str> = files.iter().map(|(n, _)| n.as_str()).collect();
        let embedded: Vec<&str> = EMBEDDED.iter().map(|(n, _)| *n).collect();
        assert_eq!(names, embedded, "templates/ipxe and EMBEDDED disagree");
        let s = Scripts::load(Some(&shipped_dir()), &DefaultBoot::default()).expect("loads");
        let vars = default_vars(&DefaultBoot {
            kernel: Some("k".into()),
            initrd: Some("i".into()),
            cmdline: "c".into(),
        });
        for (name, path) in &files {
            let text = std::fs::read_to_string(path).expect("readable");
            assert!(text.starts_with("#!ipxe\n"), "{name} lacks the #!ipxe line");
            let out = s
                .render(
                    MAC,
                    Some(ScriptChoice {
                        template: name.clone(),
                        vars: vars.clone(),
                    }),
                )
                .expect("renders");
            assert!(out.starts_with("#!ipxe\n"), "{name}");
        }
    }

    #[test]
    fn template_dir_overrides_and_adds() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let dir = Utf8Path::from_path(tmp.path()).expect("utf-8");
        std::fs::write(
            dir.join("default.ipxe.hbs"),
            "#!ipxe\necho custom {{mac}}\n",
        )
        .expect("write");
        std::fs::write(dir.join("deploy.ipxe.hbs"), "#!ipxe\nchain {{url}}\n").expect("write");
        std::fs::write(dir.join("notes.txt"), "ignored").expect("write");
        let s = Scripts::load(Some(dir), &DefaultBoot::default()).expect("loads");
        assert_eq!(
            s.render(MAC, None).expect("renders"),
            "#!ipxe\necho custom 52:54:00:12:34:56\n"
        );
        let vars = json!({"url": "http://x/y?a&b"});
        let Value::Object(vars) = vars else {
            unreachable!("json! of an object literal is an object")
        };
        let out = s
            .render(
                MAC,
                Some(ScriptChoice {
                    template: "deploy".into(),
                    vars,
                }),
            )
            .expect("renders");
        assert_eq!(out, "#!ipxe\nchain http://x/y?a&b\n", "no HTML escaping");
        std::fs::write(dir.join("bad.ipxe.hbs"), "{{#if}}").expect("write");
        assert!(matches!(
            Scripts::load(Some(dir), &DefaultBoot::default()),
            Err(TemplateError::Parse { .. })
        ));
    }
}
