//! The `sbatch` array script of a sweep: array task `I` of `N` runs shard `I/N` of the sweep
//! (`fairrep sweep ... --shard I/N`), so with `N` = the number of runs each task trains one
//! run and writes one log. The script assumes a filesystem shared by the submitting machine
//! and the nodes, at the same path: the binary, the sweep file, the base config, the data and
//! the sweep directory.
use std::fmt::Write as _;
use std::path::Path;

/// Resources and layout of the array job.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SlurmOptions {
    /// Array tasks (shards), at least 1.
    pub shards: usize,
    /// At most this many tasks at once (`%K`).
    pub parallel: Option<usize>,
    /// `--cpus-per-task`.
    pub cpus_per_task: usize,
    /// `--mem` (e.g. `4G`).
    pub mem: Option<String>,
    /// `--time` (e.g. `01:00:00`).
    pub time: Option<String>,
    /// `--partition`.
    pub partition: Option<String>,
    /// `--gres` (e.g. `gpu:1`).
    pub gres: Option<String>,
    /// `--job-name`.
    pub job_name: String,
}

/// Quotes a word for a POSIX shell.
pub fn shell_quote(word: &str) -> String {
    if !word.is_empty()
        && word
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./=:,+@%".contains(c))
    {
        return word.to_string();
    }
    format!("'{}'", word.replace('\'', r"'\''"))
}

/// The script. `exe` is the `fairrep` binary, `workdir` the directory the paths are relative
/// to, `logs` the folder of the tasks' logs, `args` the sweep's arguments (the sweep file,
/// `--out`, `--data-dir`, ...): each task runs `exe sweep ARGS --shard $SLURM_ARRAY_TASK_ID/N`.
pub fn sbatch_script(
    options: &SlurmOptions,
    exe: &Path,
    workdir: &Path,
    logs: &Path,
    args: &[String],
) -> String {
    let mut s = String::new();
    let last = options.shards.saturating_sub(1);
    let throttle = options
        .parallel
        .map(|k| format!("%{k}"))
        .unwrap_or_default();
    let _ = writeln!(s, "#!/bin/bash");
    let _ = writeln!(s, "#SBATCH --job-name={}", shell_quote(&options.job_name));
    let _ = writeln!(s, "#SBATCH --array=0-{last}{throttle}");
    let _ = writeln!(s, "#SBATCH --ntasks=1");
    let _ = writeln!(s, "#SBATCH --cpus-per-task={}", options.cpus_per_task);
    for (flag, value) in [
        ("mem", &options.mem),
        ("time", &options.time),
        ("partition", &options.partition),
        ("gres", &options.gres),
    ] {
        if let Some(v) = value {
            let _ = writeln!(s, "#SBATCH --{flag}={}", shell_quote(v));
        }
    }
    let log = logs.join("task-%a.log");
    let _ = writeln!(
        s,
        "#SBATCH --output={}",
        shell_quote(&log.to_string_lossy())
    );
    let _ = writeln!(
        s,
        "#SBATCH --chdir={}",
        shell_quote(&workdir.to_string_lossy())
    );
    let _ = writeln!(
        s,
        "# Written by `fairrep sweep --emit slurm`. Array task I of {} runs shard I/{} of the \
         sweep.\n# Assumes a shared filesystem: the binary, the configs, the data and the sweep \
         directory\n# are at the same paths on every node. Submit with `sbatch THIS_FILE`; \
         then `fairrep sweep collect DIR`.",
        options.shards, options.shards
    );
    let _ = writeln!(s, "set -euo pipefail");
    let _ = writeln!(s, "export OMP_NUM_THREADS=\"${{SLURM_CPUS_PER_TASK:-1}}\"");
    let _ = writeln!(
        s,
        "export RAYON_NUM_THREADS=\"${{SLURM_CPUS_PER_TASK:-1}}\""
    );
    let words: Vec<String> = args.iter().map(|a| shell_quote(a)).collect();
    let _ = writeln!(
        s,
        "exec {} sweep {} --jobs 1 --shard \"${{SLURM_ARRAY_TASK_ID}}/{}\"",
        shell_quote(&exe.to_string_lossy()),
        words.join(" "),
        options.shards
    );
    s
}
