//! A Python producer and a Rust consumer sharing a dict and a queue through the Rust manager
//! server (`multiprocess::manager::python`): the Python side is an unchanged
//! `multiprocessing.managers` client.
//!
//! Run with `cargo run --example python_manager` (`PYTHON=/path/to/python3.12` to pick the
//! interpreter).

use multiprocess::Listener;
use multiprocess::manager::python::{PythonManager, PythonServer};
use std::process::Command;
use std::time::Duration;

/// Attaches to the consumer's dict and queue by their ids, and fills them.
const PRODUCER: &str = r#"
import sys
from multiprocessing.managers import SyncManager, Token, DictProxy, AutoProxy
m = SyncManager(address=sys.argv[1], authkey=b'shared secret'); m.connect()
status = DictProxy(Token('dict', m.address, sys.argv[2]), 'pickle', manager=m, authkey=m._authkey)
jobs = AutoProxy(Token('Queue', m.address, sys.argv[3]), 'pickle', manager=m, authkey=m._authkey)
for word in ['alpha', 'beta', 'gamma', 'delta']:
    jobs.put(word)
status['producer'] = 'python %d.%d' % sys.version_info[:2]
jobs.put(None)  # the end
"#;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dir = std::env::temp_dir().join(format!("python-manager-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let path = dir.join("manager.sock");
    let server = PythonServer::new(Listener::builder(&path).authkey(b"shared secret").bind()?)?;
    let stopper = server.stopper();
    let serving = std::thread::spawn(move || server.serve());

    let m = PythonManager::connect(path.as_path(), b"shared secret")?;
    let status = m.dict::<String, String>()?;
    let jobs = m.queue::<Option<String>>()?;
    let python = std::env::var("PYTHON").unwrap_or_else(|_| "python3".into());
    let mut producer = Command::new(&python)
        .args(["-c", PRODUCER])
        .arg(&path)
        .args([status.id(), jobs.id()])
        .spawn()
        .map_err(|e| format!("could not start {python}: {e}"))?;
    while let Some(word) = jobs.get_timeout(Duration::from_secs(30))? {
        println!("rust consumer got {word:?}: {} letters", word.len());
    }
    producer.wait()?;
    println!(
        "the producer was {}",
        status.get(&"producer".into())?.unwrap_or_default()
    );
    drop((status, jobs, m));
    stopper.stop();
    serving.join().expect("the server thread")?;
    std::fs::remove_dir_all(&dir)?;
    Ok(())
}
