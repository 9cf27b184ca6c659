//! The console's terminal: a serial device or pty it opens, or stdin/stdout.
//!
//! A terminal is put in raw mode (the editor echoes; Ctrl-C is a key, not a signal) with
//! output post-processing kept on, so `\n` goes out as CR LF on any terminal. The original
//! settings come back when the session ends. A pipe is used as it is: no echo, lines in.

use std::os::fd::{AsFd, OwnedFd};
use std::path::Path;
use std::time::Duration;

use rustix::event::{PollFd, PollFlags, Timespec, poll};
use rustix::termios::{self, OptionalActions, OutputModes, Termios};

pub struct Term {
    input: OwnedFd,
    output: OwnedFd,
    /// The settings to restore (a terminal), `None` for a pipe.
    saved: Option<Termios>,
    /// What the audit calls this console (`/dev/ttyS0`, `/dev/pts/3`, `stdin`).
    pub name: String,
}

fn raw(fd: impl AsFd, baud: Option<u32>) -> std::io::Result<Termios> {
    let saved = termios::tcgetattr(&fd)?;
    let mut t = saved.clone();
    t.make_raw();
    t.output_modes |= OutputModes::OPOST | OutputModes::ONLCR;
    if let Some(b) = baud {
        t.set_speed(b).map_err(|e| {
            std::io::Error::new(e.kind(), format!("baud rate {b} is not supported: {e}"))
        })?;
    }
    termios::tcsetattr(&fd, OptionalActions::Now, &t)?;
    Ok(saved)
}

impl Term {
    pub fn open(tty: Option<&Path>, baud: Option<u32>) -> Result<Term, String> {
        use rustix::fs::{Mode, OFlags};
        match tty {
            Some(path) => {
                let fd = rustix::fs::open(
                    path,
                    OFlags::RDWR | OFlags::NOCTTY | OFlags::CLOEXEC,
                    Mode::empty(),
                )
                .map_err(|e| format!("{}: {e}", path.display()))?;
                if !termios::isatty(&fd) {
                    return Err(format!("{} is not a terminal", path.display()));
                }
                let saved = raw(&fd, baud).map_err(|e| format!("{}: {e}", path.display()))?;
                let output = rustix::io::dup(&fd).map_err(|e| e.to_string())?;
                Ok(Term {
                    input: fd,
                    output,
                    saved: Some(saved),
                    name: path.display().to_string(),
                })
            }
            None => {
                let dup = |fd| rustix::io::dup(fd).map_err(|e| format!("stdio: {e}"));
                let input = dup(rustix::stdio::stdin())?;
                let output = dup(rustix::stdio::stdout())?;
                let (saved, name) = if termios::isatty(&input) {
                    let name = termios::ttyname(&input, Vec::new())
                        .map_or_else(|_| "stdin".into(), |n| n.to_string_lossy().into_owned());
                    (
                        Some(raw(&input, None).map_err(|e| format!("{name}: {e}"))?),
                        name,
                    )
                } else {
                    (None, "stdin".into())
                };
                Ok(Term {
                    input,
                    output,
                    saved,
                    name,
                })
            }
        }
    }

    pub fn is_tty(&self) -> bool {
        self.saved.is_some()
    }

    /// Reads what is there; `Ok(None)` when nothing came within `timeout`, `Ok(Some(0))` on
    /// end of input or hangup.
    pub fn read(&self, buf: &mut [u8], timeout: Duration) -> std::io::Result<Option<usize>> {
        let ts = Timespec {
            tv_sec: timeout.as_secs() as i64,
            tv_nsec: i64::from(timeout.subsec_nanos()),
        };
        let mut fds = [PollFd::new(&self.input, PollFlags::IN)];
        match poll(&mut fds, Some(&ts)) {
            Ok(0) => return Ok(None),
            Ok(_) => {}
            Err(rustix::io::Errno::INTR) => return Ok(None),
            Err(e) => return Err(e.into()),
        }
        let ev = fds[0].revents();
        if !ev.contains(PollFlags::IN) && ev.intersects(PollFlags::HUP | PollFlags::ERR) {
            return Ok(Some(0));
        }
        match rustix::io::read(&self.input, buf) {
            Ok(n) => Ok(Some(n)),
            Err(rustix::io::Errno::INTR | rustix::io::Errno::AGAIN) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    pub fn write(&self, s: &str) -> std::io::Result<()> {
        let mut b = s.as_bytes();
        while !b.is_empty() {
            match rustix::io::write(&self.output, b) {
                Ok(0) => return Err(std::io::ErrorKind::WriteZero.into()),
                Ok(n) => b = &b[n..],
                Err(rustix::io::Errno::INTR) => {}
                Err(e) => return Err(e.into()),
            }
        }
        Ok(())
    }
}

impl Drop for Term {
    fn drop(&mut self) {
        if let Some(t) = &self.saved {
            let _ = termios::tcsetattr(&self.input, OptionalActions::Drain, t);
        }
    }
}
