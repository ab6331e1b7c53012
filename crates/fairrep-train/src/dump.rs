//! `fairrep train --dump-data DIR`: the preprocessed splits a configuration trains on, as
//! `.npy` files, so that another framework can train on exactly the same rows
//! (`scripts/bench_train.py` times a PyTorch loop on them).
//!
//! `DIR` receives, for each split `S` of `train`, `valid` and `test`:
//! - `S_x.npy`: the encoded features, float32 `[n, d]`;
//! - `S_s.npy`: the group id of each row, int64 `[n]` (names in `data.json`);
//! - `S_y.npy`: the task labels, float32 `[n, T]` (task order in `data.json`);
//!
//! and `config.toml` (the resolved configuration) and `data.json` ([`DataDump`]). Each file is
//! written atomically.
use std::path::{Path, PathBuf};

use fairrep_data::fs::{self as fsutil, FsError};
use fairrep_data::matrix::npy_bytes;
use fairrep_data::spec::TaskKind;
use fairrep_data::{Encoding, Split};
use serde::{Deserialize, Serialize};

use crate::config::TrainConfig;
use crate::data::{LoadError, load_dataset};

/// The description of a dump, `DIR/data.json`.
pub const DUMP_FILE: &str = "data.json";

/// Why a dump failed.
#[derive(Debug, thiserror::Error)]
pub enum DumpError {
    /// The data cannot be loaded.
    #[error(transparent)]
    Load(#[from] LoadError),
    /// A file cannot be written.
    #[error(transparent)]
    Fs(#[from] FsError),
}

/// One dumped split.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DumpedSplit {
    /// `train`, `valid` or `test`.
    pub name: String,
    /// Rows.
    pub rows: usize,
    /// The features file (relative to the dump directory).
    pub x: String,
    /// The group ids file.
    pub s: String,
    /// The labels file.
    pub y: String,
}

/// What `--dump-data` wrote (`data.json`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DataDump {
    /// The dataset.
    pub dataset: String,
    /// The encoded features per row.
    pub n_features: usize,
    /// Group names; the ids of `S_s.npy` index them.
    pub groups: Vec<String>,
    /// Task names, in the column order of `S_y.npy`.
    pub tasks: Vec<String>,
    /// `binary` or `regression`, per task.
    pub task_kinds: Vec<String>,
    /// The three splits.
    pub splits: Vec<DumpedSplit>,
    /// The resolved configuration's file (relative to the dump directory).
    pub config: String,
    /// The dump directory.
    pub dir: PathBuf,
}

fn f32_bytes(values: impl IntoIterator<Item = f32>) -> Vec<u8> {
    values.into_iter().flat_map(f32::to_le_bytes).collect()
}

fn write_split(dir: &Path, name: &str, split: &Split) -> Result<DumpedSplit, FsError> {
    let n = split.len();
    let d = split.x.cols;
    let t = split.targets.len();
    let files = DumpedSplit {
        name: name.into(),
        rows: n,
        x: format!("{name}_x.npy"),
        s: format!("{name}_s.npy"),
        y: format!("{name}_y.npy"),
    };
    let x = f32_bytes(split.x.values.iter().copied());
    fsutil::write_atomic(&dir.join(&files.x), &npy_bytes("<f4", &[n, d], &x))?;
    let s: Vec<u8> = split
        .groups
        .iter()
        .flat_map(|&g| i64::from(g).to_le_bytes())
        .collect();
    fsutil::write_atomic(&dir.join(&files.s), &npy_bytes("<i8", &[n], &s))?;
    let y = f32_bytes((0..n).flat_map(|i| split.targets.iter().map(move |task| task[i])));
    fsutil::write_atomic(&dir.join(&files.y), &npy_bytes("<f4", &[n, t], &y))?;
    Ok(files)
}

/// Loads the data of `cfg` exactly as `fairrep train` does (the preprocessing fitted on the
/// train split) and writes the three splits and the resolved configuration into `out`.
pub fn dump_data(
    cfg: &TrainConfig,
    data_dir: Option<&Path>,
    out: &Path,
) -> Result<DataDump, DumpError> {
    let dataset = load_dataset(&cfg.data, data_dir, Encoding::Fit)?;
    fsutil::create_dir_all(out)?;
    let splits = [
        ("train", &dataset.train),
        ("valid", &dataset.valid),
        ("test", &dataset.test),
    ]
    .into_iter()
    .map(|(name, split)| write_split(out, name, split))
    .collect::<Result<Vec<_>, _>>()?;
    let config = "config.toml".to_string();
    fsutil::write_atomic(&out.join(&config), cfg.file.to_toml().as_bytes())?;
    let dump = DataDump {
        dataset: dataset.name.clone(),
        n_features: dataset.n_features(),
        groups: dataset.schema.groups.clone(),
        tasks: dataset.task_names(),
        task_kinds: dataset
            .schema
            .tasks
            .iter()
            .map(|t| match t.kind {
                TaskKind::Binary => "binary".to_string(),
                TaskKind::Regression => "regression".to_string(),
            })
            .collect(),
        splits,
        config,
        dir: out.to_path_buf(),
    };
    let json = serde_json::to_string_pretty(&dump).expect("the dump description serialises");
    fsutil::write_atomic(&out.join(DUMP_FILE), format!("{json}\n").as_bytes())?;
    Ok(dump)
}

#[cfg(test)]
mod tests {
    use super::*;
    use fairrep_data::matrix::{StoredAs, read_matrix};

    /// The little-endian payload of a `.npy` file (after its header).
    fn payload(bytes: &[u8]) -> &[u8] {
        let header = u16::from_le_bytes([bytes[8], bytes[9]]) as usize;
        &bytes[10 + header..]
    }

    #[test]
    fn dumped_splits_are_the_rows_training_sees() {
        let dir = std::env::temp_dir().join(format!("fairrep-dump-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let config_path = dir.join("c.toml");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(
            &config_path,
            "[data]\ndataset = \"synthetic\"\nbatch_size = 64\n[data.synthetic]\nn_train = 300\n\
             n_groups = 3\n[penalty]\nkind = \"mmd\"\nlambda = 1.0\n[optim]\nepochs = 1\n",
        )
        .unwrap();
        let cfg = TrainConfig::load(&config_path, &[]).unwrap();
        let out = dir.join("dump");
        let dump = dump_data(&cfg, None, &out).unwrap();
        let dataset = load_dataset(&cfg.data, None, Encoding::Fit).unwrap();
        assert_eq!(dump.n_features, dataset.n_features());
        assert_eq!(dump.groups, dataset.schema.groups);
        assert_eq!(dump.tasks, dataset.task_names());
        for (files, split) in
            dump.splits
                .iter()
                .zip([&dataset.train, &dataset.valid, &dataset.test])
        {
            assert_eq!(files.rows, split.len());
            // Read back as float64; float32 values convert exactly.
            let x = read_matrix(&out.join(&files.x)).unwrap();
            assert_eq!(x.stored_as, StoredAs::F32);
            let x = x.matrix;
            assert_eq!((x.rows, x.cols), (split.len(), split.x.cols));
            let want: Vec<f64> = split.x.values.iter().map(|&v| f64::from(v)).collect();
            assert_eq!(x.values, want, "{} features", files.name);
            let y = read_matrix(&out.join(&files.y)).unwrap().matrix;
            assert_eq!((y.rows, y.cols), (split.len(), split.targets.len()));
            for (i, row) in y.values.chunks(y.cols).enumerate() {
                for (t, &v) in row.iter().enumerate() {
                    let want = f64::from(split.targets[t][i]);
                    assert_eq!(v, want, "{} row {i} task {t}", files.name);
                }
            }
            let s = std::fs::read(out.join(&files.s)).unwrap();
            let ids: Vec<u32> = payload(&s)
                .chunks_exact(8)
                .map(|c| i64::from_le_bytes(c.try_into().unwrap()) as u32)
                .collect();
            assert_eq!(ids, split.groups, "{} groups", files.name);
        }
        let saved: DataDump =
            serde_json::from_str(&std::fs::read_to_string(out.join(DUMP_FILE)).unwrap()).unwrap();
        assert_eq!(saved, dump);
        let reread = TrainConfig::load(&out.join(&dump.config), &[]).unwrap();
        assert_eq!(reread.file, cfg.file);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
