//! Checkpoints: model weights and optimiser state as burn records (burnpack), plus our JSON
//! manifest.
//!
//! ```text
//! RUN_DIR/checkpoints/epoch-0007/{model.bpk, optimizer.bpk, manifest.json}
//! RUN_DIR/latest      "epoch-0007"   (the most recent checkpoint; --resume starts there)
//! RUN_DIR/best        "epoch-0005"   (the best on validation so far)
//! ```
//!
//! A checkpoint is written into a fresh temporary directory (every file fsynced), renamed into
//! place, and only then do the `latest` / `best` pointers (written atomically) move to it; old
//! checkpoints are pruned last. A crash at any point leaves the previous pointers valid.
use std::fs;
use std::path::{Path, PathBuf};

use burn::module::Module;
use burn::optim::{ModuleOptimizer, OptimizerRecord};
use burn::store::{ModuleRecord, RecordError};
use burn::tensor::Bytes;
use fairrep_data::{Preprocessing, Schema};
use fairrep_model::FairModel;
use serde::{Deserialize, Serialize};

use crate::config::ConfigFile;
use crate::fsutil::{self, FsError};
use crate::train::EpochRecord;

pub const CHECKPOINTS: &str = "checkpoints";
pub const LATEST: &str = "latest";
pub const BEST: &str = "best";
pub const MODEL_FILE: &str = "model.bpk";
pub const OPTIMIZER_FILE: &str = "optimizer.bpk";
pub const MANIFEST_FILE: &str = "manifest.json";
/// The burn version the records are written with (pinned in the workspace).
pub const BURN_VERSION: &str = "0.22.1";
/// Version of the manifest format.
pub const MANIFEST_FORMAT: u32 = 1;

/// The best epoch on validation so far.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BestEpoch {
    pub epoch: usize,
    /// `valid task loss + lambda * valid penalty`.
    pub objective: f64,
    /// Its checkpoint directory's name under `checkpoints/`.
    pub checkpoint: String,
}

/// Everything besides the tensors that a checkpoint needs to resume and to be understood.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Manifest {
    pub format: u32,
    pub fairrep_version: String,
    pub burn_version: String,
    /// Epochs completed (1-based number of the last one).
    pub epoch: usize,
    pub seed: u64,
    /// The resolved configuration.
    pub config: ConfigFile,
    /// What the inputs, groups and targets mean.
    pub schema: Schema,
    /// The preprocessing statistics fitted on the train split.
    pub preprocessing: Preprocessing,
    /// One record per completed epoch.
    pub history: Vec<EpochRecord>,
    pub best: Option<BestEpoch>,
    /// The device the run was trained on.
    pub device: String,
    /// Seconds spent training so far, over all sessions.
    pub train_seconds: f64,
}

/// A checkpoint that cannot be written or read.
#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    #[error(transparent)]
    Fs(#[from] FsError),
    #[error("`{}`: {source}", path.display())]
    Record {
        path: PathBuf,
        #[source]
        source: RecordError,
    },
    #[error("`{}`: invalid manifest: {source}", path.display())]
    Manifest {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error("`{}` already exists and a pointer names it; refusing to overwrite it", path.display())]
    Exists { path: PathBuf },
    #[error("`{}` holds no checkpoint (no `{LATEST}` pointer): was the run killed before its first checkpoint?", path.display())]
    NoCheckpoint { path: PathBuf },
}

/// The directory name of the checkpoint after `epoch`.
pub fn checkpoint_name(epoch: usize) -> String {
    format!("epoch-{epoch:04}")
}

/// `RUN_DIR/checkpoints/NAME`.
pub fn checkpoint_dir(run_dir: &Path, name: &str) -> PathBuf {
    run_dir.join(CHECKPOINTS).join(name)
}

fn write_file(dir: &Path, name: &str, bytes: &[u8]) -> Result<(), FsError> {
    use std::io::Write;
    let path = dir.join(name);
    let mut file = fs::File::create(&path).map_err(|e| FsError::new("cannot create", &path, e))?;
    file.write_all(bytes)
        .and_then(|()| file.sync_all())
        .map_err(|e| FsError::new("cannot write", &path, e))
}

/// Reads a pointer file (`latest` or `best`); `None` when absent.
pub fn read_pointer(run_dir: &Path, pointer: &str) -> Result<Option<String>, FsError> {
    let path = run_dir.join(pointer);
    match fs::read_to_string(&path) {
        Ok(text) => Ok(Some(text.trim().to_string())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(FsError::new("cannot read", &path, e)),
    }
}

/// Writes the checkpoint of `manifest.epoch`, points `latest` (and `best` when `is_best`) at
/// it and prunes the checkpoints no pointer names. Returns its directory name.
pub fn save(
    run_dir: &Path,
    manifest: &Manifest,
    model: &FairModel,
    optimizer: &ModuleOptimizer,
    is_best: bool,
) -> Result<String, CheckpointError> {
    let name = checkpoint_name(manifest.epoch);
    let root = run_dir.join(CHECKPOINTS);
    fsutil::create_dir_all(&root)?;
    let tmp = root.join(format!(".{name}.tmp-{}", std::process::id()));
    if tmp.exists() {
        fs::remove_dir_all(&tmp).map_err(|e| FsError::new("cannot remove", &tmp, e))?;
    }
    fsutil::create_dir_all(&tmp)?;

    let model_bytes =
        model
            .clone()
            .into_record()
            .into_bytes()
            .map_err(|source| CheckpointError::Record {
                path: tmp.join(MODEL_FILE),
                source,
            })?;
    write_file(&tmp, MODEL_FILE, &model_bytes)?;
    let optim_bytes =
        optimizer
            .to_record()
            .into_bytes()
            .map_err(|source| CheckpointError::Record {
                path: tmp.join(OPTIMIZER_FILE),
                source,
            })?;
    write_file(&tmp, OPTIMIZER_FILE, &optim_bytes)?;
    let json = serde_json::to_vec_pretty(manifest).expect("the manifest serialises to JSON");
    write_file(&tmp, MANIFEST_FILE, &json)?;
    fsutil::sync_dir(&tmp)?;

    // A directory of this name can only be left over from a killed run that never pointed at
    // it (pointers name finished checkpoints of earlier epochs): replace it.
    let target = root.join(&name);
    let pointed = [read_pointer(run_dir, LATEST)?, read_pointer(run_dir, BEST)?];
    if target.exists() {
        if pointed.iter().flatten().any(|p| *p == name) {
            // Never overwrite a checkpoint a pointer names.
            let _ = fs::remove_dir_all(&tmp);
            return Err(CheckpointError::Exists { path: target });
        }
        fs::remove_dir_all(&target).map_err(|e| FsError::new("cannot remove", &target, e))?;
    }
    fs::rename(&tmp, &target).map_err(|e| FsError::new("cannot rename into", &target, e))?;
    fsutil::sync_dir(&root)?;

    fsutil::write_atomic(&run_dir.join(LATEST), name.as_bytes())?;
    if is_best {
        fsutil::write_atomic(&run_dir.join(BEST), name.as_bytes())?;
    }
    prune(run_dir)?;
    Ok(name)
}

/// Removes the checkpoints that neither pointer names (and stale temporary directories).
pub fn prune(run_dir: &Path) -> Result<(), FsError> {
    let keep: Vec<String> = [read_pointer(run_dir, LATEST)?, read_pointer(run_dir, BEST)?]
        .into_iter()
        .flatten()
        .collect();
    let root = run_dir.join(CHECKPOINTS);
    let entries = fs::read_dir(&root).map_err(|e| FsError::new("cannot list", &root, e))?;
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if !keep.contains(&name) {
            let path = entry.path();
            fs::remove_dir_all(&path).map_err(|e| FsError::new("cannot remove", &path, e))?;
        }
    }
    Ok(())
}

/// Reads a checkpoint's manifest.
pub fn load_manifest(dir: &Path) -> Result<Manifest, CheckpointError> {
    let path = dir.join(MANIFEST_FILE);
    let bytes = fs::read(&path).map_err(|e| FsError::new("cannot read", &path, e))?;
    serde_json::from_slice(&bytes).map_err(|source| CheckpointError::Manifest { path, source })
}

fn read_bytes(path: &Path) -> Result<Bytes, FsError> {
    fs::read(path)
        .map(Bytes::from_bytes_vec)
        .map_err(|e| FsError::new("cannot read", path, e))
}

/// Loads a checkpoint's weights into `model` (same architecture; parameter ids are restored
/// so the optimiser state matches).
pub fn load_model(dir: &Path, model: FairModel) -> Result<FairModel, CheckpointError> {
    let path = dir.join(MODEL_FILE);
    let record =
        ModuleRecord::from_bytes(read_bytes(&path)?).map_err(|source| CheckpointError::Record {
            path: path.clone(),
            source,
        })?;
    model
        .try_load_record(record)
        .map_err(|source| CheckpointError::Record { path, source })
}

/// Loads a checkpoint's optimiser state.
///
/// burn 0.22 puts the loaded state on `Device::default()` and moves it to each parameter's
/// device at the first step; set `BURN_DEVICE=flex` to keep a CPU-only run off wgpu.
pub fn load_optimizer(
    dir: &Path,
    optimizer: ModuleOptimizer,
) -> Result<ModuleOptimizer, CheckpointError> {
    let path = dir.join(OPTIMIZER_FILE);
    let record = OptimizerRecord::from_bytes(read_bytes(&path)?)
        .map_err(|source| CheckpointError::Record { path, source })?;
    Ok(optimizer.load_record(record))
}

/// The directory of the checkpoint `latest` names.
pub fn latest_dir(run_dir: &Path) -> Result<PathBuf, CheckpointError> {
    match read_pointer(run_dir, LATEST)? {
        Some(name) => Ok(checkpoint_dir(run_dir, &name)),
        None => Err(CheckpointError::NoCheckpoint {
            path: run_dir.to_path_buf(),
        }),
    }
}
