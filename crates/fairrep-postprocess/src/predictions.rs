//! Predictions files: post-process the output of any tool.
//!
//! A predictions file is a CSV with a header naming its columns, in any order:
//!
//! | column | required | content |
//! | --- | --- | --- |
//! | `prediction` | yes | the base prediction, a finite number |
//! | `group` | yes (or `group:NAME`) | the sensitive group, a non-empty name |
//! | `group:NAME` | instead of `group` | the group for attribute `NAME`; one or more columns |
//! | `target` | no | the true value, a finite number (for MSE) |
//! | `split` | no | a split name, e.g. `valid` (calibration) / `test` |
//!
//! Several sensitive attributes are given as several `group:NAME` columns (e.g. `group:sex`,
//! `group:race`), in the order the attributes are to be made fair (header order; see
//! [`crate::sequential`]); a file has either one `group` column (attribute `group`) or
//! `group:NAME` columns, not both. Spaces around fields are trimmed. Other columns are errors
//! (a misspelt `target` would otherwise be dropped silently). Every error names the file, the
//! line and the column.

use std::io::Read;
use std::path::{Path, PathBuf};

use crate::error::PostprocessError;

/// The columns a predictions file may have (besides `group:NAME` columns).
pub const PREDICTION_COLUMNS: [&str; 4] = ["prediction", "group", "target", "split"];

/// Prefix of the group columns of several attributes (`group:sex`).
pub const GROUP_COLUMN_PREFIX: &str = "group:";

/// One sensitive attribute's column of a predictions file.
#[derive(Debug, Clone, PartialEq)]
pub struct GroupColumn {
    /// The attribute: `group` for the plain `group` column, `NAME` for `group:NAME`.
    pub name: String,
    /// The group of every row.
    pub groups: Vec<String>,
}

/// The rows of a predictions file.
#[derive(Debug, Clone, PartialEq)]
pub struct PredictionsTable {
    /// The `prediction` column.
    pub predictions: Vec<f64>,
    /// The group columns, in header order (one for a `group` column); never empty.
    pub attributes: Vec<GroupColumn>,
    /// The `target` column, when present.
    pub targets: Option<Vec<f64>>,
    /// The `split` column, when present.
    pub splits: Option<Vec<String>>,
    /// 1-based line number of every row in the file.
    pub lines: Vec<u64>,
    /// The file it was read from.
    pub source: PathBuf,
}

impl PredictionsTable {
    /// Number of rows.
    pub fn len(&self) -> usize {
        self.predictions.len()
    }

    /// Whether there are no rows.
    pub fn is_empty(&self) -> bool {
        self.predictions.is_empty()
    }

    /// The groups of the first (with a `group` column, the only) attribute.
    pub fn groups(&self) -> &[String] {
        &self.attributes[0].groups
    }

    /// The rows whose `split` is `split`, in file order. Errors when the file has no `split`
    /// column or no row in that split (naming the splits it has).
    pub fn split(&self, split: &str) -> Result<PredictionsTable, PostprocessError> {
        let Some(splits) = &self.splits else {
            return Err(PostprocessError::Csv {
                path: self.source.clone(),
                line: 1,
                column: Some("split".into()),
                expected: format!("a `split` column to select the `{split}` rows"),
                found: "no such column".into(),
            });
        };
        let keep: Vec<usize> = (0..self.len()).filter(|&i| splits[i] == split).collect();
        if keep.is_empty() {
            let mut have: Vec<&str> = splits.iter().map(String::as_str).collect();
            have.sort_unstable();
            have.dedup();
            return Err(PostprocessError::Csv {
                path: self.source.clone(),
                line: 1,
                column: Some("split".into()),
                expected: format!("rows of split `{split}`"),
                found: format!("none (splits: {})", have.join(", ")),
            });
        }
        let pick_f = |v: &Vec<f64>| keep.iter().map(|&i| v[i]).collect::<Vec<_>>();
        let pick_s = |v: &Vec<String>| keep.iter().map(|&i| v[i].clone()).collect::<Vec<_>>();
        Ok(PredictionsTable {
            predictions: pick_f(&self.predictions),
            attributes: self
                .attributes
                .iter()
                .map(|a| GroupColumn {
                    name: a.name.clone(),
                    groups: pick_s(&a.groups),
                })
                .collect(),
            targets: self.targets.as_ref().map(pick_f),
            splits: Some(pick_s(splits)),
            lines: keep.iter().map(|&i| self.lines[i]).collect(),
            source: self.source.clone(),
        })
    }

    /// The `target` column, or an error naming the file when it has none.
    pub fn require_targets(&self) -> Result<&[f64], PostprocessError> {
        self.targets
            .as_deref()
            .ok_or_else(|| PostprocessError::Csv {
                path: self.source.clone(),
                line: 1,
                column: Some("target".into()),
                expected: "a `target` column".into(),
                found: "no such column".into(),
            })
    }
}

/// Reads a predictions file (see the module documentation).
pub fn read_predictions_csv(path: &Path) -> Result<PredictionsTable, PostprocessError> {
    let file = std::fs::File::open(path).map_err(|source| PostprocessError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    parse_predictions_csv(file, path)
}

/// Parses predictions CSV text from `reader`; `path` is only used in errors.
pub fn parse_predictions_csv<R: Read>(
    reader: R,
    path: &Path,
) -> Result<PredictionsTable, PostprocessError> {
    let err =
        |line: u64, column: Option<&str>, expected: String, found: String| PostprocessError::Csv {
            path: path.to_path_buf(),
            line,
            column: column.map(str::to_string),
            expected,
            found,
        };
    let mut rdr = csv::ReaderBuilder::new()
        .has_headers(true)
        .trim(csv::Trim::All)
        .from_reader(reader);
    let csv_err = |e: csv::Error| {
        let line = e.position().map_or(1, |p| p.line());
        match e.kind() {
            csv::ErrorKind::UnequalLengths {
                expected_len, len, ..
            } => err(
                line,
                None,
                format!("{expected_len} fields (as in the header)"),
                format!("{len} fields"),
            ),
            csv::ErrorKind::Utf8 { .. } => {
                err(line, None, "UTF-8 text".into(), "invalid UTF-8".into())
            }
            _ => err(line, None, "CSV".into(), e.to_string()),
        }
    };
    let header = rdr.headers().map_err(csv_err)?.clone();
    if header.is_empty() {
        return Err(err(
            1,
            None,
            "a header naming the columns `prediction`, `group` and optionally `target`, `split`"
                .into(),
            "an empty file".into(),
        ));
    }
    let mut pos: [Option<usize>; 4] = [None; 4];
    // (attribute name, column index) of the `group:NAME` columns, in header order.
    let mut named: Vec<(String, usize)> = Vec::new();
    for (j, name) in header.iter().enumerate() {
        if let Some(attr) = name.strip_prefix(GROUP_COLUMN_PREFIX) {
            if attr.is_empty() {
                return Err(err(
                    1,
                    Some(name),
                    "an attribute name after `group:`".into(),
                    "none".into(),
                ));
            }
            if named.iter().any(|(a, _)| a == attr) {
                return Err(err(
                    1,
                    Some(name),
                    "each column once".into(),
                    format!("`{name}` twice"),
                ));
            }
            named.push((attr.to_string(), j));
            continue;
        }
        let Some(k) = PREDICTION_COLUMNS.iter().position(|c| *c == name) else {
            return Err(err(
                1,
                Some(name),
                format!(
                    "one of the columns {} or `group:NAME`",
                    PREDICTION_COLUMNS.join(", ")
                ),
                format!("an unknown column `{name}`"),
            ));
        };
        if pos[k].is_some() {
            return Err(err(
                1,
                Some(name),
                "each column once".into(),
                format!("`{name}` twice"),
            ));
        }
        pos[k] = Some(j);
    }
    if let (Some(_), Some((attr, _))) = (pos[1], named.first()) {
        return Err(err(
            1,
            Some(&format!("{GROUP_COLUMN_PREFIX}{attr}")),
            "either one `group` column or `group:NAME` columns".into(),
            "both".into(),
        ));
    }
    if let Some(ig) = pos[1] {
        named.push(("group".into(), ig));
    }
    let (Some(ip), false) = (pos[0], named.is_empty()) else {
        let mut missing: Vec<&str> = Vec::new();
        if pos[0].is_none() {
            missing.push("prediction");
        }
        if named.is_empty() {
            missing.push("group");
        }
        return Err(err(
            1,
            None,
            "the columns `prediction` and `group` (or `group:NAME`) in the header".into(),
            format!(
                "a header without {} (columns: {})",
                missing.join(", "),
                header.iter().collect::<Vec<_>>().join(", ")
            ),
        ));
    };
    let (it, is) = (pos[2], pos[3]);
    let mut t = PredictionsTable {
        predictions: Vec::new(),
        attributes: named
            .iter()
            .map(|(a, _)| GroupColumn {
                name: a.clone(),
                groups: Vec::new(),
            })
            .collect(),
        targets: it.map(|_| Vec::new()),
        splits: is.map(|_| Vec::new()),
        lines: Vec::new(),
        source: path.to_path_buf(),
    };
    let number = |line: u64, col: &str, text: &str| -> Result<f64, PostprocessError> {
        match text.parse::<f64>() {
            Ok(v) if v.is_finite() => Ok(v),
            _ => Err(err(
                line,
                Some(col),
                "a finite number".into(),
                format!("`{text}`"),
            )),
        }
    };
    let name = |line: u64, col: &str, text: &str| -> Result<String, PostprocessError> {
        if text.is_empty() {
            Err(err(
                line,
                Some(col),
                "a non-empty name".into(),
                "an empty field".into(),
            ))
        } else {
            Ok(text.to_string())
        }
    };
    for rec in rdr.records() {
        let rec = rec.map_err(csv_err)?;
        let line = rec.position().map_or(0, |p| p.line());
        t.predictions.push(number(line, "prediction", &rec[ip])?);
        for ((_, j), a) in named.iter().zip(t.attributes.iter_mut()) {
            a.groups.push(name(line, &header[*j], &rec[*j])?);
        }
        if let (Some(j), Some(v)) = (it, t.targets.as_mut()) {
            v.push(number(line, "target", &rec[j])?);
        }
        if let (Some(j), Some(v)) = (is, t.splits.as_mut()) {
            v.push(name(line, "split", &rec[j])?);
        }
        t.lines.push(line);
    }
    if t.is_empty() {
        return Err(err(
            2,
            None,
            "at least one data row after the header".into(),
            "none".into(),
        ));
    }
    Ok(t)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<PredictionsTable, PostprocessError> {
        parse_predictions_csv(text.as_bytes(), Path::new("p.csv"))
    }

    #[test]
    fn reads_columns_in_any_order() {
        let t = parse("group, split ,prediction,target\na,valid,0.5,1\nb,test,-2e-3,0\n").unwrap();
        assert_eq!(t.predictions, vec![0.5, -0.002]);
        assert_eq!(t.groups(), ["a", "b"]);
        assert_eq!(t.attributes.len(), 1);
        assert_eq!(t.attributes[0].name, "group");
        assert_eq!(t.targets, Some(vec![1.0, 0.0]));
        assert_eq!(t.lines, vec![2, 3]);
        let v = t.split("test").unwrap();
        assert_eq!(v.predictions, vec![-0.002]);
        assert_eq!(v.lines, vec![3]);
        let e = t.split("train").unwrap_err();
        assert_eq!(
            e.to_string(),
            "p.csv, line 1, column `split`: expected rows of split `train`, found none (splits: test, valid)"
        );
        let t = parse("prediction,group\n1,a\n").unwrap();
        assert!(t.targets.is_none() && t.splits.is_none());
        assert!(t.require_targets().is_err());
    }

    #[test]
    fn reads_several_attributes_in_header_order() {
        let t = parse("group:sex,prediction,split,group:race\nf,1,valid,x\nm,2,test,y\n").unwrap();
        let names: Vec<&str> = t.attributes.iter().map(|a| a.name.as_str()).collect();
        assert_eq!(names, ["sex", "race"]);
        assert_eq!(t.attributes[1].groups, ["x", "y"]);
        assert_eq!(t.groups(), ["f", "m"]);
        let v = t.split("test").unwrap();
        assert_eq!(v.attributes[0].groups, ["m"]);
        assert_eq!(v.attributes[1].groups, ["y"]);
    }

    #[test]
    fn errors_name_file_line_and_column() {
        let cases = [
            (
                "prediction,group\n1,a\nnan,b\n",
                "p.csv, line 3, column `prediction`: expected a finite number, found `nan`",
            ),
            (
                "prediction,group,target\n1,a,\n",
                "p.csv, line 2, column `target`: expected a finite number, found ``",
            ),
            (
                "prediction,group\n1,\n",
                "p.csv, line 2, column `group`: expected a non-empty name, found an empty field",
            ),
            (
                "prediction,group,targte\n1,a,2\n",
                "p.csv, line 1, column `targte`: expected one of the columns prediction, group, target, split or `group:NAME`, found an unknown column `targte`",
            ),
            (
                "prediction,target\n1,2\n",
                "p.csv, line 1: expected the columns `prediction` and `group` (or `group:NAME`) in the header, found a header without group (columns: prediction, target)",
            ),
            (
                "prediction,group\n1,a\n2,b,3\n",
                "p.csv, line 3: expected 2 fields (as in the header), found 3 fields",
            ),
            (
                "prediction,group\n",
                "p.csv, line 2: expected at least one data row after the header, found none",
            ),
            (
                "prediction,group,group:sex\n1,a,b\n",
                "p.csv, line 1, column `group:sex`: expected either one `group` column or `group:NAME` columns, found both",
            ),
            (
                "prediction,group:,target\n1,a,2\n",
                "p.csv, line 1, column `group:`: expected an attribute name after `group:`, found none",
            ),
            (
                "prediction,group:sex,group:sex\n1,a,b\n",
                "p.csv, line 1, column `group:sex`: expected each column once, found `group:sex` twice",
            ),
            (
                "prediction,group:sex,group:race\n1,a,\n",
                "p.csv, line 2, column `group:race`: expected a non-empty name, found an empty field",
            ),
            (
                "prediction,group,group\n1,a,b\n",
                "p.csv, line 1, column `group`: expected each column once, found `group` twice",
            ),
        ];
        for (text, want) in cases {
            assert_eq!(parse(text).unwrap_err().to_string(), want);
        }
        let e = parse("").unwrap_err().to_string();
        assert!(e.starts_with("p.csv, line 1: expected a header"), "{e}");
        let e = read_predictions_csv(Path::new("/nonexistent/p.csv")).unwrap_err();
        assert!(e.to_string().starts_with("/nonexistent/p.csv: "), "{e}");
    }
}
