//! Command-line arguments and dispatch (errors get their context here, with anyhow).
use std::path::PathBuf;

use anyhow::Context;
use clap::{ArgAction, Args, Parser, Subcommand, ValueEnum};
use fairrep_train::config::TrainConfig;
use fairrep_train::device::{DeviceChoice, select_device};
use fairrep_train::divergence_cmd::{self, DivergenceArgs};
use fairrep_train::eval_cmd::{self, EvalOptions, SplitName, evaluate_runs};
use fairrep_train::export::export;
use fairrep_train::train::{CONFIG_FILE, TrainOptions, TrainOutcome, train};
use fairrep_train::transfer::{self, TransferConfig, TransferOptions, transfer};

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
    /// Fit fresh heads for novel tasks on frozen encoders (and on a lambda = 0 encoder and
    /// the raw inputs, for comparison); prints a table, writes transfer.json.
    Transfer(TransferArgs),
    /// Audit trained runs: task metrics, fairness, and leakage of the group from z (probe
    /// AUCs, MMD / Sinkhorn with permutation p-values); prints a table, writes eval.json.
    Eval(EvalArgs),
    /// Write a run's representation of a split (and groups, labels) as .npy files.
    Export(ExportArgs),
}

#[derive(Debug, Args)]
pub struct TransferArgs {
    /// Encoder run directories (one per seed; repeat the flag).
    #[arg(long = "from", value_name = "RUN_DIR", required = true)]
    pub from: Vec<PathBuf>,
    /// The transfer config (TOML).
    pub config: PathBuf,
    /// Comparison encoder runs (e.g. lambda = 0), paired with --from by position; replaces
    /// compare.baseline.
    #[arg(long, value_name = "RUN_DIR")]
    pub baseline: Vec<PathBuf>,
    /// Override a config key, e.g. --set fit.epochs=10 (repeatable).
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub set: Vec<String>,
    /// Folder with the real datasets (else $FAIRREP_DATA_DIR).
    #[arg(long, value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    /// Compute device (overrides run.device).
    #[arg(long, value_enum)]
    pub device: Option<DeviceChoice>,
    /// The split the heads are scored on: test (to report), or valid (to choose lambda
    /// without the test split; MLP heads are then selected on the rows they are scored on).
    #[arg(long, value_enum, default_value = "test")]
    pub split: SplitName,
    /// Where to write the JSON report (default: RUN_DIR/transfer.json for one --from, else
    /// ./transfer.json); the trade-off plot goes beside it (.svg).
    #[arg(long, value_name = "FILE")]
    pub out: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct EvalArgs {
    /// Run directories (several: seeds, summarised as mean and 95% CI).
    #[arg(long = "from", value_name = "RUN_DIR", required = true, num_args = 1..)]
    pub from: Vec<PathBuf>,
    /// The split to audit.
    #[arg(long, value_enum, default_value = "test")]
    pub split: SplitName,
    /// Relabellings of the MMD permutation test.
    #[arg(long, default_value_t = 200)]
    pub permutations: usize,
    /// Relabellings of the Sinkhorn permutation test (each is a full Sinkhorn solve).
    #[arg(long, default_value_t = 20)]
    pub sinkhorn_permutations: usize,
    /// Rows (stratified subsample) for the divergences and their tests.
    #[arg(long, default_value_t = 1000)]
    pub max_points: usize,
    /// Blur of the Sinkhorn divergence, as a fraction of the median distance between the
    /// points of z.
    #[arg(long, default_value_t = 0.5)]
    pub blur: f64,
    /// Seed of the subsamples, permutations and probes.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Folder with the real datasets (else $FAIRREP_DATA_DIR).
    #[arg(long, value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    /// Compute device.
    #[arg(long, value_enum, default_value = "auto")]
    pub device: DeviceChoice,
    /// Where to write the JSON report (default: RUN_DIR/eval.json for one run, else
    /// ./eval.json).
    #[arg(long, value_name = "FILE")]
    pub out: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct ExportArgs {
    /// The run directory.
    #[arg(long = "from", value_name = "RUN_DIR")]
    pub from: PathBuf,
    /// The split to export.
    #[arg(long, value_enum, default_value = "test")]
    pub split: SplitName,
    /// The .npy file for z; groups, labels and a JSON sidecar are written beside it.
    #[arg(long, value_name = "FILE.npy")]
    pub out: PathBuf,
    /// Folder with the real datasets (else $FAIRREP_DATA_DIR).
    #[arg(long, value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    /// Compute device.
    #[arg(long, value_enum, default_value = "auto")]
    pub device: DeviceChoice,
}

/// Where a report goes: `--out`, else `RUN_DIR/NAME` for one run, else `./NAME`.
fn report_path(out: &Option<PathBuf>, runs: &[PathBuf], name: &str) -> PathBuf {
    match (out, runs) {
        (Some(out), _) => out.clone(),
        (None, [one]) => one.join(name),
        (None, _) => PathBuf::from(name),
    }
}

fn write_report<T: serde::Serialize>(path: &std::path::Path, report: &T) -> anyhow::Result<()> {
    let json = serde_json::to_string_pretty(report)?;
    fairrep_train::fsutil::write_atomic(path, format!("{json}\n").as_bytes())?;
    eprintln!("report: {}", path.display());
    Ok(())
}

fn run_transfer(args: TransferArgs) -> anyhow::Result<()> {
    let mut overrides = args.set.clone();
    if let Some(device) = args.device {
        overrides.push(format!("run.device={}", serde_json::to_value(device)?));
    }
    let mut config = TransferConfig::load(&args.config, &overrides)
        .with_context(|| format!("cannot use config `{}`", args.config.display()))?;
    if !args.baseline.is_empty() {
        config.compare.baseline = args.baseline.clone();
    }
    let selected = select_device(config.run.device);
    tracing::info!("device: {}", selected.description);
    let report = transfer(
        &config,
        &TransferOptions {
            encoders: &args.from,
            data_dir: args.data_dir.as_deref(),
            device: &selected.device,
            split: args.split,
        },
    )
    .context("transfer failed")?;
    print!("{}", transfer::render_table(&report));
    let path = report_path(&args.out, &args.from, "transfer.json");
    let plot = path.with_extension("svg");
    fairrep_train::fsutil::write_atomic(&plot, transfer::render_plot(&report).as_bytes())?;
    eprintln!("trade-off plot: {}", plot.display());
    write_report(&path, &report)
}

fn run_eval(args: EvalArgs) -> anyhow::Result<()> {
    if args.max_points < 4 {
        anyhow::bail!("--max-points must be at least 4, found {}", args.max_points);
    }
    if !(args.blur.is_finite() && args.blur > 0.0) {
        anyhow::bail!("--blur must be positive, found {}", args.blur);
    }
    let selected = select_device(args.device);
    tracing::info!("device: {}", selected.description);
    let opts = EvalOptions {
        split: args.split,
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
    print!("{}", eval_cmd::render_table(&report));
    write_report(&report_path(&args.out, &args.from, "eval.json"), &report)
}

fn run_export(args: ExportArgs) -> anyhow::Result<()> {
    let selected = select_device(args.device);
    let sidecar = export(
        &args.from,
        args.split,
        &args.out,
        args.data_dir.as_deref(),
        &selected.device,
    )
    .context("export failed")?;
    println!("{}", serde_json::to_string_pretty(&sidecar)?);
    Ok(())
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
        Command::Transfer(args) => run_transfer(args),
        Command::Eval(args) => run_eval(args),
        Command::Export(args) => run_export(args),
    }
}
