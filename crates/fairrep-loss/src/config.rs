//! The divergences' configurations, validated once ([`SinkhornConfig::validate`],
//! [`MmdConfig::validate`]) by every caller (the trainer's config, the `fairrep divergence`
//! command, the audits), and the crate's error type.
use std::fmt;

/// Why a divergence was not computed.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum LossError {
    /// A configuration value is out of its range.
    #[error("{key}: expected {expected}, found {found}")]
    InvalidConfig {
        /// The setting (`eps`, `scaling`, `bandwidths`, ...).
        key: &'static str,
        /// Its valid range.
        expected: String,
        /// The value given.
        found: String,
    },
    /// Shapes that do not fit together.
    #[error("{what}: expected {expected}, found {found}")]
    Shape {
        /// What is wrong (`x and y`, `weights a`, ...).
        what: &'static str,
        /// The shape expected.
        expected: String,
        /// The shape found.
        found: String,
    },
    /// Weights that are negative, not finite or all zero.
    #[error("weights {which}: expected finite values >= 0 with a positive sum, found {found}")]
    Weights {
        /// `a` or `b`.
        which: &'static str,
        /// The offending value or sum.
        found: String,
    },
    /// The points are not finite, or so large that their squared distances overflow.
    #[error(
        "the points' squared distances are not finite in {dtype} (largest coordinate \
         magnitude {magnitude:e}); rescale the data{hint}"
    )]
    NonFinite {
        /// The compute precision.
        dtype: String,
        /// The largest coordinate magnitude seen (inf or NaN when a coordinate is not finite).
        magnitude: f64,
        /// A suggestion (`, or compute in float64`), or nothing.
        hint: &'static str,
    },
    /// The path that would compute the divergence needs more memory than is available.
    #[error(
        "{divergence} between {n} and {m} points of dimension {d} on the {path} path needs about \
         {needed} but {available} is available; use fewer points (a subsample){advice}"
    )]
    Memory {
        /// `Sinkhorn` or `MMD`.
        divergence: &'static str,
        /// The path the routing module chose.
        path: Path,
        /// Rows of the first cloud.
        n: usize,
        /// Rows of the second cloud.
        m: usize,
        /// Dimension.
        d: usize,
        /// The estimate, in human units.
        needed: Bytes,
        /// What the machine has, in human units.
        available: Bytes,
        /// How else to proceed, or nothing.
        advice: &'static str,
    },
}

/// A byte count printed in binary units.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Bytes(pub u64);

impl fmt::Display for Bytes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let v = self.0 as f64;
        let (value, unit) = if v >= (1u64 << 30) as f64 {
            (v / (1u64 << 30) as f64, "GiB")
        } else if v >= (1u64 << 20) as f64 {
            (v / (1u64 << 20) as f64, "MiB")
        } else {
            (v / 1024.0, "KiB")
        };
        write!(f, "{value:.1} {unit}")
    }
}

fn invalid(key: &'static str, expected: &str, found: impl fmt::Display) -> LossError {
    LossError::InvalidConfig {
        key,
        expected: expected.to_string(),
        found: found.to_string(),
    }
}

/// The eps-scaling factors accepted everywhere (MATH.md: `scaling` in `[0.5, 0.95]`).
pub const SCALING_RANGE: std::ops::RangeInclusive<f64> = 0.5..=0.95;

/// Configuration of [`crate::sinkhorn_divergence`]. `eps` is the temperature in cost units
/// (cost `|x - y|^2 / 2`; GeomLoss `blur = sqrt(eps)`; POT and OTT use `|x - y|^2`, i.e.
/// their `reg = 2 eps`).
#[derive(Debug, Clone, PartialEq)]
pub struct SinkhornConfig {
    /// Target temperature, in cost units.
    pub eps: f64,
    /// eps-scaling factor in [`SCALING_RANGE`]: eps is multiplied by `scaling^2` at each step.
    pub scaling: f64,
    /// Target marginal error (see [`crate::SinkhornOutput::marginal_error`]).
    pub tolerance: f64,
    /// Maximum number of iterations at the target eps, after the eps-scaling descent.
    pub max_iters: usize,
    /// The marginal error is checked every `check_every` iterations at the target eps.
    pub check_every: usize,
}

impl Default for SinkhornConfig {
    fn default() -> Self {
        Self {
            eps: 0.1,
            scaling: 0.9,
            tolerance: 1e-3,
            max_iters: 200,
            check_every: 5,
        }
    }
}

impl SinkhornConfig {
    /// Checks every setting: `eps` finite and positive, `scaling` in [`SCALING_RANGE`],
    /// `tolerance` finite and positive, `max_iters` and `check_every` at least 1.
    pub fn validate(&self) -> Result<(), LossError> {
        if !(self.eps.is_finite() && self.eps > 0.0) {
            return Err(invalid("eps", "a finite number > 0", self.eps));
        }
        if !SCALING_RANGE.contains(&self.scaling) {
            return Err(invalid("scaling", "a number in [0.5, 0.95]", self.scaling));
        }
        if !(self.tolerance.is_finite() && self.tolerance > 0.0) {
            return Err(invalid("tolerance", "a finite number > 0", self.tolerance));
        }
        if self.max_iters == 0 {
            return Err(invalid("max_iters", "at least 1", 0));
        }
        if self.check_every == 0 {
            return Err(invalid("check_every", "at least 1", 0));
        }
        Ok(())
    }
}

/// Kernel bandwidths `s` of `k_s(x, y) = exp(-|x - y|^2 / (2 s^2))`.
#[derive(Debug, Clone, PartialEq)]
pub enum Bandwidth {
    /// Fixed bandwidths; the kernel is the mean of the Gaussian kernels over the list.
    Fixed(Vec<f64>),
    /// The median pairwise distance of the pooled sample, treated as a constant (no gradient);
    /// see `fairrep_metrics::median` for the convention and the sampling above 2048 points.
    Median,
}

/// Which estimator of MMD² to compute.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MmdEstimator {
    /// V-statistic `a'Kxx a + b'Kyy b - 2 a'Kxy b`, always >= 0.
    Biased,
    /// U-statistic: the self-sums without their diagonals, each divided by `1 - sum a_i^2`.
    /// Can be < 0. A cloud whose whole mass sits on one point has no off-diagonal pair: its
    /// self-term is then 0 (callers that expose this estimator reject such clouds).
    Unbiased,
}

/// The range of fixed bandwidths: beyond it the kernel's exponent `-d^2 / (2 s^2)` leaves the
/// range of float32 (for `s` below, `1 / (2 s^2)` overflows; above, `s^2` does).
pub const BANDWIDTH_RANGE: std::ops::RangeInclusive<f64> = 1e-15..=1e15;

/// Configuration of [`crate::mmd2`].
#[derive(Debug, Clone, PartialEq)]
pub struct MmdConfig {
    /// The kernel bandwidths.
    pub bandwidth: Bandwidth,
    /// The estimator.
    pub estimator: MmdEstimator,
}

impl Default for MmdConfig {
    fn default() -> Self {
        Self {
            bandwidth: Bandwidth::Median,
            estimator: MmdEstimator::Biased,
        }
    }
}

impl MmdConfig {
    /// Checks the bandwidths: at least one, each finite and in [`BANDWIDTH_RANGE`].
    pub fn validate(&self) -> Result<(), LossError> {
        if let Bandwidth::Fixed(list) = &self.bandwidth {
            if list.is_empty() {
                return Err(invalid("bandwidths", "at least one bandwidth", "[]"));
            }
            if let Some(s) = list.iter().find(|s| !BANDWIDTH_RANGE.contains(*s)) {
                return Err(invalid(
                    "bandwidths",
                    "positive numbers in the supported range [1e-15, 1e15]",
                    s,
                ));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn configs_are_validated_with_one_range_each() {
        assert!(SinkhornConfig::default().validate().is_ok());
        let bad = |c: SinkhornConfig| c.validate().unwrap_err().to_string();
        let base = SinkhornConfig::default;
        assert!(bad(SinkhornConfig { eps: 0.0, ..base() }).contains("eps"));
        assert!(
            bad(SinkhornConfig {
                eps: f64::NAN,
                ..base()
            })
            .contains("eps")
        );
        assert!(
            bad(SinkhornConfig {
                scaling: 1.0,
                ..base()
            })
            .contains("[0.5, 0.95]")
        );
        assert!(
            bad(SinkhornConfig {
                scaling: 0.99,
                ..base()
            })
            .contains("scaling")
        );
        assert!(
            bad(SinkhornConfig {
                tolerance: 0.0,
                ..base()
            })
            .contains("tolerance")
        );
        assert!(
            bad(SinkhornConfig {
                max_iters: 0,
                ..base()
            })
            .contains("max_iters")
        );
        assert!(
            bad(SinkhornConfig {
                check_every: 0,
                ..base()
            })
            .contains("check_every")
        );
        let mmd = |b: Vec<f64>| MmdConfig {
            bandwidth: Bandwidth::Fixed(b),
            estimator: MmdEstimator::Biased,
        };
        assert!(mmd(vec![0.5, 2.0]).validate().is_ok());
        assert!(mmd(vec![]).validate().is_err());
        assert!(mmd(vec![1e-30]).validate().is_err());
        assert!(mmd(vec![f64::INFINITY]).validate().is_err());
        assert_eq!(Bytes(3 << 30).to_string(), "3.0 GiB");
    }
}

/// An implementation of the divergences.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Path {
    /// Loops in host memory on the CPU devices over stored cost / kernel matrices.
    Host,
    /// Loops in host memory on the CPU devices that compute the costs / kernel values from
    /// the points, tile by tile, storing no `n x m` matrix.
    HostTiled,
    /// The fused CubeCL kernels on wgpu.
    Fused,
    /// burn tensor operations.
    TensorOps,
}

impl std::fmt::Display for Path {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Path::Host => "host",
            Path::HostTiled => "host-tiled",
            Path::Fused => "fused",
            Path::TensorOps => "tensor-op",
        })
    }
}
