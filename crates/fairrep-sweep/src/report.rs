//! The Markdown report of a sweep: the configurations (validation and test, mean ± 95% CI
//! over seeds), the validation fronts, and each rule's choice with its test numbers beside.
use std::fmt::Write as _;

use crate::front::{Analysis, ConfigPoint, Stat};

fn show(s: Stat) -> String {
    if s.n < 2 {
        format!("{:.4}", s.mean)
    } else {
        format!("{:.4} ± {:.4}", s.mean, s.ci95)
    }
}

fn params(p: &ConfigPoint) -> String {
    if p.params.is_empty() {
        return "(base)".into();
    }
    p.params
        .iter()
        .map(|(k, v)| format!("{k} = {v}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The report; `missing` runs are listed as not finished.
pub fn markdown(a: &Analysis, n_rows: usize, missing: &[String]) -> String {
    let mut md = String::new();
    let _ = writeln!(md, "# Sweep report\n");
    let _ = writeln!(
        md,
        "Task `{}`; {n_rows} finished runs in {} configurations. Means ± 95% t-intervals over \
         seeds. Fronts and choices use the validation split only; the test columns are \
         reported beside and were not used to choose.\n",
        a.task,
        a.points.len()
    );
    if !missing.is_empty() {
        let _ = writeln!(
            md,
            "Not finished ({}): {}\n",
            missing.len(),
            missing.join(", ")
        );
    }
    let _ = writeln!(md, "## Choices (on validation)\n");
    let _ = writeln!(
        md,
        "| rule | configuration | valid accuracy | valid DP gap | test accuracy | test DP gap |"
    );
    let _ = writeln!(md, "|---|---|---|---|---|---|");
    for c in &a.choices {
        match c.chosen {
            Some(i) => {
                let p = &a.points[i];
                let _ = writeln!(
                    md,
                    "| {} | {} | {} | {} | {} | {} |",
                    c.rule,
                    params(p),
                    show(p.valid_accuracy),
                    show(p.valid_dp_gap),
                    show(p.test_accuracy),
                    show(p.test_dp_gap)
                );
            }
            None => {
                let _ = writeln!(md, "| {} | none qualifies | | | | |", c.rule);
            }
        }
    }
    let _ = writeln!(md, "\n## Configurations\n");
    let _ = writeln!(
        md,
        "| configuration | seeds | valid accuracy | valid DP gap | valid KS | front (DP / KS) | test accuracy | test DP gap | test KS |"
    );
    let _ = writeln!(md, "|---|---|---|---|---|---|---|---|---|");
    for (i, p) in a.points.iter().enumerate() {
        let front = match (a.front_dp.contains(&i), a.front_ks.contains(&i)) {
            (true, true) => "DP, KS",
            (true, false) => "DP",
            (false, true) => "KS",
            (false, false) => "",
        };
        let _ = writeln!(
            md,
            "| {} | {} | {} | {} | {} | {front} | {} | {} | {} |",
            params(p),
            p.valid_accuracy.n,
            show(p.valid_accuracy),
            show(p.valid_dp_gap),
            show(p.valid_ks),
            show(p.test_accuracy),
            show(p.test_dp_gap),
            show(p.test_ks)
        );
    }
    md
}
