//! Every error in a document at once, each named by its JSON path.
//!
//! serde stops at the first problem, which is fine for a daemon that only needs a yes or no
//! but poor for an operator fixing a policy in a loop. So documents that people write by hand
//! are parsed in two steps: the raw bytes go through [`duplicate_keys`] (a JSON value would
//! silently keep the last of two equal keys), then each section is deserialized on its own
//! with [`section`], which, when a section fails, finds every offending key by trying them one
//! at a time on top of a known-good minimal value.

use std::cell::RefCell;
use std::collections::BTreeSet;
use std::fmt;

use serde::de::{self, DeserializeOwned, DeserializeSeed, Deserializer, MapAccess, SeqAccess};
use serde_json::{Map, Value};

use super::FieldError;

/// Parses `bytes` as JSON, refusing duplicate keys in any object (named by path).
pub(crate) fn parse_unique(bytes: &[u8]) -> Result<Value, FieldError> {
    let dup = RefCell::new(None);
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let walk = Walk {
        path: String::new(),
        dup: &dup,
    };
    if let Err(e) = walk.deserialize(&mut de).and_then(|()| de.end()) {
        return Err(match dup.into_inner() {
            Some(path) => FieldError::new(
                path,
                "appears twice; keep one (a second copy would be ignored by some readers)",
            ),
            None => FieldError::new("(document)", format!("not valid JSON: {e}")),
        });
    }
    serde_json::from_slice(bytes).map_err(|e| FieldError::new("(document)", e.to_string()))
}

/// Walks a document without building it, failing on the first duplicate key.
struct Walk<'a> {
    path: String,
    dup: &'a RefCell<Option<String>>,
}

impl<'de> DeserializeSeed<'de> for Walk<'_> {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> de::Visitor<'de> for Walk<'_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_bool<E>(self, _: bool) -> Result<(), E> {
        Ok(())
    }
    fn visit_i64<E>(self, _: i64) -> Result<(), E> {
        Ok(())
    }
    fn visit_u64<E>(self, _: u64) -> Result<(), E> {
        Ok(())
    }
    fn visit_f64<E>(self, _: f64) -> Result<(), E> {
        Ok(())
    }
    fn visit_str<E>(self, _: &str) -> Result<(), E> {
        Ok(())
    }
    fn visit_unit<E>(self) -> Result<(), E> {
        Ok(())
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        let mut i = 0usize;
        loop {
            let child = Walk {
                path: format!("{}[{i}]", self.path),
                dup: self.dup,
            };
            if seq.next_element_seed(child)?.is_none() {
                return Ok(());
            }
            i += 1;
        }
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        let mut seen = BTreeSet::new();
        while let Some(key) = map.next_key::<String>()? {
            let path = join(&self.path, &key);
            if !seen.insert(key) {
                *self.dup.borrow_mut() = Some(path);
                return Err(de::Error::custom("duplicate key"));
            }
            map.next_value_seed(Walk {
                path,
                dup: self.dup,
            })?;
        }
        Ok(())
    }
}

/// `a.b`, or `b` at the top.
pub(crate) fn join(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_owned()
    } else {
        format!("{path}.{key}")
    }
}

/// The object at `path`, or an error saying what it should be.
pub(crate) fn object<'v>(
    v: &'v Value,
    path: &str,
    errs: &mut Vec<FieldError>,
) -> Option<&'v Map<String, Value>> {
    match v {
        Value::Object(m) => Some(m),
        other => {
            errs.push(FieldError::new(
                path,
                format!("must be an object, not {}", kind(other)),
            ));
            None
        }
    }
}

/// Reports keys of `m` that are not in `known`, suggesting the nearest known key.
pub(crate) fn unknown_keys(
    m: &Map<String, Value>,
    path: &str,
    known: &[&str],
    errs: &mut Vec<FieldError>,
) {
    for k in m.keys().filter(|k| !known.contains(&k.as_str())) {
        let hint = match nearest(k, known) {
            Some(n) => format!("is not a known key; did you mean `{n}`?"),
            None => format!("is not a known key; known keys: {}", known.join(", ")),
        };
        errs.push(FieldError::new(join(path, k), hint));
    }
}

/// Deserializes one section. On failure every key that fails on its own is reported at
/// `path.key`; `minimal` holds the section's required keys with valid values.
pub(crate) fn section<T: DeserializeOwned>(
    v: &Value,
    path: &str,
    minimal: &Value,
    errs: &mut Vec<FieldError>,
) -> Option<T> {
    // Deserializing from a borrowed value: no copy of the section on the good path.
    let whole = match T::deserialize(v) {
        Ok(t) => return Some(t),
        Err(e) => e,
    };
    let (Value::Object(m), Value::Object(min)) = (v, minimal) else {
        errs.push(FieldError::new(path, plain(&whole)));
        return None;
    };
    let before = errs.len();
    for (k, val) in m {
        let mut probe = min.clone();
        probe.insert(k.clone(), val.clone());
        if let Err(e) = T::deserialize(&Value::Object(probe)) {
            errs.push(FieldError::new(join(path, k), plain(&e)));
        }
    }
    for k in min.keys().filter(|k| !m.contains_key(*k)) {
        errs.push(FieldError::new(join(path, k), "is missing; it is required"));
    }
    if errs.len() == before {
        errs.push(FieldError::new(path, plain(&whole)));
    }
    None
}

/// `v` (an object) without `keys`, or `None` when it is not an object.
pub(crate) fn without(v: &Value, keys: &[String]) -> Option<Value> {
    let mut m = v.as_object()?.clone();
    for k in keys {
        m.remove(k);
    }
    Some(Value::Object(m))
}

/// serde_json's message without the ` at line 0 column 0` that values (not text) produce.
fn plain(e: &serde_json::Error) -> String {
    let s = e.to_string();
    match s.find(" at line ") {
        Some(i) => s[..i].to_owned(),
        None => s,
    }
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// The known key within edit distance 2 of `k`, if any.
fn nearest<'a>(k: &str, known: &[&'a str]) -> Option<&'a str> {
    known
        .iter()
        .map(|c| (distance(k, c), *c))
        .filter(|(d, _)| *d <= 2)
        .min()
        .map(|(_, c)| c)
}

/// Levenshtein distance (short keys only; bounded input).
fn distance(a: &str, b: &str) -> usize {
    let (a, b): (Vec<char>, Vec<char>) = (a.chars().take(64).collect(), b.chars().collect());
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.iter().enumerate() {
        let mut cur = vec![i + 1];
        for (j, cb) in b.iter().enumerate() {
            let sub = prev[j] + usize::from(ca != cb);
            cur.push(sub.min(prev[j + 1] + 1).min(cur[j] + 1));
        }
        prev = cur;
    }
    prev[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[test]
    fn duplicate_keys_are_named_by_path() {
        let e = parse_unique(br#"{"a": {"b": [1, {"c": 1, "c": 2}]}}"#).unwrap_err();
        assert_eq!(e.field, "a.b[1].c");
        assert!(parse_unique(br#"{"a": 1, "b": {"a": 2}}"#).is_ok());
        let e = parse_unique(b"{\"a\": ").unwrap_err();
        assert_eq!(e.field, "(document)");
        assert!(e.reason.contains("not valid JSON"), "{e}");
    }

    #[derive(Deserialize, Debug)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct S {
        need: u32,
        #[serde(default)]
        opt: Option<String>,
        #[serde(default)]
        n: Option<u8>,
    }

    #[test]
    fn section_reports_every_bad_key() {
        let mut errs = Vec::new();
        let v: Value = serde_json::from_str(r#"{"opt": 5, "n": 300, "nedd": 1}"#).unwrap();
        let min = serde_json::json!({"need": 1});
        assert!(section::<S>(&v, "x", &min, &mut errs).is_none());
        let fields: Vec<&str> = errs.iter().map(|e| e.field.as_str()).collect();
        assert_eq!(fields, ["x.n", "x.nedd", "x.opt", "x.need"], "{errs:?}");
        assert!(
            errs.iter().all(|e| !e.reason.contains("line 0")),
            "{errs:?}"
        );
    }

    #[test]
    fn suggestions() {
        assert_eq!(nearest("memroy", &["memory", "cpus"]), Some("memory"));
        assert_eq!(nearest("zzzzzz", &["memory", "cpus"]), None);
        assert_eq!(distance("kitten", "sitting"), 3);
    }
}
