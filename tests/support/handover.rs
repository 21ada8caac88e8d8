//! The handover as the tests see it from outside the daemon: the log lines
//! the old and the new process write, the processes a handover starts, and
//! a copy of the binary that a test may replace on disk.
//!
//! A process started by a handover is a child of the daemon, not of the
//! test: it is found by the pid the old one logs, and this process makes
//! itself a child subreaper so that it adopts (and can reap) it once the
//! old one exits. Every such process is killed on drop, like a `Daemon`.
//!
//! Must never: signal a process it did not find in a daemon's log, or wait
//! without a deadline.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Once;
use std::time::{Duration, Instant};

use rustix::io::Errno;
use rustix::process::{
    Pid, Signal, WaitOptions, getpid, kill_process, set_child_subreaper, waitpid,
};

use super::daemon::{BIN, Daemon};
use super::tempdir::TempDir;

/// Logged by the old process once it has started the new one; the pid
/// follows.
pub const STARTED: &str = "handover: started new process ";
/// Logged by the old process once the new one has taken everything over:
/// "handed over N connection(s) and L listener(s) in X ms".
pub const HANDED: &str = "handover: handed over ";
/// Logged by the new process once it serves what it was handed:
/// "taken over N connection(s)".
pub const TAKEN: &str = "handover: taken over ";
/// Logged by the old process when the handover did not happen and it goes
/// on serving: "failed: <reason>; still serving".
pub const FAILED: &str = "handover: failed: ";
/// Read by a new process: the state version it claims to understand, so a
/// test can make it refuse the old one's state.
pub const STATE_VERSION_ENV: &str = "WSHUB_HANDOVER_STATE_VERSION";

/// How long a handover may take in the tests (a debug build handing over
/// ten thousand connections on a busy machine).
pub const HANDOVER_TIMEOUT: Duration = Duration::from_secs(60);

/// Makes this process adopt the orphans of its children (the processes a
/// handover starts outlive the daemon that started them). Process-wide and
/// harmless to call again.
pub fn adopt_orphans() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        set_child_subreaper(Some(getpid())).expect("become a child subreaper");
    });
}

/// Every log line so far (from the daemon and the processes it started,
/// which share its stderr) that contains `needle`.
pub fn lines_with(daemon: &Daemon, needle: &str) -> Vec<String> {
    daemon
        .log_text()
        .lines()
        .filter(|line| line.contains(needle))
        .map(str::to_owned)
        .collect()
}

/// Waits until the log holds at least `n` lines containing `needle` and
/// returns the `n`-th (1-based). Unlike `Daemon::wait_for_log` it consumes
/// nothing, so lines that arrive in either order can be awaited one by one.
pub fn wait_for_nth(daemon: &Daemon, needle: &str, n: usize, timeout: Duration) -> String {
    wait_for_nth_while(daemon, needle, n, timeout, None)
}

/// Like [`wait_for_nth`], but gives up as soon as process `watch` (one that
/// must log the line, or start the process that does) is gone.
fn wait_for_nth_while(
    daemon: &Daemon,
    needle: &str,
    n: usize,
    timeout: Duration,
    watch: Option<Pid>,
) -> String {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(line) = lines_with(daemon, needle).into_iter().nth(n - 1) {
            return line;
        }
        let gone = watch.is_some_and(|pid| proc_state(pid).is_none_or(|state| state == 'Z'));
        assert!(
            !gone,
            "process {watch:?} exited before the log had line #{n} containing {needle:?}; log:\n{}",
            daemon.log_text()
        );
        assert!(
            Instant::now() < deadline,
            "no log line #{n} containing {needle:?} within {timeout:?}; log:\n{}",
            daemon.log_text()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// The number right after `marker` in `line`.
pub fn number_after(line: &str, marker: &str) -> u64 {
    line.split_once(marker)
        .and_then(|(_, rest)| {
            let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
            digits.parse().ok()
        })
        .unwrap_or_else(|| panic!("no number after {marker:?} in {line:?}"))
}

/// The handover time in a `HANDED` line ("... in X ms"), in milliseconds.
pub fn handed_ms(line: &str) -> f64 {
    let (_, rest) = line
        .rsplit_once(" in ")
        .unwrap_or_else(|| panic!("no time in {line:?}"));
    let value: String = rest
        .chars()
        .take_while(|c| c.is_ascii_digit() || *c == '.')
        .collect();
    value
        .parse()
        .unwrap_or_else(|_| panic!("no time in {line:?}"))
}

/// What one handover logged.
#[derive(Debug)]
pub struct Handover {
    /// The process that took over.
    pub successor: Successor,
    /// The new process's `TAKEN` line and the old one's `HANDED` line.
    pub taken: String,
    pub handed: String,
    /// From the signal to the `TAKEN` line as this process saw it.
    pub elapsed: Duration,
}

impl Handover {
    /// Connections the new process says it took over.
    pub fn connections_taken(&self) -> u64 {
        number_after(&self.taken, TAKEN)
    }

    /// Connections the old process says it handed over.
    pub fn connections_handed(&self) -> u64 {
        number_after(&self.handed, HANDED)
    }
}

/// Sends SIGUSR2 to `pid` (the daemon, or a process that took over from
/// it) and waits until the handover is logged as done on both sides: the
/// next `STARTED`, `TAKEN` and `HANDED` lines after those already logged.
pub fn upgrade(daemon: &Daemon, pid: Pid) -> Handover {
    let next = |needle| lines_with(daemon, needle).len() + 1;
    let (started, taken, handed) = (next(STARTED), next(TAKEN), next(HANDED));
    let begin = Instant::now();
    kill_process(pid, Signal::USR2).expect("send SIGUSR2");
    let started = wait_for_nth_while(daemon, STARTED, started, HANDOVER_TIMEOUT, Some(pid));
    let successor = Successor::from_line(&started);
    let taken = wait_for_nth_while(daemon, TAKEN, taken, HANDOVER_TIMEOUT, Some(successor.pid));
    let elapsed = begin.elapsed();
    let handed = wait_for_nth(daemon, HANDED, handed, HANDOVER_TIMEOUT);
    Handover {
        successor,
        taken,
        handed,
        elapsed,
    }
}

/// A process a handover started: not this process's child until the one
/// that started it exits (then adopted, see [`adopt_orphans`]); killed on
/// drop if still running.
#[derive(Debug)]
pub struct Successor {
    pub pid: Pid,
    /// Set once it has been reaped: its exit code (`None`: killed by a
    /// signal).
    exited: Option<Option<i32>>,
}

impl Successor {
    /// The process named in a `STARTED` line.
    pub fn from_line(line: &str) -> Successor {
        let raw = number_after(line, STARTED);
        let pid = i32::try_from(raw)
            .ok()
            .and_then(Pid::from_raw)
            .unwrap_or_else(|| panic!("not a pid in {line:?}"));
        Successor { pid, exited: None }
    }

    pub fn signal(&self, signal: Signal) {
        kill_process(self.pid, signal).expect("signal the process a handover started");
    }

    /// Reaps it if it has exited (and is ours by now); true while it runs.
    pub fn is_running(&mut self) -> bool {
        if self.exited.is_some() {
            return false;
        }
        match waitpid(Some(self.pid), WaitOptions::NOHANG) {
            Ok(Some((_, status))) => {
                self.exited = Some(status.exit_status());
                false
            }
            Ok(None) => true,
            // Still the daemon's child: running unless /proc says it is gone.
            Err(Errno::CHILD) => proc_state(self.pid).is_some_and(|state| state != 'Z'),
            Err(e) => panic!("waitpid {:?}: {e}", self.pid),
        }
    }

    /// Waits at most `timeout` for it to exit; its exit code (`None`: killed
    /// by a signal, or reaped by someone else).
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<i32> {
        let deadline = Instant::now() + timeout;
        while self.is_running() {
            assert!(
                Instant::now() < deadline,
                "process {:?} did not exit within {timeout:?}",
                self.pid
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        self.exited.flatten()
    }
}

impl Drop for Successor {
    fn drop(&mut self) {
        if self.exited.is_none() && proc_state(self.pid).is_some() {
            let _ = kill_process(self.pid, Signal::KILL);
            let deadline = Instant::now() + Duration::from_secs(5);
            while self.is_running() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(5));
            }
        }
    }
}

/// The state letter of `/proc/PID/stat` (`None`: no such process).
fn proc_state(pid: Pid) -> Option<char> {
    let stat = std::fs::read_to_string(format!("/proc/{}/stat", pid.as_raw_nonzero())).ok()?;
    let (_, rest) = stat.rsplit_once(')')?;
    rest.trim_start().chars().next()
}

/// The `wshub` binary under a path of the test's own, so the test can put
/// something else there (as an upgrade does) without touching the build.
pub struct BinaryCopy {
    dir: TempDir,
    pub path: PathBuf,
}

impl BinaryCopy {
    /// A hard link to the built binary (a copy where linking fails).
    pub fn new() -> BinaryCopy {
        let dir = TempDir::new("binary");
        let path = dir.path().join("wshub");
        if std::fs::hard_link(BIN, &path).is_err() {
            std::fs::copy(BIN, &path).expect("copy the wshub binary");
        }
        BinaryCopy { dir, path }
    }

    /// A command running this binary with `args`.
    pub fn command(&self, args: &[&Path]) -> Command {
        let mut command = Command::new(&self.path);
        command.args(args);
        command
    }

    /// Puts an executable shell script with `body` in place of the binary,
    /// renamed over it as an upgrade replaces a running binary.
    pub fn replace_with_script(&self, body: &str) {
        let tmp = self.dir.path().join(".wshub.new");
        std::fs::write(&tmp, format!("#!/bin/sh\n{body}\n")).expect("write the script");
        set_executable(&tmp);
        std::fs::rename(&tmp, &self.path).expect("rename the script into place");
    }

    /// Puts the real binary back in place.
    pub fn restore(&self) {
        let tmp = self.dir.path().join(".wshub.new");
        let _ = std::fs::remove_file(&tmp);
        if std::fs::hard_link(BIN, &tmp).is_err() {
            std::fs::copy(BIN, &tmp).expect("copy the wshub binary");
        }
        std::fs::rename(&tmp, &self.path).expect("rename the binary into place");
    }
}

fn set_executable(path: &Path) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755))
        .expect("make the script executable");
}
