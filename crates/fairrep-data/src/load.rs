//! Loading a dataset from its spec: filtering, group and target construction, splitting,
//! standardisation and one-hot encoding.
//!
//! Conventions (all documented here once):
//! - Standardisation statistics (mean, population standard deviation) come from the final
//!   train split only. A numeric column with zero variance in train gets std 1 (so it is only
//!   centred).
//! - Categories are the values seen in the train split, sorted. A value first seen in valid /
//!   test (or in a file passed to [`apply_preprocessing`]) encodes as an all-zero one-hot block.
//! - Without a validation split in the files (official train/test), validation is a
//!   stratified `valid_fraction` (default 0.2) of the train file, drawn with `split_seed`.
//! - Random splits default to 0.7 / 0.15 / 0.15. Every split is stratified by group and, when
//!   the first selected task is binary, by its label: inside each stratum the rows are
//!   shuffled (ChaCha8, `split_seed`) and cut at the rounded cumulative fractions.
//! - Rows keep their file order inside each split.
//! - Every group must have rows in every split, else [`DataError::EmptyGroup`].

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use rand::SeedableRng;
use rand::seq::SliceRandom;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use crate::error::DataError;
use crate::spec::{
    DEFAULT_VALID_FRACTION, DatasetSpec, ExcludeTaskColumns, Op, PredicateValue, Scalar, SplitKind,
    TaskKind, TaskSpec, Unmatched,
};
use crate::table::{Table, read_partition, read_table};

/// Fractions of a random split; positive and summing to 1 (within 1e-6).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SplitFractions {
    /// Train fraction.
    pub train: f64,
    /// Validation fraction.
    pub valid: f64,
    /// Test fraction.
    pub test: f64,
}

impl Default for SplitFractions {
    /// 0.7 / 0.15 / 0.15.
    fn default() -> Self {
        Self {
            train: 0.7,
            valid: 0.15,
            test: 0.15,
        }
    }
}

impl SplitFractions {
    /// Checks that all fractions are positive and sum to 1.
    pub fn validate(&self) -> Result<(), DataError> {
        let ok = [self.train, self.valid, self.test]
            .iter()
            .all(|f| f.is_finite() && *f > 0.0)
            && ((self.train + self.valid + self.test) - 1.0).abs() < 1e-6;
        if ok {
            Ok(())
        } else {
            Err(DataError::InvalidArgument {
                what: "split fractions".into(),
                expected: "train, valid, test > 0 summing to 1".into(),
                found: format!("{} / {} / {}", self.train, self.valid, self.test),
            })
        }
    }
}

/// How to load a dataset.
#[derive(Debug, Clone, PartialEq)]
pub struct LoadOptions {
    /// Folder the spec's file paths are relative to.
    pub data_dir: PathBuf,
    /// Tasks to load, in this order; `None` = all tasks of the spec in spec order.
    pub tasks: Option<Vec<String>>,
    /// Keep the sensitive column and task-defining columns as inputs (when the spec lists them).
    pub aware: bool,
    /// Seed of the random / validation split.
    pub split_seed: u64,
    /// Overrides the spec's fractions for `split.kind = "random"`; ignored for official and
    /// partition splits (their splits are fixed by the files).
    pub split: Option<SplitFractions>,
    /// Tasks held out for transfer: not loaded, but their defining columns leave the inputs
    /// (even when `aware`), so that a head trained on the representation later cannot read
    /// its label straight from an input.
    pub held_out: Vec<String>,
}

impl Default for LoadOptions {
    fn default() -> Self {
        Self {
            data_dir: PathBuf::from("."),
            tasks: None,
            aware: false,
            split_seed: 0,
            split: None,
            held_out: Vec::new(),
        }
    }
}

/// How an input column is encoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ColumnKind {
    /// One standardised feature.
    Numeric,
    /// One 0/1 feature per category.
    Categorical,
}

/// One source column of the inputs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InputColumn {
    /// Column name in the file.
    pub column: String,
    /// Encoding.
    pub kind: ColumnKind,
    /// Categories (train split, sorted); empty for numeric columns.
    pub categories: Vec<String>,
}

/// One task of the schema.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskInfo {
    /// Task name.
    pub name: String,
    /// Defining column.
    pub column: String,
    /// Binary or regression.
    pub kind: TaskKind,
}

/// What the columns of `x`, the groups and the targets mean. Compare two schemas with `==`
/// to check that a checkpoint matches data.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Schema {
    /// Dataset name.
    pub dataset: String,
    /// Feature names in column order: `col` for numeric, `col=value` for one-hot.
    pub features: Vec<String>,
    /// Source columns in feature order.
    pub inputs: Vec<InputColumn>,
    /// The sensitive column.
    pub sensitive_column: String,
    /// Group names; group id = index.
    pub groups: Vec<String>,
    /// Tasks in target order.
    pub tasks: Vec<TaskInfo>,
    /// Whether sensitive / task columns were kept as inputs.
    pub aware: bool,
}

/// Standardisation statistics of one numeric column (train split).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NumericStats {
    /// Column name.
    pub column: String,
    /// Mean.
    pub mean: f64,
    /// Population standard deviation, or 1 where it is 0.
    pub std: f64,
}

/// Category list of one categorical column (train split, sorted).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CategoryLevels {
    /// Column name.
    pub column: String,
    /// Categories.
    pub categories: Vec<String>,
}

/// Everything fitted on the train split that the encoding needs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Preprocessing {
    /// Numeric columns in feature order.
    pub numeric: Vec<NumericStats>,
    /// Categorical columns in feature order.
    pub categorical: Vec<CategoryLevels>,
}

/// One split, row-major.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Split {
    /// `n x d` features, row-major.
    pub x: Vec<f32>,
    /// Rows.
    pub n: usize,
    /// Features.
    pub d: usize,
    /// Group id per row, in `0..n_groups`.
    pub groups: Vec<u32>,
    /// One vector per task, each of length `n`; binary tasks are 0.0 / 1.0.
    pub targets: Vec<Vec<f32>>,
}

impl Split {
    /// Features of row `i`.
    pub fn row(&self, i: usize) -> &[f32] {
        &self.x[i * self.d..(i + 1) * self.d]
    }

    /// The rows `idx` (in that order) as a new split, e.g. a minibatch.
    pub fn gather(&self, idx: &[usize]) -> Split {
        let mut x = Vec::with_capacity(idx.len() * self.d);
        for &i in idx {
            x.extend_from_slice(self.row(i));
        }
        Split {
            x,
            n: idx.len(),
            d: self.d,
            groups: idx.iter().map(|&i| self.groups[i]).collect(),
            targets: self
                .targets
                .iter()
                .map(|t| idx.iter().map(|&i| t[i]).collect())
                .collect(),
        }
    }

    /// Rows per group (length `n_groups`).
    pub fn group_counts(&self, n_groups: usize) -> Vec<usize> {
        let mut c = vec![0; n_groups];
        for &g in &self.groups {
            c[g as usize] += 1;
        }
        c
    }
}

/// A loaded dataset.
#[derive(Debug, Clone, PartialEq)]
pub struct Dataset {
    /// Dataset name.
    pub name: String,
    /// Meaning of features, groups and targets.
    pub schema: Schema,
    /// Train-split statistics used for the encoding.
    pub preprocessing: Preprocessing,
    /// Train split.
    pub train: Split,
    /// Validation split.
    pub valid: Split,
    /// Test split.
    pub test: Split,
}

impl Dataset {
    /// Number of sensitive groups.
    pub fn n_groups(&self) -> usize {
        self.schema.groups.len()
    }
    /// Task names in target order.
    pub fn task_names(&self) -> Vec<String> {
        self.schema.tasks.iter().map(|t| t.name.clone()).collect()
    }
    /// Number of input features `d`.
    pub fn n_features(&self) -> usize {
        self.schema.features.len()
    }
}

/// Loads `spec` from `opts.data_dir`, fitting the preprocessing on the train split.
pub fn load(spec: &DatasetSpec, opts: &LoadOptions) -> Result<Dataset, DataError> {
    load_impl(spec, opts, None, true)
}

/// Loads `opts.tasks` of `spec` with the input columns, groups and encoding of a saved
/// `schema` (a trained encoder's), whatever tasks that schema was trained on: the data a
/// frozen encoder is transferred to. Input columns (names and kinds) and group names must
/// match ([`DataError::SchemaMismatch`] otherwise); `opts.aware` and `opts.held_out` are
/// ignored (the saved input columns decide).
///
/// The saved schema's tasks that `spec` defines are loaded too (then dropped), so that the
/// same rows are kept and a random split is stratified as it was in training: on the same
/// dataset with the same `split_seed`, every split holds the rows it held for the encoder
/// (unless a transfer task's column has missing values that drop rows).
pub fn load_for_transfer(
    spec: &DatasetSpec,
    opts: &LoadOptions,
    schema: &Schema,
    preprocessing: &Preprocessing,
) -> Result<Dataset, DataError> {
    let mut spec = spec.clone();
    let of_kind = |k: ColumnKind| -> Vec<String> {
        schema
            .inputs
            .iter()
            .filter(|i| i.kind == k)
            .map(|i| i.column.clone())
            .collect()
    };
    spec.inputs.numeric = of_kind(ColumnKind::Numeric);
    spec.inputs.categorical = of_kind(ColumnKind::Categorical);
    spec.inputs.exclude_task_columns = ExcludeTaskColumns::Selected;
    let wanted: Vec<String> = opts
        .tasks
        .clone()
        .unwrap_or_else(|| spec.tasks.iter().map(|t| t.name.clone()).collect());
    let mut loaded: Vec<String> = schema
        .tasks
        .iter()
        .filter(|s| {
            spec.tasks
                .iter()
                .any(|t| t.name == s.name && t.column == s.column && t.kind == s.kind)
        })
        .map(|s| s.name.clone())
        .collect();
    for t in &wanted {
        if !loaded.contains(t) {
            loaded.push(t.clone());
        }
    }
    // The saved inputs are taken as they are: nothing is removed from them.
    let opts = LoadOptions {
        aware: true,
        held_out: Vec::new(),
        tasks: Some(loaded.clone()),
        ..opts.clone()
    };
    let mut dataset = load_impl(&spec, &opts, Some((schema, preprocessing)), false)?;
    let keep: Vec<usize> = wanted
        .iter()
        .map(|w| {
            loaded
                .iter()
                .position(|l| l == w)
                .expect("every wanted task is loaded")
        })
        .collect();
    dataset.schema.tasks = keep
        .iter()
        .map(|&i| dataset.schema.tasks[i].clone())
        .collect();
    dataset.schema.aware = schema.aware;
    for split in [&mut dataset.train, &mut dataset.valid, &mut dataset.test] {
        split.targets = keep.iter().map(|&i| split.targets[i].clone()).collect();
    }
    Ok(dataset)
}

/// Loads `spec` but encodes with a saved `schema` and `preprocessing` (e.g. from a checkpoint)
/// instead of fitting new ones: input columns, groups and tasks must match the saved schema
/// ([`DataError::SchemaMismatch`] otherwise); categories follow the saved lists.
pub fn load_with_preprocessing(
    spec: &DatasetSpec,
    opts: &LoadOptions,
    schema: &Schema,
    preprocessing: &Preprocessing,
) -> Result<Dataset, DataError> {
    load_impl(spec, opts, Some((schema, preprocessing)), true)
}

pub(crate) fn parse_finite(s: &str) -> Option<f64> {
    s.parse::<f64>().ok().filter(|x| x.is_finite())
}

/// Per-table cache of parsed numeric cells (indexed by column, then interned code).
struct NumCache(Vec<Vec<Option<f64>>>);

impl NumCache {
    fn new(t: &Table) -> Self {
        NumCache(t.dicts.iter().map(|d| vec![None; d.dict.len()]).collect())
    }
    fn get(&mut self, t: &Table, col: usize, row: usize) -> Result<f64, DataError> {
        let code = t.codes[col][row] as usize;
        if let Some(v) = self.0[col][code] {
            return Ok(v);
        }
        let s = &t.dicts[col].dict[code];
        let v = parse_finite(s).ok_or_else(|| DataError::BadCell {
            file: t.path.clone(),
            line: t.lines[row],
            column: t.columns[col].clone(),
            expected: "a finite number".into(),
            found: s.clone(),
        })?;
        self.0[col][code] = Some(v);
        Ok(v)
    }
}

fn scalar_matches(
    t: &Table,
    cache: &mut NumCache,
    col: usize,
    row: usize,
    v: &Scalar,
) -> Result<bool, DataError> {
    Ok(match v {
        Scalar::Text(s) => t.cell(col, row) == s,
        Scalar::Number(x) => cache.get(t, col, row)? == *x,
    })
}

fn eval_pred(
    t: &Table,
    cache: &mut NumCache,
    col: usize,
    row: usize,
    op: Op,
    value: &PredicateValue,
) -> Result<bool, DataError> {
    match (op, value) {
        (Op::In | Op::NotIn, PredicateValue::List(l)) => {
            let mut hit = false;
            for v in l {
                if scalar_matches(t, cache, col, row, v)? {
                    hit = true;
                    break;
                }
            }
            Ok(hit == (op == Op::In))
        }
        (Op::Eq, PredicateValue::One(v)) => scalar_matches(t, cache, col, row, v),
        (Op::Ne, PredicateValue::One(v)) => Ok(!scalar_matches(t, cache, col, row, v)?),
        (op, PredicateValue::One(Scalar::Number(x))) => {
            let c = cache.get(t, col, row)?;
            Ok(match op {
                Op::Gt => c > *x,
                Op::Ge => c >= *x,
                Op::Lt => c < *x,
                Op::Le => c <= *x,
                _ => unreachable!("handled above"),
            })
        }
        _ => unreachable!("rejected by DatasetSpec::validate"),
    }
}

/// Which split a row goes to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Which {
    Train = 0,
    Valid = 1,
    Test = 2,
}

const SPLIT_NAMES: [&str; 3] = ["train", "valid", "test"];

struct Kept {
    table: usize,
    row: usize,
    group: u32,
    targets: Vec<f32>,
    which: Option<Which>,
}

fn push_unique(v: &mut Vec<String>, s: &str) {
    if !v.iter().any(|x| x == s) {
        v.push(s.to_string());
    }
}

/// Stratified assignment of `keys` (one stratum key per row) to splits by `fractions`.
fn stratified_assign(keys: &[u64], fractions: &[f64], seed: u64) -> Vec<usize> {
    let mut strata: BTreeMap<u64, Vec<usize>> = BTreeMap::new();
    for (i, &k) in keys.iter().enumerate() {
        strata.entry(k).or_default().push(i);
    }
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut out = vec![0; keys.len()];
    for idx in strata.values_mut() {
        idx.shuffle(&mut rng);
        let n = idx.len() as f64;
        let mut cum = 0.0;
        let mut start = 0usize;
        for (s, f) in fractions.iter().enumerate() {
            cum += f;
            let end = if s + 1 == fractions.len() {
                idx.len()
            } else {
                ((cum * n).round() as usize).clamp(start, idx.len())
            };
            for &i in &idx[start..end] {
                out[i] = s;
            }
            start = end;
        }
    }
    out
}

/// `saved`: encode with a saved schema and preprocessing; `check_tasks`: its tasks must be the
/// ones loaded (resuming), else only inputs and groups must match (transfer).
fn load_impl(
    spec: &DatasetSpec,
    opts: &LoadOptions,
    saved: Option<(&Schema, &Preprocessing)>,
    check_tasks: bool,
) -> Result<Dataset, DataError> {
    spec.validate()?;
    // Tasks.
    let tasks: Vec<&TaskSpec> = match &opts.tasks {
        None => spec.tasks.iter().collect(),
        Some(names) => {
            let mut v = Vec::with_capacity(names.len());
            for n in names {
                let t = spec.tasks.iter().find(|t| &t.name == n).ok_or_else(|| {
                    DataError::UnknownTask {
                        dataset: spec.name.clone(),
                        task: n.clone(),
                        available: spec.tasks.iter().map(|t| t.name.clone()).collect(),
                    }
                })?;
                if v.iter().any(|o: &&TaskSpec| o.name == t.name) {
                    return Err(DataError::InvalidArgument {
                        what: "task list".into(),
                        expected: "each task once".into(),
                        found: format!("`{n}` twice"),
                    });
                }
                v.push(t);
            }
            if v.is_empty() {
                return Err(DataError::InvalidArgument {
                    what: "task list".into(),
                    expected: "at least one task".into(),
                    found: "an empty list".into(),
                });
            }
            v
        }
    };
    // Input columns.
    let mut excluded: Vec<String> = Vec::new();
    for name in &opts.held_out {
        let t =
            spec.tasks
                .iter()
                .find(|t| &t.name == name)
                .ok_or_else(|| DataError::UnknownTask {
                    dataset: spec.name.clone(),
                    task: name.clone(),
                    available: spec.tasks.iter().map(|t| t.name.clone()).collect(),
                })?;
        if tasks.iter().any(|l| l.name == t.name) {
            return Err(DataError::InvalidArgument {
                what: "held-out tasks".into(),
                expected: "tasks that are not also trained on".into(),
                found: format!("`{name}` in both lists"),
            });
        }
        push_unique(&mut excluded, &t.column);
    }
    if !opts.aware {
        excluded.push(spec.sensitive.column.clone());
        match spec.inputs.exclude_task_columns {
            ExcludeTaskColumns::Selected => tasks
                .iter()
                .for_each(|t| push_unique(&mut excluded, &t.column)),
            ExcludeTaskColumns::All => spec
                .tasks
                .iter()
                .for_each(|t| push_unique(&mut excluded, &t.column)),
        }
    }
    let numeric: Vec<String> = spec
        .inputs
        .numeric
        .iter()
        .filter(|c| !excluded.contains(c))
        .cloned()
        .collect();
    let categorical: Vec<String> = spec
        .inputs
        .categorical
        .iter()
        .filter(|c| !excluded.contains(c))
        .cloned()
        .collect();
    if numeric.is_empty() && categorical.is_empty() {
        return Err(DataError::InvalidArgument {
            what: format!("inputs of dataset `{}`", spec.name),
            expected: "at least one input column left".into(),
            found: format!(
                "none after removing the sensitive and task columns [{}]",
                excluded.join(", ")
            ),
        });
    }
    // Needed columns.
    let mut needed: Vec<String> = Vec::new();
    numeric
        .iter()
        .chain(&categorical)
        .for_each(|c| push_unique(&mut needed, c));
    push_unique(&mut needed, &spec.sensitive.column);
    tasks
        .iter()
        .for_each(|t| push_unique(&mut needed, &t.column));
    spec.filters
        .iter()
        .for_each(|f| push_unique(&mut needed, &f.column));
    let split = &spec.split;
    if split.kind == SplitKind::Partition {
        match &split.partition_file {
            Some(pf) => push_unique(&mut needed, &pf.key),
            None => push_unique(&mut needed, split.column.as_deref().unwrap_or_default()),
        }
    }
    // Read.
    let mut tables = vec![read_table(
        &opts.data_dir.join(&spec.files.train.path),
        &spec.format,
        spec.files.train.skip_lines,
        &needed,
    )?];
    if let Some(t) = &spec.files.test {
        tables.push(read_table(
            &opts.data_dir.join(&t.path),
            &spec.format,
            t.skip_lines,
            &needed,
        )?);
    }
    let mut caches: Vec<NumCache> = tables.iter().map(NumCache::new).collect();
    // Partition values per row of the main table.
    let partition: Option<Vec<String>> = match (split.kind, &split.partition_file) {
        (SplitKind::Partition, Some(pf)) => {
            let col = split.column.as_deref().unwrap_or_default();
            let pt = read_partition(&opts.data_dir.join(&pf.path), &pf.columns, &pf.key, col)?;
            let mut map: HashMap<&str, &str> = HashMap::with_capacity(pt.n_rows());
            for r in 0..pt.n_rows() {
                map.insert(pt.cell(0, r), pt.cell(1, r));
            }
            let t = &tables[0];
            let kc = t.col(&pf.key);
            let mut v = Vec::with_capacity(t.n_rows());
            for r in 0..t.n_rows() {
                let k = t.cell(kc, r);
                let p = map.get(k).ok_or_else(|| DataError::BadCell {
                    file: t.path.clone(),
                    line: t.lines[r],
                    column: pf.key.clone(),
                    expected: format!("a key listed in `{}`", pt.path.display()),
                    found: k.to_string(),
                })?;
                v.push((*p).to_string());
            }
            Some(v)
        }
        _ => None,
    };
    // Groups.
    let sens = &spec.sensitive;
    let mut group_names: Vec<String> = match (&sens.groups, sens.threshold) {
        (Some(g), _) => g.iter().map(|g| g.name.clone()).collect(),
        (None, Some(th)) => sens
            .threshold_names
            .clone()
            .unwrap_or_else(|| vec![format!("lt_{th}"), format!("ge_{th}")]),
        (None, None) => unreachable!("validated"),
    };
    let other_id = group_names.len() as u32;
    let mut other_used = false;
    // Filter, group, targets.
    let mut kept: Vec<Kept> = Vec::new();
    for (ti, t) in tables.iter().enumerate() {
        let cache = &mut caches[ti];
        let filt_cols: Vec<usize> = spec.filters.iter().map(|f| t.col(&f.column)).collect();
        let sc = t.col(&sens.column);
        let task_cols: Vec<usize> = tasks.iter().map(|tk| t.col(&tk.column)).collect();
        'rows: for r in 0..t.n_rows() {
            for (f, &c) in spec.filters.iter().zip(&filt_cols) {
                if !eval_pred(t, cache, c, r, f.op, &f.value)? {
                    continue 'rows;
                }
            }
            let group = if let Some(th) = sens.threshold {
                u32::from(cache.get(t, sc, r)? >= th)
            } else {
                let mut found = None;
                for (gi, g) in sens
                    .groups
                    .as_deref()
                    .unwrap_or_default()
                    .iter()
                    .enumerate()
                {
                    for v in &g.values {
                        if scalar_matches(t, cache, sc, r, v)? {
                            found = Some(gi as u32);
                            break;
                        }
                    }
                    if found.is_some() {
                        break;
                    }
                }
                match (found, sens.unmatched) {
                    (Some(g), _) => g,
                    (None, Unmatched::Drop) => continue 'rows,
                    (None, Unmatched::Other) => {
                        other_used = true;
                        other_id
                    }
                    (None, Unmatched::Error) => {
                        let listed: Vec<String> = sens
                            .groups
                            .as_deref()
                            .unwrap_or_default()
                            .iter()
                            .flat_map(|g| g.values.iter().map(|v| v.to_string()))
                            .collect();
                        return Err(DataError::BadCell {
                            file: t.path.clone(),
                            line: t.lines[r],
                            column: sens.column.clone(),
                            expected: format!(
                                "one of the sensitive values [{}] (or set sensitive.unmatched)",
                                listed.join(", ")
                            ),
                            found: t.cell(sc, r).to_string(),
                        });
                    }
                }
            };
            let mut targets = Vec::with_capacity(tasks.len());
            for (tk, &c) in tasks.iter().zip(&task_cols) {
                targets.push(match tk.kind {
                    TaskKind::Binary => {
                        let (op, v) = (
                            tk.op.expect("validated"),
                            tk.value.as_ref().expect("validated"),
                        );
                        if eval_pred(t, cache, c, r, op, v)? {
                            1.0
                        } else {
                            0.0
                        }
                    }
                    TaskKind::Regression => cache.get(t, c, r)? as f32,
                });
            }
            let which = if split.kind == SplitKind::Official && ti == 1 {
                Some(Which::Test)
            } else if split.kind == SplitKind::Partition {
                let (cell, line, column, file) = match &partition {
                    Some(p) => (
                        p[r].as_str(),
                        t.lines[r],
                        split.column.clone().unwrap_or_default(),
                        t.path.clone(),
                    ),
                    None => {
                        let c = t.col(split.column.as_deref().unwrap_or_default());
                        (
                            t.cell(c, r),
                            t.lines[r],
                            t.columns[c].clone(),
                            t.path.clone(),
                        )
                    }
                };
                let lists = [&split.train_values, &split.valid_values, &split.test_values];
                let mut w = None;
                for (k, l) in lists.iter().enumerate() {
                    let hit = l.as_deref().unwrap_or_default().iter().any(|v| match v {
                        Scalar::Text(s) => s == cell,
                        Scalar::Number(x) => parse_finite(cell) == Some(*x),
                    });
                    if hit {
                        w = Some([Which::Train, Which::Valid, Which::Test][k]);
                        break;
                    }
                }
                Some(w.ok_or_else(|| DataError::BadCell {
                    file,
                    line,
                    column,
                    expected:
                        "a value listed in split.train_values / valid_values / test_values".into(),
                    found: cell.to_string(),
                })?)
            } else {
                None
            };
            kept.push(Kept {
                table: ti,
                row: r,
                group,
                targets,
                which,
            });
        }
    }
    if other_used {
        group_names.push(sens.other_name.clone().unwrap_or_else(|| "other".into()));
    }
    let n_groups = group_names.len();
    let sizes_of = |counts: &[usize]| -> String {
        group_names
            .iter()
            .zip(counts)
            .map(|(g, c)| format!("{g}: {c}"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let mut total = vec![0usize; n_groups];
    kept.iter().for_each(|k| total[k.group as usize] += 1);
    if let Some(g) = total.iter().position(|&c| c == 0) {
        return Err(DataError::EmptyGroup {
            dataset: spec.name.clone(),
            group: group_names[g].clone(),
            split: "filtered data".into(),
            sizes: sizes_of(&total),
        });
    }
    // Split assignment of rows without one.
    let strat_key = |k: &Kept| -> u64 {
        let label = match tasks[0].kind {
            TaskKind::Binary => k.targets[0] as u64,
            TaskKind::Regression => 0,
        };
        u64::from(k.group) * 2 + label
    };
    let free: Vec<usize> = (0..kept.len())
        .filter(|&i| kept[i].which.is_none())
        .collect();
    if !free.is_empty() {
        let keys: Vec<u64> = free.iter().map(|&i| strat_key(&kept[i])).collect();
        let (fr, ws): (Vec<f64>, Vec<Which>) = match split.kind {
            SplitKind::Official => {
                let v = split.valid_fraction.unwrap_or(DEFAULT_VALID_FRACTION);
                (vec![1.0 - v, v], vec![Which::Train, Which::Valid])
            }
            _ => {
                let f = opts.split.or(split.fractions).unwrap_or_default();
                f.validate()?;
                (
                    vec![f.train, f.valid, f.test],
                    vec![Which::Train, Which::Valid, Which::Test],
                )
            }
        };
        let a = stratified_assign(&keys, &fr, opts.split_seed);
        for (j, &i) in free.iter().enumerate() {
            kept[i].which = Some(ws[a[j]]);
        }
    }
    let mut split_rows: [Vec<usize>; 3] = Default::default();
    for (i, k) in kept.iter().enumerate() {
        split_rows[k.which.expect("assigned") as usize].push(i);
    }
    for (s, rows) in split_rows.iter().enumerate() {
        let mut c = vec![0usize; n_groups];
        rows.iter().for_each(|&i| c[kept[i].group as usize] += 1);
        if let Some(g) = c.iter().position(|&x| x == 0) {
            return Err(DataError::EmptyGroup {
                dataset: spec.name.clone(),
                group: group_names[g].clone(),
                split: SPLIT_NAMES[s].into(),
                sizes: sizes_of(&c),
            });
        }
    }
    // Fit or take the preprocessing.
    let train_rows = &split_rows[0];
    let preprocessing = match saved {
        Some((_, p)) => p.clone(),
        None => {
            let mut num = Vec::new();
            for c in &numeric {
                let (mut s, mut s2) = (0.0f64, 0.0f64);
                let cols: Vec<usize> = tables.iter().map(|t| t.col(c)).collect();
                for &i in train_rows {
                    let k = &kept[i];
                    let t = &tables[k.table];
                    let v = caches[k.table].get(t, cols[k.table], k.row)?;
                    s += v;
                    s2 += v * v;
                }
                let n = train_rows.len() as f64;
                let mean = s / n;
                let var = (s2 / n - mean * mean).max(0.0);
                let std = if var > 1e-24 { var.sqrt() } else { 1.0 };
                num.push(NumericStats {
                    column: c.clone(),
                    mean,
                    std,
                });
            }
            let mut cat = Vec::new();
            for c in &categorical {
                let mut seen: Vec<&str> = Vec::new();
                let mut flags: Vec<Vec<bool>> = tables
                    .iter()
                    .map(|t| vec![false; t.dicts[t.col(c)].dict.len()])
                    .collect();
                let cols: Vec<usize> = tables.iter().map(|t| t.col(c)).collect();
                for &i in train_rows {
                    let k = &kept[i];
                    let t = &tables[k.table];
                    let col = cols[k.table];
                    let code = t.codes[col][k.row] as usize;
                    if !flags[k.table][code] {
                        flags[k.table][code] = true;
                        seen.push(&t.dicts[col].dict[code]);
                    }
                }
                let mut cats: Vec<String> = seen.iter().map(|s| s.to_string()).collect();
                cats.sort();
                cats.dedup();
                cat.push(CategoryLevels {
                    column: c.clone(),
                    categories: cats,
                });
            }
            Preprocessing {
                numeric: num,
                categorical: cat,
            }
        }
    };
    // Schema.
    let mut inputs = Vec::new();
    let mut features = Vec::new();
    for c in &numeric {
        inputs.push(InputColumn {
            column: c.clone(),
            kind: ColumnKind::Numeric,
            categories: Vec::new(),
        });
        features.push(c.clone());
    }
    for c in &categorical {
        let cats = preprocessing
            .categorical
            .iter()
            .find(|l| &l.column == c)
            .map(|l| l.categories.clone())
            .unwrap_or_default();
        features.extend(cats.iter().map(|v| format!("{c}={v}")));
        inputs.push(InputColumn {
            column: c.clone(),
            kind: ColumnKind::Categorical,
            categories: cats,
        });
    }
    let schema = Schema {
        dataset: spec.name.clone(),
        features,
        inputs,
        sensitive_column: sens.column.clone(),
        groups: group_names.clone(),
        tasks: tasks
            .iter()
            .map(|t| TaskInfo {
                name: t.name.clone(),
                column: t.column.clone(),
                kind: t.kind,
            })
            .collect(),
        aware: opts.aware,
    };
    if let Some((s, p)) = saved {
        check_schema(s, &schema, !check_tasks)?;
        check_preprocessing(s, p)?;
    }
    // Encode.
    let enc = Encoder::new(&schema, &preprocessing)?;
    let d = schema.features.len();
    let mut splits: Vec<Split> = Vec::with_capacity(3);
    let mut onehot: Vec<Vec<Vec<Option<usize>>>> = tables
        .iter()
        .map(|t| {
            enc.cat_maps
                .iter()
                .map(|(c, _)| vec![None; t.dicts[t.col(c)].dict.len()])
                .collect()
        })
        .collect();
    // Column index of every numeric / categorical input in every table.
    let num_cols: Vec<Vec<usize>> = tables
        .iter()
        .map(|t| {
            preprocessing
                .numeric
                .iter()
                .map(|st| t.col(&st.column))
                .collect()
        })
        .collect();
    let cat_cols: Vec<Vec<usize>> = tables
        .iter()
        .map(|t| enc.cat_maps.iter().map(|(c, _)| t.col(c)).collect())
        .collect();
    for rows in &split_rows {
        let n = rows.len();
        let mut x = vec![0f32; n * d];
        for (j, &i) in rows.iter().enumerate() {
            let k = &kept[i];
            let t = &tables[k.table];
            let out = &mut x[j * d..(j + 1) * d];
            for (f, st) in preprocessing.numeric.iter().enumerate() {
                let v = caches[k.table].get(t, num_cols[k.table][f], k.row)?;
                out[f] = ((v - st.mean) / st.std) as f32;
            }
            for (b, (_, map)) in enc.cat_maps.iter().enumerate() {
                let col = cat_cols[k.table][b];
                let code = t.codes[col][k.row] as usize;
                let slot = &mut onehot[k.table][b][code];
                if slot.is_none() {
                    *slot = Some(
                        map.get(t.dicts[col].dict[code].as_str())
                            .copied()
                            .unwrap_or(usize::MAX),
                    );
                }
                let pos = slot.expect("just set");
                if pos != usize::MAX {
                    out[enc.offsets[b] + pos] = 1.0;
                }
            }
        }
        let targets = (0..tasks.len())
            .map(|ti| rows.iter().map(|&i| kept[i].targets[ti]).collect())
            .collect();
        splits.push(Split {
            x,
            n,
            d,
            groups: rows.iter().map(|&i| kept[i].group).collect(),
            targets,
        });
    }
    let test = splits.pop().expect("3 splits");
    let valid = splits.pop().expect("3 splits");
    let train = splits.pop().expect("3 splits");
    Ok(Dataset {
        name: spec.name.clone(),
        schema,
        preprocessing,
        train,
        valid,
        test,
    })
}

fn mismatch(what: &str, e: impl std::fmt::Debug, f: impl std::fmt::Debug) -> DataError {
    DataError::SchemaMismatch {
        what: what.into(),
        expected: format!("{e:?}"),
        found: format!("{f:?}"),
    }
}

/// Compares a saved schema (a checkpoint's) with the one of the data at hand: input columns
/// and their kinds, groups, and the tasks unless `transfer` (new tasks for a trained encoder).
pub fn check_schema(saved: &Schema, now: &Schema, transfer: bool) -> Result<(), DataError> {
    let cols = |s: &Schema| -> Vec<(String, ColumnKind)> {
        s.inputs
            .iter()
            .map(|i| (i.column.clone(), i.kind))
            .collect()
    };
    if cols(saved) != cols(now) {
        return Err(mismatch("input columns", cols(saved), cols(now)));
    }
    if saved.groups != now.groups {
        return Err(mismatch("groups", &saved.groups, &now.groups));
    }
    if !transfer && saved.tasks != now.tasks {
        return Err(mismatch("tasks", &saved.tasks, &now.tasks));
    }
    Ok(())
}

fn check_preprocessing(schema: &Schema, p: &Preprocessing) -> Result<(), DataError> {
    let num_s: Vec<&str> = schema
        .inputs
        .iter()
        .filter(|i| i.kind == ColumnKind::Numeric)
        .map(|i| i.column.as_str())
        .collect();
    let num_p: Vec<&str> = p.numeric.iter().map(|s| s.column.as_str()).collect();
    if num_s != num_p {
        return Err(mismatch("preprocessing numeric columns", num_s, num_p));
    }
    let cat_s: Vec<(&str, &Vec<String>)> = schema
        .inputs
        .iter()
        .filter(|i| i.kind == ColumnKind::Categorical)
        .map(|i| (i.column.as_str(), &i.categories))
        .collect();
    let cat_p: Vec<(&str, &Vec<String>)> = p
        .categorical
        .iter()
        .map(|l| (l.column.as_str(), &l.categories))
        .collect();
    if cat_s != cat_p {
        return Err(mismatch("preprocessing categories", cat_s, cat_p));
    }
    if let Some(s) = p
        .numeric
        .iter()
        .find(|s| !(s.mean.is_finite() && s.std.is_finite() && s.std > 0.0))
    {
        return Err(mismatch(
            "preprocessing statistics",
            "finite mean and std > 0",
            s,
        ));
    }
    Ok(())
}

/// Category lookup per categorical column and the offset of each one-hot block.
struct Encoder<'a> {
    cat_maps: Vec<(&'a str, HashMap<&'a str, usize>)>,
    offsets: Vec<usize>,
}

impl<'a> Encoder<'a> {
    fn new(schema: &'a Schema, p: &'a Preprocessing) -> Result<Self, DataError> {
        check_preprocessing(schema, p)?;
        let mut off = p.numeric.len();
        let mut cat_maps = Vec::new();
        let mut offsets = Vec::new();
        for l in &p.categorical {
            cat_maps.push((
                l.column.as_str(),
                l.categories
                    .iter()
                    .enumerate()
                    .map(|(i, c)| (c.as_str(), i))
                    .collect(),
            ));
            offsets.push(off);
            off += l.categories.len();
        }
        if off != schema.features.len() {
            return Err(mismatch("feature count", schema.features.len(), off));
        }
        Ok(Encoder { cat_maps, offsets })
    }
}

/// Encodes raw rows with a saved schema and preprocessing, exactly as [`load`] encodes its
/// splits: numeric cells are standardised, categorical cells one-hot encoded, a category not
/// in the saved list gives an all-zero block.
///
/// `header` names the columns of `rows` (extra columns are ignored; every input column of the
/// schema must be present). Cells are used as given: trim / strip them as the spec would.
/// `source` names the data in errors; rows are reported as lines `1..=rows.len()`.
/// Returns the row-major `rows.len() x schema.features.len()` matrix.
pub fn apply_preprocessing(
    schema: &Schema,
    preprocessing: &Preprocessing,
    header: &[String],
    rows: &[Vec<String>],
    source: &Path,
) -> Result<Vec<f32>, DataError> {
    let enc = Encoder::new(schema, preprocessing)?;
    let find = |c: &str| -> Result<usize, DataError> {
        header
            .iter()
            .position(|h| h == c)
            .ok_or_else(|| DataError::MissingColumn {
                file: source.to_path_buf(),
                column: c.to_string(),
                found: header.to_vec(),
            })
    };
    let num_idx: Vec<usize> = preprocessing
        .numeric
        .iter()
        .map(|s| find(&s.column))
        .collect::<Result<_, _>>()?;
    let cat_idx: Vec<usize> = enc
        .cat_maps
        .iter()
        .map(|(c, _)| find(c))
        .collect::<Result<_, _>>()?;
    let d = schema.features.len();
    let mut x = vec![0f32; rows.len() * d];
    for (r, row) in rows.iter().enumerate() {
        if row.len() != header.len() {
            return Err(DataError::FieldCount {
                file: source.to_path_buf(),
                line: r as u64 + 1,
                expected: header.len(),
                found: row.len(),
            });
        }
        let out = &mut x[r * d..(r + 1) * d];
        for (f, (st, &ci)) in preprocessing.numeric.iter().zip(&num_idx).enumerate() {
            let v = parse_finite(&row[ci]).ok_or_else(|| DataError::BadCell {
                file: source.to_path_buf(),
                line: r as u64 + 1,
                column: st.column.clone(),
                expected: "a finite number".into(),
                found: row[ci].clone(),
            })?;
            out[f] = ((v - st.mean) / st.std) as f32;
        }
        for (b, ((_, map), &ci)) in enc.cat_maps.iter().zip(&cat_idx).enumerate() {
            if let Some(&p) = map.get(row[ci].as_str()) {
                out[enc.offsets[b] + p] = 1.0;
            }
        }
    }
    Ok(x)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stratified_assign_is_exact_per_stratum_and_seeded() {
        let keys: Vec<u64> = (0..100).map(|i| (i % 2) as u64).collect();
        let a = stratified_assign(&keys, &[0.7, 0.15, 0.15], 3);
        for k in 0..2u64 {
            let c: Vec<usize> = (0..3)
                .map(|s| (0..100).filter(|&i| keys[i] == k && a[i] == s).count())
                .collect();
            // 50 rows: round(35) = 35, round(42.5) = 43 -> 35 / 8 / 7.
            assert_eq!(c, vec![35, 8, 7]);
        }
        assert_eq!(a, stratified_assign(&keys, &[0.7, 0.15, 0.15], 3));
        assert_ne!(a, stratified_assign(&keys, &[0.7, 0.15, 0.15], 4));
    }

    #[test]
    fn split_fractions_validate() {
        assert!(SplitFractions::default().validate().is_ok());
        let bad = SplitFractions {
            train: 0.8,
            valid: 0.3,
            test: 0.1,
        };
        assert!(
            bad.validate()
                .unwrap_err()
                .to_string()
                .contains("0.8 / 0.3 / 0.1")
        );
    }
}
