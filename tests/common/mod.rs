//! Shared helpers for the integration tests: bounded joins and process inspection.
#![allow(dead_code, unreachable_pub)]

pub mod redis;

use multiprocess::{JoinTimeoutError, Process, ProcessError, SharedMemory, StartMethod};
use serde::Serialize;
use serde::de::DeserializeOwned;
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// Every test that starts processes gives them this long at most.
pub const DEADLINE: Duration = Duration::from_secs(60);

/// Joins `p` within [`DEADLINE`]; on timeout kills it, reaps it, and fails the test.
pub fn join<R: DeserializeOwned>(p: Process<R>) -> Result<R, ProcessError> {
    match p.join_timeout(DEADLINE) {
        Ok(r) => Ok(r),
        Err(JoinTimeoutError::Timeout) => {
            let _ = p.kill();
            let _ = p.join_timeout(Duration::from_secs(10));
            panic!("child {} did not finish within {DEADLINE:?}", p.pid());
        }
        Err(JoinTimeoutError::Failed(e)) => Err(e),
    }
}

/// Starts `f(arg)` under `method`, as a daemon: if a test fails while some of its children are still
/// blocked, the test binary terminates them at exit instead of waiting for them forever.
pub fn start<A, R>(method: StartMethod, f: fn(A) -> R, arg: A) -> Process<R>
where
    A: Serialize + DeserializeOwned,
    R: Serialize + DeserializeOwned,
{
    Process::builder()
        .daemon(true)
        .start_method(method)
        .spawn(f, arg)
        .expect("spawn")
}

/// Whether `pid` names a live (not zombie) process.
pub fn pid_alive(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => {
            let state = stat
                .rsplit(')')
                .next()
                .and_then(|s| s.split_whitespace().next());
            !matches!(state, Some("Z") | Some("X"))
        }
        Err(_) => false,
    }
}

/// Waits up to [`DEADLINE`] for `cond`.
pub fn eventually(mut cond: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + DEADLINE;
    while Instant::now() < end {
        if cond() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    false
}

/// The little-endian `u64` at byte `at` of `shm`.
pub fn read_u64(shm: &SharedMemory, at: usize) -> u64 {
    let mut b = [0u8; 8];
    shm.read(at, &mut b).unwrap();
    u64::from_le_bytes(b)
}

/// Stores `v` little-endian at byte `at` of `shm`.
pub fn write_u64(shm: &SharedMemory, at: usize, v: u64) {
    shm.write(at, &v.to_le_bytes()).unwrap();
}

/// This process's children, as `/proc` lists them (zombies included).
pub fn children_of_self() -> Vec<(i32, String)> {
    let me = std::process::id().to_string();
    std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| {
            let pid: i32 = e.ok()?.file_name().to_str()?.parse().ok()?;
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
            let mut fields = stat.rsplit(')').next()?.split_whitespace();
            let state = fields.next()?.to_string();
            (fields.next()? == me).then_some((pid, state))
        })
        .collect()
}

/// The pid of this process's fork server, if one runs.
///
/// Its initial environment says so, but so does that of every child it forked (they are children
/// of this process too, and keep the server's environment block), and pids wrap (32768 on CI), so a
/// child may well come before its server in `/proc`. The server is the one that ignores SIGINT and
/// SIGTERM (a booted child takes this process's dispositions); a child forked a moment ago may not
/// have dropped them yet, but it started after its server, so the earliest started is taken.
pub fn forkserver_pid() -> Option<i32> {
    const INT_AND_TERM: u64 = 1 << (2 - 1) | 1 << (15 - 1);
    children_of_self()
        .into_iter()
        .filter_map(|(pid, state)| {
            let env = std::fs::read(format!("/proc/{pid}/environ")).ok()?;
            let marked = env
                .split(|&b| b == 0)
                .any(|kv| kv.starts_with(b"MULTIPROCESS_FORKSERVER="));
            let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
            let ignored = status
                .lines()
                .find_map(|l| l.strip_prefix("SigIgn:"))
                .and_then(|hex| u64::from_str_radix(hex.trim(), 16).ok())?;
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
            // Field 22, the start time, is the 20th after the command name.
            let started: u64 = stat
                .rsplit(')')
                .next()?
                .split_whitespace()
                .nth(19)?
                .parse()
                .ok()?;
            (marked && state != "Z" && ignored & INT_AND_TERM == INT_AND_TERM)
                .then_some((started, pid))
        })
        .min()
        .map(|(_, pid)| pid)
}

/// The highest descriptor number open in this process.
pub fn highest_open_fd() -> u64 {
    std::fs::read_dir("/proc/self/fd")
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u64>().ok())
        .max()
        .unwrap()
}

/// pyenv's interpreter for Python 3.`minor`.
pub fn python(minor: u32) -> PathBuf {
    let root = std::env::var_os("PYENV_ROOT")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".pyenv")))
        .expect("PYENV_ROOT or HOME");
    let versions = root.join("versions");
    let prefix = format!("3.{minor}.");
    let mut found: Vec<PathBuf> = std::fs::read_dir(&versions)
        .unwrap_or_else(|e| panic!("no pyenv versions at {}: {e}", versions.display()))
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().starts_with(&prefix))
        .map(|e| e.path().join("bin").join(format!("python3.{minor}")))
        .filter(|p| p.exists())
        .collect();
    found.sort();
    found.pop().unwrap_or_else(|| {
        panic!(
            "this test needs Python 3.{minor} from pyenv under {} (install it: pyenv install 3.{minor})",
            versions.display()
        )
    })
}
