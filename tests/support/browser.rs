//! A real browser: headless Chromium (the distribution's package) driven by
//! Playwright for Python, running a script that reports what the page saw.
//!
//! Owns: starting such a script with the browser's path, and telling a
//! missing browser or driver apart from a failing test. The script opens
//! only loopback addresses; every host name but `localhost` resolves to
//! nothing, so no test can reach past the machine even by mistake.

use super::python::run_python;

/// Where the distribution installs Chromium (`.ci/test` installs it).
const CHROMIUM: &str = "/usr/bin/chromium";

/// What every script starts with: `launch()` opens a headless Chromium
/// whose host resolver maps no name but `localhost` to anything (with
/// further command-line switches, if given), and
/// `wait_for` polls a JavaScript condition and returns its first truthy value.
const PRELUDE: &str = r#"
import json, sys, time
from playwright.sync_api import sync_playwright

def launch(p, *extra):
    return p.chromium.launch(
        executable_path=sys.argv[1],
        args=["--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1, EXCLUDE localhost", "--no-sandbox", *extra],
    )

def wait_for(page, condition, what, timeout=15.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = page.evaluate(condition)
        if value:
            return value
        time.sleep(0.05)
    raise SystemExit(f"timed out waiting for {what}: " + page.evaluate("document.body.innerText"))
"#;

/// Runs `script` (after the prelude) with `args` (as `sys.argv[2..]`);
/// returns what it printed. Fails the test, with both outputs, when the
/// script fails, or when Chromium or Playwright is missing.
pub fn run_browser_script(script: &str, args: &[&str]) -> String {
    assert!(
        std::path::Path::new(CHROMIUM).exists(),
        "this test needs Chromium at {CHROMIUM}: apt-get install chromium (.ci/test does)"
    );
    let program = format!("{PRELUDE}\n{script}");
    let mut argv = vec![CHROMIUM];
    argv.extend_from_slice(args);
    run_python(
        &program,
        &argv,
        "playwright",
        "pip install playwright (.ci/test does)",
    )
}
