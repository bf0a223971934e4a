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
