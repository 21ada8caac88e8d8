//! Python's `websockets` library as an independent client: a script run
//! with `python3 -c`, its arguments, and what it printed.
//!
//! Owns: running such a script and telling a missing library apart from a
//! failing test. Nothing here opens a socket itself.

use std::process::Command;

/// Runs `script` with `args`; returns what it printed on stdout. Fails the
/// test, with both outputs, when the script fails or `websockets` is not
/// installed.
pub fn run_websockets_client(script: &str, args: &[&str]) -> String {
    let output = Command::new("python3")
        .arg("-c")
        .arg(script)
        .args(args)
        .output()
        .expect("python3 must be installed to run this test");
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        !stderr.contains("No module named 'websockets'"),
        "this test needs Python's websockets library: pip install websockets"
    );
    assert!(
        output.status.success(),
        "python client failed:\n{stdout}\n{stderr}"
    );
    stdout
}
