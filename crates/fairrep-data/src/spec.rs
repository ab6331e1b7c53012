//! Dataset specs: one TOML file per dataset (`datasets/NAME.toml`).
//!
//! A spec says which files to read and how, which rows to keep, which columns are inputs,
//! how the sensitive groups are formed, which targets (tasks) to predict and how to split.
//! Unknown keys are errors everywhere (`deny_unknown_fields`). Paths are relative to the
//! data directory (`LoadOptions::data_dir`, e.g. `/work/shared/datasets`).
//!
//! ```toml
//! name = "adult"                      # required
//! description = "free text"           # optional
//!
//! [files]
//! train = { path = "adult/adult.data" }                  # required
//! test  = { path = "adult/adult.test", skip_lines = 1 }  # optional: official test file
//! # skip_lines: lines dropped before the header / first record (default 0).
//! # Files whose name ends in `.gz` are decompressed transparently.
//!
//! [format]
//! kind = "csv"            # "csv" (default) or "whitespace" (fields split on runs of spaces/tabs)
//! delimiter = ","         # csv only, default ","
//! quote = '"'             # csv only, default '"'
//! header = false          # default true: the first (non-skipped) line names the columns
//! columns = ["age", "workclass"]   # column names when header = false (all columns, in order)
//! index_column = "image_id"        # the header lacks the first column (CelebA): give it this name
//! trim = true             # strip spaces around every value (default true)
//! strip_trailing = "."    # characters removed from the end of every value (default none)
//! missing = ["?"]         # rows with one of these values in a column the spec uses are dropped
//!
//! [[filters]]             # rows failing any filter are dropped (after the missing-value drop)
//! column = "is_recid"
//! op = "!="
//! value = -1
//!
//! [inputs]
//! numeric = ["age", "hours-per-week"]       # standardised with train-split mean / std
//! categorical = ["workclass", "sex"]        # one-hot, one feature `col=value` per train category
//! exclude_task_columns = "selected"         # or "all": which tasks' columns leave the inputs
//!
//! [sensitive]
//! column = "sex"
//! groups = [ { name = "Female", values = ["Female"] }, { name = "Male", values = ["Male"] } ]
//! unmatched = "error"     # "error" (default), "other" (extra last group) or "drop" (drop the row)
//! other_name = "other"    # name of the extra group for unmatched = "other"
//! # or, for a numeric column: threshold = 25, threshold_names = ["lt_25", "ge_25"]
//! # (group 0: value < threshold, group 1: value >= threshold)
//!
//! [[tasks]]
//! name = "income"
//! column = "income"
//! op = "=="               # binary label = 1.0 where the predicate holds, else 0.0
//! value = ">50K"
//!
//! [[tasks]]
//! name = "age"
//! column = "age"
//! kind = "regression"     # target = the column's numeric value (no op / value)
//! # transform = "log"     # optional, regression only: "log" (value > 0) or "log1p" (value > -1);
//!                         # a value outside the domain is an error naming the file, line and column
//!
//! [split]
//! kind = "official"       # test file = test split; valid carved from train
//! valid_fraction = 0.2    # default 0.2
//! # kind = "random", fractions = { train = 0.7, valid = 0.15, test = 0.15 } (the default)
//! # kind = "partition", column = "partition", train_values = [0], valid_values = [1],
//! #   test_values = [2], partition_file = { path = "...", columns = ["image_id", "partition"],
//! #   key = "image_id" }   (optional: the column comes from a whitespace file without a
//! #   header, joined on `key`)
//! ```
//!
//! ## Predicates (`filters`, binary `tasks`)
//! `op` is one of `==`, `!=`, `>`, `>=`, `<`, `<=`, `in`, `not_in`. `value` is a number, a
//! string, or (for `in` / `not_in`) a list of numbers and strings. A number compares
//! numerically (the cell must parse as a finite number, else an error names file, line and
//! column); a string compares the (trimmed, stripped) cell text exactly. Order comparisons
//! need a number.
//!
//! ## Inputs
//! Features are the numeric columns in the order listed, then the one-hot blocks of the
//! categorical columns in the order listed; inside a block the categories are sorted. Unless
//! `LoadOptions::aware`, the sensitive column and the columns defining tasks are removed from
//! the inputs: with `exclude_task_columns = "selected"` (default) the columns of the tasks
//! being loaded, with `"all"` the columns of every task of the spec (the feature set then does
//! not depend on the task selection). Columns that are not listed never become inputs.
//!
//! Groups are numbered in the order listed (`threshold`: below = 0, at or above = 1), the
//! `other` group last. Splits are stratified by group and by the first task's label (when it
//! is binary). The sensitive column is compared like a predicate value (numbers numerically).

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::DataError;

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

/// A parsed dataset spec. See the module documentation for the file format.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DatasetSpec {
    /// Dataset name (used in errors and in the schema).
    pub name: String,
    /// Free text.
    #[serde(default)]
    pub description: Option<String>,
    /// Files to read.
    pub files: FilesSpec,
    /// How to read them.
    #[serde(default)]
    pub format: FormatSpec,
    /// Row filters, all must hold.
    #[serde(default)]
    pub filters: Vec<PredicateSpec>,
    /// Input columns.
    pub inputs: InputsSpec,
    /// The sensitive attribute.
    pub sensitive: SensitiveSpec,
    /// Targets.
    pub tasks: Vec<TaskSpec>,
    /// How to split.
    pub split: SplitSpec,
    /// Where the spec was read from (not part of the file).
    #[serde(skip)]
    pub source: PathBuf,
}

/// `[files]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FilesSpec {
    /// The main file (all rows, or the official train rows).
    pub train: FileSpec,
    /// The official test file, if any.
    #[serde(default)]
    pub test: Option<FileSpec>,
}

/// One data file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileSpec {
    /// Path relative to the data directory.
    pub path: String,
    /// Lines to skip before the header / first record.
    #[serde(default)]
    pub skip_lines: usize,
}

/// File layout.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FormatKind {
    /// Delimited text with optional quotes.
    #[default]
    Csv,
    /// Fields separated by runs of whitespace, no quoting.
    Whitespace,
}

/// `[format]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FormatSpec {
    /// Layout.
    #[serde(default)]
    pub kind: FormatKind,
    /// CSV delimiter.
    #[serde(default = "default_delimiter")]
    pub delimiter: char,
    /// CSV quote character.
    #[serde(default = "default_quote")]
    pub quote: char,
    /// Whether the first line names the columns.
    #[serde(default = "default_true")]
    pub header: bool,
    /// Column names when there is no header.
    #[serde(default)]
    pub columns: Option<Vec<String>>,
    /// Name of a leading column the header does not name.
    #[serde(default)]
    pub index_column: Option<String>,
    /// Trim spaces around values.
    #[serde(default = "default_true")]
    pub trim: bool,
    /// Characters stripped from the end of every value.
    #[serde(default)]
    pub strip_trailing: String,
    /// Missing-value markers.
    #[serde(default)]
    pub missing: Vec<String>,
}

fn default_delimiter() -> char {
    ','
}
fn default_quote() -> char {
    '"'
}
fn default_true() -> bool {
    true
}

impl Default for FormatSpec {
    fn default() -> Self {
        Self {
            kind: FormatKind::Csv,
            delimiter: ',',
            quote: '"',
            header: true,
            columns: None,
            index_column: None,
            trim: true,
            strip_trailing: String::new(),
            missing: Vec::new(),
        }
    }
}

/// A number or a string in a predicate.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Scalar {
    /// Compared numerically.
    Number(f64),
    /// Compared as text.
    Text(String),
}

impl std::fmt::Display for Scalar {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Scalar::Number(x) => write!(f, "{x}"),
            Scalar::Text(s) => write!(f, "\"{s}\""),
        }
    }
}

/// The right-hand side of a predicate.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum PredicateValue {
    /// One value.
    One(Scalar),
    /// A list (for `in` / `not_in`).
    List(Vec<Scalar>),
}

/// Comparison operator.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Op {
    /// Equal.
    #[serde(rename = "==")]
    Eq,
    /// Not equal.
    #[serde(rename = "!=")]
    Ne,
    /// Greater than.
    #[serde(rename = ">")]
    Gt,
    /// Greater or equal.
    #[serde(rename = ">=")]
    Ge,
    /// Less than.
    #[serde(rename = "<")]
    Lt,
    /// Less or equal.
    #[serde(rename = "<=")]
    Le,
    /// In a list.
    #[serde(rename = "in")]
    In,
    /// Not in a list.
    #[serde(rename = "not_in")]
    NotIn,
}

/// A predicate over one column (a row filter).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PredicateSpec {
    /// Column.
    pub column: String,
    /// Operator.
    pub op: Op,
    /// Right-hand side.
    pub value: PredicateValue,
}

/// Which task columns are removed from the inputs (unless aware).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ExcludeTaskColumns {
    /// Columns of the tasks being loaded.
    #[default]
    Selected,
    /// Columns of every task in the spec.
    All,
}

/// `[inputs]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InputsSpec {
    /// Standardised numeric columns.
    #[serde(default)]
    pub numeric: Vec<String>,
    /// One-hot categorical columns.
    #[serde(default)]
    pub categorical: Vec<String>,
    /// Which task-defining columns leave the inputs.
    #[serde(default)]
    pub exclude_task_columns: ExcludeTaskColumns,
}

/// A named group of values of the sensitive column.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GroupSpec {
    /// Group name.
    pub name: String,
    /// Values mapped to it.
    pub values: Vec<Scalar>,
}

/// What to do with a sensitive value no group lists.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Unmatched {
    /// Error naming file, line and value.
    #[default]
    Error,
    /// Put it in an extra last group.
    Other,
    /// Drop the row.
    Drop,
}

/// `[sensitive]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SensitiveSpec {
    /// The column.
    pub column: String,
    /// Value groups (exclusive with `threshold`).
    #[serde(default)]
    pub groups: Option<Vec<GroupSpec>>,
    /// Numeric threshold: group 1 is `value >= threshold`.
    #[serde(default)]
    pub threshold: Option<f64>,
    /// Names of the below / at-or-above groups (default `lt_T`, `ge_T`).
    #[serde(default)]
    pub threshold_names: Option<Vec<String>>,
    /// Unmatched values.
    #[serde(default)]
    pub unmatched: Unmatched,
    /// Name of the extra group.
    #[serde(default)]
    pub other_name: Option<String>,
}

/// The most sensitive attributes one run may name (`[[data.sensitive]]`).
pub const MAX_ATTRIBUTES: usize = 8;

/// The most intersection cells (combinations of the attributes' groups present in the data)
/// one run may have: every cell must appear in every batch.
pub const MAX_CELLS: usize = 256;

/// One named sensitive attribute of a run with several (`[[data.sensitive]]` in a training
/// config): a name and the keys of `[sensitive]`. Its own type (not `[sensitive]` flattened),
/// so that unknown keys stay errors.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AttributeSpec {
    /// The attribute's name in reports (e.g. `sex`).
    pub name: String,
    /// The column.
    pub column: String,
    /// Value groups (exclusive with `threshold`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub groups: Option<Vec<GroupSpec>>,
    /// Numeric threshold: group 1 is `value >= threshold`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub threshold: Option<f64>,
    /// Names of the below / at-or-above groups (default `lt_T`, `ge_T`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub threshold_names: Option<Vec<String>>,
    /// Unmatched values.
    #[serde(default)]
    pub unmatched: Unmatched,
    /// Name of the extra group.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub other_name: Option<String>,
}

impl AttributeSpec {
    /// The attribute's `[sensitive]` table.
    pub fn sensitive(&self) -> SensitiveSpec {
        SensitiveSpec {
            column: self.column.clone(),
            groups: self.groups.clone(),
            threshold: self.threshold,
            threshold_names: self.threshold_names.clone(),
            unmatched: self.unmatched,
            other_name: self.other_name.clone(),
        }
    }
}

/// Kind of target.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TaskKind {
    /// 0/1 label from a predicate.
    #[default]
    Binary,
    /// The column's numeric value.
    Regression,
}

/// `[[tasks]]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TaskSpec {
    /// Task name.
    pub name: String,
    /// Column it is defined on.
    pub column: String,
    /// Kind.
    #[serde(default)]
    pub kind: TaskKind,
    /// Operator (binary tasks).
    #[serde(default)]
    pub op: Option<Op>,
    /// Right-hand side (binary tasks).
    #[serde(default)]
    pub value: Option<PredicateValue>,
    /// Regression tasks: a transform of the column's value (e.g. `"log"` for log income).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub transform: Option<TargetTransform>,
}

/// A transform of a regression target, applied to each row's value when the data is loaded
/// (so the head is trained on, and every metric is computed in, the transformed units).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TargetTransform {
    /// Natural logarithm `ln(v)`; a value `<= 0` is an error naming the file, line and column.
    Log,
    /// `ln(1 + v)`; a value `<= -1` is an error naming the file, line and column.
    Log1p,
}

impl TargetTransform {
    /// The transformed value, or `None` when `v` is outside the transform's domain.
    pub fn apply(self, v: f64) -> Option<f64> {
        let out = match self {
            TargetTransform::Log if v > 0.0 => v.ln(),
            TargetTransform::Log1p if v > -1.0 => v.ln_1p(),
            _ => return None,
        };
        out.is_finite().then_some(out)
    }

    /// What the transform accepts, for error messages.
    pub fn domain(self) -> &'static str {
        match self {
            TargetTransform::Log => "a positive number (transform = \"log\")",
            TargetTransform::Log1p => "a number greater than -1 (transform = \"log1p\")",
        }
    }
}

/// Kind of split.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SplitKind {
    /// `files.test` is the test split; validation is carved out of train.
    Official,
    /// Seeded stratified random split.
    Random,
    /// A column (possibly from a partition file) names each row's split.
    Partition,
}

/// A whitespace-separated file without header giving each row's split.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PartitionFileSpec {
    /// Path relative to the data directory.
    pub path: String,
    /// Its column names.
    pub columns: Vec<String>,
    /// Join key: a column of both files.
    pub key: String,
}

/// `[split]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SplitSpec {
    /// Kind.
    pub kind: SplitKind,
    /// Official: fraction of the train file used for validation (default 0.2).
    #[serde(default)]
    pub valid_fraction: Option<f64>,
    /// Random: fractions (default 0.7 / 0.15 / 0.15).
    #[serde(default)]
    pub fractions: Option<SplitFractions>,
    /// Partition: the column.
    #[serde(default)]
    pub column: Option<String>,
    /// Partition: values meaning train.
    #[serde(default)]
    pub train_values: Option<Vec<Scalar>>,
    /// Partition: values meaning valid.
    #[serde(default)]
    pub valid_values: Option<Vec<Scalar>>,
    /// Partition: values meaning test.
    #[serde(default)]
    pub test_values: Option<Vec<Scalar>>,
    /// Partition: the file the column comes from (else the main file).
    #[serde(default)]
    pub partition_file: Option<PartitionFileSpec>,
}

/// Default validation fraction carved from an official train file.
pub const DEFAULT_VALID_FRACTION: f64 = 0.2;

/// Parses and validates a spec file.
pub fn load_spec(path: &Path) -> Result<DatasetSpec, DataError> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        if e.kind() == std::io::ErrorKind::NotFound {
            DataError::MissingFile {
                what: "dataset spec",
                path: path.to_path_buf(),
            }
        } else {
            DataError::Io {
                path: path.to_path_buf(),
                source: e,
            }
        }
    })?;
    let mut spec = parse_spec(&text, path)?;
    spec.source = path.to_path_buf();
    Ok(spec)
}

/// Parses and validates spec text; `path` is only used in errors.
pub fn parse_spec(text: &str, path: &Path) -> Result<DatasetSpec, DataError> {
    let mut spec: DatasetSpec = toml::from_str(text).map_err(|e| DataError::SpecParse {
        path: path.to_path_buf(),
        message: e.to_string().trim_end().to_string(),
    })?;
    spec.source = path.to_path_buf();
    spec.validate()?;
    Ok(spec)
}

/// `"adult"` → `specs_dir/adult.toml`; anything with a `/` or ending in `.toml` is a path.
pub fn resolve_spec(name_or_path: &str, specs_dir: &Path) -> Result<DatasetSpec, DataError> {
    let looks_like_path = name_or_path.contains('/')
        || name_or_path.contains(std::path::MAIN_SEPARATOR)
        || name_or_path.ends_with(".toml");
    let path = if looks_like_path {
        PathBuf::from(name_or_path)
    } else {
        specs_dir.join(format!("{name_or_path}.toml"))
    };
    load_spec(&path)
}

impl DatasetSpec {
    fn invalid(
        &self,
        key: impl Into<String>,
        expected: impl Into<String>,
        found: impl Into<String>,
    ) -> DataError {
        DataError::SpecInvalid {
            path: self.source.clone(),
            key: key.into(),
            expected: expected.into(),
            found: found.into(),
        }
    }

    /// Checks the spec for consistency (done by [`load_spec`]; call it for specs built in code).
    pub fn validate(&self) -> Result<(), DataError> {
        if self.name.trim().is_empty() {
            return Err(self.invalid("name", "a non-empty name", "\"\""));
        }
        let f = &self.format;
        if !f.header && f.columns.is_none() {
            return Err(self.invalid(
                "format.columns",
                "column names when header = false",
                "nothing",
            ));
        }
        if f.header && f.columns.is_some() {
            return Err(self.invalid(
                "format.columns",
                "no column list when header = true",
                "a list",
            ));
        }
        if f.kind == FormatKind::Csv && (!f.delimiter.is_ascii() || !f.quote.is_ascii()) {
            return Err(self.invalid(
                "format.delimiter / format.quote",
                "ASCII characters",
                format!("{:?} / {:?}", f.delimiter, f.quote),
            ));
        }
        if self.inputs.numeric.is_empty() && self.inputs.categorical.is_empty() {
            return Err(self.invalid(
                "inputs",
                "at least one numeric or categorical column",
                "none",
            ));
        }
        let listed: Vec<&String> = self
            .inputs
            .numeric
            .iter()
            .chain(&self.inputs.categorical)
            .collect();
        for (i, c) in listed.iter().enumerate() {
            if listed[..i].contains(c) {
                return Err(self.invalid(
                    "inputs",
                    "each column listed once in numeric and categorical together",
                    format!("`{c}` twice"),
                ));
            }
        }
        for (i, p) in self.filters.iter().enumerate() {
            check_predicate(self, &format!("filters[{i}]"), p.op, &p.value)?;
        }
        check_sensitive(self, "sensitive", &self.sensitive)?;
        if self.tasks.is_empty() {
            return Err(self.invalid("tasks", "at least one [[tasks]] entry", "none"));
        }
        for (i, t) in self.tasks.iter().enumerate() {
            let key = format!("tasks[{i}]");
            if self.tasks[..i].iter().any(|o| o.name == t.name) {
                return Err(self.invalid(
                    format!("{key}.name"),
                    "distinct task names",
                    format!("`{}` twice", t.name),
                ));
            }
            match t.kind {
                TaskKind::Binary if t.transform.is_some() => {
                    return Err(self.invalid(
                        format!("{key}.transform"),
                        "no `transform` on a binary task (it applies to regression targets)",
                        "a transform",
                    ));
                }
                TaskKind::Binary => match (&t.op, &t.value) {
                    (Some(op), Some(v)) => check_predicate(self, &key, *op, v)?,
                    _ => {
                        return Err(self.invalid(
                            key,
                            "`op` and `value` for a binary task",
                            "one of them missing",
                        ));
                    }
                },
                TaskKind::Regression => {
                    if t.op.is_some() || t.value.is_some() {
                        return Err(self.invalid(
                            key,
                            "no `op` / `value` for a regression task",
                            "op or value",
                        ));
                    }
                }
            }
        }
        let sp = &self.split;
        match sp.kind {
            SplitKind::Official => {
                if self.files.test.is_none() {
                    return Err(self.invalid(
                        "files.test",
                        "a test file for split.kind = \"official\"",
                        "none",
                    ));
                }
                let v = sp.valid_fraction.unwrap_or(DEFAULT_VALID_FRACTION);
                if !(v > 0.0 && v < 1.0) {
                    return Err(self.invalid(
                        "split.valid_fraction",
                        "a number in (0, 1)",
                        v.to_string(),
                    ));
                }
            }
            SplitKind::Random => {
                if let Some(fr) = &sp.fractions {
                    fr.validate().map_err(|_| {
                        self.invalid(
                            "split.fractions",
                            "train, valid, test > 0 summing to 1",
                            format!("{fr:?}"),
                        )
                    })?;
                }
            }
            SplitKind::Partition => {
                if sp.column.is_none() {
                    return Err(self.invalid(
                        "split.column",
                        "a column for split.kind = \"partition\"",
                        "none",
                    ));
                }
                for (k, v) in [
                    ("train_values", &sp.train_values),
                    ("valid_values", &sp.valid_values),
                    ("test_values", &sp.test_values),
                ] {
                    if v.as_ref().is_none_or(|v| v.is_empty()) {
                        return Err(self.invalid(
                            format!("split.{k}"),
                            "a non-empty list of values",
                            "none",
                        ));
                    }
                }
                if let Some(pf) = &sp.partition_file {
                    let col = sp.column.as_deref().unwrap_or_default();
                    if !pf.columns.iter().any(|c| c == col) || !pf.columns.contains(&pf.key) {
                        return Err(self.invalid(
                            "split.partition_file.columns",
                            format!("columns including `{}` and `{col}`", pf.key),
                            format!("{:?}", pf.columns),
                        ));
                    }
                }
            }
        }
        if sp.kind != SplitKind::Official && self.files.test.is_some() {
            return Err(self.invalid(
                "files.test",
                "no test file unless split.kind = \"official\"",
                "a test file",
            ));
        }
        Ok(())
    }
}

fn check_predicate(
    spec: &DatasetSpec,
    key: &str,
    op: Op,
    value: &PredicateValue,
) -> Result<(), DataError> {
    match (op, value) {
        (Op::In | Op::NotIn, PredicateValue::List(l)) if !l.is_empty() => Ok(()),
        (Op::In | Op::NotIn, _) => Err(spec.invalid(
            format!("{key}.value"),
            "a non-empty list for `in` / `not_in`",
            format!("{value:?}"),
        )),
        (_, PredicateValue::List(_)) => Err(spec.invalid(
            format!("{key}.value"),
            "a single value (lists only with `in` / `not_in`)",
            "a list",
        )),
        (Op::Eq | Op::Ne, _) => Ok(()),
        (_, PredicateValue::One(Scalar::Number(x))) if x.is_finite() => Ok(()),
        (_, PredicateValue::One(v)) => Err(spec.invalid(
            format!("{key}.value"),
            "a finite number for an order comparison",
            v.to_string(),
        )),
    }
}

/// Checks one `[sensitive]` table (or one attribute of several): `key` names it in errors.
pub fn check_sensitive(spec: &DatasetSpec, key: &str, s: &SensitiveSpec) -> Result<(), DataError> {
    match (&s.groups, s.threshold) {
        (Some(g), None) => {
            let other = usize::from(s.unmatched == Unmatched::Other);
            if g.len() + other < 2 {
                return Err(spec.invalid(
                    format!("{key}.groups"),
                    "at least two groups (or one with unmatched = \"other\")",
                    format!("{} group(s)", g.len()),
                ));
            }
            for (i, gi) in g.iter().enumerate() {
                if g[..i].iter().any(|o| o.name == gi.name) {
                    return Err(spec.invalid(
                        format!("{key}.groups"),
                        "distinct group names",
                        format!("`{}` twice", gi.name),
                    ));
                }
            }
            if s.threshold_names.is_some() {
                return Err(spec.invalid(
                    format!("{key}.threshold_names"),
                    "only with threshold",
                    "groups",
                ));
            }
        }
        (None, Some(t)) => {
            if !t.is_finite() {
                return Err(spec.invalid(
                    format!("{key}.threshold"),
                    "a finite number",
                    t.to_string(),
                ));
            }
            if let Some(n) = &s.threshold_names
                && n.len() != 2
            {
                return Err(spec.invalid(
                    format!("{key}.threshold_names"),
                    "two names",
                    format!("{} names", n.len()),
                ));
            }
        }
        (Some(_), Some(_)) => {
            return Err(spec.invalid(key, "either `groups` or `threshold`", "both"));
        }
        (None, None) => {
            return Err(spec.invalid(key, "`groups` or `threshold`", "neither"));
        }
    }
    Ok(())
}
