//! `fairrep eval`.
use anyhow::Context;
use fairrep_audit::eval::{EvalOptions, evaluate_runs, render_table};
use fairrep_train::device::select_device;

use super::{report_path, write_report};
use crate::cli::EvalArgs;

pub(crate) fn run(args: EvalArgs) -> anyhow::Result<()> {
    if args.max_points < 4 {
        anyhow::bail!("--max-points must be at least 4, found {}", args.max_points);
    }
    if !(args.blur.is_finite() && args.blur > 0.0) {
        anyhow::bail!("--blur must be a positive number, found {}", args.blur);
    }
    let path = report_path(&args.out, &args.from, "eval.json")?;
    let selected = select_device(args.device.into())?;
    tracing::info!("device: {}", selected.description);
    let opts = EvalOptions {
        split: args.split.into(),
        permutations: args.permutations,
        sinkhorn_permutations: args.sinkhorn_permutations,
        max_points: args.max_points,
        blur: args.blur,
        seed: args.seed,
    };
    let report = evaluate_runs(
        &args.from,
        args.data_dir.as_deref(),
        &opts,
        &selected.device,
    )
    .context("evaluation failed")?;
    print!("{}", render_table(&report));
    write_report(&path, &report)
}
