//! The bench binaries' headline figures in machine-readable form, for `.ci/bench`.
//!
//! A bench prints its figures for people as before and, for each headline figure, calls
//! [`figure`]`(..).vs(..).goal(..).record()`. When `$LOTSE_BENCH_OUT` names a file,
//! [`Figure::record`] appends the figure to it as one JSON object on one line (created if
//! missing); otherwise it does nothing. `.ci/bench` collects the lines of every bench into
//! `target/bench/results.json`.
//!
//! A line looks like
//! `{"bench":"apiserver-bench","name":"etcd: create c=32 throughput","value":2430.0,"unit":"1/s",
//! "baseline":"raw etcd put c=32 throughput","baseline_value":7257.0,"ratio":0.33,"goal":">= 0.7x baseline"}`;
//! `baseline`, `baseline_value`, `ratio` and `goal` are `null` when the figure has none.
//!
//! `ratio` is always `value / baseline_value`, in the figure's own unit, whatever the direction:
//! for a throughput beside its ceiling (raw etcd puts, a fixed-table DNS responder) 1.0 is the
//! ceiling and higher is better; for a latency beside its floor (a LIST round trip, a pod
//! scheduled without a claim) 1.0 is the floor and lower is better. The goal text says which.

use std::io::Write;
use std::time::Duration;

use anyhow::Context;
use serde::Serialize;

/// The environment variable naming the file figures are appended to.
pub const OUT_ENV: &str = "LOTSE_BENCH_OUT";

/// One headline figure of a bench, with the baseline measured beside it in the same run.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Figure {
    /// The bench binary that measured it (e.g. `apiserver-bench`).
    pub bench: String,
    /// What was measured, with the parameters that matter (e.g. `sqlite: LIST 10000 pods`).
    pub name: String,
    /// The figure, in `unit`.
    pub value: f64,
    /// `ms`, `s`, `MiB`, `1/s`, `x`, … (the baseline's unit too).
    pub unit: String,
    /// What the figure is compared with, measured in the same run.
    pub baseline: Option<String>,
    /// The baseline's value, in `unit`.
    pub baseline_value: Option<f64>,
    /// `value / baseline_value` (None without a baseline or when it is 0).
    pub ratio: Option<f64>,
    /// The goal the issue sets for it, as text (e.g. `p99 <= 50 ms`).
    pub goal: Option<String>,
}

/// A figure of the running bench (named after its binary), without baseline or goal yet.
pub fn figure(name: impl Into<String>, value: f64, unit: &str) -> Figure {
    Figure {
        bench: bench_name(),
        name: name.into(),
        value,
        unit: unit.into(),
        baseline: None,
        baseline_value: None,
        ratio: None,
        goal: None,
    }
}

/// A duration in milliseconds (the unit of most latency figures).
pub fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// The running binary's file name (`apiserver-bench`), or `bench` if it has none.
fn bench_name() -> String {
    std::env::current_exe()
        .ok()
        .and_then(|p| Some(p.file_stem()?.to_string_lossy().into_owned()))
        .unwrap_or_else(|| "bench".into())
}

impl Figure {
    /// Sets the baseline measured beside the figure (same unit) and the ratio to it.
    pub fn vs(mut self, baseline: impl Into<String>, value: f64) -> Self {
        self.baseline = Some(baseline.into());
        self.baseline_value = Some(value);
        self.ratio = (value != 0.0 && value.is_finite()).then(|| self.value / value);
        self
    }

    /// Sets the goal the issue sets for the figure.
    pub fn goal(mut self, goal: impl Into<String>) -> Self {
        self.goal = Some(goal.into());
        self
    }

    /// Sets the goal if it `applies` to this figure (e.g. to one of two stores).
    pub fn goal_if(self, applies: bool, goal: impl Into<String>) -> Self {
        if applies { self.goal(goal) } else { self }
    }

    /// The figure as one line of JSON, newline included.
    pub fn json_line(&self) -> anyhow::Result<String> {
        Ok(serde_json::to_string(self)? + "\n")
    }

    /// Appends the figure to the file `$LOTSE_BENCH_OUT` names, if it names one.
    pub fn record(self) -> anyhow::Result<()> {
        match std::env::var_os(OUT_ENV) {
            Some(path) if !path.is_empty() => self.append_to(std::path::Path::new(&path)),
            _ => Ok(()),
        }
    }

    /// Appends the figure's line to `path` in one write (benches that re-execute themselves
    /// may append beside their parent).
    fn append_to(&self, path: &std::path::Path) -> anyhow::Result<()> {
        let line = self.json_line()?;
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .and_then(|mut f| f.write_all(line.as_bytes()))
            .with_context(|| format!("appending a figure to {} (${OUT_ENV})", path.display()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{Value, json};

    fn parsed(f: &Figure) -> Value {
        let line = f.json_line().unwrap();
        assert!(line.ends_with('\n'));
        assert_eq!(line.matches('\n').count(), 1, "one line: {line:?}");
        serde_json::from_str(&line).unwrap()
    }

    #[test]
    fn a_figure_with_baseline_and_goal_is_one_json_line_with_its_ratio() {
        let mut f = figure("etcd: create c=32 throughput", 2430.0, "1/s")
            .vs("raw etcd put c=32 throughput", 7290.0)
            .goal(">= 0.7x baseline");
        f.bench = "apiserver-bench".into();
        let v = parsed(&f);
        let ratio = v["ratio"].as_f64().unwrap();
        assert!((ratio - 2430.0 / 7290.0).abs() < 1e-12);
        let mut v = v;
        v["ratio"] = json!(null);
        assert_eq!(
            v,
            json!({
                "bench": "apiserver-bench",
                "name": "etcd: create c=32 throughput",
                "value": 2430.0,
                "unit": "1/s",
                "baseline": "raw etcd put c=32 throughput",
                "baseline_value": 7290.0,
                "ratio": null,
                "goal": ">= 0.7x baseline",
            })
        );
    }

    #[test]
    fn a_figure_alone_has_null_baseline_ratio_and_goal() {
        let v = parsed(&figure("RSS with 10000 pods", 137.5, "MiB"));
        assert_eq!(v["value"], json!(137.5));
        for key in ["baseline", "baseline_value", "ratio", "goal"] {
            assert_eq!(v[key], Value::Null, "{key}");
        }
        // Named after the running binary (here the test harness).
        assert!(!v["bench"].as_str().unwrap().is_empty());
    }

    #[test]
    fn a_zero_baseline_gives_no_ratio_and_nan_is_null() {
        let v = parsed(&figure("x", 1.0, "ms").vs("floor", 0.0));
        assert_eq!(v["ratio"], Value::Null);
        assert_eq!(v["baseline_value"], json!(0.0));
        let v = parsed(&figure("y", f64::NAN, "ms"));
        assert_eq!(v["value"], Value::Null);
    }

    #[test]
    fn figures_are_appended_line_by_line() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("figures.jsonl");
        figure("a", 1.0, "ms").append_to(&path).unwrap();
        figure("b", 2.0, "ms")
            .vs("a", 1.0)
            .append_to(&path)
            .unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        let names: Vec<String> = text
            .lines()
            .map(|l| serde_json::from_str::<Value>(l).unwrap()["name"].to_string())
            .collect();
        assert_eq!(names, ["\"a\"", "\"b\""]);
        assert_eq!(ms(Duration::from_micros(1500)), 1.5);
    }
}
