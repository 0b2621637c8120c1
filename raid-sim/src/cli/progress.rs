//! Progress of a long offline job (rebuild, scrub) on the terminal or in the log.

use std::io::IsTerminal;
use std::time::Instant;

/// Progress of a rebuild or scrub: an `indicatif` bar on a terminal, a log line at every
/// tenth otherwise.
pub struct Progress {
    what: &'static str,
    bar: Option<indicatif::ProgressBar>,
    last_tenth: u64,
    started: Instant,
}

impl Progress {
    pub fn new(what: &'static str) -> Self {
        let bar = std::io::stderr().is_terminal().then(|| {
            let b = indicatif::ProgressBar::new(0);
            b.set_style(
                indicatif::ProgressStyle::with_template(
                    "{msg} [{bar:40}] {pos}/{len} stripes ({eta})",
                )
                .expect("a valid template")
                .progress_chars("=> "),
            );
            b.set_message(what);
            b
        });
        Progress {
            what,
            bar,
            last_tenth: u64::MAX,
            started: Instant::now(),
        }
    }

    pub fn update(&mut self, done: u64, total: u64) {
        let total = total.max(1);
        if let Some(b) = &self.bar {
            b.set_length(total);
            b.set_position(done);
            if done >= total {
                b.finish_and_clear();
            }
            return;
        }
        let tenth = done * 10 / total;
        if tenth != self.last_tenth {
            self.last_tenth = tenth;
            log::info!(
                "{}: {done}/{total} stripes ({}%), {:.1}s",
                self.what,
                done * 100 / total,
                self.started.elapsed().as_secs_f64()
            );
        }
    }
}
