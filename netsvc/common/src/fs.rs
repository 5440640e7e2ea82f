//! Crash-safe file writes.

use std::io::Write;
use std::path::Path;

/// Writes `data` to `path` atomically: a temp file in the same directory, fsync, rename, then
/// fsync of the directory. A crash at any point leaves the old or the new content, never a mix.
///
/// `mode` sets the permission bits of the new file (for example `0o600` for secrets).
pub fn write_atomic(path: &Path, data: &[u8], mode: u32) -> std::io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .ok_or_else(|| std::io::Error::other("path has no file name"))?;
    let tmp = dir.join(format!(
        ".{}.tmp.{}",
        name.to_string_lossy(),
        std::process::id()
    ));
    let result = (|| {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(mode)
            .open(&tmp)?;
        f.write_all(data)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)?;
        std::fs::File::open(dir)?.sync_all()
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn replaces_content_and_sets_mode() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path().join("token");
        write_atomic(&p, b"old", 0o644).expect("first write");
        write_atomic(&p, b"new", 0o600).expect("second write");
        assert_eq!(std::fs::read(&p).expect("read back"), b"new");
        let mode = std::fs::metadata(&p).expect("stat").permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert_eq!(std::fs::read_dir(dir.path()).expect("list").count(), 1);
    }
}

/// The drop-in directory of a config file could not be listed.
#[derive(Debug, thiserror::Error)]
#[error("failed to list config drop-ins in `{}`", dir.display())]
pub struct DropInError {
    /// The drop-in directory (`<file>.d`).
    pub dir: std::path::PathBuf,
    /// Why.
    #[source]
    pub err: std::io::Error,
}

/// The layers of a daemon's configuration in merge order: `main` itself, then every `*.toml` in
/// `<main>.d/` in lexical order (later layers win). A missing drop-in directory is no error.
pub fn config_layers(main: &Path) -> Result<Vec<std::path::PathBuf>, DropInError> {
    let mut dir = main.as_os_str().to_owned();
    dir.push(".d");
    let dir = std::path::PathBuf::from(dir);
    let entries = match std::fs::read_dir(&dir) {
        Ok(entries) => entries,
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => {
            return Ok(vec![main.to_owned()]);
        }
        Err(err) => return Err(DropInError { dir, err }),
    };
    let mut drop_ins = Vec::new();
    for entry in entries {
        let path = entry
            .map_err(|err| DropInError {
                dir: dir.clone(),
                err,
            })?
            .path();
        if path.extension().is_some_and(|e| e == "toml") {
            drop_ins.push(path);
        }
    }
    drop_ins.sort();
    Ok(std::iter::once(main.to_owned()).chain(drop_ins).collect())
}

#[cfg(test)]
mod layer_tests {
    use super::*;

    #[test]
    fn main_then_sorted_toml_drop_ins() {
        let dir = tempfile::tempdir().expect("tempdir");
        let main = dir.path().join("app.toml");
        assert_eq!(
            config_layers(&main).expect("no drop-ins"),
            vec![main.clone()]
        );
        let d = dir.path().join("app.toml.d");
        std::fs::create_dir(&d).expect("mkdir");
        for f in ["20-b.toml", "10-a.toml", "notes.txt"] {
            std::fs::write(d.join(f), "").expect("write");
        }
        assert_eq!(
            config_layers(&main).expect("layers"),
            vec![main, d.join("10-a.toml"), d.join("20-b.toml")]
        );
    }
}
