//! Reusing finished fairrep runs: open a run ([`trained`]), fit fresh heads for novel tasks
//! on its frozen representation ([`transfer`]), audit it on its own tasks and for leakage of
//! the group ([`eval`]), export its representation ([`export`]); the statistics behind them
//! ([`stats`]) and the head fitting ([`probe`]); fair regression by post-processing a run's
//! head or any model's predictions ([`postprocess`]). FERM against the unconstrained SVM
//! ([`ferm`]) writes a linear fair representation that transfer and export open beside the
//! trained encoders ([`representation`]).
use std::path::{Path, PathBuf};

pub mod eval;
pub mod export;
pub mod ferm;
pub mod postprocess;
pub mod probe;
pub mod representation;
pub mod stats;
pub mod trained;
pub mod transfer;

/// Runs in different trees and no `--out`: nowhere obvious to write their report.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the runs share no folder to write {name} into; pass --out FILE")]
pub struct NoCommonFolder {
    /// The report's file name.
    pub name: String,
}

/// Where a report goes: `--out`, else `RUN_DIR/NAME` for one run, else `NAME` in the runs'
/// deepest common folder (an error when they have none, e.g. relative and absolute paths).
pub fn report_path(
    out: &Option<PathBuf>,
    runs: &[PathBuf],
    name: &str,
) -> Result<PathBuf, NoCommonFolder> {
    if let Some(out) = out {
        return Ok(out.clone());
    }
    if let [one] = runs {
        return Ok(one.join(name));
    }
    let none = || NoCommonFolder {
        name: name.to_string(),
    };
    if runs.iter().any(|r| r.is_absolute()) != runs.iter().all(|r| r.is_absolute()) {
        return Err(none());
    }
    let parents: Vec<&Path> = runs
        .iter()
        .map(|r| r.parent().unwrap_or(Path::new("")))
        .collect();
    let mut common: PathBuf = parents[0].to_path_buf();
    while !parents.iter().all(|p| p.starts_with(&common)) {
        if !common.pop() {
            return Err(none());
        }
    }
    if common.parent().is_none() && common.is_absolute() {
        // Only the filesystem root is shared.
        return Err(none());
    }
    Ok(common.join(name))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reports_go_next_to_the_runs() {
        let runs = |v: &[&str]| v.iter().map(PathBuf::from).collect::<Vec<_>>();
        let p = report_path(&None, &runs(&["runs/a-s0"]), "eval.json").unwrap();
        assert_eq!(p, PathBuf::from("runs/a-s0/eval.json"));
        let p = report_path(&None, &runs(&["runs/x/a-s0", "runs/x/a-s1"]), "eval.json").unwrap();
        assert_eq!(p, PathBuf::from("runs/x/eval.json"));
        let p = report_path(&None, &runs(&["runs/x/a", "runs/y/b"]), "eval.json").unwrap();
        assert_eq!(p, PathBuf::from("runs/eval.json"));
        assert!(report_path(&None, &runs(&["a", "/b/c"]), "eval.json").is_err());
        assert!(report_path(&None, &runs(&["/a/b", "/c/d"]), "eval.json").is_err());
        let p = report_path(&None, &runs(&["a", "b"]), "eval.json").unwrap();
        assert_eq!(p, PathBuf::from("eval.json"));
        let out = Some(PathBuf::from("o.json"));
        assert_eq!(
            report_path(&out, &runs(&["a", "b"]), "e").unwrap(),
            PathBuf::from("o.json")
        );
    }
}
