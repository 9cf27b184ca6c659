//! A headless Chromium driven over the DevTools protocol on a pipe (`--remote-debugging-pipe`:
//! NUL-terminated JSON on fds 3 and 4), so the dashboard tests need no WebSocket client, no
//! Node.js and no downloaded browser: Debian's `chromium` and a few calls are enough.
//!
//! The browser resolves no name but localhost (`--host-resolver-rules`) and trusts exactly
//! the fleet's admin certificate (by its public key), so a test can reach nothing else.

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc::{Receiver, RecvTimeoutError, channel};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

pub struct Browser {
    child: Child,
    input: ChildStdin,
    messages: Receiver<Value>,
    next_id: u64,
    session: String,
    /// Page errors, console errors and CSP violations seen so far.
    pub errors: Vec<String>,
    _profile: tempfile::TempDir,
}

/// The Chromium binary (Debian's package).
pub fn chromium() -> PathBuf {
    ["/usr/bin/chromium", "/usr/bin/chromium-browser"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.exists())
        .expect("chromium is not installed (cargo xtask setup installs it)")
}

/// base64 of the SHA-256 of a PEM certificate's SubjectPublicKeyInfo, as
/// `--ignore-certificate-errors-spki-list` wants it (computed with openssl).
pub fn spki_hash(cert: &Path) -> String {
    let out = Command::new("sh")
        .arg("-c")
        .arg(
            "openssl x509 -in \"$1\" -pubkey -noout | openssl pkey -pubin -outform der \
             | openssl dgst -sha256 -binary | openssl base64 -A",
        )
        .arg("sh")
        .arg(cert)
        .output()
        .expect("openssl");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

impl Browser {
    /// Starts headless Chromium with one page of `width`×`height` CSS pixels, trusting the
    /// certificate whose key hash is `spki`.
    pub fn launch(spki: &str, width: u32, height: u32, log: &Path) -> Browser {
        let profile = tempfile::tempdir().expect("profile dir");
        let log = std::fs::File::create(log).expect("browser log");
        // fd 3 is what we write (stdin), fd 4 what we read (stdout); Chromium's own output
        // goes to the log.
        let mut child = Command::new("sh")
            .arg("-c")
            .arg("exec \"$0\" \"$@\" 3<&0 4>&1 0</dev/null 1>&2")
            .arg(chromium())
            .args([
                "--headless=new",
                "--no-sandbox",
                "--remote-debugging-pipe",
                "--no-first-run",
                "--no-default-browser-check",
                "--disable-gpu",
                "--disable-extensions",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-domain-reliability",
                "--disable-sync",
                "--no-pings",
                "--metrics-recording-only",
                "--mute-audio",
                "--hide-scrollbars",
                "--host-resolver-rules=MAP * ~NOTFOUND , EXCLUDE localhost",
                &format!("--ignore-certificate-errors-spki-list={spki}"),
                &format!("--window-size={width},{height}"),
                &format!("--user-data-dir={}", profile.path().display()),
                "about:blank",
            ])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(log)
            .spawn()
            .expect("starting chromium");
        let input = child.stdin.take().expect("stdin");
        let out = child.stdout.take().expect("stdout");
        let (tx, messages) = channel();
        std::thread::spawn(move || {
            let mut r = BufReader::new(out);
            let mut buf = Vec::new();
            while r.read_until(0, &mut buf).is_ok_and(|n| n > 0) {
                if buf.last() == Some(&0) {
                    buf.pop();
                }
                if let Ok(v) = serde_json::from_slice::<Value>(&buf)
                    && tx.send(v).is_err()
                {
                    return;
                }
                buf.clear();
            }
        });
        let mut b = Browser {
            child,
            input,
            messages,
            next_id: 0,
            session: String::new(),
            errors: Vec::new(),
            _profile: profile,
        };
        let targets = b.call_browser("Target.getTargets", json!({}));
        let page = targets["targetInfos"]
            .as_array()
            .and_then(|a| a.iter().find(|t| t["type"] == "page"))
            .map(|t| t["targetId"].clone())
            .unwrap_or_else(|| {
                b.call_browser("Target.createTarget", json!({"url": "about:blank"}))["targetId"]
                    .clone()
            });
        let att = b.call_browser(
            "Target.attachToTarget",
            json!({"targetId": page, "flatten": true}),
        );
        b.session = att["sessionId"].as_str().expect("session").to_owned();
        for m in ["Page.enable", "Runtime.enable", "Log.enable"] {
            b.call(m, json!({}));
        }
        b.viewport(width, height, false);
        b
    }

    fn send(&mut self, method: &str, params: Value, session: bool) -> u64 {
        self.try_send(method, params, session)
            .unwrap_or_else(|e| panic!("writing {method} to chromium: {e}"))
    }

    fn try_send(&mut self, method: &str, params: Value, session: bool) -> std::io::Result<u64> {
        self.next_id += 1;
        let mut msg = json!({"id": self.next_id, "method": method, "params": params});
        if session {
            msg["sessionId"] = json!(self.session);
        }
        let mut bytes = msg.to_string().into_bytes();
        bytes.push(0);
        self.input.write_all(&bytes)?;
        Ok(self.next_id)
    }

    /// Waits for the answer to `id`, noting errors from the events that arrive meanwhile.
    fn answer(&mut self, id: u64, method: &str) -> Value {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let m = match self.messages.recv_timeout(left) {
                Ok(m) => m,
                Err(RecvTimeoutError::Timeout) => panic!("chromium did not answer {method}"),
                Err(RecvTimeoutError::Disconnected) => panic!("chromium exited during {method}"),
            };
            if m["id"] == id {
                if let Some(e) = m.get("error") {
                    panic!("{method}: {e}");
                }
                return m["result"].clone();
            }
            self.note(&m);
        }
    }

    fn note(&mut self, m: &Value) {
        let p = &m["params"];
        match m["method"].as_str() {
            Some("Runtime.exceptionThrown") => self.errors.push(format!(
                "exception: {}",
                p["exceptionDetails"]["exception"]["description"]
                    .as_str()
                    .or(p["exceptionDetails"]["text"].as_str())
                    .unwrap_or_default()
            )),
            Some("Log.entryAdded") if p["entry"]["level"] == "error" => {
                let text = p["entry"]["text"].as_str().unwrap_or_default();
                // A 401 while logged out, or a refused form, is the page working as meant.
                if !text.contains("status of 4") {
                    self.errors.push(format!("log: {text}"));
                }
            }
            Some("Runtime.consoleAPICalled") if p["type"] == "error" => {
                self.errors.push(format!("console.error: {}", p["args"]));
            }
            _ => {}
        }
    }

    fn call_browser(&mut self, method: &str, params: Value) -> Value {
        let id = self.send(method, params, false);
        self.answer(id, method)
    }

    /// One DevTools command on the page.
    pub fn call(&mut self, method: &str, params: Value) -> Value {
        let id = self.send(method, params, true);
        self.answer(id, method)
    }

    /// Sets the page's size; `mobile` emulates a phone (touch, device scale 3).
    pub fn viewport(&mut self, width: u32, height: u32, mobile: bool) {
        self.call(
            "Emulation.setDeviceMetricsOverride",
            json!({"width": width, "height": height, "mobile": mobile,
                   "deviceScaleFactor": if mobile { 3 } else { 1 }}),
        );
    }

    /// Loads `url` and waits for its load event.
    pub fn goto(&mut self, url: &str) {
        self.call("Page.navigate", json!({"url": url}));
        self.wait_for("document.readyState === 'complete'", "the page to load");
    }

    /// Evaluates `js` in the page (promises awaited) and returns its value.
    pub fn eval(&mut self, js: &str) -> Value {
        let r = self.call(
            "Runtime.evaluate",
            json!({"expression": js, "returnByValue": true, "awaitPromise": true}),
        );
        if let Some(e) = r.get("exceptionDetails") {
            panic!("{js}: {e}");
        }
        r["result"]["value"].clone()
    }

    /// Polls `js` until it is truthy (up to 60 s) and returns that value; on timeout panics
    /// with `what` and the page's text.
    pub fn wait_for(&mut self, js: &str, what: &str) -> Value {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let v = self.eval(js);
            let truthy = match &v {
                Value::Null => false,
                Value::Bool(b) => *b,
                Value::String(s) => !s.is_empty(),
                Value::Number(n) => n.as_f64() != Some(0.0),
                _ => true,
            };
            if truthy {
                return v;
            }
            if Instant::now() > deadline {
                let text = self.eval("document.body ? document.body.innerText : ''");
                panic!("timed out waiting for {what}; the page says:\n{text}");
            }
            // Drain events meanwhile, so errors are noted as they happen.
            while let Ok(m) = self.messages.try_recv() {
                self.note(&m);
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Sets an input's value as typing would (input and change events fire).
    pub fn fill(&mut self, selector: &str, value: &str) {
        let js = format!(
            "(() => {{ const e = document.querySelector({sel}); if (!e) return false; \
             e.focus(); e.value = {val}; \
             e.dispatchEvent(new Event('input', {{bubbles: true}})); \
             e.dispatchEvent(new Event('change', {{bubbles: true}})); return true; }})()",
            sel = json!(selector),
            val = json!(value)
        );
        assert_eq!(self.eval(&js), json!(true), "no element {selector}");
    }

    /// Clicks the element `selector`.
    pub fn click(&mut self, selector: &str) {
        let js = format!(
            "(() => {{ const e = document.querySelector({}); if (!e) return false; \
             e.click(); return true; }})()",
            json!(selector)
        );
        assert_eq!(self.eval(&js), json!(true), "no element {selector}");
    }

    /// The text of the element `selector` (empty when there is none).
    pub fn text(&mut self, selector: &str) -> String {
        let js = format!(
            "(() => {{ const e = document.querySelector({}); return e ? e.textContent : ''; }})()",
            json!(selector)
        );
        self.eval(&js)
            .as_str()
            .unwrap_or_default()
            .trim()
            .to_owned()
    }

    /// A PNG of the page as it is now (the whole page when `full`).
    pub fn screenshot(&mut self, path: &Path, full: bool) {
        let r = self.call(
            "Page.captureScreenshot",
            json!({"format": "png", "captureBeyondViewport": full}),
        );
        let data = r["data"].as_str().expect("screenshot data");
        let bytes = base64_decode(data);
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).expect("screenshot dir");
        }
        std::fs::write(path, bytes).expect("writing the screenshot");
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        // Never panics: a browser that died already must not turn a test failure into an
        // abort.
        let _ = self.try_send("Browser.close", json!({}), false);
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if matches!(self.child.try_wait(), Ok(Some(_))) {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Standard base64 (what DevTools sends screenshots in).
fn base64_decode(s: &str) -> Vec<u8> {
    let val = |c: u8| -> Option<u32> {
        Some(match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => return None,
        } as u32)
    };
    let mut out = Vec::with_capacity(s.len() * 3 / 4);
    let (mut acc, mut bits) = (0u32, 0);
    for c in s.bytes().filter_map(val) {
        acc = (acc << 6) | c;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn base64() {
        assert_eq!(super::base64_decode("aGVsbG8="), b"hello");
        assert_eq!(super::base64_decode("aGk="), b"hi");
    }
}
