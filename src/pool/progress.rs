//! The `progress` feature: a bar on stderr for maps that run longer than a second (only when
//! stderr is a terminal). Without the feature every call here is empty.

use std::time::{Duration, Instant};

/// How long a map runs before its bar appears (short maps draw nothing).
#[cfg(feature = "progress")]
const SHOW_AFTER: Duration = Duration::from_secs(1);

/// A map's bar, drawn once the map has run for [`SHOW_AFTER`].
#[derive(Debug)]
pub(crate) struct Bar {
    started: Instant,
    #[cfg(feature = "progress")]
    bar: Option<indicatif::ProgressBar>,
}

impl Bar {
    pub(crate) fn new() -> Bar {
        Bar {
            started: Instant::now(),
            #[cfg(feature = "progress")]
            bar: None,
        }
    }

    /// `done` items of `total` (unknown while the input is being read).
    pub(crate) fn update(&mut self, done: u64, total: Option<u64>) {
        #[cfg(feature = "progress")]
        {
            use std::io::IsTerminal;
            if self.bar.is_none() {
                if self.started.elapsed() < SHOW_AFTER || !std::io::stderr().is_terminal() {
                    return;
                }
                let bar = match total {
                    Some(t) => indicatif::ProgressBar::new(t),
                    None => indicatif::ProgressBar::new_spinner(),
                };
                if let Ok(style) = indicatif::ProgressStyle::with_template(
                    "{elapsed_precise} [{wide_bar}] {pos}/{len} items ({per_sec}, {eta} left)",
                ) {
                    bar.set_style(style);
                }
                self.bar = Some(bar);
            }
            if let Some(bar) = &self.bar {
                if let Some(t) = total {
                    bar.set_length(t);
                }
                bar.set_position(done);
            }
        }
        #[cfg(not(feature = "progress"))]
        let _ = (done, total, self.started, Duration::ZERO);
    }

    /// The map is over (or abandoned).
    pub(crate) fn finish(&mut self) {
        #[cfg(feature = "progress")]
        if let Some(bar) = self.bar.take() {
            bar.finish();
        }
    }
}
