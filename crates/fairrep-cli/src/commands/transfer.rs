//! `fairrep transfer`.
use anyhow::Context;
use fairrep_audit::transfer::{self, TransferConfig, TransferOptions};
use fairrep_data::fs as fsutil;
use fairrep_train::device::{DeviceChoice, select_device};
use fairrep_train::raster::PngFile;

use super::{report_path, write_report};
use crate::cli::TransferArgs;

pub(crate) fn run(args: TransferArgs) -> anyhow::Result<()> {
    let mut overrides = args.set.clone();
    if let Some(device) = args.device {
        let name = DeviceChoice::from(device).name();
        overrides.push(format!("run.device={}", toml::Value::String(name.into())));
    }
    let mut config = TransferConfig::load(&args.config, &overrides)
        .with_context(|| format!("cannot use config `{}`", args.config.display()))?;
    if !args.baseline.is_empty() {
        config.compare.baseline = args.baseline.clone();
    }
    let path = report_path(&args.out, &args.from, "transfer.json")?;
    let selected = select_device(config.run.device)?;
    tracing::info!("device: {}", selected.description);
    let report = transfer::transfer(
        &config,
        &TransferOptions {
            encoders: &args.from,
            data_dir: args.data_dir.as_deref(),
            device: &selected.device,
            split: args.split.into(),
        },
    )
    .context("transfer failed")?;
    print!("{}", transfer::render_table(&report));
    let plot = path.with_extension("svg");
    write_report(&path, &report)?;
    let svg = transfer::render_plot(&report);
    fsutil::write_atomic(&plot, svg.as_bytes())
        .with_context(|| format!("cannot write the plot `{}`", plot.display()))?;
    eprintln!("trade-off plot: {}", plot.display());
    // A failure to render the PNG loses neither the report nor the SVG.
    super::report_png("trade-off plot", &PngFile::beside(&plot, &svg));
    Ok(())
}
