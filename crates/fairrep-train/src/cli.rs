//! Command-line arguments and dispatch (errors get their context here, with anyhow).
use std::path::PathBuf;

use anyhow::Context;
use clap::{ArgAction, Args, Parser, Subcommand, ValueEnum};
use fairrep_train::config::TrainConfig;
use fairrep_train::device::{DeviceChoice, select_device};
use fairrep_train::divergence_cmd::{self, DivergenceArgs};
use fairrep_train::train::{CONFIG_FILE, TrainOptions, TrainOutcome, train};

/// Deep fair representations: train multitask models whose shared representation is fair
/// across sensitive groups (MMD or Sinkhorn penalty), and measure divergences.
#[derive(Debug, Parser)]
#[command(name = "fairrep", version)]
pub struct Cli {
    /// More logging (-v debug, -vv trace). RUST_LOG overrides.
    #[arg(short, long, action = ArgAction::Count, global = true)]
    pub verbose: u8,
    /// Less logging (-q warnings, -qq errors only).
    #[arg(short, long, action = ArgAction::Count, global = true, conflicts_with = "verbose")]
    pub quiet: u8,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Train a model from a TOML config; prints the summary JSON on stdout.
    Train(TrainArgs),
    /// MMD or Sinkhorn divergence between two point clouds read from files.
    Divergence(DivergenceArgs),
}

#[derive(Debug, Args)]
pub struct TrainArgs {
    /// The config file (TOML). With --resume it defaults to the run's saved config.toml.
    #[arg(required_unless_present = "resume")]
    pub config: Option<PathBuf>,
    /// Override a config key, e.g. --set penalty.lambda=0.5 (repeatable; the value is parsed
    /// as TOML, else taken as a string).
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub set: Vec<String>,
    /// Compute device (overrides run.device).
    #[arg(long, value_enum)]
    pub device: Option<DeviceChoice>,
    /// Folder with the real datasets (else $FAIRREP_DATA_DIR).
    #[arg(long, value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    /// Where to create the run directory (overrides run.out_dir).
    #[arg(long, value_name = "DIR")]
    pub out: Option<PathBuf>,
    /// Run seed (overrides run.seed).
    #[arg(long)]
    pub seed: Option<u64>,
    /// Continue a killed or stopped run from its last checkpoint.
    #[arg(long, value_name = "RUN_DIR")]
    pub resume: Option<PathBuf>,
}

fn quoted(value: &str) -> String {
    toml::Value::String(value.to_string()).to_string()
}

fn run_train(args: TrainArgs) -> anyhow::Result<()> {
    let config_path = match (&args.config, &args.resume) {
        (Some(path), _) => path.clone(),
        (None, Some(run_dir)) => run_dir.join(CONFIG_FILE),
        (None, None) => unreachable!("clap requires CONFIG unless --resume"),
    };
    let mut overrides = args.set.clone();
    if let Some(device) = args.device {
        let name = serde_json::to_value(device)?;
        overrides.push(format!("run.device={name}"));
    }
    if let Some(seed) = args.seed {
        overrides.push(format!("run.seed={seed}"));
    }
    if let Some(out) = &args.out {
        overrides.push(format!("run.out_dir={}", quoted(&out.to_string_lossy())));
    }
    let config = TrainConfig::load(&config_path, &overrides)
        .with_context(|| format!("cannot use config `{}`", config_path.display()))?;
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
    Ok(())
}

/// Runs the parsed command.
pub fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Train(args) => run_train(args),
        Command::Divergence(args) => {
            let choice = DeviceChoice::from_str(&args.device, true)
                .map_err(|e| anyhow::anyhow!("--device {}: {e}", args.device))?;
            let selected = select_device(choice);
            tracing::info!("device: {}", selected.description);
            divergence_cmd::run(&args, &selected.device)
        }
    }
}
