//! Getting a [`Dataset`] for a configuration: the synthetic generator or a dataset spec read
//! from the data directory.
use std::path::{Path, PathBuf};

use fairrep_data::{DataError, Dataset, Encoding, LoadOptions};

use crate::config::{DataConfig, DatasetSource};

/// Environment variable naming the folder with the real datasets.
pub const DATA_DIR_ENV: &str = "FAIRREP_DATA_DIR";
/// Environment variable naming the folder with the dataset specs (`NAME.toml`).
pub const SPECS_DIR_ENV: &str = "FAIRREP_SPECS_DIR";

/// Why a dataset could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// A spec dataset without a data directory.
    #[error(
        "dataset `{dataset}` needs the data directory: pass --data-dir DIR or set \
         {DATA_DIR_ENV}"
    )]
    NoDataDir {
        /// The dataset.
        dataset: String,
    },
    /// The loader failed.
    #[error("dataset `{dataset}`: {source}")]
    Data {
        /// The dataset.
        dataset: String,
        /// The loader's error.
        #[source]
        source: Box<DataError>,
    },
    /// A task name that is not the dataset's.
    #[error(
        "dataset `{dataset}`: {key} names `{task}`, which is not a task of it (tasks: {available})"
    )]
    UnknownTask {
        /// The dataset.
        dataset: String,
        /// The config key naming the task (`data.tasks`, `data.held_out_tasks`).
        key: &'static str,
        /// The name.
        task: String,
        /// The dataset's tasks.
        available: String,
    },
    /// A task both trained on and held out.
    #[error(
        "dataset `{dataset}`: task `{task}` is both in data.tasks and in data.held_out_tasks; \
         a held-out task is for transfer only"
    )]
    HeldOutTrained {
        /// The dataset.
        dataset: String,
        /// The task.
        task: String,
    },
    /// Every task is held out.
    #[error("dataset `{dataset}`: every task is in data.held_out_tasks; none is left to train on")]
    NoTaskLeft {
        /// The dataset.
        dataset: String,
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
                key: "data.tasks",
                task: task.clone(),
                available: names.join(", "),
            });
        };
        order.push(i);
    }
    dataset.keep_tasks(&order);
    Ok(dataset)
}

/// The tasks to load: `cfg.tasks`, else every task of the dataset but the held-out ones.
/// Held-out tasks must exist and must not be trained on.
fn training_tasks(
    dataset: &str,
    cfg: &DataConfig,
    available: &[String],
) -> Result<Option<Vec<String>>, LoadError> {
    for task in &cfg.held_out_tasks {
        if !available.contains(task) {
            return Err(LoadError::UnknownTask {
                dataset: dataset.into(),
                key: "data.held_out_tasks",
                task: task.clone(),
                available: available.join(", "),
            });
        }
        if cfg.tasks.as_ref().is_some_and(|t| t.contains(task)) {
            return Err(LoadError::HeldOutTrained {
                dataset: dataset.into(),
                task: task.clone(),
            });
        }
    }
    Ok(match (&cfg.tasks, cfg.held_out_tasks.is_empty()) {
        (Some(tasks), _) => Some(tasks.clone()),
        (None, true) => None,
        (None, false) => {
            let left: Vec<String> = available
                .iter()
                .filter(|t| !cfg.held_out_tasks.contains(t))
                .cloned()
                .collect();
            if left.is_empty() {
                return Err(LoadError::NoTaskLeft {
                    dataset: dataset.into(),
                });
            }
            Some(left)
        }
    })
}

/// Loads the dataset of `cfg`, encoded as `encoding` says; a schema mismatch is an error.
pub fn load_dataset(
    cfg: &DataConfig,
    data_dir_flag: Option<&Path>,
    encoding: Encoding<'_>,
) -> Result<Dataset, LoadError> {
    match &cfg.source {
        DatasetSource::Synthetic(synthetic) => {
            let dataset = fairrep_data::synthetic(synthetic, cfg.split_seed);
            let tasks = training_tasks(&dataset.name, cfg, &dataset.task_names())?;
            let dataset = match &tasks {
                Some(tasks) => select_tasks(dataset, tasks)?,
                None => dataset,
            };
            if let Encoding::Resume(schema, _) | Encoding::Transfer(schema, _) = encoding {
                let transfer = matches!(encoding, Encoding::Transfer(..));
                fairrep_data::check_schema(schema, &dataset.schema, transfer).map_err(|e| {
                    LoadError::Data {
                        dataset: dataset.name.clone(),
                        source: Box::new(e),
                    }
                })?;
            }
            Ok(dataset)
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
            let names: Vec<String> = spec.tasks.iter().map(|t| t.name.clone()).collect();
            let tasks = training_tasks(name, cfg, &names)?;
            let data_dir = data_dir(data_dir_flag).ok_or_else(|| LoadError::NoDataDir {
                dataset: name.clone(),
            })?;
            let opts = LoadOptions {
                data_dir,
                tasks,
                aware: cfg.aware,
                split_seed: cfg.split_seed,
                split: cfg.split,
                held_out: cfg.held_out_tasks.clone(),
                attributes: cfg.attributes.clone(),
            };
            fairrep_data::load(&spec, &opts, encoding).map_err(wrap)
        }
    }
}
