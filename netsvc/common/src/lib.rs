//! Pieces shared by every crate of the appliance.
//!
//! - [`ErrorChain`] prints an error with all of its sources joined by `": "`; every log line and
//!   every CLI error goes through it.
//! - [`run_cmd`] and [`run_cmd_async`] run an external program, log its argv, capture its stderr and
//!   turn a failure into a [`CommandError`] that carries all three.
//! - [`write_atomic`] writes a state file so that a crash leaves either the old or the new content.
//! - [`init_tracing`] and [`shutdown_token`] are the daemon plumbing a thin `main` calls.
//! - [`wait_for`] polls a condition with a deadline; tests use it instead of sleeping.
//! - [`unix_now`] is the wall clock in whole seconds since the Unix epoch.
#![warn(clippy::print_stdout)]

mod cmd;
mod daemon;
mod fs;

pub use cmd::{CommandError, CommandOutput, run_cmd, run_cmd_async};
pub use daemon::{init_tracing, shutdown_token, wait_for};
pub use fs::{DropInError, config_layers, write_atomic};

use std::error::Error;
use std::fmt;

/// Seconds since the Unix epoch (0 if the clock is before it).
pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Displays an error followed by each of its sources, joined with `": "`.
///
/// ```
/// use common::ErrorChain;
/// let err = std::io::Error::other("disk full");
/// assert_eq!(ErrorChain(&err).to_string(), "disk full");
/// ```
#[derive(Debug, Clone, Copy)]
pub struct ErrorChain<'a>(pub &'a (dyn Error + 'static));

impl fmt::Display for ErrorChain<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)?;
        let mut source = self.0.source();
        while let Some(err) = source {
            write!(f, ": {err}")?;
            source = err.source();
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("failed to open lease file")]
    struct Outer {
        #[source]
        err: std::io::Error,
    }

    #[test]
    fn chain_joins_sources() {
        let e = Outer {
            err: std::io::Error::other("permission denied"),
        };
        assert_eq!(
            ErrorChain(&e).to_string(),
            "failed to open lease file: permission denied"
        );
    }
}
