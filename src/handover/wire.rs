//! The channel between the old and the new process.
