//! Progress of `image import` and `image pull`: a bar with rate and ETA on a terminal (indicatif), and for a
//! pull a bar per layer under it (downloaded bytes, then extraction and commit: layers unpack while they
//! download); plain periodic lines when asked (`--progress=plain`, for logs and CI), nothing otherwise. Totals
//! come from kilnd before the first blob or layer (it reads the manifests first), so the bars know their end
//! from the start.

use std::time::{Duration, Instant};

use indicatif::{HumanBytes, HumanDuration, MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};

/// `--progress`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Mode {
    /// A bar when stderr is a terminal (and not --json), else nothing.
    Auto,
    /// A bar redrawn in place.
    Tty,
    /// A line on stderr at most once a second, and a last one.
    Plain,
    /// Nothing.
    None,
}

/// One running import or pull.
pub struct Meter {
    mode: Mode,
    bar: Option<ProgressBar>,
    /// The bars on the terminal: the main one, then one per layer (a pull's).
    multi: Option<MultiProgress>,
    layer_bars: Vec<ProgressBar>,
    what: &'static str,
    unit: &'static str,
    started: Instant,
    last_line: Option<Instant>,
}

/// How far along: `items` (blobs, layers) and bytes, each done out of a total (0 = not known yet), and a
/// pull's layers.
#[derive(Debug, Clone, Default)]
pub struct Step {
    pub items: u64,
    pub items_total: u64,
    pub bytes: u64,
    pub bytes_total: u64,
    /// A pull's download: bytes done and in all.
    pub downloaded: (u64, u64),
    pub layers: Vec<LayerStep>,
}

/// One layer of a pull.
#[derive(Debug, Clone, Default)]
pub struct LayerStep {
    pub digest: String,
    pub size: u64,
    pub downloaded: u64,
    /// Compressed bytes the unpack has read.
    pub extracted: u64,
    pub committed: bool,
}

impl LayerStep {
    /// `waiting`, `downloading`, `extracting 40%`, `done`.
    fn state(&self) -> String {
        if self.committed {
            "done".into()
        } else if self.extracted > 0 {
            format!("extracting {}%", self.extracted.saturating_mul(100) / self.size.max(1))
        } else if self.downloaded > 0 {
            "downloading".into()
        } else {
            "waiting".into()
        }
    }

    /// `sha256:0123456789ab`.
    fn short(&self) -> &str {
        self.digest.get(..19).unwrap_or(&self.digest)
    }
}

impl Meter {
    /// `what` names the work ("import"), `unit` its items ("blobs").
    pub fn new(mode: Mode, json: bool, what: &'static str, unit: &'static str) -> Meter {
        let mode = match mode {
            Mode::Auto if !json && std::io::IsTerminal::is_terminal(&std::io::stderr()) => Mode::Tty,
            Mode::Auto => Mode::None,
            m => m,
        };
        let multi = (mode == Mode::Tty).then(|| MultiProgress::with_draw_target(ProgressDrawTarget::stderr()));
        let bar = multi.as_ref().map(|multi| {
            let bar = multi.add(ProgressBar::new(0));
            let style = ProgressStyle::with_template(
                "{prefix} [{bar:30}] {bytes}/{total_bytes} {binary_bytes_per_sec}, ETA {eta} ({msg})",
            )
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> ");
            bar.set_style(style);
            bar.set_prefix(what);
            bar.enable_steady_tick(Duration::from_millis(200));
            bar
        });
        Meter { mode, bar, multi, layer_bars: Vec::new(), what, unit, started: Instant::now(), last_line: None }
    }

    pub fn update(&mut self, s: &Step) {
        if let Some(bar) = &self.bar {
            bar.set_length(s.bytes_total.max(s.bytes));
            bar.set_position(s.bytes);
            bar.set_message(format!("{}/{} {}", s.items, s.items_total, self.unit));
        }
        if let Some(multi) = &self.multi {
            while self.layer_bars.len() < s.layers.len() {
                let bar = multi.add(ProgressBar::new(0));
                let style = ProgressStyle::with_template("  {prefix} [{bar:30}] {bytes}/{total_bytes} {msg}")
                    .unwrap_or_else(|_| ProgressStyle::default_bar())
                    .progress_chars("=> ");
                bar.set_style(style);
                self.layer_bars.push(bar);
            }
            for (bar, l) in self.layer_bars.iter().zip(&s.layers) {
                bar.set_prefix(l.short().to_owned());
                bar.set_length(l.size.max(l.downloaded));
                bar.set_position(l.downloaded);
                bar.set_message(l.state());
            }
        }
        if self.mode == Mode::Plain && self.last_line.is_none_or(|t| t.elapsed() >= Duration::from_secs(1)) {
            self.last_line = Some(Instant::now());
            eprintln!("{}", self.line(s));
        }
    }

    /// `import: 12/40 blobs, 3.1 MiB/10.2 MiB, 2.3 MiB/s, ETA 3s`; a pull that downloads adds
    /// `, downloaded 5.0 MiB/10.2 MiB`.
    fn line(&self, s: &Step) -> String {
        let secs = self.started.elapsed().as_secs_f64().max(0.001);
        let rate = s.bytes as f64 / secs;
        let eta = if rate > 0.0 && s.bytes_total > s.bytes {
            format!(", ETA {}", HumanDuration(Duration::from_secs_f64((s.bytes_total - s.bytes) as f64 / rate)))
        } else {
            String::new()
        };
        let download = match s.downloaded {
            (_, 0) => String::new(),
            (done, total) => format!(", downloaded {}/{}", HumanBytes(done), HumanBytes(total)),
        };
        format!(
            "{}: {}/{} {}, {}/{}, {}/s{eta}{download}",
            self.what,
            s.items,
            s.items_total,
            self.unit,
            HumanBytes(s.bytes),
            HumanBytes(s.bytes_total),
            HumanBytes(rate as u64)
        )
    }

    /// Ends the bar (or prints the last plain line).
    pub fn finish(&mut self, s: &Step) {
        for bar in self.layer_bars.drain(..) {
            bar.finish_and_clear();
        }
        if let Some(bar) = self.bar.take() {
            bar.finish_and_clear();
        }
        if let Some(multi) = self.multi.take() {
            let _ = multi.clear();
        }
        if self.mode == Mode::Plain {
            eprintln!("{} (done in {})", self.line(s), HumanDuration(self.started.elapsed()));
        }
    }
}

/// `2.10 MiB`.
pub fn size(bytes: u64) -> String {
    HumanBytes(bytes).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_plain_line_has_counts_sizes_rate_and_eta() {
        let m = Meter::new(Mode::Plain, false, "import", "blobs");
        let line = m.line(&Step { items: 1, items_total: 4, bytes: 1 << 20, bytes_total: 4 << 20, ..Step::default() });
        assert!(line.starts_with("import: 1/4 blobs, 1.00 MiB/4.00 MiB, "), "{line}");
        assert!(line.contains("/s, ETA "), "{line}");
        let line =
            m.line(&Step { items_total: 1, bytes_total: 4 << 20, downloaded: (1 << 20, 4 << 20), ..Step::default() });
        assert!(line.ends_with(", downloaded 1.00 MiB/4.00 MiB"), "{line}");
        let l = |downloaded, extracted, committed| LayerStep {
            digest: "sha256:0123456789abcdef".into(),
            size: 200,
            downloaded,
            extracted,
            committed,
        };
        assert_eq!(l(0, 0, false).state(), "waiting");
        assert_eq!(l(10, 0, false).state(), "downloading");
        assert_eq!(l(150, 80, false).state(), "extracting 40%");
        assert_eq!(l(200, 200, true).state(), "done");
        assert_eq!(l(0, 0, false).short(), "sha256:0123456789ab");
        assert_eq!(Meter::new(Mode::Auto, true, "pull", "layers").mode, Mode::None, "--json: no bar");
    }
}
