//! The command line: `image-builder build TEMPLATE [--out DIR] [--set key=value ...] [--json]`,
//! and the two progress reporters.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::Duration;

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};

use crate::build::{BuildError, BuildOptions, build};
use crate::events::{Event, Reporter, Stage};

/// Command-line arguments.
#[derive(Debug, clap::Parser)]
#[command(
    name = "image-builder",
    about = "Build golden images and the deploy ramdisk from templates"
)]
pub struct Args {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Subcommands.
#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// Build a template folder (holding image.toml) into an output directory.
    Build {
        /// The template folder, e.g. templates/images/debian-bookworm-server.
        template: PathBuf,
        /// Output directory (replaced atomically when the build succeeds).
        #[arg(long, default_value = "out")]
        out: PathBuf,
        /// Override a variable of the template's vars table (repeatable).
        #[arg(long = "set", value_name = "KEY=VALUE", value_parser = parse_set)]
        sets: Vec<(String, String)>,
        /// Emit one JSON event per line on stdout instead of progress bars.
        #[arg(long)]
        json: bool,
        /// Stage cache directory.
        #[arg(long, default_value = "/var/cache/image-builder")]
        cache_dir: PathBuf,
        /// Apt configuration directory the Debian mirror is read from.
        #[arg(long, default_value = "/etc/apt")]
        apt_root: PathBuf,
        /// Every mtime in the tarball (defaults to $SOURCE_DATE_EPOCH, else 0).
        #[arg(long, env = "SOURCE_DATE_EPOCH", default_value_t = 0)]
        source_date_epoch: u64,
    },
}

fn parse_set(s: &str) -> Result<(String, String), String> {
    s.split_once('=')
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .ok_or_else(|| format!("`{s}` is not KEY=VALUE"))
}

/// Prints each event as one JSON object per line.
#[derive(Debug)]
pub struct JsonReporter<W: Write + Send>(pub Mutex<W>);

impl<W: Write + Send> Reporter for JsonReporter<W> {
    fn event(&self, event: &Event) {
        let mut line = serde_json::to_vec(event).expect("invariant: events are plain data");
        line.push(b'\n');
        if let Ok(mut w) = self.0.lock() {
            let _ = w.write_all(&line);
            let _ = w.flush();
        }
    }
}

/// Progress on the terminal (stderr): one spinner per running stage, since the tarball and the
/// disks are built side by side, each ending in a line with the stage's timing.
#[derive(Debug)]
pub struct TerminalReporter {
    multi: MultiProgress,
    state: Mutex<TerminalState>,
}

#[derive(Debug, Default)]
struct TerminalState {
    /// The bar of every stage that started and has not finished.
    running: BTreeMap<Stage, ProgressBar>,
    /// Bars of stages that finished or came from the cache, in order.
    done: Vec<ProgressBar>,
}

impl Default for TerminalReporter {
    fn default() -> Self {
        Self::with_target(ProgressDrawTarget::stderr())
    }
}

fn seconds(ms: u64) -> String {
    format!("{}.{} s", ms / 1000, ms % 1000 / 100)
}

impl TerminalReporter {
    /// A reporter drawing to `target` (stderr for [`Default`], hidden in tests).
    pub fn with_target(target: ProgressDrawTarget) -> Self {
        Self {
            multi: MultiProgress::with_draw_target(target),
            state: Mutex::default(),
        }
    }

    /// Ends `pb` with `msg` as a plain line and keeps it.
    fn finish(state: &mut TerminalState, pb: ProgressBar, msg: String) {
        pb.set_style(ProgressStyle::with_template("{msg}").expect("invariant: static template"));
        pb.finish_with_message(msg);
        state.done.push(pb);
    }
}

impl Reporter for TerminalReporter {
    fn event(&self, event: &Event) {
        let Ok(mut state) = self.state.lock() else {
            return;
        };
        match event {
            Event::StageStarted { stage, .. } => {
                let pb = self
                    .multi
                    .add(ProgressBar::new_spinner().with_message(stage.as_str()));
                pb.set_style(
                    ProgressStyle::with_template("{spinner} {msg} {elapsed}")
                        .expect("invariant: static template"),
                );
                pb.enable_steady_tick(Duration::from_millis(120));
                if let Some(old) = state.running.insert(*stage, pb) {
                    old.finish_and_clear();
                }
            }
            Event::StageFinished {
                stage, duration_ms, ..
            } => {
                // A finish without a start (never sent by `build`) still gets its line.
                let pb = state
                    .running
                    .remove(stage)
                    .unwrap_or_else(|| self.multi.add(ProgressBar::new_spinner()));
                let msg = format!("{stage} done in {}", seconds(*duration_ms));
                Self::finish(&mut state, pb, msg);
            }
            Event::StageCached { stage, .. } => {
                let pb = self.multi.add(ProgressBar::new_spinner());
                Self::finish(&mut state, pb, format!("{stage} cached"));
            }
            Event::HookFinished {
                stage,
                hook,
                duration_ms,
            } => {
                let _ = self.multi.println(format!(
                    "  hook {hook} at {stage} ({})",
                    seconds(*duration_ms)
                ));
            }
            Event::FramesWritten {
                artifact,
                frames,
                reused,
                ..
            } => {
                let _ = self
                    .multi
                    .println(format!("  {artifact}: {reused} of {frames} frames reused"));
            }
            Event::BuildStarted { .. } | Event::BuildFinished { .. } => {}
        }
    }
}

/// Runs the command line.
pub fn run(args: Args) -> Result<(), BuildError> {
    match args.command {
        Command::Build {
            template,
            out,
            sets,
            json,
            cache_dir,
            apt_root,
            source_date_epoch,
        } => {
            let opts = BuildOptions {
                template,
                out,
                sets,
                cache_dir,
                apt_root,
                source_date_epoch,
            };
            let result = if json {
                build(&opts, &JsonReporter(Mutex::new(std::io::stdout())))
            } else {
                build(&opts, &TerminalReporter::default())
            };
            let built = result?;
            tracing::info!(out = %built.out.display(), input_hash = %built.manifest.input_hash, "image built");
            Ok(())
        }
    }
}

impl BuildError {
    /// The process exit code for this error: 78 for template/config problems, 1 otherwise.
    pub fn exit_code(&self) -> u8 {
        match self {
            BuildError::Spec(_) | BuildError::Mirror(_) | BuildError::MissingTool { .. } => 78,
            BuildError::Stage { .. } | BuildError::Output { .. } => 1,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn started(stage: Stage) -> Event {
        Event::StageStarted {
            stage,
            key: "k".into(),
        }
    }

    fn finished(stage: Stage, duration_ms: u64) -> Event {
        Event::StageFinished {
            stage,
            key: "k".into(),
            duration_ms,
        }
    }

    fn running(r: &TerminalReporter) -> Vec<Stage> {
        let s = r.state.lock().expect("not poisoned");
        s.running.keys().copied().collect()
    }

    fn done(r: &TerminalReporter) -> Vec<String> {
        let s = r.state.lock().expect("not poisoned");
        assert!(s.done.iter().all(ProgressBar::is_finished));
        s.done.iter().map(ProgressBar::message).collect()
    }

    #[test]
    fn parallel_stages_each_keep_their_bar_and_done_line() {
        let r = TerminalReporter::with_target(ProgressDrawTarget::hidden());
        r.event(&Event::StageCached {
            stage: Stage::Bootstrap,
            key: "k".into(),
        });
        r.event(&started(Stage::Customise));
        r.event(&finished(Stage::Customise, 1234));
        // The tarball and the disk run side by side; the disk finishes first.
        r.event(&started(Stage::Rootfs));
        r.event(&started(Stage::Disk));
        assert_eq!(running(&r), [Stage::Rootfs, Stage::Disk]);
        r.event(&finished(Stage::Disk, 3500));
        r.event(&started(Stage::Qcow2));
        assert_eq!(running(&r), [Stage::Rootfs, Stage::Qcow2]);
        r.event(&finished(Stage::Qcow2, 700));
        r.event(&finished(Stage::Rootfs, 9050));
        assert_eq!(running(&r), []);
        assert_eq!(
            done(&r),
            [
                "bootstrap cached",
                "customise done in 1.2 s",
                "disk done in 3.5 s",
                "qcow2 done in 0.7 s",
                "rootfs done in 9.0 s",
            ]
        );
    }

    #[test]
    fn finish_without_start_still_prints_its_line() {
        let r = TerminalReporter::with_target(ProgressDrawTarget::hidden());
        r.event(&finished(Stage::Manifest, 20));
        assert_eq!(done(&r), ["manifest done in 0.0 s"]);
    }
}
