//! External commands: logged argv, captured stderr, one error type.

use std::ffi::OsStr;
use std::fmt;
use std::process::{Command, ExitStatus, Stdio};

/// The part of stderr kept in a [`CommandError`]: its last bytes, where the reason usually is.
const STDERR_TAIL: usize = 4096;

/// An external command that could not be started or exited unsuccessfully.
#[derive(Debug, thiserror::Error)]
pub enum CommandError {
    /// The program could not be started at all (missing binary, permissions).
    #[error("failed to start `{argv}`")]
    Spawn {
        /// The command line, shell-quoted for reading.
        argv: String,
        /// Why it could not start.
        #[source]
        err: std::io::Error,
    },
    /// The program ran and failed.
    #[error("`{argv}` failed ({status}): {stderr}")]
    Failed {
        /// The command line, shell-quoted for reading.
        argv: String,
        /// Its exit status.
        status: ExitStatus,
        /// The tail of what it wrote to stderr.
        stderr: String,
    },
}

/// What a successful command printed.
#[derive(Debug, Clone)]
pub struct CommandOutput {
    /// Everything written to stdout.
    pub stdout: Vec<u8>,
    /// Everything written to stderr.
    pub stderr: Vec<u8>,
}

impl CommandOutput {
    /// Stdout as text, invalid UTF-8 replaced.
    pub fn stdout_lossy(&self) -> String {
        String::from_utf8_lossy(&self.stdout).into_owned()
    }
}

struct Argv<'a>(&'a Command);

impl fmt::Display for Argv<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let quote = |s: &OsStr| {
            let s = s.to_string_lossy();
            if !s.is_empty()
                && s.chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_./=:,@+%".contains(c))
            {
                s.into_owned()
            } else {
                format!("'{}'", s.replace('\'', r"'\''"))
            }
        };
        write!(f, "{}", quote(self.0.get_program()))?;
        for arg in self.0.get_args() {
            write!(f, " {}", quote(arg))?;
        }
        Ok(())
    }
}

fn tail(stderr: &[u8]) -> String {
    let start = stderr.len().saturating_sub(STDERR_TAIL);
    String::from_utf8_lossy(&stderr[start..]).trim().to_owned()
}

fn finish(
    argv: String,
    out: std::io::Result<std::process::Output>,
) -> Result<CommandOutput, CommandError> {
    let out = out.map_err(|err| CommandError::Spawn {
        argv: argv.clone(),
        err,
    })?;
    if out.status.success() {
        Ok(CommandOutput {
            stdout: out.stdout,
            stderr: out.stderr,
        })
    } else {
        Err(CommandError::Failed {
            argv,
            status: out.status,
            stderr: tail(&out.stderr),
        })
    }
}

/// Runs `cmd` to completion with stdin closed, logging its argv at debug.
///
/// Blocking: call it from `spawn_blocking` or a worker thread in async code, or use
/// [`run_cmd_async`].
pub fn run_cmd(cmd: &mut Command) -> Result<CommandOutput, CommandError> {
    let argv = Argv(cmd).to_string();
    tracing::debug!(%argv, "running command");
    cmd.stdin(Stdio::null());
    #[allow(clippy::disallowed_methods)] // This is the one place allowed to call it.
    let out = cmd.output();
    finish(argv, out)
}

/// Async twin of [`run_cmd`] on tokio's process support.
///
/// Cancel safety: dropping the future kills the child (`kill_on_drop`).
pub async fn run_cmd_async(
    cmd: &mut tokio::process::Command,
) -> Result<CommandOutput, CommandError> {
    let argv = Argv(cmd.as_std()).to_string();
    tracing::debug!(%argv, "running command");
    cmd.stdin(Stdio::null()).kill_on_drop(true);
    #[allow(clippy::disallowed_methods)] // This is the one place allowed to call it.
    let out = cmd.output().await;
    finish(argv, out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failure_carries_argv_status_and_stderr() {
        let err = run_cmd(Command::new("sh").args(["-c", "echo boom >&2; exit 3"]))
            .expect_err("command exits 3");
        let msg = err.to_string();
        assert!(msg.contains("`sh -c 'echo boom >&2; exit 3'`"), "{msg}");
        assert!(msg.contains("exit status: 3"), "{msg}");
        assert!(msg.ends_with("boom"), "{msg}");
    }

    #[test]
    fn missing_program_is_a_spawn_error() {
        let err = run_cmd(&mut Command::new("/nonexistent/program")).expect_err("no such file");
        assert!(matches!(err, CommandError::Spawn { .. }));
    }

    #[tokio::test]
    async fn async_success_returns_stdout() {
        let out = run_cmd_async(tokio::process::Command::new("echo").arg("hi"))
            .await
            .expect("echo runs");
        assert_eq!(out.stdout_lossy(), "hi\n");
    }
}
