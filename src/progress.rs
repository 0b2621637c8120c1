//! Progress of long work: a bar on a terminal, periodic plain log lines otherwise.

use std::io::IsTerminal;
use std::time::{Duration, Instant};

pub struct Progress {
    bar: Option<indicatif::ProgressBar>,
    what: String,
    total: u64,
    done: std::cell::Cell<u64>,
    last_line: std::cell::Cell<Instant>,
}

impl Progress {
    /// A bar when stderr is a terminal, else log lines every few seconds.
    pub fn new(what: &str, total: u64) -> Progress {
        let bar = std::io::stderr().is_terminal().then(|| {
            let b = indicatif::ProgressBar::new(total);
            b.set_style(
                indicatif::ProgressStyle::with_template("{msg} [{bar:40}] {pos}/{len} ({eta})")
                    .expect("valid template")
                    .progress_chars("=> "),
            );
            b.set_message(what.to_string());
            b
        });
        Progress {
            bar,
            what: what.to_string(),
            total,
            done: std::cell::Cell::new(0),
            last_line: std::cell::Cell::new(Instant::now()),
        }
    }

    /// Never shows anything (tests, library use).
    pub fn hidden(what: &str, total: u64) -> Progress {
        Progress {
            bar: Some(indicatif::ProgressBar::hidden()),
            what: what.to_string(),
            total,
            done: std::cell::Cell::new(0),
            last_line: std::cell::Cell::new(Instant::now()),
        }
    }

    pub fn inc(&self, n: u64) {
        self.set(self.done.get() + n);
    }

    pub fn set(&self, done: u64) {
        self.done.set(done);
        match &self.bar {
            Some(b) => b.set_position(done),
            None => {
                if self.last_line.get().elapsed() >= Duration::from_secs(2) {
                    self.last_line.set(Instant::now());
                    log::info!("{}: {}/{}", self.what, done, self.total);
                }
            }
        }
    }

    pub fn finish(&self) {
        match &self.bar {
            Some(b) => b.finish_and_clear(),
            None => {
                if self.total > 0 {
                    log::info!("{}: {}/{} done", self.what, self.done.get(), self.total)
                }
            }
        }
    }
}
