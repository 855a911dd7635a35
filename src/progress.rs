//! Progress reporting for long work: indicatif bars on a terminal, plain lines otherwise, and a
//! `--progress=json` stream of events (one JSON object per line on stderr) for CI.

use std::io::{IsTerminal, Write};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use clap::ValueEnum;
use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde_json::json;

#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum ProgressMode {
    /// Bars on a terminal, plain lines otherwise.
    #[default]
    Auto,
    Bars,
    Plain,
    Json,
    /// Nothing but warnings.
    Quiet,
}

/// What a stage counts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Unit {
    Bytes,
    /// 512 KiB EBS blocks.
    Blocks,
}

/// How often plain and JSON progress lines are printed for one stage.
const LINE_INTERVAL: Duration = Duration::from_secs(2);

#[derive(Clone)]
pub struct Progress {
    mode: ProgressMode,
    bars: Option<MultiProgress>,
}

impl Progress {
    pub fn new(mode: ProgressMode) -> Self {
        let mode = match mode {
            ProgressMode::Auto if std::io::stderr().is_terminal() => ProgressMode::Bars,
            ProgressMode::Auto => ProgressMode::Plain,
            m => m,
        };
        let bars = (mode == ProgressMode::Bars)
            .then(|| MultiProgress::with_draw_target(ProgressDrawTarget::stderr()));
        Progress { mode, bars }
    }

    /// A progress reporter that prints nothing (library use, tests).
    pub fn quiet() -> Self {
        Progress { mode: ProgressMode::Quiet, bars: None }
    }

    /// Starts a named stage; `total` is in bytes when known.
    pub fn stage(&self, name: &str, total: Option<u64>) -> Stage {
        self.stage_in(name, total, Unit::Bytes)
    }

    /// Starts a named stage counting `unit`s; a total may come later ([`Stage::add_total`]).
    pub fn stage_in(&self, name: &str, total: Option<u64>, unit: Unit) -> Stage {
        let template = match unit {
            Unit::Bytes => "{prefix:>10} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} {msg}",
            Unit::Blocks => "{prefix:>10} [{bar:30}] {pos}/{len} blocks {per_sec} {msg}",
        };
        let total = if unit == Unit::Blocks { total.or(Some(0)) } else { total };
        let bar = self.bars.as_ref().map(|m| {
            let bar = match total {
                Some(t) => ProgressBar::new(t).with_style(ProgressStyle::with_template(template).unwrap().progress_chars("=> ")),
                None => ProgressBar::new_spinner().with_style(
                    ProgressStyle::with_template("{prefix:>10} {spinner} {elapsed} {msg}").unwrap(),
                ),
            };
            let bar = m.add(bar.with_prefix(name.to_string()));
            bar.enable_steady_tick(Duration::from_millis(200));
            bar
        });
        let stage = Stage(Arc::new(StageInner {
            mode: self.mode,
            unit,
            name: name.to_string(),
            total: AtomicU64::new(total.unwrap_or(0)),
            done: AtomicU64::new(0),
            started: Instant::now(),
            last_line: Mutex::new(Instant::now()),
            bar,
        }));
        stage.event("start", None);
        stage
    }

    /// A warning the user should see whatever the mode.
    pub fn warn(&self, message: &str) {
        match self.mode {
            ProgressMode::Json => emit(&json!({"event": "warning", "message": message})),
            _ => match &self.bars {
                Some(m) => {
                    let _ = m.println(format!("kiln: warning: {message}"));
                }
                None => eprintln!("kiln: warning: {message}"),
            },
        }
    }

    /// The run's result for CI: a `result` event in JSON mode (nothing otherwise; the
    /// command prints its own summary on stdout).
    pub fn result(&self, value: serde_json::Value) {
        if self.mode == ProgressMode::Json {
            emit(&json!({"event": "result", "result": value}));
        }
    }

    /// A one-off informational line (suppressed in quiet mode).
    pub fn info(&self, message: &str) {
        match self.mode {
            ProgressMode::Quiet => {}
            ProgressMode::Json => emit(&json!({"event": "info", "message": message})),
            _ => match &self.bars {
                Some(m) => {
                    let _ = m.println(format!("kiln: {message}"));
                }
                None => eprintln!("kiln: {message}"),
            },
        }
    }
}

/// One stage of work. Cheap to clone and safe to advance from several threads.
#[derive(Clone)]
pub struct Stage(Arc<StageInner>);

struct StageInner {
    mode: ProgressMode,
    unit: Unit,
    name: String,
    total: AtomicU64,
    done: AtomicU64,
    started: Instant,
    last_line: Mutex<Instant>,
    bar: Option<ProgressBar>,
}

impl Stage {
    pub fn inc(&self, n: u64) {
        let s = &self.0;
        let done = s.done.fetch_add(n, Ordering::Relaxed) + n;
        if let Some(bar) = &s.bar {
            bar.set_position(done);
            return;
        }
        if matches!(s.mode, ProgressMode::Plain | ProgressMode::Json) {
            let mut last = s.last_line.lock().unwrap();
            if last.elapsed() >= LINE_INTERVAL {
                *last = Instant::now();
                drop(last);
                self.event("progress", None);
            }
        }
    }

    pub fn add_total(&self, n: u64) {
        let total = self.0.total.fetch_add(n, Ordering::Relaxed) + n;
        if let Some(bar) = &self.0.bar {
            bar.set_length(total);
        }
    }

    pub fn set_message(&self, message: &str) {
        if let Some(bar) = &self.0.bar {
            bar.set_message(message.to_string());
        }
    }

    pub fn finish(self) {
        if let Some(bar) = &self.0.bar {
            bar.finish_and_clear();
        }
        let secs = self.0.started.elapsed().as_secs_f64();
        self.event("finish", Some(secs));
    }

    fn event(&self, kind: &str, seconds: Option<f64>) {
        let s = &self.0;
        let done = s.done.load(Ordering::Relaxed);
        let total = s.total.load(Ordering::Relaxed);
        match s.mode {
            ProgressMode::Json => {
                let mut v = json!({"event": kind, "stage": s.name, "done": done});
                if total > 0 {
                    v["total"] = json!(total);
                }
                if s.unit == Unit::Blocks {
                    v["unit"] = json!("blocks");
                }
                if let Some(secs) = seconds {
                    v["seconds"] = json!((secs * 1000.0).round() / 1000.0);
                }
                emit(&v);
            }
            ProgressMode::Plain => {
                let line = match (kind, seconds) {
                    ("start", _) => format!("{}: started", s.name),
                    (_, Some(secs)) => format!("{}: done in {secs:.1}s", s.name),
                    _ if total > 0 && s.unit == Unit::Blocks => {
                        format!("{}: {}% ({done} / {total} blocks)", s.name, done * 100 / total.max(1))
                    }
                    _ if total > 0 => format!(
                        "{}: {}% ({} / {} MiB)",
                        s.name,
                        done * 100 / total.max(1),
                        done >> 20,
                        total >> 20
                    ),
                    _ => format!("{}: {} MiB", s.name, done >> 20),
                };
                eprintln!("kiln: {line}");
            }
            _ => {}
        }
    }
}

fn emit(v: &serde_json::Value) {
    let mut err = std::io::stderr().lock();
    let _ = writeln!(err, "{v}");
}
