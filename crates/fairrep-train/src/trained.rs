//! A finished (or stopped) run opened for reuse: its configuration, data schema, preprocessing
//! and the encoder of its best checkpoint. `fairrep transfer`, `eval` and `export` start here.
use std::path::{Path, PathBuf};

use burn::module::Module;
use burn::tensor::Device;
use fairrep_data::{Dataset, Split};
use fairrep_model::FairModel;

use crate::checkpoint::{self, BEST, CheckpointError, LATEST, Manifest};
use crate::config::{ConfigError, TrainConfig};
use crate::data::{Encoding, LoadError, load_dataset};
use crate::eval::rows_tensor;

/// Rows per forward pass when encoding.
const CHUNK: usize = 8192;

/// Why a run directory cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum TrainedError {
    #[error("`{}` is not a run directory (no `{LATEST}` or `{BEST}` pointer inside)", path.display())]
    NotARun { path: PathBuf },
    #[error("run `{}`: {source}", run.display())]
    Checkpoint {
        run: PathBuf,
        #[source]
        source: CheckpointError,
    },
    #[error("run `{}`: its saved configuration is invalid: {source}", run.display())]
    Config {
        run: PathBuf,
        #[source]
        source: Box<ConfigError>,
    },
    #[error("run `{}`: {source}", run.display())]
    Data {
        run: PathBuf,
        #[source]
        source: Box<LoadError>,
    },
    #[error(
        "run `{}`: the encoder reads {expected} features but the data has {found}",
        run.display()
    )]
    Width {
        run: PathBuf,
        expected: usize,
        found: usize,
    },
    #[error("run `{}`: the encoder outputs non-finite values on the {split} split", run.display())]
    NonFinite { run: PathBuf, split: String },
}

/// A trained run: manifest of the checkpoint in use and the model (validation mode).
#[derive(Debug)]
pub struct TrainedRun {
    pub run_dir: PathBuf,
    /// The checkpoint directory the weights come from (`best`, else `latest`).
    pub checkpoint: PathBuf,
    pub manifest: Manifest,
    pub config: TrainConfig,
    pub model: FairModel,
}

/// A row-major `n x k` matrix on the host.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Features {
    pub values: Vec<f32>,
    pub n: usize,
    pub k: usize,
}

impl Features {
    /// The inputs of a split, as they are.
    pub fn inputs(split: &Split) -> Self {
        Self {
            values: split.x.clone(),
            n: split.n,
            k: split.d,
        }
    }

    /// Row `i`.
    pub fn row(&self, i: usize) -> &[f32] {
        &self.values[i * self.k..(i + 1) * self.k]
    }

    /// The rows `idx`, in that order.
    pub fn gather(&self, idx: &[usize]) -> Self {
        let mut values = Vec::with_capacity(idx.len() * self.k);
        idx.iter()
            .for_each(|&i| values.extend_from_slice(self.row(i)));
        Self {
            values,
            n: idx.len(),
            k: self.k,
        }
    }
}

impl TrainedRun {
    /// Opens `run_dir` on `device`, with the weights of its best checkpoint (the latest when
    /// no best was recorded).
    pub fn open(run_dir: &Path, device: &Device) -> Result<Self, TrainedError> {
        let ck = |source| TrainedError::Checkpoint {
            run: run_dir.to_path_buf(),
            source,
        };
        let name = match checkpoint::read_pointer(run_dir, BEST)
            .map_err(|e| ck(e.into()))?
            .or(checkpoint::read_pointer(run_dir, LATEST).map_err(|e| ck(e.into()))?)
        {
            Some(name) => name,
            None => {
                return Err(TrainedError::NotARun {
                    path: run_dir.to_path_buf(),
                });
            }
        };
        let dir = checkpoint::checkpoint_dir(run_dir, &name);
        let manifest = checkpoint::load_manifest(&dir).map_err(ck)?;
        let config = TrainConfig::from_file(
            manifest.config.clone(),
            &dir.join(checkpoint::MANIFEST_FILE),
        )
        .map_err(|e| TrainedError::Config {
            run: run_dir.to_path_buf(),
            source: Box::new(e),
        })?;
        let tasks: Vec<String> = manifest
            .schema
            .tasks
            .iter()
            .map(|t| t.name.clone())
            .collect();
        let model_cfg = config
            .model
            .model_config(manifest.schema.features.len(), &tasks);
        let model = checkpoint::load_model(&dir, model_cfg.init(device))
            .map_err(ck)?
            .valid();
        Ok(Self {
            run_dir: run_dir.to_path_buf(),
            checkpoint: dir,
            manifest,
            config,
            model,
        })
    }

    /// The run's own data (its tasks), encoded with its saved preprocessing.
    pub fn own_data(&self, data_dir: Option<&Path>) -> Result<Dataset, TrainedError> {
        load_dataset(
            &self.config.data,
            data_dir,
            Encoding::Resume(&self.manifest.schema, &self.manifest.preprocessing),
        )
        .map_err(|e| TrainedError::Data {
            run: self.run_dir.clone(),
            source: Box::new(e),
        })
    }

    /// Size of the representation.
    pub fn latent(&self) -> usize {
        self.config.model.latent
    }

    /// `z = h(x)` for every row of `split`.
    pub fn encode(
        &self,
        split: &Split,
        split_name: &str,
        device: &Device,
    ) -> Result<Features, TrainedError> {
        Ok(self.pass(split, split_name, device, false)?.0)
    }

    /// `z` and every head's output (one vector per task) for every row of `split`, from one
    /// forward pass.
    pub fn forward(
        &self,
        split: &Split,
        split_name: &str,
        device: &Device,
    ) -> Result<(Features, Vec<Vec<f64>>), TrainedError> {
        self.pass(split, split_name, device, true)
    }

    fn pass(
        &self,
        split: &Split,
        split_name: &str,
        device: &Device,
        heads: bool,
    ) -> Result<(Features, Vec<Vec<f64>>), TrainedError> {
        let expected = self.manifest.schema.features.len();
        if split.d != expected {
            return Err(TrainedError::Width {
                run: self.run_dir.clone(),
                expected,
                found: split.d,
            });
        }
        let k = self.latent();
        let host =
            |t: burn::tensor::Tensor<2>| t.try_into_vec_as::<f32>().expect("float tensor data");
        let mut values = Vec::with_capacity(split.n * k);
        let n_heads = if heads { self.model.heads.len() } else { 0 };
        let mut outputs: Vec<Vec<f64>> = vec![Vec::with_capacity(split.n); n_heads];
        let mut start = 0;
        while start < split.n {
            let end = (start + CHUNK).min(split.n);
            let x = rows_tensor(split, start..end, device);
            if heads {
                let out = self.model.forward(x);
                values.extend(host(out.latent));
                for (o, l) in outputs.iter_mut().zip(out.logits) {
                    o.extend(host(l).into_iter().map(f64::from));
                }
            } else {
                values.extend(host(self.model.encode(x)));
            }
            start = end;
        }
        if values.iter().any(|v| !v.is_finite()) {
            return Err(TrainedError::NonFinite {
                run: self.run_dir.clone(),
                split: split_name.into(),
            });
        }
        Ok((
            Features {
                values,
                n: split.n,
                k,
            },
            outputs,
        ))
    }
}
