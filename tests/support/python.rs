//! Python as an independent client: a script run with `python3 -c`, its
//! arguments, and what it printed (Python's `websockets` library here; the
//! browser driver in `browser`).
//!
//! Owns: running such a script under a time limit and telling a missing
//! library apart from a failing test. Nothing here opens a socket itself.

use std::process::Command;
use std::time::Duration;

/// The longest a script may run before the test fails.
const SCRIPT_TIMEOUT: Duration = Duration::from_secs(60);

/// Runs `script` with `args` (as `sys.argv[1..]`); returns what it printed
/// on stdout. Fails the test, with both outputs, when the script fails or
/// outlives [`SCRIPT_TIMEOUT`], or when the Python module `module` is not
/// installed (`install` says how to get it).
pub fn run_python(script: &str, args: &[&str], module: &str, install: &str) -> String {
    let output = Command::new("timeout")
        .arg(SCRIPT_TIMEOUT.as_secs().to_string())
        .arg("python3")
        .arg("-c")
        .arg(script)
        .args(args)
        .output()
        .expect("python3 and timeout must be installed to run this test");
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        !stderr.contains(&format!("No module named '{module}'")),
        "this test needs Python's {module}: {install}"
    );
    assert!(
        output.status.success(),
        "python script failed ({}):\n{stdout}\n{stderr}",
        output.status
    );
    stdout
}

/// Runs a client script that uses Python's `websockets` library.
#[allow(dead_code)] // Not every test binary has such a client.
pub fn run_websockets_client(script: &str, args: &[&str]) -> String {
    run_python(script, args, "websockets", "pip install websockets")
}
