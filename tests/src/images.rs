//! Images built by `image-builder` for end-to-end tests, once per test run and shared between
//! test binaries through a file lock.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, bail};
use nix::fcntl::{Flock, FlockArg};

/// Where test images are built: `<base>/cache` keeps the bootstrap cache across runs (its keys
/// cover every bootstrap input), `<base>/run-<id>/<name>` holds this test run's builds.
#[derive(Debug, Clone)]
pub struct ImageBuilds {
    /// The `image-builder` binary.
    pub image_builder: PathBuf,
    /// The base directory (a test binary's `CARGO_TARGET_TMPDIR/image-builder-e2e`).
    pub base: PathBuf,
}

impl ImageBuilds {
    /// The bootstrap cache.
    pub fn cache_dir(&self) -> PathBuf {
        self.base.join("cache")
    }

    /// This test run's directory: one per nextest run, so its tests share builds.
    pub fn run_dir(&self) -> PathBuf {
        let id = std::env::var("NEXTEST_RUN_ID")
            .unwrap_or_else(|_| format!("pid-{}", std::process::id()));
        self.base.join(format!("run-{id}"))
    }

    /// Builds `template` (a folder with `image.toml`) as `name` with `--set` values `sets`,
    /// unless this run already did; returns the output directory. Removes earlier runs' builds.
    pub fn build(&self, template: &Path, name: &str, sets: &[String]) -> anyhow::Result<PathBuf> {
        std::fs::create_dir_all(&self.base)?;
        let lock = std::fs::File::create(self.base.join("lock"))?;
        let _guard = Flock::lock(lock, FlockArg::LockExclusive)
            .map_err(|(_, e)| e)
            .context("lock the shared image builds")?;
        let run = self.run_dir();
        let out = run.join(name);
        if out.join("manifest.json").exists() {
            return Ok(out);
        }
        // Leftovers of earlier runs (each holds GBs of images).
        for e in std::fs::read_dir(&self.base)?.flatten() {
            let file = e.file_name().to_string_lossy().into_owned();
            if file.starts_with("run-") && e.path() != run {
                let _ = std::fs::remove_dir_all(e.path());
            }
        }
        std::fs::create_dir_all(&run)?;
        let mut cmd = Command::new(&self.image_builder);
        cmd.arg("build")
            .arg(template)
            .arg("--out")
            .arg(&out)
            .arg("--cache-dir")
            .arg(self.cache_dir())
            .arg("--json")
            .env("SOURCE_DATE_EPOCH", "1700000000");
        for s in sets {
            cmd.arg("--set").arg(s);
        }
        common::run_cmd(&mut cmd).with_context(|| format!("build {}", template.display()))?;
        if !out.join("manifest.json").exists() {
            bail!("{} built no manifest.json", template.display());
        }
        Ok(out)
    }

    /// The zero-touch pair from `templates`: the golden `minimal` image and the deploy ramdisk
    /// carrying `imager`, returned in that order.
    pub fn zero_touch(
        &self,
        templates: &Path,
        imager: &Path,
    ) -> anyhow::Result<(PathBuf, PathBuf)> {
        let golden = self.build(&templates.join("images/minimal"), "minimal", &[])?;
        let ramdisk = self.build(
            &templates.join("images/deploy-ramdisk"),
            "deploy-ramdisk",
            &[format!("imager={}", imager.display())],
        )?;
        Ok((golden, ramdisk))
    }
}
