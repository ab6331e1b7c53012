//! Results as data: one row per finished run, kept as `runs/ID/result.json` (written once,
//! atomically, with a checksum), merged by [`collect`] into `results.csv` and
//! `results.jsonl`. Each run has its own file, so any number of processes (jobs, shards on
//! several machines) finish runs at once without sharing a file; the sweep directory's
//! `sweep.json` names the sweep that owns it.
use std::collections::BTreeMap;
use std::fs::OpenOptions;
use std::io::Write as _;
use std::path::{Path, PathBuf};

use fairrep_data::fs::{self as fsutil, FsError};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::error::SweepError;
use crate::spec::{PlannedRun, SelectSection, SweepPlan, run_root};

/// Under the sweep directory: what the sweep is (its id, keys, runs, selection rules).
pub const SWEEP_FILE: &str = "sweep.json";
/// Under a run's folder: its row, once finished.
pub const RESULT_FILE: &str = "result.json";
/// The merged rows, as CSV.
pub const RESULTS_CSV: &str = "results.csv";
/// The merged rows, one JSON object per line.
pub const RESULTS_JSONL: &str = "results.jsonl";
/// Metrics reported per task and split.
pub const TASK_METRICS: &[&str] = &["accuracy", "dp_gap", "eo_gap", "ks", "auc", "loss"];

/// Metrics reported per task, split and sensitive attribute with several attributes.
pub const ATTRIBUTE_METRICS: &[&str] = &["dp_gap", "eo_gap", "ks"];

/// One run's results.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Row {
    /// The run's id (hash of its resolved configuration and seed).
    pub run_id: String,
    /// Its configuration's id (the same over seeds).
    pub config_id: String,
    /// The run seed.
    pub seed: u64,
    /// The swept keys' values.
    pub params: BTreeMap<String, Value>,
    /// `SPLIT.TASK.METRIC` (split `valid` or `test`, metric one of [`TASK_METRICS`]),
    /// `SPLIT.penalty`, and with several sensitive attributes `SPLIT.TASK.METRIC:ATTRIBUTE`
    /// (metric one of [`ATTRIBUTE_METRICS`]); absent when undefined.
    pub metrics: BTreeMap<String, f64>,
    /// The epoch whose checkpoint was tested (1-based).
    pub best_epoch: usize,
    /// Epochs trained.
    pub epochs: usize,
    /// Training time summed over the run's sessions.
    pub train_seconds: f64,
    /// Wall time of the run's last session.
    pub wall_seconds: f64,
    /// The device, in words.
    pub device: String,
    /// The run directory.
    pub run_dir: PathBuf,
}

/// `result.json`: a row and the SHA-256 of its JSON text.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct ResultFile {
    format: u32,
    row: Row,
    checksum: String,
}

fn row_checksum(row: &Row) -> String {
    let text = serde_json::to_string(row).expect("rows serialise");
    Sha256::digest(text.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn toml_to_json(value: &toml::Value) -> Value {
    serde_json::to_value(value).unwrap_or_else(|_| Value::String(value.to_string()))
}

/// The row of a finished run from its `summary.json`.
pub fn row_from_summary(run: &PlannedRun, run_dir: &Path) -> Result<Row, SweepError> {
    let path = run_dir.join(fairrep_train::records::SUMMARY_FILE);
    let text = std::fs::read_to_string(&path).map_err(|source| SweepError::Read {
        path: path.clone(),
        source,
    })?;
    let bad = |message: String| SweepError::Summary {
        path: path.clone(),
        message,
    };
    let summary: Value = serde_json::from_str(&text).map_err(|e| bad(format!("not JSON: {e}")))?;
    let mut metrics = BTreeMap::new();
    for split in ["valid", "test"] {
        let tasks = summary[split]["tasks"]
            .as_object()
            .ok_or_else(|| bad(format!("no `{split}.tasks` object")))?;
        for (task, values) in tasks {
            for metric in TASK_METRICS {
                if let Some(v) = values[*metric].as_f64() {
                    metrics.insert(format!("{split}.{task}.{metric}"), v);
                }
            }
        }
        if let Some(v) = summary[split]["penalty"].as_f64() {
            metrics.insert(format!("{split}.penalty"), v);
        }
        // Several sensitive attributes: `tasks` holds the intersectional gaps; each
        // attribute's gaps get `SPLIT.TASK.METRIC:ATTRIBUTE`.
        if let Some(attributes) = summary[split]["attributes"].as_object() {
            for (attribute, values) in attributes {
                let Some(tasks) = values["tasks"].as_object() else {
                    continue;
                };
                for (task, values) in tasks {
                    for metric in ATTRIBUTE_METRICS {
                        if let Some(v) = values[*metric].as_f64() {
                            metrics.insert(format!("{split}.{task}.{metric}:{attribute}"), v);
                        }
                    }
                }
            }
        }
    }
    let number = |key: &str| {
        summary[key]
            .as_f64()
            .ok_or_else(|| bad(format!("no number `{key}`")))
    };
    Ok(Row {
        run_id: run.id.clone(),
        config_id: run.config_id.clone(),
        seed: run.seed,
        params: run
            .params
            .iter()
            .map(|(k, v)| (k.clone(), toml_to_json(v)))
            .collect(),
        metrics,
        best_epoch: number("best_epoch")? as usize,
        epochs: number("epochs")? as usize,
        train_seconds: number("train_seconds")?,
        wall_seconds: number("wall_seconds")?,
        device: summary["device"].as_str().unwrap_or("").to_string(),
        run_dir: run_dir.to_path_buf(),
    })
}

/// Writes a run's `result.json` (atomically).
pub fn write_result(root: &Path, row: &Row) -> Result<(), SweepError> {
    let file = ResultFile {
        format: 1,
        checksum: row_checksum(row),
        row: row.clone(),
    };
    let text = serde_json::to_string_pretty(&file).expect("rows serialise");
    fsutil::write_atomic(&root.join(RESULT_FILE), format!("{text}\n").as_bytes())?;
    Ok(())
}

/// Reads a run's `result.json`: `None` when the run has not finished; an error when the file
/// was edited, or belongs to another run.
pub fn read_result(root: &Path, run_id: &str) -> Result<Option<Row>, SweepError> {
    let path = root.join(RESULT_FILE);
    let text = match std::fs::read_to_string(&path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(source) => return Err(SweepError::Read { path, source }),
    };
    let tampered = |message: String| SweepError::Tampered {
        path: path.clone(),
        message,
    };
    let file: ResultFile =
        serde_json::from_str(&text).map_err(|e| tampered(format!("not a result record: {e}")))?;
    if file.checksum != row_checksum(&file.row) {
        return Err(tampered(format!(
            "its checksum {} does not match its row (edited by hand?); delete the file to \
             rebuild it from the run's summary.json",
            file.checksum
        )));
    }
    if file.row.run_id != run_id {
        return Err(tampered(format!(
            "it holds run {}, expected run {run_id}",
            file.row.run_id
        )));
    }
    Ok(Some(file.row))
}

/// A planned run as recorded in `sweep.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunEntry {
    /// Run id.
    pub id: String,
    /// Configuration id.
    pub config_id: String,
    /// Seed.
    pub seed: u64,
    /// Swept values.
    pub params: BTreeMap<String, Value>,
}

/// `sweep.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SweepRecord {
    /// Format version (1).
    pub format: u32,
    /// The sweep's id.
    pub sweep_id: String,
    /// The sweep file it was planned from.
    pub source: PathBuf,
    /// The swept keys.
    pub keys: Vec<String>,
    /// The selection rules.
    pub select: SelectSection,
    /// The runs, in plan order.
    pub runs: Vec<RunEntry>,
}

impl SweepRecord {
    /// The record of a plan.
    pub fn of(plan: &SweepPlan) -> Self {
        Self {
            format: 1,
            sweep_id: plan.sweep_id.clone(),
            source: plan.source.clone(),
            keys: plan.keys.clone(),
            select: plan.select.clone(),
            runs: plan
                .runs
                .iter()
                .map(|r| RunEntry {
                    id: r.id.clone(),
                    config_id: r.config_id.clone(),
                    seed: r.seed,
                    params: r
                        .params
                        .iter()
                        .map(|(k, v)| (k.clone(), toml_to_json(v)))
                        .collect(),
                })
                .collect(),
        }
    }
}

/// Reads `DIR/sweep.json`.
pub fn read_sweep_record(dir: &Path) -> Result<SweepRecord, SweepError> {
    let path = dir.join(SWEEP_FILE);
    let text = std::fs::read_to_string(&path).map_err(|source| SweepError::Read {
        path: path.clone(),
        source,
    })?;
    serde_json::from_str(&text).map_err(|e| SweepError::Tampered {
        path,
        message: format!("not a sweep record: {e}"),
    })
}

/// Creates the sweep directory and its `sweep.json`, or checks that the one there is this
/// sweep's. The record is created exclusively (written aside, then hard-linked into place),
/// so of two different sweeps started together on one directory, one is refused.
/// When the sweep is the same but its `[select]` rules were edited, the record takes the new
/// rules (they choose among the results; they do not change any run).
pub fn init_sweep_dir(plan: &SweepPlan) -> Result<(), SweepError> {
    let dir = &plan.out_dir;
    fsutil::create_dir_all(&dir.join("runs"))?;
    let path = dir.join(SWEEP_FILE);
    let record = SweepRecord::of(plan);
    if !path.exists() {
        let tmp = dir.join(format!(".{SWEEP_FILE}.tmp-{}", std::process::id()));
        let text = serde_json::to_string_pretty(&record).expect("records serialise");
        let write = || -> std::io::Result<()> {
            let mut f = OpenOptions::new().write(true).create_new(true).open(&tmp)?;
            f.write_all(format!("{text}\n").as_bytes())?;
            f.sync_all()
        };
        write().map_err(|e| FsError::new("cannot write", &tmp, e))?;
        let linked = std::fs::hard_link(&tmp, &path);
        let _ = std::fs::remove_file(&tmp);
        match linked {
            Ok(()) => {
                fsutil::sync_dir(dir)?;
                return Ok(());
            }
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(FsError::new("cannot create", &path, e).into()),
        }
    }
    let found = read_sweep_record(dir)?;
    if found.sweep_id != plan.sweep_id {
        return Err(SweepError::AnotherSweep {
            dir: dir.clone(),
            found: found.sweep_id,
            expected: plan.sweep_id.clone(),
        });
    }
    if found.select != record.select {
        // The same runs with edited `[select]` rules: the record follows the sweep file, so
        // `collect` (here or later, on its own) reports with the rules the user now has.
        let text = serde_json::to_string_pretty(&record).expect("records serialise");
        fsutil::write_atomic(&path, format!("{text}\n").as_bytes())?;
    }
    Ok(())
}

/// What [`collect`] found.
#[derive(Debug, Clone)]
pub struct Collected {
    /// The sweep's record.
    pub record: SweepRecord,
    /// The finished runs' rows, in plan order.
    pub rows: Vec<Row>,
    /// The ids of the runs not finished (yet).
    pub missing: Vec<String>,
}

/// Reads every finished run's row of the sweep in `dir` (checking each file).
pub fn collect(dir: &Path) -> Result<Collected, SweepError> {
    let record = read_sweep_record(dir)?;
    let mut rows = Vec::new();
    let mut missing = Vec::new();
    for entry in &record.runs {
        match read_result(&run_root(dir, &entry.id), &entry.id)? {
            Some(row) => {
                if row.config_id != entry.config_id || row.seed != entry.seed {
                    return Err(SweepError::Tampered {
                        path: run_root(dir, &entry.id).join(RESULT_FILE),
                        message: "its configuration id or seed differs from sweep.json's".into(),
                    });
                }
                rows.push(row);
            }
            None => missing.push(entry.id.clone()),
        }
    }
    Ok(Collected {
        record,
        rows,
        missing,
    })
}

/// The columns of the merged files, in order: `run_id`, `config_id`, `seed`, the swept keys,
/// the metrics (valid first, then test), then `best_epoch`, `epochs`, `train_seconds`,
/// `wall_seconds`, `device`, `run_dir`.
pub fn columns(keys: &[String], rows: &[Row]) -> Vec<String> {
    let mut metric_names: Vec<&String> = rows.iter().flat_map(|r| r.metrics.keys()).collect();
    metric_names.sort_by_key(|m| (!m.starts_with("valid."), m.to_string()));
    metric_names.dedup();
    let mut out: Vec<String> = vec!["run_id".into(), "config_id".into(), "seed".into()];
    out.extend(keys.iter().cloned());
    out.extend(metric_names.into_iter().cloned());
    out.extend(
        [
            "best_epoch",
            "epochs",
            "train_seconds",
            "wall_seconds",
            "device",
            "run_dir",
        ]
        .map(String::from),
    );
    out
}

/// A row's value in a column (`Null` when absent).
pub fn cell(row: &Row, column: &str) -> Value {
    match column {
        "run_id" => row.run_id.clone().into(),
        "config_id" => row.config_id.clone().into(),
        "seed" => row.seed.into(),
        "best_epoch" => row.best_epoch.into(),
        "epochs" => row.epochs.into(),
        "train_seconds" => row.train_seconds.into(),
        "wall_seconds" => row.wall_seconds.into(),
        "device" => row.device.clone().into(),
        "run_dir" => row.run_dir.to_string_lossy().into_owned().into(),
        other => row
            .params
            .get(other)
            .cloned()
            .or_else(|| row.metrics.get(other).map(|v| (*v).into()))
            .unwrap_or(Value::Null),
    }
}

fn csv_text(value: &Value) -> String {
    match value {
        Value::Null => String::new(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// Writes `results.csv` and `results.jsonl` (atomically) into `dir`.
pub fn write_results(dir: &Path, keys: &[String], rows: &[Row]) -> Result<(), SweepError> {
    let cols = columns(keys, rows);
    let mut writer = csv::Writer::from_writer(Vec::new());
    let csv_err = |e: csv::Error| FsError::new("cannot format", &dir.join(RESULTS_CSV), e.into());
    writer.write_record(&cols).map_err(csv_err)?;
    let mut jsonl = String::new();
    for row in rows {
        let values: Vec<Value> = cols.iter().map(|c| cell(row, c)).collect();
        writer
            .write_record(values.iter().map(csv_text))
            .map_err(csv_err)?;
        let object: serde_json::Map<String, Value> = cols
            .iter()
            .cloned()
            .zip(values)
            .filter(|(_, v)| !v.is_null())
            .collect();
        jsonl.push_str(&serde_json::to_string(&object).expect("rows serialise"));
        jsonl.push('\n');
    }
    let bytes = writer
        .into_inner()
        .map_err(|e| FsError::new("cannot format", &dir.join(RESULTS_CSV), e.into_error()))?;
    fsutil::write_atomic(&dir.join(RESULTS_CSV), &bytes)?;
    fsutil::write_atomic(&dir.join(RESULTS_JSONL), jsonl.as_bytes())?;
    Ok(())
}
