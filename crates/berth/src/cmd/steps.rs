//! How `deploy`, `rollback`, `backup` and `restore` show the steps the daemon streams: on
//! a terminal one live line per step (updated in place); elsewhere (CI logs, files) one
//! timestamped line per update; nothing with `--quiet`. All on stderr: stdout keeps the
//! final line scripts read.

use std::io::{IsTerminal as _, Write as _};

use crate::progress::Step;

pub struct Shown {
    quiet: bool,
    tty: bool,
    /// The step the live line shows, on a terminal.
    open: Option<String>,
}

impl Shown {
    pub fn new(quiet: bool) -> Self {
        Shown {
            quiet,
            tty: std::io::stderr().is_terminal(),
            open: None,
        }
    }

    pub fn show(&mut self, s: &Step) {
        if self.quiet {
            return;
        }
        let mut err = std::io::stderr().lock();
        if self.tty {
            // The same step: its line is rewritten; a new one starts a new line.
            if self.open.as_deref() == Some(s.step.as_str()) {
                let _ = write!(err, "\r\x1b[2K");
            } else if self.open.is_some() {
                let _ = writeln!(err);
            }
            let _ = write!(err, "{:>8}  {}", s.step, s.detail);
            self.open = Some(s.step.clone());
        } else {
            let now = berth_core::time::fmt_time(std::time::SystemTime::now());
            let _ = writeln!(err, "{now} {}: {}", s.step, s.detail);
        }
        let _ = err.flush();
    }
}

impl Drop for Shown {
    /// Ends the live line before the final answer is printed.
    fn drop(&mut self) {
        if self.open.is_some() {
            let _ = writeln!(std::io::stderr());
        }
    }
}
