//! systemd's service notification protocol, without libsystemd: `READY=1` once the control
//! socket serves (for `Type=notify`), `WATCHDOG=1` from the event loop every half of
//! `$WATCHDOG_USEC` (a stuck loop stops the pings, so systemd restarts the service), and
//! `STOPPING=1` when a shutdown begins. Each is one datagram to `$NOTIFY_SOCKET`, a path or
//! `@name` in the abstract namespace; without that variable nothing is sent.

use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::time::Duration;

pub struct Notifier {
    addr: SocketAddr,
    sock: UnixDatagram,
}

impl Notifier {
    /// The notifier `$NOTIFY_SOCKET` asks for, if any (an unusable value is reported once).
    pub fn from_env() -> Option<Notifier> {
        let path = std::env::var_os("NOTIFY_SOCKET")?;
        let bytes = path.as_encoded_bytes();
        let addr = match bytes.strip_prefix(b"@") {
            Some(name) => {
                use std::os::linux::net::SocketAddrExt;
                SocketAddr::from_abstract_name(name)
            }
            None => SocketAddr::from_pathname(&path),
        };
        // Non-blocking: a service manager that stops reading must never stall the event loop
        // (a full receive queue drops the notification instead).
        let sock = UnixDatagram::unbound().and_then(|s| s.set_nonblocking(true).map(|()| s));
        match (addr, sock) {
            (Ok(addr), Ok(sock)) => Some(Notifier { addr, sock }),
            (Err(e), _) | (_, Err(e)) => {
                crate::log!(
                    "nanoclaw: NOTIFY_SOCKET {path:?}: {e}; not notifying the service manager"
                );
                None
            }
        }
    }

    /// Sends one notification (`READY=1`, `WATCHDOG=1`, ...); failures are not fatal, and a
    /// full queue (nobody reading) is not worth a line per ping.
    pub fn send(&self, state: &str) {
        match self.sock.send_to_addr(state.as_bytes(), &self.addr) {
            Err(e) if e.kind() != std::io::ErrorKind::WouldBlock => {
                crate::log!("nanoclaw: notifying the service manager ({state}): {e}");
            }
            _ => {}
        }
    }
}

/// How often to ping the watchdog: half of `$WATCHDOG_USEC`, when it is meant for this
/// process (`$WATCHDOG_PID` unset or ours).
pub fn watchdog_interval() -> Option<Duration> {
    let pid_ok =
        std::env::var("WATCHDOG_PID").map_or(true, |p| p.trim() == std::process::id().to_string());
    let usec: u64 = std::env::var("WATCHDOG_USEC").ok()?.trim().parse().ok()?;
    (pid_ok && usec > 0).then(|| Duration::from_micros(usec / 2))
}
