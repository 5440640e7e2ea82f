//! The Debian mirror, taken from the machine's own apt sources (`/etc/apt/sources.list`,
//! `*.list` and deb822 `*.sources` in `/etc/apt/sources.list.d/`): never a hard-coded host.

use std::path::{Path, PathBuf};

/// One `deb` source: a URI, a suite and its components.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct AptLine {
    /// Repository URI.
    pub uri: String,
    /// Suite (distribution), e.g. `bookworm-updates`.
    pub suite: String,
    /// Components, e.g. `main`.
    pub components: Vec<String>,
}

impl AptLine {
    /// The one-line `deb URI SUITE COMPONENTS` form.
    pub fn one_line(&self) -> String {
        format!(
            "deb {} {} {}",
            self.uri,
            self.suite,
            self.components.join(" ")
        )
    }
}

/// The machine's apt sources could not be read or name no mirror for the suite.
#[derive(Debug, thiserror::Error)]
pub enum MirrorError {
    /// A sources file could not be read.
    #[error("failed to read apt sources `{path}`")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        err: std::io::Error,
    },
    /// No enabled `deb` source serves the suite.
    #[error("no apt source under `{root}` serves suite `{suite}`: set bootstrap.mirror")]
    NoMirror {
        /// The apt configuration directory searched.
        root: PathBuf,
        /// The suite wanted.
        suite: String,
    },
}

/// Parses one-line style `sources.list` text.
pub(crate) fn parse_list(text: &str) -> Vec<AptLine> {
    let mut out = Vec::new();
    for line in text.lines() {
        let line = line.split('#').next().unwrap_or_default().trim();
        let mut words = line.split_whitespace().peekable();
        if words.next() != Some("deb") {
            continue;
        }
        if words.peek().is_some_and(|w| w.starts_with('[')) {
            for w in words.by_ref() {
                if w.ends_with(']') {
                    break;
                }
            }
        }
        let (Some(uri), Some(suite)) = (words.next(), words.next()) else {
            continue;
        };
        out.push(AptLine {
            uri: uri.to_owned(),
            suite: suite.to_owned(),
            components: words.map(str::to_owned).collect(),
        });
    }
    out
}

/// Parses deb822 `.sources` text.
pub(crate) fn parse_deb822(text: &str) -> Vec<AptLine> {
    let mut out = Vec::new();
    for stanza in text.split("\n\n") {
        let mut types = Vec::new();
        let mut uris = Vec::new();
        let mut suites = Vec::new();
        let mut components = Vec::new();
        let mut enabled = true;
        let mut current: Option<String> = None;
        for line in stanza.lines() {
            if line.starts_with('#') || line.trim().is_empty() {
                continue;
            }
            let (field, value) = if line.starts_with([' ', '\t']) {
                match &current {
                    Some(f) => (f.clone(), line.trim()),
                    None => continue,
                }
            } else if let Some((f, v)) = line.split_once(':') {
                current = Some(f.trim().to_ascii_lowercase());
                (f.trim().to_ascii_lowercase(), v.trim())
            } else {
                continue;
            };
            let words = value.split_whitespace().map(str::to_owned);
            match field.as_str() {
                "types" => types.extend(words),
                "uris" => uris.extend(words),
                "suites" => suites.extend(words),
                "components" => components.extend(words),
                "enabled" => enabled = !value.eq_ignore_ascii_case("no"),
                _ => {}
            }
        }
        if !enabled || !types.iter().any(|t| t == "deb") {
            continue;
        }
        for uri in &uris {
            for suite in &suites {
                out.push(AptLine {
                    uri: uri.clone(),
                    suite: suite.clone(),
                    components: components.clone(),
                });
            }
        }
    }
    out
}

/// Reads every enabled `deb` source under the apt configuration directory `root`
/// (normally `/etc/apt`).
pub fn machine_sources(root: &Path) -> Result<Vec<AptLine>, MirrorError> {
    let read = |path: PathBuf| {
        std::fs::read_to_string(&path).map_err(|err| MirrorError::Read { path, err })
    };
    let mut out = Vec::new();
    let list = root.join("sources.list");
    if list.exists() {
        out.extend(parse_list(&read(list)?));
    }
    let dir = root.join("sources.list.d");
    if let Ok(entries) = std::fs::read_dir(&dir) {
        let mut paths: Vec<PathBuf> = entries.filter_map(|e| e.ok().map(|e| e.path())).collect();
        paths.sort();
        for p in paths {
            match p.extension().and_then(|e| e.to_str()) {
                Some("list") => out.extend(parse_list(&read(p)?)),
                Some("sources") => out.extend(parse_deb822(&read(p)?)),
                _ => {}
            }
        }
    }
    Ok(out)
}

/// The sources used to bootstrap `suite`: those of `all` that serve the suite itself or its
/// `-updates`/`-security` companions, main suite first. Errors when none serves the suite itself.
pub fn for_suite(root: &Path, all: &[AptLine], suite: &str) -> Result<Vec<AptLine>, MirrorError> {
    let mut main: Vec<AptLine> = all.iter().filter(|l| l.suite == suite).cloned().collect();
    if main.is_empty() {
        return Err(MirrorError::NoMirror {
            root: root.to_owned(),
            suite: suite.to_owned(),
        });
    }
    main.extend(
        all.iter()
            .filter(|l| {
                l.suite == format!("{suite}-updates") || l.suite == format!("{suite}-security")
            })
            .cloned(),
    );
    main.dedup();
    Ok(main)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deb822_and_one_line() {
        let text = "Types: deb\n# comment\nURIs: http://m.example/debian\nSuites: bookworm bookworm-updates\nComponents: main contrib\nSigned-By: /k.gpg\n\nTypes: deb-src\nURIs: http://src\nSuites: bookworm\nComponents: main\n\nTypes: deb\nURIs: http://off\nSuites: bookworm\nComponents: main\nEnabled: no\n";
        let got = parse_deb822(text);
        assert_eq!(got.len(), 2);
        assert_eq!(
            got[0].one_line(),
            "deb http://m.example/debian bookworm main contrib"
        );
        assert_eq!(got[1].suite, "bookworm-updates");
        let got = parse_list(
            "deb [signed-by=/x] http://a/debian bookworm main # c\ndeb-src http://b x y\n#deb http://c z\n",
        );
        assert_eq!(
            got,
            vec![AptLine {
                uri: "http://a/debian".into(),
                suite: "bookworm".into(),
                components: vec!["main".into()]
            }]
        );
    }

    #[test]
    fn suite_selection() {
        let all = parse_list(
            "deb http://a bookworm main\ndeb http://s bookworm-security main\ndeb http://n nodistro main\n",
        );
        let got = for_suite(Path::new("/etc/apt"), &all, "bookworm").expect("served");
        assert_eq!(got.len(), 2);
        assert!(for_suite(Path::new("/etc/apt"), &all, "trixie").is_err());
    }
}
