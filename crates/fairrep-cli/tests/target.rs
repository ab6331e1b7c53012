//! `penalty.target`: lambda follows the dual step of docs/MATH.md after every epoch (checked
//! against the formula recomputed here from the recorded validation metric), the best epoch is
//! the lowest validation task loss among the epochs meeting the target, a resumed run replays
//! the trajectory exactly, and bad targets are refused with the key.
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::Value;

fn scratch(name: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join("fairrep-target")
        .join(name);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn fairrep(cwd: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_fairrep"))
        .args(args)
        .current_dir(cwd)
        .env("BURN_DEVICE", "flex")
        .env_remove("RUST_LOG")
        .output()
        .expect("the fairrep binary runs")
}

fn quickstart() -> String {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../configs/quickstart.toml")
        .canonicalize()
        .unwrap()
        .to_string_lossy()
        .into_owned()
}

const K: f64 = 0.05;

fn target_args(out: &str) -> Vec<String> {
    [
        "train",
        &quickstart(),
        "--device",
        "flex",
        "--out",
        out,
        "--set",
        "optim.epochs=6",
        "--set",
        "data.synthetic.n_train=1500",
        "--set",
        "penalty.lambda=1.0",
        "--set",
        "penalty.target.value=0.05",
        "--set",
        "penalty.target.step=0.5",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

fn run_dir(out: &Path) -> PathBuf {
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(out)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_dir())
        .collect();
    assert_eq!(dirs.len(), 1);
    dirs.pop().unwrap()
}

fn epochs(run: &Path) -> Vec<Value> {
    std::fs::read_to_string(run.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

#[test]
fn lambda_follows_the_dual_step_and_the_best_epoch_meets_the_target() {
    let dir = scratch("trajectory");
    let args = target_args("full");
    let out = fairrep(&dir, &args.iter().map(String::as_str).collect::<Vec<_>>());
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let summary: Value = serde_json::from_slice(&out.stdout).unwrap();
    let run = run_dir(&dir.join("full"));
    let records = epochs(&run);
    assert_eq!(records.len(), 6);
    let mut lambda = 1.0;
    for r in &records {
        let recorded = r["lambda"].as_f64().unwrap();
        assert!(
            (recorded - lambda).abs() <= 1e-12 * lambda,
            "epoch {}: {recorded} vs {lambda}",
            r["epoch"]
        );
        // The constraint is the largest validation DP gap over the tasks.
        let g = ["task0", "task1", "task2"]
            .iter()
            .map(|t| r["valid"]["tasks"][t]["dp_gap"].as_f64().unwrap())
            .fold(f64::NEG_INFINITY, f64::max);
        assert_eq!(r["constraint"]["value"].as_f64().unwrap(), g);
        assert_eq!(r["constraint"]["met"].as_bool().unwrap(), g <= K);
        // lambda <- lambda exp(step clip((g - k) / k, -1, 1)), in [1e-3, 1e4].
        lambda = (lambda * (0.5 * ((g - K) / K).clamp(-1.0, 1.0)).exp()).clamp(1e-3, 1e4);
    }
    // The best epoch: the lowest validation task loss among those meeting the target (else the
    // lowest gap).
    let met: Vec<&Value> = records
        .iter()
        .filter(|r| r["constraint"]["met"] == true)
        .collect();
    let key = |r: &Value| r["valid"]["task_loss"].as_f64().unwrap();
    let best = if met.is_empty() {
        records
            .iter()
            .min_by(|a, b| {
                a["constraint"]["value"]
                    .as_f64()
                    .unwrap()
                    .total_cmp(&b["constraint"]["value"].as_f64().unwrap())
            })
            .unwrap()
    } else {
        *met.iter().min_by(|a, b| key(a).total_cmp(&key(b))).unwrap()
    };
    assert_eq!(summary["best_epoch"], best["epoch"]);
    assert_eq!(summary["lambda"], best["lambda"]);
    assert_eq!(summary["target_met"].as_bool().unwrap(), !met.is_empty());
    assert!(
        !met.is_empty(),
        "the quickstart reaches a 0.05 gap within 6 epochs"
    );

    // Stopped after epoch 3 and resumed: the same trajectory and the same summary.
    let mut args = target_args("parts");
    args.extend(["--set".into(), "run.stop_after_epoch=3".into()]);
    let out = fairrep(&dir, &args.iter().map(String::as_str).collect::<Vec<_>>());
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let part = run_dir(&dir.join("parts"));
    let out = fairrep(
        &dir,
        &[
            "train",
            "--resume",
            part.to_str().unwrap(),
            "--device",
            "flex",
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let resumed: Value = serde_json::from_slice(&out.stdout).unwrap();
    let again = epochs(&part);
    assert_eq!(again.len(), 6);
    for (a, b) in records.iter().zip(&again) {
        assert_eq!(a["lambda"], b["lambda"], "epoch {}", a["epoch"]);
        assert_eq!(a["constraint"], b["constraint"], "epoch {}", a["epoch"]);
    }
    assert_eq!(resumed["best_epoch"], summary["best_epoch"]);
    assert_eq!(resumed["test"]["tasks"], summary["test"]["tasks"]);
}

#[test]
fn bad_targets_are_refused_with_the_key() {
    let dir = scratch("bad");
    let q = quickstart();
    for (sets, key, wanted) in [
        (
            vec!["penalty.target.value=1.5"],
            "penalty.target.value",
            "in (0, 1]",
        ),
        (
            vec!["penalty.target.value=0.0"],
            "penalty.target.value",
            "in (0, 1]",
        ),
        (
            vec![
                "penalty.target.metric=\"penalty\"",
                "penalty.target.value=-1.0",
            ],
            "penalty.target.value",
            "positive",
        ),
        (
            vec!["penalty.target.step=0.5"],
            "penalty.target.value",
            "is required",
        ),
        (
            vec!["penalty.target.value=0.05", "penalty.kind=\"none\""],
            "penalty.target",
            "penalty.kind",
        ),
        (
            vec!["penalty.target.value=0.05", "penalty.lambda=0.0"],
            "penalty.lambda",
            "starting weight",
        ),
        (
            vec!["penalty.target.value=0.05", "penalty.target.task=\"nope\""],
            "penalty.target",
            "not a binary task",
        ),
    ] {
        let mut args = vec!["train", q.as_str(), "--device", "flex", "--out", "o"];
        for s in &sets {
            args.extend(["--set", s]);
        }
        let out = fairrep(&dir, &args);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{sets:?}: {err}");
        assert!(err.contains(key) && err.contains(wanted), "{sets:?}: {err}");
    }
}
