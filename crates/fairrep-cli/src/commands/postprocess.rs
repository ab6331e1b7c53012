//! `fairrep postprocess`.
use std::fmt::Write as _;

use anyhow::Context;
use fairrep_audit::postprocess::{
    Outcome, PostprocessOptions, PostprocessReport, applied_csv, apply_saved,
    postprocess_predictions, postprocess_run,
};
use fairrep_data::fs as fsutil;
use fairrep_postprocess::default_alphas;
use fairrep_train::device::select_device;

use crate::cli::PostprocessArgs;

pub(crate) fn run(args: PostprocessArgs) -> anyhow::Result<()> {
    if let Some(fit) = &args.apply {
        let predictions = args
            .predictions
            .as_ref()
            .context("--apply needs --predictions FILE.csv")?;
        let Some(out) = &args.out else {
            anyhow::bail!("--apply needs --out OUT.csv (where to write the post-processed rows)");
        };
        for (flag, given) in [
            ("--task", args.task.is_some()),
            ("--alphas", args.alphas.is_some()),
            ("--jitter", args.jitter.is_some()),
            ("--scores", args.scores),
            ("--threshold", args.threshold.is_some()),
        ] {
            if given {
                anyhow::bail!("{flag} does not apply with --apply (the saved fit decides)");
            }
        }
        let alpha = args.alpha.unwrap_or(1.0);
        let applied = apply_saved(fit, predictions, alpha, args.seed)
            .context("applying the post-processor failed")?;
        if let Some(parent) = out.parent().filter(|p| !p.as_os_str().is_empty()) {
            fsutil::create_dir_all(parent)?;
        }
        fsutil::write_atomic(out, applied_csv(&applied, out)?.as_bytes())
            .with_context(|| format!("cannot write `{}`", out.display()))?;
        eprintln!(
            "{} rows post-processed at alpha = {}: {}",
            applied.postprocessed.len(),
            alpha,
            out.display()
        );
        return Ok(());
    }
    if args.alpha.is_some() {
        anyhow::bail!("--alpha applies with --apply; the curve's alphas are --alphas");
    }
    if args.threshold.is_some() && !args.scores {
        anyhow::bail!("--threshold applies with --scores (the DP gap of probability scores)");
    }
    let threshold = args.threshold.unwrap_or(0.5);
    let opts = PostprocessOptions {
        alphas: args.alphas.clone().unwrap_or_else(default_alphas),
        jitter: args.jitter,
        seed: args.seed,
        scores: args.scores,
        threshold,
    };
    if !threshold.is_finite() {
        anyhow::bail!("--threshold must be a finite number, found {threshold}");
    }
    let outcome: Outcome = match (&args.from, &args.predictions) {
        (Some(run), None) => {
            let Some(task) = &args.task else {
                anyhow::bail!("--from RUN_DIR needs --task NAME (the head to post-process)");
            };
            let selected = select_device(args.device.into())?;
            tracing::info!("device: {}", selected.description);
            postprocess_run(
                run,
                task,
                args.data_dir.as_deref(),
                args.out.as_deref(),
                &opts,
                &selected.device,
            )
            .context("post-processing failed")?
        }
        (None, Some(file)) => {
            if args.task.is_some() {
                anyhow::bail!("--task applies to --from RUN_DIR, not to --predictions");
            }
            postprocess_predictions(file, args.out.as_deref(), &opts)
                .context("post-processing failed")?
        }
        _ => anyhow::bail!(
            "give --from RUN_DIR --task NAME, or --predictions FILE.csv (optionally with --apply FIT.json)"
        ),
    };
    print!("{}", render_curve(&outcome.report));
    eprintln!("post-processor: {}", outcome.report.fit_file.display());
    eprintln!("plot: {}", outcome.report.plot_file.display());
    super::report_png("plot", &outcome.plot_png);
    eprintln!(
        "report: {}",
        outcome
            .report
            .fit_file
            .with_file_name(fairrep_audit::postprocess::REPORT_FILE)
            .display()
    );
    Ok(())
}

/// The curve as a table: one line per alpha.
fn render_curve(r: &PostprocessReport) -> String {
    let mut out = String::new();
    let source = match (&r.run, &r.task, &r.predictions_file) {
        (Some(run), Some(task), _) => format!("{}, task {task}", run.display()),
        (_, _, Some(file)) => file.display().to_string(),
        _ => String::new(),
    };
    let _ = writeln!(
        out,
        "{source}: {} ({}), calibrated on {} rows ({}), reported on {} rows ({}); jitter {:.3e}, seed {}",
        r.output,
        r.attributes.join(" then "),
        r.calibration.n,
        r.calibration.split,
        r.test.n,
        r.test.split,
        r.jitter_scale,
        r.seed
    );
    let mut head = format!("{:>6} {:>10} {:>10}", "alpha", "mse", "rmse");
    for a in &r.attributes {
        let _ = write!(head, " {:>10} {:>10}", format!("ks:{a}"), "w1");
        if r.threshold.is_some() {
            let _ = write!(head, " {:>10}", "dp_gap");
        }
    }
    let _ = writeln!(out, "{head}");
    let num = |v: Option<f64>| v.map_or_else(|| "-".to_string(), |v| format!("{v:.5}"));
    for row in &r.curve {
        let mut line = format!(
            "{:>6} {:>10} {:>10}",
            format!("{:.2}", row.alpha),
            num(row.mse),
            num(row.rmse)
        );
        for a in &row.attributes {
            let _ = write!(line, " {:>10} {:>10}", num(Some(a.ks)), num(Some(a.w1)));
            if r.threshold.is_some() {
                let _ = write!(line, " {:>10}", num(a.dp_gap));
            }
        }
        let _ = writeln!(out, "{line}");
    }
    if r.attributes.len() > 1 {
        let _ = writeln!(out, "unfairness after each step (alpha = 1):");
        for st in &r.stages {
            let parts: Vec<String> = st
                .attributes
                .iter()
                .map(|a| format!("{}: ks {:.4}, w1 {:.4}", a.attribute, a.ks, a.w1))
                .collect();
            let _ = writeln!(out, "  {:<12} {}", st.stage, parts.join("; "));
        }
    }
    out
}
