//! How long work is shown: one bar style for downloads and image writing, or plain lines
//! when stderr is not a terminal (logs, CI).
use std::sync::atomic::{AtomicU64, Ordering};

/// How long work is shown: bars on a terminal, plain lines otherwise.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProgressStyle {
    Bars,
    Lines,
    Quiet,
}

impl ProgressStyle {
    /// Bars when stderr is a terminal, else lines.
    pub fn for_stderr() -> Self {
        use std::io::IsTerminal;
        if std::io::stderr().is_terminal() {
            ProgressStyle::Bars
        } else {
            ProgressStyle::Lines
        }
    }
}

/// A bar with bytes, rate and time left.
pub fn bar_style() -> indicatif::ProgressStyle {
    indicatif::ProgressStyle::with_template(
        "{msg} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
    )
    .expect("a valid progress template")
    .progress_chars("=> ")
}

/// Progress of one long job of known size: an indicatif bar, or a line every 10%.
pub struct Meter {
    bar: Option<indicatif::ProgressBar>,
    label: String,
    total: u64,
    done: AtomicU64,
    style: ProgressStyle,
}

impl Meter {
    pub fn new(label: &str, total: u64, style: ProgressStyle) -> Meter {
        let bar = (style == ProgressStyle::Bars).then(|| {
            let b = indicatif::ProgressBar::new(total);
            b.set_style(bar_style());
            b.set_message(label.to_string());
            b
        });
        if style == ProgressStyle::Lines {
            eprintln!("{label}: {} MiB", total >> 20);
        }
        Meter {
            bar,
            label: label.to_string(),
            total: total.max(1),
            done: AtomicU64::new(0),
            style,
        }
    }

    pub fn inc(&self, n: u64) {
        let before = self.done.fetch_add(n, Ordering::Relaxed);
        if let Some(b) = &self.bar {
            b.inc(n);
        } else if self.style == ProgressStyle::Lines {
            let (a, b) = (before * 10 / self.total, (before + n) * 10 / self.total);
            if b > a && b < 10 {
                eprintln!("{}: {}%", self.label, b * 10);
            }
        }
    }

    pub fn finish(&self) {
        if let Some(b) = &self.bar {
            b.finish_and_clear();
        } else if self.style == ProgressStyle::Lines {
            eprintln!("{}: done", self.label);
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_progress_template_is_valid() {
        let _ = super::bar_style();
    }
}
