//! The demographic-parity penalty `D = sum_g p_g Div(z | s=g, z)` over `G >= 2` groups
//! (docs/MATH.md, "Setting").
use burn::tensor::{Int, Tensor};

use fairrep_metrics::median::PointSet;

use crate::config::{BANDWIDTH_RANGE, Bandwidth, LossError, MmdConfig, SinkhornConfig};
use crate::kernel::median_bandwidth;
use crate::mmd::mmd2;
use crate::sinkhorn::sinkhorn_divergence;

/// Which divergence the penalty uses.
#[derive(Debug, Clone, PartialEq)]
pub enum Divergence {
    /// Gaussian MMD².
    Mmd(MmdConfig),
    /// The debiased Sinkhorn divergence.
    Sinkhorn(SinkhornConfig),
}

impl Divergence {
    /// Validates the divergence's configuration.
    pub fn validate(&self) -> Result<(), LossError> {
        match self {
            Divergence::Mmd(c) => c.validate(),
            Divergence::Sinkhorn(c) => c.validate(),
        }
    }

    /// `mmd` or `sinkhorn`.
    pub fn name(&self) -> &'static str {
        match self {
            Divergence::Mmd(_) => "mmd",
            Divergence::Sinkhorn(_) => "sinkhorn",
        }
    }
}

/// Result of [`fairness_penalty`].
#[derive(Debug, Clone)]
pub struct PenaltyOutput {
    /// The penalty, shape `[1]`, differentiable w.r.t. `z`.
    pub value: Tensor<1>,
    /// Groups with no member in this batch (skipped, never NaN).
    pub missing_groups: Vec<usize>,
    /// For Sinkhorn: whether every group's solve converged (always true for MMD).
    pub converged: bool,
    /// For Sinkhorn: the groups whose solve did not converge.
    pub not_converged: usize,
    /// For Sinkhorn: the largest iteration count over the groups (0 for MMD).
    pub n_iters: usize,
    /// For Sinkhorn: the largest marginal error over the groups (0 for MMD).
    pub marginal_error: f64,
}

/// `sum_g p_g Div(z | s = g, z)`, each group's representations against the pooled batch, with
/// `p_g` the group's share of the batch. For two groups this is monotone in
/// `Div(z | s=0, z | s=1)`. A group absent from the batch is skipped and reported in
/// [`PenaltyOutput::missing_groups`]; with fewer than two groups present the penalty is 0.
///
/// # Shapes
/// - `z`: `[n, k]`; `groups`: `n` group indices in `0..n_groups`.
/// - output value: `[1]`
///
/// Errors: `groups` not of one id per row or an id out of range, and the divergences' errors
/// (non-finite `z`, ...).
pub fn fairness_penalty(
    z: Tensor<2>,
    groups: &[u32],
    n_groups: usize,
    divergence: &Divergence,
) -> Result<PenaltyOutput, LossError> {
    let n = z.dims()[0];
    if groups.len() != n {
        return Err(LossError::Shape {
            what: "groups",
            expected: format!("one group id per row of z ({n})"),
            found: format!("{}", groups.len()),
        });
    }
    if let Some(g) = groups.iter().find(|&&g| g as usize >= n_groups) {
        return Err(LossError::Shape {
            what: "groups",
            expected: format!("ids below n_groups = {n_groups}"),
            found: format!("{g}"),
        });
    }
    let device = z.device();
    let mut members: Vec<Vec<i64>> = vec![Vec::new(); n_groups];
    for (i, &g) in groups.iter().enumerate() {
        members[g as usize].push(i as i64);
    }
    let missing_groups: Vec<usize> = (0..n_groups).filter(|&g| members[g].is_empty()).collect();
    let mut out = PenaltyOutput {
        value: Tensor::<1>::zeros([1], (&device, z.dtype())),
        missing_groups,
        converged: true,
        not_converged: 0,
        n_iters: 0,
        marginal_error: 0.0,
    };
    if n_groups - out.missing_groups.len() < 2 {
        return Ok(out);
    }
    // The median heuristic of every group's pooled sample (its rows, then the whole batch)
    // from one set of the batch's pairwise distances, read once.
    let points = match divergence {
        Divergence::Mmd(MmdConfig {
            bandwidth: Bandwidth::Median,
            ..
        }) => {
            let d = z.dims()[1];
            let values: Vec<f64> = z
                .clone()
                .inner()
                .into_data()
                .try_to_vec_as::<f64>()
                .expect("float tensor data");
            Some(PointSet::new(&values, d))
        }
        _ => None,
    };
    let mut total: Option<Tensor<1>> = None;
    for rows in members.iter().filter(|rows| !rows.is_empty()) {
        let p_g = rows.len() as f64 / n as f64;
        let index = Tensor::<1, Int>::from_data(rows.as_slice(), &device);
        let z_g = z.clone().select(0, index);
        let div = match divergence {
            Divergence::Mmd(config) => {
                let config = match &points {
                    Some(set) => pooled_median(set, rows, config),
                    None => config.clone(),
                };
                mmd2(z_g, z.clone(), None, None, &config)?
            }
            Divergence::Sinkhorn(config) => {
                let s = sinkhorn_divergence(z_g, z.clone(), None, None, config)?;
                out.converged &= s.converged;
                out.not_converged += usize::from(!s.converged);
                out.n_iters = out.n_iters.max(s.n_iters);
                out.marginal_error = out.marginal_error.max(s.marginal_error);
                s.value
            }
        };
        let term = div.mul_scalar(p_g);
        total = Some(match total {
            Some(acc) => acc + term,
            None => term,
        });
    }
    out.value = total.expect("at least two groups present");
    Ok(out)
}

/// `config` with the median heuristic of the pooled sample `z_g` then `z` (`rows` of `z` then
/// all of them) as a fixed bandwidth: the value `mmd2(z_g, z, ..)` would compute itself
/// (`crate::kernel::median_heuristic`, through the same [`median_bandwidth`]). A median that
/// is not finite or not in range is left to `mmd2`, which reports it.
fn pooled_median(set: &PointSet, rows: &[i64], config: &MmdConfig) -> MmdConfig {
    let pooled: Vec<usize> = rows
        .iter()
        .map(|&i| i as usize)
        .chain(0..set.len())
        .collect();
    let median = match median_bandwidth(set.median_of_rows(&pooled)) {
        Some(m) if BANDWIDTH_RANGE.contains(&m) => m,
        _ => return config.clone(),
    };
    MmdConfig {
        bandwidth: Bandwidth::Fixed(vec![median]),
        ..config.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::{Device, TensorData};

    /// The penalty with the median heuristic, computed from one set of the batch's distances,
    /// is bit for bit the sum of the groups' `mmd2` with their own median heuristic, and so is
    /// its gradient.
    #[test]
    fn shared_distances_give_the_groups_own_median_bandwidths() {
        let device = Device::flex().autodiff();
        let (n, d) = (90, 6);
        let values: Vec<f32> = (0..n * d)
            .map(|i| ((i * 7919) % 101) as f32 / 25.0 - 2.0)
            .collect();
        let groups: Vec<u32> = (0..n).map(|i| [0, 1, 1, 2, 1][i % 5]).collect();
        let config = MmdConfig::default();
        let divergence = Divergence::Mmd(config.clone());

        let z =
            Tensor::<2>::from_data(TensorData::new(values.clone(), [n, d]), &device).require_grad();
        let got = fairness_penalty(z.clone(), &groups, 3, &divergence).unwrap();
        let got_grad = got.value.backward();
        let got_grad = z.grad(&got_grad).unwrap().into_data();

        let z = Tensor::<2>::from_data(TensorData::new(values, [n, d]), &device).require_grad();
        let mut want: Option<Tensor<1>> = None;
        for g in 0..3u32 {
            let rows: Vec<i64> = (0..n as i64).filter(|&i| groups[i as usize] == g).collect();
            let p_g = rows.len() as f64 / n as f64;
            let index = Tensor::<1, Int>::from_data(rows.as_slice(), &device);
            let term = mmd2(z.clone().select(0, index), z.clone(), None, None, &config)
                .unwrap()
                .mul_scalar(p_g);
            want = Some(match want {
                Some(acc) => acc + term,
                None => term,
            });
        }
        let want = want.unwrap();
        let want_grad = want.backward();
        let want_grad = z.grad(&want_grad).unwrap().into_data();
        assert_eq!(
            got.value.into_scalar::<f32>().to_bits(),
            want.into_scalar::<f32>().to_bits()
        );
        assert_eq!(got_grad, want_grad);
    }
}
