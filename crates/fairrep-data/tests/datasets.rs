//! Loads every real spec in `datasets/` and checks row counts, encoding and error messages.
//!
//! Data directory: `FAIRREP_DATA_DIR`, else `../../../shared/datasets` relative to this crate.
//! A test whose dataset is absent there is skipped with a printed reason, unless
//! `FAIRREP_REQUIRE_DATA=1` (set by `.ci/run` where the data exists), which makes it a failure.
#![allow(clippy::print_stderr)]

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

use fairrep_data::{
    ColumnKind, DataError, Dataset, Encoding, LoadOptions, Split, apply_preprocessing, load,
    parse_spec, resolve_spec,
};

fn data_dir() -> PathBuf {
    std::env::var_os("FAIRREP_DATA_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/datasets"))
}

/// Whether the folder `sub` of the data directory exists; when it does not, the test is
/// skipped with a printed reason (a failure under `FAIRREP_REQUIRE_DATA=1`).
fn have_data(sub: &str) -> bool {
    let dir = data_dir().join(sub);
    if dir.is_dir() {
        return true;
    }
    let required = std::env::var("FAIRREP_REQUIRE_DATA").is_ok_and(|v| v == "1");
    assert!(
        !required,
        "FAIRREP_REQUIRE_DATA=1 but `{}` does not exist; set FAIRREP_DATA_DIR",
        dir.display()
    );
    eprintln!(
        "skipped: `{}` does not exist (set FAIRREP_DATA_DIR to the datasets folder; \
         FAIRREP_REQUIRE_DATA=1 makes this a failure)",
        dir.display()
    );
    false
}

fn specs_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../datasets")
}

fn opts(tasks: Option<&[&str]>, aware: bool) -> LoadOptions {
    LoadOptions {
        data_dir: data_dir(),
        tasks: tasks.map(|t| t.iter().map(|s| s.to_string()).collect()),
        aware,
        split_seed: 0,
        split: None,
        held_out: Vec::new(),
        attributes: Vec::new(),
    }
}

fn load_named(name: &str, o: &LoadOptions) -> Dataset {
    let spec = resolve_spec(name, &specs_dir()).unwrap_or_else(|e| panic!("{e}"));
    load(&spec, o, Encoding::Fit).unwrap_or_else(|e| panic!("{e}"))
}

/// Shape, finiteness, group coverage, targets, and train-split standardisation.
fn check_common(ds: &Dataset) {
    let d = ds.n_features();
    for s in [&ds.train, &ds.valid, &ds.test] {
        assert_eq!(s.x.cols, d);
        assert_eq!(s.x.values.len(), s.len() * d);
        assert!(
            s.x.values.iter().all(|v| v.is_finite()),
            "non-finite feature in {}",
            ds.name
        );
        assert_eq!(s.targets.len(), ds.schema.tasks.len());
        for t in &s.targets {
            assert_eq!(t.len(), s.len());
            assert!(t.iter().all(|&v| v == 0.0 || v == 1.0));
        }
        assert!(s.group_counts(ds.n_groups()).iter().all(|&c| c > 0));
    }
    let tr: &Split = &ds.train;
    for (j, inp) in ds.schema.inputs.iter().enumerate() {
        if inp.kind != ColumnKind::Numeric {
            continue;
        }
        // Numeric columns come first, in schema order.
        let col: Vec<f64> = (0..tr.len()).map(|i| f64::from(tr.x.row(i)[j])).collect();
        let mean = col.iter().sum::<f64>() / tr.len() as f64;
        let std = (col.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / tr.len() as f64).sqrt();
        assert!(
            mean.abs() < 1e-4,
            "{}: mean of {} = {mean}",
            ds.name,
            inp.column
        );
        assert!(
            (std - 1.0).abs() < 1e-4,
            "{}: std of {} = {std}",
            ds.name,
            inp.column
        );
    }
    // Every one-hot feature is 0/1.
    let n_num = ds.preprocessing.numeric.len();
    assert!(
        tr.x.values
            .chunks(d)
            .all(|r| r[n_num..].iter().all(|&v| v == 0.0 || v == 1.0))
    );
}

fn has_column(ds: &Dataset, col: &str) -> bool {
    ds.schema.inputs.iter().any(|i| i.column == col)
}

#[test]
fn adult_counts_and_columns() {
    if !have_data("adult") {
        return;
    }
    let ds = load_named("adult", &opts(None, false));
    check_common(&ds);
    assert_eq!(ds.train.len() + ds.valid.len(), 30_162);
    assert_eq!(ds.test.len(), 15_060);
    assert!((ds.valid.len() as f64 / 30_162.0 - 0.2).abs() < 0.002);
    assert_eq!(ds.schema.groups, vec!["Female", "Male"]);
    assert_eq!(
        ds.task_names(),
        vec![
            "income",
            "hours_gt_40",
            "married",
            "capital_gain_pos",
            "professional"
        ]
    );
    for c in [
        "sex",
        "hours-per-week",
        "marital-status",
        "capital-gain",
        "occupation",
        "income",
        "fnlwgt",
        "education",
    ] {
        assert!(!has_column(&ds, c), "{c} must not be an input");
    }
    assert!(!ds.schema.features.iter().any(|f| f.starts_with("sex=")));
    // Known label balance: 7,508 of 30,162 train rows and 3,700 of 15,060 test rows are >50K.
    let pos: f32 = ds.train.targets[0].iter().chain(&ds.valid.targets[0]).sum();
    assert_eq!(pos, 7_508.0);
    assert_eq!(ds.test.targets[0].iter().sum::<f32>(), 3_700.0);

    // Income only: the standard feature set (5 numeric + one-hot), aware adds sex.
    let inc = load_named("adult", &opts(Some(&["income"]), false));
    check_common(&inc);
    assert_eq!(inc.preprocessing.numeric.len(), 5);
    assert!(has_column(&inc, "occupation") && !has_column(&inc, "sex"));
    // 5 numeric + workclass 7, marital-status 7, occupation 14, relationship 6, race 5 and
    // the native countries seen in the train split (40 or 41).
    assert!(
        (83..=84).contains(&inc.n_features()),
        "{}",
        inc.n_features()
    );
    let aware = load_named("adult", &opts(Some(&["income"]), true));
    assert!(aware.schema.features.contains(&"sex=Female".to_string()));
    assert_eq!(aware.n_features(), inc.n_features() + 2);
    // Same seed, same split; the test split never depends on the seed.
    assert_eq!(
        inc.train.groups,
        load_named("adult", &opts(Some(&["income"]), false))
            .train
            .groups
    );

    // A saved schema + preprocessing reproduces the encoding, also through apply_preprocessing.
    let spec = resolve_spec("adult", &specs_dir()).unwrap();
    let again = load(
        &spec,
        &opts(Some(&["income"]), false),
        Encoding::Resume(&inc.schema, &inc.preprocessing),
    )
    .unwrap();
    assert_eq!(again, inc);
    let header: Vec<String> = [
        "age",
        "workclass",
        "education-num",
        "marital-status",
        "occupation",
        "relationship",
        "race",
        "capital-gain",
        "capital-loss",
        "hours-per-week",
        "native-country",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let row = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    // Line 2 of adult.test (after skipping line 1): 25, Private, 11th, 7, Never-married, ...
    let rows = vec![row(&[
        "25",
        "Private",
        "7",
        "Never-married",
        "Machine-op-inspct",
        "Own-child",
        "Black",
        "0",
        "0",
        "40",
        "United-States",
    ])];
    let x = apply_preprocessing(
        &inc.schema,
        &inc.preprocessing,
        &header,
        &rows,
        Path::new("adult/adult.test"),
    )
    .unwrap();
    assert_eq!(&x[..], inc.test.x.row(0));
    // Unseen category -> all-zero block.
    let rows = vec![row(&[
        "25",
        "Unseen-class",
        "7",
        "Never-married",
        "Machine-op-inspct",
        "Own-child",
        "Black",
        "0",
        "0",
        "40",
        "United-States",
    ])];
    let x = apply_preprocessing(
        &inc.schema,
        &inc.preprocessing,
        &header,
        &rows,
        Path::new("mem"),
    )
    .unwrap();
    let wc: Vec<f32> = inc
        .schema
        .features
        .iter()
        .zip(&x)
        .filter(|(f, _)| f.starts_with("workclass="))
        .map(|(_, v)| *v)
        .collect();
    assert!(wc.len() > 3 && wc.iter().all(|&v| v == 0.0));
    let rows = vec![row(&[
        "old",
        "Private",
        "7",
        "Never-married",
        "Machine-op-inspct",
        "Own-child",
        "Black",
        "0",
        "0",
        "40",
        "United-States",
    ])];
    let e = apply_preprocessing(
        &inc.schema,
        &inc.preprocessing,
        &header,
        &rows,
        Path::new("mem"),
    )
    .unwrap_err()
    .to_string();
    assert!(
        e.contains("line 1") && e.contains("`age`") && e.contains("`old`"),
        "{e}"
    );
}

#[test]
fn compas_counts() {
    if !have_data("compas") {
        return;
    }
    let ds = load_named("compas", &opts(None, false));
    check_common(&ds);
    assert_eq!(ds.train.len() + ds.valid.len() + ds.test.len(), 5_278);
    assert_eq!(ds.schema.groups, vec!["African-American", "Caucasian"]);
    assert!(!has_column(&ds, "race") && !has_column(&ds, "two_year_recid"));
    // 5 numeric + sex (2) + c_charge_degree (F, M).
    assert_eq!(ds.n_features(), 9);
    assert!((ds.train.len() as f64 / 5_278.0 - 0.7).abs() < 0.002);
    let aware = load_named("compas", &opts(None, true));
    assert_eq!(aware.n_features(), 11);
    // A different split seed gives a different split of the same rows.
    let other = load_named(
        "compas",
        &LoadOptions {
            split_seed: 1,
            ..opts(None, false)
        },
    );
    assert_eq!(
        other.train.len() + other.valid.len() + other.test.len(),
        5_278
    );
    assert_ne!(other.train.x, ds.train.x);
}

#[test]
fn german_counts() {
    if !have_data("german_credit") {
        return;
    }
    let ds = load_named("german_credit", &opts(None, false));
    check_common(&ds);
    assert_eq!(ds.train.len() + ds.valid.len() + ds.test.len(), 1_000);
    let ge25: usize = [&ds.train, &ds.valid, &ds.test]
        .iter()
        .map(|s| s.group_counts(2)[1])
        .sum();
    assert_eq!(ge25, 851);
    let good: f32 = [&ds.train, &ds.valid, &ds.test]
        .iter()
        .map(|s| s.targets[0].iter().sum::<f32>())
        .sum();
    assert_eq!(good, 700.0);
    assert!(!has_column(&ds, "age") && !has_column(&ds, "credit"));
    assert_eq!(ds.preprocessing.numeric.len(), 6);
}

#[test]
fn celeba_partition() {
    if !have_data("celeba") {
        return;
    }
    let ds = load_named("celeba", &opts(None, false));
    check_common(&ds);
    assert_eq!(
        (ds.train.len(), ds.valid.len(), ds.test.len()),
        (162_770, 19_867, 19_962)
    );
    assert_eq!(ds.task_names().len(), 10);
    assert_eq!(ds.n_features(), 29);
    assert!(!has_column(&ds, "Male") && !has_column(&ds, "Smiling"));
    let male: usize = [&ds.train, &ds.valid, &ds.test]
        .iter()
        .map(|s| s.group_counts(2)[1])
        .sum();
    assert_eq!(male, 84_434);
    // Labels -1 -> 0: 48.2% of train faces are smiling.
    let smiling = ds.train.targets[0].iter().sum::<f32>() / ds.train.len() as f32;
    assert!((smiling - 0.48).abs() < 0.01, "{smiling}");
}

#[test]
fn acs_income_counts() {
    if !have_data("acs_pums_alabama_2017") {
        return;
    }
    let ds = load_named("acs_income", &opts(None, false));
    check_common(&ds);
    assert_eq!(ds.train.len() + ds.valid.len() + ds.test.len(), 2_321);
    assert_eq!(
        ds.task_names(),
        vec!["income", "employed", "public_coverage", "same_house"]
    );
    let all = |s: &Dataset, t: usize| -> f32 {
        [&s.train, &s.valid, &s.test]
            .iter()
            .map(|x| x.targets[t].iter().sum::<f32>())
            .sum()
    };
    // 30.6% of 2,321 have PINCP > 50000.
    assert_eq!(all(&ds, 0), 710.0);
    let female: usize = [&ds.train, &ds.valid, &ds.test]
        .iter()
        .map(|s| s.group_counts(2)[0])
        .sum();
    assert_eq!(female, 1_108);
    assert!(!has_column(&ds, "SEX") && !has_column(&ds, "PINCP") && !has_column(&ds, "ESR"));
}

// ---------------------------------------------------------------- bad inputs

static COUNTER: AtomicUsize = AtomicUsize::new(0);

/// A fresh temp folder with the given files.
fn temp_dir_with(files: &[(&str, &str)]) -> PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "fairrep-data-test-{}-{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::SeqCst)
    ));
    std::fs::create_dir_all(&dir).unwrap();
    for (name, text) in files {
        std::fs::write(dir.join(name), text).unwrap();
    }
    dir
}

const TINY_SPEC: &str = r#"
name = "tiny"
[files]
train = { path = "tiny.csv" }
[format]
missing = ["?"]
[inputs]
numeric = ["a"]
categorical = ["c"]
[sensitive]
column = "s"
groups = [{ name = "F", values = ["F"] }, { name = "M", values = ["M"] }]
[[tasks]]
name = "y"
column = "y"
op = "=="
value = 1
[split]
kind = "random"
fractions = { train = 0.5, valid = 0.25, test = 0.25 }
"#;

fn tiny_csv(cell: &str) -> String {
    let mut s = String::from("a,c,s,y\n");
    for i in 0..16 {
        let a = if i == 5 {
            cell.to_string()
        } else {
            i.to_string()
        };
        s.push_str(&format!(
            "{a},{},{},{}\n",
            if i % 3 == 0 { "u" } else { "v" },
            if i % 2 == 0 { "F" } else { "M" },
            i % 4 / 2
        ));
    }
    s
}

fn load_tiny(spec_text: &str, csv: &str) -> Result<Dataset, DataError> {
    let dir = temp_dir_with(&[("tiny.csv", csv), ("tiny.toml", spec_text)]);
    let spec = fairrep_data::load_spec(&dir.join("tiny.toml"))?;
    load(
        &spec,
        &LoadOptions {
            data_dir: dir,
            ..LoadOptions::default()
        },
        Encoding::Fit,
    )
}

#[test]
fn tiny_spec_loads() {
    let ds = load_tiny(TINY_SPEC, &tiny_csv("?")).unwrap();
    // Row with `?` dropped.
    assert_eq!(ds.train.len() + ds.valid.len() + ds.test.len(), 15);
    assert_eq!(ds.schema.features, vec!["a", "c=u", "c=v"]);
}

#[test]
fn task_columns_leave_the_inputs() {
    // Task on the numeric input `a`: with "selected" it leaves the inputs only when loaded.
    let spec = TINY_SPEC.to_string()
        + "[[tasks]]\nname = \"a_big\"\ncolumn = \"a\"\nop = \">\"\nvalue = 7\n";
    let dir = temp_dir_with(&[("tiny.csv", &tiny_csv("1")), ("tiny.toml", &spec)]);
    let s = fairrep_data::load_spec(&dir.join("tiny.toml")).unwrap();
    let o = |tasks: &[&str], aware: bool| LoadOptions {
        data_dir: dir.clone(),
        tasks: Some(tasks.iter().map(|t| t.to_string()).collect()),
        aware,
        ..LoadOptions::default()
    };
    assert_eq!(
        load(&s, &o(&["y"], false), Encoding::Fit)
            .unwrap()
            .schema
            .features,
        vec!["a", "c=u", "c=v"]
    );
    assert_eq!(
        load(&s, &o(&["y", "a_big"], false), Encoding::Fit)
            .unwrap()
            .schema
            .features,
        vec!["c=u", "c=v"]
    );
    assert_eq!(
        load(&s, &o(&["a_big"], true), Encoding::Fit)
            .unwrap()
            .schema
            .features,
        vec!["a", "c=u", "c=v"]
    );
    // "all": the feature set does not depend on the task selection.
    let s_all = parse_spec(
        &spec.replace(
            "categorical = [\"c\"]",
            "categorical = [\"c\"]\nexclude_task_columns = \"all\"",
        ),
        Path::new("t.toml"),
    )
    .unwrap();
    assert_eq!(
        load(&s_all, &o(&["y"], false), Encoding::Fit)
            .unwrap()
            .schema
            .features,
        vec!["c=u", "c=v"]
    );
    // The task order follows the request.
    let ds = load(&s, &o(&["a_big", "y"], false), Encoding::Fit).unwrap();
    assert_eq!(ds.task_names(), vec!["a_big", "y"]);
}

#[test]
fn malformed_toml_names_file_and_line() {
    let dir = temp_dir_with(&[("bad.toml", "name = \"x\"\n[files\ntrain = 1\n")]);
    let e = fairrep_data::load_spec(&dir.join("bad.toml"))
        .unwrap_err()
        .to_string();
    assert!(e.contains("bad.toml") && e.contains("line 2"), "{e}");
}

#[test]
fn unknown_key_is_rejected() {
    let text = TINY_SPEC.replace("[inputs]\n", "[inputs]\nnumerc = [\"a\"]\n");
    let e = parse_spec(&text, Path::new("specs/tiny.toml"))
        .unwrap_err()
        .to_string();
    assert!(e.contains("specs/tiny.toml") && e.contains("numerc"), "{e}");
}

#[test]
fn invalid_spec_names_key() {
    let text = TINY_SPEC
        .replace("op = \"==\"", "op = \">\"")
        .replace("value = 1\n", "value = \"x\"\n");
    let e = parse_spec(&text, Path::new("t.toml"))
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("tasks[0].value") && e.contains("finite number"),
        "{e}"
    );
}

#[test]
fn missing_column_lists_columns() {
    let e = load_tiny(
        &TINY_SPEC.replace("categorical = [\"c\"]", "categorical = [\"colour\"]"),
        &tiny_csv("1"),
    )
    .unwrap_err()
    .to_string();
    assert!(
        e.contains("tiny.csv") && e.contains("`colour`") && e.contains("a, c, s, y"),
        "{e}"
    );
}

#[test]
fn non_numeric_and_nan_cells_name_line_and_column() {
    let e = load_tiny(TINY_SPEC, &tiny_csv("abc"))
        .unwrap_err()
        .to_string();
    // Row i = 5 is on line 7 (header is line 1).
    assert!(
        e.contains("tiny.csv") && e.contains("line 7") && e.contains("`a`") && e.contains("`abc`"),
        "{e}"
    );
    let e = load_tiny(TINY_SPEC, &tiny_csv("NaN"))
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("line 7") && e.contains("finite number") && e.contains("`NaN`"),
        "{e}"
    );
    let e = load_tiny(TINY_SPEC, &tiny_csv("inf"))
        .unwrap_err()
        .to_string();
    assert!(e.contains("line 7") && e.contains("`inf`"), "{e}");
}

#[test]
fn field_count_error() {
    let e = load_tiny(TINY_SPEC, "a,c,s,y\n1,u,F,1\n2,u,F\n")
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("line 3") && e.contains("expected 4 fields, found 3"),
        "{e}"
    );
}

#[test]
fn repeated_header_columns_must_agree() {
    // A repeated column holding the same values is read (as in the COMPAS file)...
    let same = tiny_csv("1").replacen("a,c,s,y", "a,c,s,y,a", 1);
    let same: String = same
        .lines()
        .enumerate()
        .map(|(i, l)| {
            if i == 0 {
                format!("{l}\n")
            } else {
                format!("{l},{}\n", l.split(',').next().unwrap())
            }
        })
        .collect();
    assert!(load_tiny(TINY_SPEC, &same).is_ok());
    // ... but copies that differ are ambiguous: an error naming the line and the column.
    let differ = same.replacen("\n3,u,M,1,3\n", "\n3,u,M,1,9\n", 1);
    assert_ne!(differ, same);
    let e = load_tiny(TINY_SPEC, &differ).unwrap_err().to_string();
    assert!(
        e.contains("line 5") && e.contains("column `a`") && e.contains("`3` and `9`"),
        "{e}"
    );
}

#[test]
fn duplicate_inputs_and_a_single_group_are_refused() {
    let dup = TINY_SPEC.replace("categorical = [\"c\"]", "categorical = [\"c\", \"c\"]");
    let e = load_tiny(&dup, &tiny_csv("1")).unwrap_err().to_string();
    assert!(e.contains("`c` twice"), "{e}");
    let one = TINY_SPEC.replace(
        "groups = [{ name = \"F\", values = [\"F\"] }, { name = \"M\", values = [\"M\"] }]",
        "groups = [{ name = \"F\", values = [\"F\", \"M\"] }]",
    );
    let e = load_tiny(&one, &tiny_csv("1")).unwrap_err().to_string();
    assert!(e.contains("at least two groups"), "{e}");
    // One listed group plus `other` for the rest is two groups, and loads.
    let other = TINY_SPEC.replace(
        "groups = [{ name = \"F\", values = [\"F\"] }, { name = \"M\", values = [\"M\"] }]",
        "groups = [{ name = \"F\", values = [\"F\"] }]\nunmatched = \"other\"",
    );
    let ds = load_tiny(&other, &tiny_csv("1")).unwrap();
    assert_eq!(ds.schema.groups, vec!["F", "other"]);
}

#[test]
fn empty_group_is_an_error() {
    let csv = tiny_csv("1").replace(",M,", ",F,");
    let e = load_tiny(TINY_SPEC, &csv).unwrap_err().to_string();
    assert!(
        e.contains("group `M`") && e.contains("filtered data"),
        "{e}"
    );
    // Unmatched values are an error by default, naming line and value.
    let csv = tiny_csv("1").replacen(",M,", ",X,", 1);
    let e = load_tiny(TINY_SPEC, &csv).unwrap_err().to_string();
    assert!(
        e.contains("line 3") && e.contains("`s`") && e.contains("`X`"),
        "{e}"
    );
    // ... or an extra group.
    let spec = TINY_SPEC.replace(
        "column = \"s\"\n",
        "column = \"s\"\nunmatched = \"other\"\n",
    );
    let csv = tiny_csv("1").replace(",M,", ",X,");
    let e = load_tiny(&spec, &csv).unwrap_err().to_string();
    assert!(e.contains("group `M`"), "{e}");
}

#[test]
fn group_missing_from_a_split_is_an_error() {
    // Only one M row: it cannot be in train, valid and test.
    let mut csv = String::from("a,c,s,y\n");
    for i in 0..12 {
        csv.push_str(&format!("{i},u,{},0\n", if i == 0 { "M" } else { "F" }));
    }
    let e = load_tiny(TINY_SPEC, &csv).unwrap_err().to_string();
    assert!(
        e.contains("group `M`") && e.contains("split") && e.contains("M: 0"),
        "{e}"
    );
}

#[test]
fn missing_file_suggests_data_dir() {
    let spec = resolve_spec("compas", &specs_dir()).unwrap();
    let e = load(
        &spec,
        &LoadOptions {
            data_dir: PathBuf::from("/nonexistent/data"),
            ..LoadOptions::default()
        },
        Encoding::Fit,
    )
    .unwrap_err()
    .to_string();
    assert!(
        e.contains("/nonexistent/data/compas/compas-scores-two-years.csv"),
        "{e}"
    );
    assert!(
        e.contains("--data-dir")
            && e.contains("FAIRREP_DATA_DIR")
            && e.contains("download_datasets.sh"),
        "{e}"
    );
    let e = resolve_spec("no_such_dataset", &specs_dir())
        .unwrap_err()
        .to_string();
    assert!(e.contains("no_such_dataset.toml"), "{e}");
}

#[test]
fn unknown_task_lists_tasks() {
    let spec = resolve_spec("compas", &specs_dir()).unwrap();
    let e = load(&spec, &opts(Some(&["recid"]), false), Encoding::Fit)
        .unwrap_err()
        .to_string();
    assert!(e.contains("`recid`") && e.contains("two_year_recid"), "{e}");
}

#[test]
fn gzip_is_read_transparently() {
    use std::io::Write;
    let dir = temp_dir_with(&[("tiny.toml", &TINY_SPEC.replace("tiny.csv", "tiny.csv.gz"))]);
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    gz.write_all(tiny_csv("1").as_bytes()).unwrap();
    std::fs::write(dir.join("tiny.csv.gz"), gz.finish().unwrap()).unwrap();
    let spec = fairrep_data::load_spec(&dir.join("tiny.toml")).unwrap();
    let ds = load(
        &spec,
        &LoadOptions {
            data_dir: dir,
            ..LoadOptions::default()
        },
        Encoding::Fit,
    )
    .unwrap();
    assert_eq!(ds.train.len() + ds.valid.len() + ds.test.len(), 16);
}

#[test]
fn held_out_tasks_leave_the_inputs_and_transfer_keeps_the_saved_encoding() {
    let spec = TINY_SPEC.to_string()
        + "[[tasks]]\nname = \"a_big\"\ncolumn = \"a\"\nop = \">\"\nvalue = 7\n";
    let dir = temp_dir_with(&[("tiny.csv", &tiny_csv("1")), ("tiny.toml", &spec)]);
    let s = fairrep_data::load_spec(&dir.join("tiny.toml")).unwrap();
    let o = |tasks: &[&str], held_out: &[&str]| LoadOptions {
        data_dir: dir.clone(),
        tasks: Some(tasks.iter().map(|t| t.to_string()).collect()),
        held_out: held_out.iter().map(|t| t.to_string()).collect(),
        ..LoadOptions::default()
    };
    // Holding `a_big` out removes its column `a` while training on `y` only.
    let trained = load(&s, &o(&["y"], &["a_big"]), Encoding::Fit).unwrap();
    assert_eq!(trained.schema.features, vec!["c=u", "c=v"]);
    assert_eq!(trained.task_names(), vec!["y"]);
    // A held-out task cannot also be trained on, and must exist.
    let e = load(&s, &o(&["y", "a_big"], &["a_big"]), Encoding::Fit)
        .unwrap_err()
        .to_string();
    assert!(e.contains("`a_big` in both lists"), "{e}");
    let e = load(&s, &o(&["y"], &["nope"]), Encoding::Fit)
        .unwrap_err()
        .to_string();
    assert!(e.contains("nope"), "{e}");

    // Transfer: the held-out task with the trained schema's inputs and encoding.
    let moved = load(
        &s,
        &o(&["a_big"], &[]),
        Encoding::Transfer(&trained.schema, &trained.preprocessing),
    )
    .unwrap();
    assert_eq!(moved.schema.features, trained.schema.features);
    assert_eq!(moved.task_names(), vec!["a_big"]);
    assert_eq!(moved.train.x, trained.train.x);
    assert_eq!(moved.test.groups, trained.test.groups);
    // The label really is `a > 7` (rows keep their file order inside each split).
    let n_pos: f32 = [&moved.train, &moved.valid, &moved.test]
        .iter()
        .map(|sp| sp.targets[0].iter().sum::<f32>())
        .sum();
    assert_eq!(n_pos, 8.0);

    // A schema whose input columns differ is refused, naming what differs.
    let mut other = trained.schema.clone();
    other.inputs[0].column = "b".into();
    let e = load(
        &s,
        &o(&["a_big"], &[]),
        Encoding::Transfer(&other, &trained.preprocessing),
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("missing column `b`"), "{e}");
    let mut groups = trained.schema.clone();
    groups.groups = vec!["X".into(), "Y".into()];
    let e = load(
        &s,
        &o(&["a_big"], &[]),
        Encoding::Transfer(&groups, &trained.preprocessing),
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("groups"), "{e}");
}
