//! A representation `z = h(x)` from a finished run, whichever method made it: the encoder of
//! a trained run ([`TrainedRun`]) or the linear FERM projection of a `fairrep ferm` run
//! ([`FermRun`]). `fairrep transfer` and `fairrep export` go through [`Representation`] only,
//! so both kinds take the same path (same data loading, same heads, same bounds).
use std::path::{Path, PathBuf};

use burn::tensor::Device;
use fairrep_data::{Dataset, Encoding, Matrix, Preprocessing, Schema, Split};
use fairrep_train::config::DataConfig;
use fairrep_train::data::load_dataset;

use crate::ferm::{FermRepresentation, REPRESENTATION_FILE};
use crate::trained::{TrainedError, TrainedRun};

/// A `fairrep ferm` run opened for reuse: its linear FERM projection and the data it reads.
#[derive(Debug, Clone)]
pub struct FermRun {
    /// The run directory.
    pub run_dir: PathBuf,
    /// The representation file.
    pub file: PathBuf,
    /// Its content.
    pub representation: FermRepresentation,
    /// The validated data config of the run.
    pub data: DataConfig,
}

impl FermRun {
    /// Opens `run_dir/representation.json`.
    pub fn open(run_dir: &Path) -> Result<Self, TrainedError> {
        let file = run_dir.join(REPRESENTATION_FILE);
        let bad = |message: String| TrainedError::FermFile {
            file: file.clone(),
            message,
        };
        let text = std::fs::read_to_string(&file).map_err(|e| bad(e.to_string()))?;
        let representation: FermRepresentation =
            serde_json::from_str(&text).map_err(|e| bad(e.to_string()))?;
        let p = &representation.projection;
        let d = representation.schema.features.len();
        if p.input_dim() != d || p.pivot >= d || !p.u.iter().all(|v| v.is_finite()) {
            return Err(bad(format!(
                "the projection (u of length {}, pivot {}) does not fit the schema's {d} features",
                p.input_dim(),
                p.pivot
            )));
        }
        if p.u[p.pivot] == 0.0 {
            return Err(bad("the projection's pivot coordinate u_j is 0".into()));
        }
        let seed = representation.data.split_seed.unwrap_or(0);
        let data = representation
            .data
            .data_config(seed, &file)
            .map_err(|e| bad(e.to_string()))?;
        Ok(Self {
            run_dir: run_dir.to_path_buf(),
            file,
            representation,
            data,
        })
    }

    fn encode(&self, split: &Split, split_name: &str) -> Result<Matrix<f32>, TrainedError> {
        let p = &self.representation.projection;
        if split.x.cols != p.input_dim() {
            return Err(TrainedError::Width {
                run: self.run_dir.clone(),
                expected: p.input_dim(),
                found: split.x.cols,
            });
        }
        let x: Vec<f64> = split.x.values.iter().map(|&v| f64::from(v)).collect();
        let z = p
            .apply(&x, split.x.rows, split.x.cols)
            .map_err(|e| TrainedError::FermFile {
                file: self.file.clone(),
                message: format!("projecting the {split_name} split: {e}"),
            })?;
        let values: Vec<f32> = z.iter().map(|&v| v as f32).collect();
        if values.iter().any(|v| !v.is_finite()) {
            return Err(TrainedError::NonFinite {
                run: self.run_dir.clone(),
                split: split_name.into(),
            });
        }
        Ok(Matrix::new(values, split.x.rows, p.output_dim()))
    }
}

/// A run's representation: a trained encoder or a linear FERM projection.
#[derive(Debug)]
pub enum Representation {
    /// The encoder of a trained run (best checkpoint).
    Deep(Box<TrainedRun>),
    /// The projection of a `fairrep ferm` run.
    Ferm(Box<FermRun>),
}

impl Representation {
    /// Opens `run_dir`: a FERM run when it holds `representation.json`, else a trained run.
    pub fn open(run_dir: &Path, device: &Device) -> Result<Self, TrainedError> {
        if run_dir.join(REPRESENTATION_FILE).is_file() {
            return Ok(Representation::Ferm(Box::new(FermRun::open(run_dir)?)));
        }
        Ok(Representation::Deep(Box::new(TrainedRun::open(
            run_dir, device,
        )?)))
    }

    /// The run directory.
    pub fn run_dir(&self) -> &Path {
        match self {
            Representation::Deep(r) => &r.run_dir,
            Representation::Ferm(r) => &r.run_dir,
        }
    }

    /// What the weights come from: the checkpoint directory, or the representation file.
    pub fn source(&self) -> &Path {
        match self {
            Representation::Deep(r) => &r.checkpoint,
            Representation::Ferm(r) => &r.file,
        }
    }

    /// The run's data config.
    pub fn data_config(&self) -> &DataConfig {
        match self {
            Representation::Deep(r) => &r.config.data,
            Representation::Ferm(r) => &r.data,
        }
    }

    /// The data schema the representation reads.
    pub fn schema(&self) -> &Schema {
        match self {
            Representation::Deep(r) => &r.manifest.schema,
            Representation::Ferm(r) => &r.representation.schema,
        }
    }

    /// The preprocessing of its inputs.
    pub fn preprocessing(&self) -> &Preprocessing {
        match self {
            Representation::Deep(r) => &r.manifest.preprocessing,
            Representation::Ferm(r) => &r.representation.preprocessing,
        }
    }

    /// Size of `z`.
    pub fn latent(&self) -> usize {
        match self {
            Representation::Deep(r) => r.latent(),
            Representation::Ferm(r) => r.representation.projection.output_dim(),
        }
    }

    /// A short name: `"mmd λ=50"`, `"λ=0"`, `"linear FERM"`.
    pub fn describe(&self) -> String {
        match self {
            Representation::Deep(r) => {
                let lambda = r.config.penalty.lambda;
                match &r.config.penalty.divergence {
                    Some(d) if lambda > 0.0 => format!("{} λ={lambda}", d.name()),
                    _ => "λ=0".to_string(),
                }
            }
            Representation::Ferm(_) => "linear FERM".to_string(),
        }
    }

    /// The run's own data (its tasks), encoded with its saved preprocessing.
    pub fn own_data(&self, data_dir: Option<&Path>) -> Result<Dataset, TrainedError> {
        load_dataset(
            self.data_config(),
            data_dir,
            Encoding::Resume(self.schema(), self.preprocessing()),
        )
        .map_err(|e| TrainedError::Data {
            run: self.run_dir().to_path_buf(),
            source: Box::new(e),
        })
    }

    /// `z = h(x)` for every row of `split`.
    pub fn encode(
        &self,
        split: &Split,
        split_name: &str,
        device: &Device,
    ) -> Result<Matrix<f32>, TrainedError> {
        match self {
            Representation::Deep(r) => r.encode(split, split_name, device),
            Representation::Ferm(r) => r.encode(split, split_name),
        }
    }
}
