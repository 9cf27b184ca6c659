//! `nanoclaw console`: the field engineer's console on a serial port or a shell.
//!
//! It runs on a tty (`--tty /dev/ttyS0 --baud 115200`, or stdin/stdout behind getty or ssh)
//! and speaks the CLI's commands over the control socket, wrapped as console requests so the
//! daemon audits every line with who ran it and refuses state changes unless the session was
//! unlocked with a fleet-signed field-engineer token (`policy::engineer`). The daemon checks
//! the token again on every change, so expiry is enforced mid-session; an idle session locks.
//! It gives no shell: getty can run it on the serial port instead of `login`.

pub mod edit;
mod term;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::cli;
use crate::control::{Request, client, exit};
use edit::{Decoder, Editor, Outcome};

const USAGE: &str = "usage: nanoclaw console [--tty DEVICE] [--baud N] [--socket PATH] [--idle SECONDS] [--term ansi|dumb]";

const HELP: &str = "commands (the same as the nanoclaw CLI; add --json for JSON):
  status                  posture, policy, agents and fleet sync
  agents                  every agent and its state
  why AGENT               why an agent is not running, and what would allow it
  logs AGENT [-n N]       the agent's latest output
  audit [--agent A] [-n N]
                          newest audit records
  battery                 power source, charge, tier, energy per agent
needs `unlock` (a field-engineer token from the fleet):
  start|stop|restart AGENT, clear AGENT, rollback AGENT, install FILE,
  reload, policy reload, policy apply FILE, sync, sim set ...
console:
  unlock [TOKEN|@FILE]    unlock changes (without TOKEN: paste it, not echoed)
  lock                    drop the unlock
  whoami                  who is unlocked, and until when
  history, !!, !N         earlier lines
  help                    this text
  exit                    end the session (Ctrl-D too)
keys: Backspace, Ctrl-U (line), Ctrl-W (word), Ctrl-C (drop the line);
      with an ANSI terminal also arrows, Home/End, Ctrl-A/E/K, Up/Down for history";

struct Opts {
    tty: Option<PathBuf>,
    baud: Option<u32>,
    socket: PathBuf,
    idle: Duration,
    ansi: Option<bool>,
}

fn parse(args: &[String]) -> Result<Opts, String> {
    let mut o = Opts {
        tty: None,
        baud: None,
        socket: std::env::var_os("NANOCLAW_SOCKET")
            .map_or_else(|| PathBuf::from(cli::DEFAULT_SOCKET), PathBuf::from),
        idle: Duration::from_secs(300),
        ansi: None,
    };
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let mut v = || it.next().ok_or_else(|| format!("{a} needs a value"));
        match a.as_str() {
            "--tty" => o.tty = Some(PathBuf::from(v()?)),
            "--baud" => {
                let b = v()?;
                o.baud = Some(
                    b.parse()
                        .map_err(|_| format!("--baud wants a number, got {b:?}"))?,
                );
            }
            "--socket" => o.socket = PathBuf::from(v()?),
            "--idle" => {
                let s = v()?;
                let n: u64 = s
                    .parse()
                    .ok()
                    .filter(|n| (1..=86_400).contains(n))
                    .ok_or_else(|| format!("--idle wants 1 to 86400 seconds, got {s:?}"))?;
                o.idle = Duration::from_secs(n);
            }
            "--term" => {
                o.ansi = Some(match v()?.as_str() {
                    "ansi" => true,
                    "dumb" => false,
                    t => return Err(format!("--term is ansi or dumb, not {t:?}")),
                })
            }
            other => return Err(format!("unexpected {other:?}")),
        }
    }
    if o.baud.is_some() && o.tty.is_none() {
        return Err("--baud needs --tty".into());
    }
    Ok(o)
}

/// Whether `TERM` names a terminal that understands ANSI cursor movement.
fn ansi_from_env() -> bool {
    std::env::var("TERM").is_ok_and(|t| !t.is_empty() && t != "dumb" && !t.starts_with("unknown"))
}

pub fn main(args: &[String]) -> u8 {
    let o = match parse(args) {
        Ok(o) => o,
        Err(e) => {
            crate::log!("nanoclaw console: {e}\n{USAGE}");
            return exit::USAGE;
        }
    };
    // Writes to a hung-up terminal must fail (EIO/EPIPE), not kill the session silently: the
    // hangup is audited.
    crate::sys::ignore_signal(libc::SIGPIPE);
    crate::sys::ignore_signal(libc::SIGHUP);
    let term = match term::Term::open(o.tty.as_deref(), o.baud) {
        Ok(t) => t,
        Err(e) => {
            crate::log!("nanoclaw console: {e}");
            return exit::FAILED;
        }
    };
    let ansi = o.ansi.unwrap_or_else(|| term.is_tty() && ansi_from_env());
    let mut editor = Editor::new(ansi);
    // A pipe has no terminal that would show the echo.
    editor.echo = term.is_tty();
    let mut s = Session {
        decoder: Decoder::default(),
        pending: std::collections::VecDeque::new(),
        editor,
        term,
        socket: o.socket,
        token: None,
        idle: o.idle,
    };
    s.run()
}

struct Session {
    term: term::Term,
    decoder: Decoder,
    /// Keys typed ahead of the line being handled (a paste, a script on the serial line).
    pending: std::collections::VecDeque<edit::Key>,
    editor: Editor,
    socket: PathBuf,
    /// The pasted token and who it names, after a successful `unlock`.
    token: Option<(String, String)>,
    idle: Duration,
}

/// How the session ended.
enum End {
    Exit,
    Hangup,
}

impl Session {
    fn call(&self, req: &Request) -> Result<Value, String> {
        let timeout = crate::control::server::CONNECTION_MAX + Duration::from_secs(5);
        client::value(&self.socket, req, timeout)
    }

    /// Audits a console event that runs nothing (lock, hangup), as whoever is unlocked;
    /// best effort.
    fn note(&self, line: &str) {
        let _ = self.call(&Request::Console {
            tty: self.term.name.clone(),
            token: self.token.as_ref().map(|(t, _)| t.clone()),
            line: line.to_owned(),
            request: None,
        });
    }

    /// Drops the unlock, audited as `line` by whoever held it; false if it was locked.
    fn lock(&mut self, line: &str) -> bool {
        if self.token.is_none() {
            return false;
        }
        self.note(line);
        self.token = None;
        true
    }

    fn prompt(&mut self, device: &str) {
        self.editor.prompt = match &self.token {
            Some((_, who)) => format!("{device} ({who})# "),
            None => format!("{device}> "),
        };
    }

    fn run(&mut self) -> u8 {
        let device = self.banner();
        self.prompt(&device);
        let mut out = self.editor.prompt.clone();
        let end = loop {
            if self.term.write(&out).is_err() {
                break End::Hangup;
            }
            out.clear();
            match self.read_line(&mut out) {
                Err(end) => break end,
                Ok(None) => {}
                Ok(Some(line)) => {
                    if self.term.write(&out).is_err() {
                        break End::Hangup;
                    }
                    out.clear();
                    if let Err(end) = self.execute(&line, &mut out) {
                        break end;
                    }
                }
            }
            self.prompt(&device);
            out.push_str(&self.editor.prompt);
        };
        match end {
            End::Exit => {
                self.note("exit");
                let _ = self.term.write("bye\n");
            }
            End::Hangup => self.note("hangup"),
        }
        exit::OK
    }

    /// One summary line a field engineer understands in seconds; returns the device name.
    fn banner(&mut self) -> String {
        let text = match self.call(&Request::Status) {
            Ok(v) => {
                let device = v["device_id"].as_str().unwrap_or("nanoclaw").to_owned();
                let agents = v["agents"]
                    .as_object()
                    .map(|m| {
                        m.iter()
                            .map(|(k, n)| format!("{n} {k}"))
                            .collect::<Vec<_>>()
                            .join(", ")
                    })
                    .unwrap_or_default();
                let warn = if v["posture"]["unsigned_bundles_allowed"] == Value::Bool(true) {
                    "\nWARNING: unsigned bundles are allowed on this device"
                } else {
                    ""
                };
                let text = format!(
                    "nanoclaw {} console on {device} (board {}), policy version {}, agents: {}{warn}\nread-only until `unlock`; type help\n",
                    v["version"].as_str().unwrap_or("?"),
                    v["board"].as_str().unwrap_or("?"),
                    v["policy_version"],
                    if agents.is_empty() {
                        "none".into()
                    } else {
                        agents
                    },
                );
                let _ = self.term.write(&text);
                return device;
            }
            Err(e) => format!("nanoclaw console: the daemon does not answer: {e}\n"),
        };
        let _ = self.term.write(&text);
        "nanoclaw".into()
    }

    /// Reads keys until a line is complete. `Ok(None)`: nothing to run (idle lock).
    fn read_line(&mut self, out: &mut String) -> Result<Option<String>, End> {
        let mut last = Instant::now();
        loop {
            while let Some(k) = self.pending.pop_front() {
                match self.editor.key(k, out) {
                    None => {}
                    Some(Outcome::Eof) => return Err(End::Exit),
                    Some(Outcome::TooLong) => {
                        out.push_str(&format!(
                            "line longer than {} bytes: ignored\n",
                            edit::MAX_LINE
                        ));
                        return Ok(None);
                    }
                    Some(Outcome::Line(l)) => return Ok(Some(l)),
                }
            }
            if self.term.write(out).is_err() {
                return Err(End::Hangup);
            }
            out.clear();
            let left = self.idle.saturating_sub(last.elapsed());
            let mut buf = [0u8; 256];
            let n = match self.term.read(&mut buf, left) {
                Ok(Some(0)) | Err(_) => return Err(End::Hangup),
                Ok(Some(n)) => n,
                Ok(None) => {
                    last = Instant::now();
                    if self.lock(&format!("lock (idle {} s)", self.idle.as_secs())) {
                        out.push_str(&format!("\nlocked after {} s idle\n", self.idle.as_secs()));
                        return Ok(None);
                    }
                    continue;
                }
            };
            last = Instant::now();
            let mut keys = Vec::new();
            for &b in &buf[..n] {
                self.decoder.feed(b, &mut keys);
            }
            self.pending.extend(keys);
        }
    }

    /// Runs one line; its output goes to `out`.
    fn execute(&mut self, line: &str, out: &mut String) -> Result<(), End> {
        let mut line = line.trim().to_owned();
        if line.is_empty() {
            return Ok(());
        }
        // History recall: `!!` and `!N`.
        if let Some(r) = line.strip_prefix('!') {
            let h = self.editor.history();
            let found = match r {
                "!" => h.last(),
                n => n
                    .parse::<usize>()
                    .ok()
                    .and_then(|n| h.get(n.wrapping_sub(1))),
            };
            match found {
                Some(l) => {
                    line = l.clone();
                    out.push_str(&format!("{line}\n"));
                }
                None => {
                    out.push_str("no such history entry (see `history`)\n");
                    return Ok(());
                }
            }
        }
        let words: Vec<String> = line.split_whitespace().map(str::to_owned).collect();
        // Tokens never go into the history.
        if words[0] != "unlock" {
            self.editor.remember(&line);
        }
        match words[0].as_str() {
            "help" | "?" => {
                out.push_str(HELP);
                out.push('\n');
            }
            "exit" | "quit" | "logout" => return Err(End::Exit),
            "history" => {
                for (i, l) in self.editor.history().iter().enumerate() {
                    out.push_str(&format!("{:>4}  {l}\n", i + 1));
                }
            }
            "whoami" => out.push_str(&match &self.token {
                Some((_, who)) => format!("{who} (unlocked)\n"),
                None => "nobody: read-only until `unlock`\n".into(),
            }),
            "lock" => {
                self.lock("lock");
                out.push_str("locked\n");
            }
            "unlock" => self.unlock(&words[1..], out)?,
            _ => self.command(&line, &words, out),
        }
        Ok(())
    }

    fn unlock(&mut self, args: &[String], out: &mut String) -> Result<(), End> {
        let token = match args {
            [] => {
                out.push_str("paste the token, then Enter (not echoed): ");
                if self.term.write(out).is_err() {
                    return Err(End::Hangup);
                }
                out.clear();
                self.editor.secret = true;
                let saved = std::mem::take(&mut self.editor.prompt);
                let read = self.read_line(out);
                self.editor.secret = false;
                self.editor.prompt = saved;
                match read? {
                    Some(t) => t,
                    None => return Ok(()),
                }
            }
            [t] if t.starts_with('@') => {
                match crate::sigstore::read_capped(
                    std::path::Path::new(&t[1..]),
                    crate::policy::engineer::MAX_TOKEN_BYTES as u64,
                    "token",
                ) {
                    Ok(text) => text,
                    Err(e) => {
                        out.push_str(&format!("unlock: {e}\n"));
                        return Ok(());
                    }
                }
            }
            _ => args.join(" "),
        };
        let req = Request::Unlock {
            tty: self.term.name.clone(),
            token: token.trim().to_owned(),
        };
        match self.call(&req) {
            Ok(v) => {
                let who = v["engineer"].as_str().unwrap_or("?").to_owned();
                out.push_str(&format!(
                    "unlocked for {who} until {}\n",
                    v["not_after"]
                        .as_u64()
                        .map_or_else(|| "?".into(), |s| cli::utc(s * 1000))
                ));
                self.token = Some((token.trim().to_owned(), who));
            }
            Err(e) => out.push_str(&format!("{e}\n")),
        }
        Ok(())
    }

    /// A CLI command, sent as a console request.
    fn command(&mut self, line: &str, words: &[String], out: &mut String) {
        if words.iter().any(|w| w == "--socket") {
            out.push_str("--socket is not available on the console\n");
            return;
        }
        let (req, json) = match cli::parse(words) {
            Ok(cli::Command::Query { req, json, .. }) => (req, json),
            Ok(_) => {
                out.push_str(&format!(
                    "`{}` is not available on the console (type help)\n",
                    words[0]
                ));
                return;
            }
            Err(e) => {
                out.push_str(&format!("{e} (type help)\n"));
                return;
            }
        };
        let wrapped = Request::Console {
            tty: self.term.name.clone(),
            token: self.token.as_ref().map(|(t, _)| t.clone()),
            line: line.to_owned(),
            request: Some(Box::new(req.clone())),
        };
        match self.call(&wrapped) {
            Ok(v) if json => {
                out.push_str(&serde_json::to_string_pretty(&v).unwrap_or_default());
                out.push('\n');
            }
            Ok(v) => out.push_str(&cli::human(&req, &v)),
            Err(e) => out.push_str(&format!("error: {e}\n")),
        }
    }
}
