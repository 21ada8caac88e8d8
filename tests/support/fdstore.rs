//! The service manager's side of `Type=notify` with
//! `FileDescriptorStoreMax=`, for tests without systemd as PID 1: a
//! `NOTIFY_SOCKET` that keeps the descriptors sent with `FDSTORE=1`, and a
//! launcher that starts a process with them (after any socket-activation
//! listeners) as `LISTEN_FDS`/`LISTEN_FDNAMES`/`LISTEN_PID`, with
//! `NOTIFY_SOCKET` and `FDSTORE=<max>` set, as systemd does.
//!
//! What it does as systemd does (sd_notify(3), FILE_DESCRIPTOR_STORE):
//! `FDSTORE=1` stores the datagram's descriptors under `FDNAME=` (default
//! "stored"); beyond the store's size they are closed; descriptors sent
//! without `FDSTORE=1` are closed; `FDSTOREREMOVE=1` + `FDNAME=` drops every
//! descriptor of that name; `READY=1` and `STOPPING=1` are counted;
//! `FDPOLL=0` is recorded; a descriptor already in the store is not stored
//! twice (systemd compares open files; this compares inodes, the same for
//! the sockets and memfds a handover stores). What it does not: poll the
//! stored descriptors (systemd drops one that hangs up unless `FDPOLL=0`
//! came with it), check the sender's pid, or restart anything by itself.
//!
//! The launcher is a short Python script (the test's process cannot place
//! thousands of descriptors at 3, 4, … in a child without holding a second
//! copy of each, and the open-files limit is 20,000): it receives the
//! descriptors over a socketpair in `SCM_RIGHTS` chunks, moves them to 3, 4,
//! … and execs the program (searched in `PATH`) in its own process, so
//! `LISTEN_PID` is right.
//! The test process therefore holds only the store's copies plus a few.
//! The names travel as one argument, which Linux caps as it caps the
//! `LISTEN_FDNAMES` variable (`MAX_ARG_STRLEN`): names too long for a real
//! start fail here too, at the launcher's spawn.
//!
//! A thread drains the notification socket all the time, as the manager
//! does (a sender blocks on a full datagram queue otherwise); every wait
//! has a deadline and fails the test with what was received.
//!
//! Must never: wait without a deadline, or keep a descriptor the store
//! would not (beyond its size, or sent without `FDSTORE=1`); the processes
//! it starts belong to the caller (a `Daemon`, killed on drop).

use std::collections::HashSet;
use std::ffi::OsStr;
use std::io::{IoSlice, IoSliceMut};
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::net::{UnixDatagram, UnixStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use command_fds::{CommandFdExt, FdMapping};
use rustix::net::{
    RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, ReturnFlags, SendAncillaryBuffer,
    SendAncillaryMessage, SendFlags,
};

use super::tempdir::TempDir;

/// Linux's `SCM_MAX_FD`: the most descriptors one datagram may carry.
const SCM_MAX_FD: usize = 253;

/// Descriptors per chunk sent to the launcher.
const LAUNCH_CHUNK: usize = 250;

/// How long the launcher may take to receive the descriptors.
const LAUNCH_TIMEOUT: Duration = Duration::from_secs(30);

/// The name systemd gives stored descriptors sent without `FDNAME=`.
const DEFAULT_NAME: &str = "stored";

/// Receives `argv[1]` descriptors over fd 3 (one or more per one-byte
/// message), moves the i-th to 3 + i (inheritable; every other descriptor
/// stays close-on-exec), sets the environment and execs the rest of argv.
const LAUNCHER: &str = r#"
import os, socket, sys
count, names, notify, store, nenv = int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4], int(sys.argv[5])
pairs, argv = sys.argv[6:6 + nenv], sys.argv[6 + nenv:]
sock = socket.socket(fileno=3)
fds = []
while len(fds) < count:
    data, got, _, _ = socket.recv_fds(sock, 1, 253)
    if not data:
        sys.exit("launcher: the manager stopped after %d of %d descriptors" % (len(fds), count))
    fds.extend(got)
sock.close()
where = {fd: i for i, fd in enumerate(fds)}
for i in range(count):
    target, fd = 3 + i, fds[i]
    if fd == target:
        os.set_inheritable(fd, True)
        continue
    if target in where:
        j = where.pop(target)
        moved = os.dup(target)
        fds[j] = moved
        where[moved] = j
    os.dup2(fd, target)
    os.close(fd)
    del where[fd]
    fds[i] = target
    where[target] = i
env = dict(os.environ)
for key in ("LISTEN_FDS", "LISTEN_PID", "LISTEN_FDNAMES", "NOTIFY_SOCKET", "FDSTORE"):
    env.pop(key, None)
if count:
    env.update(LISTEN_FDS=str(count), LISTEN_FDNAMES=names, LISTEN_PID=str(os.getpid()))
env["NOTIFY_SOCKET"] = notify
if store != "0":
    env["FDSTORE"] = store
for pair in pairs:
    key, _, value = pair.partition("=")
    env[key] = value
os.execvpe(argv[0], argv, env)
"#;

/// One stored descriptor.
struct Stored {
    name: String,
    fd: OwnedFd,
    /// `FDPOLL=0` did not come with it.
    poll: bool,
    /// Its inode, to tell a duplicate.
    id: (u64, u64),
}

/// What the manager received and keeps.
#[derive(Default)]
struct Book {
    store: Vec<Stored>,
    ready: usize,
    stopping: usize,
    /// Descriptors closed because the store was full.
    rejected: usize,
    /// Descriptors closed because they came without `FDSTORE=1`.
    stray: usize,
    /// Descriptors closed because the store held them already.
    duplicates: usize,
    /// The inodes in the store.
    ids: HashSet<(u64, u64)>,
    /// Every notification's text, in order.
    messages: Vec<String>,
}

struct Shared {
    book: Mutex<Book>,
    changed: Condvar,
    stop: AtomicBool,
}

impl Shared {
    fn book(&self) -> MutexGuard<'_, Book> {
        self.book.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// The manager: its notification socket, its store, and socket-activation
/// listeners passed before the store's descriptors.
pub struct Manager {
    _dir: TempDir,
    path: PathBuf,
    max: usize,
    shared: Arc<Shared>,
    pump: Option<JoinHandle<()>>,
    activation: Vec<(String, OwnedFd)>,
}

/// The descriptors for a launcher command: spawn the command (directly or
/// through `Daemon::spawn`), drop it (it holds the launcher's end of the
/// socketpair, so a launcher that died would not be noticed), then call
/// [`Handoff::hand_over`].
pub struct Handoff<'m> {
    manager: &'m Manager,
    ours: UnixStream,
}

impl Manager {
    /// A manager whose store holds at most `max` descriptors
    /// (`FileDescriptorStoreMax=`; 0 refuses every one).
    pub fn new(max: usize) -> Manager {
        let dir = TempDir::new("fdstore");
        let path = dir.path().join("notify.sock");
        let socket = UnixDatagram::bind(&path).expect("bind the notify socket");
        socket
            .set_read_timeout(Some(Duration::from_millis(50)))
            .expect("set a timeout on the notify socket");
        let shared = Arc::new(Shared {
            book: Mutex::new(Book::default()),
            changed: Condvar::new(),
            stop: AtomicBool::new(false),
        });
        let pumped = Arc::clone(&shared);
        let pump = std::thread::spawn(move || pump(&socket, &pumped, max));
        Manager {
            _dir: dir,
            path,
            max,
            shared,
            pump: Some(pump),
            activation: Vec::new(),
        }
    }

    /// The value for `NOTIFY_SOCKET`.
    pub fn notify_socket(&self) -> &str {
        self.path.to_str().expect("temp path is UTF-8")
    }

    /// A socket-activation descriptor (e.g. a listener named
    /// `wshub.socket`), passed before the store's on every start.
    pub fn add_listener(&mut self, name: &str, fd: impl Into<OwnedFd>) {
        self.activation.push((name.to_owned(), fd.into()));
    }

    /// Prepares the start of `bin args` with the activation listeners and
    /// the store's descriptors, `env` added to its environment: a command
    /// to spawn, and what hands it the descriptors once it runs.
    pub fn launch(
        &self,
        bin: &Path,
        args: &[&OsStr],
        env: &[(&str, &str)],
    ) -> (Command, Handoff<'_>) {
        let (ours, theirs) = UnixStream::pair().expect("a socketpair for the launcher");
        let names = self.names();
        let mut command = Command::new("python3");
        command
            .arg("-c")
            .arg(LAUNCHER)
            .arg(names.len().to_string())
            .arg(names.join(":"))
            .arg(self.notify_socket())
            .arg(self.max.to_string())
            .arg(env.len().to_string());
        for (key, value) in env {
            command.arg(format!("{key}={value}"));
        }
        command.arg(bin).args(args);
        command
            .fd_mappings(vec![FdMapping {
                parent_fd: theirs.into(),
                child_fd: 3,
            }])
            .expect("one mapping cannot collide");
        (
            command,
            Handoff {
                manager: self,
                ours,
            },
        )
    }

    /// Starts `bin args` (stdin null, stdout and stderr inherited) with what
    /// the manager passes; see [`Manager::launch`].
    pub fn start(&self, bin: &Path, args: &[&OsStr], env: &[(&str, &str)]) -> Child {
        let (mut command, handoff) = self.launch(bin, args, env);
        command.stdin(Stdio::null());
        let child = command.spawn().expect("start the launcher");
        drop(command);
        handoff.hand_over();
        child
    }

    /// The names of what a start passes, in order.
    fn names(&self) -> Vec<String> {
        let book = self.shared.book();
        self.activation
            .iter()
            .map(|(name, _)| name.clone())
            .chain(book.store.iter().map(|s| s.name.clone()))
            .collect()
    }

    /// Waits until `done` holds for what was received; fails the test with
    /// the notifications so far after `timeout`.
    fn wait(&self, what: &str, timeout: Duration, done: impl Fn(&Book) -> bool) {
        let deadline = Instant::now() + timeout;
        let mut book = self.shared.book();
        while !done(&book) {
            let left = deadline.saturating_duration_since(Instant::now());
            assert!(
                !left.is_zero(),
                "no {what} within {timeout:?}; notifications: {:#?}",
                book.messages
            );
            book = self
                .shared
                .changed
                .wait_timeout(book, left)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
    }

    /// Waits until `READY=1` was received `count` times in all.
    pub fn wait_ready(&self, count: usize, timeout: Duration) {
        self.wait(&format!("READY=1 #{count}"), timeout, |b| b.ready >= count);
    }

    /// Waits until `STOPPING=1` was received `count` times in all.
    pub fn wait_stopping(&self, count: usize, timeout: Duration) {
        self.wait(&format!("STOPPING=1 #{count}"), timeout, |b| {
            b.stopping >= count
        });
    }

    /// Waits until the store holds `count` descriptors named `name`.
    pub fn wait_stored(&self, name: &str, count: usize, timeout: Duration) {
        self.wait(&format!("{count} stored {name:?}"), timeout, |b| {
            b.store.iter().filter(|s| s.name == name).count() == count
        });
    }

    /// Waits until `count` notifications were received in all.
    pub fn wait_messages(&self, count: usize, timeout: Duration) {
        self.wait(&format!("{count} notifications"), timeout, |b| {
            b.messages.len() >= count
        });
    }

    /// The names in the store, each once, in the order first stored.
    pub fn stored_names(&self) -> Vec<String> {
        let mut names: Vec<String> = Vec::new();
        for stored in &self.shared.book().store {
            if !names.contains(&stored.name) {
                names.push(stored.name.clone());
            }
        }
        names
    }

    /// How many descriptors named `name` the store holds.
    pub fn stored_count(&self, name: &str) -> usize {
        self.shared
            .book()
            .store
            .iter()
            .filter(|s| s.name == name)
            .count()
    }

    /// How many descriptors the store holds in all.
    pub fn stored_total(&self) -> usize {
        self.shared.book().store.len()
    }

    /// True when every stored descriptor named `name` came with `FDPOLL=0`.
    pub fn poll_disabled(&self, name: &str) -> bool {
        self.shared
            .book()
            .store
            .iter()
            .filter(|s| s.name == name)
            .all(|s| !s.poll)
    }

    /// Copies of the descriptors named `name`, in order (for checks of
    /// identity; each is a descriptor more in the test's process).
    pub fn clone_stored(&self, name: &str) -> Vec<OwnedFd> {
        self.shared
            .book()
            .store
            .iter()
            .filter(|s| s.name == name)
            .map(|s| s.fd.try_clone().expect("duplicate a stored descriptor"))
            .collect()
    }

    /// Descriptors closed because the store was full.
    pub fn rejected(&self) -> usize {
        self.shared.book().rejected
    }

    /// Descriptors closed because they came without `FDSTORE=1`.
    pub fn stray(&self) -> usize {
        self.shared.book().stray
    }

    /// Descriptors closed because the store held them already.
    pub fn duplicates(&self) -> usize {
        self.shared.book().duplicates
    }

    /// Every notification received so far.
    pub fn messages(&self) -> Vec<String> {
        self.shared.book().messages.clone()
    }

    /// Closes every stored descriptor, as systemd does when the unit stops
    /// for good.
    pub fn flush(&self) {
        let mut book = self.shared.book();
        book.store.clear();
        book.ids.clear();
    }
}

impl Drop for Manager {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::Relaxed);
        if let Some(pump) = self.pump.take() {
            let _ = pump.join();
        }
    }
}

impl Handoff<'_> {
    /// Sends the launcher (already spawned) the activation listeners and
    /// the store's descriptors, in chunks of [`LAUNCH_CHUNK`].
    pub fn hand_over(self) {
        self.ours
            .set_write_timeout(Some(LAUNCH_TIMEOUT))
            .expect("set a timeout on the launcher socket");
        let manager = self.manager;
        let book = manager.shared.book();
        let fds: Vec<BorrowedFd<'_>> = manager
            .activation
            .iter()
            .map(|(_, fd)| fd.as_fd())
            .chain(book.store.iter().map(|s| s.fd.as_fd()))
            .collect();
        let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(LAUNCH_CHUNK))];
        for chunk in fds.chunks(LAUNCH_CHUNK) {
            let mut control = SendAncillaryBuffer::new(&mut space);
            assert!(control.push(SendAncillaryMessage::ScmRights(chunk)));
            rustix::net::sendmsg(
                &self.ours,
                &[IoSlice::new(&[1])],
                &mut control,
                SendFlags::NOSIGNAL,
            )
            .expect("hand the descriptors to the launcher");
        }
    }
}

/// Receives notifications until the manager is dropped.
fn pump(socket: &UnixDatagram, shared: &Shared, max: usize) {
    let mut space = vec![MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(SCM_MAX_FD))];
    while !shared.stop.load(Ordering::Relaxed) {
        // The datagram's size first, so one of any size is read whole.
        let size = match rustix::net::recv(
            socket,
            &mut [0u8; 0][..],
            RecvFlags::PEEK | RecvFlags::TRUNC,
        ) {
            Ok((_, size)) => size,
            Err(rustix::io::Errno::AGAIN | rustix::io::Errno::INTR) => continue,
            Err(e) => panic!("the notify socket failed: {e}"),
        };
        let mut data = vec![0u8; size.max(1)];
        let mut control = RecvAncillaryBuffer::new(&mut space);
        let received = rustix::net::recvmsg(
            socket,
            &mut [IoSliceMut::new(&mut data)],
            &mut control,
            RecvFlags::CMSG_CLOEXEC,
        );
        let received = match received {
            Ok(received) => received,
            Err(rustix::io::Errno::AGAIN | rustix::io::Errno::INTR) => continue,
            Err(e) => panic!("the notify socket failed: {e}"),
        };
        let mut fds: Vec<OwnedFd> = Vec::new();
        for message in control.drain() {
            if let RecvAncillaryMessage::ScmRights(got) = message {
                fds.extend(got);
            }
        }
        assert!(
            !received.flags.contains(ReturnFlags::CTRUNC),
            "a notification carried more than {SCM_MAX_FD} descriptors"
        );
        data.truncate(received.bytes);
        let text = String::from_utf8_lossy(&data).into_owned();
        let mut book = shared.book();
        apply(&mut book, &text, fds, max);
        book.messages.push(text);
        drop(book);
        shared.changed.notify_all();
    }
}

/// Applies one notification to the book, as systemd's service manager does.
fn apply(book: &mut Book, text: &str, fds: Vec<OwnedFd>, max: usize) {
    let mut store = false;
    let mut remove = false;
    let mut poll = true;
    let mut name = None;
    for line in text.lines() {
        match line.split_once('=') {
            Some(("READY", "1")) => book.ready += 1,
            Some(("STOPPING", "1")) => book.stopping += 1,
            Some(("FDSTORE", "1")) => store = true,
            Some(("FDSTOREREMOVE", "1")) => remove = true,
            Some(("FDPOLL", "0")) => poll = false,
            Some(("FDNAME", value)) => name = Some(value.to_owned()),
            _ => {}
        }
    }
    if let (true, Some(name)) = (remove, &name) {
        book.store.retain(|s| &s.name != name);
        book.ids = book.store.iter().map(|s| s.id).collect();
    }
    if !store {
        book.stray += fds.len();
        return;
    }
    let name = name.unwrap_or_else(|| DEFAULT_NAME.to_owned());
    for fd in fds {
        if book.store.len() >= max {
            book.rejected += 1;
            continue; // dropped: closed
        }
        let stat = rustix::fs::fstat(&fd).expect("fstat a stored descriptor");
        let id = (stat.st_dev, stat.st_ino);
        if !book.ids.insert(id) {
            book.duplicates += 1;
            continue; // dropped: closed
        }
        book.store.push(Stored {
            name: name.clone(),
            fd,
            poll,
            id,
        });
    }
}
