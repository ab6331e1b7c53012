//! Loading a dataset from its spec, in named stages: select the tasks, choose the input
//! columns, read the tables, keep the rows (filters, groups, targets, fixed splits), assign the
//! remaining rows to splits, fit (or take) the preprocessing, build the schema, encode.
//!
//! Conventions (all documented here once):
//! - Standardisation statistics (mean, population standard deviation, computed in two passes in
//!   float64 from values shifted by the first one, so that a large common offset does not cancel
//!   the variance) come from the final train split only. A numeric column with zero variance in train gets std 1 (so it is
//!   only centred).
//! - Categories are the values seen in the train split, sorted. A value first seen in valid /
//!   test (or in a file passed to [`apply_preprocessing`]) encodes as an all-zero one-hot block.
//! - Without a validation split in the files (official train/test), validation is a
//!   stratified `valid_fraction` (default 0.2) of the train file, drawn with `split_seed`.
//! - Random splits default to 0.7 / 0.15 / 0.15. Every split is stratified by group and, when
//!   the first selected task is binary, by its label: inside each stratum the rows are
//!   shuffled (ChaCha8, `split_seed`) and cut at the rounded cumulative fractions.
//! - Rows keep their file order inside each split.
//! - A dataset has at least two groups, and every group has rows in every split, else
//!   [`DataError::EmptyGroup`] / [`DataError::InvalidArgument`].

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use rand::SeedableRng;
use rand::seq::SliceRandom;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use crate::error::DataError;
use crate::matrix::Matrix;
use crate::spec::{
    AttributeSpec, DEFAULT_VALID_FRACTION, DatasetSpec, ExcludeTaskColumns, MAX_ATTRIBUTES,
    MAX_CELLS, Op, PredicateValue, Scalar, SensitiveSpec, SplitFractions, SplitKind, TaskKind,
    TaskSpec, Unmatched, check_sensitive,
};
use crate::table::{Table, read_partition, read_table};

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
    /// Several sensitive attributes, replacing the spec's `[sensitive]` (empty: the spec's one
    /// attribute). The rows are then grouped by the intersection cells of the attributes'
    /// groups ([`Split::groups`], [`Schema::groups`]) and carry each attribute's group too
    /// ([`Split::attributes`], [`Schema::attributes`]); a one-element list gives the same
    /// groups as the spec's table, with the attribute recorded.
    pub attributes: Vec<AttributeSpec>,
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
            attributes: Vec::new(),
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
    /// With several sensitive attributes, what each attribute's group ids mean, in attribute
    /// order; [`Schema::groups`] then names the intersection cells. Empty with the spec's
    /// single `[sensitive]` table (and absent from manifests written before it existed).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub attributes: Vec<AttributeInfo>,
}

/// One sensitive attribute of a run with several.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AttributeInfo {
    /// The attribute's name.
    pub name: String,
    /// Its column.
    pub column: String,
    /// Its group names; group id = index.
    pub groups: Vec<String>,
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

/// The three splits of a dataset.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SplitName {
    /// The rows the model is fitted on.
    Train,
    /// The rows models are chosen on.
    Valid,
    /// The rows results are reported on.
    Test,
}

impl SplitName {
    /// All three, in order.
    pub const ALL: [SplitName; 3] = [SplitName::Train, SplitName::Valid, SplitName::Test];

    /// `train`, `valid` or `test`.
    pub fn name(self) -> &'static str {
        match self {
            Self::Train => "train",
            Self::Valid => "valid",
            Self::Test => "test",
        }
    }
}

impl std::fmt::Display for SplitName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for SplitName {
    type Err = DataError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|n| n.name() == s)
            .ok_or_else(|| DataError::InvalidArgument {
                what: "split".into(),
                expected: "train, valid or test".into(),
                found: format!("`{s}`"),
            })
    }
}

/// One split: features, group ids and targets, row by row.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Split {
    /// `n x d` features.
    pub x: Matrix<f32>,
    /// Group id per row, in `0..n_groups`: with several sensitive attributes, the
    /// intersection cell (see [`Schema::groups`]). Batches and splits are stratified by it.
    pub groups: Vec<u32>,
    /// One vector per task, each of length `n`; binary tasks are 0.0 / 1.0.
    pub targets: Vec<Vec<f32>>,
    /// With several sensitive attributes, one vector of group ids per attribute (ids into
    /// [`AttributeInfo::groups`]), each of length `n`; empty with one attribute.
    pub attributes: Vec<Vec<u32>>,
}

impl Split {
    /// Number of rows.
    pub fn len(&self) -> usize {
        self.x.rows
    }

    /// Whether the split has no row.
    pub fn is_empty(&self) -> bool {
        self.x.rows == 0
    }

    /// The rows `idx` (in that order) as a new split, e.g. a minibatch.
    pub fn gather(&self, idx: &[usize]) -> Split {
        Split {
            x: self.x.gather(idx),
            groups: idx.iter().map(|&i| self.groups[i]).collect(),
            targets: self
                .targets
                .iter()
                .map(|t| idx.iter().map(|&i| t[i]).collect())
                .collect(),
            attributes: self
                .attributes
                .iter()
                .map(|a| idx.iter().map(|&i| a[i]).collect())
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

    /// Keeps only the targets of `order` (indices into the current targets), in that order.
    pub fn keep_targets(&mut self, order: &[usize]) {
        self.targets = order.iter().map(|&i| self.targets[i].clone()).collect();
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

    /// One split by name.
    pub fn split(&self, name: SplitName) -> &Split {
        match name {
            SplitName::Train => &self.train,
            SplitName::Valid => &self.valid,
            SplitName::Test => &self.test,
        }
    }

    /// Keeps only the tasks `order` (indices into the current tasks), in that order, in the
    /// schema and in every split.
    pub fn keep_tasks(&mut self, order: &[usize]) {
        self.schema.tasks = order
            .iter()
            .map(|&i| self.schema.tasks[i].clone())
            .collect();
        for split in [&mut self.train, &mut self.valid, &mut self.test] {
            split.keep_targets(order);
        }
    }
}

/// How [`load`] encodes the data.
#[derive(Debug, Clone, Copy)]
pub enum Encoding<'a> {
    /// Fit the preprocessing on the train split (a new run).
    Fit,
    /// A checkpoint's schema and preprocessing: input columns, groups and tasks must match
    /// (resuming, or reopening a finished run).
    Resume(&'a Schema, &'a Preprocessing),
    /// A trained encoder's schema and preprocessing with other tasks (transfer): input
    /// columns and groups must match. `opts.aware` and `opts.held_out` are ignored (the saved
    /// input columns decide). The saved schema's tasks that the spec defines are loaded too
    /// (then dropped), so that the same rows are kept and a random split is stratified as it
    /// was in training: on the same dataset with the same `split_seed`, every split holds the
    /// rows it held for the encoder (unless a transfer task's column has missing values that
    /// drop rows).
    Transfer(&'a Schema, &'a Preprocessing),
}

/// Loads `spec` from `opts.data_dir`, encoded as `encoding` says; a mismatch with a saved
/// schema is [`DataError::SchemaMismatch`].
pub fn load(
    spec: &DatasetSpec,
    opts: &LoadOptions,
    encoding: Encoding<'_>,
) -> Result<Dataset, DataError> {
    match encoding {
        Encoding::Transfer(schema, preprocessing) => {
            load_for_transfer(spec, opts, schema, preprocessing)
        }
        _ => load_encoded(spec, opts, encoding),
    }
}

/// [`Encoding::Transfer`]: the spec restricted to the saved input columns, the saved tasks
/// loaded alongside the wanted ones, then dropped.
fn load_for_transfer(
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
    let mut dataset = load_encoded(&spec, &opts, Encoding::Transfer(schema, preprocessing))?;
    let keep: Vec<usize> = wanted
        .iter()
        .filter_map(|w| loaded.iter().position(|l| l == w))
        .collect();
    dataset.keep_tasks(&keep);
    dataset.schema.aware = schema.aware;
    Ok(dataset)
}

/// The stages of [`load`] for one spec and encoding.
fn load_encoded(
    spec: &DatasetSpec,
    opts: &LoadOptions,
    encoding: Encoding<'_>,
) -> Result<Dataset, DataError> {
    spec.validate()?;
    let tasks = select_tasks(spec, opts)?;
    check_attributes(spec, opts)?;
    let inputs = InputColumns::select(spec, opts, &tasks)?;
    let mut tables = Tables::read(spec, opts, &inputs.needed(spec, opts, &tasks))?;
    let mut rows = keep_rows(spec, opts, &mut tables, &tasks)?;
    assign_splits(spec, opts, &tasks, &mut rows)?;
    let preprocessing = match encoding {
        Encoding::Fit => fit_preprocessing(&mut tables, &rows, &inputs)?,
        Encoding::Resume(_, p) | Encoding::Transfer(_, p) => p.clone(),
    };
    let schema = build_schema(spec, opts, &tasks, &inputs, &preprocessing, &rows);
    match encoding {
        Encoding::Fit => {}
        Encoding::Resume(saved, p) => {
            check_schema(saved, &schema, false)?;
            check_preprocessing(saved, p)?;
        }
        Encoding::Transfer(saved, p) => {
            check_schema(saved, &schema, true)?;
            check_preprocessing(saved, p)?;
        }
    }
    let [train, valid, test] = encode_splits(&mut tables, &rows, &schema, &preprocessing)?;
    Ok(Dataset {
        name: spec.name.clone(),
        schema,
        preprocessing,
        train,
        valid,
        test,
    })
}

/// Stage 1: the tasks to load, in order (`opts.tasks`, else every task of the spec).
fn select_tasks<'s>(
    spec: &'s DatasetSpec,
    opts: &LoadOptions,
) -> Result<Vec<&'s TaskSpec>, DataError> {
    let Some(names) = &opts.tasks else {
        return Ok(spec.tasks.iter().collect());
    };
    let mut tasks: Vec<&TaskSpec> = Vec::with_capacity(names.len());
    for n in names {
        let t = find_task(spec, n)?;
        if tasks.iter().any(|o| o.name == t.name) {
            return Err(DataError::InvalidArgument {
                what: "task list".into(),
                expected: "each task once".into(),
                found: format!("`{n}` twice"),
            });
        }
        tasks.push(t);
    }
    if tasks.is_empty() {
        return Err(DataError::InvalidArgument {
            what: "task list".into(),
            expected: "at least one task".into(),
            found: "an empty list".into(),
        });
    }
    Ok(tasks)
}

fn find_task<'s>(spec: &'s DatasetSpec, name: &str) -> Result<&'s TaskSpec, DataError> {
    spec.tasks
        .iter()
        .find(|t| t.name == name)
        .ok_or_else(|| DataError::UnknownTask {
            dataset: spec.name.clone(),
            task: name.to_string(),
            available: spec.tasks.iter().map(|t| t.name.clone()).collect(),
        })
}

/// Stage 2: the input columns left once the sensitive, task and held-out columns are removed.
struct InputColumns {
    numeric: Vec<String>,
    categorical: Vec<String>,
}

impl InputColumns {
    fn select(
        spec: &DatasetSpec,
        opts: &LoadOptions,
        tasks: &[&TaskSpec],
    ) -> Result<Self, DataError> {
        let mut excluded: Vec<String> = Vec::new();
        for name in &opts.held_out {
            let t = find_task(spec, name)?;
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
            for s in sensitive_specs(spec, opts) {
                push_unique(&mut excluded, &s.column);
            }
            let task_columns: Vec<&TaskSpec> = match spec.inputs.exclude_task_columns {
                ExcludeTaskColumns::Selected => tasks.to_vec(),
                ExcludeTaskColumns::All => spec.tasks.iter().collect(),
            };
            task_columns
                .iter()
                .for_each(|t| push_unique(&mut excluded, &t.column));
        }
        let keep = |cols: &[String]| -> Vec<String> {
            cols.iter()
                .filter(|c| !excluded.contains(c))
                .cloned()
                .collect()
        };
        let inputs = Self {
            numeric: keep(&spec.inputs.numeric),
            categorical: keep(&spec.inputs.categorical),
        };
        if inputs.numeric.is_empty() && inputs.categorical.is_empty() {
            return Err(DataError::InvalidArgument {
                what: format!("inputs of dataset `{}`", spec.name),
                expected: "at least one input column left".into(),
                found: format!(
                    "none after removing the sensitive and task columns [{}]",
                    excluded.join(", ")
                ),
            });
        }
        Ok(inputs)
    }

    /// Every column the rows need: inputs, the sensitive column, the tasks', the filters' and
    /// the partition key.
    fn needed(&self, spec: &DatasetSpec, opts: &LoadOptions, tasks: &[&TaskSpec]) -> Vec<String> {
        let mut needed: Vec<String> = Vec::new();
        self.numeric
            .iter()
            .chain(&self.categorical)
            .for_each(|c| push_unique(&mut needed, c));
        for s in sensitive_specs(spec, opts) {
            push_unique(&mut needed, &s.column);
        }
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
        needed
    }
}

/// Stage 3: the data files read (the train file, and the official test file), with their
/// cache of parsed numbers and, for a partition split from a separate file, each main-table
/// row's partition value.
struct Tables {
    tables: Vec<Table>,
    caches: Vec<NumCache>,
    partition: Option<Vec<String>>,
}

impl Tables {
    fn read(spec: &DatasetSpec, opts: &LoadOptions, needed: &[String]) -> Result<Self, DataError> {
        let read = |file: &crate::spec::FileSpec| {
            read_table(
                &opts.data_dir.join(&file.path),
                &spec.format,
                file.skip_lines,
                needed,
            )
        };
        let mut tables = vec![read(&spec.files.train)?];
        if let Some(t) = &spec.files.test {
            tables.push(read(t)?);
        }
        if let Some(t) = tables.iter().find(|t| t.n_rows() == 0) {
            return Err(DataError::NoRows {
                file: t.path.clone(),
                reason: "no data rows (only a header); expected at least one row per \
                         sensitive group"
                    .into(),
            });
        }
        let partition = match (spec.split.kind, &spec.split.partition_file) {
            (SplitKind::Partition, Some(pf)) => {
                let col = spec.split.column.as_deref().unwrap_or_default();
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
        let caches = tables.iter().map(NumCache::new).collect();
        Ok(Self {
            tables,
            caches,
            partition,
        })
    }

    /// The numeric value of column `column` at row `row` of table `table`.
    fn number(&mut self, table: usize, column: &str, row: usize) -> Result<f64, DataError> {
        let t = &self.tables[table];
        self.caches[table].get(t, t.col(column), row)
    }
}

/// One kept row: where it comes from, its group, its targets and its split (fixed by the
/// files, or assigned in [`assign_splits`]).
struct Kept {
    table: usize,
    row: usize,
    group: u32,
    /// Each attribute's group, with [`LoadOptions::attributes`] (else empty).
    attributes: Vec<u32>,
    targets: Vec<f32>,
    split: Option<SplitName>,
}

/// The rows kept and the group names (the `other` group appended when used).
struct KeptRows {
    kept: Vec<Kept>,
    group_names: Vec<String>,
    /// With [`LoadOptions::attributes`], what each attribute's ids mean (else empty).
    attributes: Vec<AttributeInfo>,
}

impl KeptRows {
    /// The rows of each split, as indices into `kept`.
    fn by_split(&self) -> [Vec<usize>; 3] {
        let mut out: [Vec<usize>; 3] = Default::default();
        for (i, k) in self.kept.iter().enumerate() {
            let s = k.split.expect("every row is assigned a split");
            out[s as usize].push(i);
        }
        out
    }

    /// `name: count` for each group, for error messages.
    fn sizes(&self, counts: &[usize]) -> String {
        self.group_names
            .iter()
            .zip(counts)
            .map(|(g, c)| format!("{g}: {c}"))
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// What the sensitive value of a row says.
enum GroupOf {
    Group(u32),
    Other,
    Drop,
}

/// The group of row `r` (see [`SensitiveSpec`]).
fn row_group(
    t: &Table,
    cache: &mut NumCache,
    sens: &SensitiveSpec,
    col: usize,
    r: usize,
) -> Result<GroupOf, DataError> {
    if let Some(th) = sens.threshold {
        return Ok(GroupOf::Group(u32::from(cache.get(t, col, r)? >= th)));
    }
    let groups = sens.groups.as_deref().unwrap_or_default();
    for (gi, g) in groups.iter().enumerate() {
        for v in &g.values {
            if scalar_matches(t, cache, col, r, v)? {
                return Ok(GroupOf::Group(gi as u32));
            }
        }
    }
    match sens.unmatched {
        Unmatched::Drop => Ok(GroupOf::Drop),
        Unmatched::Other => Ok(GroupOf::Other),
        Unmatched::Error => {
            let listed: Vec<String> = groups
                .iter()
                .flat_map(|g| g.values.iter().map(|v| v.to_string()))
                .collect();
            Err(DataError::BadCell {
                file: t.path.clone(),
                line: t.lines[r],
                column: sens.column.clone(),
                expected: format!(
                    "one of the sensitive values [{}] (or set sensitive.unmatched)",
                    listed.join(", ")
                ),
                found: t.cell(col, r).to_string(),
            })
        }
    }
}

/// The split a row's files fix: the official test file, or a partition value.
fn fixed_split(
    spec: &DatasetSpec,
    table_index: usize,
    t: &Table,
    partition: Option<&[String]>,
    r: usize,
) -> Result<Option<SplitName>, DataError> {
    let split = &spec.split;
    match split.kind {
        SplitKind::Official if table_index == 1 => Ok(Some(SplitName::Test)),
        SplitKind::Official | SplitKind::Random => Ok(None),
        SplitKind::Partition => {
            let column = split.column.clone().unwrap_or_default();
            let cell = match partition {
                Some(p) => p[r].as_str(),
                None => t.cell(t.col(&column), r),
            };
            let lists = [&split.train_values, &split.valid_values, &split.test_values];
            for (name, list) in SplitName::ALL.into_iter().zip(lists) {
                let hit = list.as_deref().unwrap_or_default().iter().any(|v| match v {
                    Scalar::Text(s) => s == cell,
                    Scalar::Number(x) => parse_finite(cell) == Some(*x),
                });
                if hit {
                    return Ok(Some(name));
                }
            }
            Err(DataError::BadCell {
                file: t.path.clone(),
                line: t.lines[r],
                column,
                expected: "a value listed in split.train_values / valid_values / test_values"
                    .into(),
                found: cell.to_string(),
            })
        }
    }
}

/// The sensitive attributes of a load: [`LoadOptions::attributes`], else the spec's table.
fn sensitive_specs(spec: &DatasetSpec, opts: &LoadOptions) -> Vec<SensitiveSpec> {
    if opts.attributes.is_empty() {
        vec![spec.sensitive.clone()]
    } else {
        opts.attributes
            .iter()
            .map(AttributeSpec::sensitive)
            .collect()
    }
}

/// Checks [`LoadOptions::attributes`]: at most [`MAX_ATTRIBUTES`], distinct non-empty names,
/// each a valid `[sensitive]` table; errors name `data.sensitive[i]`.
fn check_attributes(spec: &DatasetSpec, opts: &LoadOptions) -> Result<(), DataError> {
    let attrs = &opts.attributes;
    if attrs.len() > MAX_ATTRIBUTES {
        return Err(DataError::InvalidArgument {
            what: "sensitive attributes (data.sensitive)".into(),
            expected: format!("at most {MAX_ATTRIBUTES}"),
            found: attrs.len().to_string(),
        });
    }
    for (i, a) in attrs.iter().enumerate() {
        let key = format!("data.sensitive[{i}]");
        if a.name.trim().is_empty() || attrs[..i].iter().any(|o| o.name == a.name) {
            return Err(DataError::InvalidArgument {
                what: format!("{key}.name"),
                expected: "a distinct non-empty attribute name".into(),
                found: format!("`{}`", a.name),
            });
        }
        check_sensitive(spec, &key, &a.sensitive()).map_err(|e| match e {
            DataError::SpecInvalid {
                key,
                expected,
                found,
                ..
            } => DataError::InvalidArgument {
                what: format!("sensitive attribute `{}`: key `{key}`", a.name),
                expected,
                found,
            },
            other => other,
        })?;
    }
    Ok(())
}

/// The group names of one `[sensitive]` table before the `other` group.
fn listed_group_names(sens: &SensitiveSpec) -> Vec<String> {
    match (&sens.groups, sens.threshold) {
        (Some(g), _) => g.iter().map(|g| g.name.clone()).collect(),
        (None, Some(th)) => sens
            .threshold_names
            .clone()
            .unwrap_or_else(|| vec![format!("lt_{th}"), format!("ge_{th}")]),
        (None, None) => unreachable!("validated"),
    }
}

/// Stage 4: the rows that pass the filters, with their group, targets and fixed split. With
/// several attributes, a row dropped by one attribute (`unmatched = "drop"`) is dropped, and
/// the row's group is its intersection cell: the cells present in the data, numbered in the
/// lexicographic order of their attributes' group ids, named `A & B`.
fn keep_rows(
    spec: &DatasetSpec,
    opts: &LoadOptions,
    tables: &mut Tables,
    tasks: &[&TaskSpec],
) -> Result<KeptRows, DataError> {
    let specs = sensitive_specs(spec, opts);
    let several = !opts.attributes.is_empty();
    let mut names: Vec<Vec<String>> = specs.iter().map(listed_group_names).collect();
    let other_ids: Vec<u32> = names.iter().map(|n| n.len() as u32).collect();
    let mut other_used = vec![false; specs.len()];
    let mut kept: Vec<Kept> = Vec::new();
    let Tables {
        tables,
        caches,
        partition,
    } = tables;
    for (ti, t) in tables.iter().enumerate() {
        let cache = &mut caches[ti];
        let filt_cols: Vec<usize> = spec.filters.iter().map(|f| t.col(&f.column)).collect();
        let sens_cols: Vec<usize> = specs.iter().map(|s| t.col(&s.column)).collect();
        let task_cols: Vec<usize> = tasks.iter().map(|tk| t.col(&tk.column)).collect();
        let part = if ti == 0 { partition.as_deref() } else { None };
        'rows: for r in 0..t.n_rows() {
            for (f, &c) in spec.filters.iter().zip(&filt_cols) {
                if !eval_pred(t, cache, c, r, f.op, &f.value)? {
                    continue 'rows;
                }
            }
            let mut ids = Vec::with_capacity(specs.len());
            for (a, (sens, &sc)) in specs.iter().zip(&sens_cols).enumerate() {
                ids.push(match row_group(t, cache, sens, sc, r)? {
                    GroupOf::Group(g) => g,
                    GroupOf::Other => {
                        other_used[a] = true;
                        other_ids[a]
                    }
                    GroupOf::Drop => continue 'rows,
                });
            }
            let mut targets = Vec::with_capacity(tasks.len());
            for (tk, &c) in tasks.iter().zip(&task_cols) {
                targets.push(match tk.kind {
                    TaskKind::Binary => {
                        let (op, v) = (
                            tk.op.expect("validated"),
                            tk.value.as_ref().expect("validated"),
                        );
                        f32::from(u8::from(eval_pred(t, cache, c, r, op, v)?))
                    }
                    TaskKind::Regression => {
                        let v = cache.get(t, c, r)?;
                        match tk.transform {
                            None => v as f32,
                            Some(tr) => tr.apply(v).ok_or_else(|| DataError::BadCell {
                                file: t.path.clone(),
                                line: t.lines[r],
                                column: t.columns[c].clone(),
                                expected: tr.domain().into(),
                                found: t.cell(c, r).to_string(),
                            })? as f32,
                        }
                    }
                });
            }
            kept.push(Kept {
                table: ti,
                row: r,
                group: ids[0],
                attributes: if several { ids } else { Vec::new() },
                targets,
                split: fixed_split(spec, ti, t, part, r)?,
            });
        }
    }
    for ((names, sens), used) in names.iter_mut().zip(&specs).zip(other_used) {
        if used {
            names.push(sens.other_name.clone().unwrap_or_else(|| "other".into()));
        }
    }
    if kept.is_empty() {
        let read: usize = tables.iter().map(Table::n_rows).sum();
        return Err(DataError::NoRows {
            file: spec.source.clone(),
            reason: format!(
                "the filters of dataset `{}` keep none of the {read} rows read from {} \
                 (or every row's sensitive value is dropped)",
                spec.name,
                tables
                    .iter()
                    .map(|t| format!("`{}`", t.path.display()))
                    .collect::<Vec<_>>()
                    .join(" and ")
            ),
        });
    }
    let rows = if several {
        intersect(spec, opts, kept, names)?
    } else {
        let group_names = names.pop().expect("one attribute");
        KeptRows {
            kept,
            group_names,
            attributes: Vec::new(),
        }
    };
    if rows.group_names.len() < 2 {
        return Err(DataError::InvalidArgument {
            what: format!("sensitive groups of dataset `{}`", spec.name),
            expected: "at least two groups (demographic parity compares groups)".into(),
            found: format!("only [{}]", rows.group_names.join(", ")),
        });
    }
    let mut total = vec![0usize; rows.group_names.len()];
    rows.kept.iter().for_each(|k| total[k.group as usize] += 1);
    if let Some(g) = total.iter().position(|&c| c == 0) {
        return Err(DataError::EmptyGroup {
            dataset: spec.name.clone(),
            group: rows.group_names[g].clone(),
            split: "filtered data".into(),
            sizes: rows.sizes(&total),
        });
    }
    Ok(rows)
}

/// The intersection cells of several attributes: every attribute's groups must have rows and
/// be at least two; the cells present are numbered in the lexicographic order of the
/// attributes' group ids (at most [`MAX_CELLS`]).
fn intersect(
    spec: &DatasetSpec,
    opts: &LoadOptions,
    mut kept: Vec<Kept>,
    names: Vec<Vec<String>>,
) -> Result<KeptRows, DataError> {
    let attributes: Vec<AttributeInfo> = opts
        .attributes
        .iter()
        .zip(names)
        .map(|(a, groups)| AttributeInfo {
            name: a.name.clone(),
            column: a.column.clone(),
            groups,
        })
        .collect();
    for (a, info) in attributes.iter().enumerate() {
        let mut counts = vec![0usize; info.groups.len()];
        kept.iter()
            .for_each(|k| counts[k.attributes[a] as usize] += 1);
        let sizes = || {
            info.groups
                .iter()
                .zip(&counts)
                .map(|(g, c)| format!("{g}: {c}"))
                .collect::<Vec<_>>()
                .join(", ")
        };
        if let Some(g) = counts.iter().position(|&c| c == 0) {
            return Err(DataError::EmptyGroup {
                dataset: spec.name.clone(),
                group: format!("{} (attribute `{}`)", info.groups[g], info.name),
                split: "filtered data".into(),
                sizes: sizes(),
            });
        }
        if counts.len() < 2 {
            return Err(DataError::InvalidArgument {
                what: format!(
                    "sensitive attribute `{}` of dataset `{}`",
                    info.name, spec.name
                ),
                expected: "at least two groups (demographic parity compares groups)".into(),
                found: format!("only [{}]", sizes()),
            });
        }
    }
    let cells: std::collections::BTreeSet<Vec<u32>> =
        kept.iter().map(|k| k.attributes.clone()).collect();
    if cells.len() > MAX_CELLS {
        return Err(DataError::InvalidArgument {
            what: format!(
                "intersection cells of the sensitive attributes [{}] (data.sensitive)",
                attributes
                    .iter()
                    .map(|a| a.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            expected: format!("at most {MAX_CELLS} cells with rows (merge groups)"),
            found: cells.len().to_string(),
        });
    }
    let id_of: BTreeMap<&[u32], u32> = cells
        .iter()
        .enumerate()
        .map(|(i, c)| (c.as_slice(), i as u32))
        .collect();
    let group_names: Vec<String> = cells
        .iter()
        .map(|c| {
            c.iter()
                .zip(&attributes)
                .map(|(&g, a)| a.groups[g as usize].as_str())
                .collect::<Vec<_>>()
                .join(" & ")
        })
        .collect();
    for k in &mut kept {
        k.group = id_of[k.attributes.as_slice()];
    }
    Ok(KeptRows {
        kept,
        group_names,
        attributes,
    })
}

/// Stage 5: the rows without a fixed split, stratified by group and first binary label; then
/// every group must have rows in every split.
fn assign_splits(
    spec: &DatasetSpec,
    opts: &LoadOptions,
    tasks: &[&TaskSpec],
    rows: &mut KeptRows,
) -> Result<(), DataError> {
    let split = &spec.split;
    let strat_key = |k: &Kept| -> u64 {
        let label = match tasks[0].kind {
            TaskKind::Binary => k.targets[0] as u64,
            TaskKind::Regression => 0,
        };
        u64::from(k.group) * 2 + label
    };
    let free: Vec<usize> = (0..rows.kept.len())
        .filter(|&i| rows.kept[i].split.is_none())
        .collect();
    if !free.is_empty() {
        let keys: Vec<u64> = free.iter().map(|&i| strat_key(&rows.kept[i])).collect();
        let (fractions, names): (Vec<f64>, Vec<SplitName>) = match split.kind {
            SplitKind::Official => {
                let v = split.valid_fraction.unwrap_or(DEFAULT_VALID_FRACTION);
                (vec![1.0 - v, v], vec![SplitName::Train, SplitName::Valid])
            }
            _ => {
                let f = opts.split.or(split.fractions).unwrap_or_default();
                f.validate()?;
                (vec![f.train, f.valid, f.test], SplitName::ALL.to_vec())
            }
        };
        let assigned = stratified_assign(&keys, &fractions, opts.split_seed);
        for (j, &i) in free.iter().enumerate() {
            rows.kept[i].split = Some(names[assigned[j]]);
        }
    }
    let n_groups = rows.group_names.len();
    for (name, members) in SplitName::ALL.into_iter().zip(rows.by_split()) {
        let mut c = vec![0usize; n_groups];
        members
            .iter()
            .for_each(|&i| c[rows.kept[i].group as usize] += 1);
        if let Some(g) = c.iter().position(|&x| x == 0) {
            if !rows.attributes.is_empty() {
                return Err(DataError::EmptyCell {
                    dataset: spec.name.clone(),
                    cell: rows.group_names[g].clone(),
                    attributes: rows
                        .attributes
                        .iter()
                        .map(|a| a.name.as_str())
                        .collect::<Vec<_>>()
                        .join(", "),
                    split: name.name().into(),
                    sizes: rows.sizes(&c),
                });
            }
            return Err(DataError::EmptyGroup {
                dataset: spec.name.clone(),
                group: rows.group_names[g].clone(),
                split: name.name().into(),
                sizes: rows.sizes(&c),
            });
        }
    }
    Ok(())
}

/// Stage 6: standardisation statistics and category lists from the train rows.
fn fit_preprocessing(
    tables: &mut Tables,
    rows: &KeptRows,
    inputs: &InputColumns,
) -> Result<Preprocessing, DataError> {
    let train_rows = &rows.by_split()[SplitName::Train as usize];
    let mut numeric = Vec::with_capacity(inputs.numeric.len());
    for c in &inputs.numeric {
        let mut values = Vec::with_capacity(train_rows.len());
        for &i in train_rows {
            let k = &rows.kept[i];
            values.push(tables.number(k.table, c, k.row)?);
        }
        // Two passes, the first shifted by the first value: a constant column gets its exact
        // value as mean and variance 0, and a large common offset does not cancel the spread.
        let n = values.len() as f64;
        let shift = values.first().copied().unwrap_or(0.0);
        let mean = shift + values.iter().map(|v| v - shift).sum::<f64>() / n;
        let var = values.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / n;
        let std = if var > 1e-24 { var.sqrt() } else { 1.0 };
        numeric.push(NumericStats {
            column: c.clone(),
            mean,
            std,
        });
    }
    let mut categorical = Vec::with_capacity(inputs.categorical.len());
    for c in &inputs.categorical {
        let tables = &tables.tables;
        let cols: Vec<usize> = tables.iter().map(|t| t.col(c)).collect();
        let mut flags: Vec<Vec<bool>> = tables
            .iter()
            .zip(&cols)
            .map(|(t, &col)| vec![false; t.dicts[col].dict.len()])
            .collect();
        let mut seen: Vec<&str> = Vec::new();
        for &i in train_rows {
            let k = &rows.kept[i];
            let t = &tables[k.table];
            let col = cols[k.table];
            let code = t.codes[col][k.row] as usize;
            if !flags[k.table][code] {
                flags[k.table][code] = true;
                seen.push(&t.dicts[col].dict[code]);
            }
        }
        let mut categories: Vec<String> = seen.iter().map(|s| s.to_string()).collect();
        categories.sort();
        categories.dedup();
        categorical.push(CategoryLevels {
            column: c.clone(),
            categories,
        });
    }
    Ok(Preprocessing {
        numeric,
        categorical,
    })
}

/// Stage 7: what the features, groups and targets mean.
fn build_schema(
    spec: &DatasetSpec,
    opts: &LoadOptions,
    tasks: &[&TaskSpec],
    inputs: &InputColumns,
    preprocessing: &Preprocessing,
    rows: &KeptRows,
) -> Schema {
    let mut columns = Vec::new();
    let mut features = Vec::new();
    for c in &inputs.numeric {
        columns.push(InputColumn {
            column: c.clone(),
            kind: ColumnKind::Numeric,
            categories: Vec::new(),
        });
        features.push(c.clone());
    }
    for c in &inputs.categorical {
        let categories = preprocessing
            .categorical
            .iter()
            .find(|l| &l.column == c)
            .map(|l| l.categories.clone())
            .unwrap_or_default();
        features.extend(categories.iter().map(|v| format!("{c}={v}")));
        columns.push(InputColumn {
            column: c.clone(),
            kind: ColumnKind::Categorical,
            categories,
        });
    }
    Schema {
        dataset: spec.name.clone(),
        features,
        inputs: columns,
        sensitive_column: if rows.attributes.is_empty() {
            spec.sensitive.column.clone()
        } else {
            rows.attributes
                .iter()
                .map(|a| a.column.as_str())
                .collect::<Vec<_>>()
                .join(" & ")
        },
        groups: rows.group_names.clone(),
        tasks: tasks
            .iter()
            .map(|t| TaskInfo {
                name: t.name.clone(),
                column: t.column.clone(),
                kind: t.kind,
            })
            .collect(),
        aware: opts.aware,
        attributes: rows.attributes.clone(),
    }
}

/// Stage 8: the encoded splits (standardised numbers, one-hot blocks).
fn encode_splits(
    tables: &mut Tables,
    rows: &KeptRows,
    schema: &Schema,
    preprocessing: &Preprocessing,
) -> Result<[Split; 3], DataError> {
    let enc = Encoder::new(schema, preprocessing)?;
    let d = schema.features.len();
    let n_tasks = schema.tasks.len();
    // Per table and one-hot block: the position of each interned value (computed once).
    let mut onehot: Vec<Vec<Vec<Option<usize>>>> = tables
        .tables
        .iter()
        .map(|t| {
            enc.cat_maps
                .iter()
                .map(|(c, _)| vec![None; t.dicts[t.col(c)].dict.len()])
                .collect()
        })
        .collect();
    let cat_cols: Vec<Vec<usize>> = tables
        .tables
        .iter()
        .map(|t| enc.cat_maps.iter().map(|(c, _)| t.col(c)).collect())
        .collect();
    let mut splits = Vec::with_capacity(3);
    for members in rows.by_split() {
        let n = members.len();
        let mut x = vec![0f32; n * d];
        for (j, &i) in members.iter().enumerate() {
            let k = &rows.kept[i];
            let out = &mut x[j * d..(j + 1) * d];
            for (f, st) in preprocessing.numeric.iter().enumerate() {
                let v = tables.number(k.table, &st.column, k.row)?;
                out[f] = ((v - st.mean) / st.std) as f32;
            }
            let t = &tables.tables[k.table];
            for (b, (_, map)) in enc.cat_maps.iter().enumerate() {
                let col = cat_cols[k.table][b];
                let code = t.codes[col][k.row] as usize;
                let slot = onehot[k.table][b][code].get_or_insert_with(|| {
                    map.get(t.dicts[col].dict[code].as_str())
                        .copied()
                        .unwrap_or(usize::MAX)
                });
                if *slot != usize::MAX {
                    out[enc.offsets[b] + *slot] = 1.0;
                }
            }
        }
        let targets = (0..n_tasks)
            .map(|ti| members.iter().map(|&i| rows.kept[i].targets[ti]).collect())
            .collect();
        splits.push(Split {
            x: Matrix::new(x, n, d),
            groups: members.iter().map(|&i| rows.kept[i].group).collect(),
            targets,
            attributes: (0..rows.attributes.len())
                .map(|a| {
                    members
                        .iter()
                        .map(|&i| rows.kept[i].attributes[a])
                        .collect()
                })
                .collect(),
        });
    }
    let mut splits = splits.into_iter();
    Ok([
        splits.next().expect("3 splits"),
        splits.next().expect("3 splits"),
        splits.next().expect("3 splits"),
    ])
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

    /// A table with a numeric input `a`, attributes `sex` (F/M) and `race` (W/B/O), task `y`;
    /// `race = O` only where `keep_o(i)`.
    fn attribute_table(dir: &Path, keep_o: impl Fn(usize) -> bool) -> DatasetSpec {
        std::fs::create_dir_all(dir).unwrap();
        let mut csv = String::from("a,sex,race,y\n");
        for i in 0..600 {
            let sex = ["F", "M"][i % 2];
            let race = match (i / 2) % 3 {
                2 if keep_o(i) => "O",
                2 => "W",
                r => ["W", "B"][r],
            };
            csv += &format!("{},{sex},{race},{}\n", i % 11, (i / 6) % 2);
        }
        std::fs::write(dir.join("t.csv"), csv).unwrap();
        crate::spec::parse_spec(
            "name = \"t\"\n[files]\ntrain = { path = \"t.csv\" }\n[inputs]\nnumeric = \
             [\"a\"]\ncategorical = [\"sex\", \"race\"]\n[sensitive]\ncolumn = \"sex\"\n\
             groups = [{ name = \"F\", values = [\"F\"] }, { name = \"M\", values = \
             [\"M\"] }]\n[[tasks]]\nname = \"y\"\ncolumn = \"y\"\nop = \"==\"\nvalue = \
             1\n[split]\nkind = \"random\"\n",
            &dir.join("t.toml"),
        )
        .unwrap()
    }

    fn attribute(name: &str, column: &str, groups: &[(&str, &[&str])]) -> AttributeSpec {
        AttributeSpec {
            name: name.into(),
            column: column.into(),
            groups: Some(
                groups
                    .iter()
                    .map(|(n, v)| crate::spec::GroupSpec {
                        name: (*n).into(),
                        values: v.iter().map(|s| Scalar::Text((*s).into())).collect(),
                    })
                    .collect(),
            ),
            threshold: None,
            threshold_names: None,
            unmatched: Unmatched::Error,
            other_name: None,
        }
    }

    #[test]
    fn several_attributes_give_dense_named_cells_and_per_attribute_ids() {
        let dir = std::env::temp_dir().join(format!("fairrep-load-attr-{}", std::process::id()));
        let spec = attribute_table(&dir, |_| true);
        let sex = attribute("sex", "sex", &[("F", &["F"]), ("M", &["M"])]);
        let race = attribute(
            "race",
            "race",
            &[("W", &["W"]), ("B", &["B"]), ("O", &["O"])],
        );
        let opts = LoadOptions {
            data_dir: dir.clone(),
            attributes: vec![sex.clone(), race.clone()],
            ..LoadOptions::default()
        };
        let ds = load(&spec, &opts, Encoding::Fit).unwrap();
        assert_eq!(
            ds.schema.groups,
            ["F & W", "F & B", "F & O", "M & W", "M & B", "M & O"]
        );
        assert_eq!(ds.schema.sensitive_column, "sex & race");
        let names: Vec<&str> = ds
            .schema
            .attributes
            .iter()
            .map(|a| a.name.as_str())
            .collect();
        assert_eq!(names, ["sex", "race"]);
        assert_eq!(ds.schema.attributes[1].groups, ["W", "B", "O"]);
        // Neither attribute column is an input.
        assert!(
            ds.schema
                .features
                .iter()
                .all(|f| !f.starts_with("sex") && !f.starts_with("race"))
        );
        for split in [&ds.train, &ds.valid, &ds.test] {
            assert_eq!(split.attributes.len(), 2);
            for i in 0..split.len() {
                let (s, r) = (split.attributes[0][i], split.attributes[1][i]);
                assert_eq!(split.groups[i], s * 3 + r, "row {i}");
            }
            assert!(split.group_counts(6).iter().all(|&c| c > 0));
            // A gathered batch keeps the attributes row by row.
            let b = split.gather(&[2, 0]);
            assert_eq!(
                b.attributes[1],
                vec![split.attributes[1][2], split.attributes[1][0]]
            );
        }
        // The single table, and the same attribute as a one-element list, give the same rows
        // and groups; the list records the attribute.
        let single = load(
            &spec,
            &LoadOptions {
                data_dir: dir.clone(),
                ..LoadOptions::default()
            },
            Encoding::Fit,
        )
        .unwrap();
        let one = load(
            &spec,
            &LoadOptions {
                data_dir: dir.clone(),
                attributes: vec![sex],
                ..LoadOptions::default()
            },
            Encoding::Fit,
        )
        .unwrap();
        assert!(single.schema.attributes.is_empty() && single.train.attributes.is_empty());
        assert_eq!(one.schema.groups, single.schema.groups);
        assert_eq!(one.train.groups, single.train.groups);
        assert_eq!(one.test.x, single.test.x);
        assert_eq!(one.train.attributes, vec![single.train.groups.clone()]);
        // A cell present in the data but in no row of the test split is refused, naming it,
        // the split and the remedy.
        std::fs::remove_dir_all(&dir).unwrap();
        let spec = attribute_table(&dir, |i| i < 24);
        let opts = LoadOptions {
            data_dir: dir.clone(),
            attributes: vec![
                attribute("sex", "sex", &[("F", &["F"]), ("M", &["M"])]),
                race,
            ],
            split: Some(SplitFractions {
                train: 0.9,
                valid: 0.05,
                test: 0.05,
            }),
            ..LoadOptions::default()
        };
        let e = load(&spec, &opts, Encoding::Fit).unwrap_err().to_string();
        assert!(
            e.contains("intersection cell `")
                && e.contains(" & O`")
                && e.contains("split")
                && e.contains("merge groups"),
            "{e}"
        );
        // Merging O into W removes the empty cell.
        let opts = LoadOptions {
            attributes: vec![
                attribute("sex", "sex", &[("F", &["F"]), ("M", &["M"])]),
                attribute("race", "race", &[("W", &["W", "O"]), ("B", &["B"])]),
            ],
            ..opts
        };
        let ds = load(&spec, &opts, Encoding::Fit).unwrap();
        assert_eq!(ds.schema.groups, ["F & W", "F & B", "M & W", "M & B"]);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_schema_written_before_attributes_existed_reads_and_writes_unchanged() {
        // A format-2 manifest's schema (one attribute): no `attributes` key.
        let old = r#"{"dataset":"adult","features":["age","job=a"],"inputs":[{"column":"age","kind":"numeric","categories":[]},{"column":"job","kind":"categorical","categories":["a"]}],"sensitive_column":"sex","groups":["Female","Male"],"tasks":[{"name":"income","column":"income","kind":"binary"}],"aware":false}"#;
        let schema: Schema = serde_json::from_str(old).unwrap();
        assert!(schema.attributes.is_empty());
        assert_eq!(serde_json::to_string(&schema).unwrap(), old);
        // With attributes, they round-trip.
        let mut two = schema.clone();
        two.attributes = vec![AttributeInfo {
            name: "sex".into(),
            column: "sex".into(),
            groups: vec!["Female".into(), "Male".into()],
        }];
        let text = serde_json::to_string(&two).unwrap();
        assert!(text.contains("\"attributes\""));
        assert_eq!(serde_json::from_str::<Schema>(&text).unwrap(), two);
    }

    #[test]
    fn attribute_lists_are_checked() {
        let dir = std::env::temp_dir().join(format!("fairrep-load-attrc-{}", std::process::id()));
        let spec = attribute_table(&dir, |_| true);
        let sex = attribute("sex", "sex", &[("F", &["F"]), ("M", &["M"])]);
        let run = |attributes: Vec<AttributeSpec>| {
            let opts = LoadOptions {
                data_dir: dir.clone(),
                attributes,
                ..LoadOptions::default()
            };
            load(&spec, &opts, Encoding::Fit).unwrap_err().to_string()
        };
        let e = run(vec![sex.clone(), sex.clone()]);
        assert!(
            e.contains("data.sensitive[1].name") && e.contains("`sex`"),
            "{e}"
        );
        let e = run(vec![sex.clone(); MAX_ATTRIBUTES + 1]);
        assert!(e.contains("at most 8"), "{e}");
        let mut one_group = attribute("race", "race", &[("W", &["W", "B", "O"])]);
        let e = run(vec![sex.clone(), one_group.clone()]);
        assert!(
            e.contains("sensitive attribute `race`") && e.contains("data.sensitive[1].groups"),
            "{e}"
        );
        one_group.threshold = Some(1.0);
        let e = run(vec![sex.clone(), one_group]);
        assert!(e.contains("either `groups` or `threshold`"), "{e}");
        let missing = attribute("race", "race", &[("W", &["W"]), ("X", &["X"])]);
        let e = run(vec![sex, missing]);
        assert!(e.contains("race") && e.contains("sensitive values"), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn standardisation_survives_a_large_offset_and_constant_columns() {
        // The naive E[x^2] - E[x]^2 loses the variance of a column offset by 1e9.
        let dir = std::env::temp_dir().join(format!("fairrep-load-std-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let mut csv = String::from("a,c,s,y\n");
        for i in 0..200 {
            let a = 1e9 + (i % 7) as f64 - 3.0;
            csv += &format!("{a},1e30,{},{}\n", i % 2, (i / 2) % 2);
        }
        std::fs::write(dir.join("t.csv"), csv).unwrap();
        let spec = crate::spec::parse_spec(
            "name = \"t\"\n[files]\ntrain = { path = \"t.csv\" }\n[inputs]\nnumeric = \
             [\"a\", \"c\"]\n[sensitive]\ncolumn = \"s\"\nthreshold = 1\n[[tasks]]\nname = \
             \"y\"\ncolumn = \"y\"\nop = \"==\"\nvalue = 1\n[split]\nkind = \"random\"\n",
            &dir.join("t.toml"),
        )
        .unwrap();
        let opts = LoadOptions {
            data_dir: dir.clone(),
            ..LoadOptions::default()
        };
        let ds = load(&spec, &opts, Encoding::Fit).unwrap();
        let a = &ds.preprocessing.numeric[0];
        let train: Vec<f64> = (0..ds.train.len())
            .map(|i| f64::from(ds.train.x.row(i)[0]))
            .collect();
        // (i % 7) - 3 has population std 2 over whole cycles; the train rows are close to it.
        assert!((a.std - 2.0).abs() < 0.1, "{a:?}");
        let mean = train.iter().sum::<f64>() / train.len() as f64;
        let sd =
            (train.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / train.len() as f64).sqrt();
        assert!(mean.abs() < 1e-6 && (sd - 1.0).abs() < 1e-6, "{mean} {sd}");
        // The constant 1e30 column is centred to exactly 0 with std 1.
        let c = &ds.preprocessing.numeric[1];
        assert_eq!(c.std, 1.0);
        assert!((0..ds.train.len()).all(|i| ds.train.x.row(i)[1] == 0.0));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn regression_targets_take_a_log_transform_and_refuse_values_outside_its_domain() {
        let dir = std::env::temp_dir().join(format!("fairrep-load-log-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let spec_text = |transform: &str, kind: &str| {
            format!(
                "name = \"t\"\n[files]\ntrain = {{ path = \"t.csv\" }}\n[inputs]\nnumeric = \
                 [\"a\"]\n[sensitive]\ncolumn = \"s\"\nthreshold = 1\n[[tasks]]\nname = \
                 \"y\"\ncolumn = \"y\"\n{kind}transform = \"{transform}\"\n[split]\nkind = \
                 \"random\"\n"
            )
        };
        let opts = LoadOptions {
            data_dir: dir.clone(),
            ..LoadOptions::default()
        };
        let mut csv = String::from("a,s,y\n");
        for i in 0..40 {
            csv += &format!("{},{},{}\n", i % 5, i % 2, 1.5 + i as f64);
        }
        std::fs::write(dir.join("t.csv"), &csv).unwrap();
        let mut seen = Vec::new();
        for (name, f) in [("log", f64::ln as fn(f64) -> f64), ("log1p", f64::ln_1p)] {
            let spec = crate::spec::parse_spec(
                &spec_text(name, "kind = \"regression\"\n"),
                &dir.join("t.toml"),
            )
            .unwrap();
            let ds = load(&spec, &opts, Encoding::Fit).unwrap();
            // Every loaded target is the transform of one raw value 1.5 + i (f32 rounding).
            let mut got: Vec<f32> = [&ds.train, &ds.valid, &ds.test]
                .iter()
                .flat_map(|sp| sp.targets[0].iter().copied())
                .collect();
            got.sort_by(f32::total_cmp);
            let want: Vec<f32> = (0..40).map(|i| f(1.5 + f64::from(i)) as f32).collect();
            assert_eq!(got, want, "{name}");
            seen.push(got[0]);
        }
        assert_ne!(seen[0], seen[1]);
        // log refuses 0 and log1p refuses -1, naming the file, line and column.
        for (name, bad) in [("log", "0"), ("log1p", "-1")] {
            let mut text = csv.clone();
            text += &format!("1,0,{bad}\n");
            std::fs::write(dir.join("t.csv"), &text).unwrap();
            let spec = crate::spec::parse_spec(
                &spec_text(name, "kind = \"regression\"\n"),
                &dir.join("t.toml"),
            )
            .unwrap();
            let e = load(&spec, &opts, Encoding::Fit).unwrap_err().to_string();
            assert!(e.contains("t.csv") && e.contains("line 42"), "{e}");
            assert!(
                e.contains("`y`") && e.contains(&format!("transform = \"{name}\"")),
                "{e}"
            );
            assert!(e.contains(bad), "{e}");
        }
        // A transform on a binary task is refused when the spec is validated.
        let e = crate::spec::parse_spec(
            &spec_text("log", "op = \"==\"\nvalue = 1\n"),
            &dir.join("t.toml"),
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("tasks[0].transform") && e.contains("binary"),
            "{e}"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn split_names_parse_and_print() {
        assert_eq!("valid".parse::<SplitName>().unwrap(), SplitName::Valid);
        assert_eq!(SplitName::Test.to_string(), "test");
        assert!(
            "dev"
                .parse::<SplitName>()
                .unwrap_err()
                .to_string()
                .contains("`dev`")
        );
    }

    #[test]
    fn split_fractions_validate() {
        use crate::spec::SplitFractions;
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
