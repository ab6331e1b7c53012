//! `fairrep train`.
use std::process::ExitCode;

use anyhow::Context;
use fairrep_train::config::TrainConfig;
use fairrep_train::device::{DeviceChoice, find_gpu};
use fairrep_train::records::CONFIG_FILE;
use fairrep_train::{TrainOptions, TrainOutcome, train};

use crate::cli::TrainArgs;

fn quoted(value: &str) -> String {
    toml::Value::String(value.to_string()).to_string()
}

/// burn 0.22 materialises a resumed optimiser's state on its default device, which is wgpu
/// whenever the wgpu backend is compiled in (and fails where no adapter exists), unless
/// `BURN_DEVICE` names another. When resuming on a CPU device without `BURN_DEVICE`, the
/// command runs itself again with `BURN_DEVICE` set to that device (the environment of a
/// running process cannot be changed safely); `None` when no re-run is needed.
fn rerun_for_resume(config: &TrainConfig) -> anyhow::Result<Option<ExitCode>> {
    if std::env::var_os("BURN_DEVICE").is_some() {
        return Ok(None);
    }
    let cpu = match config.file.run.device {
        DeviceChoice::Flex => "flex",
        DeviceChoice::Ndarray => "ndarray",
        DeviceChoice::Auto if find_gpu().is_none() => "flex",
        DeviceChoice::Auto | DeviceChoice::Wgpu => return Ok(None),
    };
    let exe = std::env::current_exe().context("cannot find the fairrep executable to resume")?;
    let status = std::process::Command::new(exe)
        .args(std::env::args_os().skip(1))
        .env("BURN_DEVICE", cpu)
        .status()
        .context("cannot run fairrep to resume")?;
    Ok(Some(match status.code() {
        Some(0) => ExitCode::SUCCESS,
        Some(code) => ExitCode::from(u8::try_from(code).unwrap_or(1)),
        None => ExitCode::FAILURE,
    }))
}

pub(crate) fn run(args: TrainArgs) -> anyhow::Result<ExitCode> {
    let config_path = match (&args.config, &args.resume) {
        (Some(path), _) => path.clone(),
        (None, Some(run_dir)) => run_dir.join(CONFIG_FILE),
        (None, None) => unreachable!("clap requires CONFIG unless --resume"),
    };
    if let (None, Some(run_dir)) = (&args.config, &args.resume)
        && !config_path.exists()
    {
        anyhow::bail!(
            "`{}` holds no checkpoint and no {CONFIG_FILE}: it is not a run directory, or its run \
             was killed before its first checkpoint; there is nothing to resume",
            run_dir.display()
        );
    }
    let mut overrides = args.set.clone();
    if let Some(device) = args.device {
        let name = DeviceChoice::from(device).name();
        overrides.push(format!("run.device={}", quoted(name)));
    }
    if let Some(seed) = args.seed {
        overrides.push(format!("run.seed={seed}"));
    }
    if let Some(out) = &args.out {
        overrides.push(format!("run.out_dir={}", quoted(&out.to_string_lossy())));
    }
    let config = TrainConfig::load(&config_path, &overrides)
        .with_context(|| format!("cannot use config `{}`", config_path.display()))?;
    if let Some(dir) = &args.dump_data {
        let dump = fairrep_train::dump::dump_data(&config, args.data_dir.as_deref(), dir)
            .context("cannot dump the data")?;
        println!("{}", serde_json::to_string_pretty(&dump)?);
        return Ok(ExitCode::SUCCESS);
    }
    if args.resume.is_some()
        && let Some(code) = rerun_for_resume(&config)?
    {
        return Ok(code);
    }
    let outcome = train(TrainOptions {
        config,
        data_dir: args.data_dir,
        resume: args.resume.clone(),
    })
    .context("training failed")?;
    match outcome {
        TrainOutcome::Finished(summary) => {
            println!("{}", serde_json::to_string_pretty(&summary)?);
            eprintln!("run directory: {}", summary.run_dir.display());
        }
        TrainOutcome::Stopped { epoch, run_dir } => {
            eprintln!(
                "stopped after epoch {epoch}; continue with: fairrep train --resume {}",
                run_dir.display()
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}
