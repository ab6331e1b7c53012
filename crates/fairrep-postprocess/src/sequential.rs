//! Several sensitive attributes, made fair one after the other.
//!
//! The procedure of Hu, Ratz and Charpentier ("A Sequentially Fair Mechanism for Multiple
//! Sensitive Attributes", AAAI 2024), as the EquiPy package implements it: step `k` is a
//! [`BarycentreFit`] for attribute `k`, fitted on the calibration predictions after steps
//! `1..k` have been applied to them *fully* (`alpha = 1`); at apply time each step has its own
//! `alpha`, and its output is the next step's input. The result is exactly fair (in the
//! population) for the last attribute; earlier attributes stay fair as far as the later steps
//! preserve it, which [`SequentialFit::unfairness`] measures stage by stage.
//!
//! The calibration sample is carried from one step to the next with the same jitter draws that
//! fitted the step, so each calibration value keeps its exact rank within its group.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::barycentre::{
    BarycentreFit, FitOptions, check_alpha, check_finite, check_len, fit_with_draws, mix,
};
use crate::error::PostprocessError;
use crate::jitter::{Noise, check_draw};
use crate::metrics::{ks_between_groups, w1_between_groups};

/// Value of the `format` field of a saved [`SequentialFit`].
pub const SEQUENTIAL_FORMAT: &str = "fairrep-postprocess/sequential";
/// Value of the `version` field of a saved [`SequentialFit`].
pub const SEQUENTIAL_VERSION: u32 = 1;

/// One sensitive attribute of a sample: its name and each row's group.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AttributeColumn<'a, G> {
    /// Attribute name (e.g. `sex`).
    pub name: &'a str,
    /// Group of every row.
    pub groups: &'a [G],
}

/// One step of a [`SequentialFit`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SequentialStep {
    attribute: String,
    fit: BarycentreFit,
}

impl SequentialStep {
    /// The attribute this step makes fair.
    pub fn attribute(&self) -> &str {
        &self.attribute
    }
    /// Its post-processor.
    pub fn fit(&self) -> &BarycentreFit {
        &self.fit
    }
}

/// A fitted sequential post-processor (see the module documentation).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SequentialFit {
    format: String,
    version: u32,
    steps: Vec<SequentialStep>,
}

/// One prediction after every step: `stages[0]` is the input, `stages[k]` the value after
/// step `k`.
#[derive(Debug, Clone, PartialEq)]
pub struct SequentialPrediction {
    /// Values per stage.
    pub stages: Vec<f64>,
}

impl SequentialPrediction {
    /// The value after the last step.
    pub fn output(&self) -> f64 {
        self.stages[self.stages.len() - 1]
    }
}

/// A sample after every step: `stages[0]` is the input, `stages[k]` the sample after step `k`.
#[derive(Debug, Clone, PartialEq)]
pub struct SequentialOutput {
    /// Values per stage, each one per row.
    pub stages: Vec<Vec<f64>>,
}

impl SequentialOutput {
    /// The sample after the last step.
    pub fn output(&self) -> &[f64] {
        &self.stages[self.stages.len() - 1]
    }
}

/// Unfairness with respect to one attribute.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AttributeUnfairness {
    /// The attribute.
    pub attribute: String,
    /// KS distance between its groups (max over pairs).
    pub ks: f64,
    /// W1 distance between its groups (max over pairs).
    pub w1: f64,
}

/// Unfairness of one stage of a sequential post-processing, for every attribute.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StageUnfairness {
    /// `base` for the input, else the attribute of the step just applied.
    pub stage: String,
    /// One entry per attribute, in step order.
    pub attributes: Vec<AttributeUnfairness>,
}

/// Fits one step per attribute, in order (see the module documentation).
///
/// `options[k]` and `noise[k]` are the fit options and calibration jitter of step `k` (one
/// draw per calibration row each).
pub fn fit_sequential<G: AsRef<str>>(
    predictions: &[f64],
    attributes: &[AttributeColumn<'_, G>],
    options: &[FitOptions],
    noise: &[Noise<'_>],
) -> Result<SequentialFit, PostprocessError> {
    if attributes.is_empty() {
        return Err(PostprocessError::Empty { what: "attributes" });
    }
    if predictions.is_empty() {
        return Err(PostprocessError::Empty {
            what: "calibration sample",
        });
    }
    check_len(
        "fit options (one per attribute)",
        attributes.len(),
        options.len(),
    )?;
    check_len("noise (one per attribute)", attributes.len(), noise.len())?;
    check_distinct(attributes)?;
    check_finite("prediction", predictions)?;
    let mut current = predictions.to_vec();
    let mut steps = Vec::with_capacity(attributes.len());
    for ((attr, opt), nz) in attributes.iter().zip(options).zip(noise) {
        let draws = nz.resolve(current.len(), opt.jitter_scale)?;
        let fit = fit_with_draws(&current, attr.groups, opt, &draws, nz.seed())?;
        let ids = fit.group_ids(attr.groups)?;
        for ((v, &s), &e) in current.iter_mut().zip(&ids).zip(&draws) {
            *v = fit.fair_value_at(s, *v + e);
        }
        steps.push(SequentialStep {
            attribute: attr.name.to_string(),
            fit,
        });
    }
    Ok(SequentialFit {
        format: SEQUENTIAL_FORMAT.to_string(),
        version: SEQUENTIAL_VERSION,
        steps,
    })
}

fn check_distinct<G>(attributes: &[AttributeColumn<'_, G>]) -> Result<(), PostprocessError> {
    for (i, a) in attributes.iter().enumerate() {
        if attributes[..i].iter().any(|o| o.name == a.name) {
            return Err(PostprocessError::DuplicateAttribute {
                attribute: a.name.to_string(),
            });
        }
    }
    Ok(())
}

impl SequentialFit {
    /// The steps, in order.
    pub fn steps(&self) -> &[SequentialStep] {
        &self.steps
    }

    /// The attribute names, in step order.
    pub fn attributes(&self) -> Vec<String> {
        self.steps.iter().map(|s| s.attribute.clone()).collect()
    }

    fn unknown_in_step(&self, k: usize, e: PostprocessError) -> PostprocessError {
        match e {
            PostprocessError::UnknownGroup { group, known, .. } => PostprocessError::UnknownGroup {
                group,
                known,
                attribute: Some(self.steps[k].attribute.clone()),
            },
            other => other,
        }
    }

    fn check_alphas(&self, alphas: &[f64]) -> Result<(), PostprocessError> {
        check_len("alphas (one per attribute)", self.steps.len(), alphas.len())?;
        for (step, &a) in self.steps.iter().zip(alphas) {
            check_alpha(a, Some(&step.attribute))?;
        }
        Ok(())
    }

    /// Post-processes one prediction: `groups[k]`, `alphas[k]` and `noise[k]` are its group,
    /// alpha and jitter draw for step `k`.
    pub fn apply(
        &self,
        prediction: f64,
        groups: &[&str],
        alphas: &[f64],
        noise: &[f64],
    ) -> Result<SequentialPrediction, PostprocessError> {
        check_len("groups (one per attribute)", self.steps.len(), groups.len())?;
        check_len("noise (one per attribute)", self.steps.len(), noise.len())?;
        self.check_alphas(alphas)?;
        check_finite("prediction", &[prediction])?;
        let mut stages = vec![prediction];
        let mut y = prediction;
        for (k, step) in self.steps.iter().enumerate() {
            check_draw(0, noise[k], step.fit.jitter_scale())?;
            let s = step
                .fit
                .group_index(groups[k])
                .map_err(|e| self.unknown_in_step(k, e))?;
            y = mix(y, step.fit.fair_value_at(s, y + noise[k]), alphas[k]);
            stages.push(y);
        }
        Ok(SequentialPrediction { stages })
    }

    fn check_attributes<G>(
        &self,
        attributes: &[AttributeColumn<'_, G>],
    ) -> Result<(), PostprocessError> {
        check_len(
            "attributes (one per step)",
            self.steps.len(),
            attributes.len(),
        )?;
        for (index, (step, a)) in self.steps.iter().zip(attributes).enumerate() {
            if step.attribute != a.name {
                return Err(PostprocessError::AttributeMismatch {
                    index,
                    expected: step.attribute.clone(),
                    found: a.name.to_string(),
                });
            }
        }
        Ok(())
    }

    /// Post-processes a sample; `attributes` must name the fitted attributes in step order.
    pub fn transform<G: AsRef<str>>(
        &self,
        predictions: &[f64],
        attributes: &[AttributeColumn<'_, G>],
        alphas: &[f64],
        noise: &[Noise<'_>],
    ) -> Result<SequentialOutput, PostprocessError> {
        self.check_attributes(attributes)?;
        check_len("noise (one per attribute)", self.steps.len(), noise.len())?;
        self.check_alphas(alphas)?;
        let mut stages = vec![predictions.to_vec()];
        for (k, step) in self.steps.iter().enumerate() {
            let current = &stages[k];
            let draws = step.fit.prepare(current, attributes[k].groups, noise[k])?;
            let ids = step
                .fit
                .group_ids(attributes[k].groups)
                .map_err(|e| self.unknown_in_step(k, e))?;
            let next: Vec<f64> = current
                .iter()
                .zip(&ids)
                .zip(&draws)
                .map(|((&f, &s), &e)| mix(f, step.fit.fair_value_at(s, f + e), alphas[k]))
                .collect();
            stages.push(next);
        }
        Ok(SequentialOutput { stages })
    }

    /// KS and W1 between the groups of every attribute, at every stage of `output` (a
    /// [`SequentialFit::transform`] of the sample whose groups `attributes` gives): how much
    /// unfairness each step removes for its own attribute, and what it does to the others.
    pub fn unfairness<G: AsRef<str>>(
        &self,
        output: &SequentialOutput,
        attributes: &[AttributeColumn<'_, G>],
    ) -> Result<Vec<StageUnfairness>, PostprocessError> {
        self.check_attributes(attributes)?;
        check_len("stages", self.steps.len() + 1, output.stages.len())?;
        let mut out = Vec::with_capacity(output.stages.len());
        for (k, values) in output.stages.iter().enumerate() {
            let stage = if k == 0 {
                "base".to_string()
            } else {
                self.steps[k - 1].attribute.clone()
            };
            let mut per = Vec::with_capacity(self.steps.len());
            for (j, step) in self.steps.iter().enumerate() {
                let known = step.fit.group_names();
                let groups = attributes[j].groups;
                let what = format!("stage `{stage}`, attribute `{}`", step.attribute);
                let map = |e| self.unknown_in_step(j, e);
                per.push(AttributeUnfairness {
                    attribute: step.attribute.clone(),
                    ks: ks_between_groups(values, groups, &known, &what).map_err(map)?,
                    w1: w1_between_groups(values, groups, &known, &what).map_err(map)?,
                });
            }
            out.push(StageUnfairness {
                stage,
                attributes: per,
            });
        }
        Ok(out)
    }

    /// The post-processor as pretty-printed JSON.
    pub fn to_json(&self) -> Result<String, PostprocessError> {
        serde_json::to_string_pretty(self).map_err(|e| PostprocessError::Json {
            path: PathBuf::from("<string>"),
            message: e.to_string(),
        })
    }

    /// Parses and validates a sequential post-processor; `path` is only used in errors.
    pub fn from_json_str(text: &str, path: &Path) -> Result<Self, PostprocessError> {
        let fit: SequentialFit =
            serde_json::from_str(text).map_err(|e| PostprocessError::Json {
                path: path.to_path_buf(),
                message: e.to_string(),
            })?;
        let bad = |what: String| PostprocessError::InvalidFit {
            path: path.to_path_buf(),
            what,
        };
        if fit.format != SEQUENTIAL_FORMAT || fit.version != SEQUENTIAL_VERSION {
            return Err(bad(format!(
                "format `{}` version {}: expected `{SEQUENTIAL_FORMAT}` version {SEQUENTIAL_VERSION}",
                fit.format, fit.version
            )));
        }
        if fit.steps.is_empty() {
            return Err(bad("no steps: expected at least one".into()));
        }
        for (i, s) in fit.steps.iter().enumerate() {
            if fit.steps[..i].iter().any(|o| o.attribute == s.attribute) {
                return Err(bad(format!("attribute `{}` appears twice", s.attribute)));
            }
            s.fit.validate(path)?;
        }
        Ok(fit)
    }

    /// Writes [`SequentialFit::to_json`] to `path` atomically.
    pub fn save_json(&self, path: &Path) -> Result<(), PostprocessError> {
        crate::error::write_text(path, &self.to_json()?)
    }

    /// Reads and validates a file written by [`SequentialFit::save_json`].
    pub fn load_json(path: &Path) -> Result<Self, PostprocessError> {
        Self::from_json_str(&crate::error::read_text(path)?, path)
    }
}
