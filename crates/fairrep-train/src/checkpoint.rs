//! Checkpoints: model weights and optimiser state as burn records (burnpack), plus our JSON
//! manifest ([`Manifest`]).
//!
//! ```text
//! RUN_DIR/checkpoints/epoch-0007/{model.bpk, optimizer.bpk, manifest.json, manifest.sha256}
//! RUN_DIR/latest      "epoch-0007"   (the most recent checkpoint; --resume starts there)
//! RUN_DIR/best        "epoch-0005"   (the best on validation so far)
//! RUN_DIR/.lock       held (advisory lock) while a process trains in the run directory
//! ```
//!
//! Writing ([`save`]): the four files go into a fresh temporary directory (each fsynced; the
//! manifest carries the SHA-256 of both records, `manifest.sha256` the manifest's own), which is renamed into place; then `latest`
//! moves to it, then `best` when it is the new best (each pointer written atomically); old
//! checkpoints are pruned last. A failed write removes its temporary directory. A crash at any
//! step leaves the previous checkpoint and pointers valid, and the new checkpoint's manifest
//! says which epoch is the best; [`reconcile`], run before every resume, makes the pointers
//! agree with the manifest that `latest` names again and removes what a killed session left
//! half-done.
//!
//! Pruning removes only directories named `epoch-NNNN` whose manifest carries this run's id
//! (never a user's file, another run's checkpoint, or one a pointer or the newest manifest
//! names). Reading checks a manifest's consistency (its epoch against its directory name and
//! its history, its best epoch) and the records' checksums.
use std::fs;
use std::path::{Path, PathBuf};

use burn::module::Module;
use burn::optim::{ModuleOptimizer, OptimizerRecord};
use burn::store::{ModuleRecord, RecordError};
use burn::tensor::Bytes;
use fairrep_data::fs::{self as fsutil, FsError};
use fairrep_model::FairModel;
use sha2::{Digest, Sha256};

use crate::records::{Checksums, MANIFEST_FORMAT, Manifest};

/// Folder of the checkpoints inside a run directory.
pub const CHECKPOINTS: &str = "checkpoints";
/// Pointer to the newest checkpoint.
pub const LATEST: &str = "latest";
/// Pointer to the best checkpoint on validation.
pub const BEST: &str = "best";
/// The model record.
pub const MODEL_FILE: &str = "model.bpk";
/// The optimiser record.
pub const OPTIMIZER_FILE: &str = "optimizer.bpk";
/// The manifest.
pub const MANIFEST_FILE: &str = "manifest.json";
/// The SHA-256 of the manifest as written, beside it (absent in checkpoints written before it
/// existed, which are read without the check).
pub const MANIFEST_DIGEST_FILE: &str = "manifest.sha256";
/// The lock file.
pub const LOCK_FILE: &str = ".lock";

/// A checkpoint that cannot be written or read.
#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    /// A file operation failed.
    #[error(transparent)]
    Fs(#[from] FsError),
    /// burn could not encode or decode a record.
    #[error("`{}`: {source}", path.display())]
    Record {
        /// The record file.
        path: PathBuf,
        /// burn's error.
        #[source]
        source: RecordError,
    },
    /// The manifest is not valid JSON of the manifest format.
    #[error("`{}`: invalid manifest: {source}", path.display())]
    Manifest {
        /// The manifest file.
        path: PathBuf,
        /// The parser's error.
        #[source]
        source: serde_json::Error,
    },
    /// The manifest parsed but contradicts itself or its directory.
    #[error("`{}`: inconsistent manifest: {message}", path.display())]
    Inconsistent {
        /// The manifest file.
        path: PathBuf,
        /// What does not agree.
        message: String,
    },
    /// A record's checksum differs from the manifest's.
    #[error(
        "`{}` is corrupt: its SHA-256 is {found}, the manifest expects {expected}",
        path.display()
    )]
    Corrupt {
        /// The record file.
        path: PathBuf,
        /// The manifest's digest.
        expected: String,
        /// The file's digest.
        found: String,
    },
    /// A manifest differs from the digest written beside it.
    #[error(
        "`{}` was changed after it was written: its SHA-256 is {found}, `{MANIFEST_DIGEST_FILE}` \
         beside it records {expected}; restore the file or start a new run",
        path.display()
    )]
    ManifestEdited {
        /// The manifest.
        path: PathBuf,
        /// The recorded digest.
        expected: String,
        /// The file's digest.
        found: String,
    },
    /// A pointer file does not hold a checkpoint name.
    #[error(
        "`{}` holds `{found}`, expected a checkpoint name like `epoch-0007`",
        path.display()
    )]
    BadPointer {
        /// The pointer file.
        path: PathBuf,
        /// Its content.
        found: String,
    },
    /// A pointer names a checkpoint that does not exist.
    #[error("`{}` names `{name}`, which is not in `{}`", pointer.display(), dir.display())]
    Dangling {
        /// The pointer file.
        pointer: PathBuf,
        /// The checkpoint it names.
        name: String,
        /// The checkpoints folder.
        dir: PathBuf,
    },
    /// A checkpoint of this epoch exists and a pointer names it.
    #[error("`{}` already exists and a pointer names it; refusing to overwrite it", path.display())]
    Exists {
        /// The checkpoint directory.
        path: PathBuf,
    },
    /// The run directory has no checkpoint yet.
    #[error(
        "`{}` holds no checkpoint (no `{LATEST}` pointer): was the run killed before its first \
         checkpoint?",
        path.display()
    )]
    NoCheckpoint {
        /// The run directory.
        path: PathBuf,
    },
    /// Another process holds the run directory's lock.
    #[error(
        "`{}` is in use by another fairrep process (its `{LOCK_FILE}` is locked); wait for it to \
         finish",
        path.display()
    )]
    Locked {
        /// The run directory.
        path: PathBuf,
    },
}

/// The directory name of the checkpoint after `epoch`.
pub fn checkpoint_name(epoch: usize) -> String {
    format!("epoch-{epoch:04}")
}

/// The epoch of a checkpoint directory name (`epoch-NNNN`, at least four digits).
pub fn parse_checkpoint_name(name: &str) -> Option<usize> {
    let digits = name.strip_prefix("epoch-")?;
    if digits.len() < 4 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// `RUN_DIR/checkpoints/NAME`.
pub fn checkpoint_dir(run_dir: &Path, name: &str) -> PathBuf {
    run_dir.join(CHECKPOINTS).join(name)
}

/// An exclusive advisory lock on a run directory, held until dropped (or the process ends).
#[derive(Debug)]
pub struct RunLock {
    _file: fs::File,
}

impl RunLock {
    /// Locks `run_dir` (creating its lock file), or fails at once if another process holds it.
    pub fn acquire(run_dir: &Path) -> Result<Self, CheckpointError> {
        let path = run_dir.join(LOCK_FILE);
        let file = fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(|e| FsError::new("cannot open", &path, e))?;
        match file.try_lock() {
            Ok(()) => Ok(Self { _file: file }),
            Err(fs::TryLockError::WouldBlock) => Err(CheckpointError::Locked {
                path: run_dir.to_path_buf(),
            }),
            Err(fs::TryLockError::Error(e)) => Err(FsError::new("cannot lock", &path, e).into()),
        }
    }
}

fn write_file(dir: &Path, name: &str, bytes: &[u8]) -> Result<(), FsError> {
    use std::io::Write;
    let path = dir.join(name);
    let mut file = fs::File::create(&path).map_err(|e| FsError::new("cannot create", &path, e))?;
    file.write_all(bytes)
        .and_then(|()| file.sync_all())
        .map_err(|e| FsError::new("cannot write", &path, e))
}

/// Lowercase hex SHA-256.
fn sha256(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Reads a pointer file (`latest` or `best`); `None` when absent. Its content must be a
/// checkpoint name (nothing that leads outside `checkpoints/`).
pub fn read_pointer(run_dir: &Path, pointer: &str) -> Result<Option<String>, CheckpointError> {
    let path = run_dir.join(pointer);
    let text = match fs::read_to_string(&path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(FsError::new("cannot read", &path, e).into()),
    };
    let name = text.trim();
    if parse_checkpoint_name(name).is_none() {
        return Err(CheckpointError::BadPointer {
            path,
            found: name.chars().take(80).collect(),
        });
    }
    Ok(Some(name.to_string()))
}

/// The record files and manifest of one checkpoint, encoded.
struct Encoded {
    model: Vec<u8>,
    optimizer: Vec<u8>,
    manifest: Vec<u8>,
}

fn encode(
    manifest: &Manifest,
    model: &FairModel,
    optimizer: &ModuleOptimizer,
    dir: &Path,
) -> Result<Encoded, CheckpointError> {
    let record_err = |file: &str| {
        let path = dir.join(file);
        move |source| CheckpointError::Record { path, source }
    };
    let model_bytes = model
        .clone()
        .into_record()
        .into_bytes()
        .map_err(record_err(MODEL_FILE))?
        .to_vec();
    let optim_bytes = optimizer
        .to_record()
        .into_bytes()
        .map_err(record_err(OPTIMIZER_FILE))?
        .to_vec();
    let mut manifest = manifest.clone();
    manifest.format = MANIFEST_FORMAT;
    manifest.checksums = Some(Checksums {
        model: sha256(&model_bytes),
        optimizer: sha256(&optim_bytes),
    });
    Ok(Encoded {
        model: model_bytes,
        optimizer: optim_bytes,
        manifest: serde_json::to_vec_pretty(&manifest).expect("the manifest serialises to JSON"),
    })
}

/// Writes the checkpoint of `manifest.epoch`, points `latest` (and `best` when `is_best`) at
/// it and prunes this run's checkpoints that neither pointer nor `manifest.best` names.
/// Returns its directory name.
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
    let written = (|| -> Result<(), CheckpointError> {
        fsutil::create_dir_all(&tmp)?;
        let encoded = encode(manifest, model, optimizer, &tmp)?;
        write_file(&tmp, MODEL_FILE, &encoded.model)?;
        write_file(&tmp, OPTIMIZER_FILE, &encoded.optimizer)?;
        write_file(&tmp, MANIFEST_FILE, &encoded.manifest)?;
        write_file(
            &tmp,
            MANIFEST_DIGEST_FILE,
            sha256(&encoded.manifest).as_bytes(),
        )?;
        fsutil::sync_dir(&tmp)?;
        Ok(())
    })();
    if let Err(e) = written {
        // A failed write (disk full, ...) leaves nothing half-written behind.
        let _ = fs::remove_dir_all(&tmp);
        return Err(e);
    }

    // A directory of this name can only be left over from a killed session that never pointed
    // at it (pointers name finished checkpoints of earlier epochs): replace it.
    let target = root.join(&name);
    let pointed = [read_pointer(run_dir, LATEST)?, read_pointer(run_dir, BEST)?];
    if target.exists() {
        if pointed.iter().flatten().any(|p| *p == name) {
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
    let mut keep = vec![name.clone()];
    keep.extend(manifest.best.as_ref().map(|b| b.checkpoint.clone()));
    prune(run_dir, &manifest.run_id, &keep)?;
    Ok(name)
}

/// Removes this run's checkpoints (directories named `epoch-NNNN` whose manifest carries
/// `run_id`) that are not in `keep` and that no pointer names. Anything else in
/// `checkpoints/` is left alone.
pub fn prune(run_dir: &Path, run_id: &str, keep: &[String]) -> Result<(), CheckpointError> {
    let mut keep: Vec<String> = keep.to_vec();
    keep.extend(read_pointer(run_dir, LATEST)?);
    keep.extend(read_pointer(run_dir, BEST)?);
    let root = run_dir.join(CHECKPOINTS);
    let entries = fs::read_dir(&root).map_err(|e| FsError::new("cannot list", &root, e))?;
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if keep.contains(&name) || parse_checkpoint_name(&name).is_none() {
            continue;
        }
        let path = entry.path();
        let is_dir = fs::symlink_metadata(&path).is_ok_and(|m| m.is_dir());
        let ours = is_dir
            && fs::read(path.join(MANIFEST_FILE))
                .ok()
                .and_then(|b| serde_json::from_slice::<Manifest>(&b).ok())
                .is_some_and(|m| m.run_id == run_id);
        if ours {
            fs::remove_dir_all(&path).map_err(|e| FsError::new("cannot remove", &path, e))?;
        }
    }
    Ok(())
}

/// Reads a checkpoint's manifest and checks that it agrees with its directory and itself:
/// the epoch is the directory's, the history has one record per epoch `1..=epoch`, the best
/// epoch is one of them.
pub fn load_manifest(dir: &Path) -> Result<Manifest, CheckpointError> {
    let path = dir.join(MANIFEST_FILE);
    let bytes = fs::read(&path).map_err(|e| FsError::new("cannot read", &path, e))?;
    let digest_path = dir.join(MANIFEST_DIGEST_FILE);
    match fs::read_to_string(&digest_path) {
        Ok(expected) => {
            let (expected, found) = (expected.trim().to_string(), sha256(&bytes));
            if expected != found {
                return Err(CheckpointError::ManifestEdited {
                    path,
                    expected,
                    found,
                });
            }
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(FsError::new("cannot read", &digest_path, e).into()),
    }
    let manifest: Manifest =
        serde_json::from_slice(&bytes).map_err(|source| CheckpointError::Manifest {
            path: path.clone(),
            source,
        })?;
    let bad = |message: String| CheckpointError::Inconsistent {
        path: path.clone(),
        message,
    };
    if !(1..=MANIFEST_FORMAT).contains(&manifest.format) {
        return Err(bad(format!(
            "format {} (this fairrep reads formats 1 to {MANIFEST_FORMAT})",
            manifest.format
        )));
    }
    let dir_epoch = dir
        .file_name()
        .and_then(|n| parse_checkpoint_name(&n.to_string_lossy()));
    if dir_epoch.is_some_and(|e| e != manifest.epoch) {
        return Err(bad(format!(
            "epoch {} in a directory of epoch {}",
            manifest.epoch,
            dir_epoch.unwrap_or_default()
        )));
    }
    let epochs: Vec<usize> = manifest.history.iter().map(|r| r.epoch).collect();
    if epochs != (1..=manifest.epoch).collect::<Vec<_>>() {
        return Err(bad(format!(
            "epoch {} with a history of epochs {epochs:?}",
            manifest.epoch
        )));
    }
    if let Some(best) = &manifest.best
        && (best.epoch == 0
            || best.epoch > manifest.epoch
            || parse_checkpoint_name(&best.checkpoint) != Some(best.epoch))
    {
        return Err(bad(format!(
            "best epoch {} (checkpoint `{}`) after {} epochs",
            best.epoch, best.checkpoint, manifest.epoch
        )));
    }
    Ok(manifest)
}

/// Reads a record file and checks it against the manifest's checksum (format 2).
fn read_record(dir: &Path, file: &str, expected: Option<&str>) -> Result<Bytes, CheckpointError> {
    let path = dir.join(file);
    let bytes = fs::read(&path).map_err(|e| FsError::new("cannot read", &path, e))?;
    if let Some(expected) = expected {
        let found = sha256(&bytes);
        if found != expected {
            return Err(CheckpointError::Corrupt {
                path,
                expected: expected.to_string(),
                found,
            });
        }
    }
    Ok(Bytes::from_bytes_vec(bytes))
}

/// Loads a checkpoint's weights into `model` (same architecture; parameter ids are restored
/// so the optimiser state matches), checking the record against `manifest`.
pub fn load_model(
    dir: &Path,
    manifest: &Manifest,
    model: FairModel,
) -> Result<FairModel, CheckpointError> {
    let expected = manifest.checksums.as_ref().map(|c| c.model.as_str());
    let bytes = read_record(dir, MODEL_FILE, expected)?;
    let path = dir.join(MODEL_FILE);
    let record = ModuleRecord::from_bytes(bytes).map_err(|source| CheckpointError::Record {
        path: path.clone(),
        source,
    })?;
    model
        .try_load_record(record)
        .map_err(|source| CheckpointError::Record { path, source })
}

/// Loads a checkpoint's optimiser state, checking the record against `manifest`.
///
/// burn 0.22 materialises the loaded state on `Device::default()` (moved to each parameter's
/// device at the first step); the `fairrep` binary makes that the training device.
pub fn load_optimizer(
    dir: &Path,
    manifest: &Manifest,
    optimizer: ModuleOptimizer,
) -> Result<ModuleOptimizer, CheckpointError> {
    let expected = manifest.checksums.as_ref().map(|c| c.optimizer.as_str());
    let bytes = read_record(dir, OPTIMIZER_FILE, expected)?;
    let record = OptimizerRecord::from_bytes(bytes).map_err(|source| CheckpointError::Record {
        path: dir.join(OPTIMIZER_FILE),
        source,
    })?;
    Ok(optimizer.load_record(record))
}

/// The checkpoint a pointer names, checked to exist.
pub fn pointed_dir(run_dir: &Path, pointer: &str) -> Result<Option<PathBuf>, CheckpointError> {
    let Some(name) = read_pointer(run_dir, pointer)? else {
        return Ok(None);
    };
    let dir = checkpoint_dir(run_dir, &name);
    if !dir.is_dir() {
        return Err(CheckpointError::Dangling {
            pointer: run_dir.join(pointer),
            name,
            dir: run_dir.join(CHECKPOINTS),
        });
    }
    Ok(Some(dir))
}

/// The newest checkpoint of a run to resume from, after repairing what a killed session can
/// leave: the `best` pointer is set to the best checkpoint that `latest`'s manifest records
/// (a kill between the two pointer moves leaves it behind), this run's checkpoints newer than
/// `latest` (written but never pointed at) and temporary files and directories are removed.
/// The caller holds the run's [`RunLock`].
pub fn reconcile(run_dir: &Path) -> Result<(PathBuf, Manifest), CheckpointError> {
    let Some(dir) = pointed_dir(run_dir, LATEST)? else {
        return Err(CheckpointError::NoCheckpoint {
            path: run_dir.to_path_buf(),
        });
    };
    let manifest = load_manifest(&dir)?;
    if let Some(best) = &manifest.best {
        let best_dir = checkpoint_dir(run_dir, &best.checkpoint);
        if !best_dir.is_dir() {
            return Err(CheckpointError::Dangling {
                pointer: dir.join(MANIFEST_FILE),
                name: best.checkpoint.clone(),
                dir: run_dir.join(CHECKPOINTS),
            });
        }
        if read_pointer(run_dir, BEST)?.as_deref() != Some(best.checkpoint.as_str()) {
            fsutil::write_atomic(&run_dir.join(BEST), best.checkpoint.as_bytes())?;
        }
    }
    remove_leftovers(run_dir, &manifest)?;
    Ok((dir, manifest))
}

/// Temporary files of atomic writes (`.NAME.tmp-PID`) in the run directory, temporary
/// checkpoint directories, and this run's checkpoints newer than `latest`.
fn remove_leftovers(run_dir: &Path, latest: &Manifest) -> Result<(), CheckpointError> {
    let is_temp = |name: &str| name.starts_with('.') && name.contains(".tmp-");
    for entry in fs::read_dir(run_dir)
        .map_err(|e| FsError::new("cannot list", run_dir, e))?
        .flatten()
    {
        let name = entry.file_name().to_string_lossy().into_owned();
        if is_temp(&name) && entry.file_type().is_ok_and(|t| t.is_file()) {
            let path = entry.path();
            fs::remove_file(&path).map_err(|e| FsError::new("cannot remove", &path, e))?;
        }
    }
    let root = run_dir.join(CHECKPOINTS);
    for entry in fs::read_dir(&root)
        .map_err(|e| FsError::new("cannot list", &root, e))?
        .flatten()
    {
        let name = entry.file_name().to_string_lossy().into_owned();
        let path = entry.path();
        let is_dir = fs::symlink_metadata(&path).is_ok_and(|m| m.is_dir());
        let temp_checkpoint = is_temp(&name)
            && name
                .strip_prefix('.')
                .and_then(|n| n.split(".tmp-").next())
                .and_then(parse_checkpoint_name)
                .is_some();
        let newer_and_ours = parse_checkpoint_name(&name).is_some_and(|e| e > latest.epoch)
            && fs::read(path.join(MANIFEST_FILE))
                .ok()
                .and_then(|b| serde_json::from_slice::<Manifest>(&b).ok())
                .is_some_and(|m| m.run_id == latest.run_id);
        if is_dir && (temp_checkpoint || newer_and_ours) {
            fs::remove_dir_all(&path).map_err(|e| FsError::new("cannot remove", &path, e))?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checkpoint_names_round_trip_and_reject_paths() {
        assert_eq!(checkpoint_name(7), "epoch-0007");
        assert_eq!(parse_checkpoint_name("epoch-0007"), Some(7));
        assert_eq!(parse_checkpoint_name("epoch-12345"), Some(12345));
        for bad in [
            "../../outside",
            "epoch-7",
            "epoch-00a1",
            "/etc",
            "epoch-0001/..",
            "",
        ] {
            assert_eq!(parse_checkpoint_name(bad), None, "{bad}");
        }
    }

    #[test]
    fn pointers_must_name_checkpoints_and_locks_exclude_a_second_holder() {
        let dir = std::env::temp_dir().join(format!("fairrep-ck-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        fs::write(dir.join(LATEST), "../../outside\n").unwrap();
        let e = read_pointer(&dir, LATEST).unwrap_err().to_string();
        assert!(e.contains("expected a checkpoint name"), "{e}");
        fs::write(dir.join(LATEST), "epoch-0003\n").unwrap();
        assert_eq!(
            read_pointer(&dir, LATEST).unwrap().as_deref(),
            Some("epoch-0003")
        );
        let e = pointed_dir(&dir, LATEST).unwrap_err().to_string();
        assert!(e.contains("not in"), "{e}");
        let lock = RunLock::acquire(&dir).unwrap();
        let e = RunLock::acquire(&dir).unwrap_err().to_string();
        assert!(e.contains("in use by another fairrep process"), "{e}");
        drop(lock);
        assert!(RunLock::acquire(&dir).is_ok());
        fs::remove_dir_all(&dir).unwrap();
    }
}
