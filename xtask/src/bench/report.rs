//! Result rows, the markdown table and the JSON file.

use std::fmt::Write;
use std::path::Path;

use anyhow::{Context, Result};
use serde_json::{json, Value};

use super::machine::Machine;

/// How the mesh column compares with the baseline column.
#[derive(Clone, Copy, Debug)]
pub enum Compare {
    /// mesh / baseline.
    Ratio,
    /// mesh - baseline, in the row's unit.
    Delta,
    /// Only the mesh column has a value.
    None,
}

/// Whether a row meets its target.
#[derive(Clone, Copy, Debug)]
pub enum Target {
    /// No target: extra information.
    Info,
    /// ratio >= x
    RatioAtLeast(f64),
    /// delta <= x
    DeltaAtMost(f64),
    /// delta < 0 (mesh column lower than baseline column)
    Lower,
    /// mesh value <= x
    AtMost(f64),
}

pub struct Row {
    pub what: String,
    pub unit: &'static str,
    pub baseline: Option<f64>,
    pub mesh: Option<f64>,
    pub compare: Compare,
    pub target: Target,
    /// Appended to the target cell (e.g. a footnote mark).
    pub target_note: &'static str,
    /// Set when the row could not be measured: shown instead of the numbers.
    pub failure: Option<String>,
}

impl Row {
    pub fn new(what: impl Into<String>, unit: &'static str) -> Row {
        Row {
            what: what.into(),
            unit,
            baseline: None,
            mesh: None,
            compare: Compare::None,
            target: Target::Info,
            target_note: "",
            failure: None,
        }
    }

    pub fn values(mut self, baseline: f64, mesh: f64, compare: Compare) -> Row {
        self.baseline = Some(baseline);
        self.mesh = Some(mesh);
        self.compare = compare;
        self
    }

    pub fn mesh_only(mut self, mesh: f64) -> Row {
        self.mesh = Some(mesh);
        self.compare = Compare::None;
        self
    }

    pub fn target(mut self, target: Target, note: &'static str) -> Row {
        self.target = target;
        self.target_note = note;
        self
    }

    pub fn failed(what: impl Into<String>, why: impl Into<String>) -> Row {
        let mut row = Row::new(what, "");
        row.failure = Some(why.into());
        row
    }

    fn comparison(&self) -> Option<f64> {
        let mesh = self.mesh?;
        match self.compare {
            Compare::Ratio => Some(mesh / self.baseline?),
            Compare::Delta => Some(mesh - self.baseline?),
            Compare::None => None,
        }
    }

    fn met(&self) -> Option<bool> {
        let c = self.comparison();
        match self.target {
            Target::Info => None,
            Target::RatioAtLeast(x) => c.map(|r| r >= x),
            Target::DeltaAtMost(x) => c.map(|d| d <= x),
            Target::Lower => c.map(|d| d < 0.0),
            Target::AtMost(x) => self.mesh.map(|m| m <= x),
        }
    }

    fn cells(&self) -> [String; 6] {
        if let Some(why) = &self.failure {
            let na = "—".to_string();
            return [
                self.what.clone(),
                na.clone(),
                na.clone(),
                format!("not measured: {why}"),
                self.target_text(),
                "not measured".into(),
            ];
        }
        let value = |v: Option<f64>| match v {
            Some(v) => format!("{} {}", fmt(v, self.unit), self.unit),
            None => "—".into(),
        };
        let compare = match (self.compare, self.comparison()) {
            (Compare::Ratio, Some(r)) => format!("{r:.2}×"),
            (Compare::Delta, Some(d)) => format!("{d:+.*} {}", decimals(self.unit), self.unit),
            _ => "—".into(),
        };
        let met = match self.met() {
            Some(true) => "yes",
            Some(false) => "**no**",
            None => "info",
        };
        [
            self.what.clone(),
            value(self.baseline),
            value(self.mesh),
            compare,
            self.target_text(),
            format!("{met}{}", self.target_note),
        ]
    }

    fn target_text(&self) -> String {
        let t = match self.target {
            Target::Info => "—".to_string(),
            Target::RatioAtLeast(x) => format!("≥ {x} of baseline"),
            Target::DeltaAtMost(x) => format!("≤ +{} {}", fmt(x, self.unit), self.unit),
            Target::Lower => "lower".into(),
            Target::AtMost(x) => format!("≤ {} {}", fmt(x, self.unit), self.unit),
        };
        format!("{t}{}", self.target_note)
    }

    pub fn to_json(&self) -> Value {
        json!({
            "what": self.what,
            "unit": self.unit,
            "baseline": self.baseline,
            "mesh": self.mesh,
            "comparison": self.comparison().map(|c| (c * 1000.0).round() / 1000.0),
            "comparison_kind": format!("{:?}", self.compare).to_lowercase(),
            "target": self.target_text(),
            "met": self.met(),
            "not_measured": self.failure,
        })
    }
}

fn decimals(unit: &str) -> usize {
    match unit {
        "µs" => 1,
        "Gbit/s" => 2,
        "conn/s" => 0,
        "MB" => 1,
        "KB" => 1,
        "s/GB" => 3,
        "req/s" => 0,
        "%" => 1,
        "requests" => 0,
        _ => 2,
    }
}

fn fmt(v: f64, unit: &str) -> String {
    format!("{v:.*}", decimals(unit))
}

/// A section's table followed by its numbered notes.
pub fn table_and_notes(rows: &[Row], notes: &[String]) -> String {
    let mut out = table(rows);
    for note in notes {
        let _ = write!(out, "\n{note}\n");
    }
    out
}

/// Rows for results.json: the measured ones, or one row saying `what` failed and why.
pub fn json_rows_or_failure(rows: Result<&[Row], &anyhow::Error>, what: String) -> Vec<Value> {
    match rows {
        Ok(rows) => rows.iter().map(Row::to_json).collect(),
        Err(e) => vec![Row::failed(what, format!("{e:#}")).to_json()],
    }
}

/// The markdown table.
pub fn table(rows: &[Row]) -> String {
    let mut out = String::new();
    let header = [
        "what",
        "direct (baseline)",
        "mesh",
        "ratio or delta",
        "target",
        "met?",
    ];
    let _ = writeln!(out, "| {} |", header.join(" | "));
    let _ = writeln!(out, "|{}", "---|".repeat(header.len()));
    for row in rows {
        let _ = writeln!(out, "| {} |", row.cells().join(" | "));
    }
    out
}

pub struct Report<'a> {
    pub machine: &'a Machine,
    pub rows: &'a [Row],
    /// Paragraphs after the table: how each number was measured, footnotes, warnings.
    pub notes: &'a [String],
    /// Every sample, for results.json.
    pub raw: Value,
    pub quick: bool,
    /// Rows of sections rendered in `notes` (the cross-node table), for results.json.
    pub more_rows: Vec<Value>,
}

impl Report<'_> {
    pub fn markdown(&self) -> String {
        let m = self.machine;
        let mut out = String::new();
        let _ = writeln!(out, "# mesh benchmark results\n");
        if self.quick {
            let _ = writeln!(
                out,
                "**`--quick` smoke run: short durations, one repetition. Do not compare these numbers.**\n"
            );
        }
        let _ = writeln!(out, "- date: {}", m.date);
        let _ = writeln!(out, "- CPU: {} ({} cores)", m.cpu_model, m.cores);
        let _ = writeln!(
            out,
            "- memory: {:.1} GiB",
            m.mem_total_kib as f64 / 1048576.0
        );
        let _ = writeln!(out, "- kernel: {}", m.kernel);
        let _ = writeln!(out, "- git commit: {}", m.git_commit);
        let _ = writeln!(out, "- took: {:.0} s\n", m.took_seconds);
        if !self.rows.is_empty() {
            out.push_str(&table(self.rows));
        }
        for note in self.notes {
            let _ = writeln!(out, "\n{note}");
        }
        out
    }

    pub fn json(&self) -> Value {
        json!({
            "machine": self.machine.to_json(),
            "quick": self.quick,
            "rows": self.rows.iter().map(Row::to_json).chain(self.more_rows.iter().cloned()).collect::<Vec<_>>(),
            "notes": self.notes,
            "raw": self.raw,
        })
    }

    pub fn write(&self, dir: &Path) -> Result<()> {
        write_results(dir, &self.markdown(), &self.json())
    }
}

/// results.md and results.json of an earlier run in `dir`, when both are there: a partial run
/// (`bench same-node`, `bench cross-node`) replaces its own part of them and keeps the rest.
pub fn earlier_results(dir: &Path) -> Result<Option<(String, Value)>> {
    let (md_path, json_path) = (dir.join("results.md"), dir.join("results.json"));
    match (
        std::fs::read_to_string(&md_path),
        std::fs::read_to_string(&json_path),
    ) {
        (Ok(md), Ok(js)) => {
            let js = serde_json::from_str(&js)
                .with_context(|| format!("{} is not JSON", json_path.display()))?;
            Ok(Some((md, js)))
        }
        _ => Ok(None),
    }
}

/// Writes results.md and results.json into `dir`.
pub fn write_results(dir: &Path, md: &str, js: &Value) -> Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let md_path = dir.join("results.md");
    std::fs::write(&md_path, md).with_context(|| format!("writing {}", md_path.display()))?;
    let json_path = dir.join("results.json");
    std::fs::write(&json_path, serde_json::to_string_pretty(js)? + "\n")
        .with_context(|| format!("writing {}", json_path.display()))?;
    Ok(())
}
