//! Real Redis servers for the broker tests: the shared one that `.ci/with-redis` (the README's test
//! command) starts and names in `MP_REDIS_URL`, and private ones that a test may kill with SIGKILL
//! and restart, with or without their data, without disturbing the tests running beside it.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// The shared server's URL. Fails loudly without one: these tests must not pass by skipping.
pub fn shared_url() -> String {
    std::env::var("MP_REDIS_URL").unwrap_or_else(|_| {
        panic!(
            "MP_REDIS_URL is not set: run the tests through `.ci/with-redis` (the README's test \
             command), which starts a Redis server for them"
        )
    })
}

/// A connection to `url`, or a panic that says why.
pub fn connect(url: &str) -> redis::Connection {
    redis::Client::open(url)
        .and_then(|c| c.get_connection_with_timeout(Duration::from_secs(5)))
        .unwrap_or_else(|e| panic!("no Redis at {url}: {e}"))
}

/// A private redis-server of this test: a child process on a free loopback port with its own
/// directory and append-only persistence; killed and its directory removed when dropped.
pub struct RedisServer {
    port: u16,
    dir: PathBuf,
    fsync: &'static str,
    /// Another address to listen on besides 127.0.0.1 (a veth's, for a network namespace).
    also: Option<String>,
    child: Option<Child>,
}

impl RedisServer {
    /// Starts one; `fsync` is its `appendfsync` (`always` makes what a test wrote survive a
    /// SIGKILL, `everysec` may lose the last second, as in production).
    pub fn start(tag: &str, fsync: &'static str) -> RedisServer {
        Self::start_on(tag, fsync, None)
    }

    /// [`start`](Self::start), listening on `also` too.
    pub fn start_on(tag: &str, fsync: &'static str, also: Option<&str>) -> RedisServer {
        let dir = std::env::temp_dir().join(format!("mp-redis-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .unwrap()
            .port();
        let mut s = RedisServer {
            port,
            dir,
            fsync,
            also: also.map(str::to_string),
            child: None,
        };
        s.spawn();
        s
    }

    fn spawn(&mut self) {
        // Protected mode refuses clients from other addresses without a password: off for the
        // namespace's veth address (the server listens on nothing else but loopback).
        let (bind, protected) = match &self.also {
            Some(a) => (format!("127.0.0.1 {a}"), "no"),
            None => ("127.0.0.1".into(), "yes"),
        };
        let child = Command::new("redis-server")
            .args(["--bind", &bind, "--protected-mode", protected])
            .args(["--port", &self.port.to_string()])
            .arg("--dir")
            .arg(&self.dir)
            .args([
                "--appendonly",
                "yes",
                "--appendfsync",
                self.fsync,
                "--save",
                "",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!("redis-server did not start ({e}): run through .ci/with-redis")
            });
        self.child = Some(child);
        let url = self.url();
        let up = super::eventually(|| {
            redis::Client::open(url.as_str())
                .and_then(|c| c.get_connection_with_timeout(Duration::from_millis(200)))
                .and_then(|mut c| redis::cmd("PING").query::<String>(&mut c))
                .is_ok()
        });
        assert!(up, "the private redis-server did not answer at {url}");
    }

    /// Its port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Its URL.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    /// Kills it with SIGKILL (nothing flushed on the way out) and reaps it.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts it again on the same port: with what its append-only file holds, or, without its
    /// data, empty (as a broker whose disk was lost).
    pub fn restart(&mut self, keep_data: bool) {
        self.kill9();
        if !keep_data {
            let _ = std::fs::remove_dir_all(&self.dir);
            std::fs::create_dir_all(&self.dir).unwrap();
        }
        self.spawn();
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill9();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
