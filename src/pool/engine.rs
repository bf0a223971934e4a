//! Where a pool's tasks run: the seam between the pool's front (batches, feeds, `imap`'s window,
//! the result handles) and a transport.
//!
//! The front cuts every call into tasks, a `Chunk` each with its runner, and waits on a `Batch`
//! for the pieces that come back. It asks an engine for exactly six things: take these tasks,
//! cancel this one, cancel those not started, close, terminate, and wait after closing. The local
//! engine (`inner::Shared`) hands tasks to worker processes of this machine through queues; the
//! cluster engine (feature `cluster`) puts them on a broker's stream for workers anywhere. Both
//! deliver `Piece`s, so every method of `Pool` and of its handles works unchanged on both.

use super::inner::{Batch, Phase, Shared};
use super::worker::Chunk;
use super::{PoolError, stop_threads};
use crate::sys::entry::Func;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

pub(crate) enum Engine {
    /// Worker processes of this machine.
    Local(Arc<Shared>),
    /// Workers on a broker (feature `cluster`).
    #[cfg(feature = "cluster")]
    Cluster(Arc<crate::cluster::Caller>),
}

impl Engine {
    pub(crate) fn processes(&self) -> usize {
        match self {
            Engine::Local(s) => s.config.processes,
            #[cfg(feature = "cluster")]
            Engine::Cluster(c) => c.processes(),
        }
    }

    /// `imap`'s default window, in tasks: four per worker here; on a broker, thirty-two per
    /// worker process, twice what a worker holds of quick tasks (sixteen per process), so that
    /// the stream keeps a backlog and a worker with room takes many tasks in one read.
    pub(crate) fn default_in_flight(&self) -> usize {
        match self {
            Engine::Local(s) => 4 * s.config.processes,
            #[cfg(feature = "cluster")]
            Engine::Cluster(c) => c.processes().saturating_mul(32),
        }
    }

    /// Whether tasks leave this machine (through a broker): their arguments must not carry keys.
    pub(crate) fn leaves_machine(&self) -> bool {
        match self {
            Engine::Local(_) => false,
            #[cfg(feature = "cluster")]
            Engine::Cluster(_) => true,
        }
    }

    pub(crate) fn pids(&self) -> Vec<i32> {
        match self {
            Engine::Local(s) => s.pids(),
            #[cfg(feature = "cluster")]
            Engine::Cluster(_) => Vec::new(),
        }
    }

    pub(crate) fn submit(&self, batch: &Arc<Batch>, indices: Vec<u64>, runner: Func, chunk: Chunk) {
        self.submit_many(batch, &runner, vec![(indices, chunk)]);
    }

    pub(crate) fn submit_many(
        &self,
        batch: &Arc<Batch>,
        runner: &Func,
        tasks: Vec<(Vec<u64>, Chunk)>,
    ) {
        match self {
            Engine::Local(s) => s.submit_many(batch, runner, tasks),
            #[cfg(feature = "cluster")]
            Engine::Cluster(c) => c.submit_many(batch, runner, tasks),
        }
    }

    pub(crate) fn cancel(&self, task: u64) -> bool {
        match self {
            Engine::Local(s) => s.cancel(task),
            #[cfg(feature = "cluster")]
            Engine::Cluster(c) => c.cancel(task),
        }
    }

    pub(crate) fn cancel_pending(&self, tasks: &[u64]) {
        match self {
            Engine::Local(s) => s.cancel_pending(tasks),
            #[cfg(feature = "cluster")]
            Engine::Cluster(c) => {
                for &t in tasks {
                    c.cancel(t);
                }
            }
        }
    }

    pub(crate) fn close(&self) {
        match self {
            Engine::Local(s) => s.close(),
            #[cfg(feature = "cluster")]
            Engine::Cluster(c) => c.close(),
        }
    }

    pub(crate) fn terminate(&self) {
        match self {
            Engine::Local(s) => s.terminate(),
            #[cfg(feature = "cluster")]
            Engine::Cluster(c) => c.terminate(),
        }
    }

    pub(crate) fn phase(&self) -> Phase {
        match self {
            Engine::Local(s) => s.lock().phase,
            #[cfg(feature = "cluster")]
            Engine::Cluster(c) => c.phase(),
        }
    }

    pub(crate) fn terminated(&self) -> bool {
        self.phase() == Phase::Terminated
    }

    /// Waits, after `close` or `terminate`, until the work is done (locally: every worker has
    /// left).
    pub(crate) fn join(&self) -> Result<(), PoolError> {
        match self {
            Engine::Local(shared) => {
                let mut st = shared.lock();
                if st.phase == Phase::Running {
                    return Err(PoolError::StillRunning);
                }
                while !Shared::all_ended(&st) {
                    st = shared
                        .changed
                        .wait_timeout(st, Duration::from_millis(50))
                        .unwrap_or_else(|p| p.into_inner())
                        .0;
                }
                Ok(())
            }
            #[cfg(feature = "cluster")]
            Engine::Cluster(c) => c.join(),
        }
    }

    /// Stops the engine's threads (after `terminate`).
    pub(crate) fn stop(&self, threads: Vec<JoinHandle<()>>) {
        match self {
            Engine::Local(s) => stop_threads(s, threads),
            #[cfg(feature = "cluster")]
            Engine::Cluster(c) => c.stop(),
        }
    }
}
