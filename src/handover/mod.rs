//! Restarting without dropping a client: the listening sockets and every
//! connection that can be carried over go to a new process, with the state
//! it needs to carry on serving them.
//!
//! Owns: the versioned state format ([`state`]) and the channel the old and
//! the new process talk over ([`wire`]).
//! Must never: touch a connection's protocol state itself (the server
//! exports and imports it), or block the event loop while it still serves.

pub mod state;
pub mod wire;
