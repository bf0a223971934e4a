//! Fuzzes the authentication handshake with what a hostile client sends.
//!
//! Two layers. The pure functions (`split_digest`, `answer`, `check`) take the input as a challenge
//! and as a response: none may panic, and a response made without the key is never accepted. Then
//! the input goes raw down a socket to a keyed `Listener`, as a client's whole side of the
//! conversation: `accept` must end in an error (the key is not in the input, and the challenge is
//! random), never a panic, a hang, or an allocation the frames announce.

#![no_main]

use libfuzzer_sys::fuzz_target;
use multiprocess::auth::{AuthPolicy, Digest, answer, check, split_digest};
use multiprocess::{Address, Listener};
use std::io::Write;
use std::os::linux::net::SocketAddrExt;
use std::sync::OnceLock;
use std::time::Duration;

const KEY: &[u8] = b"the fuzzer does not know this key";

fn listener() -> &'static Listener {
    static L: OnceLock<Listener> = OnceLock::new();
    L.get_or_init(|| {
        let name = format!("@mp-fuzz-handshake-{}", std::process::id());
        Listener::builder(name.as_str())
            .authkey(KEY)
            .handshake_timeout(Duration::from_millis(200))
            .bind()
            .expect("listener")
    })
}

fuzz_target!(|data: &[u8]| {
    let data = &data[..data.len().min(4096)];
    let policy = AuthPolicy {
        legacy: data.first().is_none_or(|b| b & 1 == 0),
        digest: Digest::Sha256,
    };
    let _ = split_digest(data);
    let _ = answer(KEY, data, &policy);
    let message = b"{sha256}0123456789012345678901234567890123456789";
    assert!(
        check(KEY, message, data, &policy).is_err(),
        "a response forged without the key"
    );
    // The whole client side, raw, to a keyed listener.
    let l = listener();
    let Address::Abstract(name) = l.address().clone() else {
        unreachable!()
    };
    let addr = std::os::unix::net::SocketAddr::from_abstract_name(&name).expect("name");
    let mut peer = std::os::unix::net::UnixStream::connect_addr(&addr).expect("connect");
    let bytes = data.to_vec();
    let writer = std::thread::spawn(move || {
        let _ = peer.write_all(&bytes);
        let _ = peer.shutdown(std::net::Shutdown::Write);
        // Keep reading the listener's frames until it hangs up, so that it never blocks sending.
        let _ = std::io::copy(&mut peer, &mut std::io::sink());
    });
    let r = l.accept_timeout(Duration::from_secs(5));
    assert!(r.is_err(), "accepted a client that does not know the key");
    writer.join().expect("writer");
});
