//! Progress reports for long commands (`train-eagle`'s feature build and
//! training).
//!
//! On a terminal this is an `indicatif` bar. indicatif draws nothing when
//! stderr is not a terminal (a pipe into `tee`, a CI log, `nohup`), so a
//! pipeline that runs for an hour would print nothing until it ends. There,
//! `Progress` writes a plain line to stderr instead: the first update, then
//! at most one every `AERIE_PROGRESS_SECS` seconds (default 30; 0 prints
//! every update), and a last one at `finish`.

use indicatif::{ProgressBar, ProgressStyle};
use std::io::IsTerminal;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Seconds between plain progress lines when stderr is not a terminal.
pub const PROGRESS_SECS_ENV: &str = "AERIE_PROGRESS_SECS";
/// Default of [`PROGRESS_SECS_ENV`].
pub const DEFAULT_PROGRESS_SECS: u64 = 30;

pub struct Progress {
    what: String,
    /// Drawn on a terminal; otherwise `None`.
    bar: Option<ProgressBar>,
    /// Used when stderr is not a terminal.
    lines: Mutex<Lines>,
}

struct Lines {
    every: Duration,
    start: Instant,
    /// When the last line was written; `None` before the first.
    last: Option<Instant>,
    /// Position when this run started (a resumed run starts past 0), so the
    /// ETA uses this run's rate.
    start_pos: u64,
    pos: u64,
    len: u64,
    msg: String,
    /// An update came after the last line written.
    unwritten: bool,
}

impl Progress {
    /// A bar on a terminal, plain lines at the `AERIE_PROGRESS_SECS` interval
    /// otherwise.
    pub fn new(len: u64, what: &str) -> Progress {
        if std::io::stderr().is_terminal() {
            let bar = ProgressBar::new(len);
            bar.set_style(ProgressStyle::with_template(&format!("{what} [{{elapsed_precise}}] {{bar:30}} {{pos}}/{{len}} {{msg}} (eta {{eta}})")).unwrap_or_else(|_| ProgressStyle::default_bar()));
            Progress { what: what.to_string(), bar: Some(bar), lines: Mutex::new(Lines::new(len, Duration::ZERO)) }
        } else {
            Progress::lines(len, what, line_interval())
        }
    }

    /// Plain lines at most every `every` (for callers and tests that want
    /// them whatever stderr is).
    pub fn lines(len: u64, what: &str, every: Duration) -> Progress {
        Progress { what: what.to_string(), bar: None, lines: Mutex::new(Lines::new(len, every)) }
    }

    /// Where a resumed run starts.
    pub fn resume_at(&self, pos: u64) {
        if let Some(b) = &self.bar {
            b.set_position(pos);
        }
        let mut l = self.lock();
        l.pos = pos;
        l.start_pos = pos;
    }

    pub fn set_length(&self, len: u64) {
        if let Some(b) = &self.bar {
            b.set_length(len);
        }
        self.lock().len = len;
    }

    /// Moves to `pos` with a new message; on the plain path, writes a line
    /// if one is due.
    pub fn update(&self, pos: u64, msg: String) {
        if let Some(b) = &self.bar {
            b.set_position(pos);
            b.set_message(msg);
            return;
        }
        if let Some(line) = self.update_line(pos, msg, Instant::now()) {
            eprintln!("{line}");
        }
    }

    /// A line of its own that always shows (above the bar on a terminal).
    pub fn println(&self, line: String) {
        match &self.bar {
            Some(b) => b.println(line),
            None => eprintln!("{line}"),
        }
    }

    /// Ends the bar, or writes the last line.
    pub fn finish(&self) {
        if let Some(b) = &self.bar {
            b.finish();
            return;
        }
        if let Some(line) = self.finish_line(Instant::now()) {
            eprintln!("{line}");
        }
    }

    /// The plain-path state change; returns the line to write when one is due.
    fn update_line(&self, pos: u64, msg: String, now: Instant) -> Option<String> {
        let mut l = self.lock();
        l.pos = pos;
        l.msg = msg;
        let due = l.last.is_none_or(|t| now.duration_since(t) >= l.every);
        l.unwritten = !due;
        if !due {
            return None;
        }
        l.last = Some(now);
        Some(l.render(&self.what, now))
    }

    /// The last line, unless the latest update was written already.
    fn finish_line(&self, now: Instant) -> Option<String> {
        let mut l = self.lock();
        if l.last.is_some() && !l.unwritten {
            return None;
        }
        l.last = Some(now);
        l.unwritten = false;
        Some(l.render(&self.what, now))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Lines> {
        // A panic elsewhere cannot leave these plain numbers inconsistent.
        self.lines.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl Lines {
    fn new(len: u64, every: Duration) -> Lines {
        Lines { every, start: Instant::now(), last: None, start_pos: 0, pos: 0, len, msg: String::new(), unwritten: false }
    }

    /// `features: 120/1000, 38112 tokens, 3m12s elapsed, eta 25m40s`
    fn render(&self, what: &str, now: Instant) -> String {
        let elapsed = now.duration_since(self.start);
        let done = self.pos.saturating_sub(self.start_pos);
        let left = self.len.saturating_sub(self.pos);
        let eta = if left == 0 {
            ", done".to_string()
        } else if done == 0 {
            String::new()
        } else {
            format!(", eta {}", clock(elapsed.mul_f64(left as f64 / done as f64)))
        };
        let msg = if self.msg.is_empty() { String::new() } else { format!(", {}", self.msg) };
        format!("{what}: {}/{}{msg}, {} elapsed{eta}", self.pos, self.len, clock(elapsed))
    }
}

fn line_interval() -> Duration {
    let secs = std::env::var(PROGRESS_SECS_ENV).ok().and_then(|v| v.trim().parse::<u64>().ok()).unwrap_or(DEFAULT_PROGRESS_SECS);
    Duration::from_secs(secs)
}

/// `1h02m03s`, `3m12s`, `45s`.
fn clock(d: Duration) -> String {
    let s = d.as_secs();
    match (s / 3600, (s / 60) % 60, s % 60) {
        (0, 0, sec) => format!("{sec}s"),
        (0, m, sec) => format!("{m}m{sec:02}s"),
        (h, m, sec) => format!("{h}h{m:02}m{sec:02}s"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_lines_are_rate_limited_and_carry_position_message_and_eta() {
        let p = Progress::lines(100, "training", Duration::from_secs(30));
        let t0 = p.lock().start;
        let first = p.update_line(10, "loss 0.5".into(), t0 + Duration::from_secs(10)).expect("the first update is always written");
        assert_eq!(first, "training: 10/100, loss 0.5, 10s elapsed, eta 1m30s");
        // Within the interval: state moves, nothing is written.
        assert_eq!(p.update_line(20, "loss 0.4".into(), t0 + Duration::from_secs(20)), None);
        let next = p.update_line(50, "loss 0.3".into(), t0 + Duration::from_secs(40)).expect("due after 30 s");
        assert_eq!(next, "training: 50/100, loss 0.3, 40s elapsed, eta 40s");
        assert_eq!(p.update_line(60, "loss 0.2".into(), t0 + Duration::from_secs(50)), None);
        // `finish` writes the update the interval held back, once.
        let end = p.finish_line(t0 + Duration::from_secs(3700)).expect("an unwritten update");
        assert_eq!(end, "training: 60/100, loss 0.2, 1h01m40s elapsed, eta 41m06s");
        assert_eq!(p.finish_line(t0 + Duration::from_secs(3701)), None);
    }

    #[test]
    fn a_resumed_run_estimates_from_its_own_rate() {
        let p = Progress::lines(1000, "features", Duration::ZERO);
        p.resume_at(500);
        let t0 = p.lock().start;
        let line = p.update_line(600, "9000 tokens".into(), t0 + Duration::from_secs(60)).unwrap();
        // 100 done in 60 s, 400 left: 4 minutes, not the 40 s that counting
        // the resumed 500 as this run's work would give.
        assert_eq!(line, "features: 600/1000, 9000 tokens, 1m00s elapsed, eta 4m00s");
        let done = p.update_line(1000, String::new(), t0 + Duration::from_secs(240)).unwrap();
        assert_eq!(done, "features: 1000/1000, 4m00s elapsed, done");
        assert_eq!(p.finish_line(t0 + Duration::from_secs(241)), None, "the last update was written already");
    }
}
