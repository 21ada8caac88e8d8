//! The versioned state handed to a new process.
