//! `fairrep export`.
use anyhow::Context;
use fairrep_audit::export::export;
use fairrep_train::device::select_device;

use crate::cli::ExportArgs;

pub(crate) fn run(args: ExportArgs) -> anyhow::Result<()> {
    let selected = select_device(args.device.into())?;
    let sidecar = export(
        &args.from,
        args.split.into(),
        &args.out,
        args.data_dir.as_deref(),
        &selected.device,
    )
    .context("export failed")?;
    println!("{}", serde_json::to_string_pretty(&sidecar)?);
    Ok(())
}
