//! The console's line editor: bytes from a terminal in, lines and echo out. Pure logic.
//!
//! Serial lines are noisy and terminals vary, so decoding is forgiving and output is
//! conservative. Stray control bytes, broken UTF-8 and unknown escape sequences are dropped;
//! a line never grows past [`MAX_LINE`]. With `ansi` the editor uses cursor movement (arrows,
//! history with up/down, Home/End, Ctrl-A/E/K/U/W); without it (a dumb terminal, a teletype,
//! a pipe) it only ever appends, erases with backspace-space-backspace, and never sends an
//! escape sequence.

/// Longest line in bytes (a pasted field-engineer token fits).
pub const MAX_LINE: usize = 3000;
/// Lines kept for up/down, `history` and `!N`.
pub const HISTORY: usize = 100;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Key {
    Char(char),
    Enter,
    Backspace,
    Delete,
    Left,
    Right,
    Up,
    Down,
    Home,
    End,
    /// Ctrl-C: drop the line.
    Interrupt,
    /// Ctrl-D: end the session on an empty line.
    Eof,
    /// Ctrl-U.
    KillLine,
    /// Ctrl-K.
    KillEnd,
    /// Ctrl-W.
    KillWord,
    /// Ctrl-L.
    Redraw,
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
enum Seq {
    #[default]
    Ground,
    Escape,
    Csi,
    Ss3,
}

/// Bytes to keys.
#[derive(Debug, Default)]
pub struct Decoder {
    seq: Seq,
    params: Vec<u8>,
    utf8: Vec<u8>,
    utf8_len: usize,
    last_cr: bool,
}

impl Decoder {
    pub fn feed(&mut self, b: u8, keys: &mut Vec<Key>) {
        let cr = std::mem::replace(&mut self.last_cr, b == b'\r');
        match self.seq {
            Seq::Escape => {
                self.seq = match b {
                    b'[' => Seq::Csi,
                    b'O' => Seq::Ss3,
                    0x1b => Seq::Escape,
                    _ => Seq::Ground,
                };
                self.params.clear();
                return;
            }
            Seq::Csi => {
                match b {
                    0x20..=0x3f if self.params.len() < 16 => self.params.push(b),
                    0x20..=0x3f => {}
                    0x40..=0x7e => {
                        self.seq = Seq::Ground;
                        let k = match (b, self.params.as_slice()) {
                            (b'A', _) => Some(Key::Up),
                            (b'B', _) => Some(Key::Down),
                            (b'C', _) => Some(Key::Right),
                            (b'D', _) => Some(Key::Left),
                            (b'H', _) | (b'~', b"1" | b"7") => Some(Key::Home),
                            (b'F', _) | (b'~', b"4" | b"8") => Some(Key::End),
                            (b'~', b"3") => Some(Key::Delete),
                            _ => None,
                        };
                        keys.extend(k);
                    }
                    // Anything else breaks the sequence: noise, dropped.
                    _ => self.seq = Seq::Ground,
                }
                return;
            }
            Seq::Ss3 => {
                self.seq = Seq::Ground;
                let k = match b {
                    b'A' => Some(Key::Up),
                    b'B' => Some(Key::Down),
                    b'C' => Some(Key::Right),
                    b'D' => Some(Key::Left),
                    b'H' => Some(Key::Home),
                    b'F' => Some(Key::End),
                    _ => None,
                };
                keys.extend(k);
                return;
            }
            Seq::Ground => {}
        }
        if b >= 0x80 {
            self.utf8_byte(b, keys);
            return;
        }
        self.utf8.clear();
        let k = match b {
            0x1b => {
                self.seq = Seq::Escape;
                None
            }
            b'\r' => Some(Key::Enter),
            // CR LF is one Enter.
            b'\n' if cr => None,
            b'\n' => Some(Key::Enter),
            0x7f | 0x08 => Some(Key::Backspace),
            0x01 => Some(Key::Home),
            0x05 => Some(Key::End),
            0x02 => Some(Key::Left),
            0x06 => Some(Key::Right),
            0x10 => Some(Key::Up),
            0x0e => Some(Key::Down),
            0x03 => Some(Key::Interrupt),
            0x04 => Some(Key::Eof),
            0x15 => Some(Key::KillLine),
            0x0b => Some(Key::KillEnd),
            0x17 => Some(Key::KillWord),
            0x0c => Some(Key::Redraw),
            b'\t' => Some(Key::Char(' ')),
            0x20..=0x7e => Some(Key::Char(b as char)),
            // Other control bytes are line noise.
            _ => None,
        };
        keys.extend(k);
    }

    fn utf8_byte(&mut self, b: u8, keys: &mut Vec<Key>) {
        if b & 0xc0 == 0x80 {
            // A continuation byte without a lead byte is noise.
            if self.utf8.is_empty() {
                return;
            }
            self.utf8.push(b);
            if self.utf8.len() == self.utf8_len {
                if let Some(c) = std::str::from_utf8(&self.utf8)
                    .ok()
                    .and_then(|s| s.chars().next())
                    .filter(|c| !c.is_control())
                {
                    keys.push(Key::Char(c));
                }
                self.utf8.clear();
            }
            return;
        }
        self.utf8.clear();
        self.utf8_len = match b {
            0xc2..=0xdf => 2,
            0xe0..=0xef => 3,
            0xf0..=0xf4 => 4,
            _ => return,
        };
        self.utf8.push(b);
    }
}

/// What a key did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// A complete line (without the newline).
    Line(String),
    /// A line that was longer than [`MAX_LINE`]; it was dropped.
    TooLong,
    /// Ctrl-D on an empty line.
    Eof,
}

#[derive(Debug)]
pub struct Editor {
    pub ansi: bool,
    /// Typed characters are not echoed (a pasted token).
    pub secret: bool,
    /// Echo typed characters (off when the input is a pipe, not a terminal).
    pub echo: bool,
    pub prompt: String,
    line: Vec<char>,
    bytes: usize,
    cursor: usize,
    overflow: bool,
    history: Vec<String>,
    /// Index into `history` while browsing with up/down, and the line being typed before.
    browse: Option<usize>,
    saved: Vec<char>,
}

impl Editor {
    pub fn new(ansi: bool) -> Self {
        Self {
            ansi,
            secret: false,
            echo: true,
            prompt: String::new(),
            line: Vec::new(),
            bytes: 0,
            cursor: 0,
            overflow: false,
            history: Vec::new(),
            browse: None,
            saved: Vec::new(),
        }
    }

    pub fn history(&self) -> &[String] {
        &self.history
    }

    /// Remembers a line for up/down and `!N` (consecutive duplicates once).
    pub fn remember(&mut self, line: &str) {
        if line.is_empty() || self.history.last().is_some_and(|l| l == line) {
            return;
        }
        if self.history.len() == HISTORY {
            self.history.remove(0);
        }
        self.history.push(line.to_owned());
    }

    /// Handles one key; echo and cursor movement go to `out`.
    pub fn key(&mut self, k: Key, out: &mut String) -> Option<Outcome> {
        match k {
            Key::Char(c) => self.insert(c, out),
            Key::Enter => return Some(self.enter(out)),
            Key::Backspace if self.cursor > 0 => {
                self.cursor -= 1;
                self.remove_at(self.cursor);
                // Nothing shows for a secret or on a pipe.
                if self.echo && !self.secret {
                    if self.cursor == self.line.len() {
                        out.push_str("\x08 \x08");
                    } else {
                        self.redraw(out);
                    }
                }
            }
            Key::Eof if self.line.is_empty() => return Some(Outcome::Eof),
            Key::Delete | Key::Eof if self.ansi && self.cursor < self.line.len() => {
                self.remove_at(self.cursor);
                self.redraw(out);
            }
            Key::Interrupt => {
                out.push_str("^C\n");
                self.clear();
                out.push_str(&self.prompt);
            }
            Key::KillLine if !self.ansi => {
                out.push_str("^U\n");
                self.clear();
                out.push_str(&self.prompt);
            }
            Key::KillLine => {
                self.line.drain(..self.cursor);
                self.cursor = 0;
                self.recount();
                self.redraw(out);
            }
            Key::KillWord if self.cursor > 0 => {
                let mut start = self.cursor;
                while start > 0 && self.line[start - 1] == ' ' {
                    start -= 1;
                }
                while start > 0 && self.line[start - 1] != ' ' {
                    start -= 1;
                }
                if self.ansi || self.cursor == self.line.len() {
                    let n = self.cursor - start;
                    self.line.drain(start..self.cursor);
                    self.cursor = start;
                    self.recount();
                    if self.ansi {
                        self.redraw(out);
                    } else if !self.secret {
                        out.push_str(&"\x08 \x08".repeat(n));
                    }
                }
            }
            Key::Redraw if !self.ansi => {
                out.push('\n');
                self.redraw(out);
            }
            _ if !self.ansi => {}
            Key::KillEnd => {
                self.line.truncate(self.cursor);
                self.recount();
                self.redraw(out);
            }
            Key::Left if self.cursor > 0 => {
                self.cursor -= 1;
                out.push_str("\x1b[D");
            }
            Key::Right if self.cursor < self.line.len() => {
                self.cursor += 1;
                out.push_str("\x1b[C");
            }
            Key::Home => {
                self.cursor = 0;
                self.redraw(out);
            }
            Key::End => {
                self.cursor = self.line.len();
                self.redraw(out);
            }
            Key::Up => self.browse_history(true, out),
            Key::Down => self.browse_history(false, out),
            Key::Redraw => {
                out.push_str("\x1b[H\x1b[2J");
                self.redraw(out);
            }
            _ => {}
        }
        None
    }

    fn insert(&mut self, c: char, out: &mut String) {
        if self.bytes + c.len_utf8() > MAX_LINE {
            if !self.overflow {
                out.push('\x07');
            }
            self.overflow = true;
            return;
        }
        self.line.insert(self.cursor, c);
        self.cursor += 1;
        self.bytes += c.len_utf8();
        if self.secret || !self.echo {
            return;
        }
        if self.cursor == self.line.len() {
            out.push(c);
        } else {
            self.redraw(out);
        }
    }

    fn enter(&mut self, out: &mut String) -> Outcome {
        out.push('\n');
        let line: String = self.line.iter().collect();
        let overflow = self.overflow;
        self.clear();
        if overflow {
            Outcome::TooLong
        } else {
            Outcome::Line(line)
        }
    }

    fn clear(&mut self) {
        self.line.clear();
        self.cursor = 0;
        self.bytes = 0;
        self.overflow = false;
        self.browse = None;
    }

    fn remove_at(&mut self, i: usize) {
        let c = self.line.remove(i);
        self.bytes -= c.len_utf8();
    }

    fn recount(&mut self) {
        self.bytes = self.line.iter().map(|c| c.len_utf8()).sum();
        self.cursor = self.cursor.min(self.line.len());
    }

    fn browse_history(&mut self, older: bool, out: &mut String) {
        let next = match (self.browse, older) {
            (None, true) if !self.history.is_empty() => {
                self.saved = self.line.clone();
                Some(self.history.len() - 1)
            }
            (Some(i), true) => Some(i.saturating_sub(1)),
            (Some(i), false) if i + 1 < self.history.len() => Some(i + 1),
            (Some(_), false) => {
                self.browse = None;
                self.line = std::mem::take(&mut self.saved);
                self.cursor = self.line.len();
                self.recount();
                self.redraw(out);
                return;
            }
            _ => return,
        };
        self.browse = next;
        if let Some(i) = next {
            self.line = self.history[i].chars().collect();
            self.cursor = self.line.len();
            self.recount();
            self.redraw(out);
        }
    }

    /// Draws the prompt and line again: in place with ANSI, on a new line without.
    pub fn redraw(&self, out: &mut String) {
        let shown: String = if self.secret {
            String::new()
        } else {
            self.line.iter().collect()
        };
        if !self.ansi {
            out.push_str(&self.prompt);
            out.push_str(&shown);
            return;
        }
        out.push('\r');
        out.push_str(&self.prompt);
        out.push_str(&shown);
        out.push_str("\x1b[K");
        let back = if self.secret {
            0
        } else {
            self.line.len() - self.cursor
        };
        if back > 0 {
            out.push_str(&format!("\x1b[{back}D"));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feeds `input` and returns (lines, echo).
    fn run(ed: &mut Editor, input: &[u8]) -> (Vec<Outcome>, String) {
        let mut dec = Decoder::default();
        let mut keys = Vec::new();
        for &b in input {
            dec.feed(b, &mut keys);
        }
        let mut out = String::new();
        let lines = keys
            .into_iter()
            .filter_map(|k| ed.key(k, &mut out))
            .collect();
        (lines, out)
    }

    fn line(s: &str) -> Outcome {
        Outcome::Line(s.into())
    }

    #[test]
    fn dumb_terminals_get_no_escape_codes() {
        let mut ed = Editor::new(false);
        ed.prompt = "> ".into();
        let (lines, out) = run(
            &mut ed,
            b"statsu\x08\x08us\r\nagents\x1b[A\x1b[D\r\x15ab\x03why x\n",
        );
        assert_eq!(lines, [line("status"), line("agents"), line("why x")]);
        assert!(!out.contains('\x1b'), "{out:?}");
        assert!(
            out.contains("\x08 \x08") && out.contains("^C\n> "),
            "{out:?}"
        );
    }

    #[test]
    fn ansi_editing_and_history() {
        let mut ed = Editor::new(true);
        ed.remember("status");
        ed.remember("agents");
        // Up twice recalls "status"; Home, then a typed prefix; left arrow and insert.
        let (lines, _) = run(&mut ed, b"\x1b[A\x1b[A\r");
        assert_eq!(lines, [line("status")]);
        let (lines, _) = run(&mut ed, b"logs\x1b[D\x1b[Dx\x1b[F!\r");
        assert_eq!(lines, [line("loxgs!")]);
        let (lines, _) = run(&mut ed, b"restart sensor\x17cam\r");
        assert_eq!(lines, [line("restart cam")]);
        let (lines, _) = run(&mut ed, b"abc\x1bOH\x0b\r");
        assert_eq!(lines, [line("")]);
        // Down past the newest entry returns to what was being typed.
        let (lines, _) = run(&mut ed, b"new\x1b[A\x1b[B\r");
        assert_eq!(lines, [line("new")]);
    }

    #[test]
    fn line_noise_is_dropped() {
        let mut ed = Editor::new(false);
        // NUL, bell, a lone continuation byte, a broken UTF-8 lead, an unknown CSI, C1 bytes.
        let (lines, _) = run(
            &mut ed,
            b"st\x00a\x07t\x80u\xc3s\x1b[99;1zx\x1b[12\x01\xff\xfe\r",
        );
        assert_eq!(lines, [line("statusx")]);
        let (lines, _) = run(&mut ed, "ok é\r".as_bytes());
        assert_eq!(lines, [line("ok é")]);
    }

    #[test]
    fn long_lines_are_refused_whole() {
        let mut ed = Editor::new(true);
        let mut input = vec![b'a'; MAX_LINE + 10];
        input.push(b'\r');
        let (lines, out) = run(&mut ed, &input);
        assert_eq!(lines, [Outcome::TooLong]);
        assert_eq!(out.matches('\x07').count(), 1);
        let (lines, _) = run(&mut ed, b"status\r");
        assert_eq!(lines, [line("status")]);
    }

    #[test]
    fn a_pipe_gets_no_echo() {
        let mut ed = Editor::new(false);
        ed.echo = false;
        let (lines, out) = run(&mut ed, b"statsu\x08\x08us\n");
        assert_eq!(lines, [line("status")]);
        assert_eq!(out, "\n");
    }

    #[test]
    fn secret_input_is_not_echoed_and_eof_ends() {
        let mut ed = Editor::new(false);
        ed.secret = true;
        let (lines, out) = run(&mut ed, b"{\"token\"}\r");
        assert_eq!(lines, [line("{\"token\"}")]);
        assert_eq!(out, "\n");
        ed.secret = false;
        let (lines, _) = run(&mut ed, b"\x04");
        assert_eq!(lines, [Outcome::Eof]);
    }
}
