//! Fair regression by Wasserstein-barycentre post-processing (Chzhen, Denis, Hebiri, Oneto
//! and Pontil, "Fair Regression with Wasserstein Barycenters", NeurIPS 2020), without burn.
//!
//! Any real-valued predictor `f(x, s)` with a sensitive group `s` becomes the predictor that
//! minimises the squared risk under *strong demographic parity* (the law of the prediction is
//! the same in every group):
//!
//! ```text
//! g(x, s) = sum_{s'} p_{s'} Q_{s'}( F_s( f(x, s) ) )
//! ```
//!
//! with `p_{s'}` the group frequencies, `F_s` the CDF of `f` within group `s` and `Q_{s'}` the
//! quantile function of `f` within group `s'`. The law of `g` is the Wasserstein-2 barycentre
//! of the groups' laws of `f`. Any number `G >= 2` of groups is supported.
//!
//! # Estimator
//!
//! [`fit`] estimates `p`, `F` and `Q` on a calibration sample (a held-out split: the
//! validation split, or predictions the base model was not fitted on):
//!
//! - jitter: every calibration prediction and every prediction post-processed later gets an
//!   independent draw `e ~ U([-sigma, sigma])` ([`jitter`]); `sigma` is the caller's
//!   [`FitOptions::jitter_scale`] and the draws are explicit ([`Noise`]) so that runs are
//!   reproducible;
//! - `p_g = n_g / n` on the calibration sample;
//! - `F_s(t) = #{i in s : y_i <= t} / n_s` (right-continuous empirical CDF of the jittered
//!   calibration values `y_i = f_i + e_i`);
//! - `Q_g(u) = y^g_(j)` with `j = max(ceil(n_g u), 1)`, the generalised inverse
//!   `inf {t : F_g(t) >= u}` (an order statistic, no interpolation). For `u = k / n_s` the
//!   index is computed in integers, so no rounding can move it;
//! - `g(x, s) = sum_{g'} p_{g'} Q_{g'}(F_s(f(x, s) + e))`, summed in the fitted group order.
//!
//! This is the estimator of the paper (empirical CDF and quantile functions of the jittered
//! unlabelled predictions per group, frequencies from the sample). The authors' public demo
//! (`lucaoneto/NIPS2020_Fairness`, `f_NIPS.m`, two groups) computes the same map with three
//! simplifications this crate does not copy: the own-group term `Q_s(F_s(f))` is replaced by
//! `f` itself, the other group's quantile is searched on a 100-point grid spanning the pooled
//! calibration predictions, and the CDF counts `< t`; its jitter is Gaussian with the scale of
//! the machine epsilon (`eps * randn`). The EquiPy package (`FairWasserstein`) uses uniform
//! jitter (`sigma = 1e-4` by default), the right-continuous ECDF and a quantile function
//! linearly interpolated between order statistics, and clips outputs to `[0, 1]` when all
//! inputs lie there; here the quantile is the paper's order statistic and nothing is clipped.
//!
//! # Fairness knob `alpha` and the W2 geodesic
//!
//! [`BarycentreFit::apply`] returns `(1 - alpha) f + alpha g`: `alpha = 0` is the base
//! prediction (exactly), `alpha = 1` the fair one (exactly). EquiPy's `epsilon` is
//! `1 - alpha`. Within group `s`, `g = T_s(f)` with `T_s = Q_bar o F_s` the non-decreasing
//! optimal transport map from the group's law `nu_s` to the barycentre `nu_bar`
//! (`Q_bar = sum p_g Q_g`). So the law of the output in group `s` is
//! `((1 - alpha) id + alpha T_s) # nu_s`, McCann's displacement interpolation: the point at
//! `alpha` on the W2 geodesic from `nu_s` to `nu_bar`. In one dimension its quantile function
//! is `(1 - alpha) Q_s + alpha Q_bar`, hence (population version) every `W_p` distance between
//! two groups' outputs is `(1 - alpha)` times that of the base predictions, and the risk moves
//! along the geodesic. The post-processing is also monotone within a group: a larger
//! prediction never gets a smaller output (for the same jitter draw).
//!
//! # Ties, constant groups, degenerate input
//!
//! With `sigma > 0` the jittered calibration values are distinct (with probability one), so
//! tied base predictions receive distinct ranks at random and the fair outputs of a group
//! follow the barycentre even when the base predictor is constant on that group: such a group
//! is accepted, and its predictions are spread over the barycentre at random (the fair
//! predictor is randomised through the jitter). With `sigma = 0` ties are kept: the
//! CDF jumps at a tie and every tied prediction takes the top rank of its tie block; a group
//! whose (jittered) calibration values are all equal is rejected
//! ([`PostprocessError::DegenerateGroup`]), as is a group with fewer than 2 rows, fewer than 2
//! groups, a non-finite value, an empty sample, `alpha` outside `[0, 1]`, a jitter draw
//! outside `[-sigma, sigma]`, a group the post-processor was not fitted on
//! ([`PostprocessError::UnknownGroup`], naming the known groups) and, when the groups are
//! declared ([`FitOptions::groups`]), a declared group missing from the calibration sample.
//!
//! # Modules
//!
//! - [`fit`], [`BarycentreFit`]: one attribute; JSON save/load.
//! - [`fit_sequential`], [`SequentialFit`]: several attributes in sequence (EquiPy's
//!   `MultiWasserstein`), with the unfairness left after each step.
//! - [`metrics`]: MSE, RMSE, KS, W1 and DP gap between groups; [`alpha_curve`].
//! - [`predictions`]: predictions CSV files from other tools.
//!
//! # Dependencies
//!
//! `fairrep-data` for the between-group metrics (KS, W1, DP gap: one implementation in the
//! workspace); `serde` / `serde_json` for the saved post-processor (written in shortest
//! round-trip form and parsed with the `float_roundtrip` feature, without which serde_json may
//! read a value one unit in the last place off, so a reloaded post-processor gives
//! bit-identical outputs); `csv` for predictions files
//! (quoting, field counts and line positions); `rand_chacha` (through `rand`'s `SeedableRng`)
//! for seeded jitter with a portable, value-stable stream; `thiserror` for the error enum.
//! The library never prints.

pub mod barycentre;
mod error;
pub mod jitter;
pub mod metrics;
pub mod predictions;
pub mod sequential;

pub use barycentre::{BarycentreFit, FitOptions, GroupQuantiles, fit};
pub use error::PostprocessError;
pub use jitter::{Noise, seeded_draws};
pub use metrics::{
    AlphaCurve, CurvePoint, RegressionMetrics, alpha_curve, default_alphas, regression_metrics,
};
pub use predictions::{GroupColumn, PredictionsTable, parse_predictions_csv, read_predictions_csv};
pub use sequential::{
    AttributeColumn, AttributeUnfairness, SequentialFit, SequentialOutput, SequentialPrediction,
    SequentialStep, StageUnfairness, fit_sequential,
};
