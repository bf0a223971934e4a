//! The Python side: runs `bench/python/bench_mp.py` with `python3` (or `$PYTHON`) and reads its JSON;
//! for group `cluster`, `bench/python/bench_celery.py` with the interpreter of the virtual environment
//! that `bench/python/setup-celery.sh` makes (Celery and its Redis client installed).

use std::path::PathBuf;
use std::process::{Command, Stdio};

use serde::Deserialize;

use crate::measure::{Plan, median, slowest};
use crate::table::{Cell, Unit};

/// Where the script lives: found at run time next to this crate's sources.
const SCRIPT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/python/bench_mp.py");
/// The Celery side's script, and the script that installs Celery.
const CELERY_SCRIPT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/python/bench_celery.py");
const CELERY_SETUP: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/python/setup-celery.sh");
/// The virtual environment `setup-celery.sh` makes by default: `target/bench-venv` at the
/// repository's root (whatever `CARGO_TARGET_DIR` says).
const CELERY_VENV: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../target/bench-venv");

/// The Python interpreter and the script, or why they cannot be used.
#[derive(Debug)]
pub(crate) struct Python {
    found: Result<Found, String>,
}

#[derive(Debug)]
struct Found {
    exe: String,
    version: String,
    script: PathBuf,
}

impl Found {
    /// The script's file name, for messages.
    fn name(&self) -> String {
        self.script
            .file_name()
            .map_or_else(String::new, |n| n.to_string_lossy().into_owned())
    }
}

/// What `bench_mp.py` (or `bench_celery.py`) prints on stdout (one JSON object).
#[derive(Debug, Deserialize)]
struct Output {
    seconds_per_op: Vec<f64>,
}

impl Python {
    /// Finds `$PYTHON` (default `python3`) and the script. When either is missing, says so loudly on
    /// stderr: every Python column will then read `n/a`.
    pub(crate) fn detect() -> Python {
        let found = Self::find();
        if let Err(e) = &found {
            eprintln!("WARNING: ==========================================================");
            eprintln!("WARNING: the Python side cannot run: {e}");
            eprintln!("WARNING: every python column will read n/a; set $PYTHON to fix this");
            eprintln!("WARNING: ==========================================================");
        }
        Python { found }
    }

    /// The interpreter `$PYTHON` names, or `python3`.
    fn interpreter() -> String {
        std::env::var("PYTHON")
            .ok()
            .filter(|p| !p.is_empty())
            .unwrap_or_else(|| "python3".to_string())
    }

    /// The Celery side of group `cluster`: runs `setup-celery.sh` (which makes the virtual
    /// environment from `$PYTHON`, or does nothing when it is there already), then uses its
    /// interpreter with `bench_celery.py`. When that fails, says so loudly on stderr: the group's
    /// python column then reads `n/a`.
    pub(crate) fn celery() -> Python {
        let found = Self::find_celery();
        if let Err(e) = &found {
            eprintln!("WARNING: ==========================================================");
            eprintln!("WARNING: the Celery side cannot run: {e}");
            eprintln!("WARNING: the cluster group's python column will read n/a");
            eprintln!("WARNING: ==========================================================");
        }
        Python { found }
    }

    fn find_celery() -> Result<Found, String> {
        let setup = Command::new("bash")
            .arg(CELERY_SETUP)
            .arg(CELERY_VENV)
            .env("PYTHON", Self::interpreter())
            .stdout(Stdio::null())
            .status()
            .map_err(|e| format!("cannot run {CELERY_SETUP}: {e}"))?;
        if !setup.success() {
            return Err(format!(
                "{CELERY_SETUP} failed ({setup}): Celery could not be installed"
            ));
        }
        let exe = format!("{CELERY_VENV}/bin/python");
        let out = Command::new(&exe)
            .args([
                "-c",
                "import sys, celery; print('Python', sys.version.split()[0] + ',', 'Celery', celery.__version__)",
            ])
            .output()
            .map_err(|e| format!("cannot run {exe:?}: {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "{exe:?} cannot import celery ({}): {}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
        Ok(Found {
            exe,
            version: String::from_utf8_lossy(&out.stdout).trim().to_string(),
            script: PathBuf::from(CELERY_SCRIPT),
        })
    }

    fn find() -> Result<Found, String> {
        let exe = Self::interpreter();
        let script = PathBuf::from(SCRIPT);
        if !script.is_file() {
            return Err(format!("{} not found", script.display()));
        }
        let out = Command::new(&exe)
            .arg("--version")
            .output()
            .map_err(|e| format!("cannot run {exe:?}: {e}"))?;
        if !out.status.success() {
            return Err(format!("{exe:?} --version failed ({})", out.status));
        }
        // Python 3.4+ prints the version on stdout, older ones on stderr.
        let text = if out.stdout.is_empty() {
            out.stderr
        } else {
            out.stdout
        };
        let version = String::from_utf8_lossy(&text).trim().to_string();
        Ok(Found {
            exe,
            version,
            script,
        })
    }

    /// One line for the run's banner.
    pub(crate) fn describe(&self) -> String {
        match &self.found {
            Ok(f) => format!("{} ({})", f.version, f.exe),
            Err(_) => "unavailable".to_string(),
        }
    }

    /// Runs the script (`bench_mp.py`, or `bench_celery.py`) `FIGURE [extra...] --warmup W --samples S --ops N` and returns its median time
    /// per operation in `unit`; `n/a` (with the reason) when Python is missing or the script fails.
    pub(crate) fn measure(&self, figure: &str, extra: &[String], plan: Plan, unit: Unit) -> Cell {
        self.measure_reduced(figure, extra, plan, unit, median)
    }

    /// [`measure`](Self::measure), reduced to the slowest batch (see `Plan::run_slowest`).
    pub(crate) fn measure_slowest(
        &self,
        figure: &str,
        extra: &[String],
        plan: Plan,
        unit: Unit,
    ) -> Cell {
        self.measure_reduced(figure, extra, plan, unit, |s| slowest(s))
    }

    fn measure_reduced(
        &self,
        figure: &str,
        extra: &[String],
        plan: Plan,
        unit: Unit,
        reduce: impl FnOnce(&mut [f64]) -> Option<f64>,
    ) -> Cell {
        let found = match &self.found {
            Ok(f) => f,
            // Already said loudly at start-up.
            Err(_) => return Cell::Unavailable(None),
        };
        let secs = run_script(found, figure, extra, plan).and_then(|mut samples| {
            reduce(&mut samples)
                .ok_or_else(|| format!("{} {figure}: no samples in its output", found.name()))
        });
        match secs {
            Ok(secs) => Cell::Value(unit.of_secs_per_op(secs)),
            Err(e) => Cell::Unavailable(Some(e)),
        }
    }
}

/// Runs the script; gives its samples (seconds per operation of each timed batch).
fn run_script(
    found: &Found,
    figure: &str,
    extra: &[String],
    plan: Plan,
) -> Result<Vec<f64>, String> {
    let mut cmd = Command::new(&found.exe);
    cmd.arg(&found.script)
        .arg(figure)
        .args(extra)
        .args(plan.python_args());
    let out = cmd
        .output()
        .map_err(|e| format!("cannot run {:?}: {e}", found.exe))?;
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr);
        let tail: Vec<&str> = stderr.lines().rev().take(3).collect();
        let tail: Vec<&str> = tail.into_iter().rev().collect();
        return Err(format!(
            "{} {figure} failed ({}): {}",
            found.name(),
            out.status,
            tail.join(" | ")
        ));
    }
    let stdout = String::from_utf8_lossy(&out.stdout);
    let last = stdout
        .lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .unwrap_or("");
    let parsed: Output = serde_json::from_str(last)
        .map_err(|e| format!("{} {figure}: unreadable output {last:?}: {e}", found.name()))?;
    Ok(parsed.seconds_per_op)
}
