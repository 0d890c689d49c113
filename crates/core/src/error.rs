//! The core's error type. The napi layer maps it to JS errors in one place (`src/lib.rs`).

use std::fmt;

#[derive(Debug)]
pub enum Error {
    /// An option has a value the server cannot work with.
    InvalidOption(String),
    /// The listening address could not be bound (in use, not permitted, ...).
    Bind { addr: String, source: std::io::Error },
    /// An event or message from the API is not of the expected shape.
    InvalidInput(String),
    /// The server is closed or closing.
    Closed,
    /// Events wait to be queued for their sockets past `maxBacklog`: the event was not sent.
    Behind { backlog: usize, limit: usize },
    /// A connection the host accepted cannot be taken over (not a TCP socket, or a platform
    /// without descriptors to hand over); the reason says which.
    CannotAdopt(String),
    /// Anything else that failed inside the server.
    Internal(String),
}

impl Error {
    /// A stable name for the kind of error, for the host's code to act on (the message is for
    /// people and may change).
    pub fn code(&self) -> &'static str {
        match self {
            Error::InvalidOption(_) => "invalid-option",
            Error::Bind { .. } => "cannot-listen",
            Error::InvalidInput(_) => "invalid-input",
            Error::Closed => "closed",
            Error::Behind { .. } => "server-behind",
            Error::CannotAdopt(_) => "cannot-adopt",
            Error::Internal(_) => "internal",
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::InvalidOption(m) => write!(f, "invalid option: {m}"),
            Error::Bind { addr, source } => {
                if source.kind() == std::io::ErrorKind::AddrInUse {
                    write!(f, "cannot listen on {addr}: the address is already in use (EADDRINUSE); is another server running on this port?")
                } else {
                    write!(f, "cannot listen on {addr}: {source}")
                }
            }
            Error::InvalidInput(m) => write!(f, "{m}"),
            Error::Closed => write!(f, "the realtime server is closed"),
            Error::Behind { backlog, limit } => write!(
                f,
                "the realtime server is behind: {backlog} bytes of events wait to be written to their sockets (maxBacklog is {limit}); this event was not sent"
            ),
            Error::CannotAdopt(m) => write!(f, "cannot adopt the connection: {m}"),
            Error::Internal(m) => write!(f, "internal error: {m}"),
        }
    }
}

impl std::error::Error for Error {}
