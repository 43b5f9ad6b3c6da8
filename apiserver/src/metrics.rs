//! Prometheus metrics: request counts and latency histograms by verb, resource and code.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::Mutex;
use std::time::Duration;

const BUCKETS: &[f64] = &[
    0.005, 0.01, 0.025, 0.05, 0.1, 0.2, 0.4, 0.6, 0.8, 1.0, 1.25, 1.5, 2.0, 3.0, 4.0, 5.0, 6.0,
    8.0, 10.0, 15.0, 20.0, 30.0, 45.0, 60.0,
];

/// Labels of a finished request, attached to responses by the dispatcher.
#[derive(Clone, Debug, Default)]
pub struct RequestLabels {
    /// Kubernetes verb (get, list, watch, create, update, patch, delete, ...).
    pub verb: &'static str,
    /// API group.
    pub group: String,
    /// API version.
    pub version: String,
    /// Resource (plural).
    pub resource: String,
    /// Subresource.
    pub subresource: String,
}

#[derive(Default)]
struct Histogram {
    counts: Vec<u64>,
    sum: f64,
    count: u64,
}

#[derive(Default)]
struct Inner {
    requests: BTreeMap<(String, String, String, String, String, u16), u64>,
    latency: BTreeMap<(String, String, String, String), Histogram>,
    watchers: BTreeMap<String, i64>,
}

/// The apiserver's metrics registry.
#[derive(Default)]
pub struct Metrics {
    inner: Mutex<Inner>,
}

impl Metrics {
    /// Records one request.
    pub fn observe(&self, l: &RequestLabels, code: u16, elapsed: Duration) {
        let Ok(mut inner) = self.inner.lock() else {
            return;
        };
        *inner
            .requests
            .entry((
                l.verb.to_string(),
                l.group.clone(),
                l.version.clone(),
                l.resource.clone(),
                l.subresource.clone(),
                code,
            ))
            .or_default() += 1;
        // Watches are long-running; Kubernetes leaves them out of the latency histogram.
        if l.verb == "watch" {
            return;
        }
        let h = inner
            .latency
            .entry((
                l.verb.to_string(),
                l.group.clone(),
                l.resource.clone(),
                l.subresource.clone(),
            ))
            .or_default();
        if h.counts.is_empty() {
            h.counts = vec![0; BUCKETS.len()];
        }
        let secs = elapsed.as_secs_f64();
        for (i, b) in BUCKETS.iter().enumerate() {
            if secs <= *b {
                h.counts[i] += 1;
            }
        }
        h.sum += secs;
        h.count += 1;
    }

    /// Adjusts the number of open watches of a resource.
    pub fn watchers_inc(&self, resource: &str, delta: i64) {
        if let Ok(mut inner) = self.inner.lock() {
            *inner.watchers.entry(resource.to_string()).or_default() += delta;
        }
    }

    /// Prometheus text exposition.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let Ok(inner) = self.inner.lock() else {
            return out;
        };
        out.push_str("# HELP apiserver_request_total Counter of apiserver requests broken out for each verb, group, version, resource, subresource and HTTP response code.\n# TYPE apiserver_request_total counter\n");
        for ((verb, group, version, resource, sub, code), n) in &inner.requests {
            let _ = writeln!(
                out,
                "apiserver_request_total{{code=\"{code}\",group=\"{group}\",resource=\"{resource}\",subresource=\"{sub}\",verb=\"{verb}\",version=\"{version}\"}} {n}"
            );
        }
        out.push_str("# HELP apiserver_request_duration_seconds Response latency distribution in seconds for each verb, group, resource and subresource.\n# TYPE apiserver_request_duration_seconds histogram\n");
        for ((verb, group, resource, sub), h) in &inner.latency {
            let labels = format!(
                "group=\"{group}\",resource=\"{resource}\",subresource=\"{sub}\",verb=\"{verb}\""
            );
            for (i, b) in BUCKETS.iter().enumerate() {
                let _ = writeln!(
                    out,
                    "apiserver_request_duration_seconds_bucket{{{labels},le=\"{b}\"}} {}",
                    h.counts[i]
                );
            }
            let _ = writeln!(
                out,
                "apiserver_request_duration_seconds_bucket{{{labels},le=\"+Inf\"}} {}",
                h.count
            );
            let _ = writeln!(
                out,
                "apiserver_request_duration_seconds_sum{{{labels}}} {}",
                h.sum
            );
            let _ = writeln!(
                out,
                "apiserver_request_duration_seconds_count{{{labels}}} {}",
                h.count
            );
        }
        out.push_str("# HELP apiserver_longrunning_requests Gauge of all active long-running apiserver requests (watches).\n# TYPE apiserver_longrunning_requests gauge\n");
        for (resource, n) in &inner.watchers {
            let _ = writeln!(
                out,
                "apiserver_longrunning_requests{{resource=\"{resource}\",verb=\"WATCH\"}} {n}"
            );
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_counts_and_histograms() {
        let m = Metrics::default();
        let l = RequestLabels {
            verb: "get",
            resource: "pods".into(),
            version: "v1".into(),
            ..Default::default()
        };
        m.observe(&l, 200, Duration::from_millis(3));
        let text = m.render();
        assert!(text.contains("apiserver_request_total{code=\"200\",group=\"\",resource=\"pods\",subresource=\"\",verb=\"get\",version=\"v1\"} 1"));
        assert!(text.contains("apiserver_request_duration_seconds_bucket{group=\"\",resource=\"pods\",subresource=\"\",verb=\"get\",le=\"0.005\"} 1"));
    }
}
