//! The sweep file and its expansion into runs: a base training config, fixed overrides, axes
//! (a list of values per config key) expanded as a grid, optional random samples of ranges,
//! and seeds. Each run's id is a hash of its resolved configuration (seed included), so the
//! same run always lands in the same directory.
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use fairrep_train::config::{ConfigFile, TrainConfig};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::error::SweepError;

/// `[random]`: samples drawn uniformly (or log-uniformly) from ranges of config keys.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RandomSection {
    /// Samples drawn; each is crossed with the grid and the seeds.
    pub samples: usize,
    /// Seed of the draws.
    #[serde(default)]
    pub seed: u64,
    /// `"key" = { min, max, log }` per sampled key.
    pub ranges: BTreeMap<String, Range>,
}

/// A sampled key's range.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Range {
    /// Lower end, finite.
    pub min: f64,
    /// Upper end, finite, above `min`.
    pub max: f64,
    /// Sample `log(value)` uniformly (then `min > 0`).
    #[serde(default)]
    pub log: bool,
}

/// `[select]`: the selection rules (all on validation).
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct SelectSection {
    /// The task whose accuracy and gaps are traded off; default the first task (by name) that
    /// has an accuracy.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub task: Option<String>,
    /// "Highest validation accuracy with validation DP gap <= k", one choice per k.
    pub dp_max: Vec<f64>,
    /// "Lowest validation DP gap with validation accuracy >= best - delta".
    pub accuracy_delta: f64,
}

impl Default for SelectSection {
    fn default() -> Self {
        Self {
            task: None,
            dp_max: vec![0.01, 0.02, 0.05, 0.1],
            accuracy_delta: 0.01,
        }
    }
}

/// The sweep file as written.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct SweepFile {
    base: PathBuf,
    out_dir: Option<PathBuf>,
    #[serde(default = "default_seeds")]
    seeds: Vec<u64>,
    #[serde(default)]
    set: toml::Table,
    #[serde(default)]
    axes: toml::Table,
    random: Option<RandomSection>,
    #[serde(default)]
    select: SelectSection,
}

fn default_seeds() -> Vec<u64> {
    vec![0]
}

/// Keys the sweep sets itself: they may not be swept or set.
const RESERVED: &[&str] = &[
    "run.seed",
    "run.out_dir",
    "run.name",
    "run.stop_after_epoch",
];

/// The folder of run `id` under a sweep directory.
pub fn run_root(sweep_dir: &Path, id: &str) -> PathBuf {
    sweep_dir.join("runs").join(id)
}

/// One run of the sweep.
#[derive(Debug, Clone)]
pub struct PlannedRun {
    /// Position in the plan (grid order, then samples, then seeds).
    pub index: usize,
    /// Hash of the resolved configuration with its seed: the run's folder name.
    pub id: String,
    /// Hash of the resolved configuration without its seed: the runs of one configuration
    /// over seeds share it.
    pub config_id: String,
    /// The run seed.
    pub seed: u64,
    /// The swept keys' values (axes and sampled ranges).
    pub params: BTreeMap<String, toml::Value>,
    /// The resolved configuration, with `run.out_dir` the run's folder and `run.name = "run"`.
    pub config: ConfigFile,
}

/// A sweep file expanded into its runs.
#[derive(Debug, Clone)]
pub struct SweepPlan {
    /// The sweep file.
    pub source: PathBuf,
    /// The base training config (resolved against the sweep file's folder).
    pub base: PathBuf,
    /// The sweep directory.
    pub out_dir: PathBuf,
    /// The swept keys, sorted.
    pub keys: Vec<String>,
    /// Every run, in plan order.
    pub runs: Vec<PlannedRun>,
    /// The selection rules.
    pub select: SelectSection,
    /// Hash of the runs' ids: identifies the sweep in its directory.
    pub sweep_id: String,
}

/// Flattens a TOML table into `dotted.key -> leaf value` (a leaf is anything but a table).
fn flatten(prefix: &str, table: &toml::Table, out: &mut Vec<(String, toml::Value)>) {
    for (k, v) in table {
        let key = if prefix.is_empty() {
            k.clone()
        } else {
            format!("{prefix}.{k}")
        };
        match v {
            toml::Value::Table(t) => flatten(&key, t, out),
            other => out.push((key, other.clone())),
        }
    }
}

/// First 16 hex digits of the SHA-256 of `text`.
pub fn short_hash(text: &str) -> String {
    let digest = Sha256::digest(text.as_bytes());
    digest.iter().take(8).map(|b| format!("{b:02x}")).collect()
}

/// The configuration with the keys that do not change a run's results reset (where it is
/// written, its name, checkpoint cadence, stop point), as hashed into the ids.
fn identity(config: &ConfigFile, seed: Option<u64>) -> String {
    let mut c = config.clone();
    c.run.out_dir = PathBuf::new();
    c.run.name = None;
    c.run.checkpoint_every = 1;
    c.run.stop_after_epoch = None;
    c.run.seed = seed.unwrap_or(0);
    let tag = if seed.is_some() { "run" } else { "config" };
    format!("{tag}\n{}", c.to_toml())
}

fn override_arg(key: &str, value: &toml::Value) -> String {
    format!("{key}={value}")
}

impl SweepPlan {
    /// Reads and expands a sweep file. `out_dir` replaces the file's `out_dir` (default
    /// `sweeps/STEM`, relative to the current directory).
    pub fn load(path: &Path, out_dir: Option<&Path>) -> Result<Self, SweepError> {
        let text = std::fs::read_to_string(path).map_err(|source| SweepError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        let file: SweepFile = toml::from_str(&text).map_err(|e| SweepError::Parse {
            path: path.to_path_buf(),
            message: e.to_string().trim().to_string(),
        })?;
        let invalid = |key: &str, message: String| SweepError::Invalid {
            path: path.to_path_buf(),
            key: key.into(),
            message,
        };
        let folder = path.parent().unwrap_or(Path::new(""));
        let base = folder.join(&file.base);
        let out = match (out_dir, &file.out_dir) {
            (Some(dir), _) => dir.to_path_buf(),
            (None, Some(dir)) => dir.clone(),
            (None, None) => {
                let stem = path
                    .file_stem()
                    .map_or_else(|| "sweep".into(), |s| s.to_string_lossy().into_owned());
                Path::new("sweeps").join(stem)
            }
        };
        if file.seeds.is_empty() {
            return Err(invalid(
                "seeds",
                "must list at least one seed, found []".into(),
            ));
        }
        let mut seen = file.seeds.clone();
        seen.sort_unstable();
        if seen.windows(2).any(|w| w[0] == w[1]) {
            return Err(invalid(
                "seeds",
                format!("lists a seed twice: {:?}", file.seeds),
            ));
        }
        let mut fixed = Vec::new();
        flatten("", &file.set, &mut fixed);
        let mut axes = Vec::new();
        flatten("", &file.axes, &mut axes);
        let mut axis_values: Vec<(String, Vec<toml::Value>)> = Vec::new();
        for (key, value) in axes {
            let key_name = format!("axes.{key}");
            let toml::Value::Array(values) = value else {
                return Err(invalid(
                    &key_name,
                    format!("an axis is a list of values, found {}", value.type_str()),
                ));
            };
            if values.is_empty() {
                return Err(invalid(
                    &key_name,
                    "an axis needs at least one value, found []".into(),
                ));
            }
            axis_values.push((key, values));
        }
        let ranges = file
            .random
            .as_ref()
            .map(|r| r.ranges.clone())
            .unwrap_or_default();
        if let Some(random) = &file.random {
            if random.samples == 0 {
                return Err(invalid(
                    "random.samples",
                    "must be at least 1, found 0".into(),
                ));
            }
            if random.ranges.is_empty() {
                return Err(invalid("random.ranges", "needs at least one range".into()));
            }
            for (key, r) in &random.ranges {
                if !(r.min.is_finite() && r.max.is_finite() && r.min < r.max) {
                    return Err(invalid(
                        &format!("random.ranges.{key}"),
                        format!(
                            "needs finite min < max, found min = {}, max = {}",
                            r.min, r.max
                        ),
                    ));
                }
                if r.log && r.min <= 0.0 {
                    return Err(invalid(
                        &format!("random.ranges.{key}"),
                        format!("a log range needs min > 0, found {}", r.min),
                    ));
                }
            }
        }
        // Every key: not reserved, not given twice.
        let mut all: Vec<(&str, &str)> = Vec::new();
        all.extend(fixed.iter().map(|(k, _)| (k.as_str(), "set")));
        all.extend(axis_values.iter().map(|(k, _)| (k.as_str(), "axes")));
        all.extend(ranges.keys().map(|k| (k.as_str(), "random.ranges")));
        for (i, (key, table)) in all.iter().enumerate() {
            if RESERVED.contains(key) {
                return Err(invalid(
                    &format!("{table}.{key}"),
                    "the sweep sets this key itself (seeds come from `seeds`)".into(),
                ));
            }
            if let Some((_, other)) = all[..i].iter().find(|(k, _)| k == key) {
                return Err(invalid(
                    &format!("{table}.{key}"),
                    format!("is also given in [{other}]; give each key once"),
                ));
            }
        }
        for (i, &k) in file.select.dp_max.iter().enumerate() {
            if !(k.is_finite() && (0.0..=1.0).contains(&k)) {
                return Err(invalid(
                    &format!("select.dp_max[{i}]"),
                    format!("a DP gap bound is in [0, 1], found {k}"),
                ));
            }
        }
        let d = file.select.accuracy_delta;
        if !(d.is_finite() && (0.0..=1.0).contains(&d)) {
            return Err(invalid(
                "select.accuracy_delta",
                format!("an accuracy margin is in [0, 1], found {d}"),
            ));
        }

        // Points of the grid (last axis fastest), crossed with the samples.
        let mut points: Vec<Vec<(String, toml::Value)>> = vec![Vec::new()];
        for (key, values) in &axis_values {
            points = points
                .into_iter()
                .flat_map(|p| {
                    values.iter().map(move |v| {
                        let mut q = p.clone();
                        q.push((key.clone(), v.clone()));
                        q
                    })
                })
                .collect();
        }
        if let Some(random) = &file.random {
            let mut rng = ChaCha8Rng::seed_from_u64(random.seed);
            let samples: Vec<Vec<(String, toml::Value)>> = (0..random.samples)
                .map(|_| {
                    random
                        .ranges
                        .iter()
                        .map(|(k, r)| {
                            let u: f64 = rng.random();
                            let v = if r.log {
                                (r.min.ln() + u * (r.max.ln() - r.min.ln())).exp()
                            } else {
                                r.min + u * (r.max - r.min)
                            };
                            (k.clone(), toml::Value::Float(v))
                        })
                        .collect()
                })
                .collect();
            points = points
                .into_iter()
                .flat_map(|p| {
                    samples.iter().map(move |s| {
                        let mut q = p.clone();
                        q.extend(s.iter().cloned());
                        q
                    })
                })
                .collect();
        }
        let fixed_args: Vec<String> = fixed.iter().map(|(k, v)| override_arg(k, v)).collect();
        let mut runs = Vec::new();
        for point in &points {
            for &seed in &file.seeds {
                let mut args = fixed_args.clone();
                args.extend(point.iter().map(|(k, v)| override_arg(k, v)));
                args.push(format!("run.seed={seed}"));
                let what = if point.is_empty() {
                    "the [set] overrides".to_string()
                } else {
                    point
                        .iter()
                        .map(|(k, v)| format!("{k} = {v}"))
                        .collect::<Vec<_>>()
                        .join(", ")
                };
                let config =
                    TrainConfig::load(&base, &args).map_err(|source| SweepError::Config {
                        path: path.to_path_buf(),
                        what: what.clone(),
                        source: Box::new(source),
                    })?;
                let mut resolved = config.file;
                let id = short_hash(&identity(&resolved, Some(seed)));
                let config_id = short_hash(&identity(&resolved, None));
                resolved.run.out_dir = run_root(&out, &id);
                resolved.run.name = Some("run".into());
                resolved.run.stop_after_epoch = None;
                runs.push(PlannedRun {
                    index: runs.len(),
                    id,
                    config_id,
                    seed,
                    params: point.iter().cloned().collect(),
                    config: resolved,
                });
            }
        }
        let mut ids: Vec<&str> = runs.iter().map(|r| r.id.as_str()).collect();
        let n = ids.len();
        ids.sort_unstable();
        ids.dedup();
        if ids.len() != n {
            return Err(invalid(
                "axes",
                "two points of the sweep resolve to the same configuration (an axis lists a \
                 value twice, or sets a key to its base value in two spellings)"
                    .into(),
            ));
        }
        let sweep_id = short_hash(&ids.join("\n"));
        let mut keys: Vec<String> = axis_values.iter().map(|(k, _)| k.clone()).collect();
        keys.extend(ranges.keys().cloned());
        keys.sort();
        Ok(Self {
            source: path.to_path_buf(),
            base,
            out_dir: out,
            keys,
            runs,
            select: file.select,
            sweep_id,
        })
    }

    /// The runs of shard `shard` (runs `i` with `i % count == index`).
    pub fn shard(&self, shard: Shard) -> Vec<&PlannedRun> {
        self.runs
            .iter()
            .filter(|r| r.index % shard.count == shard.index)
            .collect()
    }
}

/// One shard of a sweep: `index` in `0..count`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shard {
    /// This shard, from 0.
    pub index: usize,
    /// Number of shards, at least 1.
    pub count: usize,
}

impl Shard {
    /// The whole sweep.
    pub const ALL: Shard = Shard { index: 0, count: 1 };

    /// A checked shard.
    pub fn new(index: usize, count: usize) -> Result<Self, SweepError> {
        let shard = format!("{index}/{count}");
        if count == 0 {
            return Err(SweepError::Shard {
                shard,
                message: "the number of shards N must be at least 1, found 0".into(),
            });
        }
        if index >= count {
            return Err(SweepError::Shard {
                shard,
                message: format!("the shard index must be in 0..{count} (0..N), found {index}"),
            });
        }
        Ok(Self { index, count })
    }

    /// Parses `I/N`.
    pub fn parse(text: &str) -> Result<Self, SweepError> {
        let bad = |message: String| SweepError::Shard {
            shard: text.into(),
            message,
        };
        let (i, n) = text
            .split_once('/')
            .ok_or_else(|| bad("expected I/N, e.g. 0/4".into()))?;
        let parse = |s: &str, what: &str| {
            s.trim().parse::<usize>().map_err(|_| {
                bad(format!(
                    "{what} must be a non-negative integer, found `{}`",
                    s.trim()
                ))
            })
        };
        Self::new(parse(i, "I")?, parse(n, "N")?)
    }

    /// The shard of a Slurm array task: `SLURM_ARRAY_TASK_ID` of `SLURM_ARRAY_TASK_COUNT`
    /// (with the array starting at 0); `None` outside an array job.
    pub fn from_slurm_env(
        task_id: Option<&str>,
        task_count: Option<&str>,
    ) -> Result<Option<Self>, SweepError> {
        match (task_id, task_count) {
            (Some(i), Some(n)) => Self::parse(&format!("{i}/{n}")).map(Some),
            (Some(i), None) => Err(SweepError::Shard {
                shard: format!("{i}/?"),
                message: "SLURM_ARRAY_TASK_ID is set but SLURM_ARRAY_TASK_COUNT is not".into(),
            }),
            _ => Ok(None),
        }
    }
}
