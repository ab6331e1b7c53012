//! The solver of the debiased Sinkhorn divergence, independent of where it runs (docs/MATH.md,
//! "Entropic OT and the debiased Sinkhorn divergence"): the eps schedule
//! ([`epsilon_schedule`]), the loop over the four dual potentials ([`solve_with`]) on any
//! implementation of its operations ([`SolverOps`]: tensor ops, the fused kernels, host
//! vectors), the Anderson acceleration of the cross potentials at the target eps
//! ([`Anderson`]) and the step-size state machine it hands over to ([`Momentum`]), and the last,
//! differentiable softmin step from the converged potentials ([`final_value`]) shared by the
//! tensor-op and fused paths.
use burn::tensor::Tensor;

use crate::config::{LossError, SCALING_RANGE, SinkhornConfig};
use crate::cost::{checked_diameter, log_weights};

/// The eps-scaling schedule: from `eps_0 = max(diameter^2 / 2, eps)` multiplied by
/// `scaling^2` at each step while above the target, ending with the target `eps` itself
/// (GeomLoss `epsilon_schedule`, with the cost `|x - y|^2 / 2`). A zero diameter (a single
/// point, identical clouds) gives the one-step schedule `[eps]`.
///
/// `eps` must be finite and positive, `scaling` in [`SCALING_RANGE`] and the diameter finite,
/// so the schedule always ends (at most a few thousand steps from float64's largest diameter).
pub fn epsilon_schedule(diameter: f64, eps: f64, scaling: f64) -> Result<Vec<f64>, LossError> {
    if !(eps.is_finite() && eps > 0.0) {
        return Err(LossError::InvalidConfig {
            key: "eps",
            expected: "a finite number > 0".into(),
            found: eps.to_string(),
        });
    }
    if !SCALING_RANGE.contains(&scaling) {
        return Err(LossError::InvalidConfig {
            key: "scaling",
            expected: "a number in [0.5, 0.95]".into(),
            found: scaling.to_string(),
        });
    }
    if !(diameter.is_finite() && diameter >= 0.0) {
        return Err(LossError::NonFinite {
            dtype: "float64".into(),
            magnitude: diameter,
            hint: "",
        });
    }
    let mut schedule = Vec::new();
    let mut current = 0.5 * diameter * diameter;
    if !current.is_finite() {
        return Err(LossError::NonFinite {
            dtype: "float64".into(),
            magnitude: diameter,
            hint: "",
        });
    }
    let factor = scaling * scaling;
    while current > eps {
        schedule.push(current);
        current *= factor;
    }
    schedule.push(eps);
    Ok(schedule)
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
    pub(crate) fn map<W>(self, mut f: impl FnMut(V) -> W) -> Potentials<W> {
        Potentials {
            f_ba: f(self.f_ba),
            g_ab: f(self.g_ab),
            f_aa: f(self.f_aa),
            g_bb: f(self.g_bb),
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
/// devices (the `host` module).
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
    /// `sum_k c_k v_k` over the `(c_k, v_k)` of `terms` (at least one, all of one length).
    fn combine(&self, terms: &[(f64, &Self::Vector)]) -> Self::Vector;
    /// `sum_i w_i u_i v_i` for each `(u, v)` of `pairs`, read on the host all in one go.
    fn weighted_dots(&self, w: &Self::Vector, pairs: &[(&Self::Vector, &Self::Vector)])
    -> Vec<f64>;
    /// `sum_i w_i v_i` for each `(w, v)` of `terms`, read on the host all in one go.
    fn weighted_sums(&self, terms: &[(&Self::Vector, &Self::Vector)]) -> Vec<f64>;
    /// `v + c`, elementwise.
    fn add_constant(&self, v: &Self::Vector, c: f64) -> Self::Vector;
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

    fn combine(&self, terms: &[(f64, &Tensor<1>)]) -> Tensor<1> {
        terms
            .iter()
            .map(|&(c, v)| v.clone().mul_scalar(c))
            .reduce(|s, v| s + v)
            .expect("at least one term")
    }

    fn weighted_dots(&self, w: &Tensor<1>, pairs: &[(&Tensor<1>, &Tensor<1>)]) -> Vec<f64> {
        if pairs.is_empty() {
            return Vec::new();
        }
        let parts = pairs
            .iter()
            .map(|&(u, v)| (u.clone() * v.clone() * w.clone()).sum())
            .collect();
        host_values(Tensor::cat(parts, 0))
    }

    fn weighted_sums(&self, terms: &[(&Tensor<1>, &Tensor<1>)]) -> Vec<f64> {
        if terms.is_empty() {
            return Vec::new();
        }
        let parts = terms
            .iter()
            .map(|&(w, v)| (w.clone() * v.clone()).sum())
            .collect();
        host_values(Tensor::cat(parts, 0))
    }

    fn add_constant(&self, v: &Tensor<1>, c: f64) -> Tensor<1> {
        v.clone().add_scalar(c)
    }
}

/// Result of `crate::sinkhorn_divergence`.
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
    /// Softmin evaluations in all, the last step's four included: each is one full pass over
    /// an `n x m`, `m x n`, `n x n` or `m x m` cost matrix (stored or computed from the
    /// points), what the time of a solve is made of.
    pub n_softmins: usize,
}

/// What the solver loop returns: the converged (detached) potentials and diagnostics.
#[derive(Debug, Clone)]
pub struct SolveOutput<V = Tensor<1>> {
    /// The four potentials.
    pub potentials: Potentials<V>,
    /// Iterations run in all (descent plus target eps).
    pub n_iters: usize,
    /// The largest L1 marginal error of the three plans at the last check.
    pub marginal_error: f64,
    /// Whether the marginal error fell below the tolerance within `max_iters`.
    pub converged: bool,
    /// Softmin evaluations of the loop (full passes over a cost matrix).
    pub n_softmins: usize,
}

/// What the solver loop takes from the inputs: the clouds and weights without autodiff, the
/// diameter of the eps schedule, and whether the two measures are one ([`same_measure`]).
pub(crate) struct Problem {
    pub x: Tensor<2>,
    pub y: Tensor<2>,
    pub a: Tensor<1>,
    pub b: Tensor<1>,
    pub diameter: f64,
    /// The diameter the eps schedule starts from ([`Problem::schedule_diameter`]).
    pub reach: f64,
    pub same: bool,
}

impl Problem {
    /// The detached problem; a diameter that is not finite (points too large, or not finite)
    /// is an error, before any loop runs.
    pub(crate) fn new(
        x: &Tensor<2>,
        y: &Tensor<2>,
        a: &Tensor<1>,
        b: &Tensor<1>,
    ) -> Result<Self, LossError> {
        let (x, y) = (x.clone().inner(), y.clone().inner());
        let (a, b) = (a.clone().inner(), b.clone().inner());
        let diameter = checked_diameter(&x, &y)?;
        Ok(Self {
            diameter,
            reach: radius_sum(&x, &y).min(diameter),
            same: same_measure(&x, &y, &a, &b),
            x,
            y,
            a,
            b,
        })
    }
}

impl Problem {
    /// The same problem in another float dtype (the host path's float64 fallback), the weights
    /// normalised again in that precision: at a large `eps` the value moves by about
    /// `eps |sum a - sum b|`, so weights rounded in float32 (`1/n` sums to `1 +- 1e-7`) must not
    /// carry their rounding into the float64 solve.
    pub(crate) fn cast(&self, dtype: burn::tensor::DType) -> Self {
        let cast1 = |t: &Tensor<1>| normalised(t.clone().cast(dtype));
        let cast2 = |t: &Tensor<2>| t.clone().cast(dtype);
        Self {
            x: cast2(&self.x),
            y: cast2(&self.y),
            a: cast1(&self.a),
            b: cast1(&self.b),
            diameter: self.diameter,
            reach: self.reach,
            same: self.same,
        }
    }

    /// The diameter of the eps schedule: an upper bound of the largest distance `|x_i - y_j|`
    /// between the two clouds, the smaller of the pooled bounding box's diagonal and the sum of
    /// the clouds' largest distances to their pooled mean (the triangle inequality through that
    /// mean), so that `eps_0 = diameter^2 / 2` is at least the largest cost of the cross
    /// problem (MATH.md: the schedule may start at `max C`).
    pub(crate) fn schedule_diameter(&self) -> f64 {
        self.reach
    }

    /// Whether float32 potentials would lose the value: each potential is computed as
    /// `-eps (max + ln sum)` with terms of size `ln(max(n, m))`, so its rounding error is about
    /// `eps (ln(max(n, m)) + 1) 2^-24`, while the value is at most the largest cost
    /// `diameter^2 / 2`. Float32 is kept while that error stays below `1e-6` of the cost scale
    /// (for clouds of unit scale in 16 dimensions, up to `eps` of about 10).
    pub(crate) fn float32_too_coarse(&self, eps: f64) -> bool {
        let points = self.x.dims()[0].max(self.y.dims()[0]).max(2) as f64;
        let rounding = eps * (points.ln() + 1.0) * f64::from(f32::EPSILON) / 2.0;
        rounding > 1e-6 * (0.5 * self.diameter * self.diameter)
    }
}

/// `max_i |x_i - c| + max_j |y_j - c|` with `c` the mean of the pooled points: an upper bound
/// of every distance `|x_i - y_j|` (triangle inequality through `c`). Not finite when the
/// squares overflow the dtype (the caller keeps the bounding box's diagonal then).
fn radius_sum(x: &Tensor<2>, y: &Tensor<2>) -> f64 {
    let centre = Tensor::cat(vec![x.clone(), y.clone()], 0).mean_dim(0);
    let radius = |p: &Tensor<2>| -> f64 {
        let sq = (p.clone() - centre.clone()).square().sum_dim(1).max();
        sq.into_scalar::<f64>().sqrt()
    };
    let sum = radius(x) + radius(y);
    if sum.is_finite() { sum } else { f64::INFINITY }
}

/// `w / sum(w)`: the measures of the divergence have mass 1 (MATH.md).
fn normalised(w: Tensor<1>) -> Tensor<1> {
    let total: f64 = w.clone().sum().into_scalar::<f64>();
    w.div_scalar(total)
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

/// The solver loop over any implementation of the four softmins (the tensor-op cost matrices,
/// the fused kernel on wgpu, host vectors on the CPU): eps-scaling descent, then iterations at
/// the target eps until the marginal error is below the tolerance or `max_iters` is reached.
/// `config` must be valid ([`SinkhornConfig::validate`]).
///
/// The descent takes one softmin per eps, alternately of the two cross potentials
/// (`f <- T(g)` at one eps, `g <- T(f)` at the next). The self potentials start at the target
/// eps (see the loop): their averaged symmetric steps converge in a few iterations there, so
/// the descent does not carry them.
///
/// At the target eps the cross potentials are iterated by Anderson acceleration of the
/// alternating Sinkhorn map (see [`Anderson`]), whose every evaluation also gives the marginal
/// error of the current potentials, checked at every iteration. When its safeguard has
/// rejected [`ANDERSON_MAX_REJECTIONS`] steps, or after [`ANDERSON_STALL`] iterations without
/// a smaller cross error, the loop restarts the cross potentials from the end of the descent
/// with the plain, over-relaxed or averaged steps of [`Momentum`], checked every `check_every`
/// iterations.
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
) -> Result<SolveOutput<O::Vector>, LossError> {
    solve_with_acceleration(op, diameter, (a, b), same, config, true)
}

/// The loop of the device paths (tensor ops, fused kernels) on `problem`: the relaxed steps
/// at the target eps, not Anderson's, whose least-squares problem is solved on the host at
/// every iteration (a read-back of the potentials at each step on a device) and which in
/// float32 stalled short of tight tolerances (docs/MATH.md).
pub(crate) fn solve_relaxed<O: SolverOps<Vector = Tensor<1>>>(
    op: &mut O,
    problem: &Problem,
    config: &SinkhornConfig,
) -> Result<SolveOutput, LossError> {
    let weights = (&problem.a, &problem.b);
    let diameter = problem.schedule_diameter();
    solve_with_acceleration(op, diameter, weights, problem.same, config, false)
}

/// [`solve_with`], with Anderson acceleration at the target eps or (`accelerate = false`,
/// for the tests and the device paths) the steps of [`Momentum`] from the start.
pub(crate) fn solve_with_acceleration<O: SolverOps>(
    op: &mut O,
    diameter: f64,
    (a, b): (&O::Vector, &O::Vector),
    same: bool,
    config: &SinkhornConfig,
    accelerate: bool,
) -> Result<SolveOutput<O::Vector>, LossError> {
    let op = &mut Counted {
        op,
        softmins: std::cell::Cell::new(0),
    };
    let (a_log, b_log) = (op.log_weights(a), op.log_weights(b));
    let schedule = epsilon_schedule(diameter, config.eps, config.scaling)?;

    // eps-scaling descent: one softmin per eps, alternately `f <- T(g)` and `g <- T(f)` (each
    // eps moves one potential, the other one follows at the next eps). It starts from `g`
    // against the weights alone at the first (largest) eps. The self potentials are not
    // carried through the descent (see below).
    let eps0 = schedule[0];
    op.prepare(eps0);
    let mut g_ab = op.softmin(eps0, Pair::YX, &a_log, None);
    let mut f_ba = None;
    let mut n_iters = 0;
    let (last_eps, descent) = schedule.split_last().expect("non-empty schedule");
    for (k, &eps) in descent.iter().enumerate() {
        op.prepare(eps);
        if k % 2 == 0 {
            f_ba = Some(op.softmin(eps, Pair::XY, &b_log, Some(&g_ab)));
        } else if let Some(f) = &f_ba {
            g_ab = op.softmin(eps, Pair::YX, &a_log, Some(f));
        }
        n_iters += 1;
    }
    let eps = *last_eps;
    op.prepare(eps);
    let op = &*op;
    // The self potentials start at the target eps, against the weights alone: their
    // symmetric averaged steps converge within a few iterations from there (the self plans
    // are close to the identity), so carrying them through the descent, two of its four
    // softmins per eps, bought nothing (docs/BENCHMARKS.md).
    let f_ba = match f_ba {
        Some(f) => f,
        None => op.softmin(eps, Pair::XY, &b_log, Some(&g_ab)),
    };
    let (f_ba, g_ab) = balanced(op, (a, f_ba), (b, g_ab));
    let mut state = TargetState {
        p: Potentials {
            f_ba,
            g_ab,
            f_aa: op.softmin(eps, Pair::XX, &a_log, None),
            g_bb: op.softmin(eps, Pair::YY, &b_log, None),
        },
        iters: 0,
        marginal_error: f64::INFINITY,
        converged: false,
        frozen_self: None,
    };
    let target = Target {
        op,
        eps,
        weights: (a, b),
        logs: (&a_log, &b_log),
        same,
        config,
    };
    if accelerate && !same {
        // A hand-over restarts the relaxed steps from the potentials the acceleration started
        // from (see `Target::anderson`).
        let start = (state.p.f_ba.clone(), state.p.g_ab.clone());
        target.anderson(&mut state);
        if !state.converged {
            (state.p.f_ba, state.p.g_ab) = start;
        }
    }
    if !state.converged && state.iters < config.max_iters.max(1) {
        target.relaxed(&mut state);
    }
    Ok(SolveOutput {
        potentials: state.p,
        n_iters: n_iters + state.iters,
        marginal_error: state.marginal_error,
        converged: state.converged,
        n_softmins: op.softmins.get(),
    })
}

/// The cross potentials `(f + c, g - c)` with the same weighted mean, `c = (<b, g> - <a, f>) /
/// 2`. Every plan, marginal error and the value `<a, f> + <b, g>` (masses 1) are unchanged;
/// the alternating descent leaves the constant wherever its first potential put it (one
/// potential near `-1.6` and the other near `1.8` on the invariants' float32 problem), and the
/// balanced pair is the smallest in magnitude, the one float32 rounds most finely (without
/// it, a float32 solve of that problem at tolerance 1e-6 stalled at 2.7e-6 on wgpu).
fn balanced<O: SolverOps>(
    op: &O,
    (a, f): (&O::Vector, O::Vector),
    (b, g): (&O::Vector, O::Vector),
) -> (O::Vector, O::Vector) {
    let means = op.weighted_sums(&[(a, &f), (b, &g)]);
    let c = 0.5 * (means[1] - means[0]);
    if c.is_finite() {
        (op.add_constant(&f, c), op.add_constant(&g, -c))
    } else {
        (f, g)
    }
}

/// The iterations at the target eps: the operations, the weights and their logarithms.
struct Target<'a, O: SolverOps> {
    op: &'a O,
    eps: f64,
    weights: (&'a O::Vector, &'a O::Vector),
    logs: (&'a O::Vector, &'a O::Vector),
    same: bool,
    config: &'a SinkhornConfig,
}

/// Where the iterations at the target eps stand.
struct TargetState<V> {
    p: Potentials<V>,
    /// Iterations at the target eps so far.
    iters: usize,
    marginal_error: f64,
    converged: bool,
    /// The self errors once the self potentials are frozen (see [`SELF_FREEZE`]).
    frozen_self: Option<[f64; 2]>,
}

/// The largest of the errors, NaN if any is.
fn largest(errors: &[f64]) -> f64 {
    errors.iter().fold(
        0.0,
        |m: f64, v| if v.is_nan() { f64::NAN } else { m.max(*v) },
    )
}

impl<O: SolverOps> Target<'_, O> {
    /// `T(g)` on the points of alpha.
    fn t_xy(&self, g: &O::Vector) -> O::Vector {
        self.op.softmin(self.eps, Pair::XY, self.logs.1, Some(g))
    }

    /// `T(f)` on the points of beta.
    fn t_yx(&self, f: &O::Vector) -> O::Vector {
        self.op.softmin(self.eps, Pair::YX, self.logs.0, Some(f))
    }

    /// The symmetric updates of the self potentials, until they are frozen.
    fn self_updates(&self, s: &TargetState<O::Vector>) -> Option<(O::Vector, O::Vector)> {
        s.frozen_self.is_none().then(|| {
            (
                self.op
                    .softmin(self.eps, Pair::XX, self.logs.0, Some(&s.p.f_aa)),
                self.op
                    .softmin(self.eps, Pair::YY, self.logs.1, Some(&s.p.g_bb)),
            )
        })
    }

    /// Freezes the self potentials once both their errors are far below the tolerance.
    fn maybe_freeze(&self, s: &mut TargetState<O::Vector>, self_errors: [f64; 2]) {
        if !self.same
            && s.frozen_self.is_none()
            && self_errors[0].max(self_errors[1]) < SELF_FREEZE * self.config.tolerance
        {
            s.frozen_self = Some(self_errors);
        }
    }

    /// Anderson-accelerated iterations of the cross potentials (see [`Anderson`]), with the
    /// averaged symmetric steps of the self potentials until they are frozen. Each iteration
    /// evaluates the alternating map at the current `g`: `f = T(g)`, then `T(f)`; the plan of
    /// `(f, g)` has its `alpha` marginal exact, and the error of its `beta` marginal compares
    /// `g` with `T(f)`, so every iteration is checked at no extra pass. Returns when converged,
    /// at `max_iters`, once the safeguard has rejected [`ANDERSON_MAX_REJECTIONS`] steps, or
    /// after [`ANDERSON_STALL`] iterations without a smaller cross error. The caller then
    /// restarts the cross potentials from where this phase started: the constant `c` of
    /// `(f + c, g - c)` changes no residual, so the fit leaves it free and may move the
    /// potentials far, where float32 rounds them more coarsely than the relaxed steps' tolerance
    /// allows.
    fn anderson(&self, s: &mut TargetState<O::Vector>) {
        let (op, (a, b)) = (self.op, self.weights);
        let max_iters = self.config.max_iters.max(1);
        let mut anderson = Anderson::new();
        // The cross error of the last accepted iterate, and the plain step from it, taken when
        // the extrapolated iterate that followed is rejected.
        let mut accepted = f64::INFINITY;
        let mut fallback: Option<O::Vector> = None;
        let mut rejections = 0;
        // The smallest cross error so far, and the iterations since it was reached.
        let (mut best, mut since_best) = (f64::INFINITY, 0);
        while s.iters < max_iters {
            s.iters += 1;
            let fresh = self.self_updates(s);
            let f = self.t_xy(&s.p.g_ab);
            let t_g = self.t_yx(&f);
            let mut terms: Vec<MarginalTerm<'_, O::Vector>> = vec![(b, &s.p.g_ab, &t_g)];
            if let Some((f_aa, g_bb)) = &fresh {
                terms.push((a, &s.p.f_aa, f_aa));
                terms.push((b, &s.p.g_bb, g_bb));
            }
            let values = op.marginal_errors(self.eps, &terms);
            let self_errors = match (&fresh, s.frozen_self) {
                (Some(_), _) => [2.0 * values[1], 2.0 * values[2]],
                (None, Some(frozen)) => frozen,
                (None, None) => unreachable!("self potentials updated or frozen"),
            };
            let cross = values[0];
            if let Some((f_aa, g_bb)) = fresh {
                s.p.f_aa = op.relax(&s.p.f_aa, f_aa, 0.5);
                s.p.g_bb = op.relax(&s.p.g_bb, g_bb, 0.5);
            }
            s.p.f_ba = f;
            s.marginal_error = largest(&[cross, self_errors[0], self_errors[1]]);
            if s.marginal_error < self.config.tolerance {
                s.converged = true;
                return;
            }
            self.maybe_freeze(s, self_errors);
            // A stall (no smaller cross error for a while: the precision floor of float32
            // potentials, or the slow 2-cycle of near-symmetric problems, which the plain map
            // keeps and the relaxed steps' averaged ones damp) hands over to the relaxed steps.
            if cross < best {
                (best, since_best) = (cross, 0);
            } else {
                since_best += 1;
                if since_best >= ANDERSON_STALL {
                    return;
                }
            }
            // Safeguard: an extrapolated iterate whose cross error did not decrease (or is not
            // a number) is dropped for the plain step from the last accepted one, and the
            // history is cleared.
            let improved = cross.partial_cmp(&accepted) == Some(std::cmp::Ordering::Less);
            if let Some(plain) = fallback.take()
                && !improved
            {
                rejections += 1;
                anderson.clear();
                s.p.g_ab = plain;
                if rejections >= ANDERSON_MAX_REJECTIONS {
                    return;
                }
                continue;
            }
            accepted = cross;
            let residual = op.combine(&[(1.0, &t_g), (-1.0, &s.p.g_ab)]);
            anderson.push(t_g, residual);
            match anderson.extrapolate(op, b) {
                Some(next) => {
                    fallback = Some(anderson.latest().clone());
                    s.p.g_ab = next;
                }
                None => s.p.g_ab = anderson.latest().clone(),
            }
        }
    }

    /// Iterations with the steps of [`Momentum`], from where `s` stands, until converged or
    /// `max_iters`. The self potentials keep the averaged symmetric step. The cross
    /// potentials start with plain alternating steps `f <- T(g)`, `g <- T(f)`; when those are
    /// slow, they are over-relaxed: `f <- (1 - w) f + w T(g)` (over-relaxed Sinkhorn, Thibault
    /// et al. 2017; OTT-JAX `Momentum`), with the weight of `Momentum`, lowered when the error
    /// grows. Plain steps that stall (the 2-cycle of near-symmetric problems, identical
    /// clouds) are replaced by averaged steps, which damp it. All share the fixed point. The
    /// self potentials stop being updated once their error is far below the tolerance.
    fn relaxed(&self, s: &mut TargetState<O::Vector>) {
        let (op, (a, b), same) = (self.op, self.weights, self.same);
        let check_every = self.config.check_every.max(1);
        let max_iters = self.config.max_iters.max(1);
        let mut momentum = Momentum::new(check_every);
        // The cross softmins `T(g_ab)`, `T(f_ba)` of the last marginal check, taken from the
        // potentials the next step starts from: that step's own softmins, reused instead of
        // recomputed (one full pass saved per check with alternating steps, two with averaged).
        let mut checked: Option<(O::Vector, O::Vector)> = None;
        let start = s.iters;
        for it in start + 1..=max_iters {
            let fresh = self.self_updates(s);
            let p = &s.p;
            let (f_ba, g_ab) = match (&fresh, momentum.step) {
                (Some((f_aa, _)), _) if same => {
                    let f = op.relax(&p.f_aa, f_aa.clone(), 0.5);
                    (f.clone(), f)
                }
                (_, CrossStep::Averaged) => {
                    let (t_f, t_g) = checked
                        .take()
                        .unwrap_or_else(|| (self.t_xy(&p.g_ab), self.t_yx(&p.f_ba)));
                    (op.relax(&p.f_ba, t_f, 0.5), op.relax(&p.g_ab, t_g, 0.5))
                }
                (_, CrossStep::Alternating(w)) => {
                    let t_f = match checked.take() {
                        Some((t_f, _)) => t_f,
                        None => self.t_xy(&p.g_ab),
                    };
                    let f_ba = op.relax(&p.f_ba, t_f, w);
                    let g_ab = op.relax(&p.g_ab, self.t_yx(&f_ba), w);
                    (f_ba, g_ab)
                }
            };
            let next = Potentials {
                f_aa: match &fresh {
                    Some((f_aa, _)) => op.relax(&p.f_aa, f_aa.clone(), 0.5),
                    None => p.f_aa.clone(),
                },
                g_bb: match &fresh {
                    Some((_, g_bb)) => op.relax(&p.g_bb, g_bb.clone(), 0.5),
                    None => p.g_bb.clone(),
                },
                f_ba,
                g_ab,
            };
            s.iters += 1;
            let check = (it - start) % check_every == 0 || it == max_iters;
            let old = std::mem::replace(&mut s.p, next);
            if check {
                let p = &s.p;
                // Both marginals of the cross plan defined by (f_ba, g_ab), and those of the
                // self plans (symmetric: twice one marginal) of the potentials before this
                // step. For one measure the cross plan is the self plan (its cost matrix only
                // differs by the rounding of another centring): its error is the self error.
                let cross_updates =
                    (!same || fresh.is_none()).then(|| (self.t_xy(&p.g_ab), self.t_yx(&p.f_ba)));
                let mut terms: Vec<MarginalTerm<'_, O::Vector>> = Vec::with_capacity(4);
                if let Some((f_new, g_new)) = &cross_updates {
                    terms.push((a, &p.f_ba, f_new));
                    terms.push((b, &p.g_ab, g_new));
                }
                if let Some((f_aa, g_bb)) = &fresh {
                    terms.push((a, &old.f_aa, f_aa));
                    terms.push((b, &old.g_bb, g_bb));
                }
                let values = op.marginal_errors(self.eps, &terms);
                let (cross, self_errors) = match (cross_updates.is_some(), fresh.is_some()) {
                    (true, true) => (values[0] + values[1], [2.0 * values[2], 2.0 * values[3]]),
                    (false, true) => (2.0 * values[0], [2.0 * values[0], 2.0 * values[1]]),
                    (true, false) => (
                        values[0] + values[1],
                        s.frozen_self.expect("self potentials frozen"),
                    ),
                    (false, false) => unreachable!("one measure keeps its self updates"),
                };
                s.marginal_error = largest(&[cross, self_errors[0], self_errors[1]]);
                if s.marginal_error < self.config.tolerance {
                    s.converged = true;
                    return;
                }
                self.maybe_freeze(s, self_errors);
                momentum.observe(cross);
                checked = cross_updates;
            }
        }
    }
}

/// Anderson acceleration (type II, Walker and Ni 2011) of the alternating Sinkhorn map
/// `G(g) = T(T(g))` (`f = T(g)` on the points of alpha, then `T(f)` on those of beta) at the
/// target eps. From the last `k + 1 <= ANDERSON_MEMORY + 1` evaluations `G_i = G(g_i)` with residuals
/// `r_i = G_i - g_i`, the next iterate is `g = G_k - sum_i gamma_i (G_(i+1) - G_i)`, where
/// `gamma` minimises `|r_k - sum_i gamma_i (r_(i+1) - r_i)|^2` in the norm weighted by `b`,
/// regularised: `(D'D + lambda tr(D'D) I) gamma = D' r_k` with `lambda = ANDERSON_REGULARISATION`.
/// The fixed point is the plain map's; only the path to it changes.
///
/// Sinkhorn's marginal error at a small eps decays ever more slowly under the plain map (its
/// per-iteration rate tends to 0.99 on the benchmark's problem), the slow modes of a nearly
/// linear map, which the extrapolation from a few residuals removes as GMRES would for a linear
/// one (docs/BENCHMARKS.md).
#[derive(Debug)]
pub(crate) struct Anderson<V> {
    /// `(G_i, r_i)`, oldest first.
    history: std::collections::VecDeque<(V, V)>,
}

/// Differences kept by [`Anderson`]: at most `ANDERSON_MEMORY + 1` evaluations.
const ANDERSON_MEMORY: usize = 5;
/// Relative Tikhonov regularisation of [`Anderson`]'s least-squares problem.
const ANDERSON_REGULARISATION: f64 = 1e-8;
/// Rejected extrapolations after which the loop returns to the steps of [`Momentum`].
const ANDERSON_MAX_REJECTIONS: usize = 3;
/// Iterations without a smaller cross error after which the loop returns to the steps of
/// [`Momentum`].
const ANDERSON_STALL: usize = 10;

impl<V> Anderson<V> {
    fn new() -> Self {
        Self {
            history: std::collections::VecDeque::with_capacity(ANDERSON_MEMORY + 1),
        }
    }

    fn clear(&mut self) {
        self.history.clear();
    }

    /// Adds the evaluation `G(g)` and its residual `G(g) - g`.
    fn push(&mut self, value: V, residual: V) {
        if self.history.len() == ANDERSON_MEMORY + 1 {
            self.history.pop_front();
        }
        self.history.push_back((value, residual));
    }

    /// The last evaluation `G_k`.
    fn latest(&self) -> &V {
        &self.history.back().expect("an evaluation").0
    }

    /// The extrapolated iterate, or `None` with a single evaluation or when the least-squares
    /// problem has no finite solution.
    fn extrapolate<O: SolverOps<Vector = V>>(&self, op: &O, b: &V) -> Option<V> {
        let k = self.history.len().checked_sub(1).filter(|&k| k > 0)?;
        let diff = |i: usize, pick: fn(&(V, V)) -> &V| {
            op.combine(&[
                (1.0, pick(&self.history[i + 1])),
                (-1.0, pick(&self.history[i])),
            ])
        };
        let d_r: Vec<V> = (0..k).map(|i| diff(i, |e| &e.1)).collect();
        let r_k = &self.history[k].1;
        // The upper triangle of D'D, then D' r_k, in one read.
        let mut pairs: Vec<(&V, &V)> = Vec::with_capacity(k * (k + 1) / 2 + k);
        for i in 0..k {
            for j in i..k {
                pairs.push((&d_r[i], &d_r[j]));
            }
        }
        pairs.extend(d_r.iter().map(|d| (d, r_k)));
        let dots = op.weighted_dots(b, &pairs);
        let mut gram = vec![0.0; k * k];
        let mut t = 0;
        for i in 0..k {
            for j in i..k {
                gram[i * k + j] = dots[t];
                gram[j * k + i] = dots[t];
                t += 1;
            }
        }
        let trace: f64 = (0..k).map(|i| gram[i * k + i]).sum();
        if !(trace.is_finite() && trace > 0.0) {
            return None;
        }
        for i in 0..k {
            gram[i * k + i] += ANDERSON_REGULARISATION * trace;
        }
        let gamma = fairrep_metrics::linalg::cholesky_solve(&gram, k, &dots[t..])?;
        if !gamma.iter().all(|g| g.is_finite()) {
            return None;
        }
        let d_g: Vec<V> = (0..k).map(|i| diff(i, |e| &e.0)).collect();
        let mut terms: Vec<(f64, &V)> = vec![(1.0, self.latest())];
        terms.extend(gamma.iter().zip(&d_g).map(|(&g, d)| (-g, d)));
        Some(op.combine(&terms))
    }
}

/// The solver's operations, counting the softmins (full passes over a cost matrix).
struct Counted<'a, O> {
    op: &'a mut O,
    softmins: std::cell::Cell<usize>,
}

impl<O: SolverOps> SolverOps for Counted<'_, O> {
    type Vector = O::Vector;

    fn prepare(&mut self, eps: f64) {
        self.op.prepare(eps);
    }

    fn softmin(
        &self,
        eps: f64,
        pair: Pair,
        log_w: &Self::Vector,
        pot: Option<&Self::Vector>,
    ) -> Self::Vector {
        self.softmins.set(self.softmins.get() + 1);
        self.op.softmin(eps, pair, log_w, pot)
    }

    fn relax(&self, old: &Self::Vector, new: Self::Vector, w: f64) -> Self::Vector {
        self.op.relax(old, new, w)
    }

    fn log_weights(&self, w: &Self::Vector) -> Self::Vector {
        self.op.log_weights(w)
    }

    fn marginal_errors(&self, eps: f64, terms: &[MarginalTerm<'_, Self::Vector>]) -> Vec<f64> {
        self.op.marginal_errors(eps, terms)
    }

    fn combine(&self, terms: &[(f64, &Self::Vector)]) -> Self::Vector {
        self.op.combine(terms)
    }

    fn weighted_sums(&self, terms: &[(&Self::Vector, &Self::Vector)]) -> Vec<f64> {
        self.op.weighted_sums(terms)
    }

    fn add_constant(&self, v: &Self::Vector, c: f64) -> Self::Vector {
        self.op.add_constant(v, c)
    }

    fn weighted_dots(
        &self,
        w: &Self::Vector,
        pairs: &[(&Self::Vector, &Self::Vector)],
    ) -> Vec<f64> {
        self.op.weighted_dots(w, pairs)
    }
}

/// The self potentials converge much faster than the cross ones (their symmetric averaged
/// step damps the oscillating mode at once): once both self errors are below this fraction of
/// the tolerance, they are left as they are and each iteration at the target eps costs two
/// softmins instead of four.
const SELF_FREEZE: f64 = 1e-2;

/// How the cross potentials are updated at the target eps.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum CrossStep {
    /// `f <- (f + T(g)) / 2`, `g <- (g + T(f)) / 2` in parallel (GeomLoss).
    Averaged,
    /// `f <- (1 - w) f + w T(g)`, then `g <- (1 - w) g + w T(f)`.
    Alternating(f64),
}

/// Chooses the cross step from the measured convergence (see the loop): plain alternating
/// steps first; when their per-iteration rate is [`Momentum::FAST`] or slower, alternating
/// steps over-relaxed with the weight [`Momentum::OMEGA`]. An error that grows halves the
/// over-relaxation (`w - 1`; below 0.05 it is dropped), which never rises again; plain steps
/// whose error stalls before any over-relaxation switch to averaged steps for good.
#[derive(Debug)]
pub(crate) struct Momentum {
    step: CrossStep,
    check_every: usize,
    previous: Option<f64>,
    settled: bool,
}

impl Momentum {
    /// The over-relaxation weight of slow problems. Sinkhorn's marginal error at a small eps
    /// decays ever more slowly (the per-iteration rate of plain steps grows from about 0.9
    /// after the descent towards 0.99), so a weight from the first measured rate, `2 / (1 +
    /// sqrt(1 - rate))` (Thibault et al. 2017), is too small for the rest of the solve, and
    /// re-estimating it from the over-relaxed rate (Young's relation) keeps restarting the
    /// transient. Measured at n = m = 2048, d = 16, eps = 0.1, tolerance 1e-3, from the
    /// end of a descent at scaling 0.9, iterations at the target eps: 85 with the weight of the
    /// first measured rate (1.5), 100 to 105 re-estimating it; with a fixed weight from the
    /// first iteration 65 (1.5), 50 (1.7) and 45 (1.8), while 1.9 diverged at first; as
    /// implemented (plain steps until the first rate is measured, then 1.8) 54
    /// (docs/BENCHMARKS.md).
    const OMEGA: f64 = 1.8;
    /// Per-iteration rates below this are fast enough for plain alternating steps.
    const FAST: f64 = 0.8;

    fn new(check_every: usize) -> Self {
        Self {
            step: CrossStep::Alternating(1.0),
            check_every,
            previous: None,
            settled: false,
        }
    }

    fn switch(&mut self, step: CrossStep, settled: bool) {
        self.step = step;
        self.settled = settled;
        // The first ratio after a switch mixes two schemes: measure from the next check.
        self.previous = None;
    }

    /// Plain alternating steps while they are fast, over-relaxed ones once they are slow;
    /// less over-relaxation when the error grows, averaged steps when plain ones stall.
    fn observe(&mut self, error: f64) {
        let Some(previous) = self.previous.replace(error) else {
            return;
        };
        let ratio = error / previous;
        if !ratio.is_finite() || ratio >= 1.0 {
            // Over-relaxation too strong for this problem, or rounding noise at the precision
            // floor. A stalled plain alternating step is the 2-cycle of near-symmetric
            // problems (identical clouds), which averaged steps damp.
            match self.step {
                CrossStep::Alternating(w) if w > 1.0 => {
                    let lower = 1.0 + (w - 1.0) / 2.0;
                    let lower = if lower < 1.05 { 1.0 } else { lower };
                    self.switch(CrossStep::Alternating(lower), true);
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
        if rate >= Self::FAST {
            self.switch(CrossStep::Alternating(Self::OMEGA), true);
        }
    }
}

/// The values of a small tensor, read on the host as `f64`.
pub(crate) fn host_values(t: Tensor<1>) -> Vec<f64> {
    t.into_data().try_to_vec_as::<f64>().expect("f64 data")
}

/// The differentiable softmin of the last step, on tensors: `softmin_eps(C(rows, cols), h)`
/// with `rows` carrying the gradient and `cols`, `h` constants. The tensor-op and fused paths
/// implement it; [`final_value`] is written once over it.
pub(crate) trait TrackedSoftmin {
    /// `softmin_eps(C(rows, cols), h)`, shape `[rows]`, differentiable in `rows` only.
    fn softmin(&self, eps: f64, rows: &Tensor<2>, cols: &Tensor<2>, h: Tensor<1>) -> Tensor<1>;
}

/// `S = <a, f_ba - f_aa> + <b, g_ab - g_bb>` from one last softmin step taken from the
/// converged (detached) potentials, each with the cost differentiable in its row cloud only
/// (`C(x, y.detach())` for the potentials on `x`, and so on): autodiff through that step gives
/// the envelope-theorem gradient `dS/dx_i = a_i (xbar_i - ybar_i)` of MATH.md, and the value is
/// a difference of potentials, not of large numbers.
pub(crate) fn final_value(
    op: &impl TrackedSoftmin,
    eps: f64,
    (x, y): (&Tensor<2>, &Tensor<2>),
    (a, b): (&Tensor<1>, &Tensor<1>),
    p: Potentials<Tensor<1>>,
) -> Tensor<1> {
    let inv = 1.0 / eps;
    let (a_log, b_log) = (log_weights(a.clone()), log_weights(b.clone()));
    let f_ba = op.softmin(eps, x, y, b_log.clone() + p.g_ab.mul_scalar(inv));
    let g_ab = op.softmin(eps, y, x, a_log.clone() + p.f_ba.mul_scalar(inv));
    let f_aa = op.softmin(eps, x, x, a_log + p.f_aa.mul_scalar(inv));
    let g_bb = op.softmin(eps, y, y, b_log + p.g_bb.mul_scalar(inv));
    ((f_ba - f_aa) * a.clone()).sum() + ((g_ab - g_bb) * b.clone()).sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schedule_descends_geometrically_to_the_target() {
        // diameter 2 -> eps_0 = 2; factor 0.25: 2, 0.5, 0.125, then the target 0.1.
        assert_eq!(
            epsilon_schedule(2.0, 0.1, 0.5).unwrap(),
            vec![2.0, 0.5, 0.125, 0.1]
        );
        // Zero diameter: the target alone.
        assert_eq!(epsilon_schedule(0.0, 0.1, 0.9).unwrap(), vec![0.1]);
        // Target above the diameter scale: the target alone.
        assert_eq!(epsilon_schedule(0.1, 1.0, 0.9).unwrap(), vec![1.0]);
    }

    #[test]
    fn schedule_refuses_what_would_never_end() {
        for (diameter, eps, scaling) in [
            (1.0, 0.1, 1.0),
            (1.0, 0.1, 1.5),
            (1.0, 0.0, 0.9),
            (1.0, -1.0, 0.9),
            (1.0, f64::NAN, 0.9),
            (f64::INFINITY, 0.1, 0.9),
            (f64::NAN, 0.1, 0.9),
            (1e200, 0.1, 0.9),
        ] {
            assert!(
                epsilon_schedule(diameter, eps, scaling).is_err(),
                "{diameter} {eps} {scaling}"
            );
        }
        // The largest finite diameter still gives a finite schedule.
        let s = epsilon_schedule(1e150, 1e-6, 0.5).unwrap();
        assert!(s.len() < 2000, "{}", s.len());
    }

    /// Feeds `observe` errors decaying at `rate` per iteration, `check_every` iterations apart.
    fn observe_rate(m: &mut Momentum, start: f64, rate: f64, checks: usize) -> f64 {
        let mut e = start;
        for _ in 0..checks {
            m.observe(e);
            e *= rate.powi(m.check_every as i32);
        }
        e
    }

    #[test]
    fn fast_alternating_steps_are_kept() {
        let mut m = Momentum::new(5);
        observe_rate(&mut m, 1.0, 0.5, 6);
        assert_eq!(m.step, CrossStep::Alternating(1.0));
        assert!(!m.settled);
    }

    #[test]
    fn slow_alternating_steps_are_over_relaxed() {
        let mut m = Momentum::new(5);
        // Alternating at 0.9 per iteration: slow, so over-relaxed, for good.
        let e = observe_rate(&mut m, 1.0, 0.9, 2);
        assert_eq!(m.step, CrossStep::Alternating(Momentum::OMEGA));
        assert!(m.settled);
        // Faster or slower after that, the weight stays.
        let e = observe_rate(&mut m, e, 0.5, 3);
        assert_eq!(m.step, CrossStep::Alternating(Momentum::OMEGA));
        let _ = observe_rate(&mut m, e, 0.99, 3);
        assert_eq!(m.step, CrossStep::Alternating(Momentum::OMEGA));
    }

    /// Solver operations on `f64` vectors whose cross map is affine (`T(g) = g / 2` on the
    /// points of alpha, `T(f) = f / 2 + 1` on those of beta: fixed point `g = 4/3`) and whose
    /// cross marginal errors are scripted, so that the test decides which steps the safeguard
    /// sees growing. The self softmins return their input (self errors 0).
    struct Scripted {
        cross_errors: std::cell::RefCell<std::collections::VecDeque<f64>>,
        /// The `g` each `T(g)` was evaluated at.
        evaluated: std::cell::RefCell<Vec<Vec<f64>>>,
    }

    /// The settings of the scripted solves: eps 1, tolerance 1e-3, at most 40 iterations at
    /// the target, the relaxed steps checked every 2.
    fn scripted_config() -> SinkhornConfig {
        SinkhornConfig {
            eps: 1.0,
            tolerance: 1e-3,
            max_iters: 40,
            check_every: 2,
            ..SinkhornConfig::default()
        }
    }

    impl Scripted {
        /// The cross errors of the successive checks, nothing evaluated yet.
        fn new(cross_errors: impl IntoIterator<Item = f64>) -> Self {
            Self {
                cross_errors: std::cell::RefCell::new(cross_errors.into_iter().collect()),
                evaluated: std::cell::RefCell::new(Vec::new()),
            }
        }
    }

    impl SolverOps for Scripted {
        type Vector = Vec<f64>;

        fn prepare(&mut self, _eps: f64) {}

        fn softmin(
            &self,
            _eps: f64,
            pair: Pair,
            log_w: &Vec<f64>,
            pot: Option<&Vec<f64>>,
        ) -> Vec<f64> {
            let pot = pot.cloned().unwrap_or_else(|| vec![0.0; log_w.len()]);
            match pair {
                Pair::XY => {
                    self.evaluated.borrow_mut().push(pot.clone());
                    pot.iter().map(|g| g / 2.0).collect()
                }
                Pair::YX => pot.iter().map(|f| f / 2.0 + 1.0).collect(),
                Pair::XX | Pair::YY => pot,
            }
        }

        fn relax(&self, old: &Vec<f64>, new: Vec<f64>, w: f64) -> Vec<f64> {
            old.iter()
                .zip(new)
                .map(|(o, n)| (1.0 - w) * o + w * n)
                .collect()
        }

        fn log_weights(&self, w: &Vec<f64>) -> Vec<f64> {
            w.iter().map(|v| v.ln()).collect()
        }

        fn marginal_errors(&self, _eps: f64, terms: &[MarginalTerm<'_, Vec<f64>>]) -> Vec<f64> {
            // The scripted cross error on the first term, nothing on the others (the relaxed
            // steps' second cross term and the self terms).
            let first = self.cross_errors.borrow_mut().pop_front().unwrap_or(0.0);
            let mut v = vec![0.0; terms.len()];
            v[0] = first;
            v
        }

        fn combine(&self, terms: &[(f64, &Vec<f64>)]) -> Vec<f64> {
            (0..terms[0].1.len())
                .map(|i| terms.iter().map(|(c, v)| c * v[i]).sum())
                .collect()
        }

        fn weighted_dots(&self, w: &Vec<f64>, pairs: &[(&Vec<f64>, &Vec<f64>)]) -> Vec<f64> {
            pairs
                .iter()
                .map(|(u, v)| (0..w.len()).map(|i| w[i] * u[i] * v[i]).sum())
                .collect()
        }

        fn weighted_sums(&self, terms: &[(&Vec<f64>, &Vec<f64>)]) -> Vec<f64> {
            terms
                .iter()
                .map(|(w, v)| w.iter().zip(v.iter()).map(|(w, v)| w * v).sum())
                .collect()
        }

        fn add_constant(&self, v: &Vec<f64>, c: f64) -> Vec<f64> {
            v.iter().map(|v| v + c).collect()
        }
    }

    #[test]
    fn anderson_steps_whose_error_grows_fall_back_to_plain_steps() {
        let config = scripted_config();
        // Target iterations: 1 and 2 are plain steps (one evaluation in the history, then
        // two: 3 is extrapolated); 3's error grows (0.7 after 0.5): rejected, the history
        // cleared, 4 is the plain step from 2's iterate; 4 and 5 plain, 6 extrapolated and
        // rejected (0.6 after 0.3); 7 and 8 plain, 9 extrapolated and rejected (0.5 after
        // 0.2): the third rejection hands over to the relaxed steps, checked every 2
        // iterations from there (1e-4 at iteration 11: converged).
        let script = [1.0, 0.5, 0.7, 0.4, 0.3, 0.6, 0.25, 0.2, 0.5, 1e-4];
        let (mut op, w) = (Scripted::new(script), vec![0.5, 0.5]);
        // Diameter 0: the target eps alone, no descent.
        let out = solve_with(&mut op, 0.0, &w, &w, false, &config).unwrap();
        assert!(out.converged);
        assert_eq!(out.n_iters, 11);
        assert_eq!(out.marginal_error, 1e-4);
        // The `g` of each `T(g)`: 0 the initialisation of `f`, 1 to 9 the accelerated
        // iterations, 10 and 11 the relaxed steps, 12 the check at iteration 11.
        let g = op.evaluated.into_inner();
        assert_eq!(g.len(), 13);
        let plain = |g: &[f64]| -> Vec<f64> { g.iter().map(|g| g / 4.0 + 1.0).collect() };
        let fixed_point = |g: &[f64]| g.iter().all(|v| (v - 4.0 / 3.0).abs() < 1e-9);
        assert_eq!(g[2], plain(&g[1]));
        // Extrapolated iterates: exact for this affine map.
        for k in [3, 6, 9] {
            assert!(fixed_point(&g[k]), "{k}: {:?}", g[k]);
        }
        // After each rejection, the plain step from the last accepted iterate; after the
        // third, the relaxed steps restart from where the acceleration started.
        assert_eq!(g[4], plain(&g[2]));
        assert_eq!(g[7], plain(&g[5]));
        assert_eq!(g[10], g[1]);
        for k in [5, 8] {
            assert_eq!(g[k], plain(&g[k - 1]), "{k}");
        }
    }

    #[test]
    fn a_stalled_anderson_phase_hands_over_to_the_relaxed_steps() {
        let config = scripted_config();
        // Every extrapolated iterate improves on the one before (no rejection), but none on
        // the first error: after ANDERSON_STALL such iterations, at iteration 11, the relaxed
        // steps take over, checked every 2 iterations (1e-4 at 13: converged).
        let mut script = vec![0.5];
        script.extend((0..ANDERSON_STALL).map(|k| 0.9 - 0.01 * k as f64));
        script.push(1e-4);
        let (mut op, w) = (Scripted::new(script), vec![0.5, 0.5]);
        let out = solve_with(&mut op, 0.0, &w, &w, false, &config).unwrap();
        assert!(out.converged);
        assert_eq!(out.n_iters, 1 + ANDERSON_STALL + 2);
        assert_eq!(out.marginal_error, 1e-4);
        // The initialisation, 11 accelerated iterations, 2 relaxed ones and their check.
        assert_eq!(op.evaluated.into_inner().len(), 1 + 1 + ANDERSON_STALL + 3);
    }

    #[test]
    fn a_growing_error_lowers_over_relaxation_or_ends_a_stall() {
        // Over-relaxed steps whose error grows halve their over-relaxation, down to plain steps.
        let mut m = Momentum::new(5);
        m.switch(CrossStep::Alternating(1.8), true);
        let mut weights = Vec::new();
        for e in [1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0] {
            m.observe(e);
            if let CrossStep::Alternating(w) = m.step {
                weights.push((w * 1e6).round() / 1e6);
            }
        }
        weights.dedup();
        assert_eq!(weights, vec![1.8, 1.4, 1.2, 1.1, 1.05, 1.0]);
        assert!(m.settled);
        // Plain alternating steps that stall (the 2-cycle of near-symmetric problems) switch
        // to averaged steps for good.
        let mut m = Momentum::new(5);
        m.observe(1.0);
        m.observe(1.0);
        assert_eq!(m.step, CrossStep::Averaged);
        assert!(m.settled);
        let _ = observe_rate(&mut m, 1.0, 0.99, 4);
        assert_eq!(m.step, CrossStep::Averaged);
    }
}
