//! Seeded synthetic multitask data with a tunable dependence on the sensitive group.
//!
//! Generative model, for row `i` with group `g` (groups are exactly balanced, `i mod G`,
//! then shuffled) and centred group code `c = g - (G - 1) / 2`:
//! - `x = z + group_shift * c * m`, `z ~ N(0, I_d)`, `m` = indicator of the first
//!   `ceil(d / 2)` features (a mean shift of half of the features);
//! - task `k`: `y_k = 1[w_k . x + 0.5 x_a x_b + label_bias * c + noise * e > 0]`, `e ~ N(0, 1)`,
//!   `w_k = u_k / sqrt(d) + 0.35 m / sqrt(|m|)` with `u_k ~ N(0, I_d)`, and a random pair
//!   `a != b` per task (a nonlinear interaction).
//!
//! With `n_groups_2 >= 2`, a second attribute `s2` (ids `h`, centred code `c2`) is drawn from
//! its own ChaCha8 stream, after everything above (so the data without it is unchanged): in
//! each split, the rows of each group `g` get `h = j mod n_groups_2` for their `j`-th row, then
//! these ids are shuffled among the group's rows (every cell `(g, h)` has rows when the split
//! has at least `n_groups * n_groups_2`); it shifts the other half of the features by
//! `group_shift_2 * c2` and every task's logit by `label_bias_2 * c2`. The rows' groups are then
//! the cells `g * n_groups_2 + h`, named `gG & hH`.
//!
//! So `s` moves the inputs (a representation can remove it) and, with `label_bias`, the labels
//! directly. With the defaults the true labels' DP gap is well above 0.15 (see the tests).
//! Inputs are standardised with train statistics, like the real datasets.

use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use crate::error::DataError;
use crate::load::{
    AttributeInfo, ColumnKind, Dataset, InputColumn, NumericStats, Preprocessing, Schema, Split,
    TaskInfo,
};
use crate::matrix::Matrix;
use crate::spec::TaskKind;

/// Synthetic dataset parameters; every key has a default (`#[serde(default)]`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SyntheticConfig {
    /// Train rows (default 4000).
    pub n_train: usize,
    /// Validation rows (default 1000).
    pub n_valid: usize,
    /// Test rows (default 1000).
    pub n_test: usize,
    /// Input features `d` (default 16, at least 2).
    pub n_features: usize,
    /// Binary tasks (default 3, at least 1).
    pub n_tasks: usize,
    /// Sensitive groups (default 2, at least 2).
    pub n_groups: usize,
    /// Mean shift of half of the features between adjacent groups, in units of the noise std
    /// (default 1.0; 0 = inputs independent of the group).
    pub group_shift: f64,
    /// Shift of every task's logit between adjacent groups (default 0.5; 0 = labels depend on
    /// the group only through the inputs).
    pub label_bias: f64,
    /// Std of the logit noise (default 0.3; 0 = labels are deterministic functions of x, s).
    pub noise: f64,
    /// Groups of a second sensitive attribute `s2` (default 0: none; else at least 2).
    #[serde(skip_serializing_if = "is_zero")]
    pub n_groups_2: usize,
    /// Mean shift of the other half of the features between adjacent groups of `s2` (default
    /// 1.0).
    #[serde(skip_serializing_if = "is_one")]
    pub group_shift_2: f64,
    /// Shift of every task's logit between adjacent groups of `s2` (default 0.5).
    #[serde(skip_serializing_if = "is_half")]
    pub label_bias_2: f64,
}

fn is_zero(v: &usize) -> bool {
    *v == 0
}

fn is_one(v: &f64) -> bool {
    *v == 1.0
}

fn is_half(v: &f64) -> bool {
    *v == 0.5
}

/// Salt of the second attribute's random stream.
const SECOND_ATTRIBUTE_SALT: u64 = 0x5e_c0_4d_a7_7b_1d_e5_02;

impl Default for SyntheticConfig {
    fn default() -> Self {
        Self {
            n_train: 4000,
            n_valid: 1000,
            n_test: 1000,
            n_features: 16,
            n_tasks: 3,
            n_groups: 2,
            group_shift: 1.0,
            label_bias: 0.5,
            noise: 0.3,
            n_groups_2: 0,
            group_shift_2: 1.0,
            label_bias_2: 0.5,
        }
    }
}

impl SyntheticConfig {
    /// The most values (rows times features plus tasks) the generator makes: 4 GiB of float32
    /// features.
    pub const MAX_CELLS: usize = 1 << 30;

    /// Checks ranges: `2 <= n_groups`, every split has at least `n_groups` rows (the error names
    /// the split and `n_groups`), `n_features >= 2`, `n_tasks >= 1`, finite shifts, `noise >= 0`,
    /// and at most [`SyntheticConfig::MAX_CELLS`] generated values.
    pub fn validate(&self) -> Result<(), DataError> {
        let bad = |what: &str, expected: &str, found: String| {
            Err(DataError::InvalidArgument {
                what: format!("synthetic.{what}"),
                expected: expected.into(),
                found,
            })
        };
        if self.n_groups < 2 {
            return bad(
                "n_groups",
                ">= 2 (demographic parity compares groups)",
                self.n_groups.to_string(),
            );
        }
        if self.n_groups_2 == 1 {
            return bad(
                "n_groups_2",
                "0 (no second attribute) or at least 2",
                self.n_groups_2.to_string(),
            );
        }
        let cells = self.n_groups.saturating_mul(self.n_groups_2.max(1));
        if cells > crate::spec::MAX_CELLS {
            return bad(
                "n_groups_2",
                &format!(
                    "at most {} cells n_groups x n_groups_2",
                    crate::spec::MAX_CELLS
                ),
                format!("{} x {}", self.n_groups, self.n_groups_2),
            );
        }
        for (k, n) in [
            ("n_train", self.n_train),
            ("n_valid", self.n_valid),
            ("n_test", self.n_test),
        ] {
            if n < cells {
                let need = if self.n_groups_2 == 0 {
                    format!("at least n_groups = {} rows", self.n_groups)
                } else {
                    format!("at least n_groups x n_groups_2 = {cells} rows (a row per cell)")
                };
                return bad(k, &need, n.to_string());
            }
        }
        let cells = [self.n_train, self.n_valid, self.n_test]
            .iter()
            .try_fold(0usize, |acc, &n| acc.checked_add(n))
            .and_then(|rows| rows.checked_mul(self.n_features + self.n_tasks));
        if cells.is_none_or(|c| c > Self::MAX_CELLS) {
            // Name the size that makes the table too large: the largest of the five.
            let (key, value) = [
                ("n_train", self.n_train),
                ("n_valid", self.n_valid),
                ("n_test", self.n_test),
                ("n_features", self.n_features),
                ("n_tasks", self.n_tasks),
            ]
            .into_iter()
            .max_by_key(|&(_, v)| v)
            .unwrap_or(("n_train", self.n_train));
            return bad(
                key,
                &format!(
                    "at most {} generated values in all (rows x (features + tasks), 4 GiB of \
                     float32 memory)",
                    Self::MAX_CELLS
                ),
                format!(
                    "{value}, which makes {}",
                    cells.map_or_else(
                        || "more values than the address space holds".into(),
                        |c| format!("{c} values")
                    )
                ),
            );
        }
        if self.n_features < 2 {
            return bad("n_features", ">= 2", self.n_features.to_string());
        }
        if self.n_tasks < 1 {
            return bad("n_tasks", ">= 1", self.n_tasks.to_string());
        }
        for (k, v) in [
            ("group_shift", self.group_shift),
            ("label_bias", self.label_bias),
            ("noise", self.noise),
            ("group_shift_2", self.group_shift_2),
            ("label_bias_2", self.label_bias_2),
        ] {
            if !v.is_finite() {
                return bad(k, "a finite number", v.to_string());
            }
        }
        if self.noise < 0.0 {
            return bad("noise", ">= 0", self.noise.to_string());
        }
        Ok(())
    }
}

fn normal(rng: &mut ChaCha8Rng) -> f64 {
    // Box-Muller; 1 - u in (0, 1] keeps ln finite.
    let u1: f64 = 1.0 - rng.random::<f64>();
    let u2: f64 = rng.random::<f64>();
    (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()
}

/// Generates the synthetic dataset. Deterministic in `(cfg, seed)` (ChaCha8).
///
/// Out-of-range sizes are clamped to the minimums [`SyntheticConfig::validate`] states
/// (validate configs when reading them to report such values instead); a non-finite
/// shift or noise is treated as 0.
pub fn synthetic(cfg: &SyntheticConfig, seed: u64) -> Dataset {
    let g_n = cfg.n_groups.max(1);
    let d = cfg.n_features.max(2);
    let n_tasks = cfg.n_tasks.max(1);
    let fin = |v: f64| if v.is_finite() { v } else { 0.0 };
    let (shift, bias, noise) = (
        fin(cfg.group_shift),
        fin(cfg.label_bias),
        fin(cfg.noise).max(0.0),
    );
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let h = d.div_ceil(2);
    let mut w = vec![vec![0f64; d]; n_tasks];
    let mut pairs = Vec::with_capacity(n_tasks);
    for wk in &mut w {
        for (j, v) in wk.iter_mut().enumerate() {
            *v = normal(&mut rng) / (d as f64).sqrt()
                + if j < h { 0.35 / (h as f64).sqrt() } else { 0.0 };
        }
        let a = rng.random_range(0..d);
        let b = (a + 1 + rng.random_range(0..d - 1)) % d;
        pairs.push((a, b));
    }
    let centre = (g_n as f64 - 1.0) / 2.0;
    let make = |n: usize, rng: &mut ChaCha8Rng| -> (Vec<f64>, Split, Vec<Vec<f64>>) {
        let n = n.max(g_n);
        let mut groups: Vec<u32> = (0..n).map(|i| (i % g_n) as u32).collect();
        groups.shuffle(rng);
        let mut x = vec![0f64; n * d];
        let mut targets = vec![vec![0f32; n]; n_tasks];
        let mut logits = vec![vec![0f64; n]; n_tasks];
        for i in 0..n {
            let c = f64::from(groups[i]) - centre;
            let row = &mut x[i * d..(i + 1) * d];
            for (j, v) in row.iter_mut().enumerate() {
                *v = normal(rng) + if j < h { shift * c } else { 0.0 };
            }
            for k in 0..n_tasks {
                let lin: f64 = w[k].iter().zip(row.iter()).map(|(a, b)| a * b).sum();
                let (a, b) = pairs[k];
                let logit = lin + 0.5 * row[a] * row[b] + bias * c + noise * normal(rng);
                targets[k][i] = if logit > 0.0 { 1.0 } else { 0.0 };
                logits[k][i] = logit;
            }
        }
        (
            x,
            Split {
                x: Matrix::new(vec![0.0; n * d], n, d),
                groups,
                targets,
                attributes: Vec::new(),
            },
            logits,
        )
    };
    let mut parts: Vec<(Vec<f64>, Split)> = Vec::with_capacity(3);
    let mut all_logits = Vec::with_capacity(3);
    for n in [cfg.n_train, cfg.n_valid, cfg.n_test] {
        let (x, split, logits) = make(n, &mut rng);
        parts.push((x, split));
        all_logits.push(logits);
    }
    let h_n = if cfg.n_groups_2 >= 2 {
        cfg.n_groups_2
    } else {
        0
    };
    if h_n > 0 {
        let mut rng2 = ChaCha8Rng::seed_from_u64(seed ^ SECOND_ATTRIBUTE_SALT);
        let centre2 = (h_n as f64 - 1.0) / 2.0;
        let (shift2, bias2) = (fin(cfg.group_shift_2), fin(cfg.label_bias_2));
        for ((x, split), logits) in parts.iter_mut().zip(&all_logits) {
            let n = split.len();
            let mut second = vec![0u32; n];
            for g in 0..g_n as u32 {
                let rows: Vec<usize> = (0..n).filter(|&i| split.groups[i] == g).collect();
                let mut ids: Vec<u32> = (0..rows.len()).map(|j| (j % h_n) as u32).collect();
                ids.shuffle(&mut rng2);
                for (&i, id) in rows.iter().zip(ids) {
                    second[i] = id;
                }
            }
            for i in 0..n {
                let c2 = f64::from(second[i]) - centre2;
                for v in &mut x[i * d + h..(i + 1) * d] {
                    *v += shift2 * c2;
                }
                for (target, logit) in split.targets.iter_mut().zip(logits) {
                    target[i] = if logit[i] + bias2 * c2 > 0.0 {
                        1.0
                    } else {
                        0.0
                    };
                }
            }
            let first = std::mem::take(&mut split.groups);
            split.groups = first
                .iter()
                .zip(&second)
                .map(|(&g, &b)| g * h_n as u32 + b)
                .collect();
            split.attributes = vec![first, second];
        }
    }
    // Train statistics.
    let (xt, st) = &parts[0];
    let numeric: Vec<NumericStats> = (0..d)
        .map(|j| {
            let rows = st.len();
            let n = rows as f64;
            let mean = (0..rows).map(|i| xt[i * d + j]).sum::<f64>() / n;
            let var = (0..rows)
                .map(|i| (xt[i * d + j] - mean).powi(2))
                .sum::<f64>()
                / n;
            NumericStats {
                column: format!("x{j}"),
                mean,
                std: if var > 1e-24 { var.sqrt() } else { 1.0 },
            }
        })
        .collect();
    let mut splits = parts.into_iter().map(|(x, mut s)| {
        s.x.values = x
            .iter()
            .enumerate()
            .map(|(i, v)| {
                let stj = &numeric[i % d];
                ((v - stj.mean) / stj.std) as f32
            })
            .collect();
        s
    });
    let (train, valid, test) = (
        splits.next().expect("3"),
        splits.next().expect("3"),
        splits.next().expect("3"),
    );
    let schema = Schema {
        dataset: "synthetic".into(),
        features: (0..d).map(|j| format!("x{j}")).collect(),
        inputs: (0..d)
            .map(|j| InputColumn {
                column: format!("x{j}"),
                kind: ColumnKind::Numeric,
                categories: Vec::new(),
            })
            .collect(),
        sensitive_column: if h_n > 0 { "s & s2".into() } else { "s".into() },
        groups: if h_n > 0 {
            (0..g_n)
                .flat_map(|g| (0..h_n).map(move |b| format!("g{g} & h{b}")))
                .collect()
        } else {
            (0..g_n).map(|g| format!("g{g}")).collect()
        },
        tasks: (0..n_tasks)
            .map(|k| TaskInfo {
                name: format!("task{k}"),
                column: format!("y{k}"),
                kind: TaskKind::Binary,
            })
            .collect(),
        aware: false,
        attributes: if h_n > 0 {
            vec![
                AttributeInfo {
                    name: "s".into(),
                    column: "s".into(),
                    groups: (0..g_n).map(|g| format!("g{g}")).collect(),
                },
                AttributeInfo {
                    name: "s2".into(),
                    column: "s2".into(),
                    groups: (0..h_n).map(|b| format!("h{b}")).collect(),
                },
            ]
        } else {
            Vec::new()
        },
    };
    Dataset {
        name: "synthetic".into(),
        schema,
        preprocessing: Preprocessing {
            numeric,
            categorical: Vec::new(),
        },
        train,
        valid,
        test,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_have_shape_balance_and_a_clear_dp_gap() {
        let ds = synthetic(&SyntheticConfig::default(), 7);
        assert_eq!(
            (
                ds.train.len(),
                ds.valid.len(),
                ds.test.len(),
                ds.n_features()
            ),
            (4000, 1000, 1000, 16)
        );
        assert_eq!(ds.task_names(), vec!["task0", "task1", "task2"]);
        assert_eq!(ds.train.group_counts(2), vec![2000, 2000]);
        assert!(ds.train.x.values.iter().all(|v| v.is_finite()));
        for t in &ds.train.targets {
            let rate = t.iter().sum::<f32>() / t.len() as f32;
            assert!((0.2..0.8).contains(&rate), "positive rate {rate}");
            // The labels themselves (a perfect classifier) have a large DP gap.
            let gap = fairrep_metrics::fairness::dp_gap(t, &ds.train.groups, 2, 0.5).unwrap();
            assert!(gap > 0.15, "label DP gap {gap}");
        }
        // Standardised with train statistics.
        for j in 0..16 {
            let m: f64 = (0..4000)
                .map(|i| f64::from(ds.train.x.values[i * 16 + j]))
                .sum::<f64>()
                / 4000.0;
            assert!(m.abs() < 1e-4, "mean {m}");
        }
    }

    #[test]
    fn seeded_and_tunable() {
        let cfg = SyntheticConfig::default();
        assert_eq!(synthetic(&cfg, 1), synthetic(&cfg, 1));
        assert_ne!(
            synthetic(&cfg, 1).train.x.values,
            synthetic(&cfg, 2).train.x.values
        );
        let fair = SyntheticConfig {
            group_shift: 0.0,
            label_bias: 0.0,
            ..cfg.clone()
        };
        let ds = synthetic(&fair, 3);
        for t in &ds.train.targets {
            let gap = fairrep_metrics::fairness::dp_gap(t, &ds.train.groups, 2, 0.5).unwrap();
            assert!(gap < 0.06, "gap without group dependence {gap}");
        }
        let three = SyntheticConfig { n_groups: 3, ..cfg };
        let ds = synthetic(&three, 3);
        assert_eq!(ds.n_groups(), 3);
        assert!(ds.test.group_counts(3).iter().all(|&c| c > 300));
    }

    #[test]
    fn a_second_attribute_leaves_the_first_stream_alone_and_fills_every_cell() {
        let cfg = SyntheticConfig::default();
        let one = synthetic(&cfg, 5);
        let inert = SyntheticConfig {
            n_groups_2: 3,
            group_shift_2: 0.0,
            label_bias_2: 0.0,
            ..cfg.clone()
        };
        let two = synthetic(&inert, 5);
        // Without effects, the second attribute changes nothing but the groups.
        for (a, b) in [(&one.train, &two.train), (&one.test, &two.test)] {
            assert_eq!(a.x, b.x);
            assert_eq!(a.targets, b.targets);
            assert_eq!(b.attributes[0], a.groups);
            for i in 0..b.len() {
                assert_eq!(b.groups[i], b.attributes[0][i] * 3 + b.attributes[1][i]);
            }
            assert!(b.group_counts(6).iter().all(|&c| c > 0));
        }
        assert!(one.schema.attributes.is_empty() && one.train.attributes.is_empty());
        assert_eq!(two.schema.groups[1], "g0 & h1");
        assert_eq!(two.schema.attributes[1].groups, ["h0", "h1", "h2"]);
        // With its default effects, the labels depend on it.
        let biased = synthetic(
            &SyntheticConfig {
                n_groups_2: 2,
                ..cfg.clone()
            },
            5,
        );
        let s2 = &biased.train.attributes[1];
        let gap = fairrep_metrics::fairness::dp_gap(&biased.train.targets[0], s2, 2, 0.5).unwrap();
        assert!(gap > 0.1, "label DP gap over s2 {gap}");
        // Validation: one group, or fewer rows than cells.
        let e = SyntheticConfig {
            n_groups_2: 1,
            ..cfg.clone()
        }
        .validate()
        .unwrap_err();
        assert!(e.to_string().contains("synthetic.n_groups_2"), "{e}");
        let e = SyntheticConfig {
            n_groups_2: 4,
            n_test: 7,
            ..cfg
        }
        .validate()
        .unwrap_err();
        assert!(
            e.to_string().contains("synthetic.n_test") && e.to_string().contains("8"),
            "{e}"
        );
    }

    #[test]
    fn validate_reports_bad_values() {
        let c = SyntheticConfig {
            n_valid: 1,
            n_groups: 2,
            ..SyntheticConfig::default()
        };
        assert!(
            c.validate()
                .unwrap_err()
                .to_string()
                .contains("synthetic.n_valid")
        );
        let c: SyntheticConfig = toml::from_str("n_train = 100").unwrap();
        assert_eq!(c.n_features, 16);
        assert!(toml::from_str::<SyntheticConfig>("n_trian = 100").is_err());
    }
}
