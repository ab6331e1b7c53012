//! The sweep library without training: planning and its errors, shards, the sweep directory's
//! ownership, result files and their checks, fronts and the selection rules.
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use fairrep_sweep::front::{
    Unfairness, aggregate, analyse, best_with_dp_at_most, fairest_within, pareto_front,
};
use fairrep_sweep::results::{
    Row, collect, init_sweep_dir, read_result, write_result, write_results,
};
use fairrep_sweep::spec::{SelectSection, run_root};
use fairrep_sweep::{Shard, SweepError, SweepPlan};

fn scratch(name: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join("fairrep-sweep")
        .join(name);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

const BASE: &str = r#"
[data]
dataset = "synthetic"
[data.synthetic]
n_train = 200
n_valid = 100
n_test = 100
[penalty]
kind = "mmd"
[optim]
epochs = 2
"#;

/// Writes the base config and a sweep file with `body`; returns the sweep file.
fn sweep_file(dir: &Path, body: &str) -> PathBuf {
    std::fs::write(dir.join("base.toml"), BASE).unwrap();
    let path = dir.join("sweep.toml");
    std::fs::write(&path, format!("base = \"base.toml\"\n{body}")).unwrap();
    path
}

fn plan_err(name: &str, body: &str) -> String {
    let dir = scratch(name);
    let err = SweepPlan::load(&sweep_file(&dir, body), Some(&dir.join("out"))).unwrap_err();
    err.to_string()
}

#[test]
fn grid_times_seeds_gives_stable_distinct_ids() {
    let dir = scratch("grid");
    let file = sweep_file(
        &dir,
        "seeds = [0, 1]\n[axes]\n\"penalty.lambda\" = [0.0, 1.0, 10.0]\nmodel.latent = [4, 8]\n",
    );
    let plan = SweepPlan::load(&file, Some(&dir.join("out"))).unwrap();
    assert_eq!(plan.runs.len(), 12);
    assert_eq!(plan.keys, vec!["model.latent", "penalty.lambda"]);
    let mut ids: Vec<_> = plan.runs.iter().map(|r| r.id.clone()).collect();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), 12, "every run has its own id");
    // The two seeds of a configuration share its config id; configurations differ.
    assert_eq!(plan.runs[0].config_id, plan.runs[1].config_id);
    assert_ne!(plan.runs[0].config_id, plan.runs[2].config_id);
    assert_eq!(plan.runs[1].config.run.seed, 1);
    assert_eq!(plan.runs[0].config.penalty.lambda, 0.0);
    assert_eq!(plan.runs[0].config.model.latent, 4);
    assert_eq!(
        plan.runs[0].config.run.out_dir,
        run_root(&dir.join("out"), &plan.runs[0].id)
    );
    // Planning again, into another directory, gives the same ids (the ids do not depend on
    // where the runs are written).
    let again = SweepPlan::load(&file, Some(&dir.join("elsewhere"))).unwrap();
    let ids_again: Vec<_> = again.runs.iter().map(|r| r.id.clone()).collect();
    assert_eq!(
        ids_again,
        plan.runs.iter().map(|r| r.id.clone()).collect::<Vec<_>>()
    );
    assert_eq!(again.sweep_id, plan.sweep_id);
}

#[test]
fn random_samples_are_reproducible_and_in_range() {
    let dir = scratch("random");
    let file = sweep_file(
        &dir,
        "[random]\nsamples = 5\nseed = 3\nranges = { \"penalty.lambda\" = { min = 0.1, max = 100.0, log = true } }\n",
    );
    let a = SweepPlan::load(&file, Some(&dir.join("out"))).unwrap();
    let b = SweepPlan::load(&file, Some(&dir.join("out"))).unwrap();
    assert_eq!(a.runs.len(), 5);
    for (x, y) in a.runs.iter().zip(&b.runs) {
        assert_eq!(x.id, y.id);
        let l = x.config.penalty.lambda;
        assert!((0.1..=100.0).contains(&l), "lambda {l} outside its range");
    }
}

#[test]
fn bad_sweep_files_are_refused_with_the_key() {
    let e = plan_err("unknown", "[axes]\n\"penalty.lambada\" = [1.0]\n");
    assert!(e.contains("penalty.lambada"), "{e}");
    let e = plan_err("empty", "[axes]\n\"penalty.lambda\" = []\n");
    assert!(
        e.contains("axes.penalty.lambda") && e.contains("at least one value"),
        "{e}"
    );
    let e = plan_err("scalar", "[axes]\n\"penalty.lambda\" = 1.0\n");
    assert!(e.contains("a list of values"), "{e}");
    let e = plan_err("seeds", "seeds = []\n");
    assert!(
        e.contains("seeds") && e.contains("at least one seed"),
        "{e}"
    );
    let e = plan_err("reserved", "[axes]\n\"run.seed\" = [1, 2]\n");
    assert!(e.contains("run.seed") && e.contains("seeds"), "{e}");
    let e = plan_err(
        "twice",
        "[set]\n\"penalty.lambda\" = 1.0\n[axes]\n\"penalty.lambda\" = [2.0]\n",
    );
    assert!(e.contains("give each key once"), "{e}");
    let e = plan_err("badvalue", "[axes]\n\"penalty.lambda\" = [-1.0]\n");
    assert!(e.contains("penalty.lambda") && e.contains("-1"), "{e}");
    let e = plan_err("unknown-top", "axis = 3\n");
    assert!(e.contains("unknown field `axis`"), "{e}");
    let e = plan_err("dpmax", "[select]\ndp_max = [1.5]\n");
    assert!(e.contains("select.dp_max[0]"), "{e}");
    let e = plan_err(
        "range",
        "[random]\nsamples = 2\nranges = { \"penalty.lambda\" = { min = 0.0, max = 1.0, log = true } }\n",
    );
    assert!(e.contains("log range needs min > 0"), "{e}");
}

#[test]
fn shards_partition_the_runs_and_bad_shards_are_refused() {
    let dir = scratch("shards");
    let file = sweep_file(
        &dir,
        "seeds = [0, 1, 2]\n[axes]\n\"penalty.lambda\" = [0.0, 1.0]\n",
    );
    let plan = SweepPlan::load(&file, Some(&dir.join("out"))).unwrap();
    let mut seen: Vec<usize> = Vec::new();
    for i in 0..4 {
        seen.extend(
            plan.shard(Shard::new(i, 4).unwrap())
                .iter()
                .map(|r| r.index),
        );
    }
    seen.sort_unstable();
    assert_eq!(
        seen,
        (0..6).collect::<Vec<_>>(),
        "4 shards cover the 6 runs once each"
    );
    assert_eq!(Shard::parse("1/2").unwrap(), Shard::new(1, 2).unwrap());
    for (text, wanted) in [
        ("2/2", "0..2"),
        ("0/0", "at least 1"),
        ("a/2", "non-negative integer"),
        ("3", "expected I/N"),
    ] {
        let e = Shard::parse(text).unwrap_err().to_string();
        assert!(e.contains(wanted), "{text}: {e}");
    }
    assert_eq!(
        Shard::from_slurm_env(Some("3"), Some("4")).unwrap(),
        Some(Shard::new(3, 4).unwrap())
    );
    assert!(Shard::from_slurm_env(Some("4"), Some("4")).is_err());
    assert!(Shard::from_slurm_env(Some("1"), None).is_err());
    assert_eq!(Shard::from_slurm_env(None, None).unwrap(), None);
}

#[test]
fn a_directory_holds_one_sweep() {
    let dir = scratch("owner");
    let out = dir.join("out");
    let a = SweepPlan::load(
        &sweep_file(&dir, "[axes]\n\"penalty.lambda\" = [0.0, 1.0]\n"),
        Some(&out),
    )
    .unwrap();
    init_sweep_dir(&a).unwrap();
    init_sweep_dir(&a).unwrap(); // the same sweep again (a re-run, another shard) is fine
    let b = SweepPlan::load(
        &sweep_file(&dir, "[axes]\n\"penalty.lambda\" = [0.0, 2.0]\n"),
        Some(&out),
    )
    .unwrap();
    let e = init_sweep_dir(&b).unwrap_err();
    assert!(matches!(e, SweepError::AnotherSweep { .. }), "{e}");
    assert!(e.to_string().contains("already holds another sweep"), "{e}");
}

#[test]
fn edited_select_rules_replace_the_recorded_ones() {
    let dir = scratch("select-edit");
    let out = dir.join("out");
    let axes = "[axes]\n\"penalty.lambda\" = [0.0, 1.0]\n";
    let a = SweepPlan::load(&sweep_file(&dir, axes), Some(&out)).unwrap();
    init_sweep_dir(&a).unwrap();
    assert_eq!(collect(&out).unwrap().record.select, a.select);
    let b = SweepPlan::load(
        &sweep_file(
            &dir,
            &format!("{axes}[select]\ndp_max = [0.03]\naccuracy_delta = 0.02\n"),
        ),
        Some(&out),
    )
    .unwrap();
    assert_eq!(
        a.sweep_id, b.sweep_id,
        "select rules do not change the runs"
    );
    assert_ne!(a.select, b.select);
    init_sweep_dir(&b).unwrap();
    let record = collect(&out).unwrap().record;
    assert_eq!(record.select, b.select);
    assert_eq!(record.select.dp_max, vec![0.03]);
    assert_eq!(record.runs.len(), 2);
}

fn row(id: &str, config: &str, seed: u64, lambda: f64, acc: f64, dp: f64) -> Row {
    let mut metrics = BTreeMap::new();
    for split in ["valid", "test"] {
        metrics.insert(format!("{split}.y.accuracy"), acc);
        metrics.insert(format!("{split}.y.dp_gap"), dp);
        metrics.insert(format!("{split}.y.ks"), dp + 0.01);
    }
    Row {
        run_id: id.into(),
        config_id: config.into(),
        seed,
        params: [("penalty.lambda".to_string(), lambda.into())]
            .into_iter()
            .collect(),
        metrics,
        best_epoch: 1,
        epochs: 1,
        train_seconds: 1.0,
        wall_seconds: 1.0,
        device: "flex".into(),
        run_dir: PathBuf::from("x"),
    }
}

#[test]
fn result_files_edited_by_hand_or_moved_are_refused() {
    let dir = scratch("tamper");
    let r = row("abc", "c1", 0, 1.0, 0.8, 0.1);
    write_result(&dir, &r).unwrap();
    assert_eq!(read_result(&dir, "abc").unwrap(), Some(r.clone()));
    assert_eq!(read_result(&dir.join("none"), "abc").unwrap(), None);
    // Another run's file.
    let e = read_result(&dir, "def").unwrap_err().to_string();
    assert!(e.contains("holds run abc"), "{e}");
    // A hand edit of a number.
    let path = dir.join("result.json");
    let text = std::fs::read_to_string(&path).unwrap();
    assert!(text.contains("0.8"));
    std::fs::write(&path, text.replacen("0.8", "0.9", 1)).unwrap();
    let e = read_result(&dir, "abc").unwrap_err().to_string();
    assert!(
        e.contains("edited by hand") && e.contains("result.json"),
        "{e}"
    );
    std::fs::write(&path, "{").unwrap();
    let e = read_result(&dir, "abc").unwrap_err().to_string();
    assert!(e.contains("not a result record"), "{e}");
}

#[test]
fn collect_merges_rows_in_plan_order_and_lists_missing_runs() {
    let dir = scratch("collect");
    let out = dir.join("out");
    let plan = SweepPlan::load(
        &sweep_file(
            &dir,
            "seeds = [0, 1]\n[axes]\n\"penalty.lambda\" = [0.0, 1.0]\n",
        ),
        Some(&out),
    )
    .unwrap();
    init_sweep_dir(&plan).unwrap();
    // Finish runs 3 and 0 (in that order), as two shards would.
    for &i in &[3usize, 0] {
        let r = &plan.runs[i];
        let mut rw = row(
            &r.id,
            &r.config_id,
            r.seed,
            0.0,
            0.7 + i as f64 / 100.0,
            0.1,
        );
        rw.params = r
            .params
            .iter()
            .map(|(k, v)| (k.clone(), serde_json::to_value(v).unwrap()))
            .collect();
        let root = run_root(&out, &r.id);
        std::fs::create_dir_all(&root).unwrap();
        write_result(&root, &rw).unwrap();
    }
    let c = collect(&out).unwrap();
    let ids: Vec<_> = c.rows.iter().map(|r| r.run_id.clone()).collect();
    assert_eq!(ids, vec![plan.runs[0].id.clone(), plan.runs[3].id.clone()]);
    assert_eq!(
        c.missing,
        vec![plan.runs[1].id.clone(), plan.runs[2].id.clone()]
    );
    write_results(&out, &c.record.keys, &c.rows).unwrap();
    let csv = std::fs::read_to_string(out.join("results.csv")).unwrap();
    let mut lines = csv.lines();
    let header = lines.next().unwrap();
    assert!(
        header.starts_with("run_id,config_id,seed,penalty.lambda,valid.y.accuracy"),
        "{header}"
    );
    assert_eq!(lines.count(), 2);
    let jsonl = std::fs::read_to_string(out.join("results.jsonl")).unwrap();
    let first: serde_json::Value = serde_json::from_str(jsonl.lines().next().unwrap()).unwrap();
    assert_eq!(first["valid.y.accuracy"], 0.7);
    assert_eq!(first["penalty.lambda"], 0.0);
}

#[test]
fn fronts_and_rules_choose_on_validation_only() {
    // Configuration means (valid acc, valid dp): a (0.80, 0.20), b (0.78, 0.04),
    // c (0.70, 0.01), d (0.75, 0.05) -- d is dominated by b.
    let mut rows = Vec::new();
    for (c, lambda, acc, dp) in [
        ("a", 0.0, 0.80, 0.20),
        ("b", 1.0, 0.78, 0.04),
        ("c", 10.0, 0.70, 0.01),
        ("d", 3.0, 0.75, 0.05),
    ] {
        // Two seeds around the mean.
        rows.push(row(&format!("{c}0"), c, 0, lambda, acc - 0.01, dp));
        rows.push(row(&format!("{c}1"), c, 1, lambda, acc + 0.01, dp));
    }
    // The test split says the opposite of validation for b: it must not change the choice.
    for r in rows.iter_mut().filter(|r| r.config_id == "b") {
        r.metrics.insert("test.y.accuracy".into(), 0.1);
    }
    let points = aggregate(&rows, "y").unwrap();
    assert_eq!(points.len(), 4);
    assert!((points[0].valid_accuracy.mean - 0.80).abs() < 1e-12);
    // Two seeds at mean +- 0.01: sd = 0.01 * sqrt(2), CI = 12.706 * sd / sqrt(2) = 0.12706.
    assert!((points[0].valid_accuracy.ci95 - 0.12706).abs() < 1e-9);
    assert_eq!(pareto_front(&points, Unfairness::DpGap), vec![2, 1, 0]);
    assert_eq!(best_with_dp_at_most(&points, 0.05).chosen, Some(1));
    assert_eq!(best_with_dp_at_most(&points, 0.02).chosen, Some(2));
    assert_eq!(best_with_dp_at_most(&points, 0.005).chosen, None);
    assert_eq!(best_with_dp_at_most(&points, 1.0).chosen, Some(0));
    assert_eq!(fairest_within(&points, 0.03).chosen, Some(1));
    assert_eq!(fairest_within(&points, 0.0).chosen, Some(0));
    let a = analyse(&rows, &SelectSection::default()).unwrap();
    assert_eq!(a.task, "y");
    assert_eq!(a.choices.len(), 5);
    let e = analyse(
        &rows,
        &SelectSection {
            task: Some("z".into()),
            ..Default::default()
        },
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("`z`") && e.contains("\"y\""), "{e}");
    let svg = fairrep_sweep::plot::front_svg(&a);
    assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"));
    assert_eq!(
        svg.matches("<polyline").count(),
        2,
        "one front line per panel"
    );
    assert_front_png(&svg);
    let md = fairrep_sweep::report::markdown(&a, rows.len(), &[]);
    assert!(
        md.contains(
            "| highest validation accuracy with validation DP gap <= 0.05 | penalty.lambda = 1.0 |"
        ),
        "{md}"
    );
}

#[test]
fn every_shipped_sweep_plans() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../configs/sweeps");
    let out = scratch("shipped");
    let mut n = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "toml") {
            let plan = SweepPlan::load(&path, Some(&out))
                .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            assert!(!plan.runs.is_empty());
            n += 1;
        }
    }
    assert!(n >= 1, "no sweep in {}", dir.display());
}

/// Decodes a PNG into its size and RGBA pixels.
fn decode_png(bytes: &[u8]) -> (u32, u32, Vec<[u8; 4]>) {
    let mut reader = png::Decoder::new(std::io::Cursor::new(bytes))
        .read_info()
        .unwrap();
    let mut buf = vec![0; reader.output_buffer_size().unwrap()];
    let info = reader.next_frame(&mut buf).unwrap();
    assert_eq!(info.color_type, png::ColorType::Rgba);
    buf.truncate(info.buffer_size());
    let pixels = buf
        .chunks_exact(4)
        .map(|p| [p[0], p[1], p[2], p[3]])
        .collect();
    (info.width, info.height, pixels)
}

/// The front plot's PNG: twice the SVG's 920 x 344, the points (blue), the front (red) and
/// the rings of the chosen configurations (green) drawn, and the left panel's x label drawn
/// where the SVG puts it (centred at x = 253, baseline y = 312, 11 units high): that region
/// is blank once the SVG's text is removed.
fn assert_front_png(svg: &str) {
    let (width, height, pixels) = decode_png(&fairrep_train::raster::png_from_svg(svg).unwrap());
    assert_eq!((width, height), (1840, 688));
    for rgb in [[0x1f, 0x77, 0xb4], [0xd6, 0x27, 0x28], [0x2c, 0xa0, 0x2c]] {
        assert!(
            pixels.contains(&[rgb[0], rgb[1], rgb[2], 255]),
            "colour {rgb:?} not drawn"
        );
    }
    let inked = |pixels: &[[u8; 4]]| {
        (604..630)
            .flat_map(|y| (420..592).map(move |x| (x, y)))
            .filter(|&(x, y)| pixels[y * width as usize + x] != [255, 255, 255, 255])
            .count()
    };
    assert!(inked(&pixels) > 100, "the x label is not drawn");
    let bare: String = svg
        .lines()
        .filter(|l| !l.starts_with("<text"))
        .collect::<Vec<_>>()
        .join("\n");
    let (_, _, bare) = decode_png(&fairrep_train::raster::png_from_svg(&bare).unwrap());
    assert_eq!(inked(&bare), 0);
    assert_ne!(bare, pixels);
}
