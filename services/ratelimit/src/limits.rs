//! Limit definitions: algorithms, windows, failure modes, and the Flask-Limiter limit notation.

use std::fmt;
use std::time::Duration;

/// Counting algorithm of a limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Algorithm {
    /// Window anchored at the first hit (Flask-Limiter's default strategy).
    FixedWindow,
    /// Sliding window counter over two epoch-aligned windows.
    SlidingWindow,
    /// Generic cell rate algorithm: a token bucket holding `limit` tokens, refilled over `window`.
    Gcra,
}

impl Algorithm {
    /// Code used in Redis keys and script arguments. Changing it orphans live counters.
    pub(crate) fn code(self) -> u8 {
        match self {
            Self::FixedWindow => 1,
            Self::SlidingWindow => 2,
            Self::Gcra => 3,
        }
    }
}

/// How a limit takes part in its request's decision.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Mode {
    /// Refuses the request when it refuses.
    #[default]
    Enforced,
    /// Counted and reported, never refuses (`shadow_mode`: try a limit on live traffic before enforcing it).
    Shadow,
    /// A soft quota (`quota_mode`, as in envoyproxy/ratelimit): the request is refused only when every
    /// quota-mode limit applied to it refuses. With several quotas (one per backend, say) the caller learns
    /// which are spent and may use another; with one, it is enforced.
    Quota,
}

impl Mode {
    /// The mode of a limit from its `shadow_mode` and `quota_mode` flags: shadow wins, since a limit being
    /// tried out must not refuse anything, quota or not.
    pub fn from_flags(shadow: bool, quota: bool) -> Self {
        if shadow {
            Self::Shadow
        } else if quota {
            Self::Quota
        } else {
            Self::Enforced
        }
    }

    /// Code passed to the decision script.
    pub(crate) fn code(self) -> u8 {
        match self {
            Self::Enforced => 0,
            Self::Shadow => 1,
            Self::Quota => 2,
        }
    }

    /// The name used in metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Enforced => "enforced",
            Self::Shadow => "shadow",
            Self::Quota => "quota",
        }
    }
}

/// What a limit does when the shared store cannot answer within the decision timeout.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FailureMode {
    /// Fail the whole decision with UNAVAILABLE and let the caller's policy decide (Envoy:
    /// `failure_mode_deny`). The default, because silently dropping or enforcing a limit is a policy choice.
    #[default]
    Error,
    /// Allow.
    Open,
    /// Refuse (login and brute-force protection).
    Closed,
    /// Enforce in process memory: per instance, so N instances admit up to N times the limit.
    Local,
}

impl FailureMode {
    /// The name used in rule files, logs and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Error => "error",
            Self::Open => "open",
            Self::Closed => "closed",
            Self::Local => "local",
        }
    }
}

impl fmt::Display for FailureMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One limit: `limit` cost units per `window`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LimitDef {
    /// Name reported in statuses and matched by `replaces`.
    pub name: String,
    /// Units allowed per window (0 refuses everything).
    pub limit: u64,
    /// Window length in milliseconds (at least 1).
    pub window_ms: u64,
    /// Counting algorithm.
    pub algorithm: Algorithm,
    /// Enforced, shadow or quota.
    pub mode: Mode,
    /// Behaviour while Redis is unreachable.
    pub failure_mode: FailureMode,
}

impl LimitDef {
    /// An enforced fixed-window limit with the default name, failing with an error.
    pub fn new(limit: u64, window: Duration, algorithm: Algorithm) -> Self {
        let window_ms = u64::try_from(window.as_millis()).unwrap_or(u64::MAX).max(1);
        Self {
            name: default_name(limit, window_ms),
            limit,
            window_ms,
            algorithm,
            mode: Mode::Enforced,
            failure_mode: FailureMode::Error,
        }
    }

    /// The window as a duration.
    pub fn window(&self) -> Duration {
        Duration::from_millis(self.window_ms)
    }
}

/// `"50 per 1h"`-style default name, stable so statuses and logs stay readable.
pub(crate) fn default_name(limit: u64, window_ms: u64) -> String {
    format!("{limit} per {}", format_window(window_ms))
}

/// The units windows and waits are written in: milliseconds each, short suffix, Flask-Limiter's word.
const UNITS: [(u64, &str, &str); 5] = [
    (86_400_000, "d", "day"),
    (3_600_000, "h", "hour"),
    (60_000, "m", "minute"),
    (1_000, "s", "second"),
    (1, "ms", "millisecond"),
];

/// The largest unit that divides `ms` exactly.
fn exact_unit(ms: u64) -> (u64, &'static str, &'static str) {
    UNITS
        .into_iter()
        .find(|(size, _, _)| ms >= *size && ms.is_multiple_of(*size))
        .unwrap_or(UNITS[4])
}

/// Shortest exact rendering of a window: `1d`, `30s`, `1500ms`.
pub fn format_window(ms: u64) -> String {
    let (size, suffix, _) = exact_unit(ms);
    format!("{}{suffix}", ms / size)
}

/// A limit as Flask-Limiter's `str(limit)` renders it: `50 per 1 hour`, `5 per 30 second`.
pub fn flask_text(limit: u64, window_ms: u64) -> String {
    let (size, _, word) = exact_unit(window_ms);
    format!("{limit} per {} {word}", window_ms / size)
}

/// A wait as people read it: `850ms`, `42s`, `59m59s`, `1d`; past one second it is rounded up to the second,
/// so a reset "in 86399991 ms" reads `1d`.
pub fn format_wait(ms: u64) -> String {
    if ms < 1000 {
        return format!("{ms}ms");
    }
    let mut secs = ms.div_ceil(1000);
    let mut out = String::new();
    for (size, suffix, _) in &UNITS[..4] {
        let size = size / 1000;
        if secs >= size {
            out.push_str(&format!("{}{suffix}", secs / size));
            secs %= size;
        }
    }
    out
}

/// Largest window accepted anywhere (10 years): keeps all arithmetic in the scripts exact.
pub const MAX_WINDOW_MS: u64 = 10 * 366 * 86_400_000;
/// Largest limit accepted anywhere: keeps `limit × emission interval` exact in Lua doubles.
pub const MAX_LIMIT: u64 = 1_000_000_000;

/// Error in Flask-Limiter notation.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("invalid limit {item:?}: {reason}")]
pub struct ParseLimitError {
    item: String,
    reason: &'static str,
}

/// Window lengths of Flask-Limiter / `limits` granularities. `limits` defines a month as 30 days and a year as
/// 12 such months (360 days); these values keep migrated limits identical.
fn flask_granularity(word: &str) -> Option<u64> {
    let word = word.strip_suffix('s').unwrap_or(word);
    Some(match word {
        "second" => 1_000,
        "minute" => 60_000,
        "hour" => 3_600_000,
        "day" => 86_400_000,
        "month" => 30 * 86_400_000,
        "year" => 360 * 86_400_000,
        _ => return None,
    })
}

/// Parses Flask-Limiter notation: `"200 per day; 50 per hour"`, `"10/minute"`, `"5 per 30 seconds"`.
/// Items are separated by `;`, `,` or `|`, as in `limits.parse_many`.
pub fn parse_flask_limits(
    text: &str,
    algorithm: Algorithm,
) -> Result<Vec<LimitDef>, ParseLimitError> {
    let mut out = Vec::new();
    for item in text.split([';', ',', '|']) {
        let item = item.trim();
        if item.is_empty() {
            continue;
        }
        out.push(parse_one(item, algorithm)?);
    }
    if out.is_empty() {
        return Err(ParseLimitError {
            item: text.to_owned(),
            reason: "no limit found",
        });
    }
    Ok(out)
}

fn parse_one(item: &str, algorithm: Algorithm) -> Result<LimitDef, ParseLimitError> {
    let err = |reason| ParseLimitError {
        item: item.to_owned(),
        reason,
    };
    let lower = item.to_ascii_lowercase();
    let (amount, rest) = if let Some((a, r)) = lower.split_once('/') {
        (a.trim(), r.trim())
    } else if let Some((a, r)) = lower.split_once(" per ") {
        (a.trim(), r.trim())
    } else {
        return Err(err("expected \"N per unit\" or \"N/unit\""));
    };
    let limit: u64 = amount.parse().map_err(|_| err("amount is not a number"))?;
    let mut words = rest.split_whitespace();
    let first = words.next().ok_or_else(|| err("missing unit"))?;
    let (multiple, unit) = match first.parse::<u64>() {
        Ok(n) => (n, words.next().ok_or_else(|| err("missing unit"))?),
        Err(_) => (1, first),
    };
    if words.next().is_some() {
        return Err(err("unexpected text after the unit"));
    }
    let size = flask_granularity(unit).ok_or_else(|| err("unknown unit"))?;
    if multiple == 0 {
        return Err(err("window multiple must be at least 1"));
    }
    if limit > MAX_LIMIT {
        return Err(err("amount is too large"));
    }
    let window_ms = size
        .checked_mul(multiple)
        .filter(|w| *w <= MAX_WINDOW_MS)
        .ok_or_else(|| err("window is too long"))?;
    Ok(LimitDef {
        name: item.to_owned(),
        limit,
        window_ms,
        algorithm,
        mode: Mode::Enforced,
        failure_mode: FailureMode::Error,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_flask_limiter_notation() {
        let limits =
            parse_flask_limits("200 per day; 50 per hour", Algorithm::FixedWindow).unwrap();
        assert_eq!(
            limits
                .iter()
                .map(|l| (l.limit, l.window_ms))
                .collect::<Vec<_>>(),
            vec![(200, 86_400_000), (50, 3_600_000)]
        );
        let l = &parse_flask_limits("10/minute", Algorithm::Gcra).unwrap()[0];
        assert_eq!(
            (l.limit, l.window_ms, l.algorithm),
            (10, 60_000, Algorithm::Gcra)
        );
        let l = &parse_flask_limits("5 per 30 seconds", Algorithm::FixedWindow).unwrap()[0];
        assert_eq!((l.limit, l.window_ms), (5, 30_000));
        let l = &parse_flask_limits("100/5 minutes, 1 per year", Algorithm::FixedWindow).unwrap();
        assert_eq!(
            (l[0].window_ms, l[1].window_ms),
            (300_000, 360 * 86_400_000)
        );
    }

    #[test]
    fn rejects_malformed_notation() {
        for bad in [
            "",
            "ten per hour",
            "10 per fortnight",
            "10",
            "10 per 0 hours",
            "10 per hour now",
        ] {
            assert!(
                parse_flask_limits(bad, Algorithm::FixedWindow).is_err(),
                "{bad}"
            );
        }
    }

    #[test]
    fn waits_and_flask_texts() {
        assert_eq!(format_wait(850), "850ms");
        assert_eq!(format_wait(42_000), "42s");
        assert_eq!(format_wait(3_599_000), "59m59s");
        assert_eq!(format_wait(3_599_001), "1h");
        assert_eq!(format_wait(86_399_991), "1d");
        assert_eq!(format_wait(90_061_000), "1d1h1m1s");
        assert_eq!(flask_text(50, 3_600_000), "50 per 1 hour");
        assert_eq!(flask_text(200, 86_400_000), "200 per 1 day");
        assert_eq!(flask_text(5, 30_000), "5 per 30 second");
        assert_eq!(flask_text(5, 1_500), "5 per 1500 millisecond");
    }

    #[test]
    fn windows_render_compactly() {
        assert_eq!(format_window(86_400_000), "1d");
        assert_eq!(format_window(30_000), "30s");
        assert_eq!(format_window(1_500), "1500ms");
        assert_eq!(format_window(300_000), "5m");
    }
}
