//! The CLI side of the control socket.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

use super::{RESPONSE_MAX, Request, Response};

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error(
        "cannot reach the nanoclaw daemon at {path}: {source} (is `nanoclaw daemon` running? pass --socket PATH)"
    )]
    Connect {
        path: String,
        source: std::io::Error,
    },
    #[error("talking to the daemon: {0}")]
    Io(#[from] std::io::Error),
    #[error("the daemon's answer is not valid: {0}")]
    Decode(String),
}

/// Sends one request and reads one response. `timeout` bounds each read and write.
pub fn call(socket: &Path, req: &Request, timeout: Duration) -> Result<Response, ClientError> {
    let mut s = UnixStream::connect(socket).map_err(|e| ClientError::Connect {
        path: socket.display().to_string(),
        source: e,
    })?;
    s.set_read_timeout(Some(timeout))?;
    s.set_write_timeout(Some(timeout))?;
    let mut line = serde_json::to_vec(req).map_err(|e| ClientError::Decode(e.to_string()))?;
    line.push(b'\n');
    // The daemon may answer and close without reading the request (it refuses a non-root
    // peer before reading anything), so a failed write can still have an answer waiting in
    // our receive buffer: read it before reporting the write error.
    let written = s.write_all(&line);
    let mut buf = Vec::new();
    let read = BufReader::new(&s)
        .take(RESPONSE_MAX as u64 + 1)
        .read_until(b'\n', &mut buf);
    if let Err(e) = written
        && buf.is_empty()
    {
        return Err(e.into());
    }
    read?;
    if buf.len() > RESPONSE_MAX {
        return Err(ClientError::Decode(format!(
            "response longer than {RESPONSE_MAX} bytes"
        )));
    }
    serde_json::from_slice(&buf).map_err(|e| ClientError::Decode(e.to_string()))
}

/// [`call`] for callers that only need the answer or a message: the daemon's error message,
/// or why it could not be asked.
pub fn value(socket: &Path, req: &Request, timeout: Duration) -> Result<serde_json::Value, String> {
    match call(socket, req, timeout) {
        Ok(Response::Ok(v)) => Ok(v),
        Ok(Response::Error { message, .. }) => Err(message),
        Err(e) => Err(e.to_string()),
    }
}
