//! `fairrep ferm`.
use anyhow::Context;
use fairrep_audit::ferm::{FermConfig, render_table, run_ferm};

use super::{report_path, write_report};
use crate::cli::FermArgs;

pub(crate) fn run(args: FermArgs) -> anyhow::Result<()> {
    let mut overrides = args.set.clone();
    if let Some(out) = &args.out {
        overrides.push(format!(
            "run.out_dir={}",
            toml::Value::String(out.to_string_lossy().into_owned())
        ));
    }
    if let Some(seed) = args.seed {
        overrides.push(format!("run.seeds=[{seed}]"));
    }
    let config = FermConfig::load(&args.config, &overrides)
        .with_context(|| format!("cannot use config `{}`", args.config.display()))?;
    let outcome =
        run_ferm(&config, &args.config, args.data_dir.as_deref()).context("FERM failed")?;
    print!("{}", render_table(&outcome));
    for run in &outcome.runs {
        eprintln!("run directory: {}", run.display());
    }
    if outcome.runs.len() > 1 {
        let path = report_path(&None, &outcome.runs, "ferm-summary.json")?;
        write_report(&path, &outcome.summary)?;
    }
    Ok(())
}
