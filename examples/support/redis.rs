//! A private redis-server for the examples and the tour: a free loopback port, a temporary
//! directory, append-only persistence; stopped and removed when dropped.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub(crate) struct RedisServer {
    pub(crate) url: String,
    dir: PathBuf,
    child: Child,
}

impl RedisServer {
    /// Starts one, or says why it could not (no `redis-server` on this machine, most often).
    pub(crate) fn start() -> Result<RedisServer, String> {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map_err(|e| e.to_string())?
            .port();
        let dir =
            std::env::temp_dir().join(format!("mp-example-redis-{}-{port}", std::process::id()));
        std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
        let child = Command::new("redis-server")
            .args(["--bind", "127.0.0.1", "--port", &port.to_string(), "--save", ""])
            .args(["--appendonly", "yes", "--appendfsync", "everysec", "--dir"])
            .arg(&dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| {
                let _ = std::fs::remove_dir_all(&dir);
                format!("cannot start redis-server ({e}): install it (Debian: apt-get install redis-server)")
            })?;
        let server = RedisServer {
            url: format!("redis://127.0.0.1:{port}"),
            dir,
            child,
        };
        let end = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            if Instant::now() > end {
                return Err("redis-server did not come up".into());
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        Ok(server)
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Set for the workers started here: such a process is a worker, and must never run `main`
/// (see [`refuse_main_in_a_worker`]).
const NOT_MAIN: &str = "MP_EXAMPLE_WORKER";

/// Ends a process started as a worker that reached `main` (worker mode not built in), before it
/// starts workers of its own.
pub(crate) fn refuse_main_in_a_worker() {
    if std::env::var_os(NOT_MAIN).is_some() {
        eprintln!("started as a worker, but this build has no worker mode (feature worker-env)");
        std::process::exit(3);
    }
}

/// Worker processes: this program started in worker mode. Killed when dropped.
pub(crate) struct LocalWorkers(pub(crate) Vec<Child>);

impl LocalWorkers {
    pub(crate) fn start(
        url: &str,
        pool: &str,
        key: &str,
        n: usize,
        processes: usize,
    ) -> std::io::Result<LocalWorkers> {
        let mut v = Vec::new();
        for _ in 0..n {
            v.push(
                Command::new(std::env::current_exe()?)
                    .env(multiprocess::cluster::ENV_WORKER, pool)
                    .env(multiprocess::cluster::ENV_BROKER, url)
                    .env(multiprocess::cluster::ENV_AUTHKEY, key)
                    .env(multiprocess::cluster::ENV_PROCESSES, processes.to_string())
                    .env(multiprocess::cluster::ENV_LEASE_MS, "1000")
                    // Tied to this program: they end when it does, however it ends.
                    .env(multiprocess::cluster::ENV_EXIT_ON_EOF, "1")
                    .env(NOT_MAIN, "1")
                    .stdin(Stdio::piped())
                    .spawn()?,
            );
        }
        Ok(LocalWorkers(v))
    }

    /// Waits until `n` workers of `pool` are alive.
    pub(crate) fn wait_live(url: &str, pool: &str, n: usize) -> Result<(), String> {
        let end = Instant::now() + Duration::from_secs(30);
        loop {
            let s = multiprocess::cluster::status(url, pool).map_err(|e| e.to_string())?;
            if s.workers.iter().filter(|w| w.alive).count() >= n {
                return Ok(());
            }
            if Instant::now() > end {
                return Err(format!("{n} workers did not come up"));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for LocalWorkers {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}
