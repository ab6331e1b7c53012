//! The demographic-parity penalty `D = sum_g p_g Div(z | s=g, z)` over `G >= 2` groups
//! (docs/MATH.md, "Setting").
use burn::tensor::{Int, Tensor};

use crate::config::{LossError, MmdConfig, SinkhornConfig};
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
    let mut total: Option<Tensor<1>> = None;
    for rows in members.iter().filter(|rows| !rows.is_empty()) {
        let p_g = rows.len() as f64 / n as f64;
        let index = Tensor::<1, Int>::from_data(rows.as_slice(), &device);
        let z_g = z.clone().select(0, index);
        let div = match divergence {
            Divergence::Mmd(config) => mmd2(z_g, z.clone(), None, None, config)?,
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
