//! Reading delimited / whitespace text files (optionally gzip) into interned columns.

use std::collections::HashMap;
use std::io::Read;
use std::path::{Path, PathBuf};

use crate::error::DataError;
use crate::spec::{FormatKind, FormatSpec};

/// Interned strings of one column: `codes[row]` indexes `dict`.
#[derive(Debug, Default)]
pub(crate) struct Interner {
    pub dict: Vec<String>,
    map: HashMap<String, u32>,
}

impl Interner {
    fn intern(&mut self, s: &str) -> u32 {
        if self.dict.len() <= 8 {
            if let Some(i) = self.dict.iter().position(|d| d == s) {
                return i as u32;
            }
        } else if let Some(&i) = self.map.get(s) {
            return i;
        }
        let i = self.dict.len() as u32;
        self.dict.push(s.to_string());
        self.map.insert(s.to_string(), i);
        i
    }
}

/// The columns a spec needs, read from one file. Rows with a missing-value marker in one of
/// these columns are already dropped.
#[derive(Debug)]
pub(crate) struct Table {
    pub path: PathBuf,
    pub columns: Vec<String>,
    pub codes: Vec<Vec<u32>>,
    pub dicts: Vec<Interner>,
    /// 1-based line of each row in the (decompressed) file.
    pub lines: Vec<u64>,
}

impl Table {
    pub(crate) fn n_rows(&self) -> usize {
        self.lines.len()
    }
    pub(crate) fn col(&self, name: &str) -> usize {
        self.columns
            .iter()
            .position(|c| c == name)
            .expect("column requested when the table was read")
    }
    pub(crate) fn cell(&self, col: usize, row: usize) -> &str {
        &self.dicts[col].dict[self.codes[col][row] as usize]
    }
}

pub(crate) fn read_text(path: &Path) -> Result<String, DataError> {
    let bytes = std::fs::read(path).map_err(|e| {
        if e.kind() == std::io::ErrorKind::NotFound {
            DataError::MissingFile {
                what: "data file",
                path: path.to_path_buf(),
            }
        } else {
            DataError::Io {
                path: path.to_path_buf(),
                source: e,
            }
        }
    })?;
    let bytes = if path.extension().is_some_and(|e| e == "gz") {
        let mut out = Vec::with_capacity(bytes.len() * 8);
        flate2::read::MultiGzDecoder::new(&bytes[..])
            .read_to_end(&mut out)
            .map_err(|e| DataError::Malformed {
                file: path.to_path_buf(),
                line: 0,
                message: format!("expected a gzip file, found corrupt data ({e})"),
            })?;
        out
    } else {
        bytes
    };
    String::from_utf8(bytes).map_err(|e| {
        let at = e.utf8_error().valid_up_to();
        let line = e.as_bytes()[..at].iter().filter(|&&b| b == b'\n').count() as u64 + 1;
        DataError::Malformed {
            file: path.to_path_buf(),
            line,
            message: "expected UTF-8 text, found invalid bytes".into(),
        }
    })
}

/// Reads `needed` columns of `path`.
pub(crate) fn read_table(
    path: &Path,
    fmt: &FormatSpec,
    skip_lines: usize,
    needed: &[String],
) -> Result<Table, DataError> {
    let text = read_text(path)?;
    let mut start = 0usize;
    for _ in 0..skip_lines {
        match text[start..].find('\n') {
            Some(i) => start += i + 1,
            None => {
                start = text.len();
                break;
            }
        }
    }
    let body = &text[start..];
    let mut builder = Builder {
        path: path.to_path_buf(),
        fmt,
        needed,
        header: fmt.columns.clone(),
        idx: Vec::new(),
        duplicates: Vec::new(),
        n_fields: 0,
        table: Table {
            path: path.to_path_buf(),
            columns: needed.to_vec(),
            codes: vec![Vec::new(); needed.len()],
            dicts: (0..needed.len()).map(|_| Interner::default()).collect(),
            lines: Vec::new(),
        },
    };
    if builder.header.is_some() {
        builder.resolve()?;
    }
    let offset = skip_lines as u64;
    match fmt.kind {
        FormatKind::Whitespace => {
            let mut fields: Vec<&str> = Vec::new();
            for (i, line) in body.split('\n').enumerate() {
                split_ws(line, &mut fields);
                if fields.is_empty() {
                    continue;
                }
                builder.record(&fields, offset + i as u64 + 1)?;
            }
        }
        FormatKind::Csv => {
            let mut rdr = csv::ReaderBuilder::new()
                .has_headers(false)
                .flexible(true)
                .delimiter(fmt.delimiter as u8)
                .quote(fmt.quote as u8)
                .from_reader(body.as_bytes());
            let mut rec = csv::StringRecord::new();
            loop {
                let more = rdr
                    .read_record(&mut rec)
                    .map_err(|e| DataError::Malformed {
                        file: path.to_path_buf(),
                        line: offset + e.position().map_or(0, |p| p.line()),
                        message: format!("expected CSV, found a parse error: {e}"),
                    })?;
                if !more {
                    break;
                }
                if rec.len() == 1 && rec[0].trim().is_empty() {
                    continue;
                }
                let line = offset + rec.position().map_or(0, |p| p.line());
                let fields: Vec<&str> = rec.iter().collect();
                builder.record(&fields, line)?;
            }
        }
    }
    if builder.header.is_none() {
        return Err(DataError::Malformed {
            file: path.to_path_buf(),
            line: offset + 1,
            message: "expected a header line, found an empty file".into(),
        });
    }
    Ok(builder.table)
}

/// Splits `line` on runs of ASCII whitespace (space, tab, CR) into `out`.
fn split_ws<'s>(line: &'s str, out: &mut Vec<&'s str>) {
    out.clear();
    let b = line.as_bytes();
    let mut start: Option<usize> = None;
    for (i, &c) in b.iter().enumerate() {
        let ws = c == b' ' || c == b'\t' || c == b'\r';
        match (ws, start) {
            (true, Some(s)) => {
                out.push(&line[s..i]);
                start = None;
            }
            (false, None) => start = Some(i),
            _ => {}
        }
    }
    if let Some(s) = start {
        out.push(&line[s..]);
    }
}

struct Builder<'a> {
    path: PathBuf,
    fmt: &'a FormatSpec,
    needed: &'a [String],
    header: Option<Vec<String>>,
    idx: Vec<usize>,
    /// Needed columns whose name appears more than once in the header: the index into
    /// `needed` and the other positions. Such a column is used only where every copy holds
    /// the same value (the ProPublica COMPAS file repeats `priors_count`).
    duplicates: Vec<(usize, Vec<usize>)>,
    n_fields: usize,
    table: Table,
}

impl Builder<'_> {
    fn resolve(&mut self) -> Result<(), DataError> {
        let header = self.header.as_ref().expect("header set");
        self.n_fields = header.len();
        self.idx.clear();
        self.duplicates.clear();
        for (k, n) in self.needed.iter().enumerate() {
            let mut positions = header.iter().enumerate().filter(|(_, h)| *h == n);
            match positions.next() {
                Some((i, _)) => {
                    self.idx.push(i);
                    let more: Vec<usize> = positions.map(|(j, _)| j).collect();
                    if !more.is_empty() {
                        self.duplicates.push((k, more));
                    }
                }
                None => {
                    return Err(DataError::MissingColumn {
                        file: self.path.clone(),
                        column: n.clone(),
                        found: header.clone(),
                    });
                }
            }
        }
        Ok(())
    }

    fn clean<'s>(&self, s: &'s str) -> &'s str {
        let s = if self.fmt.trim { s.trim() } else { s };
        if self.fmt.strip_trailing.is_empty() {
            s
        } else {
            s.trim_end_matches(|c| self.fmt.strip_trailing.contains(c))
        }
    }

    fn record(&mut self, fields: &[&str], line: u64) -> Result<(), DataError> {
        if self.header.is_none() {
            let mut h: Vec<String> = Vec::with_capacity(fields.len() + 1);
            if let Some(ix) = &self.fmt.index_column {
                h.push(ix.clone());
            }
            h.extend(fields.iter().map(|f| self.clean(f).to_string()));
            self.header = Some(h);
            return self.resolve();
        }
        if fields.len() != self.n_fields {
            return Err(DataError::FieldCount {
                file: self.path.clone(),
                line,
                expected: self.n_fields,
                found: fields.len(),
            });
        }
        if !self.fmt.missing.is_empty() {
            for &i in &self.idx {
                let v = self.clean(fields[i]);
                if self.fmt.missing.iter().any(|m| m == v) {
                    return Ok(());
                }
            }
        }
        for (k, others) in &self.duplicates {
            let first = self.clean(fields[self.idx[*k]]);
            if let Some(&j) = others.iter().find(|&&j| self.clean(fields[j]) != first) {
                return Err(DataError::BadCell {
                    file: self.path.clone(),
                    line,
                    column: self.needed[*k].clone(),
                    expected: format!(
                        "the same value in every column named `{}` (the header repeats it)",
                        self.needed[*k]
                    ),
                    found: format!("`{first}` and `{}`", self.clean(fields[j])),
                });
            }
        }
        for (k, &i) in self.idx.iter().enumerate() {
            let v = self.clean(fields[i]);
            let code = self.table.dicts[k].intern(v);
            self.table.codes[k].push(code);
        }
        self.table.lines.push(line);
        Ok(())
    }
}

/// Reads a partition file (whitespace, no header) into `key value -> split value` pairs.
pub(crate) fn read_partition(
    path: &Path,
    columns: &[String],
    key: &str,
    column: &str,
) -> Result<Table, DataError> {
    let fmt = FormatSpec {
        kind: FormatKind::Whitespace,
        header: false,
        columns: Some(columns.to_vec()),
        ..FormatSpec::default()
    };
    read_table(path, &fmt, 0, &[key.to_string(), column.to_string()])
}
