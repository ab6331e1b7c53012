//! `fairrep export`: a run's representation of one split as `.npy` files for other tools: a
//! trained encoder's `z`, or a FERM run's projected features.
//!
//! `--out DIR/z.npy` writes
//! - `DIR/z.npy`: `z`, float32 `[n, k]`;
//! - `DIR/z_s.npy`: the group id of each row, int64 `[n]` (names in the sidecar);
//! - `DIR/z_labels.npy`: the task labels, float32 `[n, T]` (task order in the sidecar);
//! - `DIR/z.json`: the sidecar (run, checkpoint, split, shapes, group and task names, files).
//!
//! Each file is written atomically.
use std::path::{Path, PathBuf};

use burn::tensor::Device;
use fairrep_data::SplitName;
use fairrep_data::fs::{self as fsutil, FsError};
use fairrep_data::matrix::npy_bytes;
use serde::{Deserialize, Serialize};

use crate::representation::Representation;
use crate::trained::TrainedError;

/// Why an export failed.
#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    /// The run cannot be opened.
    #[error(transparent)]
    Trained(#[from] TrainedError),
    /// A file cannot be written.
    #[error(transparent)]
    Fs(#[from] FsError),
    /// The output is not a `.npy` name.
    #[error("--out `{}`: expected a file name ending in .npy", path.display())]
    Extension {
        /// The name given.
        path: PathBuf,
    },
}

/// The sidecar `.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ExportSidecar {
    /// The run directory.
    pub run: PathBuf,
    /// What the representation comes from: the encoder's checkpoint directory, or a FERM
    /// run's `representation.json`.
    pub checkpoint: PathBuf,
    /// The kind of representation (`"mmd λ=5"`, `"linear FERM"`).
    pub representation: String,
    /// The dataset.
    pub dataset: String,
    /// The split exported.
    pub split: SplitName,
    /// Rows.
    pub rows: usize,
    /// Size of `z`.
    pub latent: usize,
    /// Group names (the ids in `z_s.npy` index them).
    pub groups: Vec<String>,
    /// The sensitive column.
    pub sensitive_column: String,
    /// Task names (the columns of `z_labels.npy`).
    pub tasks: Vec<String>,
    /// File name of `z` (next to the sidecar).
    pub z: String,
    /// File name of the group ids.
    pub s: String,
    /// File name of the labels.
    pub labels: String,
}

/// The file next to `out` with `suffix` appended to its stem and extension `ext`.
fn sibling(out: &Path, suffix: &str, ext: &str) -> PathBuf {
    let stem = out
        .file_stem()
        .map_or_else(String::new, |s| s.to_string_lossy().into_owned());
    out.with_file_name(format!("{stem}{suffix}.{ext}"))
}

fn file_name(p: &Path) -> String {
    p.file_name()
        .map_or_else(String::new, |s| s.to_string_lossy().into_owned())
}

/// Writes the export of `run_dir`'s `split`; returns the sidecar.
pub fn export(
    run_dir: &Path,
    split: SplitName,
    out: &Path,
    data_dir: Option<&Path>,
    device: &Device,
) -> Result<ExportSidecar, ExportError> {
    if out.extension().and_then(|e| e.to_str()) != Some("npy") {
        return Err(ExportError::Extension {
            path: out.to_path_buf(),
        });
    }
    let run = Representation::open(run_dir, device)?;
    let ds = run.own_data(data_dir)?;
    let rows = ds.split(split);
    let z = run.encode(rows, split.name(), device)?;
    if let Some(parent) = out.parent().filter(|p| !p.as_os_str().is_empty()) {
        fsutil::create_dir_all(parent)?;
    }
    let s_path = sibling(out, "_s", "npy");
    let labels_path = sibling(out, "_labels", "npy");
    let json_path = sibling(out, "", "json");
    let z_bytes: Vec<u8> = z.values.iter().flat_map(|v| v.to_le_bytes()).collect();
    fsutil::write_atomic(out, &npy_bytes("<f4", &[z.rows, z.cols], &z_bytes))?;
    let s_bytes: Vec<u8> = rows
        .groups
        .iter()
        .flat_map(|&g| i64::from(g).to_le_bytes())
        .collect();
    let n = rows.len();
    fsutil::write_atomic(&s_path, &npy_bytes("<i8", &[n], &s_bytes))?;
    let n_tasks = rows.targets.len();
    let mut labels = Vec::with_capacity(n * n_tasks * 4);
    for i in 0..n {
        for t in &rows.targets {
            labels.extend_from_slice(&t[i].to_le_bytes());
        }
    }
    fsutil::write_atomic(&labels_path, &npy_bytes("<f4", &[n, n_tasks], &labels))?;
    let sidecar = ExportSidecar {
        run: run.run_dir().to_path_buf(),
        checkpoint: run.source().to_path_buf(),
        representation: run.describe(),
        dataset: ds.name.clone(),
        split,
        rows: z.rows,
        latent: z.cols,
        groups: ds.schema.groups.clone(),
        sensitive_column: ds.schema.sensitive_column.clone(),
        tasks: ds.task_names(),
        z: file_name(out),
        s: file_name(&s_path),
        labels: file_name(&labels_path),
    };
    let json = serde_json::to_string_pretty(&sidecar).expect("the sidecar serialises");
    fsutil::write_atomic(&json_path, format!("{json}\n").as_bytes())?;
    Ok(sidecar)
}
