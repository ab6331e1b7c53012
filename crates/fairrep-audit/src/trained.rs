//! A finished (or stopped) run opened for reuse: its configuration, data schema, preprocessing
//! and the encoder of its best checkpoint. `fairrep transfer`, `eval` and `export` start here.
use std::path::{Path, PathBuf};

use burn::module::Module;
use burn::tensor::Device;
use fairrep_data::{Dataset, Encoding, Matrix, Split};
use fairrep_model::FairModel;
use fairrep_train::checkpoint::{self, BEST, CheckpointError, LATEST};
use fairrep_train::config::{ConfigError, TrainConfig};
use fairrep_train::data::{LoadError, load_dataset};
use fairrep_train::eval::rows_tensor;
use fairrep_train::records::Manifest;

/// Rows per forward pass when encoding.
const CHUNK: usize = 8192;

/// Why a run directory cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum TrainedError {
    /// No pointer inside.
    #[error("`{}` is not a run directory (no `{LATEST}` or `{BEST}` pointer inside)", path.display())]
    NotARun {
        /// The directory.
        path: PathBuf,
    },
    /// A checkpoint cannot be read.
    #[error("run `{}`: {source}", run.display())]
    Checkpoint {
        /// The run.
        run: PathBuf,
        /// Why.
        #[source]
        source: CheckpointError,
    },
    /// The saved configuration does not validate.
    #[error("run `{}`: its saved configuration is invalid: {source}", run.display())]
    Config {
        /// The run.
        run: PathBuf,
        /// Why.
        #[source]
        source: Box<ConfigError>,
    },
    /// The run's data cannot be loaded.
    #[error("run `{}`: {source}", run.display())]
    Data {
        /// The run.
        run: PathBuf,
        /// Why.
        #[source]
        source: Box<LoadError>,
    },
    /// The data has another width than the encoder reads.
    #[error(
        "run `{}`: the encoder reads {expected} features but the data has {found}",
        run.display()
    )]
    Width {
        /// The run.
        run: PathBuf,
        /// The encoder's inputs.
        expected: usize,
        /// The data's features.
        found: usize,
    },
    /// A `fairrep ferm` run where a trained encoder is needed.
    #[error(
        "`{}` is a `fairrep ferm` run, not a trained encoder: its test metrics are in its \
         ferm.json; `fairrep transfer` and `fairrep export` accept it",
        path.display()
    )]
    FermRun {
        /// The directory.
        path: PathBuf,
    },
    /// A FERM run's representation file cannot be used.
    #[error("`{}`: {message}", file.display())]
    FermFile {
        /// The file.
        file: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// The encoder outputs non-finite values.
    #[error("run `{}`: the encoder outputs non-finite values on the {split} split", run.display())]
    NonFinite {
        /// The run.
        run: PathBuf,
        /// The split.
        split: String,
    },
}

/// A trained run: manifest of the checkpoint in use and the model (validation mode).
#[derive(Debug)]
pub struct TrainedRun {
    /// The run directory.
    pub run_dir: PathBuf,
    /// The checkpoint directory the weights come from (`best`, else `latest`).
    pub checkpoint: PathBuf,
    /// That checkpoint's manifest.
    pub manifest: Manifest,
    /// The run's configuration.
    pub config: TrainConfig,
    /// The model, in validation mode.
    pub model: FairModel,
}

/// `z` and the heads' outputs of one split.
#[derive(Debug, Clone)]
pub struct Forward {
    /// The representation, `n x latent`.
    pub latent: Matrix<f32>,
    /// One output vector per head (logit of a binary task, prediction of a regression task).
    pub outputs: Vec<Vec<f64>>,
}

impl TrainedRun {
    /// Opens `run_dir` on `device`, with the weights of its best checkpoint (the latest when
    /// no best was recorded).
    pub fn open(run_dir: &Path, device: &Device) -> Result<Self, TrainedError> {
        let ck = |source| TrainedError::Checkpoint {
            run: run_dir.to_path_buf(),
            source,
        };
        let dir = match checkpoint::pointed_dir(run_dir, BEST).map_err(ck)? {
            Some(dir) => dir,
            None => checkpoint::pointed_dir(run_dir, LATEST)
                .map_err(ck)?
                .ok_or_else(|| {
                    if run_dir.join(crate::ferm::REPRESENTATION_FILE).is_file()
                        || run_dir.join(crate::ferm::REPORT_FILE).is_file()
                    {
                        TrainedError::FermRun {
                            path: run_dir.to_path_buf(),
                        }
                    } else {
                        TrainedError::NotARun {
                            path: run_dir.to_path_buf(),
                        }
                    }
                })?,
        };
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
        let config_err = |e| TrainedError::Config {
            run: run_dir.to_path_buf(),
            source: Box::new(e),
        };
        let model_cfg = config
            .model
            .model_config(manifest.schema.features.len(), &tasks, &config.source)
            .map_err(config_err)?;
        let model = checkpoint::load_model(&dir, &manifest, model_cfg.init(device))
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
    ) -> Result<Matrix<f32>, TrainedError> {
        Ok(self.pass(split, split_name, device, false)?.0)
    }

    /// `z` and every head's output for every row of `split`, from one forward pass.
    pub fn forward(
        &self,
        split: &Split,
        split_name: &str,
        device: &Device,
    ) -> Result<Forward, TrainedError> {
        let (latent, outputs) = self.pass(split, split_name, device, true)?;
        Ok(Forward { latent, outputs })
    }

    fn pass(
        &self,
        split: &Split,
        split_name: &str,
        device: &Device,
        heads: bool,
    ) -> Result<(Matrix<f32>, Vec<Vec<f64>>), TrainedError> {
        let expected = self.manifest.schema.features.len();
        if split.x.cols != expected {
            return Err(TrainedError::Width {
                run: self.run_dir.clone(),
                expected,
                found: split.x.cols,
            });
        }
        let k = self.latent();
        let host =
            |t: burn::tensor::Tensor<2>| t.try_into_vec_as::<f32>().expect("float tensor data");
        let n = split.len();
        let mut values = Vec::with_capacity(n * k);
        let n_heads = if heads { self.model.heads.len() } else { 0 };
        let mut outputs: Vec<Vec<f64>> = vec![Vec::with_capacity(n); n_heads];
        let mut start = 0;
        while start < n {
            let end = (start + CHUNK).min(n);
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
        Ok((Matrix::new(values, n, k), outputs))
    }
}
