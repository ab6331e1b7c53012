//! Dense row-major matrices ([`Matrix`]) and their files: `.npy` (float32 / float64, C order,
//! format versions 1-3) and headerless `.csv` read; `.npy` written. Point clouds and weights of
//! `fairrep divergence`, exported representations, and every split's features use this one
//! type.
use std::path::{Path, PathBuf};

use thiserror::Error;

/// A dense row-major `rows x cols` matrix.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Matrix<T = f32> {
    /// `rows * cols` values, row after row.
    pub values: Vec<T>,
    /// Number of rows.
    pub rows: usize,
    /// Number of columns.
    pub cols: usize,
}

impl<T: Copy> Matrix<T> {
    /// A matrix from its row-major values.
    ///
    /// # Panics
    /// When `values.len() != rows * cols` (a bug in the caller).
    pub fn new(values: Vec<T>, rows: usize, cols: usize) -> Self {
        assert_eq!(
            values.len(),
            rows * cols,
            "a {rows} x {cols} matrix needs {} values",
            rows * cols
        );
        Self { values, rows, cols }
    }

    /// Row `i`.
    pub fn row(&self, i: usize) -> &[T] {
        &self.values[i * self.cols..(i + 1) * self.cols]
    }

    /// The rows `idx`, in that order.
    pub fn gather(&self, idx: &[usize]) -> Self {
        let mut values = Vec::with_capacity(idx.len() * self.cols);
        idx.iter()
            .for_each(|&i| values.extend_from_slice(self.row(i)));
        Self {
            values,
            rows: idx.len(),
            cols: self.cols,
        }
    }

    /// The rows `start..end`.
    pub fn slice_rows(&self, range: std::ops::Range<usize>) -> &[T] {
        &self.values[range.start * self.cols..range.end * self.cols]
    }
}

/// How a matrix file stored its values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoredAs {
    /// `.npy` `<f4`.
    F32,
    /// `.npy` `<f8`, or text (CSV).
    F64,
}

/// A matrix read from a file, in float64, and how the file stored it.
#[derive(Debug, Clone, PartialEq)]
pub struct MatrixFile {
    /// The values.
    pub matrix: Matrix<f64>,
    /// The file's element type.
    pub stored_as: StoredAs,
}

/// Errors reading a matrix file.
#[derive(Debug, Error)]
pub enum MatrixError {
    /// The file cannot be read.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// The `.npy` file is malformed or holds an unsupported type.
    #[error("{}: not a .npy file we can read: {reason}", path.display())]
    Npy {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// A CSV row has another number of values than the first.
    #[error("{}: row {row} has {found} values, expected {expected} like row 1", path.display())]
    Ragged {
        /// The file.
        path: PathBuf,
        /// 1-based line.
        row: usize,
        /// Values found.
        found: usize,
        /// Values of the first row.
        expected: usize,
    },
    /// A CSV cell is not a number.
    #[error("{}: row {row}, column {col}: expected a number, found {found:?}", path.display())]
    NotANumber {
        /// The file.
        path: PathBuf,
        /// 1-based line.
        row: usize,
        /// 1-based column.
        col: usize,
        /// The cell.
        found: String,
    },
    /// A value is NaN or infinite.
    #[error("{}: row {row}, column {col}: value {value} is not finite", path.display())]
    NonFinite {
        /// The file.
        path: PathBuf,
        /// 1-based row.
        row: usize,
        /// 1-based column.
        col: usize,
        /// The value.
        value: f64,
    },
    /// The file holds no value.
    #[error("{}: the file holds no values", path.display())]
    Empty {
        /// The file.
        path: PathBuf,
    },
    /// Neither `.npy` nor `.csv` / `.txt`.
    #[error("{}: unsupported extension (expected .npy or .csv)", path.display())]
    Extension {
        /// The file.
        path: PathBuf,
    },
}

/// Reads `.npy` or `.csv` (`.txt`) by extension; 1-D arrays are read as one column. Every
/// value must be finite and the matrix non-empty.
pub fn read_matrix(path: &Path) -> Result<MatrixFile, MatrixError> {
    let file = match path.extension().and_then(|e| e.to_str()) {
        Some("npy") => read_npy(path)?,
        Some("csv") | Some("txt") => read_csv(path)?,
        _ => {
            return Err(MatrixError::Extension {
                path: path.to_path_buf(),
            });
        }
    };
    let m = &file.matrix;
    if m.rows == 0 || m.cols == 0 {
        return Err(MatrixError::Empty {
            path: path.to_path_buf(),
        });
    }
    if let Some(i) = m.values.iter().position(|v| !v.is_finite()) {
        return Err(MatrixError::NonFinite {
            path: path.to_path_buf(),
            row: i / m.cols + 1,
            col: i % m.cols + 1,
            value: m.values[i],
        });
    }
    Ok(file)
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> MatrixError + '_ {
    move |source| MatrixError::Io {
        path: path.to_path_buf(),
        source,
    }
}

fn read_csv(path: &Path) -> Result<MatrixFile, MatrixError> {
    let text = std::fs::read_to_string(path).map_err(io_err(path))?;
    let mut values = Vec::new();
    let mut cols = 0;
    let mut rows = 0;
    for (line_no, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() {
            continue;
        }
        let row: Vec<&str> = line.split(',').map(str::trim).collect();
        if rows == 0 {
            cols = row.len();
        } else if row.len() != cols {
            return Err(MatrixError::Ragged {
                path: path.to_path_buf(),
                row: line_no + 1,
                found: row.len(),
                expected: cols,
            });
        }
        for (c, cell) in row.iter().enumerate() {
            let v: f64 = cell.parse().map_err(|_| MatrixError::NotANumber {
                path: path.to_path_buf(),
                row: line_no + 1,
                col: c + 1,
                found: (*cell).to_string(),
            })?;
            if !v.is_finite() {
                return Err(MatrixError::NonFinite {
                    path: path.to_path_buf(),
                    row: line_no + 1,
                    col: c + 1,
                    value: v,
                });
            }
            values.push(v);
        }
        rows += 1;
    }
    Ok(MatrixFile {
        matrix: Matrix { values, rows, cols },
        stored_as: StoredAs::F64,
    })
}

/// Reads a version 1/2/3 `.npy` file holding a little-endian float32 or float64 array of rank
/// 1 or 2 in C order.
fn read_npy(path: &Path) -> Result<MatrixFile, MatrixError> {
    let bytes = std::fs::read(path).map_err(io_err(path))?;
    let bad = |reason: &str| MatrixError::Npy {
        path: path.to_path_buf(),
        reason: reason.to_string(),
    };
    if bytes.len() < 10 || &bytes[..6] != b"\x93NUMPY" {
        return Err(bad("missing the \\x93NUMPY magic string"));
    }
    let (header_len, start) = match bytes[6] {
        1 => (u16::from_le_bytes([bytes[8], bytes[9]]) as usize, 10),
        2 | 3 if bytes.len() >= 12 => (
            u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]) as usize,
            12,
        ),
        _ => return Err(bad("unknown format version")),
    };
    let header = bytes
        .get(start..start + header_len)
        .ok_or_else(|| bad("truncated header"))?;
    let header = std::str::from_utf8(header).map_err(|_| bad("header is not text"))?;
    let field = |key: &str| -> Option<&str> {
        let at = header.find(&format!("'{key}'"))?;
        let rest = &header[at + key.len() + 2..];
        let rest = rest.trim_start().strip_prefix(':')?.trim_start();
        Some(rest)
    };
    let descr = field("descr").ok_or_else(|| bad("no 'descr' in header"))?;
    let width = if descr.starts_with("'<f8'") {
        8
    } else if descr.starts_with("'<f4'") {
        4
    } else {
        let found: String = descr.chars().take_while(|c| *c != ',').collect();
        return Err(bad(&format!(
            "dtype {found} (expected little-endian float32 '<f4' or float64 '<f8')"
        )));
    };
    if field("fortran_order").is_some_and(|v| v.starts_with("True")) {
        return Err(bad(
            "Fortran-ordered arrays are not supported (save with C order)",
        ));
    }
    let shape_text = field("shape").ok_or_else(|| bad("no 'shape' in header"))?;
    let inner = shape_text
        .strip_prefix('(')
        .and_then(|s| s.split(')').next())
        .ok_or_else(|| bad("malformed shape"))?;
    let dims: Vec<usize> = inner
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| s.parse().map_err(|_| bad("malformed shape")))
        .collect::<Result<_, _>>()?;
    let (rows, cols) = match dims.as_slice() {
        [n] => (*n, 1),
        [n, d] => (*n, *d),
        _ => return Err(bad(&format!("rank {} (expected 1 or 2)", dims.len()))),
    };
    let data = &bytes[start + header_len..];
    let needed = rows
        .checked_mul(cols)
        .and_then(|c| c.checked_mul(width))
        .ok_or_else(|| bad(&format!("shape ({rows}, {cols}) is too large to address")))?;
    if data.len() != needed {
        return Err(bad(&format!(
            "data holds {} bytes, shape ({rows}, {cols}) needs {needed}",
            data.len(),
        )));
    }
    let values = if width == 8 {
        data.chunks_exact(8)
            .map(|c| f64::from_le_bytes(c.try_into().expect("8 bytes")))
            .collect()
    } else {
        data.chunks_exact(4)
            .map(|c| f32::from_le_bytes(c.try_into().expect("4 bytes")) as f64)
            .collect()
    };
    Ok(MatrixFile {
        matrix: Matrix { values, rows, cols },
        stored_as: if width == 8 {
            StoredAs::F64
        } else {
            StoredAs::F32
        },
    })
}

/// The bytes of a `.npy` file (format 1.0, C order): `descr` is numpy's type string
/// (`<f4`, `<i8`), `shape` the dimensions, `data` the little-endian values.
pub fn npy_bytes(descr: &str, shape: &[usize], data: &[u8]) -> Vec<u8> {
    let shape = match shape {
        [n] => format!("({n},)"),
        dims => format!(
            "({})",
            dims.iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(", ")
        ),
    };
    let mut header = format!("{{'descr': '{descr}', 'fortran_order': False, 'shape': {shape}, }}");
    // Pad so that the data starts on a 64-byte boundary, ending the header with a newline.
    let unpadded = 10 + header.len() + 1;
    header.push_str(&" ".repeat((64 - unpadded % 64) % 64));
    header.push('\n');
    let mut bytes = Vec::with_capacity(10 + header.len() + data.len());
    bytes.extend_from_slice(b"\x93NUMPY\x01\x00");
    bytes.extend_from_slice(&(header.len() as u16).to_le_bytes());
    bytes.extend_from_slice(header.as_bytes());
    bytes.extend_from_slice(data);
    bytes
}

/// Writes a float32 `.npy` file (C order) of shape `[rows, cols]`, or `[rows]` when `cols` is
/// `None`.
pub fn write_npy_f32(
    path: &Path,
    values: &[f32],
    rows: usize,
    cols: Option<usize>,
) -> std::io::Result<()> {
    let shape: Vec<usize> = match cols {
        Some(c) => vec![rows, c],
        None => vec![rows],
    };
    let data: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
    std::fs::write(path, npy_bytes("<f4", &shape, &data))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("fairrep-points-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        dir.join(name)
    }

    #[test]
    fn npy_round_trip() {
        let path = temp("rt.npy");
        write_npy_f32(&path, &[1.0, 2.5, -3.0, 4.0, 5.0, 6.0], 3, Some(2)).unwrap();
        let f = read_matrix(&path).unwrap();
        assert_eq!(
            (f.matrix.rows, f.matrix.cols, f.stored_as),
            (3, 2, StoredAs::F32)
        );
        assert_eq!(f.matrix.values, vec![1.0, 2.5, -3.0, 4.0, 5.0, 6.0]);
    }

    #[test]
    fn npy_shape_that_overflows_is_an_error() {
        let path = temp("huge.npy");
        let bytes = npy_bytes("<f8", &[1 << 62, 4], &[0u8; 16]);
        std::fs::write(&path, bytes).unwrap();
        let err = read_matrix(&path).unwrap_err().to_string();
        assert!(err.contains("too large"), "{err}");
    }

    #[test]
    fn csv_errors_name_row_and_column() {
        let path = temp("ragged.csv");
        std::fs::write(&path, "1,2\n3,4\n5\n").unwrap();
        let err = read_matrix(&path).unwrap_err().to_string();
        assert!(err.contains("row 3 has 1 values, expected 2"), "{err}");
        std::fs::write(&path, "1,2\n3,abc\n").unwrap();
        let err = read_matrix(&path).unwrap_err().to_string();
        assert!(
            err.contains("row 2, column 2") && err.contains("abc"),
            "{err}"
        );
        std::fs::write(&path, "1,2\nNaN,4\n").unwrap();
        let err = read_matrix(&path).unwrap_err().to_string();
        assert!(
            err.contains("row 2, column 1") && err.contains("not finite"),
            "{err}"
        );
    }
}
