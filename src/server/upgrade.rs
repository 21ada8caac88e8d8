//! Restarts that keep every client: this process handing its sockets and
//! state to a new one, and a new process taking them over.
//!
//! Two ways, one state ([`super::handover`]):
//! - **SIGUSR2** (no service manager needed): the loop starts the binary it
//!   was started from, with the same arguments and one end of a socket pair
//!   ([`crate::handover::wire`]). While the new process loads its config the
//!   old one serves on. The new one says hello with the state version it
//!   speaks; the old one stops serving, sends the state and every socket,
//!   and waits. The new one rebuilds everything and says it has taken
//!   over; the old one forgets what it handed over, confirms, and drains the
//!   rest the ordinary way (1012). Any failure before the confirmation —
//!   the new binary does not start, crashes, refuses the state, is too
//!   slow — leaves the old one serving as if nothing happened, and the new
//!   one exits without having touched a socket.
//!   A new binary that speaks another state version gets the listening
//!   sockets only: the old one then closes its connections the ordinary
//!   way, and clients reconnect to the new one.
//! - **The service manager's file descriptor store** (systemd,
//!   `FileDescriptorStoreMax=`): on SIGTERM the state (in a memfd), the
//!   listening sockets and the connections go to the store, and the next
//!   process finds them among `LISTEN_FDS`.
//!
//! Owns: the upgrade in progress (child, channel, deadline), the order of
//! the exchange, and the fallback at each step.
//! Must never: leave a moment where both processes serve the same sockets,
//! or one where neither will; block the loop while it still serves (the
//! exchange blocks only once serving has stopped, each step bounded).

use std::ffi::OsString;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::PathBuf;
use std::process::Child;
use std::time::{Duration, Instant};

use log::{error, info, warn};
use mio::Interest;
use mio::unix::SourceFd;

use super::handover::{Imported, ListenerRecord, ServerState, farewell_all};
use super::lifecycle::Drain;
use super::slot::{HANDOVER_TIMER, HANDOVER_TOKEN};
use super::{Server, ServerError};
use crate::config::Config;
use crate::daemon::fdstore;
use crate::daemon::listenfd::Inherited;
use crate::handover::state::{self, Envelope, StateError};
use crate::handover::wire::{self, Channel, Kind};
use crate::timer::TimerKey;

/// How long a new process may take to load its config and say hello.
const HELLO_TIMEOUT_MS: u64 = 30_000;
/// How long a failed child is given to exit before it is killed: at most
/// 100 ms of the loop's time, once, on a failure.
const EXIT_POLLS: u32 = 10;
const EXIT_POLL_INTERVAL: Duration = Duration::from_millis(10);
/// What systemd names a socket unit's descriptors by default (the unit's
/// name); only its length matters, for the room left in LISTEN_FDNAMES.
const SOCKET_UNIT_NAME: &str = "wshub.socket";
/// How long reading the hello may block the loop, once it began to arrive.
const HELLO_READ_TIMEOUT: Duration = Duration::from_secs(1);
/// How long each step of the exchange may take once serving has stopped.
const STEP_TIMEOUT: Duration = Duration::from_secs(30);

/// The command that starts this binary again.
#[derive(Clone, Debug)]
pub struct Relaunch {
    pub exe: PathBuf,
    pub args: Vec<OsString>,
}

impl Relaunch {
    /// This process's binary and arguments, read at start: after the file is
    /// replaced (an upgrade), the path names the new binary.
    pub fn current() -> Option<Relaunch> {
        let exe = std::env::current_exe().ok()?;
        Some(Relaunch {
            exe,
            args: std::env::args_os().skip(1).collect(),
        })
    }
}

/// An upgrade waiting for the new process's hello.
pub(super) struct Upgrade {
    channel: Channel,
    child: Child,
    timer: Option<TimerKey>,
}

impl Server {
    /// Lets SIGUSR2 start `relaunch` and hand everything over to it.
    pub fn set_relaunch(&mut self, relaunch: Option<Relaunch>) {
        self.life.relaunch = relaunch;
    }

    /// SIGUSR2: starts the new process, unless an upgrade or a shutdown is
    /// already under way or handover is off.
    pub(super) fn begin_upgrade(&mut self, now: u64) {
        if !self.config.handover {
            warn!("SIGUSR2 ignored: handover = false");
            return;
        }
        if self.life.shutdown.is_some() || self.life.upgrade.is_some() {
            warn!("SIGUSR2 ignored: a restart is already under way");
            return;
        }
        let Some(relaunch) = self.life.relaunch.clone() else {
            warn!("SIGUSR2 ignored: this server cannot start a new process");
            return;
        };
        let started = wire::pair().and_then(|(channel, child_end)| {
            let child = wire::spawn(&relaunch.exe, &relaunch.args, child_end)?;
            Ok((channel, child))
        });
        let (channel, child) = match started {
            Ok(started) => started,
            Err(e) => {
                error!(
                    "handover: failed: cannot start {}: {e}; still serving",
                    relaunch.exe.display()
                );
                return;
            }
        };
        // The hello is one small message: reading it cannot hold the loop
        // for long (the exchange later allows longer steps).
        if let Err(e) = channel.set_timeout(Some(HELLO_READ_TIMEOUT)) {
            error!("handover: failed: {e}; still serving");
            end_child(child);
            return;
        }
        let fd = channel.as_raw_fd();
        if let Err(e) =
            self.poll
                .registry()
                .register(&mut SourceFd(&fd), HANDOVER_TOKEN, Interest::READABLE)
        {
            error!("handover: failed: {e}; still serving");
            end_child(child);
            return;
        }
        info!(
            "handover: started new process {} ({})",
            child.id(),
            relaunch.exe.display()
        );
        let timer = Some(
            self.timers
                .insert(now.saturating_add(HELLO_TIMEOUT_MS), HANDOVER_TIMER),
        );
        self.life.upgrade = Some(Upgrade {
            channel,
            child,
            timer,
        });
    }

    /// The new process said something, or its channel closed.
    pub(super) fn on_upgrade_event(&mut self, now: u64) {
        let Some(upgrade) = self.life.upgrade.as_ref() else {
            return;
        };
        match upgrade.channel.try_recv() {
            Ok(None) => {}
            Ok(Some(message)) if message.kind == Kind::Hello => {
                let version = message
                    .payload
                    .get(..4)
                    .and_then(|b| <[u8; 4]>::try_from(b).ok())
                    .map(u32::from_le_bytes);
                match version {
                    Some(version) => self.hand_over(version, now),
                    None => self.upgrade_failed("the new process sent a malformed hello"),
                }
            }
            Ok(Some(message)) => self.upgrade_failed(&format!(
                "the new process sent {:?} before its hello",
                message.kind
            )),
            Err(e) => {
                self.upgrade_failed(&format!("the new process ended before taking over ({e})"))
            }
        }
    }

    /// A shutdown begins while an upgrade waits: the upgrade is given up.
    pub(super) fn upgrade_failed_for_shutdown(&mut self) {
        self.upgrade_failed("a shutdown began");
    }

    /// The new process did not say hello in time.
    pub(super) fn on_upgrade_timer(&mut self) {
        if let Some(upgrade) = self.life.upgrade.as_mut() {
            upgrade.timer = None;
        }
        self.upgrade_failed(&format!(
            "the new process did not start within {} s",
            HELLO_TIMEOUT_MS / 1000
        ));
    }

    /// Takes the upgrade in progress out of the loop: its deadline and its
    /// channel's registration go.
    fn end_upgrade(&mut self) -> Option<Upgrade> {
        let mut upgrade = self.life.upgrade.take()?;
        if let Some(timer) = upgrade.timer.take() {
            self.timers.remove(timer);
        }
        let fd = upgrade.channel.as_raw_fd();
        let _ = self.poll.registry().deregister(&mut SourceFd(&fd));
        Some(upgrade)
    }

    /// Gives up on the upgrade in progress: the new process is stopped and
    /// this one serves on.
    fn upgrade_failed(&mut self, why: &str) {
        let Some(upgrade) = self.end_upgrade() else {
            return;
        };
        let status = end_child(upgrade.child);
        error!("handover: failed: {why}{status}; still serving");
    }

    /// The new process speaks state `version`: everything goes over, or only
    /// the listeners when it cannot read our state.
    fn hand_over(&mut self, version: u32, now: u64) {
        let began = Instant::now();
        let full = version == state::VERSION;
        let export = if full {
            match self.export_state(usize::MAX, now) {
                Ok(export) => Some(export),
                Err(e) => {
                    self.upgrade_failed(&format!("cannot export the state: {e}"));
                    return;
                }
            }
        } else {
            None
        };
        let Some(upgrade) = self.life.upgrade.as_ref() else {
            return;
        };
        let sent = upgrade
            .channel
            .set_timeout(Some(STEP_TIMEOUT))
            .and_then(|()| {
                let mut fds = self.listener_fds();
                match &export {
                    Some(export) => {
                        fds.extend(self.conn_fds(&export.keys));
                        upgrade.channel.send(Kind::State, &export.bytes, &fds)
                    }
                    None => {
                        let described = describe_listeners(self);
                        upgrade.channel.send(Kind::Listeners, &described, &fds)
                    }
                }
            })
            .and_then(|()| upgrade.channel.recv());
        match sent {
            Ok(reply) if reply.kind == Kind::Taken => {}
            Ok(reply) if reply.kind == Kind::Refused => {
                let why = String::from_utf8_lossy(&reply.payload).into_owned();
                self.upgrade_failed(&format!("the new process refused the state: {why}"));
                return;
            }
            Ok(reply) => {
                self.upgrade_failed(&format!("the new process answered {:?}", reply.kind));
                return;
            }
            Err(e) => {
                self.upgrade_failed(&format!("the exchange failed: {e}"));
                return;
            }
        }
        // From here on the new process serves: confirm, forget, drain. The
        // confirmation goes first, so that the new process starts serving
        // while this one lets go; nothing here reads, writes or accepts on
        // a handed socket before it is forgotten (this runs to the end
        // before the loop goes on).
        let Some(upgrade) = self.end_upgrade() else {
            return;
        };
        if let Err(e) = upgrade.channel.send(Kind::Taken, &[], &[]) {
            // The new process is gone after taking over: nobody serves the
            // sockets any more. Nothing left to do but say so.
            error!("handover: the new process did not get the confirmation: {e}");
        }
        let keys = export.map(|e| e.keys).unwrap_or_default();
        let listeners = self.listeners.list.len();
        self.forget(&keys);
        self.listeners.close_all(self.poll.registry());
        info!(
            "handover: handed over {} connection(s) and {listeners} listener(s) in {} ms to process {}",
            keys.len(),
            began.elapsed().as_millis(),
            upgrade.child.id()
        );
        if !full {
            warn!(
                "handover: the new process speaks state version {version}, this one {}: \
                 closing every connection the ordinary way",
                state::VERSION
            );
        }
        // Dropping the child handle neither waits for nor stops it.
        drop(upgrade.child);
        self.begin_shutdown("handover", Drain::HandedOver, now);
    }

    /// SIGTERM under a service manager with a file descriptor store: the
    /// state and the sockets go to the store for the next process. True
    /// when that happened (the caller then drains the rest).
    pub(super) fn store_for_restart(&mut self, now: u64) -> bool {
        if !self.config.handover {
            return false;
        }
        let Some(capacity) = fdstore::capacity() else {
            return false;
        };
        let began = Instant::now();
        let push_listeners = !self.life.socket_activated;
        let listeners = if push_listeners {
            self.listeners.list.len()
        } else {
            0
        };
        // The store holds the state's memfd and the listeners too, and the
        // next start's LISTEN_FDNAMES must name them all.
        let listener_name = if push_listeners {
            fdstore::LISTEN_NAME
        } else {
            SOCKET_UNIT_NAME
        };
        let mut others = vec![listener_name; self.listeners.list.len()];
        others.push(fdstore::STATE_NAME);
        let room = fdstore::conn_room(capacity, &others);
        let export = match self.export_state(room, now) {
            Ok(export) => export,
            Err(e) => {
                error!("handover: cannot export the state: {e}; shutting down the ordinary way");
                return false;
            }
        };
        let pushed = (|| {
            if !export.keys.is_empty() {
                fdstore::push(fdstore::CONN_NAME, &self.conn_fds(&export.keys))?;
            }
            if push_listeners {
                fdstore::push(fdstore::LISTEN_NAME, &self.listener_fds())?;
            }
            let memfd = wire::memfd(fdstore::STATE_NAME, &export.bytes)?;
            fdstore::push(fdstore::STATE_NAME, &[std::os::fd::AsFd::as_fd(&memfd)])
        })();
        if let Err(e) = pushed {
            error!(
                "handover: cannot use the file descriptor store: {e}; shutting down the ordinary way"
            );
            // What did reach the store would keep those sockets open after
            // their ordinary close here.
            empty_store();
            return false;
        }
        self.forget(&export.keys);
        info!(
            "handover: stored {} connection(s) and {listeners} listener(s) for the next process in {} ms",
            export.keys.len(),
            began.elapsed().as_millis()
        );
        true
    }

    /// In a new process: takes over from the process at the other end of
    /// `channel` (the upgrade's socket pair). `Err` means nothing was taken
    /// over and the old process serves on; the caller exits.
    pub fn take_over(config: Config, channel: Channel) -> Result<Server, String> {
        let fail = |channel: &Channel, why: String| {
            let _ = channel.send(Kind::Refused, why.as_bytes(), &[]);
            why
        };
        channel
            .set_timeout(Some(STEP_TIMEOUT))
            .map_err(|e| format!("handover channel: {e}"))?;
        channel
            .send(Kind::Hello, &state::spoken_version().to_le_bytes(), &[])
            .map_err(|e| format!("cannot say hello to the old process: {e}"))?;
        let message = channel
            .recv()
            .map_err(|e| format!("no state from the old process: {e}"))?;
        let mut fds = message.fds.into_iter();
        let (mut server, mut imported) = match message.kind {
            Kind::Listeners => {
                let (socket_activated, known) = read_listeners(&message.payload);
                let mut known = known.into_iter();
                let listeners = fds
                    .by_ref()
                    .map(|fd| (std::net::TcpListener::from(fd), known.next().flatten()))
                    .collect();
                let server = Server::with_handed_listeners(config, listeners, socket_activated)
                    .map_err(|e| fail(&channel, e.to_string()))?;
                (server, Imported::default())
            }
            Kind::State => {
                let envelope =
                    state::open(&message.payload).map_err(|e| fail(&channel, e.to_string()))?;
                let body: ServerState =
                    state::decode_body(&envelope).map_err(|e| fail(&channel, e.to_string()))?;
                let listeners = body
                    .listeners()
                    .iter()
                    .zip(fds.by_ref())
                    .map(|(l, fd)| (std::net::TcpListener::from(fd), Some((l.configured, l.tls))))
                    .collect();
                let mut server =
                    Server::with_handed_listeners(config, listeners, body.socket_activated())
                        .map_err(|e| fail(&channel, e.to_string()))?;
                let imported = server
                    .import_state(body, envelope.farewells, fds.collect(), false)
                    .map_err(|e| fail(&channel, e))?;
                log_imported(&imported);
                (server, imported)
            }
            other => return Err(fail(&channel, format!("unexpected {other:?}"))),
        };
        channel
            .send(Kind::Taken, &[], &[])
            .map_err(|e| format!("cannot tell the old process: {e}"))?;
        // Nothing is read or written before the old process confirms: until
        // then it may still decide to serve on.
        match channel.recv() {
            Ok(reply) if reply.kind == Kind::Taken => {}
            Ok(reply) => return Err(format!("the old process answered {:?}", reply.kind)),
            Err(e) => return Err(format!("the old process did not confirm: {e}")),
        }
        imported.say_farewells();
        let now = server.now();
        server.resume_imported(&imported.keys, now);
        Ok(server)
    }

    /// Starts on what the service manager passed: its sockets (from a
    /// socket unit, or from the store a previous process filled on
    /// SIGTERM), and that process's state and connections, if any. A state
    /// that cannot be used never stops the start: its connections are ended
    /// the ordinary way (when their farewells can be read) or closed, and
    /// the listeners are served. Binds `[[listener]]` when nothing was
    /// passed.
    pub fn start_inherited(config: Config, inherited: Inherited) -> Result<Server, ServerError> {
        let Inherited {
            listeners,
            socket_activated,
            state,
            conns,
        } = inherited;
        let from_store =
            state.is_some() || !conns.is_empty() || (!listeners.is_empty() && !socket_activated);
        let stored = state.and_then(|fd| match wire::read_memfd(&fd) {
            Ok(bytes) => Some(bytes),
            Err(e) => {
                warn!("handover: cannot read the stored state ({e}); closing its connections");
                None
            }
        });
        let envelope = stored
            .as_deref()
            .and_then(|bytes| match state::open(bytes) {
                Ok(envelope) => Some(envelope),
                Err(e) => {
                    warn!("handover: the stored state is unusable ({e}); closing its connections");
                    None
                }
            });
        let body = envelope.as_ref().map(|envelope| {
            if state::spoken_version() == state::VERSION {
                state::decode_body::<ServerState>(envelope)
            } else {
                Err(StateError::Version(state::spoken_version()))
            }
        });
        // Stored listeners are recognised by their own address.
        let records: Vec<ListenerRecord> = match &body {
            Some(Ok(body)) => body.listeners().to_vec(),
            _ => Vec::new(),
        };
        let mut server = if listeners.is_empty() {
            Server::bind(config)?
        } else {
            let listeners = listeners
                .into_iter()
                .map(|socket| {
                    let own = socket.local_addr().ok();
                    let known = records
                        .iter()
                        .find(|r| Some(r.bound) == own)
                        .map(|r| (r.configured, r.tls));
                    (socket, known)
                })
                .collect();
            Server::with_handed_listeners(config, listeners, socket_activated)?
        };
        match (envelope, body) {
            (Some(envelope), Some(Ok(body))) => {
                match server.import_state(body, envelope.farewells, conns, true) {
                    Ok(mut imported) => {
                        log_imported(&imported);
                        imported.say_farewells();
                        let now = server.now();
                        server.resume_imported(&imported.keys, now);
                    }
                    Err(e) => warn!("handover: the stored state is unusable: {e}"),
                }
            }
            (Some(envelope), Some(Err(e))) => refuse(envelope, conns, &e),
            (None, _) if !conns.is_empty() => {
                warn!(
                    "handover: {} stored connection(s) without a usable state; closing them",
                    conns.len()
                );
            }
            _ => {}
        }
        if from_store {
            // The store keeps a copy of each descriptor: the sockets close
            // only once it lets go of them too.
            empty_store();
        }
        Ok(server)
    }
}

/// Tells the service manager to let go of everything a previous process
/// stored (the next SIGTERM stores afresh).
fn empty_store() {
    for name in [
        fdstore::STATE_NAME,
        fdstore::CONN_NAME,
        fdstore::LISTEN_NAME,
    ] {
        if let Err(e) = fdstore::remove(name) {
            warn!("handover: cannot empty the file descriptor store ({name}): {e}");
        }
    }
}

/// Describes the listening sockets sent without a state (to a binary that
/// speaks another state version), in a form that never changes: a line
/// `socket-activated 0|1`, then per socket, in the descriptors' order,
/// `<[[listener]] address> tls|plain`.
fn describe_listeners(server: &Server) -> Vec<u8> {
    let mut text = format!(
        "socket-activated {}\n",
        u8::from(server.life.socket_activated)
    );
    for listener in &server.listeners.list {
        let kind = if listener.is_tls() { "tls" } else { "plain" };
        text.push_str(&format!("{} {kind}\n", listener.address()));
    }
    text.into_bytes()
}

/// Reads [`describe_listeners`]'s text; what does not parse is unknown
/// (the socket's own address then counts).
fn read_listeners(payload: &[u8]) -> (bool, Vec<Option<(std::net::SocketAddr, bool)>>) {
    let text = String::from_utf8_lossy(payload);
    let mut lines = text.lines();
    let socket_activated = lines.next() == Some("socket-activated 1");
    let known = lines
        .map(|line| {
            let (address, kind) = line.split_once(' ')?;
            let tls = match kind {
                "tls" => true,
                "plain" => false,
                _ => return None,
            };
            Some((address.parse().ok()?, tls))
        })
        .collect();
    (socket_activated, known)
}

/// A stored state this binary does not read: every connection gets its
/// farewell.
fn refuse(envelope: Envelope<'_>, conns: Vec<OwnedFd>, why: &StateError) {
    warn!("handover: refusing the stored state ({why}); ending its connections the ordinary way");
    farewell_all(envelope.farewells, conns, true);
}

fn log_imported(imported: &Imported) {
    info!(
        "handover: taken over {} connection(s){}",
        imported.keys.len(),
        if imported.ended > 0 {
            format!(
                "; {} could not be and were closed the ordinary way",
                imported.ended
            )
        } else {
            String::new()
        }
    );
}

/// Stops a child that will not take over and reaps it; says how it ended.
/// A child that closed its end is usually exiting: it gets a moment to do
/// so, for its status to be reported.
fn end_child(mut child: Child) -> String {
    for _ in 0..EXIT_POLLS {
        match child.try_wait() {
            Ok(Some(status)) => return format!(" (it exited: {status})"),
            Ok(None) => std::thread::sleep(EXIT_POLL_INTERVAL),
            Err(_) => break,
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    " (it was stopped)".to_owned()
}
