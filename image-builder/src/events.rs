//! Build progress events: the binary shows them with indicatif on a terminal or prints them as
//! one JSON object per line (`--json`); tests assert on them instead of on timings.

use serde::Serialize;

/// The stages of a build, in order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Stage {
    /// debootstrap/mmdebstrap with the whole package set: also the package stage.
    Bootstrap,
    /// Files, users, services, first-boot units and hooks on a copy of the bootstrap tree.
    Customise,
    /// `rootfs.tar.zst`.
    Rootfs,
    /// `disk.raw`.
    Disk,
    /// `disk.qcow2`.
    Qcow2,
    /// `disk.raw.zst`.
    DiskZst,
    /// The deploy ramdisk's `vmlinuz` and `initrd.img`.
    Initramfs,
    /// `manifest.json`.
    Manifest,
}

impl Stage {
    /// Name as printed in events and errors.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Bootstrap => "bootstrap",
            Self::Customise => "customise",
            Self::Rootfs => "rootfs",
            Self::Disk => "disk",
            Self::Qcow2 => "qcow2",
            Self::DiskZst => "disk_zst",
            Self::Initramfs => "initramfs",
            Self::Manifest => "manifest",
        }
    }
}

impl std::fmt::Display for Stage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One progress event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum Event {
    /// The build began.
    BuildStarted {
        /// Template name.
        template: String,
        /// Hash of every input of the build.
        input_hash: String,
    },
    /// A stage began running.
    StageStarted {
        /// Which stage.
        stage: Stage,
        /// Its cache key.
        key: String,
    },
    /// A stage finished running.
    StageFinished {
        /// Which stage.
        stage: Stage,
        /// Its cache key.
        key: String,
        /// Wall time in milliseconds.
        duration_ms: u64,
    },
    /// A stage's output came from the cache.
    StageCached {
        /// Which stage.
        stage: Stage,
        /// Its cache key.
        key: String,
    },
    /// A compressed artifact was written as zstd frames, `reused` of them copied from an
    /// earlier build's artifact instead of compressed again.
    FramesWritten {
        /// Which stage.
        stage: Stage,
        /// The artifact.
        artifact: String,
        /// How many frames it has.
        frames: usize,
        /// How many were copied.
        reused: usize,
    },
    /// A hook script ran.
    HookFinished {
        /// Hook point.
        stage: String,
        /// Hook name.
        hook: String,
        /// Wall time in milliseconds.
        duration_ms: u64,
    },
    /// The build finished and its output is in place.
    BuildFinished {
        /// Output directory.
        out: String,
        /// Wall time in milliseconds.
        duration_ms: u64,
    },
}

/// Receives build events. Implementations must be cheap: they run on the build thread.
pub trait Reporter: Send + Sync {
    /// Called for every event, in order.
    fn event(&self, event: &Event);
}

/// A reporter that drops every event.
#[derive(Debug, Clone, Copy, Default)]
pub struct NullReporter;

impl Reporter for NullReporter {
    fn event(&self, _event: &Event) {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_shape() {
        let e = Event::StageCached {
            stage: Stage::Bootstrap,
            key: "ab".into(),
        };
        assert_eq!(
            serde_json::to_string(&e).expect("serialises"),
            r#"{"event":"stage_cached","stage":"bootstrap","key":"ab"}"#
        );
    }
}
