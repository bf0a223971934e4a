//! A standalone manager server and clients in separate processes that are not its children.
//!
//! The server listens on TCP loopback with a key (mandatory over TCP); three client processes,
//! started with `spawn` so that each is a fresh program, connect by address and key, look up a
//! named list and dict, and add to them. The dict's total is incremented in a version-checked
//! transaction, retried on a conflict, so no increment is lost whatever the interleaving.
//!
//! Run with `cargo run --example manager_server`.

use multiprocess::manager::{Manager, ManagerError, RemoteError, Server};
use multiprocess::{Address, Listener, Process, StartMethod};

fn client(args: (Address, Vec<u8>, u32)) -> usize {
    let (address, key, me) = args;
    let m = Manager::connect(&address, &key).expect("connect");
    let log = m.named_list::<String>("log").expect("the log");
    let hits = m.named_dict::<String, u64>("hits").expect("the hits");
    for i in 0..100 {
        log.append(&format!("client {me}, entry {i}"))
            .expect("append");
        // Count it: read the total with its version, and write total + 1 only if nobody changed
        // the dict since; if somebody did, read again.
        loop {
            let (version, items) = hits.snapshot().expect("snapshot");
            let now = items.first().map_or(0, |(_, n)| *n);
            let mut tx = m.batch();
            tx.expect(&hits, version);
            tx.dict_set(&hits, &"total".into(), &(now + 1))
                .expect("encode");
            match tx.commit() {
                Ok(()) => break,
                Err(ManagerError::Remote(RemoteError::Conflict { .. })) => continue,
                Err(e) => panic!("{e}"),
            }
        }
    }
    log.len().expect("len")
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    multiprocess::init()?;
    let key = b"example key".to_vec();
    let listener = Listener::builder("127.0.0.1:0").authkey(&key).bind()?;
    let address = listener.address().clone();
    let server = Server::new(listener)?;
    let stop = server.stopper();
    let serving = std::thread::spawn(move || server.serve());
    println!("serving at {address}");

    let clients: Vec<_> = (0..3)
        .map(|me| {
            Process::builder()
                .start_method(StartMethod::Spawn)
                .spawn(client, (address.clone(), key.clone(), me))
        })
        .collect::<Result<_, _>>()?;
    for c in clients {
        println!("a client saw {} log entries at its end", c.join()?);
    }
    let m = Manager::connect(&address, &key)?;
    let total = m.named_dict::<String, u64>("hits")?.get(&"total".into())?;
    println!(
        "total: {total:?}; log: {} entries",
        m.named_list::<String>("log")?.len()?
    );
    assert_eq!(total, Some(300));
    for o in m.status()?.objects {
        println!(
            "  object {} {:?} {:?}: {} entries, version {}",
            o.id, o.kind, o.name, o.len, o.version
        );
    }
    drop(m);
    stop.stop();
    serving.join().expect("the server thread")?;
    Ok(())
}
