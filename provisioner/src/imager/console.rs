//! The serial console: the short `IMAGER: ...` lines an operator (or a test watching the
//! serial port) reads. The binary decides where they go; the library only writes lines.

use std::io::Write;
use std::path::Path;
use std::sync::{Arc, Mutex};

/// Where console lines go: any number of writers, each line written whole and flushed.
///
/// Lines must never contain a secret: callers pass only URLs, names, sizes, hashes and error
/// chains (whose messages name URLs and paths, never credentials).
#[derive(Clone, Default)]
pub struct Console {
    sinks: Vec<Arc<Mutex<dyn Write + Send>>>,
    captured: Option<Arc<Mutex<Vec<String>>>>,
}

impl std::fmt::Debug for Console {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Console")
            .field("sinks", &self.sinks.len())
            .field("capturing", &self.captured.is_some())
            .finish()
    }
}

impl Console {
    /// A console writing to this process's stdout (the serial console when the imager runs as
    /// PID 1 in the deploy ramdisk).
    pub fn stdout() -> Self {
        Console {
            sinks: vec![Arc::new(Mutex::new(std::io::stdout()))],
            captured: None,
        }
    }

    /// Also writes every line to the device `path` (`/dev/console`) if it can be opened; a
    /// missing device is not an error.
    pub fn also_device(mut self, path: &Path) -> Self {
        if let Ok(f) = std::fs::OpenOptions::new().append(true).open(path) {
            self.sinks.push(Arc::new(Mutex::new(f)));
        }
        self
    }

    /// A console that keeps its lines in memory, for tests; read them with [`Console::lines`].
    pub fn capture() -> Self {
        Console {
            sinks: Vec::new(),
            captured: Some(Arc::new(Mutex::new(Vec::new()))),
        }
    }

    /// Every line written so far, if this console captures.
    pub fn lines(&self) -> Vec<String> {
        self.captured
            .as_ref()
            .map(|c| c.lock().map(|l| l.clone()).unwrap_or_default())
            .unwrap_or_default()
    }

    /// Writes one line (`line` without the trailing newline). Write errors are ignored: the
    /// console is best effort and must never stop imaging.
    pub fn line(&self, line: &str) {
        for s in &self.sinks {
            if let Ok(mut w) = s.lock() {
                let _ = w.write_all(format!("{line}\n").as_bytes());
                let _ = w.flush();
            }
        }
        if let Some(c) = &self.captured
            && let Ok(mut l) = c.lock()
        {
            l.push(line.to_owned());
        }
    }

    /// Writes `IMAGER: {msg}`.
    pub(crate) fn say(&self, msg: &str) {
        self.line(&format!("IMAGER: {msg}"));
    }
}
