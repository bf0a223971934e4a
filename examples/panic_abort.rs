//! A child that panics, in a program built with `panic = "abort"`.
//!
//! With unwinding, the child catches its function's panic and reports it. A program built with
//! `panic = "abort"` cannot catch anything: the process aborts right after the panic hook runs. The
//! crate's hook in the child reports the panic first, so `join` still gives
//! `ProcessError::Panicked` with the message, under every start method (and exit code 1, as for a
//! panic under unwinding), instead of `Signaled { signal: 6 }`.
//!
//! Run with `cargo run --profile panic-abort --example panic_abort` (the profile is in the
//! workspace's `Cargo.toml`); `tests/panic_abort.rs` builds and runs it so.

use multiprocess::{JoinTimeoutError, Process, ProcessError, StartMethod};

fn boom(method: StartMethod) {
    panic!("boom under {method}");
}

fn main() {
    println!(
        "panic strategy: {}",
        if cfg!(panic = "abort") {
            "abort"
        } else {
            "unwind"
        }
    );
    let mut all_good = true;
    for m in StartMethod::ALL {
        let p = Process::builder()
            .start_method(m)
            .spawn(boom, m)
            .expect("spawn");
        let outcome = p.join_timeout(std::time::Duration::from_secs(60));
        let good = matches!(&outcome, Err(JoinTimeoutError::Failed(ProcessError::Panicked { message })) if *message == format!("boom under {m}"))
            && p.exitcode() == Some(1);
        all_good &= good;
        println!("{m}: {outcome:?}, exitcode {:?}", p.exitcode());
    }
    std::process::exit(if all_good { 0 } else { 1 });
}
