//! fairrep-ferm against the reference values of `scripts/ferm_reference.py` (numpy, cvxopt,
//! scikit-learn; versions pinned in `scripts/requirements-fixtures.txt`), plus invariants and
//! bad-input errors.
//!
//! Regenerate the fixture (byte-identical for the pinned versions, ~2 s):
//!
//! ```text
//! python3 -m venv .venv-fixtures
//! .venv-fixtures/bin/pip install -r scripts/requirements-fixtures.txt   # or the subset it names
//! .venv-fixtures/bin/python scripts/ferm_reference.py
//! ```
//!
//! # Tolerances
//!
//! Both QP solvers stop at a duality gap below `eps = 1e-9` (absolute, or relative to
//! `max(1, |objective|)`) with residuals below `eps` (Clarabel: `SolverSettings::default()`;
//! cvxopt: `optimal` at `1e-10`, or gap and residuals below `cvxopt_accept = 1e-9`). So each
//! solution is `delta = 10 eps max(1, |D|)`-suboptimal, the factor 10 covering the objective
//! change from the (relative) residuals. From there:
//!
//! - objectives: `|D_rust - D_ref| <= delta_rust + delta_ref`;
//! - weights: the SVM dual is 1-strongly concave in `w = sum alpha_i y_i phi(x_i)` (and the
//!   primal 1-strongly convex in `w`), so `|w - w*|_H <= sqrt(2 delta)` for each solution and
//!   `|w_rust - w_ref|_H <= sqrt(2 delta_rust) + sqrt(2 delta_ref) =: dw` (checked directly as
//!   `(dcoef)' K (dcoef)` for kernels);
//! - the bias is an order statistic of `y_i - g_i`, hence 1-Lipschitz in `max_i |dg_i|`, and
//!   `|dg(x)| <= |dw|_H sqrt(K(x, x))` (Cauchy-Schwarz): decision values agree to
//!   `|dw|_H (sqrt(K(x, x)) + max_i sqrt(K(x_i, x_i)))` (plus the pruned `alpha` mass times
//!   `max |K|`), with the measured `|dw|_H` (the a-priori `dw` goes through a square root and
//!   is far larger than the actual difference);
//! - RBF duals are strongly concave in `alpha` too: `|d alpha|_2 <= dw / sqrt(lambda_min(Q))`;
//! - predictions, accuracy and DEO are then equal exactly when every compared decision value
//!   is farther from 0 than that bound (asserted from the fixture's `min_abs_test_decision`);
//! - logistic regression: `|theta - theta*| <= |grad F(theta)| / lambda_min(Hessian)` for both
//!   solutions;
//! - the projection is the same arithmetic in both: `1e-12` relative to the magnitudes of the
//!   terms of each output.

use std::fs::File;
use std::io::BufReader;

use fairrep_ferm::{
    BiasRule, Criterion, Estimator, FermError, Folds, Grid, Kernel, KernelKind, KernelSvmConfig,
    LinearFermProjection, Sample, SelectionConfig, SolverSettings, assign_folds, fit_kernel_svm,
    fit_linear_svm, fit_logistic, metrics, select, stratified_subsample,
};
use serde_json::Value;

const EPS: f64 = 1e-9;

fn fixture() -> Value {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/ferm.json.gz");
    let file = File::open(path).unwrap_or_else(|e| panic!("{path}: {e}"));
    serde_json::from_reader(flate2::read::GzDecoder::new(BufReader::new(file)))
        .unwrap_or_else(|e| panic!("{path}: {e}"))
}

fn f64s(v: &Value) -> Vec<f64> {
    v.as_array()
        .unwrap_or_else(|| panic!("expected an array, found {v}"))
        .iter()
        .map(|x| x.as_f64().unwrap())
        .collect()
}

fn num(v: &Value, key: &str) -> f64 {
    v[key]
        .as_f64()
        .unwrap_or_else(|| panic!("{key}: expected a number in {}", v["name"]))
}

fn idx(v: &Value, key: &str) -> usize {
    v[key].as_u64().unwrap() as usize
}

struct Data {
    train: Sample,
    x_test: Vec<f64>,
    rows_test: usize,
    labels_test: Vec<f64>,
    groups_test: Vec<u32>,
}

fn data(doc: &Value, name: &str) -> Data {
    let d = doc["datasets"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["name"] == name)
        .unwrap_or_else(|| panic!("no dataset {name}"));
    let groups: Vec<u32> = f64s(&d["groups"]).iter().map(|&g| g as u32).collect();
    let train = Sample::new(
        &f64s(&d["x"]),
        idx(d, "rows"),
        idx(d, "cols"),
        &f64s(&d["labels"]),
        &groups,
    )
    .unwrap();
    Data {
        train,
        x_test: f64s(&d["x_test"]),
        rows_test: idx(d, "rows_test"),
        labels_test: f64s(&d["labels_test"]),
        groups_test: f64s(&d["groups_test"]).iter().map(|&g| g as u32).collect(),
    }
}

fn delta(obj: f64) -> f64 {
    10.0 * EPS * obj.abs().max(1.0)
}

fn w_bound(obj: f64) -> f64 {
    2.0 * (2.0 * delta(obj)).sqrt()
}

fn norm(v: &[f64]) -> f64 {
    v.iter().map(|x| x * x).sum::<f64>().sqrt()
}

fn max_row_norm(x: &[f64], cols: usize) -> f64 {
    x.chunks_exact(cols).map(norm).fold(0.0, f64::max)
}

/// Asserts equal predictions, accuracy and DEO, after checking that the reference decision
/// values are farther from 0 than the bound on their difference.
fn assert_same_decisions(name: &str, ours: &[f64], reference: &[f64], bound: &[f64], d: &Data) {
    assert_eq!(ours.len(), reference.len(), "{name}");
    for (i, ((a, b), tol)) in ours.iter().zip(reference).zip(bound).enumerate() {
        assert!(
            (a - b).abs() <= *tol,
            "{name}: decision {i}: {a} vs reference {b}, |diff| {:e} > bound {tol:e}",
            (a - b).abs()
        );
        assert!(
            b.abs() > *tol,
            "{name}: reference decision {i} = {b} is within the bound {tol:e} of 0: regenerate the fixture with another seed"
        );
        assert_eq!(*a > 0.0, *b > 0.0, "{name}: prediction {i}");
    }
    let ours_m = metrics::evaluate(ours, &d.labels_test, &d.groups_test).unwrap();
    let ref_m = metrics::evaluate(reference, &d.labels_test, &d.groups_test).unwrap();
    assert_eq!(ours_m, ref_m, "{name}");
}

/// `mean_{y=1, s=a} f - mean_{y=1, s=b} f`.
fn positive_mean_gap(f: &[f64], s: &Sample) -> f64 {
    let mut sums = [0.0; 2];
    let mut counts = [0.0; 2];
    for ((&fi, &yi), &g) in f.iter().zip(s.signed_labels()).zip(s.groups()) {
        if yi > 0.0 {
            sums[g as usize] += fi;
            counts[g as usize] += 1.0;
        }
    }
    sums[0] / counts[0] - sums[1] / counts[1]
}

#[test]
fn projection_matches_reference() {
    let doc = fixture();
    for case in doc["projection"].as_array().unwrap() {
        let name = case["data"].as_str().unwrap();
        let d = data(&doc, name);
        let p = LinearFermProjection::fit(&d.train).unwrap();
        assert_eq!(p.pivot, idx(case, "pivot"), "{name}: pivot");
        let u_ref = f64s(&case["u"]);
        let u_scale = u_ref.iter().fold(0.0f64, |m, v| m.max(v.abs()));
        for (k, (a, b)) in p.u.iter().zip(&u_ref).enumerate() {
            assert!(
                (a - b).abs() <= 1e-12 * u_scale,
                "{name}: u[{k}] {a} vs {b}"
            );
        }
        let cols = d.train.cols();
        for (what, x, rows, z_ref) in [
            (
                "z",
                d.train.features().to_vec(),
                d.train.rows(),
                f64s(&case["z"]),
            ),
            (
                "z_test",
                d.x_test.clone(),
                d.rows_test,
                f64s(&case["z_test"]),
            ),
        ] {
            let z = p.apply(&x, rows, cols).unwrap();
            assert_eq!(z.len(), z_ref.len(), "{name} {what}");
            for (i, xr) in x.chunks_exact(cols).enumerate() {
                let t = xr[p.pivot] / p.u[p.pivot];
                for (out, k) in (0..cols).filter(|&k| k != p.pivot).enumerate() {
                    let scale = xr[k].abs() + (t * p.u[k]).abs();
                    let (a, b) = (z[i * (cols - 1) + out], z_ref[i * (cols - 1) + out]);
                    assert!(
                        (a - b).abs() <= 1e-12 * scale.max(f64::MIN_POSITIVE),
                        "{name} {what}[{i}, {out}]: {a} vs {b}"
                    );
                }
            }
        }
        // The projection is serialisable and survives a round trip.
        let json = serde_json::to_string(&p).unwrap();
        let back: LinearFermProjection = serde_json::from_str(&json).unwrap();
        assert_eq!(back, p);
    }
}

/// `<w, u> = 0` for linear models on the projection, and equal mean positive scores.
#[test]
fn linear_models_on_the_projection_are_orthogonal_to_u() {
    let doc = fixture();
    for name in ["small", "mixed"] {
        let d = data(&doc, name);
        let p = LinearFermProjection::fit(&d.train).unwrap();
        let z = p.apply_sample(&d.train).unwrap();
        let svm = fit_linear_svm(&z, 1.0, &SolverSettings::default()).unwrap();
        let logit = fit_logistic(&z, 1.0).unwrap();
        for (what, model) in [("svm", &svm.model), ("logistic", &logit.model)] {
            let w = p.pull_back(&model.weights).unwrap();
            let wu: f64 = w.iter().zip(&p.u).map(|(a, b)| a * b).sum();
            // Rounding: d products of size |w_k u_k|.
            let scale: f64 = w.iter().zip(&p.u).map(|(a, b)| (a * b).abs()).sum();
            assert!(wu.abs() <= 1e-13 * scale, "{name} {what}: <w, u> = {wu:e}");
            // The same model in the original space gives the same scores ...
            let f_proj = model
                .decision_function(z.features(), z.rows(), z.cols())
                .unwrap();
            let f_orig: Vec<f64> = (0..d.train.rows())
                .map(|i| {
                    d.train
                        .row(i)
                        .iter()
                        .zip(&w)
                        .map(|(a, b)| a * b)
                        .sum::<f64>()
                        + model.bias
                })
                .collect();
            for (a, b) in f_proj.iter().zip(&f_orig) {
                assert!((a - b).abs() <= 1e-12 * (1.0 + a.abs()), "{name} {what}");
            }
            // ... and the positives' mean score is the same in both groups.
            let gap = positive_mean_gap(&f_proj, &d.train);
            let scale = f_proj.iter().fold(1.0f64, |m, v| m.max(v.abs()));
            assert!(
                gap.abs() <= 1e-12 * scale,
                "{name} {what}: mean gap {gap:e}"
            );
        }
    }
}

#[test]
fn linear_svm_matches_reference() {
    let doc = fixture();
    for case in doc["linear_svm"].as_array().unwrap() {
        let name = case["name"].as_str().unwrap();
        let d = data(&doc, case["data"].as_str().unwrap());
        let projected = case["projected"].as_bool().unwrap();
        let (train, x_test, cols) = if projected {
            let p = LinearFermProjection::fit(&d.train).unwrap();
            let z = p.apply_sample(&d.train).unwrap();
            let zt = p.apply(&d.x_test, d.rows_test, d.train.cols()).unwrap();
            (z, zt, p.output_dim())
        } else {
            (d.train.clone(), d.x_test.clone(), d.train.cols())
        };
        let fit = fit_linear_svm(&train, num(case, "c"), &SolverSettings::default()).unwrap();
        assert_eq!(fit.solve.status, fairrep_ferm::QpStatus::Solved, "{name}");
        let p_ref = num(case, "primal_objective");
        let tol_obj = 2.0 * delta(p_ref);
        for (what, ours, theirs) in [
            ("primal", fit.primal_objective, p_ref),
            ("dual", fit.dual_objective, num(case, "dual_objective")),
            ("own gap", fit.primal_objective, fit.dual_objective),
        ] {
            assert!(
                (ours - theirs).abs() <= tol_obj,
                "{name}: {what} {ours} vs {theirs} (tol {tol_obj:e})"
            );
        }
        let dw = w_bound(p_ref);
        let w_ref = f64s(&case["w"]);
        let diff: Vec<f64> = fit
            .model
            .weights
            .iter()
            .zip(&w_ref)
            .map(|(a, b)| a - b)
            .collect();
        assert!(norm(&diff) <= dw, "{name}: |dw| {:e} > {dw:e}", norm(&diff));
        let rmax = max_row_norm(train.features(), cols);
        assert!(
            (fit.model.bias - num(case, "b")).abs() <= dw * rmax,
            "{name}: b {} vs {}",
            fit.model.bias,
            num(case, "b")
        );
        let ours = fit
            .model
            .decision_function(&x_test, d.rows_test, cols)
            .unwrap();
        // Cauchy-Schwarz with the measured |dw| (itself checked against the a-priori bound).
        let dw_measured = norm(&diff);
        let bound: Vec<f64> = x_test
            .chunks_exact(cols)
            .map(|x| dw_measured * (norm(x) + rmax) + 1e-12)
            .collect();
        assert_same_decisions(name, &ours, &f64s(&case["test_decision"]), &bound, &d);
        let m = metrics::evaluate(&ours, &d.labels_test, &d.groups_test).unwrap();
        assert_eq!(m.deo, num(case, "test_deo"), "{name}: DEO");
        assert_eq!(m.accuracy, num(case, "test_accuracy"), "{name}: accuracy");
    }
}

#[test]
fn logistic_matches_reference() {
    let doc = fixture();
    for case in doc["logistic"].as_array().unwrap() {
        let name = case["name"].as_str().unwrap();
        let d = data(&doc, case["data"].as_str().unwrap());
        let train = if case["projected"].as_bool().unwrap() {
            let p = LinearFermProjection::fit(&d.train).unwrap();
            p.apply_sample(&d.train).unwrap()
        } else {
            d.train.clone()
        };
        let fit = fit_logistic(&train, num(case, "c")).unwrap();
        let tol =
            (fit.gradient_norm + num(case, "gradient_norm")) / num(case, "hessian_lambda_min");
        let mut theta = fit.model.weights.clone();
        theta.push(fit.model.bias);
        let mut theta_ref = f64s(&case["w"]);
        theta_ref.push(num(case, "b"));
        let diff: Vec<f64> = theta.iter().zip(&theta_ref).map(|(a, b)| a - b).collect();
        assert!(
            norm(&diff) <= tol,
            "{name}: |dtheta| {:e} > {tol:e}",
            norm(&diff)
        );
        let obj = num(case, "objective");
        assert!(
            (fit.objective - obj).abs() <= 1e-12 * obj.max(1.0),
            "{name}: objective {} vs {obj}",
            fit.objective
        );
    }
}

#[test]
fn kernel_duals_match_reference() {
    let doc = fixture();
    for case in doc["kernel"].as_array().unwrap() {
        let name = case["name"].as_str().unwrap();
        let d = data(&doc, case["data"].as_str().unwrap());
        let kernel = match case["kernel"].as_str().unwrap() {
            "rbf" => Kernel::Rbf {
                gamma: num(case, "gamma"),
            },
            _ => Kernel::Linear,
        };
        let c = num(case, "c");
        let fair = case["fair"].as_bool().unwrap();
        let cfg = KernelSvmConfig::new(c, kernel, fair);
        let fit = fit_kernel_svm(&d.train, &cfg).unwrap();
        assert_eq!(fit.solve.status, fairrep_ferm::QpStatus::Solved, "{name}");
        assert!(fit.rows_used.is_none());
        let n = d.train.rows();
        let y = d.train.signed_labels();
        let d_ref = num(case, "dual_objective");
        let tol_obj = 2.0 * delta(d_ref);
        assert!(
            (fit.dual_objective - d_ref).abs() <= tol_obj,
            "{name}: dual {} vs {d_ref} (tol {tol_obj:e})",
            fit.dual_objective
        );
        // |w_rust - w_ref|_H from the kernel matrix.
        let alpha_ref = f64s(&case["alpha"]);
        let dcoef: Vec<f64> = (0..n)
            .map(|i| (fit.alpha[i] - alpha_ref[i]) * y[i])
            .collect();
        let mut dw2 = 0.0;
        let mut kdiag_max: f64 = 0.0;
        let mut kmax: f64 = 0.0;
        for i in 0..n {
            kdiag_max = kdiag_max.max(kernel.eval(d.train.row(i), d.train.row(i)));
            for j in 0..n {
                let k = kernel.eval(d.train.row(i), d.train.row(j));
                kmax = kmax.max(k.abs());
                dw2 += dcoef[i] * k * dcoef[j];
            }
        }
        let dw = w_bound(d_ref);
        assert!(
            dw2.max(0.0).sqrt() <= dw,
            "{name}: |dw|_H {:e} > {dw:e}",
            dw2.sqrt()
        );
        if case["alpha_unique"].as_bool().unwrap() {
            let tol = dw / num(case, "lambda_min").sqrt();
            let da: Vec<f64> = fit
                .alpha
                .iter()
                .zip(&alpha_ref)
                .map(|(a, b)| a - b)
                .collect();
            assert!(
                norm(&da) <= tol,
                "{name}: |d alpha| {:e} > {tol:e}",
                norm(&da)
            );
        }
        // tau is the same arithmetic on the same kernel values.
        if fair {
            let tau = fit.tau.as_ref().unwrap();
            for (i, (a, b)) in tau.iter().zip(&f64s(&case["tau"])).enumerate() {
                assert!((a - b).abs() <= 1e-12 * kmax, "{name}: tau[{i}] {a} vs {b}");
            }
            // The FERM equality holds to the solver's feasibility tolerance.
            let r = fit.fairness_residual.unwrap();
            assert!(
                r.abs() <= 10.0 * EPS * c * n as f64 * kmax,
                "{name}: residual {r:e}"
            );
        }
        // Decision values, predictions, DEO.
        let ours = fit
            .model
            .decision_function(&d.x_test, d.rows_test, d.train.cols())
            .unwrap();
        let cols = d.train.cols();
        // Cauchy-Schwarz in the RKHS with the measured |dw|_H (checked above against the
        // a-priori bound); 1e-12 covers the rounding of the sums.
        let dw_measured = dw2.max(0.0).sqrt();
        let bound: Vec<f64> = d
            .x_test
            .chunks_exact(cols)
            .map(|x| {
                dw_measured * (kernel.eval(x, x).sqrt() + kdiag_max.sqrt())
                    + fit.pruned_alpha * kmax
                    + 1e-12
            })
            .collect();
        assert_same_decisions(name, &ours, &f64s(&case["test_decision"]), &bound, &d);
        let m = metrics::evaluate(&ours, &d.labels_test, &d.groups_test).unwrap();
        assert_eq!(m.deo, num(case, "test_deo"), "{name}: DEO");
        // KKT on the free support vectors: g_i + nu_1 + nu_2 tau_i = y_i, where the bound
        // multipliers (complementarity / alpha_i <= delta / (1e-3 C)) are what is left.
        let g: Vec<f64> = fit
            .model
            .decision_function(d.train.features(), n, cols)
            .unwrap()
            .iter()
            .map(|f| f - fit.model.bias)
            .collect();
        let nu = &fit.equality_duals;
        let kkt_tol = delta(d_ref) / (1e-3 * c);
        let mut free = 0;
        for i in 0..n {
            if fit.alpha[i] > 1e-3 * c && fit.alpha[i] < (1.0 - 1e-3) * c {
                free += 1;
                let extra = if fair {
                    nu[1] * fit.tau.as_ref().unwrap()[i]
                } else {
                    0.0
                };
                let r = g[i] + nu[0] + extra - y[i];
                assert!(
                    r.abs() <= kkt_tol,
                    "{name}: KKT residual {r:e} at free row {i}"
                );
            }
        }
        assert!(free > 0, "{name}: no free support vector");
        // Without the constraint, the hinge-optimal b is the KKT b = nu_1.
        if !fair {
            assert!(
                (fit.model.bias - nu[0]).abs() <= kkt_tol,
                "{name}: b {} vs nu_1 {}",
                fit.model.bias,
                nu[0]
            );
        }
        // The returned predictor's primal objective is never below the dual (weak duality).
        assert!(
            fit.primal_objective >= fit.dual_objective - tol_obj,
            "{name}"
        );
        if !fair {
            assert!(
                fit.primal_objective - fit.dual_objective <= tol_obj,
                "{name}"
            );
        }
        // The bias rule switch returns the multiplier.
        let mut cfg2 = cfg;
        cfg2.bias = BiasRule::EqualityDual;
        let fit2 = fit_kernel_svm(&d.train, &cfg2).unwrap();
        assert_eq!(fit2.model.bias, fit2.equality_duals[0], "{name}");
    }
}

/// Kernel FERM: the positives' mean `g = f - b` is the same in both groups (`<w, u> = 0`),
/// and it is not for the unconstrained SVM on the same data.
#[test]
fn kernel_ferm_equalises_positive_mean_scores() {
    let doc = fixture();
    let d = data(&doc, "mixed");
    let n = d.train.rows();
    let mut gaps = Vec::new();
    for fair in [true, false] {
        let cfg = KernelSvmConfig::new(5.0, Kernel::Rbf { gamma: 0.5 }, fair);
        let fit = fit_kernel_svm(&d.train, &cfg).unwrap();
        let f = fit
            .model
            .decision_function(d.train.features(), n, d.train.cols())
            .unwrap();
        let gap = positive_mean_gap(&f, &d.train);
        // mean_a g - mean_b g = sum_j alpha_j y_j tau_j (the bias cancels).
        let r = fit.fairness_residual.unwrap();
        assert!((gap - r).abs() <= 1e-10, "fair={fair}: {gap} vs {r}");
        gaps.push(gap.abs());
    }
    assert!(
        gaps[0] <= 10.0 * EPS * 5.0 * n as f64,
        "FERM gap {}",
        gaps[0]
    );
    assert!(gaps[1] > 1e-3, "SVM gap {}", gaps[1]);
}

fn estimator_of(name: &str) -> Estimator {
    match name {
        "linear_svm" => Estimator::LinearSvm,
        "linear_ferm" => Estimator::LinearFerm,
        "kernel_svm_rbf" => Estimator::KernelSvm(KernelKind::Rbf),
        "kernel_ferm_rbf" => Estimator::KernelFerm(KernelKind::Rbf),
        other => panic!("unknown estimator {other}"),
    }
}

#[test]
fn selection_matches_reference() {
    let doc = fixture();
    let margin_min = num(&doc, "margin_min");
    for case in doc["selection"].as_array().unwrap() {
        let name = case["name"].as_str().unwrap();
        let d = data(&doc, case["data"].as_str().unwrap());
        let estimator = estimator_of(case["estimator"].as_str().unwrap());
        let grid = Grid {
            c: f64s(&case["grid_c"]),
            gamma: if case["grid_gamma"].is_null() {
                Vec::new()
            } else {
                f64s(&case["grid_gamma"])
            },
        };
        let folds: Vec<usize> = f64s(&case["fold_ids"])
            .iter()
            .map(|&f| f as usize)
            .collect();
        for (criterion, key) in [
            (Criterion::Accuracy, "chosen_accuracy"),
            (Criterion::ferm(), "chosen_ferm"),
        ] {
            let mut cfg = SelectionConfig::new(criterion, 0);
            cfg.folds = Folds::Given(folds.clone());
            let report = select(estimator, &d.train, &grid, &cfg).unwrap();
            assert_eq!(report.fold_of_row, folds);
            let points = case["points"].as_array().unwrap();
            assert_eq!(report.points.len(), points.len(), "{name}");
            for (ours, theirs) in report.points.iter().zip(points) {
                assert!(num(theirs, "min_abs_score") >= margin_min, "{name}");
                assert_eq!(ours.point.c, num(theirs, "c"), "{name}");
                assert_eq!(
                    ours.fold_accuracy,
                    f64s(&theirs["fold_accuracy"]),
                    "{name} {:?}",
                    ours.point
                );
                assert_eq!(
                    ours.fold_deo,
                    f64s(&theirs["fold_deo"]),
                    "{name} {:?}",
                    ours.point
                );
                assert!((ours.mean_accuracy - num(theirs, "mean_accuracy")).abs() <= 1e-15);
                assert!((ours.mean_deo - num(theirs, "mean_deo")).abs() <= 1e-15);
            }
            assert_eq!(report.chosen, idx(case, key), "{name} {criterion:?}");
            // The other rule, applied to the same CV table.
            assert_eq!(
                report.chosen_under(Criterion::Accuracy),
                idx(case, "chosen_accuracy"),
                "{name}"
            );
            assert_eq!(
                report.chosen_under(Criterion::ferm()),
                idx(case, "chosen_ferm"),
                "{name}"
            );
        }
    }
}

fn toy(n: usize, seed: u64) -> Sample {
    // A deterministic toy problem: 3 features, group-dependent shift, noisy linear labels.
    let mut x = Vec::with_capacity(n * 3);
    let mut labels = Vec::with_capacity(n);
    let mut groups = Vec::with_capacity(n);
    let mut state = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    let mut next = || {
        state = state
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        ((state >> 11) as f64) / ((1u64 << 53) as f64) * 2.0 - 1.0
    };
    for i in 0..n {
        let g = u32::from(i % 3 == 0);
        let a = next() + 0.5 * f64::from(g);
        let b = next();
        let c = next();
        x.extend_from_slice(&[a, b, c]);
        labels.push(f64::from(a + 0.5 * b + 0.3 * next() > 0.2));
        groups.push(g);
    }
    Sample::new(&x, n, 3, &labels, &groups).unwrap()
}

#[test]
fn folds_are_stratified_and_seeded() {
    let s = toy(103, 1);
    let a = assign_folds(&s, &Folds::Stratified { k: 5, seed: 7 }).unwrap();
    let b = assign_folds(&s, &Folds::Stratified { k: 5, seed: 7 }).unwrap();
    let c = assign_folds(&s, &Folds::Stratified { k: 5, seed: 8 }).unwrap();
    assert_eq!(a, b);
    assert_ne!(a, c);
    let mut sizes = [0usize; 5];
    let mut cell = [[[0usize; 5]; 2]; 2];
    for i in 0..s.rows() {
        sizes[a[i]] += 1;
        let l = usize::from(s.signed_labels()[i] > 0.0);
        cell[s.groups()[i] as usize][l][a[i]] += 1;
    }
    assert!(
        sizes.iter().max().unwrap() - sizes.iter().min().unwrap() <= 1,
        "{sizes:?}"
    );
    for per in cell.iter().flatten() {
        assert!(
            per.iter().max().unwrap() - per.iter().min().unwrap() <= 1,
            "{per:?}"
        );
    }
}

#[test]
fn selection_is_deterministic() {
    let s = toy(90, 2);
    let grid = Grid {
        c: vec![0.1, 1.0],
        gamma: vec![0.5, 2.0],
    };
    for est in [
        Estimator::LinearFerm,
        Estimator::LogisticFerm,
        Estimator::KernelFerm(KernelKind::Rbf),
    ] {
        let cfg = SelectionConfig::new(Criterion::ferm(), 3);
        let a = select(est, &s, &grid, &cfg).unwrap();
        let b = select(est, &s, &grid, &cfg).unwrap();
        assert_eq!(a.fold_of_row, b.fold_of_row);
        assert_eq!(a.chosen, b.chosen);
        assert_eq!(a.model, b.model, "{est:?}");
        for (p, q) in a.points.iter().zip(&b.points) {
            assert_eq!(p.fold_accuracy, q.fold_accuracy);
            assert_eq!(p.fold_deo, q.fold_deo);
        }
        // The refitted model scores new rows; the report serialises.
        let f = a.model.decision_function(&[0.1, 0.2, 0.3], 1, 3).unwrap();
        assert!(f[0].is_finite());
        assert!(serde_json::to_string(&a).is_ok());
    }
}

#[test]
fn kernel_fit_subsamples_above_max_rows() {
    let s = toy(120, 3);
    let mut cfg = KernelSvmConfig::new(1.0, Kernel::Rbf { gamma: 1.0 }, true);
    cfg.max_rows = 50;
    cfg.seed = 9;
    let fit = fit_kernel_svm(&s, &cfg).unwrap();
    let rows = fit.rows_used.clone().unwrap();
    assert_eq!(rows.len(), 50);
    assert_eq!(fit.alpha.len(), 50);
    assert_eq!(rows, stratified_subsample(&s, 50, 9));
    // Stratified: each (group, label) cell keeps its share up to rounding.
    let sub = s.subset(&rows).unwrap();
    let (full, part) = (s.cell_counts(), sub.cell_counts());
    for g in 0..2 {
        for l in 0..2 {
            let want = 50.0 * full.get(g, l) as f64 / 120.0;
            assert!(
                (part.get(g, l) as f64 - want).abs() < 1.0,
                "cell ({g}, {l})"
            );
        }
    }
    assert_ne!(
        stratified_subsample(&s, 50, 9),
        stratified_subsample(&s, 50, 10)
    );
}

// ---------------------------------------------------------------------------------------
// Bad input: one test each.
// ---------------------------------------------------------------------------------------

fn grid1() -> Grid {
    Grid {
        c: vec![1.0],
        gamma: vec![1.0],
    }
}

#[test]
fn error_group_without_positives() {
    let x = [0.0, 1.0, 1.0, 0.0, 2.0, 1.0, 1.0, 2.0];
    let s = Sample::new(&x, 4, 2, &[1.0, 0.0, 1.0, 0.0], &[0, 0, 0, 1]).unwrap();
    let want = FermError::NoPositives { group: 1 };
    assert_eq!(LinearFermProjection::fit(&s).unwrap_err(), want);
    let cfg = KernelSvmConfig::new(1.0, Kernel::Linear, true);
    assert_eq!(fit_kernel_svm(&s, &cfg).unwrap_err(), want);
    let sel = SelectionConfig::new(Criterion::ferm(), 0);
    assert_eq!(
        select(Estimator::LinearSvm, &s, &grid1(), &sel).unwrap_err(),
        want
    );
    // The unconstrained SVM does not need it.
    let cfg = KernelSvmConfig::new(1.0, Kernel::Linear, false);
    assert!(fit_kernel_svm(&s, &cfg).is_ok());
}

#[test]
fn error_labels_not_binary() {
    let e = Sample::new(&[0.0, 1.0], 2, 1, &[1.0f32, 2.0], &[0, 1]).unwrap_err();
    assert_eq!(e, FermError::NonBinaryLabel { row: 1, value: 2.0 });
    let e = Sample::new(&[0.0, 1.0], 2, 1, &[-1.0, 1.0], &[0, 1]).unwrap_err();
    assert_eq!(
        e,
        FermError::NonBinaryLabel {
            row: 0,
            value: -1.0
        }
    );
    let e = Sample::new(&[0.0, 1.0], 2, 1, &[f64::NAN, 1.0], &[0, 1]).unwrap_err();
    assert!(matches!(e, FermError::NonBinaryLabel { row: 0, .. }), "{e}");
}

#[test]
fn error_empty_grids() {
    let s = toy(60, 4);
    let sel = SelectionConfig::new(Criterion::Accuracy, 0);
    let empty_c = Grid {
        c: vec![],
        gamma: vec![1.0],
    };
    assert_eq!(
        select(Estimator::LinearSvm, &s, &empty_c, &sel).unwrap_err(),
        FermError::EmptyGrid { what: "C" }
    );
    let empty_gamma = Grid {
        c: vec![1.0],
        gamma: vec![],
    };
    assert_eq!(
        select(
            Estimator::KernelSvm(KernelKind::Rbf),
            &s,
            &empty_gamma,
            &sel
        )
        .unwrap_err(),
        FermError::EmptyGrid { what: "gamma" }
    );
    // gamma is not needed by linear estimators.
    assert!(select(Estimator::LinearSvm, &s, &empty_gamma, &sel).is_ok());
}

#[test]
fn error_c_not_positive() {
    let s = toy(60, 5);
    for c in [0.0, -1.0, f64::NAN] {
        let grid = Grid {
            c: vec![1.0, c],
            gamma: vec![1.0],
        };
        let sel = SelectionConfig::new(Criterion::Accuracy, 0);
        let e = select(Estimator::LinearFerm, &s, &grid, &sel).unwrap_err();
        assert!(matches!(e, FermError::NotPositive { what: "C", .. }), "{e}");
        let e = fit_kernel_svm(&s, &KernelSvmConfig::new(c, Kernel::Linear, false)).unwrap_err();
        assert!(matches!(e, FermError::NotPositive { what: "C", .. }), "{e}");
        let e = fit_linear_svm(&s, c, &SolverSettings::default()).unwrap_err();
        assert!(matches!(e, FermError::NotPositive { what: "C", .. }), "{e}");
    }
}

#[test]
fn error_gamma_not_positive() {
    let s = toy(60, 6);
    for gamma in [0.0, -0.5, f64::INFINITY] {
        let e = fit_kernel_svm(&s, &KernelSvmConfig::new(1.0, Kernel::Rbf { gamma }, true))
            .unwrap_err();
        assert!(
            matches!(e, FermError::NotPositive { what: "gamma", .. }),
            "{e}"
        );
        let grid = Grid {
            c: vec![1.0],
            gamma: vec![gamma],
        };
        let sel = SelectionConfig::new(Criterion::ferm(), 0);
        let e = select(Estimator::KernelFerm(KernelKind::Rbf), &s, &grid, &sel).unwrap_err();
        assert!(
            matches!(e, FermError::NotPositive { what: "gamma", .. }),
            "{e}"
        );
    }
}

#[test]
fn error_mismatched_lengths() {
    let e = Sample::new(&[0.0, 1.0, 2.0], 2, 2, &[0.0, 1.0], &[0, 1]).unwrap_err();
    assert!(
        matches!(
            e,
            FermError::LengthMismatch {
                expected: 4,
                found: 3,
                ..
            }
        ),
        "{e}"
    );
    let e = Sample::new(&[0.0, 1.0], 2, 1, &[0.0], &[0, 1]).unwrap_err();
    assert!(
        matches!(e, FermError::LengthMismatch { what: "labels", .. }),
        "{e}"
    );
    let e = Sample::new(&[0.0, 1.0], 2, 1, &[0.0, 1.0], &[0]).unwrap_err();
    assert!(
        matches!(e, FermError::LengthMismatch { what: "groups", .. }),
        "{e}"
    );
    let s = toy(60, 7);
    let mut sel = SelectionConfig::new(Criterion::Accuracy, 0);
    sel.folds = Folds::Given(vec![0, 1]);
    let e = select(Estimator::LinearSvm, &s, &grid1(), &sel).unwrap_err();
    assert!(
        matches!(
            e,
            FermError::LengthMismatch {
                what: "fold ids",
                ..
            }
        ),
        "{e}"
    );
    let p = LinearFermProjection::fit(&s).unwrap();
    assert!(matches!(
        p.apply(&[1.0, 2.0], 1, 2),
        Err(FermError::ColumnMismatch { .. })
    ));
}

#[test]
fn error_non_finite_features() {
    let x = [0.0, 1.0, 2.0, f64::INFINITY];
    let e = Sample::new(&x, 2, 2, &[0.0, 1.0], &[0, 1]).unwrap_err();
    assert!(
        matches!(e, FermError::NonFiniteFeature { row: 1, col: 1, .. }),
        "{e}"
    );
    let s = toy(60, 8);
    let fit = fit_kernel_svm(&s, &KernelSvmConfig::new(1.0, Kernel::Linear, false)).unwrap();
    let e = fit
        .model
        .decision_function(&[0.0, f64::NAN, 0.0], 1, 3)
        .unwrap_err();
    assert!(
        matches!(e, FermError::NonFiniteFeature { row: 0, col: 1, .. }),
        "{e}"
    );
}

#[test]
fn error_fewer_rows_than_folds() {
    // Enough rows overall but too few positives in a group.
    let s = toy(30, 9);
    let positives_b = s.cell_counts().get(1, 1);
    let mut sel = SelectionConfig::new(Criterion::ferm(), 0);
    sel.folds = Folds::Stratified {
        k: positives_b + 1,
        seed: 0,
    };
    let e = select(Estimator::LinearSvm, &s, &grid1(), &sel).unwrap_err();
    assert!(
        matches!(
            e,
            FermError::PositivesFewerThanFolds { .. } | FermError::FewerRowsThanFolds { .. }
        ),
        "{e}"
    );
    // Rows are the limit here: 12 rows (positives in both groups), 13 folds.
    let x: Vec<f64> = (0..24).map(f64::from).collect();
    let labels: Vec<f64> = (0..12).map(|i| f64::from(i % 2)).collect();
    let groups: Vec<u32> = (0..12).map(|i| (i / 2) % 2).collect();
    let s = Sample::new(&x, 12, 2, &labels, &groups).unwrap();
    let mut sel = SelectionConfig::new(Criterion::ferm(), 0);
    sel.folds = Folds::Stratified { k: 13, seed: 0 };
    assert_eq!(
        select(Estimator::LinearSvm, &s, &grid1(), &sel).unwrap_err(),
        FermError::FewerRowsThanFolds {
            rows: 12,
            folds: 13
        }
    );
}

#[test]
fn error_only_one_group() {
    let x = [0.0, 1.0, 1.0, 0.0, 2.0, 1.0];
    let s = Sample::new(&x, 3, 2, &[1.0, 0.0, 1.0], &[1, 1, 1]).unwrap();
    let want = FermError::OneGroup { present: 1 };
    assert_eq!(LinearFermProjection::fit(&s).unwrap_err(), want);
    let cfg = KernelSvmConfig::new(1.0, Kernel::Rbf { gamma: 1.0 }, true);
    assert_eq!(fit_kernel_svm(&s, &cfg).unwrap_err(), want);
    let e = Sample::new(&x, 3, 2, &[1.0, 0.0, 1.0], &[0, 2, 1]).unwrap_err();
    assert_eq!(e, FermError::GroupOutOfRange { row: 1, found: 2 });
}

#[test]
fn error_row_index_out_of_range() {
    let s = toy(10, 11);
    assert_eq!(
        s.subset(&[0, 10]).unwrap_err(),
        FermError::RowOutOfRange {
            index: 10,
            rows: 10
        }
    );
    assert_eq!(s.subset(&[9, 0]).unwrap().rows(), 2);
}
