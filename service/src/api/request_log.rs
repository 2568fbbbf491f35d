//! What a node logs about the client requests it served.
//!
//! By default nothing for an ordinary request: at thousands of requests a second a
//! line each is most of a node's work and disk (etcd logs none either). Instead:
//! - a request slower than `logging.slow_request_threshold`, and any 5xx answer, gets
//!   one `warn` line with its route, status, latency and trace id; at most
//!   [`WARN_LINES_PER_SECOND`] of them a second, so an outage (every request failing or
//!   slow) does not flood the log; the next line that passes says how many were left
//!   out;
//! - with `logging.access_log` on, every request gets exactly one line: `info`, or
//!   `warn` when it is slow or failed, none left out (the operator asked for all).
//!
//! The lines are logged outside the request's span, so they carry their fields once,
//! at the top level, instead of again under `span` and `spans`.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use poem::http::Method;

use crate::config::LoggingSettings;
use crate::telemetry::ACCESS_TARGET;

/// The most warn lines for slow or failed requests in one second, without the access
/// log.
pub const WARN_LINES_PER_SECOND: u32 = 10;

/// The route label of `GET /ready`.
const READY_ROUTE: &str = "ready";

/// One finished request, as the middleware saw it.
pub struct Finished<'a> {
    pub method: &'a Method,
    pub path: &'a str,
    pub route: &'static str,
    pub status: u16,
    pub elapsed: Duration,
}

/// Decides which requests get a line, and writes it.
pub struct RequestLog {
    access_log: bool,
    /// `None`: no slow-request lines (`slow_request_threshold: 0`).
    slow_threshold: Option<Duration>,
    limiter: RateLimiter,
}

/// Why a request deserves a warn line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Trouble {
    ServerError,
    Slow,
}

impl RequestLog {
    pub fn new(settings: &LoggingSettings) -> Self {
        Self {
            access_log: settings.access_log,
            slow_threshold: Some(settings.slow_request_threshold).filter(|t| !t.is_zero()),
            limiter: RateLimiter::new(WARN_LINES_PER_SECOND, Duration::from_secs(1)),
        }
    }

    fn trouble(&self, route: &str, status: u16, elapsed: Duration) -> Option<Trouble> {
        // `/ready` answers 503 by design while the node has no leader or lags: that
        // is its answer to a probe, not a failure to log.
        if status >= 500 && route != READY_ROUTE {
            Some(Trouble::ServerError)
        } else if self.slow_threshold.is_some_and(|t| elapsed >= t) {
            Some(Trouble::Slow)
        } else {
            None
        }
    }

    /// Logs the request's line, if it gets one. `trace_id` is asked for only then: it
    /// costs a lookup that most requests need not pay.
    pub fn record(&self, req: &Finished<'_>, trace_id: impl FnOnce() -> Option<String>) {
        let trouble = self.trouble(req.route, req.status, req.elapsed);
        let suppressed = match (trouble, self.access_log) {
            (None, false) => return,
            (_, true) => 0,
            (Some(_), false) => match self.limiter.admit(Instant::now()) {
                Some(suppressed) => suppressed,
                None => return,
            },
        };
        let trace_id = trace_id();
        let trace_id = trace_id.as_deref();
        let suppressed = Some(suppressed).filter(|n| *n > 0);
        let latency_ms = req.elapsed.as_secs_f64() * 1000.0;
        let (method, path, route, status) = (req.method.as_str(), req.path, req.route, req.status);
        match trouble {
            None => tracing::info!(
                target: ACCESS_TARGET,
                method, path, route, status, latency_ms, trace_id,
                "request"
            ),
            Some(Trouble::Slow) => tracing::warn!(
                target: ACCESS_TARGET,
                method, path, route, status, latency_ms, trace_id, suppressed,
                "slow request"
            ),
            Some(Trouble::ServerError) => tracing::warn!(
                target: ACCESS_TARGET,
                method, path, route, status, latency_ms, trace_id, suppressed,
                "server error"
            ),
        }
    }
}

/// Lets at most `per_window` events through in each window (a fixed window that
/// starts at the first event after the previous one ended), and counts the rest.
struct RateLimiter {
    per_window: u32,
    window: Duration,
    state: Mutex<Window>,
}

struct Window {
    started: Option<Instant>,
    admitted: u32,
    /// Events refused since the last one admitted.
    suppressed: u64,
}

impl RateLimiter {
    fn new(per_window: u32, window: Duration) -> Self {
        Self {
            per_window,
            window,
            state: Mutex::new(Window {
                started: None,
                admitted: 0,
                suppressed: 0,
            }),
        }
    }

    /// `Some(n)` when the event at `now` may be logged, `n` being how many were refused
    /// before it; `None` when it is refused (and counted).
    fn admit(&self, now: Instant) -> Option<u64> {
        let mut w = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if w.started
            .is_none_or(|s| now.duration_since(s) >= self.window)
        {
            w.started = Some(now);
            w.admitted = 0;
        }
        if w.admitted < self.per_window {
            w.admitted += 1;
            Some(std::mem::take(&mut w.suppressed))
        } else {
            w.suppressed += 1;
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_limiter_admits_a_burst_then_counts_what_it_refused() {
        let limiter = RateLimiter::new(3, Duration::from_secs(1));
        let t0 = Instant::now();
        let at = |ms| t0 + Duration::from_millis(ms);
        assert_eq!(limiter.admit(at(0)), Some(0));
        assert_eq!(limiter.admit(at(10)), Some(0));
        assert_eq!(limiter.admit(at(20)), Some(0));
        assert_eq!(limiter.admit(at(30)), None);
        assert_eq!(limiter.admit(at(999)), None);
        // A new window: the first line says two were left out.
        assert_eq!(limiter.admit(at(1000)), Some(2));
        assert_eq!(limiter.admit(at(1001)), Some(0));
    }

    fn log(access_log: bool, threshold_ms: u64) -> RequestLog {
        RequestLog::new(&LoggingSettings {
            level: "info".into(),
            format: crate::config::LogFormat::Json,
            file: None,
            access_log,
            slow_request_threshold: Duration::from_millis(threshold_ms),
            buffer_lines: 1,
        })
    }

    #[test]
    fn slow_requests_and_server_errors_are_trouble() {
        let l = log(false, 200);
        let ms = Duration::from_millis;
        assert_eq!(l.trouble("get_key", 200, ms(199)), None);
        assert_eq!(l.trouble("get_key", 404, ms(199)), None);
        assert_eq!(l.trouble("put_key", 201, ms(200)), Some(Trouble::Slow));
        assert_eq!(l.trouble("put_key", 503, ms(1)), Some(Trouble::ServerError));
        assert_eq!(
            l.trouble("get_key", 504, ms(900)),
            Some(Trouble::ServerError)
        );
        // Not ready is the probe's answer, not a failure; a slow probe is still slow.
        assert_eq!(l.trouble("ready", 503, ms(1)), None);
        assert_eq!(l.trouble("ready", 503, ms(300)), Some(Trouble::Slow));
        // A threshold of 0 turns the slow-request lines off, not the error lines.
        let off = log(false, 0);
        assert_eq!(off.trouble("get_key", 200, ms(60_000)), None);
        assert_eq!(
            off.trouble("get_key", 500, ms(1)),
            Some(Trouble::ServerError)
        );
    }
}
