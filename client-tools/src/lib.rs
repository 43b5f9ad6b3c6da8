//! Client-side helpers shared by Lotse's components (controllers, scheduler, kubelet), as
//! client-go's `tools/` packages: [`http2`] (a kube client sharing one HTTP/2 connection, as
//! client-go's transport), [`informer`] (store readiness many tasks can await),
//! [`leaderelection`] (one active replica behind a
//! `coordination.k8s.io/v1` Lease), [`record`] (the event recorder) and [`parse_duration`]
//! (Go durations, as the components' `--*-duration`/`--*-period` flags take them).
//!
//! Only API clients live here: nothing in this crate touches storage or another component.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod http2;
pub mod informer;
pub mod leaderelection;
pub mod record;

use std::time::Duration;

/// Errors of the client tools.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A request to the apiserver failed.
    #[error("apiserver request failed: {0}")]
    Kube(#[from] kube::Error),
    /// Leader election timings client-go would refuse (its `NewLeaderElector` checks).
    #[error("invalid leader election timings: {0}")]
    InvalidTimings(&'static str),
    /// The leader could not renew its Lease within the renew deadline, or another candidate
    /// holds it now: the caller must stop acting.
    #[error("leader election lost")]
    LeadershipLost,
}

/// Parses a duration as Kubernetes' flags write them (Go's `time.ParseDuration`: `1m30s`,
/// `15s`, `500ms`, `8760h`), plus a bare number of seconds. The one parser every component's
/// flags use.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    if let Ok(secs) = s.parse::<f64>() {
        return Duration::try_from_secs_f64(secs)
            .map_err(|e| format!("invalid duration {s:?}: {e}"));
    }
    let d: jiff::SignedDuration = s
        .parse()
        .map_err(|e| format!("invalid duration {s:?}: {e}"))?;
    Duration::try_from(d).map_err(|e| format!("invalid duration {s:?}: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_like_go() {
        assert_eq!(parse_duration("15s"), Ok(Duration::from_secs(15)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("1m30s"), Ok(Duration::from_secs(90)));
        assert_eq!(
            parse_duration("8760h"),
            Ok(Duration::from_secs(8760 * 3600))
        );
        assert_eq!(parse_duration("2"), Ok(Duration::from_secs(2)));
        assert!(parse_duration("5x").is_err());
        assert!(parse_duration("s").is_err());
    }
}
