//! stderr logging with a verbosity filter, quiet by default.
//!
//! Level 0 (the default) shows warnings, errors and the few lines that mark the node's life
//! (started, logged in, stopped). 1 adds debug detail, 2 and above everything. The level comes
//! from `--verbose`, else from the `TS_LOG_VERBOSITY` environment variable (the name the
//! original MikroTik image used), else 0. Nothing is ever written to a log file.

use tracing::level_filters::LevelFilter;

/// The environment variable that sets verbosity when `--verbose` is not given.
pub(crate) const ENV: &str = "TS_LOG_VERBOSITY";

/// Maps a verbosity number to the most detailed level shown.
pub(crate) fn level(verbosity: i64) -> LevelFilter {
    match verbosity {
        i64::MIN..=-1 => LevelFilter::WARN,
        0 => LevelFilter::INFO,
        1 => LevelFilter::DEBUG,
        _ => LevelFilter::TRACE,
    }
}

/// The verbosity in force: the flag if given, else the environment, else 0. A malformed
/// environment value is reported and ignored, never fatal.
pub(crate) fn verbosity(flag: Option<i64>, env: Option<&str>) -> (i64, Option<String>) {
    if let Some(v) = flag {
        return (v, None);
    }
    match env.map(str::trim) {
        None | Some("") => (0, None),
        Some(s) => match s.parse::<i64>() {
            Ok(v) => (v, None),
            Err(_) => (
                0,
                Some(format!("{ENV}={s:?} is not a number; using verbosity 0")),
            ),
        },
    }
}

/// Installs the stderr subscriber. Lines carry no timestamp: RouterOS, procd and container
/// runtimes stamp each line themselves.
pub(crate) fn init(flag: Option<i64>) {
    let env = std::env::var(ENV).ok();
    let (v, warning) = verbosity(flag, env.as_deref());
    let _ = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_max_level(level(v))
        .with_target(v >= 1)
        .without_time()
        .try_init();
    if let Some(w) = warning {
        tracing::warn!("{w}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flag_wins_over_environment() {
        assert_eq!(verbosity(Some(2), Some("0")).0, 2);
        assert_eq!(verbosity(None, Some("1")).0, 1);
        assert_eq!(verbosity(None, None).0, 0);
    }

    #[test]
    fn bad_environment_value_is_reported_not_fatal() {
        let (v, w) = verbosity(None, Some("loud"));
        assert_eq!(v, 0);
        assert!(w.unwrap().contains("TS_LOG_VERBOSITY"));
    }

    #[test]
    fn levels() {
        assert_eq!(level(-1), LevelFilter::WARN);
        assert_eq!(level(0), LevelFilter::INFO);
        assert_eq!(level(1), LevelFilter::DEBUG);
        assert_eq!(level(7), LevelFilter::TRACE);
    }
}
