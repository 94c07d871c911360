//! Logs: the `tracing` subscriber (JSON when not on a terminal, or as `--log-format` says)
//! and a throttle for warnings that a long outage would otherwise repeat for every message.
//!
//! Style of every log line: fields first, then a message that starts with a capital and ends
//! with a period: `warn!(pipeline = %name, step = %id, correlation_id = %id, "Message
//! dead-lettered.")`. A line about a message carries `pipeline`, `step` and
//! `correlation_id`; no line at info level or above carries a payload.

use std::sync::Mutex;
use std::time::{Duration, Instant};

/// The format of log lines on stderr.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// One JSON object per line.
    Json,
    /// Human-readable lines.
    Pretty,
}

/// Installs the subscriber: `RUST_LOG` filters (default `info`); `format` or, when not given,
/// JSON unless stderr is a terminal.
pub fn init(format: Option<LogFormat>) {
    use std::io::IsTerminal;
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    use tracing_subscriber::Layer;

    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let json = match format {
        Some(LogFormat::Json) => true,
        Some(LogFormat::Pretty) => false,
        None => !std::io::stderr().is_terminal(),
    };
    let fmt = tracing_subscriber::fmt::layer().with_writer(std::io::stderr);
    let fmt = if json {
        fmt.json().with_filter(filter).boxed()
    } else {
        fmt.with_filter(filter).boxed()
    };
    tracing_subscriber::registry().with(fmt).init();
}

/// Lets one log line through per interval and counts the ones it held back.
#[derive(Debug)]
pub struct Throttle {
    every: Duration,
    state: Mutex<(Option<Instant>, u64)>,
}

impl Throttle {
    /// At most one line per `every`.
    pub fn new(every: Duration) -> Self {
        Throttle {
            every,
            state: Mutex::new((None, 0)),
        }
    }

    /// `Some(n)`: log now, `n` lines were held back since the last one; `None`: hold it back.
    pub fn allow(&self) -> Option<u64> {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        match state.0 {
            Some(last) if now.duration_since(last) < self.every => {
                state.1 += 1;
                None
            }
            _ => {
                let held = std::mem::take(&mut state.1);
                state.0 = Some(now);
                Some(held)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn throttle_lets_one_line_through_per_interval_and_counts_the_rest() {
        let throttle = Throttle::new(Duration::from_millis(200));
        assert_eq!(throttle.allow(), Some(0));
        assert_eq!(throttle.allow(), None);
        assert_eq!(throttle.allow(), None);
        std::thread::sleep(Duration::from_millis(250));
        assert_eq!(throttle.allow(), Some(2));
        assert_eq!(throttle.allow(), None);
    }
}
