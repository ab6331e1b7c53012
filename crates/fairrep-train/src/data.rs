//! Getting a [`Dataset`] for a configuration: the synthetic generator or a dataset spec read
//! from the data directory.
use std::path::{Path, PathBuf};

use fairrep_data::{DataError, Dataset, LoadOptions, Preprocessing, Schema};

use crate::config::{DataConfig, DatasetSource};

/// Environment variable naming the folder with the real datasets.
pub const DATA_DIR_ENV: &str = "FAIRREP_DATA_DIR";
/// Environment variable naming the folder with the dataset specs (`NAME.toml`).
pub const SPECS_DIR_ENV: &str = "FAIRREP_SPECS_DIR";

/// Why a dataset could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error(
        "dataset `{dataset}` needs the data directory: pass --data-dir DIR or set \
         {DATA_DIR_ENV}"
    )]
    NoDataDir { dataset: String },
    #[error("dataset `{dataset}`: {source}")]
    Data {
        dataset: String,
        #[source]
        source: Box<DataError>,
    },
    #[error(
        "dataset `{dataset}`: data.tasks names `{task}`, which is not a task of it (tasks: {available})"
    )]
    UnknownTask {
        dataset: String,
        task: String,
        available: String,
    },
}

/// The folder holding the dataset specs: `$FAIRREP_SPECS_DIR`, else `./datasets` when it
/// exists, else the `datasets/` folder of the source tree this binary was built from.
pub fn specs_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os(SPECS_DIR_ENV) {
        return PathBuf::from(dir);
    }
    let local = PathBuf::from("datasets");
    if local.is_dir() {
        return local;
    }
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../datasets")
}

/// The data directory: the flag, else `$FAIRREP_DATA_DIR`.
pub fn data_dir(flag: Option<&Path>) -> Option<PathBuf> {
    flag.map(Path::to_path_buf)
        .or_else(|| std::env::var_os(DATA_DIR_ENV).map(PathBuf::from))
}

/// Keeps only `tasks` (in that order) of a synthetic dataset.
fn select_tasks(mut dataset: Dataset, tasks: &[String]) -> Result<Dataset, LoadError> {
    let names = dataset.task_names();
    let mut order = Vec::with_capacity(tasks.len());
    for task in tasks {
        let Some(i) = names.iter().position(|n| n == task) else {
            return Err(LoadError::UnknownTask {
                dataset: dataset.name.clone(),
                task: task.clone(),
                available: names.join(", "),
            });
        };
        order.push(i);
    }
    dataset.schema.tasks = order
        .iter()
        .map(|&i| dataset.schema.tasks[i].clone())
        .collect();
    for split in [&mut dataset.train, &mut dataset.valid, &mut dataset.test] {
        split.targets = order.iter().map(|&i| split.targets[i].clone()).collect();
    }
    Ok(dataset)
}

/// Loads the dataset of `cfg`. With `saved` (resuming), a spec dataset is encoded with the
/// checkpoint's schema and preprocessing; a mismatch is an error.
pub fn load_dataset(
    cfg: &DataConfig,
    data_dir_flag: Option<&Path>,
    saved: Option<(&Schema, &Preprocessing)>,
) -> Result<Dataset, LoadError> {
    match &cfg.source {
        DatasetSource::Synthetic(synthetic) => {
            let dataset = fairrep_data::synthetic(synthetic, cfg.split_seed);
            match &cfg.tasks {
                Some(tasks) => select_tasks(dataset, tasks),
                None => Ok(dataset),
            }
        }
        DatasetSource::Spec(name) => {
            let wrap = |source| LoadError::Data {
                dataset: name.clone(),
                source: Box::new(source),
            };
            let mut spec = fairrep_data::resolve_spec(name, &specs_dir()).map_err(wrap)?;
            if let Some(sensitive) = &cfg.sensitive {
                spec.sensitive = sensitive.clone();
            }
            let data_dir = data_dir(data_dir_flag).ok_or_else(|| LoadError::NoDataDir {
                dataset: name.clone(),
            })?;
            let opts = LoadOptions {
                data_dir,
                tasks: cfg.tasks.clone(),
                aware: cfg.aware,
                split_seed: cfg.split_seed,
                split: cfg.split,
            };
            match saved {
                None => fairrep_data::load(&spec, &opts),
                Some((schema, preprocessing)) => {
                    fairrep_data::load_with_preprocessing(&spec, &opts, schema, preprocessing)
                }
            }
            .map_err(wrap)
        }
    }
}
