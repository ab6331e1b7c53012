//! The error type of the crate.

/// Why a FERM computation could not be carried out.
///
/// Every variant names the offending argument, row, column or value, what was expected and
/// what was found.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum FermError {
    /// A dimension that must be positive is zero.
    #[error("{what}: expected at least {min}, found {found}")]
    TooSmall {
        /// Which dimension (`rows`, `cols`, ...).
        what: &'static str,
        /// The smallest accepted value.
        min: usize,
        /// The value found.
        found: usize,
    },
    /// A slice does not have the length its dimensions imply.
    #[error("length mismatch: {what}: expected {expected}, found {found}")]
    LengthMismatch {
        /// Which slice.
        what: &'static str,
        /// Expected length.
        expected: usize,
        /// Found length.
        found: usize,
    },
    /// A feature value is NaN or infinite.
    #[error("non-finite feature at row {row}, column {col}: found {value}")]
    NonFiniteFeature {
        /// Row index.
        row: usize,
        /// Column index.
        col: usize,
        /// The value.
        value: f64,
    },
    /// A score passed to a metric is NaN or infinite.
    #[error("non-finite score at row {row}: found {value}")]
    NonFiniteScore {
        /// Row index.
        row: usize,
        /// The value.
        value: f64,
    },
    /// A label is not 0 or 1.
    #[error("label at row {row}: expected 0 or 1, found {value}")]
    NonBinaryLabel {
        /// Row index.
        row: usize,
        /// The value.
        value: f64,
    },
    /// A group id is not 0 or 1.
    #[error("group at row {row}: expected 0 (group a) or 1 (group b), found {found}")]
    GroupOutOfRange {
        /// Row index.
        row: usize,
        /// The id.
        found: u32,
    },
    /// Every row belongs to the same group.
    #[error("only group {present} is present: expected rows of both groups 0 and 1")]
    OneGroup {
        /// The only group present.
        present: u32,
    },
    /// Every row has the same label.
    #[error("only label {present} is present: expected both labels 0 and 1")]
    OneClass {
        /// The only label present.
        present: u8,
    },
    /// A group has no positively labelled row, so its mean positive vector (or TPR) is undefined.
    #[error(
        "group {group} has no positive example (label 1): the equal-opportunity constraint needs at least one in each group"
    )]
    NoPositives {
        /// The group.
        group: u32,
    },
    /// A hyper-parameter grid is empty.
    #[error("empty {what} grid: expected at least one value")]
    EmptyGrid {
        /// `C` or `gamma`.
        what: &'static str,
    },
    /// A hyper-parameter is not a finite positive number.
    #[error("{what}: expected a finite value > 0, found {value}")]
    NotPositive {
        /// `C`, `gamma`, ...
        what: &'static str,
        /// The value.
        value: f64,
    },
    /// A configuration value is out of range.
    #[error("{key}: expected {expected}, found {found}")]
    InvalidConfig {
        /// The setting.
        key: &'static str,
        /// What is accepted.
        expected: &'static str,
        /// What was given.
        found: String,
    },
    /// Fewer rows than cross-validation folds.
    #[error("{rows} rows for {folds}-fold cross-validation: expected at least one row per fold")]
    FewerRowsThanFolds {
        /// Rows.
        rows: usize,
        /// Folds.
        folds: usize,
    },
    /// A (group, label = 1) cell has fewer rows than folds, so some validation fold would have
    /// no positive example of that group and its DEO would be undefined.
    #[error(
        "group {group} has {count} positive examples for {folds}-fold cross-validation: expected at least one per fold"
    )]
    PositivesFewerThanFolds {
        /// The group.
        group: u32,
        /// Its number of positives.
        count: usize,
        /// Folds.
        folds: usize,
    },
    /// A row index is out of range.
    #[error("row index {index}: expected an index below the {rows} rows of the sample")]
    RowOutOfRange {
        /// The index.
        index: usize,
        /// Rows of the sample.
        rows: usize,
    },
    /// A given fold assignment is invalid.
    #[error("fold assignment at row {row}: {reason}")]
    InvalidFold {
        /// Row index (or the number of rows when the problem is global).
        row: usize,
        /// What is wrong.
        reason: String,
    },
    /// The FERM direction `u = u_a - u_b` is zero: the constraint is void and no coordinate can
    /// be eliminated.
    #[error(
        "the mean positive vectors of groups 0 and 1 are equal (u = 0): no coordinate j with u_j != 0 to eliminate"
    )]
    ZeroDirection,
    /// New rows do not have the number of columns the fitted object was fitted on.
    #[error("{what}: expected {expected} columns, found {found}")]
    ColumnMismatch {
        /// Which object.
        what: &'static str,
        /// Columns at fit time.
        expected: usize,
        /// Columns given.
        found: usize,
    },
    /// The QP solver stopped without a solution.
    #[error("{problem}: the QP solver stopped with status {status} after {iterations} iterations")]
    Solver {
        /// Which problem (`linear SVM primal`, `kernel SVM dual`, ...).
        problem: &'static str,
        /// The solver status.
        status: String,
        /// Iterations run.
        iterations: u32,
    },
    /// The QP solver rejected the problem data (a bug in this crate, reported rather than
    /// panicking).
    #[error("{problem}: the QP solver rejected the problem: {reason}")]
    SolverSetup {
        /// Which problem.
        problem: &'static str,
        /// The solver's message.
        reason: String,
    },
    /// Newton's method for logistic regression did not converge.
    #[error(
        "logistic regression: no convergence after {iterations} Newton steps (gradient norm {gradient_norm:e})"
    )]
    NoConvergence {
        /// Steps taken.
        iterations: usize,
        /// Final gradient norm.
        gradient_norm: f64,
    },
}
