//! A daemon under test: spawned with its stderr (tracing JSON lines) captured, killed in `Drop`.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

/// A running daemon whose log lines are collected as they arrive.
#[derive(Debug)]
pub struct Daemon {
    child: Child,
    lines: Arc<Mutex<Vec<String>>>,
}

impl Daemon {
    /// Spawns `cmd` with stdin closed, stdout discarded and stderr captured.
    pub fn spawn(mut cmd: Command) -> anyhow::Result<Self> {
        cmd.stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().with_context(|| format!("spawn {cmd:?}"))?;
        let stderr = child.stderr.take().context("stderr is piped")?;
        let lines = Arc::new(Mutex::new(Vec::new()));
        let sink = lines.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                sink.lock().expect("log lines lock").push(line);
            }
        });
        Ok(Daemon { child, lines })
    }

    /// All log lines so far.
    pub fn log(&self) -> Vec<String> {
        self.lines.lock().expect("log lines lock").clone()
    }

    /// Waits until `count` log lines contain every one of `needles`; returns those lines.
    ///
    /// Fails with the log when the daemon exits or `timeout` passes first.
    pub fn wait_for_lines(
        &mut self,
        needles: &[&str],
        count: usize,
        timeout: Duration,
    ) -> anyhow::Result<Vec<String>> {
        let deadline = Instant::now() + timeout;
        loop {
            let found: Vec<String> = self
                .log()
                .into_iter()
                .filter(|l| needles.iter().all(|n| l.contains(n)))
                .collect();
            if found.len() >= count {
                return Ok(found);
            }
            if let Some(status) = self.child.try_wait()? {
                // Give the reader thread a moment to drain what the daemon printed last.
                std::thread::sleep(Duration::from_millis(100));
                bail!(
                    "daemon exited ({status}) while waiting for {needles:?}; log:\n{}",
                    self.log().join("\n")
                );
            }
            if Instant::now() >= deadline {
                bail!(
                    "no {count} log lines with {needles:?} within {timeout:?}; log:\n{}",
                    self.log().join("\n")
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Sends `signal` to the daemon.
    pub fn signal(&self, signal: nix::sys::signal::Signal) -> anyhow::Result<()> {
        let pid = i32::try_from(self.child.id()).context("pid fits i32")?;
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), signal)?;
        Ok(())
    }

    /// Waits for the daemon to exit and returns its status.
    pub fn wait(&mut self, timeout: Duration) -> anyhow::Result<std::process::ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait()? {
                return Ok(status);
            }
            if Instant::now() >= deadline {
                bail!("daemon still running after {timeout:?}");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
