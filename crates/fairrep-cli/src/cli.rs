//! Command-line arguments.
use std::path::PathBuf;

use clap::{ArgAction, Args, Parser, Subcommand, ValueEnum};
use fairrep_data::SplitName;
use fairrep_train::device::DeviceChoice;

/// Deep fair representations: train multitask models whose shared representation is fair
/// across sensitive groups (MMD or Sinkhorn penalty), reuse and audit them, and measure
/// divergences. Exit status: 0 on success, 1 on an error, 2 on a command-line usage error.
#[derive(Debug, Parser)]
#[command(name = "fairrep", version)]
pub(crate) struct Cli {
    /// More logging (-v debug, -vv trace). RUST_LOG overrides.
    #[arg(short, long, action = ArgAction::Count, global = true)]
    pub(crate) verbose: u8,
    /// Less logging (-q warnings, -qq errors only).
    #[arg(short, long, action = ArgAction::Count, global = true, conflicts_with = "verbose")]
    pub(crate) quiet: u8,
    /// The command.
    #[command(subcommand)]
    pub(crate) command: Command,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub(crate) enum Command {
    /// Train a model from a TOML config; prints the summary JSON on stdout.
    Train(TrainArgs),
    /// MMD or Sinkhorn divergence between two point clouds read from files.
    Divergence(DivergenceArgs),
    /// Fit fresh heads for novel tasks on frozen encoders (and on a lambda = 0 encoder and
    /// the raw inputs, for comparison); prints a table, writes transfer.json.
    Transfer(TransferArgs),
    /// Audit trained runs: task metrics, fairness, and leakage of the group from z (probe
    /// AUCs, MMD / Sinkhorn with permutation p-values; with several sensitive attributes, of
    /// the cells and of each attribute); prints a table, writes eval.json.
    Eval(EvalArgs),
    /// Write a run's representation of a split (and groups, labels) as .npy files.
    Export(ExportArgs),
    /// FERM (fair ERM, Donini et al. 2018) against the unconstrained SVM / logistic
    /// regression with the authors' model selection; prints a table, writes a run directory
    /// per seed (ferm.json, and the linear FERM representation for transfer and export).
    Ferm(FermArgs),
    /// Fair regression by Wasserstein-barycentre post-processing of a run's head or of a
    /// predictions CSV: fits on the calibration rows, prints the risk / unfairness curve over
    /// alpha, writes fit.json, report.json and curve.svg; or applies a saved fit (--apply).
    Postprocess(PostprocessArgs),
    /// Run a sweep (a base config, axes, seeds) as resumable runs, then write results.csv,
    /// results.jsonl, the validation front plot and report; `sweep collect DIR` merges shards.
    Sweep(SweepArgs),
}

/// `--device`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum DeviceArg {
    /// wgpu on a real GPU adapter if there is one, else flex.
    Auto,
    /// burn's pure-Rust CPU backend.
    Flex,
    /// burn's ndarray CPU backend.
    Ndarray,
    /// wgpu on its default adapter.
    Wgpu,
}

impl From<DeviceArg> for DeviceChoice {
    fn from(d: DeviceArg) -> Self {
        match d {
            DeviceArg::Auto => DeviceChoice::Auto,
            DeviceArg::Flex => DeviceChoice::Flex,
            DeviceArg::Ndarray => DeviceChoice::Ndarray,
            DeviceArg::Wgpu => DeviceChoice::Wgpu,
        }
    }
}

/// `--split` of the audits: the validation split (to choose) or the test split (to report).
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum SplitArg {
    /// The validation split.
    Valid,
    /// The test split.
    Test,
}

impl From<SplitArg> for SplitName {
    fn from(s: SplitArg) -> Self {
        match s {
            SplitArg::Valid => SplitName::Valid,
            SplitArg::Test => SplitName::Test,
        }
    }
}

/// `fairrep train`.
#[derive(Debug, Args)]
pub(crate) struct TrainArgs {
    /// The config file (TOML). With --resume it defaults to the run's saved config.toml.
    #[arg(required_unless_present = "resume")]
    pub(crate) config: Option<PathBuf>,
    /// Override a config key, e.g. --set penalty.lambda=0.5 (repeatable; the value is parsed
    /// as TOML, else taken as a string).
    #[arg(long = "set", value_name = "KEY=VALUE", allow_hyphen_values = true)]
    pub(crate) set: Vec<String>,
    /// Compute device (overrides run.device).
    #[arg(long, value_enum)]
    pub(crate) device: Option<DeviceArg>,
    /// Folder with the real datasets (else $FAIRREP_DATA_DIR).
    #[arg(long, value_name = "DIR")]
    pub(crate) data_dir: Option<PathBuf>,
    /// Where to create the run directory (overrides run.out_dir).
    #[arg(long, value_name = "DIR")]
    pub(crate) out: Option<PathBuf>,
    /// Run seed (overrides run.seed).
    #[arg(long, allow_negative_numbers = true)]
    pub(crate) seed: Option<u64>,
    /// Continue a killed or stopped run from its last checkpoint.
    #[arg(long, value_name = "RUN_DIR")]
    pub(crate) resume: Option<PathBuf>,
    /// Write the preprocessed train / valid / test splits this config trains on (S_x.npy,
    /// S_s.npy, S_y.npy, config.toml, data.json) into DIR and exit without training; prints
    /// data.json.
    #[arg(long, value_name = "DIR", conflicts_with = "resume")]
    pub(crate) dump_data: Option<PathBuf>,
}

/// Which divergence `fairrep divergence` computes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum DivergenceKind {
    /// Gaussian MMD².
    Mmd,
    /// The debiased Sinkhorn divergence.
    Sinkhorn,
}

/// Which MMD estimator.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum EstimatorArg {
    /// The V-statistic (>= 0).
    Biased,
    /// The U-statistic.
    Unbiased,
}

/// `fairrep divergence`.
#[derive(Debug, Args)]
pub(crate) struct DivergenceArgs {
    /// First point cloud: `.npy` (float32 or float64, shape [n, d]) or headerless `.csv`.
    #[arg(long)]
    pub(crate) x: PathBuf,
    /// Second point cloud, shape [m, d].
    #[arg(long)]
    pub(crate) y: PathBuf,
    /// Weights of the first cloud (n non-negative values, normalised to sum to 1).
    #[arg(long)]
    pub(crate) a: Option<PathBuf>,
    /// Weights of the second cloud (m values).
    #[arg(long)]
    pub(crate) b: Option<PathBuf>,
    /// The divergence.
    #[arg(long, value_enum)]
    pub(crate) kind: DivergenceKind,
    /// Sinkhorn temperature in cost units (cost |x-y|^2/2).
    #[arg(long, conflicts_with = "blur", allow_negative_numbers = true)]
    pub(crate) eps: Option<f64>,
    /// Sinkhorn blur, `eps = blur^2` (GeomLoss convention).
    #[arg(long, allow_negative_numbers = true)]
    pub(crate) blur: Option<f64>,
    /// eps-scaling factor, in [0.5, 0.95].
    #[arg(long, allow_negative_numbers = true)]
    pub(crate) scaling: Option<f64>,
    /// Target marginal error [default: 1e-5].
    #[arg(long, allow_negative_numbers = true)]
    pub(crate) tolerance: Option<f64>,
    /// Maximum iterations at the target eps [default: 10000].
    #[arg(long, allow_negative_numbers = true)]
    pub(crate) max_iters: Option<usize>,
    /// Check the marginal error every this many iterations [default: 10].
    #[arg(long, allow_negative_numbers = true)]
    pub(crate) check_every: Option<usize>,
    /// MMD bandwidth: a number, a comma-separated list, or `median` [default: median].
    #[arg(long, allow_hyphen_values = true)]
    pub(crate) bandwidth: Option<String>,
    /// MMD estimator [default: biased].
    #[arg(long, value_enum)]
    pub(crate) estimator: Option<EstimatorArg>,
    /// Also print the gradient with respect to x.
    #[arg(long)]
    pub(crate) grad: bool,
    /// Compute in float64 (on the CPU devices).
    #[arg(long)]
    pub(crate) f64: bool,
    /// Compute device.
    #[arg(long, value_enum, default_value = "auto")]
    pub(crate) device: DeviceArg,
}

/// `fairrep transfer`.
#[derive(Debug, Args)]
pub(crate) struct TransferArgs {
    /// Representation runs (one per seed; repeat the flag): trained encoders or `fairrep
    /// ferm` runs (their linear FERM projection).
    #[arg(long = "from", value_name = "RUN_DIR", required = true)]
    pub(crate) from: Vec<PathBuf>,
    /// The transfer config (TOML).
    pub(crate) config: PathBuf,
    /// Comparison runs (e.g. lambda = 0, or a `fairrep ferm` run), paired with --from by
    /// position; replaces compare.baseline.
    #[arg(long, value_name = "RUN_DIR")]
    pub(crate) baseline: Vec<PathBuf>,
    /// Override a config key, e.g. --set fit.epochs=10 (repeatable).
    #[arg(long = "set", value_name = "KEY=VALUE", allow_hyphen_values = true)]
    pub(crate) set: Vec<String>,
    /// Folder with the real datasets (else $FAIRREP_DATA_DIR).
    #[arg(long, value_name = "DIR")]
    pub(crate) data_dir: Option<PathBuf>,
    /// Compute device (overrides run.device).
    #[arg(long, value_enum)]
    pub(crate) device: Option<DeviceArg>,
    /// The split the heads are scored on: test (to report), or valid (to choose lambda
    /// without the test split; MLP heads are then selected on the rows they are scored on).
    #[arg(long, value_enum, default_value = "test")]
    pub(crate) split: SplitArg,
    /// Where to write the JSON report (default: RUN_DIR/transfer.json for one --from, else
    /// transfer.json in the runs' common folder); the trade-off plot goes beside it (.svg).
    #[arg(long, value_name = "FILE")]
    pub(crate) out: Option<PathBuf>,
}

/// `fairrep eval`.
#[derive(Debug, Args)]
pub(crate) struct EvalArgs {
    /// Run directories (several: seeds, summarised as mean and 95% CI).
    #[arg(long = "from", value_name = "RUN_DIR", required = true, num_args = 1..)]
    pub(crate) from: Vec<PathBuf>,
    /// The split to audit.
    #[arg(long, value_enum, default_value = "test")]
    pub(crate) split: SplitArg,
    /// Relabellings of the MMD permutation test (0: the statistic without a p-value).
    #[arg(long, default_value_t = 200, allow_negative_numbers = true)]
    pub(crate) permutations: usize,
    /// Relabellings of the Sinkhorn permutation test (each is a full Sinkhorn solve).
    #[arg(long, default_value_t = 20, allow_negative_numbers = true)]
    pub(crate) sinkhorn_permutations: usize,
    /// Rows (stratified subsample) for the divergences and their tests.
    #[arg(long, default_value_t = 1000, allow_negative_numbers = true)]
    pub(crate) max_points: usize,
    /// Blur of the Sinkhorn divergence, as a fraction of the median distance between the
    /// points of z.
    #[arg(long, default_value_t = 0.5, allow_negative_numbers = true)]
    pub(crate) blur: f64,
    /// Seed of the subsamples, permutations and probes.
    #[arg(long, default_value_t = 0, allow_negative_numbers = true)]
    pub(crate) seed: u64,
    /// Folder with the real datasets (else $FAIRREP_DATA_DIR).
    #[arg(long, value_name = "DIR")]
    pub(crate) data_dir: Option<PathBuf>,
    /// Compute device.
    #[arg(long, value_enum, default_value = "auto")]
    pub(crate) device: DeviceArg,
    /// Where to write the JSON report (default: RUN_DIR/eval.json for one run, else eval.json
    /// in the runs' common folder).
    #[arg(long, value_name = "FILE")]
    pub(crate) out: Option<PathBuf>,
}

/// `fairrep export`.
#[derive(Debug, Args)]
pub(crate) struct ExportArgs {
    /// The run directory: a trained encoder or a `fairrep ferm` run.
    #[arg(long = "from", value_name = "RUN_DIR")]
    pub(crate) from: PathBuf,
    /// The split to export.
    #[arg(long, value_enum, default_value = "test")]
    pub(crate) split: SplitArg,
    /// The .npy file for z; groups, labels and a JSON sidecar are written beside it.
    #[arg(long, value_name = "FILE.npy")]
    pub(crate) out: PathBuf,
    /// Folder with the real datasets (else $FAIRREP_DATA_DIR).
    #[arg(long, value_name = "DIR")]
    pub(crate) data_dir: Option<PathBuf>,
    /// Compute device.
    #[arg(long, value_enum, default_value = "auto")]
    pub(crate) device: DeviceArg,
}

/// `fairrep ferm`.
#[derive(Debug, Args)]
pub(crate) struct FermArgs {
    /// The FERM config (TOML).
    pub(crate) config: PathBuf,
    /// Override a config key, e.g. --set selection.ratio=0.98 (repeatable).
    #[arg(long = "set", value_name = "KEY=VALUE", allow_hyphen_values = true)]
    pub(crate) set: Vec<String>,
    /// Folder with the real datasets (else $FAIRREP_DATA_DIR).
    #[arg(long, value_name = "DIR")]
    pub(crate) data_dir: Option<PathBuf>,
    /// Where to create the run directories (overrides run.out_dir).
    #[arg(long, value_name = "DIR")]
    pub(crate) out: Option<PathBuf>,
    /// One seed (overrides run.seeds).
    #[arg(long)]
    pub(crate) seed: Option<u64>,
}

/// `fairrep postprocess`.
#[derive(Debug, Args)]
pub(crate) struct PostprocessArgs {
    /// A run directory: post-process the head of --task (calibrated on the validation split,
    /// reported on the test split).
    #[arg(long = "from", value_name = "RUN_DIR", conflicts_with = "predictions")]
    pub(crate) from: Option<PathBuf>,
    /// The run's task (a regression task, or a binary task with --scores).
    #[arg(long, value_name = "NAME")]
    pub(crate) task: Option<String>,
    /// The predictions are probability scores (a binary head's, or a file's): also report the
    /// demographic-parity gap at --threshold.
    #[arg(long)]
    pub(crate) scores: bool,
    /// A predictions CSV (columns prediction, group or group:NAME..., optional target, split):
    /// calibrated on the rows with split = valid or calib, reported on split = test; with
    /// --apply, every row is post-processed.
    #[arg(long, value_name = "FILE.csv")]
    pub(crate) predictions: Option<PathBuf>,
    /// Apply a saved post-processor (fit.json) to --predictions, writing --out.
    #[arg(long, value_name = "FIT.json", requires = "predictions")]
    pub(crate) apply: Option<PathBuf>,
    /// The alphas of the risk / unfairness curve, each in [0, 1] (0: unchanged, 1: fully fair).
    /// Default: 0,0.1,...,1.
    #[arg(long, value_delimiter = ',', allow_hyphen_values = true, num_args = 1)]
    pub(crate) alphas: Option<Vec<f64>>,
    /// With --apply: the alpha of every step, in [0, 1] (default 1).
    #[arg(long, allow_negative_numbers = true)]
    pub(crate) alpha: Option<f64>,
    /// Half-width of the uniform tie-breaking jitter (default: 1e-6 times the range of the
    /// calibration predictions).
    #[arg(long, allow_negative_numbers = true)]
    pub(crate) jitter: Option<f64>,
    /// Seed of the jitter draws.
    #[arg(long, default_value_t = 0)]
    pub(crate) seed: u64,
    /// With --scores: the decision threshold of the DP gap (default 0.5).
    #[arg(long, allow_negative_numbers = true)]
    pub(crate) threshold: Option<f64>,
    /// Folder with the real datasets (else $FAIRREP_DATA_DIR).
    #[arg(long, value_name = "DIR")]
    pub(crate) data_dir: Option<PathBuf>,
    /// Compute device (the run's forward pass).
    #[arg(long, value_enum, default_value = "auto")]
    pub(crate) device: DeviceArg,
    /// Output: the folder for fit.json, report.json and curve.svg (default RUN_DIR/postprocess/
    /// TASK, or FILE.csv.postprocess beside the predictions); with --apply, the CSV to write
    /// (required).
    #[arg(long, value_name = "PATH")]
    pub(crate) out: Option<PathBuf>,
}

/// `fairrep sweep`.
#[derive(Debug, Args)]
#[command(args_conflicts_with_subcommands = true, subcommand_negates_reqs = true)]
pub(crate) struct SweepArgs {
    /// `collect DIR`: merge the finished runs of a sweep directory (all shards) and draw the
    /// front.
    #[command(subcommand)]
    pub(crate) action: Option<SweepAction>,
    /// The sweep file (TOML).
    #[arg(required = true)]
    pub(crate) file: Option<PathBuf>,
    /// The sweep directory (overrides the file's out_dir; default sweeps/STEM).
    #[arg(long, value_name = "DIR")]
    pub(crate) out: Option<PathBuf>,
    /// Runs trained at once on this machine, each its own `fairrep train` process.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..))]
    pub(crate) jobs: u64,
    /// Run only shard I of N (runs i with i % N == I). Default: SLURM_ARRAY_TASK_ID /
    /// SLURM_ARRAY_TASK_COUNT when set, else the whole sweep.
    #[arg(long, value_name = "I/N")]
    pub(crate) shard: Option<String>,
    /// Folder with the real datasets (else $FAIRREP_DATA_DIR).
    #[arg(long, value_name = "DIR")]
    pub(crate) data_dir: Option<PathBuf>,
    /// Write a scheduler script instead of running: `slurm` writes an sbatch array script.
    #[arg(long, value_enum)]
    pub(crate) emit: Option<EmitKind>,
    /// --emit: where to write the script (default DIR/sweep.sbatch).
    #[arg(long, value_name = "FILE", requires = "emit")]
    pub(crate) script: Option<PathBuf>,
    /// --emit: array tasks (default: one per run, so one log per run).
    #[arg(long, requires = "emit", value_parser = clap::value_parser!(u64).range(1..))]
    pub(crate) tasks: Option<u64>,
    /// --emit: at most this many array tasks at once (`--array=0-N%K`).
    #[arg(long, value_name = "K", requires = "emit", value_parser = clap::value_parser!(u64).range(1..))]
    pub(crate) parallel: Option<u64>,
    /// --emit: CPUs per task.
    #[arg(long, default_value_t = 1, requires = "emit", value_parser = clap::value_parser!(u64).range(1..))]
    pub(crate) cpus_per_task: u64,
    /// --emit: memory per task (sbatch --mem, e.g. 4G).
    #[arg(long, requires = "emit")]
    pub(crate) mem: Option<String>,
    /// --emit: time limit per task (sbatch --time, e.g. 01:00:00).
    #[arg(long, requires = "emit")]
    pub(crate) time: Option<String>,
    /// --emit: partition.
    #[arg(long, requires = "emit")]
    pub(crate) partition: Option<String>,
    /// --emit: generic resources per task (sbatch --gres, e.g. gpu:1).
    #[arg(long, requires = "emit")]
    pub(crate) gres: Option<String>,
}

/// What `fairrep sweep --emit` writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum EmitKind {
    /// An sbatch array script.
    Slurm,
}

/// The subcommands of `fairrep sweep`.
#[derive(Debug, Subcommand)]
pub(crate) enum SweepAction {
    /// Merge a sweep directory's finished runs (from any shards) into results.csv and
    /// results.jsonl, and write the front plot and the report.
    Collect {
        /// The sweep directory.
        dir: PathBuf,
    },
}
