//! End-to-end tests of the `fairrep` binary: each runs the real executable on a real config
//! and checks its exit status, its messages and the files it writes.
#![allow(clippy::print_stderr)]
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::Value;

#[path = "common/png_check.rs"]
mod png_check;

/// A fresh, empty directory for one test.
fn scratch(name: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join("fairrep-cli")
        .join(name);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Runs `fairrep ARGS` in `cwd` on the CPU.
fn fairrep(cwd: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_fairrep"))
        .args(args)
        .current_dir(cwd)
        // burn loads optimiser state on its default device first: keep it on the CPU.
        .env("BURN_DEVICE", "flex")
        .env_remove("RUST_LOG")
        .env_remove("FAIRREP_DATA_DIR")
        .output()
        .expect("the fairrep binary runs")
}

/// Runs `fairrep ARGS` in `cwd` without `BURN_DEVICE` (as a user would).
fn fairrep_plain(cwd: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_fairrep"))
        .args(args)
        .current_dir(cwd)
        .env_remove("BURN_DEVICE")
        .env_remove("RUST_LOG")
        .env_remove("FAIRREP_DATA_DIR")
        .output()
        .expect("the fairrep binary runs")
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Asserts failure and that stderr contains every needle.
fn assert_fails_with(out: &Output, needles: &[&str]) {
    let err = stderr(out);
    assert!(!out.status.success(), "expected failure, stderr:\n{err}");
    for needle in needles {
        assert!(err.contains(needle), "stderr lacks {needle:?}:\n{err}");
    }
}

fn assert_ok(out: &Output) {
    assert!(out.status.success(), "fairrep failed:\n{}", stderr(out));
}

fn write(path: &Path, text: &str) -> PathBuf {
    std::fs::write(path, text).unwrap();
    path.to_path_buf()
}

/// A small synthetic run: a few hundred rows, a few epochs, dropout on (so the RNG matters).
fn small_config(dir: &Path, penalty: &str, epochs: usize) -> PathBuf {
    write(
        &dir.join("small.toml"),
        &format!(
            r#"
[data]
dataset = "synthetic"
batch_size = 64

[data.synthetic]
n_train = 600
n_valid = 200
n_test = 200
n_features = 8
n_tasks = 2

[model]
encoder_widths = [32]
latent = 8
dropout = 0.2

[penalty]
kind = "{penalty}"
lambda = 0.5

[optim]
lr = 5e-3
epochs = {epochs}
schedule = "cosine"

[run]
seed = 3
checkpoint_every = 1
"#
        ),
    )
}

/// The run directory of a finished run, from its summary on stdout.
fn summary(out: &Output) -> Value {
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "stdout is not the summary JSON ({e}):\n{}\nstderr:\n{}",
            String::from_utf8_lossy(&out.stdout),
            stderr(out)
        )
    })
}

fn only_run_dir(out_dir: &Path) -> PathBuf {
    let dirs: Vec<PathBuf> = std::fs::read_dir(out_dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(dirs.len(), 1, "{dirs:?}");
    dirs[0].clone()
}

#[test]
fn trains_end_to_end_and_writes_its_artifacts() {
    let dir = scratch("end_to_end");
    let config = small_config(&dir, "mmd", 3);
    let out = fairrep(
        &dir,
        &[
            "train",
            config.to_str().unwrap(),
            "--device",
            "flex",
            "--out",
            "out",
        ],
    );
    assert_ok(&out);
    let s = summary(&out);
    for task in ["task0", "task1"] {
        let t = &s["test"]["tasks"][task];
        let acc = t["accuracy"].as_f64().expect("accuracy");
        let dp = t["dp_gap"].as_f64().expect("dp_gap");
        assert!((0.5..=1.0).contains(&acc), "{task} accuracy {acc}");
        assert!((0.0..=1.0).contains(&dp), "{task} dp {dp}");
    }
    assert!(s["test"]["penalty"].as_f64().is_some(), "{s}");
    assert!(s["device"].as_str().unwrap().contains("flex"));
    assert!(s["wall_seconds"].as_f64().unwrap() > 0.0);

    let run = only_run_dir(&dir.join("out"));
    assert_eq!(
        Path::new(s["run_dir"].as_str().unwrap()),
        Path::new("out").join(run.file_name().unwrap())
    );
    for file in [
        "config.toml",
        "metrics.jsonl",
        "summary.json",
        "curves.svg",
        "curves.png",
        "latest",
        "best",
    ] {
        assert!(run.join(file).is_file(), "missing {file}");
    }
    let lines: Vec<Value> = std::fs::read_to_string(run.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 3);
    for (i, line) in lines.iter().enumerate() {
        assert_eq!(line["epoch"].as_u64(), Some(i as u64 + 1));
        assert!(line["train"]["loss"].as_f64().unwrap().is_finite());
        assert!(line["valid"]["tasks"]["task0"]["dp_gap"].as_f64().is_some());
        assert!(line["valid"]["penalty"]["value"].as_f64().is_some());
        assert!(line["lr"].as_f64().unwrap() > 0.0);
    }
    // The saved config is complete and parses back.
    let saved = std::fs::read_to_string(run.join("config.toml")).unwrap();
    assert!(
        saved.contains("n_train = 600") && saved.contains("[penalty.mmd]"),
        "{saved}"
    );
    let latest = std::fs::read_to_string(run.join("latest")).unwrap();
    let ckpt = run.join("checkpoints").join(latest.trim());
    for file in ["model.bpk", "optimizer.bpk", "manifest.json"] {
        assert!(ckpt.join(file).is_file(), "checkpoint lacks {file}");
    }
    let manifest: Value =
        serde_json::from_slice(&std::fs::read(ckpt.join("manifest.json")).unwrap()).unwrap();
    assert_eq!(manifest["epoch"].as_u64(), Some(3));
    assert_eq!(manifest["burn_version"].as_str(), Some("0.22.1"));
    assert!(manifest["schema"]["features"].as_array().unwrap().len() == 8);
    let svg = std::fs::read_to_string(run.join("curves.svg")).unwrap();
    assert!(svg.starts_with("<svg") && svg.contains("valid DP gap"));
    png_check::assert_png_beside(&run.join("curves.svg"), 8);
}

/// `--dump-data DIR` writes the splits the config trains on, prints their description, and
/// trains nothing; epochs record their timing.
#[test]
fn dump_data_writes_the_splits_and_trains_nothing() {
    let dir = scratch("dump-data");
    let config = small_config(&dir, "mmd", 1);
    let config = config.to_str().unwrap();
    let out = fairrep(
        &dir,
        &["train", config, "--out", "runs", "--dump-data", "dump"],
    );
    assert_ok(&out);
    let dump: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(dump["tasks"], serde_json::json!(["task0", "task1"]));
    let rows: Vec<u64> = dump["splits"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["rows"].as_u64().unwrap())
        .collect();
    assert_eq!(rows, [600, 200, 200]);
    for split in ["train", "valid", "test"] {
        for part in ["x", "s", "y"] {
            assert!(dir.join(format!("dump/{split}_{part}.npy")).is_file());
        }
    }
    assert!(dir.join("dump/data.json").is_file() && dir.join("dump/config.toml").is_file());
    assert!(!dir.join("runs").exists(), "--dump-data trains nothing");

    let out = fairrep(
        &dir,
        &["train", config, "--device", "flex", "--out", "runs"],
    );
    assert_ok(&out);
    let run = only_run_dir(&dir.join("runs"));
    let line: Value = serde_json::from_str(
        std::fs::read_to_string(run.join("metrics.jsonl"))
            .unwrap()
            .lines()
            .next()
            .unwrap(),
    )
    .unwrap();
    let timing = &line["timing"];
    for phase in [
        "train",
        "batches",
        "forward",
        "penalty",
        "backward",
        "optimizer",
        "valid",
    ] {
        assert!(timing[phase].as_f64().unwrap() >= 0.0, "{phase}: {timing}");
    }
    let parts: f64 = [
        "batches",
        "forward",
        "penalty",
        "loss_read",
        "backward",
        "optimizer",
    ]
    .iter()
    .map(|k| timing[k].as_f64().unwrap())
    .sum();
    assert!(
        parts <= timing["train"].as_f64().unwrap() + 1e-9,
        "{timing}"
    );
    assert!(timing["train"].as_f64().unwrap() <= line["seconds"].as_f64().unwrap());
}

#[test]
fn resumed_run_matches_an_uninterrupted_one() {
    let dir = scratch("resume");
    let config = small_config(&dir, "mmd", 4);
    let config = config.to_str().unwrap();
    let full = fairrep(
        &dir,
        &["train", config, "--device", "flex", "--out", "full"],
    );
    assert_ok(&full);
    let full = summary(&full);

    let stopped = fairrep(
        &dir,
        &[
            "train",
            config,
            "--device",
            "flex",
            "--out",
            "parts",
            "--set",
            "run.stop_after_epoch=2",
        ],
    );
    assert_ok(&stopped);
    assert!(stopped.stdout.is_empty(), "a stopped run prints no summary");
    let run = only_run_dir(&dir.join("parts"));
    // Simulate a kill after epoch 2: drop a stale line as a crash between the metrics append
    // and the checkpoint would leave.
    let metrics = run.join("metrics.jsonl");
    let mut text = std::fs::read_to_string(&metrics).unwrap();
    text.push_str("{\"epoch\": 3, \"stale\": true}\n");
    std::fs::write(&metrics, text).unwrap();

    let resumed = fairrep(
        &dir,
        &[
            "train",
            config,
            "--device",
            "flex",
            "--resume",
            run.to_str().unwrap(),
        ],
    );
    assert_ok(&resumed);
    assert!(
        stderr(&resumed).contains("resuming"),
        "{}",
        stderr(&resumed)
    );
    let resumed = summary(&resumed);

    assert_eq!(full["best_epoch"], resumed["best_epoch"]);
    for task in ["task0", "task1"] {
        for metric in ["accuracy", "dp_gap", "loss"] {
            let a = full["test"]["tasks"][task][metric].as_f64().unwrap();
            let b = resumed["test"]["tasks"][task][metric].as_f64().unwrap();
            assert!((a - b).abs() <= 1e-4, "{task} {metric}: {a} vs {b}");
        }
    }
    let (a, b) = (
        full["test"]["penalty"].as_f64().unwrap(),
        resumed["test"]["penalty"].as_f64().unwrap(),
    );
    assert!((a - b).abs() <= 1e-4, "penalty {a} vs {b}");
    let lines = std::fs::read_to_string(&metrics).unwrap();
    assert_eq!(lines.lines().count(), 4, "{lines}");
    assert!(!lines.contains("stale"));

    // As a user would, without BURN_DEVICE: burn would load the optimiser state on its default
    // device (wgpu); fairrep runs itself with BURN_DEVICE set to the CPU device instead.
    let stopped = fairrep_plain(
        &dir,
        &[
            "train",
            config,
            "--device",
            "flex",
            "--out",
            "plain",
            "--set",
            "run.stop_after_epoch=2",
        ],
    );
    assert_ok(&stopped);
    let run = only_run_dir(&dir.join("plain"));
    let resumed = fairrep_plain(
        &dir,
        &[
            "train",
            "--device",
            "flex",
            "--resume",
            run.to_str().unwrap(),
        ],
    );
    assert_ok(&resumed);
    let resumed = summary(&resumed);
    assert_eq!(full["best_epoch"], resumed["best_epoch"]);
}

/// The epochs of `metrics.jsonl`.
fn logged_epochs(run: &Path) -> Vec<u64> {
    std::fs::read_to_string(run.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| {
            serde_json::from_str::<Value>(l).unwrap()["epoch"]
                .as_u64()
                .unwrap()
        })
        .collect()
}

/// Files and folders under `dir` whose name marks a temporary of an atomic write.
fn temporaries(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap().flatten() {
        let path = entry.path();
        if entry.file_name().to_string_lossy().contains(".tmp-") {
            out.push(path.clone());
        }
        if path.is_dir() {
            out.extend(temporaries(&path));
        }
    }
    out
}

/// A kill at every rename and every fsync of a training run (checkpoint directories, their
/// files, the `latest` and `best` pointers, the curves, the config), then `--resume`: every
/// resumed run finishes with the uninterrupted run's best epoch and test metrics, `best` names
/// that epoch's checkpoint, `metrics.jsonl` holds each epoch once, nothing temporary is left,
/// and a user's file in `checkpoints/` survives. Needs `strace` (fault injection); without it
/// the test is skipped with a message, unless `FAIRREP_REQUIRE_STRACE=1` (set by `.ci/run`).
#[test]
fn a_kill_at_any_write_step_loses_nothing() {
    let have_strace = Command::new("strace").arg("-V").output().is_ok();
    if !have_strace {
        assert!(
            std::env::var_os("FAIRREP_REQUIRE_STRACE").is_none(),
            "FAIRREP_REQUIRE_STRACE is set but strace is not installed"
        );
        eprintln!("skipped: strace is not installed (fault injection needs it)");
        return;
    }
    let dir = scratch("kills");
    // lr 0.03: the validation objective is not monotone, so `best` lags `latest` at times.
    let config = small_config(&dir, "mmd", 4);
    let config = config.to_str().unwrap();
    let common = ["--device", "flex", "--set", "optim.lr=0.03"];
    let mut args = vec!["train", config, "--out", "full"];
    args.extend(common);
    let full = fairrep(&dir, &args);
    assert_ok(&full);
    let full = summary(&full);
    let mut killed = 0;
    for syscall in ["rename", "fsync"] {
        for when in 1.. {
            let out_dir = format!("{syscall}-{when}");
            let inject = format!("inject={syscall}:signal=KILL:when={when}");
            let mut cmd = Command::new("strace");
            cmd.args(["-f", "-qq", "-o", "/dev/null", "-e"])
                .arg(format!("trace={syscall}"))
                .arg("-e")
                .arg(&inject)
                .arg(env!("CARGO_BIN_EXE_fairrep"))
                .args(["train", config, "--out", &out_dir])
                .args(common)
                .current_dir(&dir)
                .env("BURN_DEVICE", "flex")
                .env_remove("RUST_LOG");
            let out = cmd.output().expect("strace runs");
            if out.status.success() {
                break; // past the last injection point
            }
            killed += 1;
            let runs = dir.join(&out_dir);
            let Ok(mut entries) = std::fs::read_dir(&runs) else {
                continue; // killed before the run directory existed
            };
            let run = entries.next().unwrap().unwrap().path();
            if !run.join("latest").exists() {
                // Killed before the first checkpoint: nothing to resume, and it says so.
                let out = fairrep(&dir, &["train", "--resume", run.to_str().unwrap()]);
                assert_fails_with(&out, &["holds no checkpoint"]);
                continue;
            }
            std::fs::write(run.join("checkpoints").join("NOTES.txt"), "mine").unwrap();
            let out = fairrep(&dir, &["train", "--resume", run.to_str().unwrap()]);
            assert!(
                out.status.success(),
                "{syscall} #{when}: the resume failed:\n{}",
                stderr(&out)
            );
            let resumed = summary(&out);
            assert_eq!(
                resumed["best_epoch"], full["best_epoch"],
                "{syscall} #{when}"
            );
            for task in ["task0", "task1"] {
                let a = full["test"]["tasks"][task]["loss"].as_f64().unwrap();
                let b = resumed["test"]["tasks"][task]["loss"].as_f64().unwrap();
                assert!(
                    (a - b).abs() <= 1e-4,
                    "{syscall} #{when}: {task} {a} vs {b}"
                );
            }
            let best = std::fs::read_to_string(run.join("best")).unwrap();
            let want = format!("epoch-{:04}", full["best_epoch"].as_u64().unwrap());
            assert_eq!(best.trim(), want, "{syscall} #{when}");
            assert_eq!(logged_epochs(&run), vec![1, 2, 3, 4], "{syscall} #{when}");
            assert_eq!(
                temporaries(&run),
                Vec::<PathBuf>::new(),
                "{syscall} #{when}"
            );
            let notes = run.join("checkpoints").join("NOTES.txt");
            assert_eq!(std::fs::read_to_string(notes).unwrap(), "mine");
        }
    }
    assert!(killed >= 20, "only {killed} injection points were hit");
}

/// The central claim on the synthetic data: with the MMD penalty (lambda > 0) the groups'
/// representations are closer (lower test penalty, the MMD between the groups' z) and the
/// heads' decisions fairer (lower test DP gap, on average over tasks) than with lambda = 0,
/// at the same seed, for each of two seeds.
#[test]
fn the_penalty_makes_the_representation_fairer() {
    let dir = scratch("claim");
    let config = small_config(&dir, "mmd", 8);
    let config = config.to_str().unwrap();
    for seed in ["3", "4"] {
        let run = |lambda: &str| {
            let out = fairrep(
                &dir,
                &[
                    "train",
                    config,
                    "--device",
                    "flex",
                    "--seed",
                    seed,
                    "--set",
                    &format!("penalty.lambda={lambda}"),
                    "--set",
                    "model.dropout=0.0",
                ],
            );
            assert_ok(&out);
            let s = summary(&out);
            let dp: f64 = ["task0", "task1"]
                .iter()
                .map(|t| s["test"]["tasks"][t]["dp_gap"].as_f64().unwrap())
                .sum::<f64>()
                / 2.0;
            (s["test"]["penalty"].as_f64().unwrap(), dp)
        };
        let (penalty0, dp0) = run("0");
        let (penalty1, dp1) = run("10");
        assert!(
            penalty1 < 0.5 * penalty0,
            "seed {seed}: test MMD {penalty1} with lambda = 10 vs {penalty0} with lambda = 0"
        );
        assert!(
            dp1 < dp0 - 0.05,
            "seed {seed}: test DP gap {dp1} with lambda = 10 vs {dp0} with lambda = 0"
        );
    }
}

#[test]
fn the_penalty_conditioned_on_positives_trains_and_reports_its_task() {
    let dir = scratch("condition");
    let config = small_config(&dir, "mmd", 2);
    let config = config.to_str().unwrap();
    let out = fairrep(
        &dir,
        &[
            "train",
            config,
            "--device",
            "flex",
            "--set",
            "penalty.condition=positive",
            "--set",
            "penalty.task=task1",
        ],
    );
    assert_ok(&out);
    let s = summary(&out);
    assert_eq!(s["penalty_task"], "task1", "{s}");
    for split in ["valid", "test"] {
        let d = &s[split]["penalty_diagnostics"];
        assert_eq!(d["condition_task"], "task1", "{split}: {d}");
        // Measured on the positives only: fewer points than the split's 200 rows.
        let n = d["n_points"].as_u64().unwrap();
        assert!((2..200).contains(&n), "{split}: {n} points");
        assert!(s[split]["penalty"].as_f64().unwrap().is_finite());
        // The equal-opportunity gap is reported next to the equalised-odds gap, never above it.
        let task = &s[split]["tasks"]["task1"];
        let (eopp, eo) = (
            task["eopp_gap"].as_f64().unwrap(),
            task["eo_gap"].as_f64().unwrap(),
        );
        assert!((0.0..=eo + 1e-12).contains(&eopp), "{split}: {task}");
    }
    // The resolved configuration keeps the keys.
    let run = PathBuf::from(s["run_dir"].as_str().unwrap());
    let saved = std::fs::read_to_string(dir.join(&run).join("config.toml")).unwrap();
    assert!(
        saved.contains("condition = \"positive\"") && saved.contains("task = \"task1\""),
        "{saved}"
    );
    // The same run unconditioned measures the penalty on every row.
    let out = fairrep(&dir, &["train", config, "--device", "flex"]);
    assert_ok(&out);
    let s = summary(&out);
    assert!(s.get("penalty_task").is_none(), "{s}");
    assert_eq!(s["test"]["penalty_diagnostics"]["n_points"], 200);
    assert!(
        s["test"]["penalty_diagnostics"]
            .get("condition_task")
            .is_none()
    );

    // Bad combinations are refused with their key.
    for (sets, needles) in [
        (
            vec!["penalty.condition=positive"],
            vec!["penalty.condition", "penalty.task"],
        ),
        (
            vec!["penalty.condition=positive", "penalty.task=nope"],
            vec!["penalty.task", "`nope` is not a task", "task0, task1"],
        ),
        (
            vec!["penalty.condition=sometimes"],
            vec!["penalty.condition", "positive"],
        ),
        (
            vec![
                "penalty.condition=positive",
                "penalty.task=task0",
                "data.batch_size=3",
            ],
            vec!["data.batch_size", "stratified by group and label"],
        ),
    ] {
        let mut args = vec!["train", config, "--device", "flex"];
        for set in &sets {
            args.extend(["--set", set]);
        }
        assert_fails_with(&fairrep(&dir, &args), &needles);
    }
}

#[test]
fn resume_refuses_a_different_config_or_data() {
    let dir = scratch("resume_mismatch");
    let config = small_config(&dir, "none", 3);
    let config = config.to_str().unwrap();
    let out = fairrep(
        &dir,
        &[
            "train",
            config,
            "--out",
            "runs",
            "--device",
            "flex",
            "--set",
            "run.stop_after_epoch=1",
        ],
    );
    assert_ok(&out);
    let run = only_run_dir(&dir.join("runs"));
    let run = run.to_str().unwrap();

    let out = fairrep(
        &dir,
        &["train", config, "--resume", run, "--set", "optim.lr=0.1"],
    );
    assert_fails_with(
        &out,
        &["cannot resume", "configuration does not match", "optim.lr"],
    );

    // Data: the same config on a checkpoint whose saved schema differs.
    let latest = std::fs::read_to_string(Path::new(run).join("latest")).unwrap();
    let manifest = Path::new(run)
        .join("checkpoints")
        .join(latest.trim())
        .join("manifest.json");
    let mut m: Value = serde_json::from_slice(&std::fs::read(&manifest).unwrap()).unwrap();
    m["schema"]["groups"][0] = Value::String("renamed".into());
    std::fs::write(&manifest, serde_json::to_vec(&m).unwrap()).unwrap();
    // The digest written beside the manifest catches the edit ...
    let out = fairrep(&dir, &["train", "--resume", run]);
    assert_fails_with(&out, &["manifest.json", "was changed after it was written"]);
    // ... and without it (a checkpoint from before the digest existed) the saved schema is
    // compared with the data's.
    std::fs::remove_file(manifest.with_file_name("manifest.sha256")).unwrap();
    let out = fairrep(&dir, &["train", "--resume", run]);
    assert_fails_with(&out, &["cannot resume", "data does not match", "renamed"]);

    let out = fairrep(
        &dir,
        &["train", "--resume", dir.join("nothing").to_str().unwrap()],
    );
    assert_fails_with(&out, &["config.toml"]);
}

#[test]
fn malformed_toml_names_file_line_and_column() {
    let dir = scratch("malformed");
    let path = write(
        &dir.join("bad.toml"),
        "[data]\nbatch_size = 64\n[optim]\nlr = = 0.1\n",
    );
    let out = fairrep(&dir, &["train", path.to_str().unwrap()]);
    assert_fails_with(&out, &["bad.toml", "malformed TOML", "line 4, column"]);
}

#[test]
fn unknown_key_is_named_with_its_table_and_file() {
    let dir = scratch("unknown_key");
    let path = write(&dir.join("typo.toml"), "[optim]\nlearning_rate = 0.1\n");
    let out = fairrep(&dir, &["train", path.to_str().unwrap()]);
    assert_fails_with(
        &out,
        &["typo.toml", "unknown key `optim.learning_rate`", "`lr`"],
    );
}

#[test]
fn set_of_a_missing_key_lists_the_valid_ones() {
    let dir = scratch("set_unknown");
    let config = small_config(&dir, "none", 1);
    let out = fairrep(
        &dir,
        &[
            "train",
            config.to_str().unwrap(),
            "--set",
            "penalty.lamda=0.1",
        ],
    );
    assert_fails_with(
        &out,
        &["penalty.lamda", "no such key", "`lambda`", "`kind`"],
    );
    let out = fairrep(
        &dir,
        &[
            "train",
            config.to_str().unwrap(),
            "--set",
            "optim.epochs=many",
        ],
    );
    assert_fails_with(&out, &["optim.epochs"]);
    let out = fairrep(
        &dir,
        &["train", config.to_str().unwrap(), "--set", "nonsense"],
    );
    assert_fails_with(&out, &["KEY=VALUE"]);
}

#[test]
fn invalid_values_are_rejected_with_their_key() {
    let dir = scratch("invalid_values");
    let config = small_config(&dir, "none", 1);
    let config = config.to_str().unwrap();
    let out = fairrep(&dir, &["train", config, "--set", "model.dropout=1.5"]);
    assert_fails_with(&out, &["model.dropout", "[0, 1)"]);
    let out = fairrep(&dir, &["train", config, "--set", "penalty.kind=sinkhorn"]);
    assert_fails_with(&out, &["penalty.sinkhorn", "blur"]);
    let out = fairrep(
        &dir,
        &["train", config, "--set", "penalty.mmd.bandwidths=\"mean\""],
    );
    assert_fails_with(&out, &["penalty.mmd.bandwidths", "median"]);
    // A temperature beyond float32's range is refused before training, naming the key.
    let out = fairrep(
        &dir,
        &[
            "train",
            config,
            "--set",
            "penalty.kind=sinkhorn",
            "--set",
            "penalty.sinkhorn.blur=1e30",
        ],
    );
    assert_fails_with(&out, &["penalty.sinkhorn.blur", "float32", "1e60"]);
    // Sizes too large for memory name the key that makes them so.
    let out = fairrep(
        &dir,
        &["train", config, "--set", "model.latent=1000000000000"],
    );
    assert_fails_with(&out, &["model.latent", "1000000000000", "memory"]);
    let out = fairrep(
        &dir,
        &[
            "train",
            config,
            "--set",
            "data.synthetic.n_features=1000000000000",
        ],
    );
    assert_fails_with(&out, &["n_features", "1000000000000", "memory"]);
    let out = fairrep(
        &dir,
        &["train", config, "--set", "data.held_out_tasks=[\"task9\"]"],
    );
    assert_fails_with(&out, &["data.held_out_tasks", "task9"]);
}

/// A tiny CSV dataset with a spec: 60 rows, two groups, one binary task.
fn tiny_dataset(
    dir: &Path,
    edit_csv: impl Fn(usize, String) -> String,
    spec_extra: &str,
) -> PathBuf {
    let mut csv = String::from("age,hours,job,sex,label\n");
    for i in 0..60 {
        let row = format!(
            "{},{},{},{},{}",
            20 + i % 40,
            30 + (i * 7) % 20,
            ["a", "b", "c"][i % 3],
            if i % 2 == 0 { "F" } else { "M" },
            u8::from(i % 3 == 0)
        );
        csv.push_str(&edit_csv(i, row));
        csv.push('\n');
    }
    std::fs::write(dir.join("tiny.csv"), csv).unwrap();
    let spec = format!(
        r#"
name = "tiny"

[files]
train = {{ path = "tiny.csv" }}

[inputs]
numeric = ["age", "hours"]
categorical = ["job"]

[sensitive]
column = "sex"
groups = [{{ name = "F", values = ["F"] }}, {{ name = "M", values = ["M"] }}{spec_extra}]

[[tasks]]
name = "y"
column = "label"
op = "=="
value = 1

[split]
kind = "random"
"#
    );
    let spec_path = write(&dir.join("tiny-spec.toml"), &spec);
    write(
        &dir.join("tiny.toml"),
        &format!(
            "[data]\ndataset = \"{}\"\nbatch_size = 16\n[model]\nencoder_widths = [8]\nlatent = \
             4\n[optim]\nepochs = 2\n[run]\ndevice = \"flex\"\n",
            spec_path.display()
        ),
    )
}

#[test]
fn trains_on_a_csv_dataset_from_a_spec() {
    let dir = scratch("csv_ok");
    let config = tiny_dataset(&dir, |_, row| row, "");
    let out = fairrep(
        &dir,
        &[
            "train",
            config.to_str().unwrap(),
            "--data-dir",
            dir.to_str().unwrap(),
        ],
    );
    assert_ok(&out);
    let s = summary(&out);
    assert!(
        s["test"]["tasks"]["y"]["accuracy"].as_f64().is_some(),
        "{s}"
    );
    assert_eq!(s["dataset"].as_str(), Some("tiny"));
}

#[test]
fn bad_data_is_reported_with_its_location() {
    let dir = scratch("csv_bad");
    let data_dir = dir.to_str().unwrap().to_string();
    let run = |config: &Path| {
        fairrep(
            &dir,
            &["train", config.to_str().unwrap(), "--data-dir", &data_dir],
        )
    };

    // A column the spec needs is missing.
    let config = tiny_dataset(&dir, |_, row| row, "");
    let text = std::fs::read_to_string(dir.join("tiny.csv")).unwrap();
    std::fs::write(
        dir.join("tiny.csv"),
        text.replacen("age,hours", "years,hours", 1),
    )
    .unwrap();
    let out = run(&config);
    assert_fails_with(&out, &["tiny", "missing column `age`"]);

    // A non-numeric cell in a numeric column.
    let config = tiny_dataset(
        &dir,
        |i, row| {
            if i == 7 {
                row.replacen("27,", "old,", 1)
            } else {
                row
            }
        },
        "",
    );
    let out = run(&config);
    assert_fails_with(&out, &["tiny.csv", "line 9", "age", "old"]);

    // A NaN cell.
    let config = tiny_dataset(
        &dir,
        |i, row| {
            if i == 4 {
                row.replacen("24,", "NaN,", 1)
            } else {
                row
            }
        },
        "",
    );
    let out = run(&config);
    assert_fails_with(&out, &["tiny.csv", "line 6", "NaN"]);

    // A group with no members.
    let config = tiny_dataset(&dir, |_, row| row, r#", { name = "X", values = ["X"] }"#);
    let out = run(&config);
    assert_fails_with(&out, &["tiny", "group `X` has no rows"]);

    // A file with only its header, and filters that keep no row: the file is named.
    let config = tiny_dataset(&dir, |_, row| row, "");
    let text = std::fs::read_to_string(dir.join("tiny.csv")).unwrap();
    let header = text.lines().next().unwrap().to_string();
    std::fs::write(dir.join("tiny.csv"), format!("{header}\n")).unwrap();
    assert_fails_with(&run(&config), &["tiny.csv", "no data rows"]);
    std::fs::write(dir.join("tiny.csv"), &text).unwrap();
    let spec = std::fs::read_to_string(dir.join("tiny-spec.toml")).unwrap();
    std::fs::write(
        dir.join("tiny-spec.toml"),
        format!("{spec}\n[[filters]]\ncolumn = \"age\"\nop = \">\"\nvalue = 1e9\n"),
    )
    .unwrap();
    assert_fails_with(
        &run(&config),
        &["tiny-spec.toml", "keep none of the", "tiny.csv"],
    );

    // No data directory at all.
    let out = fairrep(&dir, &["train", config.to_str().unwrap()]);
    assert_fails_with(&out, &["--data-dir", "FAIRREP_DATA_DIR"]);
}

#[test]
fn unknown_dataset_and_missing_config_fail_clearly() {
    let dir = scratch("missing");
    let out = fairrep(&dir, &["train", "nope.toml"]);
    assert_fails_with(&out, &["nope.toml"]);
    let config = write(
        &dir.join("c.toml"),
        "[data]\ndataset = \"no_such_dataset\"\n",
    );
    let out = fairrep(
        &dir,
        &["train", config.to_str().unwrap(), "--data-dir", "."],
    );
    assert_fails_with(&out, &["no_such_dataset"]);
}

// ---------------------------------------------------------------------------------------------
// `fairrep divergence`

/// The fixtures of `crates/fairrep-loss/tests/fixtures` (written by
/// `scripts/fixtures/make_fixtures.py` from OTT-JAX, POT and numpy).
fn loss_fixture(name: &str) -> Vec<Value> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../fairrep-loss/tests/fixtures")
        .join(name);
    let file = std::fs::File::open(&path).unwrap();
    let mut text = String::new();
    std::io::Read::read_to_string(&mut flate2::read::GzDecoder::new(file), &mut text).unwrap();
    let doc: Value = serde_json::from_str(&text).unwrap();
    doc["cases"].as_array().unwrap().clone()
}

/// Writes a JSON matrix (or vector) as a headerless CSV with round-trip precision.
fn write_csv(path: &Path, value: &Value) -> String {
    let rows: Vec<String> = value
        .as_array()
        .unwrap()
        .iter()
        .map(|r| match r.as_array() {
            Some(cells) => cells
                .iter()
                .map(|c| format!("{:?}", c.as_f64().unwrap()))
                .collect::<Vec<_>>()
                .join(","),
            None => format!("{:?}", r.as_f64().unwrap()),
        })
        .collect();
    std::fs::write(path, rows.join("\n") + "\n").unwrap();
    path.to_string_lossy().into_owned()
}

fn stdout_json(out: &Output) -> Value {
    assert_ok(out);
    serde_json::from_str(String::from_utf8_lossy(&out.stdout).trim()).expect("one JSON object")
}

#[test]
fn divergence_command_reproduces_the_reference_fixtures() {
    let dir = scratch("divergence-fixtures");
    let sinkhorn = loss_fixture("sinkhorn.json.gz");
    for name in [
        "n20_m30_d3_eps0.1_weights",
        "n25_m20_d2_eps0.1_zero_weights",
        "n64_m64_d8_eps1_normal",
    ] {
        let case = sinkhorn.iter().find(|c| c["name"] == name).expect(name);
        let (x, y) = (
            write_csv(&dir.join("x.csv"), &case["x"]),
            write_csv(&dir.join("y.csv"), &case["y"]),
        );
        let (a, b) = (
            write_csv(&dir.join("a.csv"), &case["a"]),
            write_csv(&dir.join("b.csv"), &case["b"]),
        );
        let eps = case["eps"].as_f64().unwrap().to_string();
        let out = fairrep(
            &dir,
            &[
                "divergence",
                "--x",
                &x,
                "--y",
                &y,
                "--a",
                &a,
                "--b",
                &b,
                "--kind",
                "sinkhorn",
                "--eps",
                &eps,
                "--tolerance",
                "1e-11",
                "--max-iters",
                "50000",
                "--f64",
                "--grad",
                "--device",
                "flex",
            ],
        );
        let got = stdout_json(&out);
        assert_eq!(got["converged"], true, "{name}: {got}");
        let (v, want) = (
            got["value"].as_f64().unwrap(),
            case["value"].as_f64().unwrap(),
        );
        assert!(
            (v - want).abs() <= 1e-9 * want.abs(),
            "{name}: value {v:e} vs {want:e}"
        );
        let g: Vec<f64> = got["grad_x"]
            .as_array()
            .unwrap()
            .iter()
            .flat_map(|r| r.as_array().unwrap().iter().map(|c| c.as_f64().unwrap()))
            .collect();
        let w: Vec<f64> = case["grad_x"]
            .as_array()
            .unwrap()
            .iter()
            .flat_map(|r| r.as_array().unwrap().iter().map(|c| c.as_f64().unwrap()))
            .collect();
        let scale = w.iter().fold(0.0f64, |m, v| m.max(v.abs()));
        let err = g
            .iter()
            .zip(&w)
            .map(|(p, q)| (p - q).abs())
            .fold(0.0, f64::max)
            / scale;
        assert!(err <= 1e-8, "{name}: grad_x rel {err:e}");
    }
    let mmd = loss_fixture("mmd.json.gz");
    let case = mmd
        .iter()
        .find(|c| c["estimator"] == "unbiased" && c["bandwidths"] == "median")
        .expect("an unbiased median case");
    let (x, y) = (
        write_csv(&dir.join("x.csv"), &case["x"]),
        write_csv(&dir.join("y.csv"), &case["y"]),
    );
    let (a, b) = (
        write_csv(&dir.join("a.csv"), &case["a"]),
        write_csv(&dir.join("b.csv"), &case["b"]),
    );
    let out = fairrep(
        &dir,
        &[
            "divergence",
            "--x",
            &x,
            "--y",
            &y,
            "--a",
            &a,
            "--b",
            &b,
            "--kind",
            "mmd",
            "--bandwidth",
            "median",
            "--estimator",
            "unbiased",
            "--f64",
            "--device",
            "flex",
        ],
    );
    let got = stdout_json(&out);
    let (v, want) = (
        got["value"].as_f64().unwrap(),
        case["value"].as_f64().unwrap(),
    );
    assert!(
        (v - want).abs() <= 1e-9 * want.abs().max(1e-3),
        "MMD {v:e} vs {want:e}"
    );
}

#[test]
fn divergence_command_rejects_bad_files() {
    let dir = scratch("divergence-bad");
    let good = write(&dir.join("good.csv"), "0,0\n1,1\n2,0\n");
    let good = good.to_str().unwrap();
    let run = |x: &str, y: &str, extra: &[&str]| {
        let mut args = vec![
            "divergence",
            "--x",
            x,
            "--y",
            y,
            "--kind",
            "sinkhorn",
            "--eps",
            "0.1",
            "--device",
            "flex",
        ];
        args.extend_from_slice(extra);
        fairrep(&dir, &args)
    };
    let ragged = write(&dir.join("ragged.csv"), "0,0\n1\n");
    assert_fails_with(
        &run(ragged.to_str().unwrap(), good, &[]),
        &["ragged.csv", "row 2 has 1 values, expected 2"],
    );
    let nan = write(&dir.join("nan.csv"), "0,0\nNaN,1\n");
    assert_fails_with(
        &run(nan.to_str().unwrap(), good, &[]),
        &["nan.csv", "row 2, column 1", "not finite"],
    );
    let d3 = write(&dir.join("d3.csv"), "0,0,0\n1,1,1\n");
    assert_fails_with(
        &run(d3.to_str().unwrap(), good, &[]),
        &["dimension mismatch", "d3.csv", "3"],
    );
    let neg = write(&dir.join("neg.csv"), "0.5\n-0.1\n0.6\n");
    assert_fails_with(
        &run(good, good, &["--a", neg.to_str().unwrap()]),
        &["neg.csv", "weight 2 is negative"],
    );
    let zero = write(&dir.join("zero.csv"), "0\n0\n0\n");
    assert_fails_with(
        &run(good, good, &["--b", zero.to_str().unwrap()]),
        &["zero.csv", "all zero"],
    );
    let short = write(&dir.join("short.csv"), "0.5\n0.5\n");
    assert_fails_with(
        &run(good, good, &["--a", short.to_str().unwrap()]),
        &["short.csv", "2 weights", "3 points"],
    );
    // Solver settings out of range name the flag.
    assert_fails_with(
        &run(good, good, &["--max-iters", "0"]),
        &["--max-iters", "at least 1"],
    );
    assert_fails_with(
        &run(good, good, &["--check-every", "0"]),
        &["--check-every", "at least 1"],
    );
}

/// Trains the small synthetic config with `task1` held out; returns the run directory.
fn train_held_out(dir: &Path, name: &str, lambda: f64, extra: &[&str]) -> PathBuf {
    let config = small_config(dir, "mmd", 3);
    let out_dir = dir.join(name);
    let lambda = format!("penalty.lambda={lambda}");
    let mut args = vec![
        "train",
        config.to_str().unwrap(),
        "--device",
        "flex",
        "--out",
        out_dir.to_str().unwrap(),
        "--set",
        "data.held_out_tasks=[\"task1\"]",
        "--set",
        &lambda,
    ];
    args.extend_from_slice(extra);
    let out = fairrep(dir, &args);
    assert_ok(&out);
    only_run_dir(&out_dir)
}

/// Runs `fairrep transfer --from RUN CONFIG EXTRA... --device flex` in `dir`.
fn transfer_cmd(dir: &Path, run: &Path, config: &Path, extra: &[&str]) -> Output {
    let mut args = vec![
        "transfer",
        "--from",
        run.to_str().unwrap(),
        config.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    args.extend_from_slice(&["--device", "flex"]);
    fairrep(dir, &args)
}

fn transfer_config(dir: &Path, body: &str) -> PathBuf {
    write(&dir.join("transfer.toml"), body)
}

fn read_json(path: &Path) -> Value {
    let text = std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    serde_json::from_str(&text).unwrap()
}

/// The shape in a `.npy` header and its dtype string.
fn npy_header(path: &Path) -> String {
    let bytes = std::fs::read(path).unwrap();
    assert_eq!(&bytes[..8], b"\x93NUMPY\x01\x00", "{}", path.display());
    let len = u16::from_le_bytes([bytes[8], bytes[9]]) as usize;
    String::from_utf8_lossy(&bytes[10..10 + len]).into_owned()
}

#[test]
fn transfer_eval_and_export_end_to_end() {
    let dir = scratch("transfer_e2e");
    let fair = train_held_out(&dir, "fair", 5.0, &[]);
    let base = train_held_out(&dir, "base", 0.0, &[]);
    let manifest = read_json(&fair.join("summary.json"));
    assert!(
        manifest["test"]["tasks"].get("task1").is_none(),
        "a held-out task is not trained on: {manifest}"
    );
    let config = transfer_config(
        &dir,
        "[data]\ntasks = [\"task1\"]\n[fit]\nepochs = 5\n[bounds]\nmax_points = 300\n",
    );
    let out = transfer_cmd(
        &dir,
        &fair,
        &config,
        &["--baseline", base.to_str().unwrap()],
    );
    assert_ok(&out);
    let table = String::from_utf8_lossy(&out.stdout);
    for needle in ["task task1", "mmd λ=5", "λ=0", "raw inputs", "L·W1 bound"] {
        assert!(table.contains(needle), "table lacks {needle:?}:\n{table}");
    }
    let report = read_json(&fair.join("transfer.json"));
    let svg = std::fs::read_to_string(fair.join("transfer.svg")).unwrap();
    assert!(svg.starts_with("<svg") && svg.contains("task1: accuracy vs DP gap (mlp)"));
    png_check::assert_png_beside(&fair.join("transfer.svg"), 8);
    let cells = report["cells"].as_array().unwrap();
    assert_eq!(cells.len(), 6, "3 representations x 2 heads x 1 task");
    for cell in cells {
        let run = &cell["runs"][0];
        let gap = run["score_gap"].as_f64().unwrap();
        let w1_bound = run["w1_bound"].as_f64().unwrap();
        // MATH.md: |E[q|s=0] - E[q|s=1]| <= Lip(q) W1(z|s=0, z|s=1). The bound is computed on
        // at most 300 rows per group, the gap on all; allow a small sampling slack.
        assert!(gap <= w1_bound * 1.1 + 0.02, "bound violated: {cell}");
        let acc = run["accuracy"].as_f64().unwrap();
        assert!((0.5..=1.0).contains(&acc), "{cell}");
        assert!(run["mmd_bound"]["mmd"].as_f64().unwrap() >= 0.0);
    }
    assert_eq!(report["tasks"], serde_json::json!(["task1"]));
    assert_eq!(report["split"].as_str(), Some("test"));
    // Scoring on validation (to choose lambda without the test split).
    let valid_out = dir.join("transfer-valid.json");
    let out = transfer_cmd(
        &dir,
        &fair,
        &config,
        &["--split", "valid", "--out", valid_out.to_str().unwrap()],
    );
    assert_ok(&out);
    assert!(String::from_utf8_lossy(&out.stdout).contains("valid split"));
    let valid = read_json(&valid_out);
    assert_eq!(valid["split"].as_str(), Some("valid"));
    // Same heads (same validation loss), other rows scored.
    let (v, t) = (&valid["cells"][0]["runs"][0], &cells[0]["runs"][0]);
    assert_eq!(v["valid_loss"], t["valid_loss"]);
    assert_ne!(v["score_gap"], t["score_gap"]);
    assert!(report["leaking_tasks"].as_array().unwrap().is_empty());

    // eval over two runs: a summary with intervals, leakage with p-values.
    let eval_out = dir.join("eval.json");
    let out = fairrep(
        &dir,
        &[
            "eval",
            "--from",
            fair.to_str().unwrap(),
            base.to_str().unwrap(),
            "--device",
            "flex",
            "--permutations",
            "19",
            "--sinkhorn-permutations",
            "4",
            "--max-points",
            "200",
            "--out",
            eval_out.to_str().unwrap(),
        ],
    );
    assert_ok(&out);
    let report = read_json(&eval_out);
    assert_eq!(report["runs"].as_array().unwrap().len(), 2);
    for key in [
        "task0.accuracy",
        "task0.dp_gap",
        "task0.eo_gap",
        "task0.ks",
        "task0.abpc",
        "leakage.logistic_auc",
        "leakage.mlp_auc",
        "leakage.mmd2",
        "leakage.sinkhorn_p",
    ] {
        let s = &report["summary"][key];
        assert_eq!(s["n"].as_u64(), Some(2), "{key}: {s}");
        assert!(s["ci95"].as_f64().unwrap() >= 0.0, "{key}: {s}");
    }
    for run in report["runs"].as_array().unwrap() {
        let p = run["leakage"]["mmd2"]["p_value"].as_f64().unwrap();
        assert!(p > 0.0 && p <= 1.0 && (p * 20.0 - (p * 20.0).round()).abs() < 1e-9);
        let auc = run["leakage"]["logistic_auc"]["auc"].as_f64().unwrap();
        assert!((0.0..=1.0).contains(&auc));
    }
    // Without a penalty the groups stay apart in z (the synthetic inputs shift with s).
    let base_p = report["runs"][1]["leakage"]["mmd2"]["p_value"]
        .as_f64()
        .unwrap();
    assert!(base_p <= 0.05 + 1e-12, "{report}");

    // Without permutations there is no test: the statistic, and no p-value.
    let out = fairrep(
        &dir,
        &[
            "eval",
            "--from",
            fair.to_str().unwrap(),
            "--device",
            "flex",
            "--permutations",
            "0",
            "--sinkhorn-permutations",
            "0",
            "--max-points",
            "200",
        ],
    );
    assert_ok(&out);
    let report = read_json(&fair.join("eval.json"));
    let leakage = &report["runs"][0]["leakage"];
    assert!(leakage["mmd2"]["p_value"].is_null(), "{leakage}");
    assert!(leakage["sinkhorn"]["p_value"].is_null(), "{leakage}");
    assert!(leakage["mmd2"]["value"].as_f64().unwrap() >= 0.0);

    // export: z, s and labels as .npy beside a sidecar.
    let z = dir.join("export").join("z.npy");
    let out = fairrep(
        &dir,
        &[
            "export",
            "--from",
            fair.to_str().unwrap(),
            "--out",
            z.to_str().unwrap(),
            "--device",
            "flex",
        ],
    );
    assert_ok(&out);
    assert!(npy_header(&z).contains("'descr': '<f4'") && npy_header(&z).contains("(200, 8)"));
    let s = npy_header(&dir.join("export").join("z_s.npy"));
    assert!(s.contains("'<i8'") && s.contains("(200,)"), "{s}");
    let labels = npy_header(&dir.join("export").join("z_labels.npy"));
    assert!(labels.contains("(200, 1)"), "{labels}");
    let sidecar = read_json(&dir.join("export").join("z.json"));
    assert_eq!(sidecar["rows"].as_u64(), Some(200));
    assert_eq!(sidecar["tasks"], serde_json::json!(["task0"]));
    assert_eq!(sidecar["split"].as_str(), Some("test"));
}

#[test]
fn transfer_eval_and_export_reject_bad_input() {
    let dir = scratch("transfer_bad");
    let fair = train_held_out(&dir, "fair", 1.0, &[]);
    let fair_s = fair.to_str().unwrap();
    let run = |config: &Path, extra: &[&str]| transfer_cmd(&dir, &fair, config, extra);
    // Config errors name the file and the key.
    let c = transfer_config(&dir, "[data]\ntasks = [\"task1\"]\n[fit]\nepoch = 3\n");
    assert_fails_with(&run(&c, &[]), &["unknown key `fit.epoch`", "transfer.toml"]);
    let c = transfer_config(&dir, "[data]\ntasks = []\n");
    assert_fails_with(&run(&c, &[]), &["data.tasks", "at least one novel task"]);
    let c = transfer_config(&dir, "[data]\ntasks = [\"task1\"\n");
    assert_fails_with(&run(&c, &[]), &["malformed TOML", "transfer.toml", "line"]);
    let c = transfer_config(&dir, "[data]\ntasks = [\"task9\"]\n");
    assert_fails_with(&run(&c, &[]), &["task9", "task0, task1"]);
    let c = transfer_config(&dir, "[data]\ntasks = [\"task1\"]\n[fit]\nlr = -1\n");
    assert_fails_with(&run(&c, &[]), &["fit.lr", "must be positive"]);
    let good = transfer_config(&dir, "[data]\ntasks = [\"task1\"]\n[fit]\nepochs = 2\n");
    // Not a run directory.
    assert_fails_with(
        &run(&good, &["--baseline", dir.to_str().unwrap()]),
        &["is not a run directory"],
    );
    // A comparison encoder with other inputs (6 features instead of 8).
    let other = train_held_out(
        &dir,
        "other",
        0.0,
        &["--set", "data.synthetic.n_features=6"],
    );
    assert_fails_with(
        &run(&good, &["--baseline", other.to_str().unwrap()]),
        &["does not read the same inputs"],
    );
    // Data whose inputs are not the encoder's: a CSV dataset without its columns.
    let tiny = tiny_dataset(&dir, |_, row| row, "");
    let spec = dir.join("tiny-spec.toml");
    let _ = tiny;
    let c = transfer_config(
        &dir,
        &format!(
            "[data]\ntasks = [\"y\"]\ndataset = \"{}\"\n",
            spec.display()
        ),
    );
    assert_fails_with(
        &run(&c, &["--data-dir", dir.to_str().unwrap()]),
        &["missing column `x0`", "tiny.csv"],
    );
    // A held-out task that is also trained on.
    let config = small_config(&dir, "mmd", 1);
    let out = fairrep(
        &dir,
        &[
            "train",
            config.to_str().unwrap(),
            "--set",
            "data.held_out_tasks=[\"task1\"]",
            "--set",
            "data.tasks=[\"task0\", \"task1\"]",
        ],
    );
    assert_fails_with(&out, &["task `task1`", "held_out_tasks"]);

    // eval: runs of different tasks, a missing run, bad flags.
    let all_tasks = dir.join("all");
    let config = small_config(&dir, "mmd", 1);
    let out = fairrep(
        &dir,
        &[
            "train",
            config.to_str().unwrap(),
            "--device",
            "flex",
            "--out",
            all_tasks.to_str().unwrap(),
        ],
    );
    assert_ok(&out);
    let all = only_run_dir(&all_tasks);
    let eval = |extra: &[&str]| {
        let mut args = vec!["eval", "--device", "flex"];
        args.extend_from_slice(extra);
        fairrep(&dir, &args)
    };
    assert_fails_with(
        &eval(&[
            "--from",
            fair_s,
            all.to_str().unwrap(),
            "--permutations",
            "1",
        ]),
        &["do not share their tasks"],
    );
    assert_fails_with(
        &eval(&["--from", dir.join("nope").to_str().unwrap()]),
        &["is not a run directory"],
    );
    assert_fails_with(
        &eval(&["--from", fair_s, "--max-points", "1"]),
        &["--max-points must be at least 4"],
    );
    // export: the output must be a .npy path.
    let out = fairrep(
        &dir,
        &[
            "export", "--from", fair_s, "--out", "z.csv", "--device", "flex",
        ],
    );
    assert_fails_with(&out, &["expected a file name ending in .npy"]);
}

#[test]
fn transfer_flags_a_task_whose_label_is_an_encoder_input() {
    // `hours` is an input of the encoder trained on `y`; transferring to `long_hours` (defined
    // on `hours`) is reported as leaking.
    let dir = scratch("transfer_leak");
    let config = tiny_dataset(&dir, |_, row| row, "");
    let spec = dir.join("tiny-spec.toml");
    let text = std::fs::read_to_string(&spec).unwrap()
        + "\n[[tasks]]\nname = \"long_hours\"\ncolumn = \"hours\"\nop = \">\"\nvalue = 40\n";
    std::fs::write(&spec, text).unwrap();
    let out_dir = dir.join("runs");
    let out = fairrep(
        &dir,
        &[
            "train",
            config.to_str().unwrap(),
            "--data-dir",
            dir.to_str().unwrap(),
            "--set",
            "data.tasks=[\"y\"]",
            "--out",
            out_dir.to_str().unwrap(),
        ],
    );
    assert_ok(&out);
    let run = only_run_dir(&out_dir);
    let c = transfer_config(
        &dir,
        "[data]\ntasks = [\"long_hours\"]\n[heads]\nkinds = [\"linear\"]\n[compare]\nraw = false\n",
    );
    let out = transfer_cmd(&dir, &run, &c, &["--data-dir", dir.to_str().unwrap()]);
    assert_ok(&out);
    let report = read_json(&run.join("transfer.json"));
    assert_eq!(report["leaking_tasks"], serde_json::json!(["long_hours"]));
    assert!(String::from_utf8_lossy(&out.stdout).contains("warning: the labels of long_hours"));
}

/// A FERM config on the tiny CSV dataset (its spec in `dir`), 3 folds, every comparison.
fn tiny_ferm_config(dir: &Path, extra: &str) -> PathBuf {
    let _ = tiny_dataset(dir, |_, row| row, "");
    ferm_config_on(dir, &dir.join("tiny-spec.toml"), "y", extra)
}

fn ferm_config_on(dir: &Path, spec: &Path, task: &str, extra: &str) -> PathBuf {
    write(
        &dir.join("ferm.toml"),
        &format!(
            "[data]\ndataset = \"{}\"\ntask = \"{task}\"\n[models]\ncompare = [\"linear\", \
             \"logistic\", \"rbf\", \"linear_kernel\"]\n[selection]\nfolds = 3\n[run]\nout_dir \
             = \"out\"\n{extra}",
            spec.display()
        ),
    )
}

// ---------------------------------------------------------------------------------------------
// `fairrep postprocess`
// ---------------------------------------------------------------------------------------------

/// A deterministic pseudo-random number in [0, 1) (splitmix64 of `i`).
fn unit(i: u64) -> f64 {
    let mut z = i.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    ((z ^ (z >> 31)) >> 11) as f64 / (1u64 << 53) as f64
}

/// A small regression dataset with a spec: 2000 rows, groups F / M; the input `x` is shifted by
/// the group, the target `score = 2 x + noise` follows it (so an unconstrained head is unfair),
/// and a binary task `high` (score > 1). Returns the training config.
fn regression_dataset(dir: &Path) -> PathBuf {
    let mut csv = String::from("x,z,sex,score\n");
    for i in 0..2000u64 {
        let male = i % 2 == 1;
        let x = unit(3 * i) + if male { 1.0 } else { 0.0 };
        let z = unit(3 * i + 1);
        let y = 2.0 * x + 0.3 * (unit(3 * i + 2) - 0.5);
        csv.push_str(&format!("{x},{z},{},{y}\n", if male { "M" } else { "F" }));
    }
    std::fs::write(dir.join("reg.csv"), csv).unwrap();
    let spec = r#"
name = "reg"

[files]
train = { path = "reg.csv" }

[inputs]
numeric = ["x", "z"]

[sensitive]
column = "sex"
groups = [{ name = "F", values = ["F"] }, { name = "M", values = ["M"] }]

[[tasks]]
name = "score"
column = "score"
kind = "regression"

[[tasks]]
name = "high"
column = "score"
op = ">"
value = 2

[split]
kind = "random"
fractions = { train = 0.5, valid = 0.25, test = 0.25 }
"#;
    let spec_path = write(&dir.join("reg-spec.toml"), spec);
    write(
        &dir.join("reg.toml"),
        &format!(
            "[data]\ndataset = \"{}\"\nbatch_size = 32\n[model]\nencoder_widths = [16]\nlatent = \
             4\n[optim]\nlr = 1e-2\nepochs = 15\n[run]\ndevice = \"flex\"\n",
            spec_path.display()
        ),
    )
}

fn ferm_cmd(dir: &Path, config: &Path, extra: &[&str]) -> Output {
    let mut args = vec![
        "ferm",
        config.to_str().unwrap(),
        "--data-dir",
        dir.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    fairrep(dir, &args)
}

/// The float32 values of a `.npy` file written by `fairrep export`.
fn npy_f32(path: &Path) -> Vec<f32> {
    let bytes = std::fs::read(path).unwrap();
    let len = u16::from_le_bytes([bytes[8], bytes[9]]) as usize;
    bytes[10 + len..]
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect()
}

fn npy_i64(path: &Path) -> Vec<i64> {
    let bytes = std::fs::read(path).unwrap();
    let len = u16::from_le_bytes([bytes[8], bytes[9]]) as usize;
    bytes[10 + len..]
        .chunks_exact(8)
        .map(|c| i64::from_le_bytes(c.try_into().unwrap()))
        .collect()
}

#[test]
fn ferm_runs_on_a_csv_dataset_and_writes_its_run_directory() {
    let dir = scratch("ferm_csv");
    let config = tiny_ferm_config(&dir, "seeds = [4, 5]\n");
    let out = ferm_cmd(&dir, &config, &[]);
    assert_ok(&out);
    let table = String::from_utf8_lossy(&out.stdout);
    for needle in [
        "FERM on tiny (task y, groups F / M), test split",
        "2 seeds; mean ± 95% CI",
        "linear SVM",
        "linear FERM",
        "logistic FERM",
        "RBF SVM",
        "kernel FERM (RBF)",
        "kernel FERM (linear)",
        "min DEO, acc >= 0.9·best",
    ] {
        assert!(table.contains(needle), "table lacks {needle:?}:\n{table}");
    }
    let mut runs: Vec<PathBuf> = std::fs::read_dir(dir.join("out"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_dir())
        .collect();
    runs.sort();
    assert_eq!(runs.len(), 2, "{runs:?}");
    let name = runs[0].file_name().unwrap().to_string_lossy().into_owned();
    assert!(name.starts_with("ferm-s4-"), "{name}");
    let summary = read_json(&dir.join("out").join("ferm-summary.json"));
    assert_eq!(summary.as_array().unwrap().len(), 8, "{summary}");
    assert_eq!(summary[0]["metrics"]["accuracy"]["n"].as_u64(), Some(2));
    for (run, seed) in runs.iter().zip([4u64, 5]) {
        let report = read_json(&run.join("ferm.json"));
        assert_eq!(report["seed"].as_u64(), Some(seed));
        assert_eq!(report["groups"], serde_json::json!(["F", "M"]));
        let results = report["results"].as_array().unwrap();
        assert_eq!(results.len(), 8);
        for r in results {
            let sel = &r["selection"];
            let points = sel["points"].as_array().unwrap();
            // The linear grids have 3 C values; RBF 3 C x 2 gamma.
            let expected = if r["name"] == "RBF SVM" || r["name"] == "kernel FERM (RBF)" {
                6
            } else {
                3
            };
            assert_eq!(points.len(), expected, "{}", r["name"]);
            for p in points {
                assert_eq!(p["fold_accuracy"].as_array().unwrap().len(), 3);
            }
            let chosen = sel["chosen"].as_u64().unwrap() as usize;
            assert!(chosen < points.len());
            // The rule: the baseline takes the best CV accuracy; FERM the smallest CV DEO
            // among the points within 0.9 of it.
            let acc = |p: &Value| p["mean_accuracy"].as_f64().unwrap();
            let deo = |p: &Value| p["mean_deo"].as_f64().unwrap();
            let best = points.iter().map(acc).fold(f64::MIN, f64::max);
            if r["name"].as_str().unwrap().contains("FERM") {
                assert!(acc(&points[chosen]) >= 0.9 * best);
                for p in points.iter().filter(|p| acc(p) >= 0.9 * best) {
                    assert!(deo(&points[chosen]) <= deo(p), "{}", r["name"]);
                }
            } else {
                assert_eq!(acc(&points[chosen]), best, "{}", r["name"]);
            }
            let m = &r["metrics"];
            for key in ["accuracy", "deo", "dp_gap", "eo_gap"] {
                let v = m[key].as_f64().unwrap();
                assert!((0.0..=1.0).contains(&v), "{key}: {v}");
            }
            assert!(r["fit_seconds"].as_f64().unwrap() >= 0.0);
        }
        let config = std::fs::read_to_string(run.join("config.toml")).unwrap();
        assert!(config.contains(&format!("seeds = [{seed}]")), "{config}");
        assert!(config.contains(&format!("split_seed = {seed}")), "{config}");
        let rep = read_json(&run.join("representation.json"));
        let d = rep["schema"]["features"].as_array().unwrap().len();
        assert_eq!(rep["projection"]["u"].as_array().unwrap().len(), d);
    }
    // One seed from the command line, its run scored on validation.
    let out = ferm_cmd(
        &dir,
        &config,
        &["--seed", "9", "--set", "run.split=\"valid\"", "--out", "o2"],
    );
    assert_ok(&out);
    assert!(String::from_utf8_lossy(&out.stdout).contains("valid split"));
    let run = only_run_dir(&dir.join("o2"));
    assert!(!dir.join("o2").join("ferm-summary.json").exists());
    assert_eq!(read_json(&run.join("ferm.json"))["split"], "valid");
}

#[test]
fn ferm_rejects_bad_input_naming_what_is_wrong() {
    let dir = scratch("ferm_bad");
    let config = tiny_ferm_config(&dir, "");
    // An empty grid, C <= 0, gamma <= 0, a bad ratio: the key and the value.
    assert_fails_with(
        &ferm_cmd(&dir, &config, &["--set", "grid.c=[]"]),
        &["grid.c", "the grid is empty", "ferm.toml"],
    );
    assert_fails_with(
        &ferm_cmd(&dir, &config, &["--set", "grid.kernel_c=[1.0, -1.0]"]),
        &["grid.kernel_c", "finite and > 0", "found -1"],
    );
    assert_fails_with(
        &ferm_cmd(&dir, &config, &["--set", "grid.c=[0.0]"]),
        &["grid.c", "found 0"],
    );
    assert_fails_with(
        &ferm_cmd(&dir, &config, &["--set", "grid.gamma=[]"]),
        &["grid.gamma", "the grid is empty"],
    );
    assert_fails_with(
        &ferm_cmd(&dir, &config, &["--set", "selection.ratio=1.5"]),
        &["selection.ratio", "(0, 1]", "1.5"],
    );
    assert_fails_with(
        &ferm_cmd(&dir, &config, &["--set", "models.compare=[\"svm\"]"]),
        &["models.compare", "svm"],
    );
    // Unknown keys, in the file and in --set.
    let bad = ferm_config_on(
        &dir,
        &dir.join("tiny-spec.toml"),
        "y",
        "[grid]\ncc = [1.0]\n",
    );
    assert_fails_with(
        &ferm_cmd(&dir, &bad, &[]),
        &["unknown key `grid.cc`", "ferm.toml"],
    );
    let config = tiny_ferm_config(&dir, "");
    assert_fails_with(
        &ferm_cmd(&dir, &config, &["--set", "selection.fold=3"]),
        &["--set `selection.fold`", "no such key"],
    );
    // A task that is not binary.
    let spec = std::fs::read_to_string(dir.join("tiny-spec.toml")).unwrap()
        + "\n[[tasks]]\nname = \"hours_reg\"\ncolumn = \"hours\"\nkind = \"regression\"\n";
    let reg_spec = write(&dir.join("tiny-reg.toml"), &spec);
    let reg = ferm_config_on(&dir, &reg_spec, "hours_reg", "");
    assert_fails_with(
        &ferm_cmd(&dir, &reg, &[]),
        &["data.task `hours_reg` is a regression task", "binary"],
    );
    // A task the dataset does not have.
    let none = ferm_config_on(&dir, &dir.join("tiny-spec.toml"), "z", "");
    assert_fails_with(&ferm_cmd(&dir, &none, &[]), &["has no task `z`", "[y]"]);
    // A group with no positive example: every M row labelled 0.
    let _ = tiny_dataset(
        &dir,
        |i, row| {
            if i % 2 == 1 {
                format!("{}0", &row[..row.len() - 1])
            } else {
                row
            }
        },
        "",
    );
    let config = ferm_config_on(&dir, &dir.join("tiny-spec.toml"), "y", "");
    assert_fails_with(
        &ferm_cmd(&dir, &config, &[]),
        &[
            "linear SVM on the training rows",
            "1 = M",
            "group 1 has no positive example",
        ],
    );
    // Three groups.
    let _ = tiny_dataset(
        &dir,
        |i, row| {
            if i % 5 == 0 {
                row.replace(",F,", ",X,")
            } else {
                row
            }
        },
        ", { name = \"X\", values = [\"X\"] }",
    );
    let config = ferm_config_on(&dir, &dir.join("tiny-spec.toml"), "y", "");
    assert_fails_with(
        &ferm_cmd(&dir, &config, &[]),
        &["exactly two groups, found 3", "data.sensitive"],
    );
}

#[test]
fn ferm_representation_goes_through_transfer_and_export() {
    let dir = scratch("ferm_transfer");
    // A deep encoder and a FERM run on the same synthetic data, task1 held out.
    let deep = train_held_out(&dir, "deep", 5.0, &[]);
    let config = write(
        &dir.join("ferm.toml"),
        "[data]\ndataset = \"synthetic\"\ntask = \"task0\"\nheld_out_tasks = [\"task1\"]\n\
         split_seed = 0\n[data.synthetic]\nn_train = 600\nn_valid = 200\nn_test = 200\n\
         n_features = 8\nn_tasks = 2\n[run]\nout_dir = \"ferm\"\n",
    );
    let out = fairrep(&dir, &["ferm", config.to_str().unwrap()]);
    assert_ok(&out);
    let ferm = only_run_dir(&dir.join("ferm"));
    let report = read_json(&ferm.join("ferm.json"));
    let (svm, fair) = (&report["results"][0], &report["results"][1]);
    assert_eq!(svm["name"], "linear SVM");
    assert_eq!(fair["name"], "linear FERM");
    // The synthetic inputs shift with the group: the projection removes the gap the SVM has.
    assert!(
        fair["metrics"]["deo"].as_f64().unwrap() < svm["metrics"]["deo"].as_f64().unwrap(),
        "{report}"
    );

    // Transfer: the deep encoder with the FERM representation as the comparison.
    let tconfig = transfer_config(
        &dir,
        "[data]\ntasks = [\"task1\"]\n[fit]\nepochs = 3\n[bounds]\nmax_points = 200\n",
    );
    let out = transfer_cmd(
        &dir,
        &deep,
        &tconfig,
        &["--baseline", ferm.to_str().unwrap()],
    );
    assert_ok(&out);
    let table = String::from_utf8_lossy(&out.stdout);
    for needle in ["mmd λ=5", "linear FERM", "raw inputs"] {
        assert!(table.contains(needle), "table lacks {needle:?}:\n{table}");
    }
    let t = read_json(&deep.join("transfer.json"));
    let cells = t["cells"].as_array().unwrap();
    assert_eq!(cells.len(), 6, "3 representations x 2 heads");
    let ferm_cells: Vec<&Value> = cells
        .iter()
        .filter(|c| c["representation"] == "linear FERM")
        .collect();
    assert_eq!(ferm_cells.len(), 2);
    for c in ferm_cells {
        assert_eq!(c["runs"][0]["run"].as_str(), ferm.to_str());
        let acc = c["runs"][0]["accuracy"].as_f64().unwrap();
        assert!((0.5..=1.0).contains(&acc), "{c}");
    }
    // The FERM run alone as the representation.
    let out = transfer_cmd(
        &dir,
        &ferm,
        &tconfig,
        &["--set", "heads.kinds=[\"linear\"]"],
    );
    assert_ok(&out);
    assert!(String::from_utf8_lossy(&out.stdout).contains("linear FERM"));
    assert!(ferm.join("transfer.json").is_file());
    // A FERM run on another split seed holds other rows: refused, not mis-paired.
    let other = write(
        &dir.join("ferm2.toml"),
        &std::fs::read_to_string(&config)
            .unwrap()
            .replace("split_seed = 0", "split_seed = 1")
            .replace("out_dir = \"ferm\"", "out_dir = \"ferm2\""),
    );
    assert_ok(&fairrep(&dir, &["ferm", other.to_str().unwrap()]));
    let ferm2 = only_run_dir(&dir.join("ferm2"));
    assert_fails_with(
        &transfer_cmd(
            &dir,
            &deep,
            &tconfig,
            &["--baseline", ferm2.to_str().unwrap()],
        ),
        &["hold different rows", "split seed"],
    );

    // Export: z = P x has d - 1 columns; the rows, groups and labels are the deep encoder's.
    let d = read_json(&ferm.join("representation.json"))["schema"]["features"]
        .as_array()
        .unwrap()
        .len();
    let export = |run: &Path, name: &str| {
        let path = dir.join("export").join(format!("{name}.npy"));
        let out = fairrep(
            &dir,
            &[
                "export",
                "--from",
                run.to_str().unwrap(),
                "--out",
                path.to_str().unwrap(),
                "--device",
                "flex",
            ],
        );
        assert_ok(&out);
        path
    };
    let zf = export(&ferm, "ferm");
    let zd = export(&deep, "deep");
    let header = npy_header(&zf);
    assert!(
        header.contains("'<f4'") && header.contains(&format!("(200, {})", d - 1)),
        "{header}"
    );
    let z = npy_f32(&zf);
    assert_eq!(z.len(), 200 * (d - 1));
    assert!(z.iter().all(|v| v.is_finite()));
    let sibling = |p: &Path, suffix: &str| {
        let stem = p.file_stem().unwrap().to_string_lossy().into_owned();
        p.with_file_name(format!("{stem}{suffix}"))
    };
    assert_eq!(
        npy_i64(&sibling(&zf, "_s.npy")),
        npy_i64(&sibling(&zd, "_s.npy"))
    );
    assert_eq!(
        npy_f32(&sibling(&zf, "_labels.npy")),
        npy_f32(&sibling(&zd, "_labels.npy"))
    );
    let sidecar = read_json(&sibling(&zf, ".json"));
    assert_eq!(sidecar["representation"], "linear FERM");
    assert_eq!(sidecar["latent"].as_u64(), Some(d as u64 - 1));
    assert!(
        sidecar["checkpoint"]
            .as_str()
            .unwrap()
            .ends_with("representation.json")
    );
    // A damaged representation file is refused with its path and what is wrong.
    let broken = dir.join("broken");
    std::fs::create_dir_all(&broken).unwrap();
    let text = std::fs::read_to_string(ferm.join("representation.json")).unwrap();
    let mut rep: Value = serde_json::from_str(&text).unwrap();
    rep["projection"]["pivot"] = serde_json::json!(99);
    write(&broken.join("representation.json"), &rep.to_string());
    let out = fairrep(
        &dir,
        &[
            "export",
            "--from",
            broken.to_str().unwrap(),
            "--out",
            dir.join("b.npy").to_str().unwrap(),
        ],
    );
    assert_fails_with(
        &out,
        &["broken/representation.json", "pivot 99", "features"],
    );
    write(&broken.join("representation.json"), "{\"projection\": 1}");
    assert_fails_with(
        &transfer_cmd(&dir, &broken, &tconfig, &[]),
        &["broken/representation.json", "invalid type"],
    );
    // eval audits trained encoders only: a FERM run is named as such.
    assert_fails_with(
        &fairrep(
            &dir,
            &["eval", "--from", ferm.to_str().unwrap(), "--device", "flex"],
        ),
        &["is a `fairrep ferm` run", "ferm.json"],
    );
}
/// Exact two-sample KS distance between the values of groups `a` and `b`.
fn ks_two(values: &[f64], groups: &[&str], a: &str, b: &str) -> f64 {
    let pick = |g: &str| {
        let mut v: Vec<f64> = values
            .iter()
            .zip(groups)
            .filter(|(_, x)| **x == g)
            .map(|(v, _)| *v)
            .collect();
        v.sort_by(f64::total_cmp);
        v
    };
    let (x, y) = (pick(a), pick(b));
    let mut all: Vec<f64> = x.iter().chain(&y).copied().collect();
    all.sort_by(f64::total_cmp);
    let cdf = |v: &[f64], t: f64| v.partition_point(|&u| u <= t) as f64 / v.len() as f64;
    all.iter()
        .map(|&t| (cdf(&x, t) - cdf(&y, t)).abs())
        .fold(0.0, f64::max)
}

fn curve_point(report: &Value, alpha: f64) -> &Value {
    report["curve"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["alpha"].as_f64() == Some(alpha))
        .unwrap_or_else(|| panic!("no alpha {alpha} in {report}"))
}

#[test]
fn postprocess_a_regression_run_and_its_binary_scores() {
    let dir = scratch("postprocess_run");
    let config = regression_dataset(&dir);
    let data_dir = dir.to_str().unwrap();
    let out_dir = dir.join("runs");
    let out = fairrep(
        &dir,
        &[
            "train",
            config.to_str().unwrap(),
            "--data-dir",
            data_dir,
            "--out",
            out_dir.to_str().unwrap(),
        ],
    );
    assert_ok(&out);
    let run = only_run_dir(&out_dir);
    // summary.json: a regression task has MSE (`loss`), RMSE, KS and W1.
    let s = read_json(&run.join("summary.json"));
    let t = &s["test"]["tasks"]["score"];
    let (mse, rmse) = (t["loss"].as_f64().unwrap(), t["rmse"].as_f64().unwrap());
    assert!((rmse - mse.sqrt()).abs() < 1e-12, "{t}");
    assert!(
        t["ks"].as_f64().unwrap() > 0.5 && t["w1"].as_f64().unwrap() > 1.0,
        "{t}"
    );
    assert!(s["test"]["tasks"]["high"].get("rmse").is_none(), "{s}");

    let out = fairrep(
        &dir,
        &[
            "postprocess",
            "--from",
            run.to_str().unwrap(),
            "--task",
            "score",
            "--data-dir",
            data_dir,
        ],
    );
    assert_ok(&out);
    let folder = run.join("postprocess").join("score");
    let report = read_json(&folder.join("report.json"));
    assert!(folder.join("fit.json").is_file() && folder.join("curve.svg").is_file());
    png_check::assert_png_beside(&folder.join("curve.svg"), 8);
    assert_eq!(report["curve"].as_array().unwrap().len(), 11, "{report}");
    assert_eq!(report["calibration"]["n"].as_u64(), Some(500));
    assert_eq!(report["test"]["n"].as_u64(), Some(500));
    assert_eq!(
        report["test"]["group_sizes"],
        serde_json::json!([[250, 250]])
    );
    let (base, fair) = (curve_point(&report, 0.0), curve_point(&report, 1.0));
    // alpha = 0 is the head itself: the test MSE and KS of summary.json.
    let base_mse = base["mse"].as_f64().unwrap();
    assert!((base_mse - mse).abs() <= 1e-9 * mse, "{base_mse} vs {mse}");
    assert_eq!(base["attributes"][0]["ks"], t["ks"]);
    // alpha = 1: the KS of the fair outputs between the test groups carries the noise of the
    // calibration sample (its ECDFs and quantiles) and of the test sample: with 250 rows per
    // group in each, it exceeds 1.95 sqrt(4 / 250) = 0.247 with probability about 0.001
    // (the Kolmogorov tail; the base KS is near 1).
    let (ks0, ks1) = (
        base["attributes"][0]["ks"].as_f64().unwrap(),
        fair["attributes"][0]["ks"].as_f64().unwrap(),
    );
    assert!(ks0 > 0.5 && ks1 < 0.25, "KS {ks0} -> {ks1}");
    let (w0, w1) = (
        base["attributes"][0]["w1"].as_f64().unwrap(),
        fair["attributes"][0]["w1"].as_f64().unwrap(),
    );
    assert!(w1 < 0.25 * w0, "W1 {w0} -> {w1}");
    // Fairness costs risk: the groups' targets differ by about 2.
    assert!(fair["mse"].as_f64().unwrap() > base_mse, "{report}");
    assert_eq!(report["attributes"], serde_json::json!(["sex"]));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("alpha") && stdout.lines().count() >= 13,
        "{stdout}"
    );

    // A binary head: refused without --scores, post-processed with it (DP gap at 0.5).
    let run_s = run.to_str().unwrap();
    let pp = |extra: &[&str]| {
        let mut args = vec!["postprocess", "--from", run_s, "--data-dir", data_dir];
        args.extend_from_slice(extra);
        fairrep(&dir, &args)
    };
    assert_fails_with(
        &pp(&["--task", "high"]),
        &[
            "task `high`",
            "expected a regression task, found a binary task",
            "--scores",
        ],
    );
    assert_fails_with(
        &pp(&["--task", "score", "--scores"]),
        &["--scores applies to binary tasks"],
    );
    assert_fails_with(
        &pp(&["--task", "nope"]),
        &["has no task `nope`", "score, high"],
    );
    assert_fails_with(
        &pp(&["--task", "score", "--alphas", "0,0.5,1.5"]),
        &["alpha = 1.5", "expected a number in [0, 1]"],
    );
    let scores_out = dir.join("scores");
    let out = pp(&[
        "--task",
        "high",
        "--scores",
        "--alphas",
        "0,1",
        "--out",
        scores_out.to_str().unwrap(),
    ]);
    assert_ok(&out);
    let report = read_json(&scores_out.join("report.json"));
    assert_eq!(report["output"].as_str(), Some("score"));
    let base = &curve_point(&report, 0.0)["attributes"][0];
    let fair = &curve_point(&report, 1.0)["attributes"][0];
    // The base DP gap is the one of summary.json (decisions at 0.5); post-processing shrinks it.
    assert_eq!(base["dp_gap"], s["test"]["tasks"]["high"]["dp_gap"]);
    assert!(
        fair["dp_gap"].as_f64().unwrap() < 0.5 * base["dp_gap"].as_f64().unwrap(),
        "{report}"
    );
}

/// Writes a predictions CSV: group `A` shifted by 1 from `B`; `valid` rows (2 in 3) and
/// `test` rows; target = prediction + 0.1. `row` may rewrite a line.
fn predictions_file(path: &Path, row: impl Fn(usize, String) -> String) -> PathBuf {
    let mut text = String::from("prediction,group,target,split\n");
    for i in 0..1200usize {
        let a = i % 2 == 0;
        let p = unit(i as u64) + if a { 1.0 } else { 0.0 };
        let split = if i % 3 == 0 { "test" } else { "valid" };
        let line = format!("{p},{},{},{split}", if a { "A" } else { "B" }, p + 0.1);
        text.push_str(&row(i, line));
        text.push('\n');
    }
    write(path, &text)
}

#[test]
fn postprocess_a_predictions_file_and_apply_the_saved_fit() {
    let dir = scratch("postprocess_csv");
    let file = predictions_file(&dir.join("preds.csv"), |_, l| l);
    let out = fairrep(
        &dir,
        &["postprocess", "--predictions", file.to_str().unwrap()],
    );
    assert_ok(&out);
    let folder = dir.join("preds.csv.postprocess");
    let report = read_json(&folder.join("report.json"));
    assert_eq!(report["calibration"]["n"].as_u64(), Some(800));
    assert_eq!(report["test"]["n"].as_u64(), Some(400));
    let (base, fair) = (curve_point(&report, 0.0), curve_point(&report, 1.0));
    // alpha = 0 leaves the predictions unchanged: RMSE is the offset 0.1.
    assert!(
        (base["rmse"].as_f64().unwrap() - 0.1).abs() < 1e-12,
        "{report}"
    );
    // 400 calibration and 200 test rows per group: the fair outputs' KS (calibration and
    // test noise, see the run test) exceeds 1.95 sqrt(2 / 400 + 2 / 200) = 0.239 with
    // probability about 0.001.
    let ks = |p: &Value| p["attributes"][0]["ks"].as_f64().unwrap();
    assert!(
        ks(base) > 0.9 && ks(fair) < 0.24,
        "{} -> {}",
        ks(base),
        ks(fair)
    );
    // KS decreases along the curve (the geodesic), up to sampling noise.
    assert!(ks(curve_point(&report, 0.5)) < ks(base), "{report}");

    // The saved fit applied to the test rows alone, with the same seed, reproduces the
    // report's outputs: its MSE at alpha = 1 is the report's, exactly.
    let text = std::fs::read_to_string(&file).unwrap();
    let mut test_rows = String::from("prediction,group,target\n");
    for l in text.lines().skip(1).filter(|l| l.ends_with(",test")) {
        test_rows.push_str(l.trim_end_matches(",test"));
        test_rows.push('\n');
    }
    let test_file = write(&dir.join("test.csv"), &test_rows);
    let fit = folder.join("fit.json");
    let applied = dir.join("applied.csv");
    let apply = |alpha: &str, input: &Path| {
        fairrep(
            &dir,
            &[
                "postprocess",
                "--apply",
                fit.to_str().unwrap(),
                "--predictions",
                input.to_str().unwrap(),
                "--alpha",
                alpha,
                "--out",
                applied.to_str().unwrap(),
            ],
        )
    };
    assert_ok(&apply("1", &test_file));
    let rows: Vec<Vec<String>> = std::fs::read_to_string(&applied)
        .unwrap()
        .lines()
        .map(|l| l.split(',').map(str::to_string).collect())
        .collect();
    assert_eq!(rows[0], ["prediction", "group", "target", "postprocessed"]);
    let col = |j: usize| -> Vec<f64> { rows[1..].iter().map(|r| r[j].parse().unwrap()).collect() };
    let (pred, target, post) = (col(0), col(2), col(3));
    let groups: Vec<&str> = rows[1..].iter().map(|r| r[1].as_str()).collect();
    let mse = post
        .iter()
        .zip(&target)
        .map(|(p, y)| (p - y) * (p - y))
        .sum::<f64>()
        / post.len() as f64;
    assert_eq!(mse, fair["mse"].as_f64().unwrap());
    assert_eq!(ks_two(&post, &groups, "A", "B"), ks(fair));
    // alpha = 0 returns every prediction unchanged.
    assert_ok(&apply("0", &test_file));
    let rows0 = std::fs::read_to_string(&applied).unwrap();
    for (l, p) in rows0.lines().skip(1).zip(&pred) {
        let last: f64 = l.rsplit(',').next().unwrap().parse().unwrap();
        assert_eq!(last, *p);
    }

    // Bad input.
    assert_fails_with(&apply("1.5", &test_file), &["--alpha", "alpha = 1.5"]);
    let unknown = write(&dir.join("unknown.csv"), "prediction,group\n0.5,A\n0.7,C\n");
    assert_fails_with(
        &apply("1", &unknown),
        &[
            "unknown.csv, line 3, column `group`",
            "group `C`",
            "known groups: A, B",
        ],
    );
    let pp = |f: &Path| fairrep(&dir, &["postprocess", "--predictions", f.to_str().unwrap()]);
    let constant = predictions_file(&dir.join("constant.csv"), |_, l| {
        let rest = l.split_once(',').unwrap().1.to_string();
        format!("0.25,{rest}")
    });
    assert_fails_with(
        &pp(&constant),
        &["constant.csv", "all 800 calibration predictions equal 0.25"],
    );
    let no_split = write(
        &dir.join("nosplit.csv"),
        "prediction,group\n0.1,A\n0.2,B\n0.3,A\n0.4,B\n",
    );
    assert_fails_with(
        &pp(&no_split),
        &[
            "nosplit.csv: expected rows with split = valid or calib (calibration)",
            "no `split` column",
        ],
    );
    let no_valid = predictions_file(&dir.join("novalid.csv"), |_, l| {
        l.replace(",valid", ",train")
    });
    assert_fails_with(&pp(&no_valid), &["found none (splits: test, train)"]);
    // A test group without calibration rows.
    let absent = predictions_file(&dir.join("absent.csv"), |i, l| {
        if i == 3 { l.replace(",B,", ",C,") } else { l }
    });
    assert_fails_with(
        &pp(&absent),
        &[
            "absent.csv",
            "group `C` has no row in the calibration sample",
        ],
    );
    let bad_alpha = fairrep(
        &dir,
        &[
            "postprocess",
            "--predictions",
            file.to_str().unwrap(),
            "--alphas",
            "-0.1,1",
        ],
    );
    assert_fails_with(&bad_alpha, &["alpha = -0.1", "expected a number in [0, 1]"]);
    let stray = fairrep(
        &dir,
        &[
            "postprocess",
            "--predictions",
            file.to_str().unwrap(),
            "--alpha",
            "0.5",
        ],
    );
    assert_fails_with(&stray, &["--alpha applies with --apply"]);
}

#[test]
fn postprocess_several_attributes_in_sequence() {
    // Two attributes: `sex` shifts the prediction by 1, `race` by 0.5; made fair in header
    // order (sex, then race).
    let dir = scratch("postprocess_seq");
    let mut text = String::from("prediction,group:sex,group:race,target,split\n");
    for i in 0..4000usize {
        let (m, r) = (i % 2 == 1, (i / 2) % 2 == 1);
        let p = unit(i as u64 + 7) + f64::from(u8::from(m)) + 0.5 * f64::from(u8::from(r));
        let split = if (i / 4) % 2 == 0 { "valid" } else { "test" };
        let (sex, race) = (if m { "m" } else { "f" }, if r { "x" } else { "y" });
        text.push_str(&format!("{p},{sex},{race},{p},{split}\n"));
    }
    let file = write(&dir.join("two.csv"), &text);
    let out = fairrep(
        &dir,
        &[
            "postprocess",
            "--predictions",
            file.to_str().unwrap(),
            "--alphas",
            "0,1",
        ],
    );
    assert_ok(&out);
    let folder = dir.join("two.csv.postprocess");
    let report = read_json(&folder.join("report.json"));
    assert_eq!(report["attributes"], serde_json::json!(["sex", "race"]));
    let fit = read_json(&folder.join("fit.json"));
    assert_eq!(
        fit["format"].as_str(),
        Some("fairrep-postprocess/sequential")
    );
    // Stages: base, after sex, after race; KS of each attribute at each stage. 1,000
    // calibration and 1,000 test rows per group of each attribute: a fair output's KS
    // (calibration and test noise) exceeds 1.95 sqrt(4 / 1000) = 0.123 with probability about
    // 0.001. The attributes are independent and shift additively, so the race step keeps sex
    // fair here (in general only the last attribute is guaranteed).
    let stages = report["stages"].as_array().unwrap();
    assert_eq!(stages.len(), 3);
    let ks = |st: usize, a: usize| stages[st]["attributes"][a]["ks"].as_f64().unwrap();
    assert!(ks(0, 0) > 0.5 && ks(0, 1) > 0.2, "{report}");
    assert!(ks(1, 0) < 0.123, "sex after its step: {report}");
    assert!(
        ks(2, 1) < 0.123 && ks(2, 0) < 0.123,
        "both after the last step: {report}"
    );
    let fair = curve_point(&report, 1.0);
    assert_eq!(fair["attributes"][1]["ks"].as_f64(), Some(ks(2, 1)));
    // The sequential fit applied to the test rows alone (attribute columns in another order:
    // they are matched by name) reproduces the report's outputs: the same MSE at alpha = 1.
    let mut test_rows = String::from("group:race,prediction,group:sex,target\n");
    for l in text.lines().skip(1).filter(|l| l.ends_with(",test")) {
        let f: Vec<&str> = l.split(',').collect();
        test_rows.push_str(&format!("{},{},{},{}\n", f[2], f[0], f[1], f[3]));
    }
    let test_file = write(&dir.join("two-test.csv"), &test_rows);
    let applied = dir.join("two-applied.csv");
    let out = fairrep(
        &dir,
        &[
            "postprocess",
            "--apply",
            folder.join("fit.json").to_str().unwrap(),
            "--predictions",
            test_file.to_str().unwrap(),
            "--out",
            applied.to_str().unwrap(),
        ],
    );
    assert_ok(&out);
    let rows: Vec<Vec<String>> = std::fs::read_to_string(&applied)
        .unwrap()
        .lines()
        .map(|l| l.split(',').map(str::to_string).collect())
        .collect();
    assert_eq!(
        rows[0],
        [
            "prediction",
            "group:race",
            "group:sex",
            "target",
            "postprocessed"
        ]
    );
    let mse = rows[1..]
        .iter()
        .map(|r| {
            let (y, p): (f64, f64) = (r[3].parse().unwrap(), r[4].parse().unwrap());
            (p - y) * (p - y)
        })
        .sum::<f64>()
        / (rows.len() - 1) as f64;
    assert_eq!(Some(mse), fair["mse"].as_f64());
    // Applying the sequential fit needs every attribute's column.
    let one = write(&dir.join("one.csv"), "prediction,group:sex\n0.5,f\n");
    let out = fairrep(
        &dir,
        &[
            "postprocess",
            "--apply",
            folder.join("fit.json").to_str().unwrap(),
            "--predictions",
            one.to_str().unwrap(),
            "--out",
            dir.join("o.csv").to_str().unwrap(),
        ],
    );
    assert_fails_with(&out, &["needs the column `group:race`", "group:sex"]);
}

/// The largest per-attribute DP gap of `task` in a summary split, and the intersectional one.
fn attribute_gaps(split: &Value, task: &str) -> (f64, f64, f64) {
    let gap = |a: &str| {
        split["attributes"][a]["tasks"][task]["dp_gap"]
            .as_f64()
            .unwrap_or_else(|| panic!("no DP gap of {task} for attribute {a}: {split}"))
    };
    let cells = split["tasks"][task]["dp_gap"].as_f64().unwrap();
    (gap("s"), gap("s2"), cells)
}

#[test]
fn two_attributes_train_in_each_mode_and_report_per_attribute_and_intersectional_gaps() {
    let dir = scratch("attributes");
    let config = small_config(&dir, "mmd", 2);
    let config = config.to_str().unwrap();
    for mode in ["each", "intersectional"] {
        let out = fairrep(
            &dir,
            &[
                "train",
                config,
                "--device",
                "flex",
                "--set",
                "data.synthetic.n_groups_2=2",
                "--set",
                &format!("penalty.mode={mode}"),
            ],
        );
        assert_ok(&out);
        let s = summary(&out);
        assert_eq!(s["penalty_mode"], mode, "{s}");
        for split in ["valid", "test"] {
            let sp = &s[split];
            for task in ["task0", "task1"] {
                let (a, b, cells) = attribute_gaps(sp, task);
                // A gap between cells bounds each attribute's gap: an attribute's group rate
                // is a mixture of its cells' rates.
                assert!(
                    (0.0..=1.0).contains(&a) && (0.0..=1.0).contains(&b),
                    "{split} {task}: {sp}"
                );
                assert!(cells + 1e-12 >= a.max(b), "{split} {task}: {a} {b} {cells}");
                let acc = &sp["attributes"]["s2"]["tasks"][task]["group_accuracy"];
                assert!(
                    acc["h0"].as_f64().is_some() && acc["h1"].as_f64().is_some(),
                    "{acc}"
                );
            }
            let penalty = sp["penalty"].as_f64().unwrap();
            let terms: Vec<Option<f64>> = ["s", "s2"]
                .iter()
                .map(|a| sp["attributes"][a]["penalty"].as_f64())
                .collect();
            if mode == "each" {
                // The penalty is the sum of the per-attribute terms (float32 sums).
                let sum: f64 = terms.iter().map(|t| t.unwrap()).sum();
                assert!(
                    (penalty - sum).abs() <= 1e-6 * (1.0 + sum.abs()),
                    "{split}: {penalty} vs {sum}"
                );
            } else {
                assert!(terms.iter().all(Option::is_none), "{sp}");
                assert!(penalty.is_finite());
            }
        }
        // metrics.jsonl carries the same per-attribute metrics every epoch.
        let run = dir.join(s["run_dir"].as_str().unwrap());
        let log = std::fs::read_to_string(run.join("metrics.jsonl")).unwrap();
        for line in log.lines() {
            let rec: Value = serde_json::from_str(line).unwrap();
            attribute_gaps(&rec["valid"], "task0");
        }
        let saved = std::fs::read_to_string(run.join("config.toml")).unwrap();
        assert_eq!(
            saved.contains("mode = \"intersectional\""),
            mode == "intersectional"
        );
    }
    // One attribute: no per-attribute section, and penalty.mode is unused (warned).
    let out = fairrep(
        &dir,
        &[
            "train",
            config,
            "--device",
            "flex",
            "--set",
            "penalty.mode=intersectional",
        ],
    );
    assert_ok(&out);
    let s = summary(&out);
    assert!(
        s["test"].get("attributes").is_none() && s.get("penalty_mode").is_none(),
        "{s}"
    );
    assert!(
        stderr(&out).contains("penalty.mode is not used"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn one_attribute_as_a_list_equals_the_single_table_bit_for_bit() {
    let dir = scratch("attributes_one");
    let config = tiny_dataset(&dir, |_, row| row, "");
    let text = std::fs::read_to_string(&config).unwrap();
    let table = "[data.sensitive]\ncolumn = \"sex\"\ngroups = [{ name = \"F\", values = [\"F\"] \
                 }, { name = \"M\", values = [\"M\"] }]\n";
    let list = "[[data.sensitive]]\nname = \"sex\"\ncolumn = \"sex\"\ngroups = [{ name = \"F\", \
                values = [\"F\"] }, { name = \"M\", values = [\"M\"] }]\n";
    let run = |name: &str, sensitive: &str, mode: &str| {
        let path = write(
            &dir.join(format!("{name}.toml")),
            &format!("{text}[penalty]\nkind = \"mmd\"\nmode = \"{mode}\"\n{sensitive}"),
        );
        let out = fairrep(
            &dir,
            &[
                "train",
                path.to_str().unwrap(),
                "--data-dir",
                dir.to_str().unwrap(),
            ],
        );
        assert_ok(&out);
        summary(&out)
    };
    let single = run("single", table, "each");
    // eval of the list's run: the single table's report, plus the attribute's section, whose
    // leakage is the cells'.
    let eval = |summary: &Value, name: &str| {
        let out_path = dir.join(format!("{name}-eval.json"));
        let out = fairrep(
            &dir,
            &[
                "eval",
                "--from",
                summary["run_dir"].as_str().unwrap(),
                "--data-dir",
                dir.to_str().unwrap(),
                "--permutations",
                "9",
                "--sinkhorn-permutations",
                "2",
                "--max-points",
                "8",
                "--out",
                out_path.to_str().unwrap(),
            ],
        );
        assert_ok(&out);
        read_json(&out_path)
    };
    let single_eval = eval(&single, "single");
    assert!(single_eval["runs"][0].get("attributes").is_none());
    let list_summary = run("list_eval", list, "each");
    let mut list_eval = eval(&list_summary, "list_eval");
    let r = &list_eval["runs"][0];
    assert_eq!(r["attributes"]["sex"]["leakage"], r["leakage"]);
    assert_eq!(r["attributes"]["sex"]["tasks"], r["tasks"]);
    for key in [
        "logistic_auc",
        "mlp_auc",
        "mmd2",
        "mmd2_p",
        "sinkhorn",
        "sinkhorn_p",
    ] {
        let key = format!("leakage.{key}");
        assert_eq!(
            list_eval["summary"][format!("{key}:sex")],
            single_eval["summary"][&key],
            "{key}"
        );
    }
    for (key, interval) in list_eval["summary"].as_object().unwrap() {
        if let Some(cells) = key.strip_suffix(":sex") {
            assert_eq!(single_eval["summary"][cells], *interval, "{key}");
        }
    }
    let list_run = list_eval["runs"][0].as_object_mut().unwrap();
    list_run.remove("attributes");
    list_run.remove("run");
    list_run.remove("checkpoint");
    let mut single_run = single_eval["runs"][0].clone();
    let single_run = single_run.as_object_mut().unwrap();
    single_run.remove("run");
    single_run.remove("checkpoint");
    assert_eq!(list_run, single_run);
    // transfer of the list's run: the attribute's bounds are the cells'.
    let list_dir = list_summary["run_dir"].as_str().unwrap().to_string();
    let config = write(
        &dir.join("transfer.toml"),
        "[data]\ntasks = [\"y\"]\n[heads]\nkinds = [\"linear\"]\n[compare]\nraw = false\n",
    );
    let out = fairrep(
        &dir,
        &[
            "transfer",
            "--from",
            &list_dir,
            config.to_str().unwrap(),
            "--data-dir",
            dir.to_str().unwrap(),
        ],
    );
    assert_ok(&out);
    let report = read_json(&dir.join(&list_dir).join("transfer.json"));
    let head = &report["cells"][0]["runs"][0];
    let sex = &head["attributes"]["sex"];
    for key in ["dp_gap", "score_gap", "w1_bound", "mmd_bound"] {
        assert!(!head[key].is_null(), "{key}: {head}");
        assert_eq!(sex[key], head[key], "{key}");
    }
    assert_eq!(report["w1"][0]["attributes"]["sex"], report["w1"][0]["w1"]);
    for (name, mode) in [("list", "each"), ("list_cells", "intersectional")] {
        let one = run(name, list, mode);
        for split in ["valid", "test"] {
            for key in ["task_loss", "tasks", "penalty", "penalty_diagnostics"] {
                assert_eq!(one[split][key], single[split][key], "{name} {split} {key}");
            }
            // The list records the attribute, with the same gaps as the groups'.
            let gap = &one[split]["attributes"]["sex"]["tasks"]["y"]["dp_gap"];
            assert_eq!(
                gap, &single[split]["tasks"]["y"]["dp_gap"],
                "{name} {split}"
            );
        }
        assert_eq!(one["best_epoch"], single["best_epoch"]);
    }
}

#[test]
fn eval_and_transfer_report_per_attribute_and_intersectional_gaps() {
    let dir = scratch("attributes_audit");
    let run = train_held_out(
        &dir,
        "two",
        5.0,
        &[
            "--set",
            "data.synthetic.n_groups_2=2",
            "--set",
            "penalty.mode=intersectional",
        ],
    );
    // eval: the cells' metrics and leakage, each attribute's, and the summary keys of both.
    let eval_out = dir.join("eval.json");
    let out = fairrep(
        &dir,
        &[
            "eval",
            "--from",
            run.to_str().unwrap(),
            "--permutations",
            "9",
            "--sinkhorn-permutations",
            "3",
            "--max-points",
            "200",
            "--device",
            "flex",
            "--out",
            eval_out.to_str().unwrap(),
        ],
    );
    assert_ok(&out);
    let table = String::from_utf8_lossy(&out.stdout);
    for key in [
        "task0.dp_gap:s2",
        "task0.dp_gap ",
        "leakage.mlp_auc ",
        "leakage.mlp_auc:s ",
        "leakage.mlp_auc:s2",
        "leakage.mmd2_p:s2",
        "leakage.sinkhorn:s ",
    ] {
        assert!(table.contains(key), "{key}: {table}");
    }
    let report = read_json(&eval_out);
    assert_eq!(
        report["groups"].as_array().unwrap().len(),
        4,
        "{}",
        report["groups"]
    );
    let r = &report["runs"][0];
    let cells = r["tasks"]["task0"]["dp_gap"].as_f64().unwrap();
    let finite = |v: &Value, what: &str| -> f64 {
        let x = v
            .as_f64()
            .unwrap_or_else(|| panic!("{what}: not a number: {v}"));
        assert!(x.is_finite(), "{what}: {x}");
        x
    };
    for a in ["s", "s2"] {
        let gap = r["attributes"][a]["tasks"]["task0"]["dp_gap"]
            .as_f64()
            .unwrap();
        assert!(
            (0.0..=cells + 1e-12).contains(&gap),
            "{a}: {gap} vs cells {cells}"
        );
        assert!(report["summary"][format!("task0.dp_gap:{a}")]["mean"].is_number());
        // The attribute's leakage: both probes' AUCs, both divergences with p-values.
        let l = &r["attributes"][a]["leakage"];
        for probe in ["logistic_auc", "mlp_auc"] {
            let auc = finite(&l[probe]["auc"], &format!("{a} {probe}"));
            assert!((0.0..=1.0).contains(&auc), "{a} {probe}: {auc}");
        }
        for d in ["mmd2", "sinkhorn"] {
            assert!(finite(&l[d]["value"], &format!("{a} {d}")) >= 0.0, "{l}");
            let p = finite(&l[d]["p_value"], &format!("{a} {d} p"));
            assert!(p > 0.0 && p <= 1.0, "{a} {d}: {p}");
        }
        assert_eq!(l["z_scale"], r["leakage"]["z_scale"], "{a}");
        for key in ["mlp_auc", "logistic_auc", "mmd2", "mmd2_p", "sinkhorn_p"] {
            let s = &report["summary"][format!("leakage.{key}:{a}")]["mean"];
            finite(s, &format!("summary leakage.{key}:{a}"));
        }
    }
    // Two binary attributes: neither is the cells (4 groups), so their divergences differ.
    assert_ne!(
        r["attributes"]["s"]["leakage"]["mmd2"]["value"],
        r["leakage"]["mmd2"]["value"]
    );
    // transfer: each head's result and cell summary carry the attributes' gaps.
    let config = transfer_config(
        &dir,
        "[data]\ntasks = [\"task1\"]\n[heads]\nkinds = [\"linear\"]\n[compare]\nraw = false\n",
    );
    let out = transfer_cmd(&dir, &run, &config, &[]);
    assert_ok(&out);
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(
        table.contains("DP gap:s")
            && table.contains("DP gap:s2")
            && table.contains("per attribute"),
        "{table}"
    );
    let report = read_json(&run.join("transfer.json"));
    let cell = &report["cells"][0];
    let head = &cell["runs"][0];
    let cells = head["dp_gap"].as_f64().unwrap();
    for a in ["s", "s2"] {
        let attr = &head["attributes"][a];
        let gap = attr["dp_gap"].as_f64().unwrap();
        assert!(
            (0.0..=cells + 1e-12).contains(&gap),
            "{a}: {gap} vs cells {cells}"
        );
        for key in ["dp_gap", "w1_bound", "mmd_bound"] {
            finite(
                &cell["summary"][format!("{key}:{a}")]["mean"],
                &format!("summary {key}:{a}"),
            );
        }
        // The attribute's bounds bound its own score gap. The 200 test rows are within
        // bounds.max_points (500), so both bounds hold on the split itself: exactly for the
        // linear head's W1 side, up to twice the interpolation residual for the MMD side.
        let score_gap = finite(&attr["score_gap"], &format!("{a} score_gap"));
        let w1_bound = finite(&attr["w1_bound"], &format!("{a} w1_bound"));
        assert!(
            score_gap <= w1_bound + 1e-9,
            "{a}: {score_gap} > {w1_bound}"
        );
        let mmd = &attr["mmd_bound"];
        let (bound, residual) = (
            finite(&mmd["bound"], &format!("{a} mmd bound")),
            finite(&mmd["residual"], &format!("{a} mmd residual")),
        );
        assert!(
            score_gap <= bound + 2.0 * residual + 1e-9,
            "{a}: {score_gap} > {mmd}"
        );
        let w1 = finite(
            &report["w1"][0]["attributes"][a]["value"],
            &format!("{a} w1"),
        );
        let lipschitz = finite(&head["score_lipschitz"], "score_lipschitz");
        assert!(
            (w1_bound - lipschitz * w1).abs() <= 1e-9 * w1_bound.max(1.0),
            "{a}: {w1_bound} vs {lipschitz} x {w1}"
        );
    }
}

/// The JSON paths of a report, arrays as `[]`.
fn json_paths(value: &Value, prefix: &str, out: &mut std::collections::BTreeSet<String>) {
    match value {
        Value::Object(map) => {
            for (k, v) in map {
                json_paths(v, &format!("{prefix}.{k}"), out);
            }
        }
        Value::Array(items) => {
            for v in items {
                json_paths(v, &format!("{prefix}[]"), out);
            }
        }
        _ => {
            out.insert(prefix.to_string());
        }
    }
}

#[test]
fn one_attribute_reports_keep_their_layout() {
    // The per-attribute audits add nothing to a one-attribute run's reports: eval.json and
    // transfer.json have the paths they had before them (tests/fixtures), and no summary key
    // names an attribute.
    let dir = scratch("attributes_one_layout");
    let run = train_held_out(&dir, "one", 5.0, &[]);
    let eval_out = dir.join("eval.json");
    let out = fairrep(
        &dir,
        &[
            "eval",
            "--from",
            run.to_str().unwrap(),
            "--device",
            "flex",
            "--permutations",
            "19",
            "--sinkhorn-permutations",
            "4",
            "--max-points",
            "200",
            "--out",
            eval_out.to_str().unwrap(),
        ],
    );
    assert_ok(&out);
    assert!(!String::from_utf8_lossy(&out.stdout).contains(':'));
    let config = transfer_config(&dir, "[data]\ntasks = [\"task1\"]\n");
    let out = transfer_cmd(&dir, &run, &config, &[]);
    assert_ok(&out);
    assert!(!String::from_utf8_lossy(&out.stdout).contains("per attribute"));
    let fixture = read_json(
        &Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/one_attribute_report_paths.json"),
    );
    for (name, path) in [
        ("eval.json", eval_out),
        ("transfer.json", run.join("transfer.json")),
    ] {
        let mut got = std::collections::BTreeSet::new();
        json_paths(&read_json(&path), "", &mut got);
        let want: std::collections::BTreeSet<String> = fixture[name]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p.as_str().unwrap().to_string())
            .collect();
        assert_eq!(
            got.difference(&want).collect::<Vec<_>>(),
            Vec::<&String>::new(),
            "{name}: new paths"
        );
        assert_eq!(
            want.difference(&got).collect::<Vec<_>>(),
            Vec::<&String>::new(),
            "{name}: missing paths"
        );
    }
}

#[test]
fn two_attributes_work_with_the_positive_condition_sinkhorn_and_a_target() {
    let dir = scratch("attributes_more");
    let config = small_config(&dir, "sinkhorn", 2);
    let config = config.to_str().unwrap();
    let train = |sets: &[&str]| {
        let mut args = vec![
            "train",
            config,
            "--device",
            "flex",
            "--set",
            "data.synthetic.n_groups_2=2",
            "--set",
            "penalty.sinkhorn.blur=0.5",
        ];
        for set in sets {
            args.extend(["--set", set]);
        }
        let out = fairrep(&dir, &args);
        assert_ok(&out);
        summary(&out)
    };
    // Sinkhorn, "each", on the positives of task1.
    let s = train(&["penalty.condition=positive", "penalty.task=task1"]);
    for split in ["valid", "test"] {
        let sp = &s[split];
        assert_eq!(sp["penalty_diagnostics"]["condition_task"], "task1", "{sp}");
        let sum: f64 = ["s", "s2"]
            .iter()
            .map(|a| sp["attributes"][a]["penalty"].as_f64().unwrap())
            .sum();
        let penalty = sp["penalty"].as_f64().unwrap();
        assert!(
            (penalty - sum).abs() <= 1e-6 * (1.0 + sum.abs()),
            "{split}: {penalty} vs {sum}"
        );
    }
    // A DP-gap target constrains the largest per-attribute gap with "each" and the cells' gap
    // with "intersectional".
    for mode in ["each", "intersectional"] {
        let s = train(&[
            "penalty.kind=mmd",
            "penalty.target.value=0.05",
            &format!("penalty.mode={mode}"),
        ]);
        let run = dir.join(s["run_dir"].as_str().unwrap());
        let log = std::fs::read_to_string(run.join("metrics.jsonl")).unwrap();
        for line in log.lines() {
            let rec: Value = serde_json::from_str(line).unwrap();
            let v = &rec["valid"];
            let gaps: Vec<f64> = if mode == "each" {
                ["s", "s2"]
                    .iter()
                    .flat_map(|a| {
                        ["task0", "task1"]
                            .map(|t| v["attributes"][a]["tasks"][t]["dp_gap"].as_f64().unwrap())
                    })
                    .collect()
            } else {
                ["task0", "task1"]
                    .map(|t| v["tasks"][t]["dp_gap"].as_f64().unwrap())
                    .to_vec()
            };
            let want = gaps.iter().copied().fold(f64::NEG_INFINITY, f64::max);
            assert_eq!(
                rec["constraint"]["value"].as_f64(),
                Some(want),
                "{mode}: {rec}"
            );
        }
    }
}
