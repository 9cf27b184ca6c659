//! What can go wrong talking to the supervisor. A refusal keeps the supervisor's reason
//! verbatim and its `code`, so an agent can branch on the kind and still show the text.

use std::fmt;

/// The kind of a refusal: the answer's `code` field (sdk/CONFORMANCE.md).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Code {
    /// `bad_request`: the request itself is wrong (a bad topic, an unknown field).
    BadRequest,
    /// `denied`: the policy does not allow it (no channel, a grant token refused).
    Denied,
    /// `unavailable`: the supervisor cannot do it now (outbox full, receiver's queue full).
    Unavailable,
    /// `limit`: a socket limit was crossed.
    Limit,
    /// A code this SDK does not know, or none at all (empty): a plain supervisor error.
    Other(String),
}

impl Code {
    /// The code of an answer's `code` field (absent or unknown: [`Code::Other`]).
    pub fn from_wire(code: Option<&str>) -> Self {
        match code {
            Some("bad_request") => Self::BadRequest,
            Some("denied") => Self::Denied,
            Some("unavailable") => Self::Unavailable,
            Some("limit") => Self::Limit,
            other => Self::Other(other.unwrap_or_default().to_owned()),
        }
    }

    /// The wire name (`bad_request`, ...; an unknown code as it came, empty when absent).
    pub fn as_str(&self) -> &str {
        match self {
            Self::BadRequest => "bad_request",
            Self::Denied => "denied",
            Self::Unavailable => "unavailable",
            Self::Limit => "limit",
            Self::Other(s) => s,
        }
    }
}

impl fmt::Display for Code {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An error from a [`Client`](crate::Client) call.
#[derive(Debug)]
pub enum Error {
    /// The supervisor refused the request; `reason` is its `error` text, unchanged.
    Supervisor { code: Code, reason: String },
    /// No connection: the socket is missing or refused us, or the connection dropped while
    /// the call was in flight (the next call reconnects). The text says which.
    Disconnected(String),
    /// No answer within 10 s.
    Timeout,
    /// The supervisor's answer does not have the expected shape.
    Protocol(String),
    /// A local failure: the data does not serialize to JSON, or a thread cannot start.
    Io(std::io::Error),
}

impl Error {
    /// The refusal's code, when the supervisor refused.
    pub fn code(&self) -> Option<&Code> {
        match self {
            Self::Supervisor { code, .. } => Some(code),
            _ => None,
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Supervisor { code, reason } if code.as_str().is_empty() => {
                write!(f, "the supervisor refused: {reason}")
            }
            Self::Supervisor { code, reason } => {
                write!(f, "the supervisor refused ({code}): {reason}")
            }
            Self::Disconnected(why) => write!(f, "not connected to the supervisor: {why}"),
            Self::Timeout => f.write_str("the supervisor did not answer within 10 s"),
            Self::Protocol(what) => write!(f, "unexpected answer from the supervisor: {what}"),
            Self::Io(e) => write!(f, "{e}"),
        }
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Self::Io(e) => Some(e),
            _ => None,
        }
    }
}

impl From<std::io::Error> for Error {
    fn from(e: std::io::Error) -> Self {
        Self::Io(e)
    }
}

/// The result of a [`Client`](crate::Client) call.
pub type Result<T, E = Error> = std::result::Result<T, E>;
