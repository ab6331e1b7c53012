//! Means and 95% confidence intervals over seeds.
use serde::{Deserialize, Serialize};

/// Mean and 95% confidence interval (Student t) of a sample of seeds.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Interval {
    /// The sample mean.
    pub mean: f64,
    /// Half-width of the 95% interval; 0 for a single value (no interval).
    pub ci95: f64,
    /// The number of values.
    pub n: usize,
}

/// The 0.975 quantile of Student's t with `df` degrees of freedom (NaN for `df = 0`, the
/// normal quantile 1.96 above 30).
pub fn t975(df: usize) -> f64 {
    const T: [f64; 30] = [
        12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160,
        2.145, 2.131, 2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056,
        2.052, 2.048, 2.045, 2.042,
    ];
    match df {
        0 => f64::NAN,
        1..=30 => T[df - 1],
        _ => 1.96,
    }
}

impl Interval {
    /// Mean and `t975(n - 1) * sd / sqrt(n)` of `values` (sample standard deviation).
    pub fn of(values: &[f64]) -> Self {
        let n = values.len();
        let mean = values.iter().sum::<f64>() / n.max(1) as f64;
        if n < 2 {
            return Self { mean, ci95: 0.0, n };
        }
        let var = values.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / (n - 1) as f64;
        Self {
            mean,
            ci95: t975(n - 1) * (var / n as f64).sqrt(),
            n,
        }
    }

    /// `mean - ci95`.
    pub fn low(&self) -> f64 {
        self.mean - self.ci95
    }

    /// `mean + ci95`.
    pub fn high(&self) -> f64 {
        self.mean + self.ci95
    }

    /// `mean ± ci95` with `digits` decimals (just the mean for one value).
    pub fn show(&self, digits: usize) -> String {
        if self.n < 2 {
            format!("{:.digits$}", self.mean)
        } else {
            format!("{:.digits$}±{:.digits$}", self.mean, self.ci95)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn intervals_use_student_t() {
        let i = Interval::of(&[1.0, 2.0, 3.0]);
        assert!((i.mean - 2.0).abs() < 1e-12);
        // sd = 1, n = 3: 4.303 / sqrt(3).
        assert!((i.ci95 - 4.303 / 3f64.sqrt()).abs() < 1e-9);
        assert_eq!(Interval::of(&[5.0]).ci95, 0.0);
        assert_eq!(t975(100), 1.96);
        assert!(t975(0).is_nan());
    }
}
