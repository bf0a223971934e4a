//! `multiprocess-bench`: measures `multiprocess` and Python's `multiprocessing` on the same shapes in
//! one run, and prints one tab-separated line per figure:
//!
//! ```text
//! figure<TAB>multiprocess<TAB>python<TAB>unit<TAB>speedup
//! ```
//!
//! `speedup > 1` means `multiprocess` did better (less time, or more throughput). Raw OS baselines have
//! no Python counterpart and print `-` there; ratio rows (`x`) compare a figure with its raw baseline.
//! Progress, problems and the check of each figure against its DESIGN.md target go to stderr, so stdout
//! stays a clean table.
//!
//! Usage: `cargo run --release -p multiprocess-bench -- [--quick] [GROUP...]` with groups `process`,
//! `pipe`, `codec`, `sync`, `queue`, `pool`, `socket`, `manager`, `load` and `cluster` (all of them when
//! none is named). See `bench/README.md`.

mod cluster;
mod codec;
mod load;
mod manager;
mod measure;
mod pin;
mod pipe;
mod pool;
mod process;
mod python;
mod queue;
mod raw;
mod socket;
mod sync;
mod table;

use std::process::ExitCode;
use std::time::Instant;

use python::Python;
use table::Table;

/// The groups, in the order they run when none is named.
const GROUPS: [&str; 10] = [
    "process", "pipe", "codec", "sync", "queue", "pool", "socket", "manager", "load", "cluster",
];

/// What every group needs: the run's mode and the Python side.
#[derive(Debug)]
pub(crate) struct Ctx {
    /// `--quick`: fewer samples, the whole run in a minute or two (`cluster` about half a minute).
    pub(crate) quick: bool,
    /// The Python interpreter and script, or the reason there is none.
    pub(crate) python: Python,
}

impl Ctx {
    /// `quick` in quick mode, `full` otherwise.
    pub(crate) fn pick(&self, quick: usize, full: usize) -> usize {
        if self.quick { quick } else { full }
    }
}

const USAGE: &str = "\
usage: multiprocess-bench [--quick] [GROUP...]

Measures multiprocess against Python's multiprocessing and prints
figure<TAB>multiprocess<TAB>python<TAB>unit<TAB>speedup   (speedup > 1: multiprocess is better)

groups: process, pipe, codec, sync, queue, pool, socket, manager, load, cluster
        (default: all; cluster starts its own redis-server and installs Celery
        into target/bench-venv with python/setup-celery.sh)
options:
  --quick     fewer samples (the whole run takes a minute or two)
  -h, --help  this text
environment:
  PYTHON      the Python interpreter to compare with (default: python3)";

/// The parsed command line.
#[derive(Debug)]
struct Args {
    quick: bool,
    groups: Vec<&'static str>,
}

fn parse_args(args: impl Iterator<Item = String>) -> Result<Option<Args>, String> {
    let mut quick = false;
    let mut groups = Vec::new();
    for arg in args {
        match arg.as_str() {
            "--quick" | "-q" => quick = true,
            "--help" | "-h" => return Ok(None),
            // `cargo bench` passes `--bench`; it means nothing here.
            "--bench" => {}
            a if a.starts_with('-') => return Err(format!("unknown option {a:?}")),
            a => match GROUPS.iter().find(|g| **g == a) {
                Some(g) if !groups.contains(g) => groups.push(*g),
                Some(_) => {}
                None => {
                    return Err(format!(
                        "unknown group {a:?} (expected one of: {})",
                        GROUPS.join(", ")
                    ));
                }
            },
        }
    }
    if groups.is_empty() {
        groups = GROUPS.to_vec();
    }
    Ok(Some(Args { quick, groups }))
}

fn main() -> ExitCode {
    let args = match parse_args(std::env::args().skip(1)) {
        Ok(Some(args)) => args,
        Ok(None) => {
            println!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            eprintln!("multiprocess-bench: {e}\n\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    let started = Instant::now();
    let ctx = Ctx {
        quick: args.quick,
        python: Python::detect(),
    };
    eprintln!(
        "multiprocess-bench: {} mode, groups: {}; python: {}",
        if ctx.quick { "quick" } else { "full" },
        args.groups.join(" "),
        ctx.python.describe(),
    );
    let mut table = Table::new();
    for group in &args.groups {
        eprintln!("-- group {group}");
        match *group {
            "process" => process::run(&ctx, &mut table),
            "pipe" => pipe::run(&ctx, &mut table),
            "codec" => codec::run(&ctx, &mut table),
            "sync" => sync::run(&ctx, &mut table),
            "queue" => queue::run(&ctx, &mut table),
            "pool" => pool::run(&ctx, &mut table),
            "socket" => socket::run(&ctx, &mut table),
            "manager" => manager::run(&ctx, &mut table),
            "load" => load::run(&ctx, &mut table),
            "cluster" => cluster::run(&ctx, &mut table),
            _ => unreachable!("parse_args accepts only the names in GROUPS"),
        }
    }
    table.report_targets();
    eprintln!(
        "multiprocess-bench: done in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    if table.had_errors() {
        eprintln!("multiprocess-bench: some figures failed; see the messages above");
        return ExitCode::FAILURE;
    }
    ExitCode::SUCCESS
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Option<Args>, String> {
        parse_args(args.iter().map(|s| s.to_string()))
    }

    #[test]
    fn no_group_means_all() {
        let a = parse(&["--quick"]).unwrap().unwrap();
        assert!(a.quick);
        assert_eq!(a.groups, GROUPS);
    }

    #[test]
    fn groups_keep_their_order_once() {
        let a = parse(&["codec", "pipe", "codec"]).unwrap().unwrap();
        assert!(!a.quick);
        assert_eq!(a.groups, ["codec", "pipe"]);
    }

    #[test]
    fn unknown_names_are_errors() {
        assert!(parse(&["managers"]).unwrap_err().contains("unknown group"));
        assert!(parse(&["--fast"]).unwrap_err().contains("unknown option"));
        assert!(parse(&["-h"]).unwrap().is_none());
    }
}
