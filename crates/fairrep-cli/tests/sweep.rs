//! End-to-end tests of `fairrep sweep` on the quickstart: rows and front, a second invocation
//! that runs nothing, a killed sweep completed by a re-run, shards merged by `collect`, bad
//! input, and a real single-node Slurm cluster (skipped with a reason when Slurm is absent,
//! unless `FAIRREP_REQUIRE_SLURM=1`). Runs compared across these paths must agree to 1e-12:
//! the CPU backend is deterministic and a resumed run replays its epochs exactly.
#![allow(clippy::print_stderr)]
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use serde_json::Value;

#[path = "common/png_check.rs"]
mod png_check;

fn scratch(name: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join("fairrep-sweep-cli")
        .join(name);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn fairrep_cmd(cwd: &Path, args: &[&str]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_fairrep"));
    cmd.args(args)
        .current_dir(cwd)
        .env("BURN_DEVICE", "flex")
        .env_remove("RUST_LOG")
        .env_remove("SLURM_ARRAY_TASK_ID")
        .env_remove("SLURM_ARRAY_TASK_COUNT")
        .env_remove("FAIRREP_DATA_DIR");
    cmd
}

fn fairrep(cwd: &Path, args: &[&str]) -> Output {
    fairrep_cmd(cwd, args)
        .output()
        .expect("the fairrep binary runs")
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn ok(out: &Output) {
    assert!(out.status.success(), "fairrep failed: {}", stderr(out));
}

/// The quickstart over 3 lambdas x 2 seeds, small enough to train in seconds; `epochs`
/// makes runs long enough to be killed mid-way.
fn write_sweep(dir: &Path) -> PathBuf {
    let quickstart = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../configs/quickstart.toml");
    let path = dir.join("quick.toml");
    std::fs::write(
        &path,
        format!(
            r#"base = "{}"
seeds = [0, 1]
[set]
"optim.epochs" = 6
"data.synthetic.n_train" = 1500
"data.synthetic.n_valid" = 500
"data.synthetic.n_test" = 500
"run.device" = "flex"
[axes]
"penalty.lambda" = [0.0, 1.0, 10.0]
"#,
            quickstart.canonicalize().unwrap().display()
        ),
    )
    .unwrap();
    path
}

/// What must agree between two sweeps of the same file: per run id, the swept values, the
/// seed, the configuration id and every metric.
type Rows = BTreeMap<String, BTreeMap<String, Value>>;

fn read_rows(dir: &Path) -> Rows {
    let text = std::fs::read_to_string(dir.join("results.jsonl")).unwrap();
    text.lines()
        .map(|line| {
            let row: serde_json::Map<String, Value> = serde_json::from_str(line).unwrap();
            let id = row["run_id"].as_str().unwrap().to_string();
            let kept = row
                .into_iter()
                .filter(|(k, _)| {
                    !matches!(
                        k.as_str(),
                        "run_dir" | "train_seconds" | "wall_seconds" | "run_id"
                    )
                })
                .collect();
            (id, kept)
        })
        .collect()
}

fn assert_same_rows(a: &Rows, b: &Rows) {
    assert_eq!(
        a.keys().collect::<Vec<_>>(),
        b.keys().collect::<Vec<_>>(),
        "run ids"
    );
    for (id, ra) in a {
        let rb = &b[id];
        assert_eq!(
            ra.keys().collect::<Vec<_>>(),
            rb.keys().collect::<Vec<_>>(),
            "columns of {id}"
        );
        for (k, va) in ra {
            let vb = &rb[k];
            match (va.as_f64(), vb.as_f64()) {
                (Some(x), Some(y)) => assert!((x - y).abs() <= 1e-12, "{id} {k}: {x} vs {y}"),
                _ => assert_eq!(va, vb, "{id} {k}"),
            }
        }
    }
}

/// The unsharded sweep, run once for all tests: (its directory, its rows).
fn reference() -> &'static (PathBuf, Rows) {
    static REF: OnceLock<(PathBuf, Rows)> = OnceLock::new();
    REF.get_or_init(|| {
        let dir = scratch("reference");
        let file = write_sweep(&dir);
        let out = fairrep(
            &dir,
            &[
                "sweep",
                file.to_str().unwrap(),
                "--out",
                "sweep",
                "--jobs",
                "2",
            ],
        );
        ok(&out);
        let sweep = dir.join("sweep");
        (sweep.clone(), read_rows(&sweep))
    })
}

fn run_dirs(sweep: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for run in std::fs::read_dir(sweep.join("runs")).unwrap() {
        for entry in std::fs::read_dir(run.unwrap().path()).unwrap() {
            let p = entry.unwrap().path();
            if p.is_dir() {
                out.push(p);
            }
        }
    }
    out.sort();
    out
}

#[test]
fn a_sweep_writes_six_rows_and_a_front_and_a_second_invocation_runs_nothing() {
    let (sweep, rows) = reference();
    assert_eq!(rows.len(), 6);
    let csv = std::fs::read_to_string(sweep.join("results.csv")).unwrap();
    assert_eq!(csv.lines().count(), 7, "header and 6 rows");
    assert!(
        csv.lines()
            .next()
            .unwrap()
            .starts_with("run_id,config_id,seed,penalty.lambda,")
    );
    let lambdas: Vec<f64> = rows
        .values()
        .map(|r| r["penalty.lambda"].as_f64().unwrap())
        .collect();
    for l in [0.0, 1.0, 10.0] {
        assert_eq!(
            lambdas.iter().filter(|&&x| x == l).count(),
            2,
            "two seeds of lambda {l}"
        );
    }
    for r in rows.values() {
        for k in [
            "valid.task0.accuracy",
            "valid.task0.dp_gap",
            "test.task0.ks",
            "valid.penalty",
        ] {
            assert!(r[k].as_f64().is_some_and(f64::is_finite), "{k} in {r:?}");
        }
    }
    let svg = std::fs::read_to_string(sweep.join("front.svg")).unwrap();
    assert!(svg.starts_with("<svg") && svg.contains("<circle"));
    // The PNG beside it: decodes, twice the size, blue points, red front, green rings.
    png_check::assert_png_beside(&sweep.join("front.svg"), 8);
    let report = std::fs::read_to_string(sweep.join("report.md")).unwrap();
    assert!(
        report.contains("6 finished runs in 3 configurations"),
        "{report}"
    );

    // Again: nothing is trained, no run directory appears or changes.
    let before: Vec<_> = run_dirs(sweep)
        .into_iter()
        .map(|d| {
            (
                d.clone(),
                std::fs::metadata(d.join("summary.json"))
                    .unwrap()
                    .modified()
                    .unwrap(),
            )
        })
        .collect();
    let parent = sweep.parent().unwrap();
    let out = fairrep(parent, &["sweep", "quick.toml", "--out", "sweep"]);
    ok(&out);
    let err = stderr(&out);
    assert_eq!(err.matches("finished before, skipped").count(), 6, "{err}");
    assert!(
        !err.contains(": trained") && !err.contains("resumed"),
        "{err}"
    );
    let after: Vec<_> = run_dirs(sweep)
        .into_iter()
        .map(|d| {
            (
                d.clone(),
                std::fs::metadata(d.join("summary.json"))
                    .unwrap()
                    .modified()
                    .unwrap(),
            )
        })
        .collect();
    assert_eq!(before, after);
    assert_same_rows(rows, &read_rows(sweep));
}

#[test]
fn shards_collected_give_the_rows_of_the_unsharded_sweep() {
    let (_, rows) = reference();
    let dir = scratch("shards");
    let file = write_sweep(&dir);
    let out = fairrep(
        &dir,
        &[
            "sweep",
            file.to_str().unwrap(),
            "--out",
            "sweep",
            "--shard",
            "0/2",
        ],
    );
    ok(&out);
    assert!(stderr(&out).contains("shard 0/2 has 3"), "{}", stderr(&out));
    // Shard 1 from a Slurm array's environment.
    let out = fairrep_cmd(&dir, &["sweep", file.to_str().unwrap(), "--out", "sweep"])
        .env("SLURM_ARRAY_TASK_ID", "1")
        .env("SLURM_ARRAY_TASK_COUNT", "2")
        .output()
        .unwrap();
    ok(&out);
    assert!(stderr(&out).contains("shard 1/2 has 3"), "{}", stderr(&out));
    let out = fairrep(&dir, &["sweep", "collect", "sweep"]);
    ok(&out);
    assert_same_rows(rows, &read_rows(&dir.join("sweep")));
    assert!(dir.join("sweep/front.svg").exists());
    png_check::assert_png_beside(&dir.join("sweep/front.svg"), 8);
}

#[test]
fn a_killed_sweep_loses_no_finished_run_and_a_rerun_completes_it() {
    let (_, rows) = reference();
    let dir = scratch("killed");
    let file = write_sweep(&dir);
    let mut child = {
        use std::os::unix::process::CommandExt;
        fairrep_cmd(&dir, &["sweep", file.to_str().unwrap(), "--out", "sweep"])
            .process_group(0)
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap()
    };
    // Kill the sweep and its trainer (the process group, as Ctrl-C or a scheduler does) once
    // one run has finished and another has a checkpoint but no summary.
    let sweep = dir.join("sweep");
    let start = Instant::now();
    let mid_run = |sweep: &Path| {
        if !sweep.join("runs").exists() {
            return false;
        }
        let dirs = run_dirs(sweep);
        let finished = dirs
            .iter()
            .filter(|d| d.join("summary.json").exists())
            .count();
        let started = dirs
            .iter()
            .any(|d| d.join("latest").exists() && !d.join("summary.json").exists());
        finished >= 1 && started
    };
    while !mid_run(&sweep) {
        assert!(
            start.elapsed() < Duration::from_secs(300),
            "the sweep never got mid-way"
        );
        assert!(
            child.try_wait().unwrap().is_none(),
            "the sweep ended before it was killed"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    // `--` so that the negative id is read as a process group, not an option.
    let pgid = child.id();
    assert!(pgid > 1, "a process group of its own");
    let status = Command::new("kill")
        .args(["-s", "KILL", "--", &format!("-{pgid}")])
        .status()
        .unwrap();
    assert!(status.success());
    let _ = child.wait();
    let finished_before: Vec<PathBuf> = run_dirs(&sweep)
        .into_iter()
        .filter(|d| d.join("summary.json").exists())
        .collect();
    assert!(finished_before.len() < 6);
    let out = fairrep(&dir, &["sweep", "quick.toml", "--out", "sweep"]);
    ok(&out);
    let err = stderr(&out);
    assert!(
        err.contains("resumed and finished"),
        "the interrupted run is resumed: {err}"
    );
    // The runs finished before the kill were kept, not trained again.
    for d in &finished_before {
        assert!(d.join("summary.json").exists(), "{} lost", d.display());
    }
    assert_eq!(run_dirs(&sweep).len(), 6, "one run directory per run");
    assert_same_rows(rows, &read_rows(&sweep));
}

#[test]
fn bad_sweep_input_is_refused_with_a_clear_error() {
    let dir = scratch("bad");
    let file = write_sweep(&dir);
    let f = file.to_str().unwrap();
    for (args, wanted) in [
        (
            vec!["sweep", f, "--shard", "2/2"],
            "the shard index must be in 0..2",
        ),
        (vec!["sweep", f, "--shard", "0/0"], "at least 1, found 0"),
    ] {
        let out = fairrep(&dir, &args);
        assert_eq!(out.status.code(), Some(1), "{args:?}");
        assert!(stderr(&out).contains(wanted), "{args:?}: {}", stderr(&out));
    }
    let out = fairrep_cmd(&dir, &["sweep", f])
        .env("SLURM_ARRAY_TASK_ID", "5")
        .env("SLURM_ARRAY_TASK_COUNT", "2")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("Slurm array"), "{}", stderr(&out));
    std::fs::write(
        dir.join("unknown.toml"),
        std::fs::read_to_string(&file)
            .unwrap()
            .replace("penalty.lambda", "penalty.lambada"),
    )
    .unwrap();
    let out = fairrep(&dir, &["sweep", "unknown.toml"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("lambada"), "{}", stderr(&out));
    // Two sweeps into one directory: the second is refused before it trains.
    let out = fairrep(&dir, &["sweep", f, "--out", "one", "--emit", "slurm"]);
    ok(&out);
    std::fs::write(
        dir.join("other.toml"),
        std::fs::read_to_string(&file)
            .unwrap()
            .replace("[0, 1]", "[0, 2]"),
    )
    .unwrap();
    let out = fairrep(&dir, &["sweep", "other.toml", "--out", "one"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("already holds another sweep"),
        "{}",
        stderr(&out)
    );
}

/// Stops the local cluster when the test ends, however it ends.
struct Cluster(PathBuf);

impl Drop for Cluster {
    fn drop(&mut self) {
        let _ = Command::new(script()).arg("stop").arg(&self.0).status();
    }
}

fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../scripts/slurm/local_cluster.sh")
}

#[test]
fn a_slurm_array_of_the_sweep_gives_the_rows_of_a_local_run() {
    let required = std::env::var("FAIRREP_REQUIRE_SLURM").is_ok_and(|v| v == "1");
    let have = ["sbatch", "slurmctld", "slurmd", "munged"]
        .iter()
        .all(|tool| {
            Command::new("sh")
                .args(["-c", &format!("command -v {tool}")])
                .output()
                .is_ok_and(|o| o.status.success())
        });
    let root = Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| o.stdout == b"0\n");
    if !(have && root) {
        assert!(
            !required,
            "FAIRREP_REQUIRE_SLURM=1 but Slurm or munge is missing, or not root"
        );
        eprintln!(
            "skipping the Slurm test: needs root and slurm-wlm + munge (apt-get install slurm-wlm munge)"
        );
        return;
    }
    let (_, rows) = reference();
    let dir = scratch("slurm");
    let cluster_dir = dir.join("cluster");
    let start = Command::new(script())
        .arg("start")
        .arg(&cluster_dir)
        .output()
        .unwrap();
    let _cluster = Cluster(cluster_dir.clone());
    assert!(
        start.status.success(),
        "the local cluster did not start: {}",
        stderr(&start)
    );
    let conf = cluster_dir.join("slurm.conf");
    let file = write_sweep(&dir);
    let out = fairrep(
        &dir,
        &[
            "sweep",
            file.to_str().unwrap(),
            "--out",
            "sweep",
            "--emit",
            "slurm",
            "--parallel",
            "2",
        ],
    );
    ok(&out);
    let script_path = String::from_utf8(out.stdout).unwrap().trim().to_string();
    let text = std::fs::read_to_string(&script_path).unwrap();
    assert!(text.contains("#SBATCH --array=0-5%2"), "{text}");
    let submit = Command::new("timeout")
        .args(["600", "sbatch", "--wait", &script_path])
        .env("SLURM_CONF", &conf)
        .current_dir(&dir)
        .output()
        .unwrap();
    assert!(
        submit.status.success(),
        "sbatch --wait failed: {}{}",
        String::from_utf8_lossy(&submit.stdout),
        stderr(&submit)
    );
    let logs: Vec<_> = std::fs::read_dir(dir.join("sweep/logs")).unwrap().collect();
    assert_eq!(logs.len(), 6, "one log per array task, one task per run");
    let out = fairrep(&dir, &["sweep", "collect", "sweep"]);
    ok(&out);
    assert_same_rows(rows, &read_rows(&dir.join("sweep")));
}
