//! `fairrep sweep`: runs a sweep's runs (each a `fairrep train` process, `--jobs` at once),
//! resuming interrupted ones and skipping finished ones, then merges the results and writes
//! the front plot and the report; `--emit slurm` writes an sbatch array script instead;
//! `sweep collect DIR` merges the shards of a sweep directory.
use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};

use anyhow::Context;
use fairrep_data::fs as fsutil;
use fairrep_sweep::front::analyse;
use fairrep_sweep::plot::front_svg;
use fairrep_sweep::report::markdown;
use fairrep_sweep::results::{
    RESULTS_CSV, collect, init_sweep_dir, read_result, row_from_summary, write_result,
    write_results,
};
use fairrep_sweep::slurm::{SlurmOptions, sbatch_script};
use fairrep_sweep::spec::run_root;
use fairrep_sweep::{PlannedRun, Shard, SweepPlan};
use fairrep_train::checkpoint::RunLock;
use fairrep_train::raster::PngFile;
use fairrep_train::records::SUMMARY_FILE;

use crate::cli::{EmitKind, SweepAction, SweepArgs};

/// The front plot, beside the results (and its PNG version, `front.png`).
const FRONT_SVG: &str = "front.svg";
/// The Markdown report.
const REPORT_MD: &str = "report.md";
/// The resolved config of a run, under its folder.
const RUN_CONFIG: &str = "run.toml";
/// The output of a run's `fairrep train` processes, under its folder.
const RUN_LOG: &str = "train.log";
/// Held (advisory lock) by the sweep process working on a run.
const SWEEP_LOCK: &str = ".sweep.lock";

/// What happened to one run.
enum Outcome {
    /// Finished before this invocation.
    Done,
    /// Trained (or resumed) to the end now.
    Trained { resumed: bool },
    /// Another process holds the run.
    Busy,
}

fn absolute(path: &Path) -> anyhow::Result<PathBuf> {
    std::path::absolute(path).with_context(|| format!("cannot resolve `{}`", path.display()))
}

/// The run directories under a run's folder (the folders that are not hidden).
fn run_dirs(root: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    for entry in
        std::fs::read_dir(root).with_context(|| format!("cannot list `{}`", root.display()))?
    {
        let entry = entry?;
        let name = entry.file_name();
        if entry.file_type()?.is_dir() && !name.to_string_lossy().starts_with('.') {
            out.push(entry.path());
        }
    }
    out.sort();
    Ok(out)
}

/// Runs `fairrep train ARGS`, its output appended to the run's log.
fn train_process(
    root: &Path,
    args: &[&std::ffi::OsStr],
    data_dir: Option<&Path>,
) -> anyhow::Result<()> {
    let exe = std::env::current_exe().context("cannot find the fairrep executable")?;
    let log_path = root.join(RUN_LOG);
    let log = File::options()
        .create(true)
        .append(true)
        .open(&log_path)
        .with_context(|| format!("cannot open `{}`", log_path.display()))?;
    let mut cmd = Command::new(exe);
    cmd.arg("train").args(args);
    if let Some(d) = data_dir {
        cmd.arg("--data-dir").arg(d);
    }
    let status = cmd
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .status()
        .context("cannot run fairrep train")?;
    if !status.success() {
        anyhow::bail!(
            "fairrep train failed ({status}); its output is in `{}`",
            log_path.display()
        );
    }
    Ok(())
}

/// Brings one run to its end: skips it when finished, resumes it when interrupted, trains it
/// otherwise, then records its row.
fn process(run: &PlannedRun, out_dir: &Path, data_dir: Option<&Path>) -> anyhow::Result<Outcome> {
    let root = run_root(out_dir, &run.id);
    fsutil::create_dir_all(&root)?;
    let lock_path = root.join(SWEEP_LOCK);
    let lock = File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .with_context(|| format!("cannot open `{}`", lock_path.display()))?;
    match lock.try_lock() {
        Ok(()) => {}
        Err(std::fs::TryLockError::WouldBlock) => return Ok(Outcome::Busy),
        Err(std::fs::TryLockError::Error(e)) => {
            return Err(e).with_context(|| format!("cannot lock `{}`", lock_path.display()));
        }
    }
    if read_result(&root, &run.id)?.is_some() {
        return Ok(Outcome::Done);
    }
    let mut resumed = false;
    let mut finished = None;
    for dir in run_dirs(&root)? {
        if dir.join(SUMMARY_FILE).exists() {
            finished = Some(dir);
            break;
        }
        if dir.join("latest").exists() {
            train_process(&root, &["--resume".as_ref(), dir.as_os_str()], data_dir)?;
            resumed = true;
            finished = Some(dir);
            break;
        }
        // Killed before its first checkpoint: nothing to keep, unless a trainer still runs.
        match RunLock::acquire(&dir) {
            Ok(held) => {
                drop(held);
                std::fs::remove_dir_all(&dir)
                    .with_context(|| format!("cannot remove `{}`", dir.display()))?;
            }
            Err(_) => return Ok(Outcome::Busy),
        }
    }
    let trained_now = finished.is_none() || resumed;
    let run_dir = match finished {
        Some(dir) => dir,
        None => {
            let config_path = root.join(RUN_CONFIG);
            fsutil::write_atomic(&config_path, run.config.to_toml().as_bytes())?;
            train_process(&root, &[config_path.as_os_str()], data_dir)?;
            let dirs = run_dirs(&root)?;
            dirs.into_iter()
                .find(|d| d.join(SUMMARY_FILE).exists())
                .with_context(|| {
                    format!("the run under `{}` wrote no {SUMMARY_FILE}", root.display())
                })?
        }
    };
    let row = row_from_summary(run, &run_dir)?;
    write_result(&root, &row)?;
    Ok(if trained_now {
        Outcome::Trained { resumed }
    } else {
        Outcome::Done
    })
}

/// Merges a sweep directory's rows and writes the results, the plot and the report; prints
/// the report. Returns the number of runs not finished.
fn merge(dir: &Path) -> anyhow::Result<usize> {
    let collected = collect(dir)?;
    write_results(dir, &collected.record.keys, &collected.rows)?;
    eprintln!(
        "results: {} ({} rows)",
        dir.join(RESULTS_CSV).display(),
        collected.rows.len()
    );
    if collected.rows.is_empty() {
        eprintln!("no finished run yet: no front to draw");
        return Ok(collected.missing.len());
    }
    let analysis = analyse(&collected.rows, &collected.record.select)?;
    let svg_path = dir.join(FRONT_SVG);
    let svg = front_svg(&analysis);
    fsutil::write_atomic(&svg_path, svg.as_bytes())?;
    let report = markdown(&analysis, collected.rows.len(), &collected.missing);
    fsutil::write_atomic(&dir.join(REPORT_MD), report.as_bytes())?;
    eprintln!(
        "front: {}; report: {}",
        svg_path.display(),
        dir.join(REPORT_MD).display()
    );
    // The PNG comes last: a failure to render it loses neither the SVG nor the report.
    super::report_png("front", &PngFile::beside(&svg_path, &svg));
    println!("{report}");
    Ok(collected.missing.len())
}

fn emit(args: &SweepArgs, plan: &SweepPlan, file: &Path) -> anyhow::Result<ExitCode> {
    let Some(EmitKind::Slurm) = args.emit else {
        unreachable!("called with --emit")
    };
    init_sweep_dir(plan)?;
    let out = absolute(&plan.out_dir)?;
    let logs = out.join("logs");
    fsutil::create_dir_all(&logs)?;
    let mut sweep_args = vec![
        absolute(file)?.to_string_lossy().into_owned(),
        "--out".into(),
        out.to_string_lossy().into_owned(),
    ];
    if let Some(d) = &args.data_dir {
        sweep_args.push("--data-dir".into());
        sweep_args.push(absolute(d)?.to_string_lossy().into_owned());
    }
    let shards = args.tasks.map_or(plan.runs.len(), |t| t as usize);
    let options = SlurmOptions {
        shards,
        parallel: args.parallel.map(|k| k as usize),
        cpus_per_task: args.cpus_per_task as usize,
        mem: args.mem.clone(),
        time: args.time.clone(),
        partition: args.partition.clone(),
        gres: args.gres.clone(),
        job_name: format!("fairrep-sweep-{}", plan.sweep_id),
    };
    let exe = std::env::current_exe().context("cannot find the fairrep executable")?;
    let cwd = std::env::current_dir().context("cannot read the current directory")?;
    let script = sbatch_script(&options, &exe, &cwd, &logs, &sweep_args);
    let path = args
        .script
        .clone()
        .unwrap_or_else(|| out.join("sweep.sbatch"));
    fsutil::write_atomic(&path, script.as_bytes())?;
    eprintln!(
        "{} runs in {shards} array tasks; submit with: sbatch {}\nthen: fairrep sweep collect {}",
        plan.runs.len(),
        path.display(),
        out.display()
    );
    println!("{}", path.display());
    Ok(ExitCode::SUCCESS)
}

pub(crate) fn run(args: SweepArgs) -> anyhow::Result<ExitCode> {
    if let Some(SweepAction::Collect { dir }) = &args.action {
        let missing = merge(dir)?;
        if missing > 0 {
            eprintln!("{missing} runs of the sweep are not finished");
        }
        return Ok(ExitCode::SUCCESS);
    }
    let file = args.file.clone().expect("clap requires the sweep file");
    let plan = SweepPlan::load(&file, args.out.as_deref())
        .with_context(|| format!("cannot plan the sweep `{}`", file.display()))?;
    if args.emit.is_some() {
        return emit(&args, &plan, &file);
    }
    let shard = match &args.shard {
        Some(text) => Shard::parse(text)?,
        None => Shard::from_slurm_env(
            std::env::var("SLURM_ARRAY_TASK_ID").ok().as_deref(),
            std::env::var("SLURM_ARRAY_TASK_COUNT").ok().as_deref(),
        )
        .context("from the Slurm array environment")?
        .unwrap_or(Shard::ALL),
    };
    init_sweep_dir(&plan)?;
    let runs = plan.shard(shard);
    eprintln!(
        "sweep {} in `{}`: {} runs, shard {}/{} has {}; {} at once",
        plan.sweep_id,
        plan.out_dir.display(),
        plan.runs.len(),
        shard.index,
        shard.count,
        runs.len(),
        args.jobs
    );
    let next = AtomicUsize::new(0);
    let failures: Mutex<Vec<String>> = Mutex::new(Vec::new());
    let busy = AtomicUsize::new(0);
    let data_dir = args.data_dir.as_deref();
    std::thread::scope(|scope| {
        for _ in 0..args.jobs.min(runs.len().max(1) as u64) {
            scope.spawn(|| {
                loop {
                    let i = next.fetch_add(1, Ordering::SeqCst);
                    let Some(run) = runs.get(i) else { break };
                    let what = format!(
                        "run {} ({}/{}, seed {}{})",
                        run.id,
                        run.index + 1,
                        plan.runs.len(),
                        run.seed,
                        run.params
                            .iter()
                            .map(|(k, v)| format!(", {k} = {v}"))
                            .collect::<String>()
                    );
                    match process(run, &plan.out_dir, data_dir) {
                        Ok(Outcome::Done) => eprintln!("{what}: finished before, skipped"),
                        Ok(Outcome::Trained { resumed }) => eprintln!(
                            "{what}: {}",
                            if resumed {
                                "resumed and finished"
                            } else {
                                "trained"
                            }
                        ),
                        Ok(Outcome::Busy) => {
                            busy.fetch_add(1, Ordering::SeqCst);
                            eprintln!("{what}: another process is working on it, skipped");
                        }
                        Err(err) => {
                            eprintln!("{what}: failed: {err:#}");
                            failures
                                .lock()
                                .expect("no thread panics holding it")
                                .push(format!("{what}: {err:#}"));
                        }
                    }
                }
            });
        }
    });
    merge(&plan.out_dir)?;
    let failures = failures.into_inner().expect("no thread panics holding it");
    let busy = busy.into_inner();
    if !failures.is_empty() {
        anyhow::bail!(
            "{} runs of this shard failed (the others are recorded; run the sweep again to \
             retry): {}",
            failures.len(),
            failures.join("; ")
        );
    }
    if busy > 0 {
        anyhow::bail!(
            "{busy} runs of this shard are held by another process; run the sweep again when it is done"
        );
    }
    Ok(ExitCode::SUCCESS)
}
