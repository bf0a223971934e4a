//! A program built with `panic = "abort"`: its children's panics are reported as panics, with their
//! messages, under every start method (before, they were `Signaled { signal: 6 }`). The test builds
//! `examples/panic_abort.rs` with the `panic-abort` profile (in a target directory of its own, so
//! that it does not wait for the build that runs it) and runs it.
#![cfg(not(miri))]

use std::process::Command;

#[test]
fn a_childs_panic_in_a_panic_abort_program_is_reported_as_a_panic() {
    let target = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("panic-abort");
    let built = Command::new(env!("CARGO"))
        .args([
            "build",
            "--quiet",
            "--profile",
            "panic-abort",
            "--example",
            "panic_abort",
        ])
        .arg("--target-dir")
        .arg(&target)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .status()
        .unwrap();
    assert!(built.success(), "building the example failed");
    let out = Command::new(target.join("panic-abort/examples/panic_abort"))
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("panic strategy: abort"), "{stdout}");
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
