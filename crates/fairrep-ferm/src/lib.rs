//! FERM: empirical risk minimisation under an equal-opportunity constraint (Donini, Oneto,
//! Ben-David, Shawe-Taylor, Pontil, NeurIPS 2018), in pure Rust without burn.
//!
//! Fairness here is equal opportunity generalised to losses: the risk on the positively
//! labelled examples is (nearly) the same in the two groups. For a linear scorer
//! `f(x) = <w, x> + b` (possibly in a kernel's feature space) the empirical version is the
//! orthogonality `<w, u> = 0`, `u = u_a - u_b`, `u_g` = mean feature vector of the positive
//! examples of group g (MATH.md, "Companion methods": FERM). Groups are ids `0` (a) and `1`
//! (b); the reported gap, DEO `= |TPR_a - TPR_b|`, is symmetric.
//!
//! - [`LinearFermProjection`]: the fair linear representation `R^d -> R^(d-1)` (serialisable,
//!   applicable to new rows); any linear model on it satisfies `<w, u> = 0`.
//! - [`fit_linear_svm`] (C-SVM, hinge loss, primal QP) and [`fit_logistic`] (L2 logistic
//!   regression, Newton): linear models on raw or projected features.
//! - [`fit_kernel_svm`]: the kernel C-SVM dual, with the FERM equality
//!   `sum_i alpha_i y_i tau_i = 0` when asked (kernel FERM), RBF and linear kernels.
//! - [`select`]: the authors' model selection (k-fold CV over `C` / `gamma`, best DEO among
//!   the configurations within 90% of the best accuracy, refit), or accuracy only.
//! - [`metrics`]: accuracy, DEO, DP gap and EO gap on slices.
//! - [`Sample`] validates inputs; every failure is a [`FermError`]. The library never prints.
//!
//! # Choices
//!
//! - **Linear SVM.** The authors fit `sklearn.svm.SVC(kernel="linear")`: the C-SVM with hinge
//!   loss and an unpenalised bias (libsvm). `LinearSVC` would be the squared hinge with a
//!   penalised bias by default, a different problem; this crate solves the former.
//! - **QP solver: Clarabel** (`clarabel` crate, Oxford Control Group; also the default QP
//!   solver of CVXPY). A pure-Rust primal-dual interior-point method: no system BLAS or C
//!   toolchain, accurate to tight tolerances (the fixtures use `1e-9`), reports its status
//!   and the dual variables of every constraint (which give the SVM dual variables and the
//!   multipliers of the equalities). The kernel dual is dense; Clarabel's `faer` supernodal LDL
//!   factorises its KKT systems about eight times faster than its built-in QDLDL at
//!   `n = 1000-2000` (measured: 3 s instead of 26 s at `n = 2000`), so the crate enables the
//!   `faer-sparse` feature. A specialised SMO solver (libsvm's) would be faster on large `n`
//!   but does not take the second equality of kernel FERM without a new working-set rule.
//! - **Logistic regression** is a `(d+1)`-dimensional smooth convex problem: Newton's method
//!   with a small Cholesky solve converges to machine precision in ~10 steps, so no solver
//!   crate is needed for it.
//! - **Randomness**: `rand` with `rand_chacha::ChaCha8Rng` (seeded, portable streams) for the
//!   folds and subsamples; `serde` for the fitted objects; `thiserror` for the error enum.
#![warn(missing_docs)]

mod error;
mod kernel;
mod linear;
pub mod metrics;
mod projection;
mod qp;
mod sample;
mod select;

pub use error::FermError;
pub use kernel::{BiasRule, Kernel, KernelModel, KernelSvmConfig, KernelSvmFit, fit_kernel_svm};
pub use linear::{LinearModel, LinearSvmFit, LogisticFit, fit_linear_svm, fit_logistic};
pub use metrics::FairnessMetrics;
pub use projection::LinearFermProjection;
pub use qp::{QpStatus, SolveInfo, SolverSettings};
pub use sample::{CellCounts, Sample, stratified_subsample};
pub use select::{
    Criterion, Estimator, FittedModel, Folds, Grid, GridPoint, GridPointReport, KernelKind,
    SelectionConfig, SelectionReport, assign_folds, fit, select,
};
