//! The QP solver: Clarabel (interior point) on `min 1/2 x'Px + q'x  s.t.  A x + s = b`,
//! `s` in `{0}^m_eq x R_+^m_ineq`.
//!
//! Clarabel's dual `z` follows the KKT system `P x + q + A' z = 0`, `z` in the dual cone, so
//! for equality rows `z` is the multiplier `nu` of `L = f(x) + nu'(A_eq x - b_eq) + ...`.

use std::time::Instant;

use clarabel::algebra::CscMatrix;
use clarabel::solver::{
    DefaultSettingsBuilder, DefaultSolver, IPSolver, NonnegativeConeT, SolverStatus, ZeroConeT,
};

use crate::FermError;

/// Stopping rule and resources of the interior-point solver.
///
/// The solver stops when the duality gap is below `tolerance` in absolute terms or relative to
/// `max(1, min(|primal|, |dual|))`, and the primal and dual residuals are below `tolerance`
/// relative to `max(1, norms of the data and iterates)` (Clarabel's `tol_gap_abs`,
/// `tol_gap_rel`, `tol_feas`).
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct SolverSettings {
    /// Gap and feasibility tolerance (default `1e-9`; Clarabel's own default is `1e-8`).
    pub tolerance: f64,
    /// Iteration limit (default 200; the SVM problems here take 10-30).
    pub max_iter: u32,
    /// Threads of the sparse LDL factorisation (default 1: runs are then bit-for-bit
    /// reproducible; more threads may change the last bits).
    pub threads: u32,
    /// Accept Clarabel's "almost solved" (reduced accuracy: gap `5e-5`, feasibility `1e-4`)
    /// instead of failing (default `true`); the fit records which one it was.
    pub accept_reduced_accuracy: bool,
}

impl Default for SolverSettings {
    fn default() -> Self {
        Self {
            tolerance: 1e-9,
            max_iter: 200,
            threads: 1,
            accept_reduced_accuracy: true,
        }
    }
}

impl SolverSettings {
    pub(crate) fn validate(&self) -> Result<(), FermError> {
        if !(self.tolerance.is_finite() && self.tolerance > 0.0 && self.tolerance < 1.0) {
            return Err(FermError::InvalidConfig {
                key: "solver.tolerance",
                expected: "a value in (0, 1)",
                found: self.tolerance.to_string(),
            });
        }
        if self.max_iter == 0 {
            return Err(FermError::InvalidConfig {
                key: "solver.max_iter",
                expected: "at least 1",
                found: "0".into(),
            });
        }
        Ok(())
    }
}

/// How the QP solve ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum QpStatus {
    /// Within [`SolverSettings::tolerance`].
    Solved,
    /// Within Clarabel's reduced tolerances only.
    AlmostSolved,
}

/// Solver diagnostics of one QP.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct SolveInfo {
    /// Final status.
    pub status: QpStatus,
    /// Interior-point iterations.
    pub iterations: u32,
    /// Wall-clock seconds of the solve (setup and factorisations included).
    pub seconds: f64,
}

/// A QP in Clarabel's form; `p` is the upper triangle of `P`.
pub(crate) struct Qp {
    pub p: CscMatrix<f64>,
    pub q: Vec<f64>,
    pub a: CscMatrix<f64>,
    pub b: Vec<f64>,
    pub n_eq: usize,
    pub n_ineq: usize,
}

pub(crate) struct QpSolution {
    pub x: Vec<f64>,
    pub z: Vec<f64>,
    pub info: SolveInfo,
}

pub(crate) fn solve(
    qp: &Qp,
    settings: &SolverSettings,
    problem: &'static str,
) -> Result<QpSolution, FermError> {
    settings.validate()?;
    let start = Instant::now();
    let setup = |reason: String| FermError::SolverSetup { problem, reason };
    let s = DefaultSettingsBuilder::default()
        .verbose(false)
        .tol_gap_abs(settings.tolerance)
        .tol_gap_rel(settings.tolerance)
        .tol_feas(settings.tolerance)
        .max_iter(settings.max_iter)
        .max_threads(settings.threads)
        .direct_solve_method("faer".to_owned())
        .build()
        .map_err(|e| setup(e.to_string()))?;
    let mut cones = Vec::with_capacity(2);
    if qp.n_eq > 0 {
        cones.push(ZeroConeT(qp.n_eq));
    }
    if qp.n_ineq > 0 {
        cones.push(NonnegativeConeT(qp.n_ineq));
    }
    let mut solver = DefaultSolver::new(&qp.p, &qp.q, &qp.a, &qp.b, &cones, s)
        .map_err(|e| setup(e.to_string()))?;
    solver.solve();
    let sol = &solver.solution;
    let status = match sol.status {
        SolverStatus::Solved => QpStatus::Solved,
        SolverStatus::AlmostSolved if settings.accept_reduced_accuracy => QpStatus::AlmostSolved,
        other => {
            return Err(FermError::Solver {
                problem,
                status: other.to_string(),
                iterations: sol.iterations,
            });
        }
    };
    Ok(QpSolution {
        x: sol.x.clone(),
        z: sol.z.clone(),
        info: SolveInfo {
            status,
            iterations: sol.iterations,
            seconds: start.elapsed().as_secs_f64(),
        },
    })
}

/// Builds a CSC matrix from columns given as `(row, value)` lists (rows ascending).
pub(crate) fn csc_from_columns(m: usize, columns: Vec<Vec<(usize, f64)>>) -> CscMatrix<f64> {
    let n = columns.len();
    let nnz = columns.iter().map(Vec::len).sum();
    let mut colptr = Vec::with_capacity(n + 1);
    let mut rowval = Vec::with_capacity(nnz);
    let mut nzval = Vec::with_capacity(nnz);
    colptr.push(0);
    for col in columns {
        for (r, v) in col {
            rowval.push(r);
            nzval.push(v);
        }
        colptr.push(rowval.len());
    }
    CscMatrix::new(m, n, colptr, rowval, nzval)
}
