//! The error type of this crate.

use std::path::PathBuf;

/// Everything that can go wrong while reading a spec, loading a dataset or building batches.
///
/// Every variant names where the problem is (file, 1-based line, column or key), what was
/// expected and what was found.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DataError {
    /// A data or spec file does not exist.
    #[error(
        "{what} `{}` not found; point --data-dir (or FAIRREP_DATA_DIR) at the datasets folder, \
         or fetch the files with scripts/download_datasets.sh",
        path.display()
    )]
    MissingFile {
        /// What the file is (e.g. "data file", "dataset spec").
        what: &'static str,
        /// The path that was tried.
        path: PathBuf,
    },
    /// Reading a file failed for another reason.
    #[error("cannot read `{}`: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// A spec file is not valid TOML or does not match the spec schema (unknown key, wrong type).
    #[error("invalid dataset spec `{}`: {message}", path.display())]
    SpecParse {
        /// The spec file.
        path: PathBuf,
        /// The parser's message (it names the key and the line).
        message: String,
    },
    /// A spec parsed but is inconsistent.
    #[error("invalid dataset spec `{}`: key `{key}`: expected {expected}, found {found}", path.display())]
    SpecInvalid {
        /// The spec file (empty for specs built in code).
        path: PathBuf,
        /// The offending key, e.g. `tasks[2].value`.
        key: String,
        /// What was expected.
        expected: String,
        /// What was found.
        found: String,
    },
    /// A required column is absent from a data file.
    #[error("`{}`: missing column `{column}`; columns found: [{}]", file.display(), found.join(", "))]
    MissingColumn {
        /// The data file.
        file: PathBuf,
        /// The column that was required.
        column: String,
        /// The columns the file has.
        found: Vec<String>,
    },
    /// A cell does not hold what its column requires.
    #[error("`{}` line {line}, column `{column}`: expected {expected}, found `{found}`", file.display())]
    BadCell {
        /// The data file.
        file: PathBuf,
        /// 1-based line number in the (decompressed) file.
        line: u64,
        /// The column name.
        column: String,
        /// What was expected (e.g. "a finite number").
        expected: String,
        /// The cell's text.
        found: String,
    },
    /// A record has the wrong number of fields.
    #[error("`{}` line {line}: expected {expected} fields, found {found}", file.display())]
    FieldCount {
        /// The data file.
        file: PathBuf,
        /// 1-based line number.
        line: u64,
        /// Number of columns in the header / spec.
        expected: usize,
        /// Number of fields on this line.
        found: usize,
    },
    /// A file is not valid UTF-8 or not valid gzip / CSV.
    #[error("`{}` line {line}: {message}", file.display())]
    Malformed {
        /// The data file.
        file: PathBuf,
        /// 1-based line number (0 when unknown).
        line: u64,
        /// What went wrong.
        message: String,
    },
    /// A sensitive group has no rows in some split (or in the whole filtered data).
    #[error(
        "sensitive group `{group}` has no rows in the {split} split of dataset `{dataset}` \
         (expected at least one; group sizes there: {sizes})"
    )]
    EmptyGroup {
        /// Dataset name.
        dataset: String,
        /// The group name.
        group: String,
        /// `train`, `valid`, `test` or `filtered data`.
        split: String,
        /// Size of every group in that split, for context.
        sizes: String,
    },
    /// An intersection cell of several sensitive attributes has no rows in some split.
    #[error(
        "intersection cell `{cell}` of the sensitive attributes [{attributes}] has no rows in \
         the {split} split of dataset `{dataset}` (expected at least one; cell sizes there: \
         {sizes}); merge groups in data.sensitive (an attribute's `groups = [{{ name, values \
         }}]` may map several values to one group) so that every cell has rows in every split"
    )]
    EmptyCell {
        /// Dataset name.
        dataset: String,
        /// The cell's name (`A & B`).
        cell: String,
        /// The attributes' names.
        attributes: String,
        /// `train`, `valid` or `test`.
        split: String,
        /// Size of every cell in that split, for context.
        sizes: String,
    },
    /// No data row to use: a file with only a header, or filters that remove every row.
    #[error("`{}`: {reason}", file.display())]
    NoRows {
        /// The data file, or the spec whose filters removed every row.
        file: PathBuf,
        /// What was found.
        reason: String,
    },
    /// A task name asked for is not in the spec.
    #[error("dataset `{dataset}` has no task `{task}`; tasks available: [{}]", available.join(", "))]
    UnknownTask {
        /// Dataset name.
        dataset: String,
        /// The name asked for.
        task: String,
        /// The spec's task names.
        available: Vec<String>,
    },
    /// An argument or option is out of range.
    #[error("invalid {what}: expected {expected}, found {found}")]
    InvalidArgument {
        /// Which argument.
        what: String,
        /// What was expected.
        expected: String,
        /// What was found.
        found: String,
    },
    /// A saved schema does not match the data it is applied to.
    #[error("schema mismatch in {what}: expected {expected}, found {found}")]
    SchemaMismatch {
        /// Which part of the schema.
        what: String,
        /// The saved value.
        expected: String,
        /// The value for the data at hand.
        found: String,
    },
}
