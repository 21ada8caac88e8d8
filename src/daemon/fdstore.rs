//! The service manager's file descriptor store.
