//! One sensitive attribute: fit on a calibration sample, apply to new predictions.
//!
//! See the crate documentation for the estimator and its conventions.

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::PostprocessError;
use crate::jitter::{Noise, check_draw, check_scale};

/// Value of the `format` field of a saved [`BarycentreFit`].
pub const FIT_FORMAT: &str = "fairrep-postprocess/barycentre";
/// Value of the `version` field of a saved [`BarycentreFit`].
pub const FIT_VERSION: u32 = 1;

/// How to fit a [`BarycentreFit`].
#[derive(Debug, Clone, PartialEq)]
pub struct FitOptions {
    /// Half-width `sigma` of the uniform jitter `U([-sigma, sigma])` (`>= 0`). It should be
    /// small against the spacing of distinct predictions (it only has to break ties) and is
    /// also used at apply time.
    pub jitter_scale: f64,
    /// The groups, in the order used for the barycentre sum and in outputs. `None`: the
    /// groups found in the calibration sample, sorted by name. With a declaration, a
    /// declared group without calibration rows and a calibration row of an undeclared group
    /// are errors.
    pub groups: Option<Vec<String>>,
}

impl FitOptions {
    /// Jitter scale `jitter_scale`, groups taken from the calibration sample.
    pub fn new(jitter_scale: f64) -> Self {
        Self {
            jitter_scale,
            groups: None,
        }
    }

    /// The same options with declared groups (see [`FitOptions::groups`]).
    pub fn with_groups<S: AsRef<str>>(mut self, groups: &[S]) -> Self {
        self.groups = Some(groups.iter().map(|g| g.as_ref().to_string()).collect());
        self
    }
}

/// The calibration values of one group.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GroupQuantiles {
    name: String,
    weight: f64,
    sorted: Vec<f64>,
}

impl GroupQuantiles {
    /// Group name.
    pub fn name(&self) -> &str {
        &self.name
    }
    /// Weight `p_g = n_g / n` (its share of the calibration sample).
    pub fn weight(&self) -> f64 {
        self.weight
    }
    /// The group's jittered calibration values, sorted increasingly: its empirical quantile
    /// function is `Q_g(u) = sorted[max(ceil(n_g u), 1) - 1]`.
    pub fn sorted(&self) -> &[f64] {
        &self.sorted
    }
    /// Empirical CDF `F_g(t) = #{i : sorted[i] <= t}` as a count (divide by `n_g` for the CDF).
    fn rank(&self, t: f64) -> usize {
        self.sorted.partition_point(|&v| v <= t)
    }
    /// `Q_g(k / n_s)`: the order statistic of index `max(ceil(n_g k / n_s), 1)` (1-based),
    /// computed in integers so that no rounding can move it.
    fn quantile_of_rank(&self, k: usize, n_s: usize) -> f64 {
        let n = self.sorted.len() as u128;
        let j = (k as u128 * n).div_ceil(n_s as u128).max(1);
        self.sorted[(j - 1) as usize]
    }
}

/// A fitted Wasserstein-barycentre post-processor for one sensitive attribute.
///
/// Built by [`fit`]; saved and loaded as JSON ([`BarycentreFit::save_json`],
/// [`BarycentreFit::load_json`]); applied with [`BarycentreFit::apply`] (one prediction) or
/// [`BarycentreFit::transform`] (a sample).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BarycentreFit {
    format: String,
    version: u32,
    jitter_scale: f64,
    seed: Option<u64>,
    n_calibration: usize,
    groups: Vec<GroupQuantiles>,
}

/// Fits the post-processor on a calibration sample.
///
/// `predictions[i]` is the base prediction `f(x_i, s_i)` of calibration row `i` and
/// `groups[i]` its group name; `noise` gives one jitter draw per row (scale
/// `options.jitter_scale`). Each group's jittered values `f + e` are sorted and kept with its
/// weight `n_g / n`.
///
/// Errors: empty input, length mismatch, non-finite prediction or draw, invalid jitter scale,
/// fewer than two groups, a group with fewer than two rows, a group whose jittered values are
/// all equal ([`PostprocessError::DegenerateGroup`]: a constant group needs `jitter_scale > 0`),
/// and with declared groups a declared group without rows or an undeclared group.
pub fn fit<G: AsRef<str>>(
    predictions: &[f64],
    groups: &[G],
    options: &FitOptions,
    noise: Noise<'_>,
) -> Result<BarycentreFit, PostprocessError> {
    check_scale(options.jitter_scale)?;
    if predictions.is_empty() {
        return Err(PostprocessError::Empty {
            what: "calibration sample",
        });
    }
    let draws = noise.resolve(predictions.len(), options.jitter_scale)?;
    fit_with_draws(predictions, groups, options, &draws, noise.seed())
}

/// [`fit`] with resolved draws; `seed` is recorded for provenance.
pub(crate) fn fit_with_draws<G: AsRef<str>>(
    predictions: &[f64],
    groups: &[G],
    options: &FitOptions,
    draws: &[f64],
    seed: Option<u64>,
) -> Result<BarycentreFit, PostprocessError> {
    check_scale(options.jitter_scale)?;
    let n = predictions.len();
    if n == 0 {
        return Err(PostprocessError::Empty {
            what: "calibration sample",
        });
    }
    check_len("calibration groups", n, groups.len())?;
    check_len("jitter draws", n, draws.len())?;
    check_finite("prediction", predictions)?;
    for (row, &d) in draws.iter().enumerate() {
        check_draw(row, d, options.jitter_scale)?;
    }
    let names: Vec<String> = match &options.groups {
        Some(declared) => {
            for (i, g) in declared.iter().enumerate() {
                if declared[..i].contains(g) {
                    return Err(PostprocessError::DuplicateGroup { group: g.clone() });
                }
            }
            declared.clone()
        }
        None => groups
            .iter()
            .map(|g| g.as_ref())
            .collect::<BTreeSet<&str>>()
            .into_iter()
            .map(str::to_string)
            .collect(),
    };
    let index: HashMap<&str, usize> = names
        .iter()
        .enumerate()
        .map(|(i, g)| (g.as_str(), i))
        .collect();
    let mut values: Vec<Vec<f64>> = vec![Vec::new(); names.len()];
    for (row, g) in groups.iter().enumerate() {
        let Some(&gi) = index.get(g.as_ref()) else {
            return Err(PostprocessError::UndeclaredGroup {
                row,
                group: g.as_ref().to_string(),
                declared: names.clone(),
            });
        };
        values[gi].push(predictions[row] + draws[row]);
    }
    if let Some(gi) = values.iter().position(Vec::is_empty) {
        return Err(PostprocessError::GroupAbsent {
            group: names[gi].clone(),
            declared: names.clone(),
        });
    }
    if names.len() < 2 {
        return Err(PostprocessError::TooFewGroups { found: names });
    }
    let mut out = Vec::with_capacity(names.len());
    for (name, mut sorted) in names.into_iter().zip(values) {
        if sorted.len() < 2 {
            return Err(PostprocessError::TooFewRows {
                group: name,
                found: sorted.len(),
            });
        }
        sorted.sort_by(f64::total_cmp);
        if sorted[0] == sorted[sorted.len() - 1] {
            return Err(PostprocessError::DegenerateGroup {
                group: name,
                n: sorted.len(),
                value: sorted[0],
                scale: options.jitter_scale,
            });
        }
        let weight = sorted.len() as f64 / n as f64;
        out.push(GroupQuantiles {
            name,
            weight,
            sorted,
        });
    }
    Ok(BarycentreFit {
        format: FIT_FORMAT.to_string(),
        version: FIT_VERSION,
        jitter_scale: options.jitter_scale,
        seed,
        n_calibration: n,
        groups: out,
    })
}

pub(crate) fn check_len(what: &str, expected: usize, found: usize) -> Result<(), PostprocessError> {
    if expected == found {
        Ok(())
    } else {
        Err(PostprocessError::LengthMismatch {
            what: what.to_string(),
            expected,
            found,
        })
    }
}

pub(crate) fn check_finite(what: &'static str, values: &[f64]) -> Result<(), PostprocessError> {
    match values.iter().position(|v| !v.is_finite()) {
        Some(row) => Err(PostprocessError::NonFinite {
            what,
            row,
            value: values[row],
        }),
        None => Ok(()),
    }
}

pub(crate) fn check_alpha(alpha: f64, step: Option<&str>) -> Result<(), PostprocessError> {
    if (0.0..=1.0).contains(&alpha) {
        Ok(())
    } else {
        Err(PostprocessError::AlphaOutOfRange {
            found: alpha,
            step: step.map(str::to_string),
        })
    }
}

impl BarycentreFit {
    /// The groups, in barycentre-sum order.
    pub fn groups(&self) -> &[GroupQuantiles] {
        &self.groups
    }

    /// The group names, in order.
    pub fn group_names(&self) -> Vec<String> {
        self.groups.iter().map(|g| g.name.clone()).collect()
    }

    /// The jitter half-width `sigma`.
    pub fn jitter_scale(&self) -> f64 {
        self.jitter_scale
    }

    /// The seed of the calibration jitter, when it was seeded.
    pub fn seed(&self) -> Option<u64> {
        self.seed
    }

    /// Number of calibration rows.
    pub fn n_calibration(&self) -> usize {
        self.n_calibration
    }

    /// Position of group `name`; [`PostprocessError::UnknownGroup`] (naming the known groups)
    /// when the post-processor was not fitted on it.
    pub fn group_index(&self, name: &str) -> Result<usize, PostprocessError> {
        self.groups
            .iter()
            .position(|g| g.name == name)
            .ok_or_else(|| PostprocessError::UnknownGroup {
                group: name.to_string(),
                known: self.group_names(),
                attribute: None,
            })
    }

    /// The fully fair value `g = sum_g' p_g' Q_g'(F_s(y))` of a jittered prediction `y` of
    /// group index `s` (unchecked: `y` finite, `s` in range).
    pub(crate) fn fair_value_at(&self, s: usize, y: f64) -> f64 {
        let own = &self.groups[s];
        let k = own.rank(y);
        let n_s = own.sorted.len();
        let mut g = 0.0;
        for grp in &self.groups {
            g += grp.weight * grp.quantile_of_rank(k, n_s);
        }
        g
    }

    /// Post-processes one prediction `f` of group `group`:
    /// `(1 - alpha) f + alpha g` with `g = sum_g' p_g' Q_g'(F_group(f + noise))`.
    ///
    /// `noise` is this prediction's jitter draw, in `[-sigma, sigma]` (pass 0 for none).
    /// `alpha = 0` returns `f` exactly, `alpha = 1` returns `g` exactly.
    pub fn apply(
        &self,
        prediction: f64,
        group: &str,
        alpha: f64,
        noise: f64,
    ) -> Result<f64, PostprocessError> {
        check_alpha(alpha, None)?;
        check_finite("prediction", &[prediction])?;
        check_draw(0, noise, self.jitter_scale)?;
        let s = self.group_index(group)?;
        Ok(mix(
            prediction,
            self.fair_value_at(s, prediction + noise),
            alpha,
        ))
    }

    /// Post-processes a sample: row `i` is [`BarycentreFit::apply`] of `predictions[i]`,
    /// `groups[i]` with the `i`-th draw of `noise` (scale [`BarycentreFit::jitter_scale`]).
    pub fn transform<G: AsRef<str>>(
        &self,
        predictions: &[f64],
        groups: &[G],
        alpha: f64,
        noise: Noise<'_>,
    ) -> Result<Vec<f64>, PostprocessError> {
        check_alpha(alpha, None)?;
        let draws = self.prepare(predictions, groups, noise)?;
        let ids = self.group_ids(groups)?;
        Ok(predictions
            .iter()
            .zip(&ids)
            .zip(&draws)
            .map(|((&f, &s), &e)| mix(f, self.fair_value_at(s, f + e), alpha))
            .collect())
    }

    /// Checks a sample and resolves its draws.
    pub(crate) fn prepare<G: AsRef<str>>(
        &self,
        predictions: &[f64],
        groups: &[G],
        noise: Noise<'_>,
    ) -> Result<Vec<f64>, PostprocessError> {
        if predictions.is_empty() {
            return Err(PostprocessError::Empty {
                what: "predictions",
            });
        }
        check_len("groups", predictions.len(), groups.len())?;
        check_finite("prediction", predictions)?;
        noise.resolve(predictions.len(), self.jitter_scale)
    }

    /// Group index of every row (errors name the first unknown group).
    pub(crate) fn group_ids<G: AsRef<str>>(
        &self,
        groups: &[G],
    ) -> Result<Vec<usize>, PostprocessError> {
        let index: HashMap<&str, usize> = self
            .groups
            .iter()
            .enumerate()
            .map(|(i, g)| (g.name.as_str(), i))
            .collect();
        groups
            .iter()
            .map(|g| match index.get(g.as_ref()) {
                Some(&i) => Ok(i),
                None => self.group_index(g.as_ref()),
            })
            .collect()
    }

    /// The post-processor as pretty-printed JSON (floats in shortest round-trip form, so
    /// [`BarycentreFit::from_json_str`] restores it bit for bit).
    pub fn to_json(&self) -> Result<String, PostprocessError> {
        serde_json::to_string_pretty(self).map_err(|e| PostprocessError::Json {
            path: PathBuf::from("<string>"),
            message: e.to_string(),
        })
    }

    /// Parses and validates a post-processor; `path` is only used in errors.
    pub fn from_json_str(text: &str, path: &Path) -> Result<Self, PostprocessError> {
        let fit: BarycentreFit =
            serde_json::from_str(text).map_err(|e| PostprocessError::Json {
                path: path.to_path_buf(),
                message: e.to_string(),
            })?;
        fit.validate(path)?;
        Ok(fit)
    }

    /// Writes [`BarycentreFit::to_json`] to `path` atomically.
    pub fn save_json(&self, path: &Path) -> Result<(), PostprocessError> {
        crate::error::write_text(path, &self.to_json()?)
    }

    /// Reads and validates a post-processor written by [`BarycentreFit::save_json`].
    pub fn load_json(path: &Path) -> Result<Self, PostprocessError> {
        Self::from_json_str(&crate::error::read_text(path)?, path)
    }

    /// Checks the invariants [`fit`] establishes (for a post-processor read from a file).
    pub fn validate(&self, path: &Path) -> Result<(), PostprocessError> {
        let bad = |what: String| PostprocessError::InvalidFit {
            path: path.to_path_buf(),
            what,
        };
        if self.format != FIT_FORMAT || self.version != FIT_VERSION {
            return Err(bad(format!(
                "format `{}` version {}: expected `{FIT_FORMAT}` version {FIT_VERSION}",
                self.format, self.version
            )));
        }
        if !(self.jitter_scale.is_finite() && self.jitter_scale >= 0.0) {
            return Err(bad(format!(
                "jitter_scale = {}: expected a finite number >= 0",
                self.jitter_scale
            )));
        }
        if self.groups.len() < 2 {
            return Err(bad(format!(
                "{} group(s): expected at least 2",
                self.groups.len()
            )));
        }
        let total: usize = self.groups.iter().map(|g| g.sorted.len()).sum();
        if total != self.n_calibration {
            return Err(bad(format!(
                "n_calibration = {} but the groups hold {total} values",
                self.n_calibration
            )));
        }
        for (i, g) in self.groups.iter().enumerate() {
            if self.groups[..i].iter().any(|o| o.name == g.name) {
                return Err(bad(format!("group `{}` appears twice", g.name)));
            }
            let n = g.sorted.len();
            if n < 2 {
                return Err(bad(format!(
                    "group `{}` has {n} value(s): expected at least 2",
                    g.name
                )));
            }
            if let Some(j) = g.sorted.iter().position(|v| !v.is_finite()) {
                return Err(bad(format!(
                    "group `{}`: value {j} is {}: expected a finite number",
                    g.name, g.sorted[j]
                )));
            }
            if let Some(j) = g.sorted.windows(2).position(|w| w[1] < w[0]) {
                return Err(bad(format!(
                    "group `{}`: values {j} and {} are not sorted ({} > {})",
                    g.name,
                    j + 1,
                    g.sorted[j],
                    g.sorted[j + 1]
                )));
            }
            if g.sorted[0] == g.sorted[n - 1] {
                return Err(bad(format!("group `{}`: all {n} values are equal", g.name)));
            }
            let expected = n as f64 / self.n_calibration as f64;
            if g.weight != expected {
                return Err(bad(format!(
                    "group `{}`: weight {} but it holds {n} of {} values (expected {expected})",
                    g.name, g.weight, self.n_calibration
                )));
            }
        }
        Ok(())
    }
}

/// `(1 - alpha) f + alpha g`: the point at `alpha` on the segment from `f` to `g`.
pub(crate) fn mix(f: f64, g: f64, alpha: f64) -> f64 {
    (1.0 - alpha) * f + alpha * g
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Two groups of four, no jitter: every step by hand.
    fn toy() -> BarycentreFit {
        let f = [1.0, 2.0, 3.0, 4.0, 10.0, 20.0, 30.0, 40.0];
        let g = ["a", "a", "a", "a", "b", "b", "b", "b"];
        fit(&f, &g, &FitOptions::new(0.0), Noise::Seeded(0)).unwrap()
    }

    #[test]
    fn equal_groups_map_rank_k_to_the_mean_of_the_kth_values() {
        let fit = toy();
        assert_eq!(fit.group_names(), vec!["a", "b"]);
        // F_a(3) = 3/4 -> Q_a = 3, Q_b = 30 -> 0.5 * 3 + 0.5 * 30.
        assert_eq!(fit.apply(3.0, "a", 1.0, 0.0).unwrap(), 16.5);
        assert_eq!(fit.apply(30.0, "b", 1.0, 0.0).unwrap(), 16.5);
        // Between calibration values: F_a(2.5) = 2/4 -> (2 + 20) / 2.
        assert_eq!(fit.apply(2.5, "a", 1.0, 0.0).unwrap(), 11.0);
        // Below the sample: F = 0 -> the minima; above: F = 1 -> the maxima.
        assert_eq!(fit.apply(-5.0, "a", 1.0, 0.0).unwrap(), 5.5);
        assert_eq!(fit.apply(99.0, "b", 1.0, 0.0).unwrap(), 22.0);
        // alpha: the segment between f and g.
        assert_eq!(fit.apply(3.0, "a", 0.0, 0.0).unwrap(), 3.0);
        assert_eq!(fit.apply(3.0, "a", 0.5, 0.0).unwrap(), 9.75);
    }

    #[test]
    fn unequal_groups_use_the_generalised_inverse() {
        // a: 2 values, b: 3 values. F_a(x) = 1/2 -> Q_b(1/2) = b_(ceil(1.5)) = b_(2).
        let f = [0.0, 1.0, 10.0, 20.0, 30.0];
        let g = ["a", "a", "b", "b", "b"];
        let fit = fit(&f, &g, &FitOptions::new(0.0), Noise::Seeded(0)).unwrap();
        let (pa, pb) = (2.0 / 5.0, 3.0 / 5.0);
        assert_eq!(fit.apply(0.0, "a", 1.0, 0.0).unwrap(), pa * 0.0 + pb * 20.0);
        // F_b(10) = 1/3 -> Q_a(1/3) = a_(ceil(2/3)) = a_(1).
        assert_eq!(
            fit.apply(10.0, "b", 1.0, 0.0).unwrap(),
            pa * 0.0 + pb * 10.0
        );
        // F_b(20) = 2/3 -> Q_a(2/3) = a_(ceil(4/3)) = a_(2).
        assert_eq!(
            fit.apply(20.0, "b", 1.0, 0.0).unwrap(),
            pa * 1.0 + pb * 20.0
        );
    }

    #[test]
    fn ties_without_jitter_take_the_top_of_the_tie_block() {
        // Right-continuous CDF: F_a(1) = 3/4 for the three tied values.
        let f = [1.0, 1.0, 1.0, 2.0, 10.0, 20.0, 30.0, 40.0];
        let g = ["a", "a", "a", "a", "b", "b", "b", "b"];
        let fit = fit(&f, &g, &FitOptions::new(0.0), Noise::Seeded(0)).unwrap();
        assert_eq!(
            fit.apply(1.0, "a", 1.0, 0.0).unwrap(),
            0.5 * 1.0 + 0.5 * 30.0
        );
    }

    #[test]
    fn declared_groups_fix_the_order_and_are_checked() {
        let f = [1.0, 2.0, 3.0, 4.0];
        let g = ["b", "b", "a", "a"];
        let o = FitOptions::new(0.0).with_groups(&["b", "a"]);
        let fitted = fit(&f, &g, &o, Noise::Seeded(0)).unwrap();
        assert_eq!(fitted.group_names(), vec!["b", "a"]);
        let o = FitOptions::new(0.0).with_groups(&["b", "a", "c"]);
        let e = fit(&f, &g, &o, Noise::Seeded(0)).unwrap_err();
        assert!(
            e.to_string()
                .starts_with("group `c` has no row in the calibration sample"),
            "{e}"
        );
        let o = FitOptions::new(0.0).with_groups(&["b"]);
        let e = fit(&f, &g, &o, Noise::Seeded(0)).unwrap_err();
        assert!(
            e.to_string().starts_with(
                "calibration row 2 has group `a`: expected one of the declared groups b"
            ),
            "{e}"
        );
        let o = FitOptions::new(0.0).with_groups(&["a", "a"]);
        assert!(matches!(
            fit(&f, &g, &o, Noise::Seeded(0)),
            Err(PostprocessError::DuplicateGroup { .. })
        ));
    }

    #[test]
    fn validate_rejects_edited_files() {
        let fit = toy();
        let p = Path::new("x.json");
        let json = fit.to_json().unwrap();
        assert_eq!(BarycentreFit::from_json_str(&json, p).unwrap(), fit);
        let cases = [
            ("\"weight\": 0.5", "\"weight\": 0.6", "weight 0.6"),
            ("\"version\": 1", "\"version\": 2", "version 2"),
            (
                "\"n_calibration\": 8",
                "\"n_calibration\": 9",
                "n_calibration = 9",
            ),
            (
                "\"jitter_scale\": 0.0",
                "\"jitter_scale\": -1.0",
                "jitter_scale = -1",
            ),
            ("3.0,", "5.0,", "not sorted"),
        ];
        for (from, to, want) in cases {
            assert!(json.contains(from), "{from} not in {json}");
            let e = BarycentreFit::from_json_str(&json.replacen(from, to, 1), p).unwrap_err();
            assert!(e.to_string().contains(want), "{want}: {e}");
            assert!(e.to_string().starts_with("x.json: invalid"), "{e}");
        }
        let e = BarycentreFit::from_json_str("{\"format\": 1}", p).unwrap_err();
        assert!(e.to_string().starts_with("x.json: not a valid"), "{e}");
    }
}
