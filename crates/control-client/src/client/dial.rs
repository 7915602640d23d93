//! Which ports the ts2021 upgrade is tried on, in what order and when (protocol.md §2.2,
//! Go's `controlhttp`), and the race that runs such a plan.
//!
//! - No port in the URL (either scheme): plain HTTP on 80 at once, HTTPS on 443 after 500 ms.
//! - `http://host:port`: that port over HTTP, plus HTTPS on 443 after 500 ms unless the host
//!   is `localhost` or a loopback or private address.
//! - `https://host:port`: only HTTPS on that port.
//!
//! The first upgrade to succeed wins and the others are cancelled. An attempt that fails
//! starts the next one at once instead of waiting out its delay. When all fail, the error is
//! the one of the attempt on the URL's own scheme, the one its owner would look at.

use crate::Error;
use crate::http1::{ControlUrl, Scheme};
use std::net::IpAddr;
use std::time::Duration;
use tokio::task::JoinSet;
use tokio::time::Instant;

/// How long the HTTP attempt runs alone before HTTPS starts beside it.
pub(crate) const HTTPS_DELAY: Duration = Duration::from_millis(500);

/// One way to reach the ts2021 endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Attempt {
    /// HTTP or HTTPS.
    pub(crate) scheme: Scheme,
    /// The TCP port.
    pub(crate) port: u16,
    /// When to start it, counted from the start of the dial.
    pub(crate) delay: Duration,
}

/// Whether Go's dialer treats `host` as local: never worth a 443 fallback.
pub(crate) fn is_local_host(host: &str) -> bool {
    if host.eq_ignore_ascii_case("localhost") {
        return true;
    }
    match host.parse::<IpAddr>() {
        Ok(IpAddr::V4(a)) => a.is_loopback() || a.is_private(),
        // Loopback, or unique local fc00::/7 (Go's IsPrivate).
        Ok(IpAddr::V6(a)) => a.is_loopback() || (a.segments()[0] & 0xfe00) == 0xfc00,
        Err(_) => false,
    }
}

/// The attempts for a control URL, in start order.
pub(crate) fn plan(url: &ControlUrl) -> Vec<Attempt> {
    let at = |scheme, port, delay| Attempt {
        scheme,
        port,
        delay,
    };
    match (url.scheme, url.port) {
        (_, None) => vec![
            at(Scheme::Http, 80, Duration::ZERO),
            at(Scheme::Https, 443, HTTPS_DELAY),
        ],
        (Scheme::Https, Some(p)) => vec![at(Scheme::Https, p, Duration::ZERO)],
        (Scheme::Http, Some(p)) => {
            let mut v = vec![at(Scheme::Http, p, Duration::ZERO)];
            if !is_local_host(&url.host) {
                v.push(at(Scheme::Https, 443, HTTPS_DELAY));
            }
            v
        }
    }
}

/// Runs `plan`, starting each attempt with `start` at its delay (or at once when every
/// started one has failed), and returns the first success. Losers are aborted. `primary` is
/// the scheme whose error is returned when all fail.
pub(crate) async fn race<T, F, Fut>(plan: &[Attempt], primary: Scheme, start: F) -> Result<T, Error>
where
    T: Send + 'static,
    F: Fn(Attempt) -> Fut,
    Fut: Future<Output = Result<T, Error>> + Send + 'static,
{
    let t0 = Instant::now();
    let mut running: JoinSet<(Attempt, Result<T, Error>)> = JoinSet::new();
    let mut next = 0;
    let mut chosen_err: Option<Error> = None;
    let mut any_err: Option<Error> = None;
    loop {
        // Start everything that is due, or the next one if nothing runs.
        while let Some(&a) = plan.get(next) {
            if running.is_empty() || Instant::now() >= t0 + a.delay {
                let fut = start(a);
                running.spawn(async move { (a, fut.await) });
                tracing::debug!(scheme = ?a.scheme, port = a.port, "control dial attempt");
                next += 1;
            } else {
                break;
            }
        }
        let joined = match plan.get(next) {
            Some(a) => match tokio::time::timeout_at(t0 + a.delay, running.join_next()).await {
                Ok(j) => j,
                Err(_) => continue, // the next attempt is due
            },
            None => running.join_next().await,
        };
        let Some(joined) = joined else {
            break; // nothing running, nothing left to start
        };
        match joined {
            Ok((_, Ok(v))) => return Ok(v), // dropping `running` aborts the others
            Ok((a, Err(e))) => {
                tracing::debug!(scheme = ?a.scheme, port = a.port, error = %e, "control dial attempt failed");
                if a.scheme == primary && chosen_err.is_none() {
                    chosen_err = Some(e);
                } else if any_err.is_none() {
                    any_err = Some(e);
                }
            }
            Err(e) => {
                if any_err.is_none() {
                    any_err = Some(Error::Io {
                        context: "control dial attempt",
                        source: std::io::Error::other(e.to_string()),
                    });
                }
            }
        }
    }
    Err(chosen_err
        .or(any_err)
        .unwrap_or(Error::Unsupported("no way to dial this control URL")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    fn plan_of(url: &str) -> Vec<(Scheme, u16, u64)> {
        plan(&ControlUrl::parse(url).unwrap())
            .into_iter()
            .map(|a| (a.scheme, a.port, a.delay.as_millis() as u64))
            .collect()
    }

    #[test]
    fn the_plan_follows_go() {
        use Scheme::{Http, Https};
        let both = vec![(Http, 80, 0), (Https, 443, 500)];
        // No port: 80 first, 443 after 500 ms, whatever the scheme or host.
        assert_eq!(plan_of("https://controlplane.tailscale.com"), both);
        assert_eq!(plan_of("http://hs.example.com/"), both);
        assert_eq!(plan_of("https://127.0.0.1"), both);
        // https with a port: only that port.
        assert_eq!(plan_of("https://hs.example.com:8443"), [(Https, 8443, 0)]);
        assert_eq!(plan_of("https://127.0.0.1:443"), [(Https, 443, 0)]);
        // http with a port: that port, plus 443 for public hosts only.
        assert_eq!(
            plan_of("http://hs.example.com:8080"),
            [(Http, 8080, 0), (Https, 443, 500)]
        );
        assert_eq!(
            plan_of("http://203.0.113.5:8080"),
            [(Http, 8080, 0), (Https, 443, 500)]
        );
        assert_eq!(
            plan_of("http://[2001:db8::1]:8080"),
            [(Http, 8080, 0), (Https, 443, 500)]
        );
        for local in [
            "http://localhost:8080",
            "http://LOCALHOST:8080",
            "http://127.0.0.1:8080",
            "http://127.9.9.9:8080",
            "http://10.1.2.3:8080",
            "http://172.16.0.1:8080",
            "http://192.168.88.1:8080",
            "http://[::1]:8080",
            "http://[fd7a:115c:a1e0::1]:8080",
        ] {
            assert_eq!(plan_of(local), [(Http, 8080, 0)], "{local}");
        }
        assert!(!is_local_host("172.32.0.1"));
        assert!(!is_local_host("localhost.example.com"));
    }

    /// Runs a race on the paused clock; each attempt sleeps `after(attempt)` and then
    /// succeeds or fails. Returns the outcome, when it came, and when each attempt started.
    async fn run(
        plan: &[Attempt],
        primary: Scheme,
        behave: fn(Attempt) -> (u64, bool),
    ) -> (Result<u16, String>, u64, Vec<(u16, u64)>) {
        let t0 = Instant::now();
        let started = Arc::new(Mutex::new(Vec::new()));
        let s2 = Arc::clone(&started);
        let r = race(plan, primary, move |a| {
            s2.lock()
                .unwrap()
                .push((a.port, (Instant::now() - t0).as_millis() as u64));
            async move {
                let (ms, ok) = behave(a);
                tokio::time::sleep(Duration::from_millis(ms)).await;
                if ok {
                    Ok(a.port)
                } else {
                    Err(Error::BadResponse(format!("port {} failed", a.port)))
                }
            }
        })
        .await;
        let took = (Instant::now() - t0).as_millis() as u64;
        let started = started.lock().unwrap().clone();
        (r.map_err(|e| e.to_string()), took, started)
    }

    fn both() -> Vec<Attempt> {
        plan(&ControlUrl::parse("https://hs.example.com").unwrap())
    }

    #[tokio::test(start_paused = true)]
    async fn http_wins_when_fast() {
        let (r, took, started) = run(&both(), Scheme::Https, |_| (100, true)).await;
        assert_eq!((r, took, started), (Ok(80), 100, vec![(80, 0)]));
    }

    #[tokio::test(start_paused = true)]
    async fn https_starts_at_500ms_and_can_win() {
        // Port 80 hangs (a middlebox): 443 starts at 500 ms and wins 50 ms later.
        let (r, took, started) = run(&both(), Scheme::Https, |a| {
            if a.port == 80 {
                (10_000, true)
            } else {
                (50, true)
            }
        })
        .await;
        assert_eq!(
            (r, took, started),
            (Ok(443), 550, vec![(80, 0), (443, 500)])
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_fast_failure_starts_the_next_at_once() {
        let (r, took, started) = run(&both(), Scheme::Https, |a| {
            if a.port == 80 {
                (20, false)
            } else {
                (30, true)
            }
        })
        .await;
        assert_eq!((r, took, started), (Ok(443), 50, vec![(80, 0), (443, 20)]));
    }

    #[tokio::test(start_paused = true)]
    async fn all_failing_gives_the_primary_schemes_error() {
        let (r, _, _) = run(&both(), Scheme::Https, |_| (10, false)).await;
        assert_eq!(r, Err("bad answer from control: port 443 failed".into()));
        let (r, _, _) = run(&both(), Scheme::Http, |_| (10, false)).await;
        assert_eq!(r, Err("bad answer from control: port 80 failed".into()));
        let only = plan(&ControlUrl::parse("https://h:8443").unwrap());
        let (r, took, started) = run(&only, Scheme::Https, |_| (10, false)).await;
        assert_eq!(
            (r, took, started),
            (
                Err("bad answer from control: port 8443 failed".into()),
                10,
                vec![(8443, 0)]
            )
        );
    }

    #[tokio::test(start_paused = true)]
    async fn the_loser_is_cancelled() {
        struct Flag(Arc<Mutex<bool>>);
        impl Drop for Flag {
            fn drop(&mut self) {
                *self.0.lock().unwrap() = true;
            }
        }
        let dropped = Arc::new(Mutex::new(false));
        let d2 = Arc::clone(&dropped);
        let r = race(&both(), Scheme::Https, move |a| {
            let flag = (a.port == 80).then(|| Flag(Arc::clone(&d2)));
            async move {
                if let Some(_f) = flag {
                    tokio::time::sleep(Duration::from_secs(60)).await;
                    Ok(80)
                } else {
                    Ok(443)
                }
            }
        })
        .await;
        assert_eq!(r.unwrap(), 443);
        tokio::task::yield_now().await;
        assert!(*dropped.lock().unwrap(), "the HTTP attempt was not aborted");
    }
}
