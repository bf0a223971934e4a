//! A child's panic is printed by its parent, where the test harness captures it like the test's own
//! output, under every start method (and not by the child, straight to the terminal).
#![cfg(not(miri))]

mod common;

use common::{join, start};
use multiprocess::{ProcessError, StartMethod};
use std::process::Command;

fn panics(message: String) {
    panic!("{message}");
}

fn drops_a_panicked_child(m: StartMethod) {
    let p = start(m, panics, format!("dropped-{m}"));
    // Wait for the end without joining, then let the handle go.
    assert!(common::eventually(|| !p.is_alive()));
    drop(p);
}

#[test]
#[ignore = "run by a_childs_panic_is_captured_by_the_test_harness, which checks its output"]
fn helper_children_panic_then_this_test_fails() {
    for m in StartMethod::ALL {
        let r = join(start(m, panics, format!("joined-{m}")));
        assert!(matches!(r, Err(ProcessError::Panicked { .. })), "{r:?}");
        drops_a_panicked_child(m);
    }
    panic!("failing on purpose, so that the harness prints what it captured");
}

#[test]
fn a_childs_panic_is_captured_by_the_test_harness() {
    let out = Command::new(std::env::current_exe().unwrap())
        .args([
            "--ignored",
            "--exact",
            "helper_children_panic_then_this_test_fails",
            "--test-threads=1",
        ])
        .output()
        .unwrap();
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(!out.status.success(), "the helper fails on purpose");
    let captured = stdout
        .split("---- helper_children_panic_then_this_test_fails stdout ----")
        .nth(1)
        .unwrap_or_else(|| panic!("no captured section in:\n{stdout}"));
    for m in StartMethod::ALL {
        for what in ["joined", "dropped"] {
            let needle = format!("{what}-{m}");
            assert!(
                captured.contains(&needle)
                    && captured.contains("panicked at tests/panic_output.rs"),
                "{needle} not in the captured output:\n{captured}"
            );
            assert!(
                !stderr.contains(&needle),
                "{needle} bypassed the capture:\n{stderr}"
            );
        }
    }
}

#[test]
#[ignore = "run by printing_a_childs_panic_to_a_closed_stderr_never_panics"]
fn helper_join_and_drop_with_stderr_closed() {
    let p = start(StartMethod::Fork, panics, "to nobody".to_string());
    let r = join(p);
    println!(
        "join returned: {}",
        matches!(r, Err(ProcessError::Panicked { .. }))
    );
    let p = start(
        StartMethod::Fork,
        panics,
        "to nobody, while unwinding".to_string(),
    );
    assert!(common::eventually(|| !p.is_alive()));
    println!("failing with the handle alive");
    panic!("the test's own failure"); // unwinding drops `p`, whose panic is then printed
}

#[test]
fn printing_a_childs_panic_to_a_closed_stderr_never_panics() {
    // As in `prog 2>&1 | head -1`: stderr is a pipe whose reader is gone. `eprintln!` would panic
    // on EPIPE in `join`, and abort the process in a drop during unwinding.
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args([
            "--ignored",
            "--exact",
            "helper_join_and_drop_with_stderr_closed",
            "--nocapture",
            "--test-threads=1",
        ])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stderr.take());
    let out = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("join returned: true"), "{stdout}");
    assert!(stdout.contains("failing with the handle alive"), "{stdout}");
    // The helper fails (its own panic), as a test, not by a signal.
    assert_eq!(out.status.code(), Some(101), "{:?}\n{stdout}", out.status);
}
