//! Run directories: their names, creation, and the files written once per epoch.
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use fairrep_data::fs::{self as fsutil, FsError};

use crate::config::TrainConfig;
use crate::records::{EpochRecord, METRICS_FILE};

/// UTC `YYYYmmdd-HHMMSS` of a time.
pub fn timestamp(time: SystemTime) -> String {
    let secs = time.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs()) as i64;
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}{month:02}{day:02}-{:02}{:02}{:02}",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// Creates a fresh run directory `OUT/NAME-sSEED-TIMESTAMP` (suffixed `-2`, `-3`, ... if it
/// exists). `NAME` is `run.name` (validated to be a plain name) or the config file's stem.
pub fn create_run_dir(cfg: &TrainConfig) -> Result<PathBuf, FsError> {
    let run = &cfg.file.run;
    let name = run.name.clone().unwrap_or_else(|| {
        cfg.source
            .file_stem()
            .map_or_else(|| "run".into(), |s| s.to_string_lossy().into_owned())
    });
    create_named_run_dir(&run.out_dir, &name, run.seed)
}

/// Creates a fresh directory `OUT/NAME-sSEED-TIMESTAMP` (suffixed `-2`, `-3`, ... if it
/// exists) with an exclusive create; `name` must be a plain name (the callers validate it).
pub fn create_named_run_dir(out_dir: &Path, name: &str, seed: u64) -> Result<PathBuf, FsError> {
    let base = format!("{name}-s{seed}-{}", timestamp(SystemTime::now()));
    fsutil::create_dir_all(out_dir)?;
    for i in 1.. {
        let dir = if i == 1 {
            out_dir.join(&base)
        } else {
            out_dir.join(format!("{base}-{i}"))
        };
        match std::fs::create_dir(&dir) {
            Ok(()) => return Ok(dir),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(FsError::new("cannot create directory", &dir, e)),
        }
    }
    unreachable!("some suffix is free")
}

/// Rewrites `metrics.jsonl` with `history` (atomically): a resumed run starts from the
/// checkpoint's records, dropping lines a killed session appended after it.
pub fn write_metrics_file(run_dir: &Path, history: &[EpochRecord]) -> Result<(), FsError> {
    let mut text = String::new();
    for record in history {
        text.push_str(&serde_json::to_string(record).expect("records serialise"));
        text.push('\n');
    }
    fsutil::write_atomic(&run_dir.join(METRICS_FILE), text.as_bytes())
}

/// Appends one epoch's record to `metrics.jsonl` (fsynced).
pub fn append_metrics(run_dir: &Path, record: &EpochRecord) -> Result<(), FsError> {
    fsutil::append_line(
        &run_dir.join(METRICS_FILE),
        &serde_json::to_string(record).expect("records serialise"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_are_utc_civil_dates() {
        let t = UNIX_EPOCH + std::time::Duration::from_secs(951_782_400 + 3_661); // 2000-02-29
        assert_eq!(timestamp(t), "20000229-010101");
        assert_eq!(timestamp(UNIX_EPOCH), "19700101-000000");
    }
}
