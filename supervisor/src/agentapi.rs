//! The agent socket protocol, parsing only: newline-delimited JSON requests, each an object
//! with an `op`, an optional `id` echoed in the answer, and the op's own fields (unknown
//! fields are refused). docs/AGENT_API.md is the contract; `daemon::agentsock` does the I/O.

use serde::Deserialize;
use serde_json::{Map, Value};

/// Longest request line, in bytes (a grant token or an outbox record fits easily).
pub const MAX_LINE: usize = 64 * 1024;
/// Protocol version reported by `hello`.
pub const PROTOCOL: u32 = 1;

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case", deny_unknown_fields)]
pub enum Op {
    Hello {
        #[serde(default)]
        protocol: Option<u32>,
    },
    Heartbeat {
        /// Free-form status text (kept in the agent's reason while healthy).
        #[serde(default)]
        status: Option<String>,
    },
    Whoami,
    Config,
    OutboxPut {
        topic: String,
        data: Value,
    },
    RequestCapability {
        token: Value,
    },
    Send {
        to: String,
        topic: String,
        data: Value,
    },
}

/// What kind of refusal an error answer is (its `code`), so SDKs can raise typed errors;
/// the `error` text says the rest.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Code {
    /// The request itself is wrong: not JSON, unknown op or field, a bad value.
    BadRequest,
    /// The policy does not allow it (no channel, a grant token refused).
    Denied,
    /// The supervisor cannot do it now (outbox full or missing, receiver's queue full).
    Unavailable,
    /// A socket limit was crossed; the connection is closed after this answer.
    Limit,
}

impl Code {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::BadRequest => "bad_request",
            Self::Denied => "denied",
            Self::Unavailable => "unavailable",
            Self::Limit => "limit",
        }
    }
}

/// A refused request: its code and the reason given to the agent.
pub type Refusal = (Code, String);

/// A request that cannot be served: the answer's error text (and the id, when readable).
#[derive(Debug, Clone, PartialEq)]
pub struct Bad {
    pub id: Option<Value>,
    pub error: String,
}

/// Parses one line (without its newline).
pub fn parse(line: &[u8]) -> Result<(Option<Value>, Op), Bad> {
    if line.len() > MAX_LINE {
        return Err(Bad {
            id: None,
            error: format!("message is longer than {MAX_LINE} bytes"),
        });
    }
    let mut obj: Map<String, Value> = match serde_json::from_slice(line) {
        Ok(Value::Object(m)) => m,
        Ok(_) => {
            return Err(Bad {
                id: None,
                error: "a message must be a JSON object with an \"op\"".into(),
            });
        }
        Err(e) => {
            return Err(Bad {
                id: None,
                error: format!("not JSON: {e}"),
            });
        }
    };
    let id = obj.remove("id");
    if let Some(v) = &id
        && !(v.is_string() || v.is_number() || v.is_null())
    {
        return Err(Bad {
            id: None,
            error: "\"id\" must be a string or a number".into(),
        });
    }
    match serde_json::from_value::<Op>(Value::Object(obj)) {
        Ok(op) => Ok((id, op)),
        Err(e) => Err(Bad {
            id,
            error: e.to_string(),
        }),
    }
}

/// The answer line for a served request.
pub fn ok(id: &Option<Value>, mut body: Map<String, Value>) -> String {
    body.insert("ok".into(), Value::Bool(true));
    if let Some(id) = id {
        body.insert("id".into(), id.clone());
    }
    line(Value::Object(body))
}

/// The answer line for a refused request.
pub fn err(id: &Option<Value>, code: Code, error: &str) -> String {
    let mut body = Map::new();
    body.insert("ok".into(), Value::Bool(false));
    body.insert("error".into(), Value::String(error.into()));
    body.insert("code".into(), Value::String(code.as_str().into()));
    if let Some(id) = id {
        body.insert("id".into(), id.clone());
    }
    line(Value::Object(body))
}

fn line(v: Value) -> String {
    let mut s = v.to_string();
    s.push('\n');
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn requests() {
        assert_eq!(
            parse(br#"{"op":"hello","id":1}"#).unwrap(),
            (Some(json!(1)), Op::Hello { protocol: None })
        );
        assert_eq!(
            parse(br#"{"op":"outbox_put","topic":"t","data":{"x":1}}"#)
                .unwrap()
                .1,
            Op::OutboxPut {
                topic: "t".into(),
                data: json!({"x": 1})
            }
        );
        assert_eq!(parse(br#"{"op":"whoami"}"#).unwrap(), (None, Op::Whoami));
    }

    #[test]
    fn bad_requests_name_the_problem() {
        for (line, needle) in [
            (&b"{nope"[..], "not JSON"),
            (b"[1]", "JSON object"),
            (br#"{"op":"fly","id":"a"}"#, "unknown variant `fly`"),
            (br#"{"op":"hello","extra":1}"#, "unknown field `extra`"),
            (br#"{"op":"send","to":"b"}"#, "missing field"),
            (br#"{"id":1}"#, "missing field `op`"),
            (br#"{"op":"hello","id":{"a":1}}"#, "\"id\" must be"),
        ] {
            let e = parse(line).unwrap_err();
            assert!(
                e.error.contains(needle),
                "{}: {}",
                String::from_utf8_lossy(line),
                e.error
            );
        }
        assert_eq!(
            parse(br#"{"op":"fly","id":"a"}"#).unwrap_err().id,
            Some(json!("a"))
        );
        let big = vec![b' '; MAX_LINE + 1];
        assert!(parse(&big).unwrap_err().error.contains("longer than"));
    }

    #[test]
    fn answers_are_one_line() {
        let mut m = Map::new();
        m.insert("agent".into(), json!("a"));
        assert_eq!(
            ok(&Some(json!(7)), m),
            "{\"agent\":\"a\",\"id\":7,\"ok\":true}\n"
        );
        assert_eq!(
            err(&None, Code::Denied, "x\ny"),
            "{\"code\":\"denied\",\"error\":\"x\\ny\",\"ok\":false}\n"
        );
    }
}
