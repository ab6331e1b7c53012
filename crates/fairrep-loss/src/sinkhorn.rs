//! The debiased Sinkhorn divergence in the log domain (MATH.md, "Entropic OT and the debiased
//! Sinkhorn divergence").
//!
//! The pieces follow the published solvers: an eps schedule ([`epsilon_schedule`]), a softmin
//! step ([`softmin`]), the solver loop over the four dual potentials ([`solve_potentials`]),
//! and the output: the value as a difference of potentials with its envelope-theorem gradient,
//! obtained from one differentiable softmin step taken from the converged, detached potentials
//! ([`sinkhorn_divergence`]).
use burn::tensor::{DType, Device, Tensor, TensorData};

use crate::cost::{log_weights, squared_distances, uniform_weights};
use crate::host::{HostFloat, HostSoftmin, host_vec, to_tensor};

/// Configuration of [`sinkhorn_divergence`]. `eps` is the temperature in cost units
/// (cost `|x - y|^2 / 2`; GeomLoss `blur = sqrt(eps)`; POT and OTT use `|x - y|^2`, i.e.
/// their `reg = 2 eps`).
#[derive(Debug, Clone, PartialEq)]
pub struct SinkhornConfig {
    /// Target temperature, in cost units.
    pub eps: f64,
    /// eps-scaling factor in `[0.5, 0.95]`: eps is multiplied by `scaling^2` at each step.
    pub scaling: f64,
    /// Target marginal error (see [`SinkhornOutput::marginal_error`]).
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

/// Result of [`sinkhorn_divergence`].
#[derive(Debug, Clone)]
pub struct SinkhornOutput {
    /// `S_eps(alpha, beta)`, shape `[1]`, differentiable w.r.t. `x` and `y` (envelope gradient).
    pub value: Tensor<1>,
    /// Iterations run in all (eps-scaling descent plus iterations at the target eps).
    pub n_iters: usize,
    /// The largest L1 marginal error over the three plans (`alpha`-`beta`, `alpha`-`alpha`,
    /// `beta`-`beta`) at the last check: `|P1 - a|_1 + |P'1 - b|_1` for each.
    pub marginal_error: f64,
    /// Whether the marginal error fell below the tolerance within `max_iters`.
    pub converged: bool,
}

/// The four dual potentials of the debiased divergence (MATH.md notation), as tensors or, in
/// the host loop of the CPU devices, as host vectors.
#[derive(Debug, Clone)]
pub struct Potentials<V = Tensor<1>> {
    /// `f_ba` on the points of `alpha`, shape `[n]`.
    pub f_ba: V,
    /// `g_ab` on the points of `beta`, shape `[m]`.
    pub g_ab: V,
    /// `f_aa`, the symmetric potential of `OT_eps(alpha, alpha)`, shape `[n]`.
    pub f_aa: V,
    /// `g_bb`, the symmetric potential of `OT_eps(beta, beta)`, shape `[m]`.
    pub g_bb: V,
}

impl<V> Potentials<V> {
    /// The same potentials with every vector mapped by `f`.
    fn map<W>(self, mut f: impl FnMut(V) -> W) -> Potentials<W> {
        Potentials {
            f_ba: f(self.f_ba),
            g_ab: f(self.g_ab),
            f_aa: f(self.f_aa),
            g_bb: f(self.g_bb),
        }
    }
}

/// The eps-scaling schedule: from `eps_0 = max(diameter^2 / 2, eps)` multiplied by
/// `scaling^2` at each step while above the target, ending with the target `eps` itself
/// (GeomLoss `epsilon_schedule`, with the cost `|x - y|^2 / 2`). A zero diameter (a single
/// point, identical clouds) gives the one-step schedule `[eps]`.
pub fn epsilon_schedule(diameter: f64, eps: f64, scaling: f64) -> Vec<f64> {
    let mut schedule = Vec::new();
    let mut current = 0.5 * diameter * diameter;
    let factor = scaling * scaling;
    while current > eps {
        schedule.push(current);
        current *= factor;
    }
    schedule.push(eps);
    schedule
}

/// `softmin_eps(C, h)_i = -eps * LSE_j(h_j - C_ij / eps)`, stabilised with the row maximum.
///
/// # Shapes
/// - `neg_cost_over_eps`: `[n, m]`, the matrix `-C / eps`
/// - `h`: `[m]`
/// - output: `[n]`
pub fn softmin(eps: f64, neg_cost_over_eps: Tensor<2>, h: Tensor<1>) -> Tensor<1> {
    let z = neg_cost_over_eps + h.unsqueeze_dim::<2>(0);
    let max = z.clone().max_dim(1).detach(); // [n, 1]
    let lse = (z - max.clone()).exp().sum_dim(1).log() + max;
    lse.squeeze_dim::<1>(1).mul_scalar(-eps)
}

/// The diagonal length of the pooled bounding box, the diameter used by the eps schedule.
pub(crate) fn box_diameter(x: &Tensor<2>, y: &Tensor<2>) -> f64 {
    let pooled = Tensor::cat(vec![x.clone(), y.clone()], 0);
    let lo = pooled.clone().min_dim(0);
    let hi = pooled.max_dim(0);
    let diag2: f64 = (hi - lo).square().sum().into_scalar::<f64>();
    diag2.max(0.0).sqrt()
}

/// The four cost matrices of the debiased divergence, each stored as `-C / eps` for one eps.
struct Costs {
    xy: Tensor<2>,
    yx: Tensor<2>,
    xx: Tensor<2>,
    yy: Tensor<2>,
}

impl Costs {
    /// Half squared distances, `C(x, y) = |x - y|^2 / 2`.
    fn new(x: &Tensor<2>, y: &Tensor<2>) -> Self {
        let pooled = Tensor::cat(vec![x.clone(), y.clone()], 0);
        let xy = squared_distances(x.clone(), y.clone(), &pooled).mul_scalar(0.5);
        Self {
            yx: xy.clone().transpose(),
            xy,
            xx: squared_distances(x.clone(), x.clone(), x).mul_scalar(0.5),
            yy: squared_distances(y.clone(), y.clone(), y).mul_scalar(0.5),
        }
    }

    fn scaled(&self, eps: f64) -> Self {
        let s = -1.0 / eps;
        Self {
            xy: self.xy.clone().mul_scalar(s),
            yx: self.yx.clone().mul_scalar(s),
            xx: self.xx.clone().mul_scalar(s),
            yy: self.yy.clone().mul_scalar(s),
        }
    }
}

/// Which of the four softmins of the debiased divergence: rows of the first cloud against
/// the columns of the second.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Pair {
    XY,
    YX,
    XX,
    YY,
}

/// The four softmins `softmin_eps(C(rows, cols), h)` on tensors (the tensor-op cost matrices,
/// the fused kernel); every such implementation is a [`SolverOps`] on `Tensor<1>`.
pub(crate) trait SoftminOp {
    /// Called whenever the loop moves to a new eps (before the softmins at that eps).
    fn prepare(&mut self, eps: f64);
    /// `softmin_eps(C(pair), h)`, shape `[rows]`.
    fn softmin(&self, eps: f64, pair: Pair, h: Tensor<1>) -> Tensor<1>;
}

/// What the solver loop needs from the vectors it runs on: the four softmins and a few
/// elementwise updates. Tensors (any device) through [`SoftminOp`]; host vectors on the CPU
/// devices ([`crate::host`]).
pub(crate) trait SolverOps {
    type Vector: Clone;
    /// Called whenever the loop moves to a new eps (before the softmins at that eps).
    fn prepare(&mut self, eps: f64);
    /// `softmin_eps(C(pair), log_w + pot / eps)` (`log_w` alone without `pot`), shape `[rows]`.
    fn softmin(
        &self,
        eps: f64,
        pair: Pair,
        log_w: &Self::Vector,
        pot: Option<&Self::Vector>,
    ) -> Self::Vector;
    /// `(1 - w) old + w new`: plain update for `w = 1`, averaged for `1/2`, over-relaxed for
    /// `1 < w < 2`.
    fn relax(&self, old: &Self::Vector, new: Self::Vector, w: f64) -> Self::Vector;
    /// Log-weights, with `log 0` the finite [`crate::cost::LOG_ZERO`].
    fn log_weights(&self, w: &Self::Vector) -> Self::Vector;
    /// For each `(w, old, new)`: `sum_i w_i |exp((old_i - new_i) / eps) - 1|`, the L1 error of
    /// one marginal of the plan defined by the potentials, where `new` is the softmin update
    /// of `old` from its partner. Read on the host, all in one go.
    fn marginal_errors(&self, eps: f64, terms: &[MarginalTerm<'_, Self::Vector>]) -> Vec<f64>;
}

/// `(weights, old potential, its update)`, see [`SolverOps::marginal_errors`].
pub(crate) type MarginalTerm<'a, V> = (&'a V, &'a V, &'a V);

impl<T: SoftminOp> SolverOps for T {
    type Vector = Tensor<1>;

    fn prepare(&mut self, eps: f64) {
        SoftminOp::prepare(self, eps);
    }

    fn softmin(
        &self,
        eps: f64,
        pair: Pair,
        log_w: &Tensor<1>,
        pot: Option<&Tensor<1>>,
    ) -> Tensor<1> {
        let h = match pot {
            Some(pot) => log_w.clone() + pot.clone().mul_scalar(1.0 / eps),
            None => log_w.clone(),
        };
        SoftminOp::softmin(self, eps, pair, h)
    }

    fn relax(&self, old: &Tensor<1>, new: Tensor<1>, w: f64) -> Tensor<1> {
        if w == 1.0 {
            new
        } else {
            old.clone().mul_scalar(1.0 - w) + new.mul_scalar(w)
        }
    }

    fn log_weights(&self, w: &Tensor<1>) -> Tensor<1> {
        log_weights(w.clone())
    }

    fn marginal_errors(&self, eps: f64, terms: &[MarginalTerm<'_, Tensor<1>>]) -> Vec<f64> {
        let parts = terms
            .iter()
            .map(|&(w, old, new)| {
                let ratio = (old.clone() - new.clone()).mul_scalar(1.0 / eps).exp();
                (ratio.sub_scalar(1.0).abs() * w.clone()).sum()
            })
            .collect();
        host_values(Tensor::cat(parts, 0))
    }
}

/// The tensor-op softmins: the cost matrices stored once, scaled to `-C / eps` per eps.
struct TensorSoftmin {
    costs: Costs,
    scaled: Option<Costs>,
}

impl SoftminOp for TensorSoftmin {
    fn prepare(&mut self, eps: f64) {
        self.scaled = Some(self.costs.scaled(eps));
    }

    fn softmin(&self, eps: f64, pair: Pair, h: Tensor<1>) -> Tensor<1> {
        let k = self.scaled.as_ref().expect("prepare before softmin");
        let neg_cost = match pair {
            Pair::XY => &k.xy,
            Pair::YX => &k.yx,
            Pair::XX => &k.xx,
            Pair::YY => &k.yy,
        };
        softmin(eps, neg_cost.clone(), h)
    }
}

/// What [`solve_potentials`] returns: the converged (detached) potentials and diagnostics.
#[derive(Debug, Clone)]
pub struct SolveOutput<V = Tensor<1>> {
    pub potentials: Potentials<V>,
    pub n_iters: usize,
    pub marginal_error: f64,
    pub converged: bool,
}

/// The solver loop on detached tensors (no autodiff graph): eps-scaling descent, then
/// iterations at the target eps until the marginal error is below the tolerance (checked every
/// `check_every` iterations) or `max_iters` is reached.
///
/// During the descent each step updates the four potentials in parallel and averages each with
/// its previous value (`new = (old + update) / 2`, GeomLoss `sinkhorn_loop` with symmetric
/// updates; plain alternating updates stall on the self terms).
///
/// On the CPU devices (Flex, NdArray; float32 or float64) the loop runs in host memory
/// ([`crate::host`]), elsewhere on tensor ops; both are the same loop ([`solve_with`]).
///
/// # Shapes
/// - `x`: `[n, d]`, `y`: `[m, d]`, `a`: `[n]`, `b`: `[m]`
pub fn solve_potentials(
    x: &Tensor<2>,
    y: &Tensor<2>,
    a: &Tensor<1>,
    b: &Tensor<1>,
    config: &SinkhornConfig,
) -> SolveOutput {
    let problem = Problem::new(x, y, a, b);
    let (device, dtype) = (problem.a.device(), problem.a.dtype());
    match (crate::host::runs_on_host(&device), dtype) {
        (true, DType::F32) => {
            HostSolution::<f32>::new(&problem, config).into_tensors(&device, dtype)
        }
        (true, DType::F64) => {
            HostSolution::<f64>::new(&problem, config).into_tensors(&device, dtype)
        }
        _ => {
            let mut op = TensorSoftmin {
                costs: Costs::new(&problem.x, &problem.y),
                scaled: None,
            };
            let (a, b) = (&problem.a, &problem.b);
            solve_with(&mut op, problem.diameter, a, b, problem.same, config)
        }
    }
}

/// What the solver loop takes from the inputs: the clouds and weights without autodiff, the
/// diameter of the eps schedule, and whether the two measures are one ([`same_measure`]).
pub(crate) struct Problem {
    pub x: Tensor<2>,
    pub y: Tensor<2>,
    pub a: Tensor<1>,
    pub b: Tensor<1>,
    pub diameter: f64,
    pub same: bool,
}

impl Problem {
    pub(crate) fn new(x: &Tensor<2>, y: &Tensor<2>, a: &Tensor<1>, b: &Tensor<1>) -> Self {
        let (x, y) = (x.clone().inner(), y.clone().inner());
        let (a, b) = (a.clone().inner(), b.clone().inner());
        Self {
            diameter: box_diameter(&x, &y),
            same: same_measure(&x, &y, &a, &b),
            x,
            y,
            a,
            b,
        }
    }
}

/// The host loop's solution with what the last step needs: the cost matrices and the weights.
struct HostSolution<F> {
    op: HostSoftmin<F>,
    a: Vec<F>,
    b: Vec<F>,
    solved: SolveOutput<Vec<F>>,
}

impl<F: HostFloat> HostSolution<F> {
    fn new(problem: &Problem, config: &SinkhornConfig) -> Self {
        let costs = Costs::new(&problem.x, &problem.y);
        let mut op = HostSoftmin::new(costs.xy, costs.xx, costs.yy);
        let (a, b) = (host_vec(problem.a.clone()), host_vec(problem.b.clone()));
        let solved = solve_with(&mut op, problem.diameter, &a, &b, problem.same, config);
        Self { op, a, b, solved }
    }

    /// The solution with its potentials as tensors on `device`, in `dtype`.
    fn into_tensors(self, device: &Device, dtype: DType) -> SolveOutput {
        let SolveOutput {
            potentials,
            n_iters,
            marginal_error,
            converged,
        } = self.solved;
        SolveOutput {
            potentials: potentials.map(|v| to_tensor(v, device, dtype)),
            n_iters,
            marginal_error,
            converged,
        }
    }
}

/// Whether the two weighted clouds are one measure, point for point (same points in the same
/// order, same weights). Then `OT_eps(alpha, beta)` is the symmetric problem `OT_eps(alpha,
/// alpha)`, whose potentials are both the symmetric potential `f_aa`.
pub(crate) fn same_measure(x: &Tensor<2>, y: &Tensor<2>, a: &Tensor<1>, b: &Tensor<1>) -> bool {
    x.dims() == y.dims()
        && a.dims() == b.dims()
        && x.clone().equal(y.clone()).all().into_scalar::<bool>()
        && a.clone().equal(b.clone()).all().into_scalar::<bool>()
}

/// The solver loop of [`solve_potentials`] over any implementation of the four softmins
/// (the tensor-op cost matrices, the fused kernel on wgpu, host vectors on the CPU).
///
/// With `same` (see [`same_measure`]) the cross potentials are taken equal to the symmetric
/// ones at the target eps instead of being iterated: the exact solution of that problem, which
/// the cross iterations would only approach, and very slowly (with `P` close to the identity,
/// any difference between `f` and `g` is a mode that alternating and averaged steps both
/// barely contract).
pub(crate) fn solve_with<O: SolverOps>(
    op: &mut O,
    diameter: f64,
    a: &O::Vector,
    b: &O::Vector,
    same: bool,
    config: &SinkhornConfig,
) -> SolveOutput<O::Vector> {
    let (a_log, b_log) = (op.log_weights(a), op.log_weights(b));
    let schedule = epsilon_schedule(diameter, config.eps, config.scaling);

    // Initialisation at the first (largest) eps: potentials against the weights alone.
    let eps0 = schedule[0];
    op.prepare(eps0);
    let mut p = Potentials {
        f_ba: op.softmin(eps0, Pair::XY, &b_log, None),
        g_ab: op.softmin(eps0, Pair::YX, &a_log, None),
        f_aa: op.softmin(eps0, Pair::XX, &a_log, None),
        g_bb: op.softmin(eps0, Pair::YY, &b_log, None),
    };

    let mut n_iters = 0;
    // eps-scaling descent: one averaged update per eps.
    let (last_eps, descent) = schedule.split_last().expect("non-empty schedule");
    for &eps in descent {
        op.prepare(eps);
        p = averaged_update(eps, op, &p, &a_log, &b_log);
        n_iters += 1;
    }

    // Iterations at the target eps until the marginal error is small enough. The self
    // potentials keep the averaged symmetric step. The cross potentials start with plain
    // alternating steps `f <- T(g)`, `g <- T(f)`; when those are slow, averaged steps are
    // measured too, and the faster scheme is kept, alternating steps being over-relaxed:
    // `f <- (1 - w) f + w T(g)` with the optimal `w = 2 / (1 + sqrt(1 - rate))` (over-relaxed
    // Sinkhorn, Thibault et al. 2017; OTT-JAX `Momentum`), turning a rate `1 - delta` into
    // about `1 - 2 sqrt(delta)`. Averaged steps damp the oscillating mode of near-symmetric
    // problems (identical clouds), over-relaxed alternating steps the slow monotone mode of
    // the others. All share the fixed point. The self potentials stop being updated once
    // their error is far below the tolerance.
    let eps = *last_eps;
    op.prepare(eps);
    let op = &*op;
    let check_every = config.check_every.max(1);
    let max_iters = config.max_iters.max(1);
    let mut marginal_error = f64::INFINITY;
    let mut converged = false;
    let mut momentum = Momentum::new(check_every);
    // The cross softmins `T(g)` on the points of alpha and `T(f)` on those of beta.
    let t_xy = |g: &O::Vector| op.softmin(eps, Pair::XY, &b_log, Some(g));
    let t_yx = |f: &O::Vector| op.softmin(eps, Pair::YX, &a_log, Some(f));
    // The self errors once the self potentials are frozen (see SELF_FREEZE).
    let mut frozen_self: Option<[f64; 2]> = None;
    for it in 1..=max_iters {
        // The symmetric updates of the self potentials, until they are frozen.
        let fresh = frozen_self.is_none().then(|| {
            (
                op.softmin(eps, Pair::XX, &a_log, Some(&p.f_aa)),
                op.softmin(eps, Pair::YY, &b_log, Some(&p.g_bb)),
            )
        });
        let (f_ba, g_ab) = match (&fresh, momentum.step) {
            (Some((f_aa, _)), _) if same => {
                let f = op.relax(&p.f_aa, f_aa.clone(), 0.5);
                (f.clone(), f)
            }
            (_, CrossStep::Averaged) => (
                op.relax(&p.f_ba, t_xy(&p.g_ab), 0.5),
                op.relax(&p.g_ab, t_yx(&p.f_ba), 0.5),
            ),
            (_, CrossStep::Alternating(w)) => {
                let f_ba = op.relax(&p.f_ba, t_xy(&p.g_ab), w);
                let g_ab = op.relax(&p.g_ab, t_yx(&f_ba), w);
                (f_ba, g_ab)
            }
        };
        n_iters += 1;
        let check = it % check_every == 0 || it == max_iters;
        let old = p;
        p = Potentials {
            f_ba,
            g_ab,
            f_aa: match &fresh {
                Some((f_aa, _)) => op.relax(&old.f_aa, f_aa.clone(), 0.5),
                None => old.f_aa.clone(),
            },
            g_bb: match &fresh {
                Some((_, g_bb)) => op.relax(&old.g_bb, g_bb.clone(), 0.5),
                None => old.g_bb.clone(),
            },
        };
        if check {
            // Both marginals of the cross plan defined by (f_ba, g_ab), and those of the self
            // plans (symmetric: twice one marginal) of the potentials before this step. For one
            // measure the cross plan is the self plan (its cost matrix only differs by the
            // rounding of another centring): its error is the self error.
            let cross_updates = (!same || fresh.is_none()).then(|| (t_xy(&p.g_ab), t_yx(&p.f_ba)));
            let mut terms: Vec<MarginalTerm<'_, O::Vector>> = Vec::with_capacity(4);
            if let Some((f_new, g_new)) = &cross_updates {
                terms.push((a, &p.f_ba, f_new));
                terms.push((b, &p.g_ab, g_new));
            }
            if let Some((f_aa, g_bb)) = &fresh {
                terms.push((a, &old.f_aa, f_aa));
                terms.push((b, &old.g_bb, g_bb));
            }
            let values = op.marginal_errors(eps, &terms);
            let (cross, self_errors) = match (cross_updates.is_some(), fresh.is_some()) {
                (true, true) => (values[0] + values[1], [2.0 * values[2], 2.0 * values[3]]),
                (false, true) => (2.0 * values[0], [2.0 * values[0], 2.0 * values[1]]),
                (true, false) => (
                    values[0] + values[1],
                    frozen_self.expect("self potentials frozen"),
                ),
                (false, false) => unreachable!("one measure keeps its self updates"),
            };
            let errors = [cross, self_errors[0], self_errors[1]];
            marginal_error = errors.iter().fold(
                0.0,
                |m: f64, v| if v.is_nan() { f64::NAN } else { m.max(*v) },
            );
            if marginal_error < config.tolerance {
                converged = true;
                break;
            }
            if !same
                && frozen_self.is_none()
                && errors[1].max(errors[2]) < SELF_FREEZE * config.tolerance
            {
                frozen_self = Some([errors[1], errors[2]]);
            }
            momentum.observe(errors[0]);
        }
    }
    SolveOutput {
        potentials: p,
        n_iters,
        marginal_error,
        converged,
    }
}

/// The self potentials converge much faster than the cross ones (their symmetric averaged
/// step damps the oscillating mode at once): once both self errors are below this fraction of
/// the tolerance, they are left as they are and each iteration at the target eps costs two
/// softmins instead of four.
const SELF_FREEZE: f64 = 1e-2;

/// One symmetric step: the softmin updates of all four potentials from the current ones,
/// averaged with the current values.
fn averaged_update<O: SolverOps>(
    eps: f64,
    op: &O,
    p: &Potentials<O::Vector>,
    a_log: &O::Vector,
    b_log: &O::Vector,
) -> Potentials<O::Vector> {
    let step = |pair, log_w, old: &O::Vector, partner: &O::Vector| {
        op.relax(old, op.softmin(eps, pair, log_w, Some(partner)), 0.5)
    };
    Potentials {
        f_ba: step(Pair::XY, b_log, &p.f_ba, &p.g_ab),
        g_ab: step(Pair::YX, a_log, &p.g_ab, &p.f_ba),
        f_aa: step(Pair::XX, a_log, &p.f_aa, &p.f_aa),
        g_bb: step(Pair::YY, b_log, &p.g_bb, &p.g_bb),
    }
}

/// How the cross potentials are updated at the target eps.
#[derive(Debug, Clone, Copy, PartialEq)]
enum CrossStep {
    /// `f <- (f + T(g)) / 2`, `g <- (g + T(f)) / 2` in parallel (GeomLoss).
    Averaged,
    /// `f <- (1 - w) f + w T(g)`, then `g <- (1 - w) g + w T(f)`.
    Alternating(f64),
}

/// Chooses the cross step from the measured per-iteration convergence rates (see the loop).
#[derive(Debug)]
struct Momentum {
    step: CrossStep,
    check_every: usize,
    previous: Option<f64>,
    alternating_rate: Option<f64>,
    settled: bool,
}

impl Momentum {
    const MAX_OMEGA: f64 = 1.9;
    /// Per-iteration rates below this are fast enough for plain alternating steps.
    const FAST: f64 = 0.95;

    fn new(check_every: usize) -> Self {
        Self {
            step: CrossStep::Alternating(1.0),
            check_every,
            previous: None,
            alternating_rate: None,
            settled: false,
        }
    }

    fn switch(&mut self, step: CrossStep, settled: bool) {
        self.step = step;
        self.settled = settled;
        // The first ratio after a switch mixes two schemes: measure from the next check.
        self.previous = None;
    }

    /// Plain alternating steps first; if they are slow, measure averaged steps; keep the
    /// faster, over-relaxing the alternating ones with the rate they showed.
    fn observe(&mut self, error: f64) {
        let Some(previous) = self.previous.replace(error) else {
            return;
        };
        let ratio = error / previous;
        if !ratio.is_finite() || ratio >= 1.0 {
            // Diverging over-relaxation, or rounding noise at the precision floor.
            // A stalled plain alternating step is the 2-cycle of near-symmetric problems
            // (identical clouds), which averaged steps damp.
            match self.step {
                CrossStep::Alternating(w) if w > 1.0 => {
                    self.switch(CrossStep::Alternating(1.0), true);
                }
                CrossStep::Alternating(_) if !self.settled => {
                    self.switch(CrossStep::Averaged, true);
                }
                _ => {}
            }
            return;
        }
        if self.settled {
            return;
        }
        let rate = ratio.powf(1.0 / self.check_every as f64);
        match (self.step, self.alternating_rate) {
            // Fast (often the transient right after the descent): keep measuring.
            (CrossStep::Alternating(_), None) if rate < Self::FAST => {}
            (CrossStep::Alternating(_), None) => {
                self.alternating_rate = Some(rate);
                self.switch(CrossStep::Averaged, false);
            }
            (CrossStep::Averaged, Some(alternating)) if rate < alternating => self.settled = true,
            (_, alternating) => {
                let rate = alternating.unwrap_or(rate);
                let w = (2.0 / (1.0 + (1.0 - rate).sqrt())).min(Self::MAX_OMEGA);
                self.switch(CrossStep::Alternating(w), true);
            }
        }
    }
}

/// The values of a small tensor, read on the host as `f64`.
fn host_values(t: Tensor<1>) -> Vec<f64> {
    t.into_data().try_to_vec_as::<f64>().expect("f64 data")
}

/// Debiased Sinkhorn divergence `S_eps(alpha, beta)`.
///
/// The loop runs on detached tensors; the value is then obtained from one last softmin step
/// taken from the converged potentials, with the cost differentiable in one argument only
/// (`C(x, y.detach())` for the potentials on `x`, and so on). Autodiff through that step gives
/// the envelope-theorem gradient `dS/dx_i = a_i (xbar_i - ybar_i)` of MATH.md, and the value
/// `S = <a, f_ba - f_aa> + <b, g_ab - g_bb>` is a difference of potentials. On the CPU devices
/// the same step runs in host memory and its gradient is formed from the step's plans
/// (`divergence_on_host`); on wgpu, large clouds take the fused kernels.
///
/// # Shapes
/// - `x`: `[n, d]`, `y`: `[m, d]`, `a`: `[n]`, `b`: `[m]` (uniform when `None`)
pub fn sinkhorn_divergence(
    x: Tensor<2>,
    y: Tensor<2>,
    a: Option<Tensor<1>>,
    b: Option<Tensor<1>>,
    config: &SinkhornConfig,
) -> SinkhornOutput {
    // Fused-kernel hook (crate::fused): on wgpu, large clouds take the fused path.
    if crate::fused::should_route(&x, &y, a.as_ref(), b.as_ref()) {
        return crate::fused::sinkhorn_divergence_fused(x, y, a, b, config);
    }
    let a = a.unwrap_or_else(|| uniform_weights(&x)).inner();
    let b = b.unwrap_or_else(|| uniform_weights(&y)).inner();
    if crate::host::runs_on_host(&x.device()) {
        match a.dtype() {
            DType::F32 => return divergence_on_host::<f32>(&x, &y, &a, &b, config),
            DType::F64 => return divergence_on_host::<f64>(&x, &y, &a, &b, config),
            _ => {}
        }
    }
    let solved = solve_potentials(&x, &y, &a, &b, config);
    let p = solved.potentials;
    let eps = config.eps;
    let inv = 1.0 / eps;
    let (a_log, b_log) = (log_weights(a.clone()), log_weights(b.clone()));

    let (xd, yd) = (x.clone().detach(), y.clone().detach());
    let pooled = Tensor::cat(vec![xd.clone(), yd.clone()], 0);
    let neg = |c: Tensor<2>| c.mul_scalar(-0.5 * inv);
    let f_ba = softmin(
        eps,
        neg(squared_distances(x.clone(), yd.clone(), &pooled)),
        b_log.clone() + p.g_ab.mul_scalar(inv),
    );
    let g_ab = softmin(
        eps,
        neg(squared_distances(y.clone(), xd.clone(), &pooled)),
        a_log.clone() + p.f_ba.mul_scalar(inv),
    );
    let f_aa = softmin(
        eps,
        neg(squared_distances(x.clone(), xd.clone(), &xd)),
        a_log + p.f_aa.mul_scalar(inv),
    );
    let g_bb = softmin(
        eps,
        neg(squared_distances(y.clone(), yd.clone(), &yd)),
        b_log + p.g_bb.mul_scalar(inv),
    );
    let value = ((f_ba - f_aa) * a).sum() + ((g_ab - g_bb) * b).sum();
    SinkhornOutput {
        value,
        n_iters: solved.n_iters,
        marginal_error: solved.marginal_error,
        converged: solved.converged,
    }
}

/// [`sinkhorn_divergence`] on a CPU device, all in host memory: the loop of
/// [`solve_potentials`], then the last softmin step from the converged potentials on the same
/// cost matrices, the value as the difference of potentials, and the envelope gradient
/// `dS/dx_i = a_i (xbar_i - ybar_i)` with `xbar = P_aa x`, `ybar = P_ab y` (the row-normalised
/// plans of that step; the same for `y`), which is what autodiff through that step computes
/// on the tensor path. The gradient is handed to autodiff by [`crate::host::with_gradients`].
fn divergence_on_host<F: HostFloat>(
    x: &Tensor<2>,
    y: &Tensor<2>,
    a: &Tensor<1>,
    b: &Tensor<1>,
    config: &SinkhornConfig,
) -> SinkhornOutput {
    let problem = Problem::new(x, y, a, b);
    let HostSolution {
        op,
        a: a_h,
        b: b_h,
        solved,
    } = HostSolution::<F>::new(&problem, config);
    let p = &solved.potentials;
    let eps = config.eps;
    let (a_log, b_log) = (op.log_weights(&a_h), op.log_weights(&b_h));
    let (gx, gy) = (x.is_tracked(), y.is_tracked());
    let (f_ba, p_ab) = op.softmin_with_plan(eps, Pair::XY, &b_log, &p.g_ab, gx);
    let (f_aa, p_aa) = op.softmin_with_plan(eps, Pair::XX, &a_log, &p.f_aa, gx);
    let (g_ab, p_ba) = op.softmin_with_plan(eps, Pair::YX, &a_log, &p.f_ba, gy);
    let (g_bb, p_bb) = op.softmin_with_plan(eps, Pair::YY, &b_log, &p.g_bb, gy);
    let dot = |w: &[F], u: &[F], v: &[F]| -> f64 {
        w.iter()
            .zip(u.iter().zip(v))
            .map(|(w, (u, v))| w.get() * (u.get() - v.get()))
            .sum()
    };
    let value = dot(&a_h, &f_ba, &f_aa) + dot(&b_h, &g_ab, &g_bb);
    let (device, dtype) = (problem.a.device(), problem.a.dtype());
    let value_t =
        Tensor::<1>::from_data(TensorData::new(vec![F::of(value)], [1]), (&device, dtype));
    let value = if gx || gy {
        // Gradients in centred coordinates (exact: rows of the plans sum to 1).
        let Problem { x: xi, y: yi, .. } = problem;
        let centre = Tensor::cat(vec![xi.clone(), yi.clone()], 0).mean_dim(0);
        let (xc, yc) = (xi - centre.clone(), yi - centre);
        let (n, m) = (xc.dims()[0], yc.dims()[0]);
        let matrix = |v: Vec<F>, rows: usize, cols: usize| {
            Tensor::<2>::from_data(TensorData::new(v, [rows, cols]), (&device, dtype))
        };
        // w_i ((P_self own)_i - (P_cross other)_i)
        let envelope = |w: &Tensor<1>,
                        own: &Tensor<2>,
                        other: &Tensor<2>,
                        p_self: Vec<F>,
                        p_cross: Vec<F>,
                        rows: usize,
                        cols: usize| {
            let w = w.clone().unsqueeze_dim::<2>(1);
            (matrix(p_self, rows, rows).matmul(own.clone())
                - matrix(p_cross, rows, cols).matmul(other.clone()))
                * w
        };
        let grad_x = gx.then(|| envelope(a, &xc, &yc, p_aa, p_ab, n, m));
        let grad_y = gy.then(|| envelope(b, &yc, &xc, p_bb, p_ba, m, n));
        crate::host::with_gradients(value_t, [(x, grad_x), (y, grad_y)])
    } else {
        value_t
    };
    SinkhornOutput {
        value,
        n_iters: solved.n_iters,
        marginal_error: solved.marginal_error,
        converged: solved.converged,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::Device;

    #[test]
    fn schedule_descends_geometrically_to_the_target() {
        // diameter 2 -> eps_0 = 2; factor 0.25: 2, 0.5, 0.125, then the target 0.1.
        let s = epsilon_schedule(2.0, 0.1, 0.5);
        assert_eq!(s, vec![2.0, 0.5, 0.125, 0.1]);
        // Zero diameter: the target alone.
        assert_eq!(epsilon_schedule(0.0, 0.1, 0.9), vec![0.1]);
        // Target above the diameter scale: the target alone.
        assert_eq!(epsilon_schedule(0.1, 1.0, 0.9), vec![1.0]);
    }

    #[test]
    fn softmin_matches_hand_computed_values() {
        let device = Device::flex();
        // C = [[0, 1], [2, 0]], h = [0, ln 2], eps = 1:
        // row 0: -ln(e^0 + 2 e^-1), row 1: -ln(e^-2 + 2 e^0).
        let neg_c = Tensor::<2>::from_floats([[0.0, -1.0], [-2.0, 0.0]], &device);
        let h = Tensor::<1>::from_floats([0.0, std::f32::consts::LN_2], &device);
        let got: Vec<f32> = softmin(1.0, neg_c, h)
            .into_data()
            .try_to_vec_as::<f32>()
            .unwrap();
        let want = [
            -(1.0f64 + 2.0 * (-1.0f64).exp()).ln(),
            -((-2.0f64).exp() + 2.0).ln(),
        ];
        for (g, w) in got.iter().zip(want) {
            assert!((*g as f64 - w).abs() < 1e-6, "{g} vs {w}");
        }
    }

    #[test]
    fn softmin_is_stable_for_tiny_eps() {
        let device = Device::flex();
        // eps = 1e-4 with costs of order 1: exp(-C/eps) underflows without the max shift.
        let neg_c = Tensor::<2>::from_floats([[-1.0e4, -2.0e4]], &device);
        let h = Tensor::<1>::from_floats([0.0, 0.0], &device);
        let got: Vec<f32> = softmin(1e-4, neg_c, h)
            .into_data()
            .try_to_vec_as::<f32>()
            .unwrap();
        assert!((got[0] - 1.0).abs() < 1e-5, "{}", got[0]);
    }

    #[test]
    fn host_loop_matches_the_tensor_op_loop() {
        // The same problem through both implementations of the loop's operations, in float64
        // to a tight tolerance: the potentials agree to far below the tolerance's scale.
        let device = Device::flex();
        let options = (&device, DType::F64);
        let cloud = |n: usize, d: usize, seed: u64, shift: f64| {
            let values: Vec<f64> = (0..n * d)
                .map(|k| {
                    let t = (k as u64 * 2_654_435_761 + seed) % 10_007;
                    t as f64 / 10_007.0 * 2.0 - 1.0 + shift
                })
                .collect();
            Tensor::<2>::from_data(TensorData::new(values, [n, d]), options)
        };
        let (x, y) = (cloud(40, 5, 11, 0.0), cloud(30, 5, 29, 0.4));
        let weights = |n: usize| {
            let w: Vec<f64> = (0..n).map(|i| 1.0 + (i % 3) as f64).collect();
            let total: f64 = w.iter().sum();
            let w: Vec<f64> = w.iter().map(|v| v / total).collect();
            Tensor::<1>::from_data(TensorData::new(w, [n]), options)
        };
        let (a, b) = (weights(40), weights(30));
        let config = SinkhornConfig {
            eps: 0.05,
            tolerance: 1e-10,
            max_iters: 5_000,
            ..SinkhornConfig::default()
        };
        let diameter = box_diameter(&x, &y);
        let mut tensor_op = TensorSoftmin {
            costs: Costs::new(&x, &y),
            scaled: None,
        };
        let by_tensors = solve_with(&mut tensor_op, diameter, &a, &b, false, &config);
        let on_host = solve_potentials(&x, &y, &a, &b, &config);
        assert!(by_tensors.converged && on_host.converged);
        let pairs = [
            (by_tensors.potentials.f_ba, on_host.potentials.f_ba),
            (by_tensors.potentials.g_ab, on_host.potentials.g_ab),
            (by_tensors.potentials.f_aa, on_host.potentials.f_aa),
            (by_tensors.potentials.g_bb, on_host.potentials.g_bb),
        ];
        for (k, (t, h)) in pairs.into_iter().enumerate() {
            for (u, v) in host_values(t).into_iter().zip(host_values(h)) {
                assert!((u - v).abs() < 1e-9, "potential {k}: {u} vs {v}");
            }
        }
    }

    #[test]
    fn two_points_have_the_closed_form() {
        // One point each: the plan is trivial, OT = C, S = |x - y|^2 / 2 for every eps.
        let device = Device::flex();
        let x = Tensor::<2>::from_floats([[0.0, 1.0]], &device);
        let y = Tensor::<2>::from_floats([[3.0, -3.0]], &device);
        let out = sinkhorn_divergence(x, y, None, None, &SinkhornConfig::default());
        let v: f32 = out.value.into_scalar();
        assert!(out.converged);
        assert!((v - 12.5).abs() < 1e-4, "{v}");
    }
}
