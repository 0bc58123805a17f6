//! The results table (Markdown, so it can go into BENCHMARKS.md as printed).

use std::fmt::Write as _;

/// One measured figure.
pub struct Row {
    pub scenario: String,
    pub metric: String,
    pub measured: String,
    pub target: String,
    /// `None` for figures that are reported but have no target.
    pub met: Option<bool>,
}

/// Every row so far, in the order measured.
#[derive(Default)]
pub struct Report {
    rows: Vec<Row>,
}

impl Report {
    /// A figure checked against a target.
    pub fn check(
        &mut self,
        scenario: &str,
        metric: &str,
        measured: String,
        target: &str,
        met: bool,
    ) {
        self.push(scenario, metric, measured, target, Some(met));
    }

    /// A figure without a target.
    pub fn info(&mut self, scenario: &str, metric: &str, measured: String) {
        self.push(scenario, metric, measured, "", None);
    }

    /// A scenario that could not be measured.
    pub fn failed(&mut self, scenario: &str, error: &anyhow::Error) {
        let message = format!("{error:#}").replace('\n', " ");
        self.push(scenario, "error", message, "", Some(false));
    }

    fn push(
        &mut self,
        scenario: &str,
        metric: &str,
        measured: String,
        target: &str,
        met: Option<bool>,
    ) {
        eprintln!("  {scenario} | {metric}: {measured}");
        self.rows.push(Row {
            scenario: scenario.to_string(),
            metric: metric.to_string(),
            measured,
            target: target.to_string(),
            met,
        });
    }

    /// The table as Markdown.
    pub fn markdown(&self) -> String {
        let mut out = String::from(
            "| scenario | metric | measured | target | met |\n|---|---|---|---|---|\n",
        );
        for row in &self.rows {
            let met = match row.met {
                Some(true) => "yes",
                Some(false) => "**no**",
                None => "",
            };
            let _ = writeln!(
                out,
                "| {} | {} | {} | {} | {met} |",
                row.scenario, row.metric, row.measured, row.target
            );
        }
        out
    }
}

/// `12,345` style.
pub fn thousands(n: f64) -> String {
    let digits = format!("{:.0}", n.max(0.0));
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// Megabytes with one decimal.
pub fn megabytes(bytes: f64) -> String {
    format!("{:.1} MB", bytes / 1_048_576.0)
}
