//! The crate's error type.

use std::path::PathBuf;

use fairrep_metrics::fairness::MetricError;

/// Why a post-processor could not be fitted, applied, saved, loaded or evaluated.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PostprocessError {
    /// An input has no rows.
    #[error("{what} is empty: expected at least one row")]
    Empty {
        /// Which input.
        what: &'static str,
    },
    /// Two inputs that go together differ in length.
    #[error("length mismatch: {what}: expected {expected}, found {found}")]
    LengthMismatch {
        /// Which input.
        what: String,
        /// Expected length.
        expected: usize,
        /// Found length.
        found: usize,
    },
    /// A prediction, target or jitter draw is NaN or infinite.
    #[error("non-finite {what} at row {row}: found {value}, expected a finite number")]
    NonFinite {
        /// `prediction`, `target` or `jitter draw`.
        what: &'static str,
        /// Row index (0-based).
        row: usize,
        /// The value.
        value: f64,
    },
    /// `alpha` is not in `[0, 1]` (or is NaN).
    #[error(
        "alpha = {found}{}: expected a number in [0, 1] (0 = unchanged, 1 = fully fair)",
        step.as_ref().map_or(String::new(), |s| format!(" for attribute `{s}`"))
    )]
    AlphaOutOfRange {
        /// The value.
        found: f64,
        /// The attribute, for a sequential post-processor.
        step: Option<String>,
    },
    /// The jitter scale is negative, NaN or infinite.
    #[error("jitter scale = {found}: expected a finite number >= 0")]
    InvalidJitterScale {
        /// The value.
        found: f64,
    },
    /// A caller-supplied jitter draw lies outside `[-scale, scale]`.
    #[error("jitter draw at row {row} = {value}: expected a number in [-{scale}, {scale}]")]
    JitterOutOfRange {
        /// Row index.
        row: usize,
        /// The draw.
        value: f64,
        /// The jitter scale.
        scale: f64,
    },
    /// A group the post-processor was not fitted on.
    #[error(
        "group `{group}` is not in the fitted post-processor{}; known groups: {}",
        attribute.as_ref().map_or(String::new(), |a| format!(" (attribute `{a}`)")),
        known.join(", ")
    )]
    UnknownGroup {
        /// The group asked for.
        group: String,
        /// The groups the post-processor knows, in its order.
        known: Vec<String>,
        /// The attribute, for a sequential post-processor.
        attribute: Option<String>,
    },
    /// A declared group has no row in the calibration sample.
    #[error(
        "group `{group}` has no row in the calibration sample: every declared group ({}) needs at least 2 rows",
        declared.join(", ")
    )]
    GroupAbsent {
        /// The group.
        group: String,
        /// The declared groups.
        declared: Vec<String>,
    },
    /// The calibration sample has a group that is not declared.
    #[error(
        "calibration row {row} has group `{group}`: expected one of the declared groups {}",
        declared.join(", ")
    )]
    UndeclaredGroup {
        /// Row index.
        row: usize,
        /// The group.
        group: String,
        /// The declared groups.
        declared: Vec<String>,
    },
    /// A group name appears twice in a declaration.
    #[error("group `{group}` is declared twice")]
    DuplicateGroup {
        /// The group.
        group: String,
    },
    /// Fewer than two groups: there is nothing to make fair.
    #[error(
        "the calibration sample has {} group(s) ({}): expected at least 2",
        found.len(),
        found.join(", ")
    )]
    TooFewGroups {
        /// The groups found.
        found: Vec<String>,
    },
    /// A group has fewer than two calibration rows.
    #[error(
        "group `{group}` has {found} calibration row(s): expected at least 2 to estimate its CDF and quantiles"
    )]
    TooFewRows {
        /// The group.
        group: String,
        /// Its number of rows.
        found: usize,
    },
    /// All jittered calibration values of a group are equal.
    #[error(
        "group `{group}`: all {n} calibration values equal {value} after a jitter of scale {scale}; \
         the group's CDF is a single step, so every prediction of the group would map to its top \
         quantile. Use a jitter scale that separates the values (e.g. 1e-6 of their magnitude) or \
         leave the constant group out"
    )]
    DegenerateGroup {
        /// The group.
        group: String,
        /// Its number of rows.
        n: usize,
        /// The common value.
        value: f64,
        /// The jitter scale.
        scale: f64,
    },
    /// An attribute name appears twice in a sequential post-processor.
    #[error("attribute `{attribute}` is given twice: expected distinct attribute names")]
    DuplicateAttribute {
        /// The attribute.
        attribute: String,
    },
    /// A sequential post-processor got attributes that differ from the fitted ones.
    #[error("attribute {index}: expected `{expected}`, found `{found}`")]
    AttributeMismatch {
        /// Position.
        index: usize,
        /// The fitted attribute.
        expected: String,
        /// The attribute given.
        found: String,
    },
    /// A saved post-processor is inconsistent (edited or truncated).
    #[error("{}: invalid post-processor: {what}", path.display())]
    InvalidFit {
        /// The file (or `<string>`).
        path: PathBuf,
        /// What is wrong.
        what: String,
    },
    /// A file could not be read or written.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// A JSON file could not be parsed.
    #[error("{}: not a valid post-processor JSON: {message}", path.display())]
    Json {
        /// The file (or `<string>`).
        path: PathBuf,
        /// The parser's message (with line and column).
        message: String,
    },
    /// A predictions CSV is malformed.
    #[error(
        "{}, line {line}{}: expected {expected}, found {found}",
        path.display(),
        column.as_ref().map_or(String::new(), |c| format!(", column `{c}`"))
    )]
    Csv {
        /// The file.
        path: PathBuf,
        /// 1-based line number.
        line: u64,
        /// The column, when one is at fault.
        column: Option<String>,
        /// What was expected.
        expected: String,
        /// What was found.
        found: String,
    },
    /// A metric is undefined on the given sample.
    #[error("{what}: {source}")]
    Metric {
        /// Which metric and sample.
        what: String,
        /// The cause.
        source: MetricError,
    },
    /// A group has no row in an evaluation sample.
    #[error("{what}: group `{group}` has no row; the between-group metric is undefined")]
    GroupMissingFromSample {
        /// Which metric and sample.
        what: String,
        /// The group.
        group: String,
    },
}

/// Writes `text` to `path` atomically (a temporary file renamed into place, so a failed
/// write leaves an earlier file whole).
pub(crate) fn write_text(path: &std::path::Path, text: &str) -> Result<(), PostprocessError> {
    fairrep_data::fs::write_atomic(path, text.as_bytes()).map_err(|e| PostprocessError::Io {
        path: path.to_path_buf(),
        source: e.source,
    })
}

/// Reads `path` as text.
pub(crate) fn read_text(path: &std::path::Path) -> Result<String, PostprocessError> {
    std::fs::read_to_string(path).map_err(|source| PostprocessError::Io {
        path: path.to_path_buf(),
        source,
    })
}
