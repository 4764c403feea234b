//! `kiln build`'s progress line on a terminal: while a step runs longer than
//! [`SHOW_AFTER`], the last line of stderr says which step and for how long (`    snapshot …
//! 12 s`), redrawn in place every [`TICK`]; every other line clears it first. Off a terminal
//! (files, pipes, `--log-format json`) nothing of this is written.

use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// A step shows its progress line once it has run this long (quick steps would only flicker).
const SHOW_AFTER: Duration = Duration::from_secs(2);
/// How often the line is redrawn.
const TICK: Duration = Duration::from_millis(500);

#[derive(Default)]
struct State {
    /// The running step's title and start.
    step: Option<(String, Instant)>,
    /// The last line a command of the step printed (source: line).
    last: String,
    /// Whether the progress line is on screen.
    shown: bool,
}

/// The progress view. Cheap to clone.
#[derive(Clone, Default)]
pub(crate) struct Progress(Arc<Mutex<State>>);

impl Progress {
    /// Starts redrawing on a background task (until the process ends).
    pub(crate) fn start() -> Self {
        let p = Self::default();
        let ticker = p.clone();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(TICK).await;
                ticker.draw();
            }
        });
        p
    }

    /// Prints `line` above the progress line (`source` `kiln` for kiln's own lines).
    pub(crate) fn line(&self, source: &str, line: &str) {
        let Ok(mut s) = self.0.lock() else {
            eprintln!("{line}");
            return;
        };
        let mut err = std::io::stderr().lock();
        if s.shown {
            let _ = write!(err, "\r\x1b[2K");
            s.shown = false;
        }
        if source == "kiln" {
            if let Some(title) = line.strip_prefix("==> ") {
                s.step = Some((title.to_owned(), Instant::now()));
                s.last.clear();
            } else if line.trim_start().contains(" done in ") {
                s.step = None;
            }
            let _ = writeln!(err, "{line}");
        } else {
            s.last = format!("{source}: {line}");
            let _ = writeln!(err, "    {source}: {line}");
        }
    }

    fn draw(&self) {
        let Ok(mut s) = self.0.lock() else { return };
        let Some((title, started)) = s.step.clone() else {
            return;
        };
        let took = started.elapsed();
        if took < SHOW_AFTER {
            return;
        }
        let width = terminal_width();
        let mut text = format!("    … {title} ({} s)", took.as_secs());
        if !s.last.is_empty() {
            text.push_str("  ");
            text.push_str(&s.last);
        }
        let text: String = text.chars().take(width.saturating_sub(1)).collect();
        let mut err = std::io::stderr().lock();
        let _ = write!(err, "\r\x1b[2K{text}");
        let _ = err.flush();
        s.shown = true;
    }
}

/// The terminal's width from `COLUMNS`, else 80 (a longer line would wrap, and `\r` would then
/// redraw only its last part).
fn terminal_width() -> usize {
    std::env::var("COLUMNS")
        .ok()
        .and_then(|c| c.parse().ok())
        .unwrap_or(80)
}
