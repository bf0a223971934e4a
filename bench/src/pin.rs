//! Pinning the two processes of a two-process figure (groups `pipe` and `sync`) to two CPUs.

use crate::raw;

/// Where the two processes of a figure run: the child on one CPU, the parent on another.
///
/// Every figure then measures the cross-CPU hand-off that DESIGN.md's figures are about, rather than
/// wherever the scheduler happened to put the two processes: a round trip between two processes that
/// share a CPU is several times faster than across CPUs, and which one a run gets varies from run to
/// run. The Python side is pinned the same way (`--cpus`).
#[derive(Debug)]
pub(crate) struct Pinning {
    /// (the parent's CPU, the child's CPU), when there are two CPUs to use.
    cpus: Option<(usize, usize)>,
    /// The affinity to restore when the group ends.
    original: Vec<usize>,
}

impl Pinning {
    /// No pinning: the scheduler places both processes (group `load`, where every CPU is busy).
    pub(crate) fn none() -> Pinning {
        Pinning {
            cpus: None,
            original: Vec::new(),
        }
    }

    /// Pins this process to its CPU now; `group` names the figures in messages.
    pub(crate) fn new(group: &str) -> Pinning {
        let original = match raw::allowed_cpus() {
            Ok(cpus) => cpus,
            Err(e) => {
                eprintln!(
                    "warning: cannot read the CPU affinity ({e}): {group} figures are not pinned"
                );
                return Pinning {
                    cpus: None,
                    original: Vec::new(),
                };
            }
        };
        let cpus = match original[..] {
            [parent, child, ..] => match raw::set_allowed_cpus(&[parent]) {
                Ok(()) => Some((parent, child)),
                Err(e) => {
                    eprintln!(
                        "warning: cannot pin to CPU {parent} ({e}): {group} figures are not pinned"
                    );
                    None
                }
            },
            _ => {
                eprintln!("note: a single CPU: {group} figures measure same-CPU hand-offs");
                None
            }
        };
        Pinning { cpus, original }
    }

    /// Runs `start`, which forks the child, with this process on the child's CPU (the child inherits
    /// it), then moves this process back to the parent's CPU.
    pub(crate) fn start<T>(&self, start: impl FnOnce() -> T) -> T {
        let Some((parent, child)) = self.cpus else {
            return start();
        };
        // Pinning to these CPUs worked in `new`; should it fail now, the figure is merely unpinned.
        let _ = raw::set_allowed_cpus(&[child]);
        let started = start();
        let _ = raw::set_allowed_cpus(&[parent]);
        started
    }

    /// `--cpus PARENT,CHILD` for `bench_mp.py`, followed by `extra`.
    pub(crate) fn python_args(&self, extra: &[String]) -> Vec<String> {
        let mut args = extra.to_vec();
        if let Some((parent, child)) = self.cpus {
            args.extend(["--cpus".to_string(), format!("{parent},{child}")]);
        }
        args
    }
}

impl Drop for Pinning {
    fn drop(&mut self) {
        if self.cpus.is_some() {
            let _ = raw::set_allowed_cpus(&self.original);
        }
    }
}
