//! The command line: `image-builder build TEMPLATE [--out DIR] [--set key=value ...] [--json]`,
//! and the two progress reporters.

use std::io::Write;
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::Duration;

use indicatif::{ProgressBar, ProgressStyle};

use crate::build::{BuildError, BuildOptions, build};
use crate::events::{Event, Reporter};

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

/// A spinner per stage with its timing, on the terminal (stderr).
#[derive(Debug, Default)]
pub struct TerminalReporter {
    current: Mutex<Option<ProgressBar>>,
}

impl Reporter for TerminalReporter {
    fn event(&self, event: &Event) {
        let Ok(mut cur) = self.current.lock() else {
            return;
        };
        match event {
            Event::StageStarted { stage, .. } => {
                let pb = ProgressBar::new_spinner().with_message(stage.as_str());
                pb.set_style(
                    ProgressStyle::with_template("{spinner} {msg} {elapsed}")
                        .expect("invariant: static template"),
                );
                pb.enable_steady_tick(Duration::from_millis(120));
                *cur = Some(pb);
            }
            Event::StageFinished {
                stage, duration_ms, ..
            } => {
                if let Some(pb) = cur.take() {
                    pb.finish_with_message(format!(
                        "{stage} done in {:.1} s",
                        *duration_ms as f64 / 1000.0
                    ));
                }
            }
            Event::StageCached { stage, .. } => {
                ProgressBar::new_spinner().finish_with_message(format!("{stage} cached"));
            }
            Event::HookFinished {
                hook, duration_ms, ..
            } => {
                if let Some(pb) = cur.as_ref() {
                    pb.println(format!(
                        "  hook {hook} ({:.1} s)",
                        *duration_ms as f64 / 1000.0
                    ));
                }
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
