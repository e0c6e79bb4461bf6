//! Strict JSON for token headers and payloads: one object, nothing around it, and no
//! duplicate member names at any depth.
//!
//! `serde_json` keeps the last of two members with the same name; another parser may
//! keep the first. A token whose meaning depends on the parser is an attack (RFC 8725
//! §3.5 / RFC 7515 §5.2), so duplicates are rejected outright.

use std::fmt;

use serde::de::{self, Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Value};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum JsonError {
    /// Not a JSON object, or bytes before or after it.
    NotAnObject,
    /// Not valid UTF-8 or not valid JSON.
    Invalid,
    /// A member name appears twice in one object.
    Duplicate,
}

struct Strict(Value);

impl<'de> Deserialize<'de> for Strict {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(StrictVisitor)
    }
}

struct StrictVisitor;

const DUPLICATE: &str = "duplicate member name";

impl<'de> Visitor<'de> for StrictVisitor {
    type Value = Strict;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON value")
    }
    fn visit_bool<E>(self, v: bool) -> Result<Strict, E> {
        Ok(Strict(Value::Bool(v)))
    }
    fn visit_i64<E>(self, v: i64) -> Result<Strict, E> {
        Ok(Strict(Value::from(v)))
    }
    fn visit_u64<E>(self, v: u64) -> Result<Strict, E> {
        Ok(Strict(Value::from(v)))
    }
    fn visit_f64<E>(self, v: f64) -> Result<Strict, E> {
        Ok(Strict(Value::from(v)))
    }
    fn visit_str<E>(self, v: &str) -> Result<Strict, E> {
        Ok(Strict(Value::String(v.to_owned())))
    }
    fn visit_string<E>(self, v: String) -> Result<Strict, E> {
        Ok(Strict(Value::String(v)))
    }
    fn visit_unit<E>(self) -> Result<Strict, E> {
        Ok(Strict(Value::Null))
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Strict, A::Error> {
        let mut out = Vec::new();
        while let Some(Strict(v)) = seq.next_element()? {
            out.push(v);
        }
        Ok(Strict(Value::Array(out)))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Strict, A::Error> {
        let mut out = Map::new();
        while let Some(key) = map.next_key::<String>()? {
            let Strict(v) = map.next_value()?;
            if out.insert(key, v).is_some() {
                return Err(de::Error::custom(DUPLICATE));
            }
        }
        Ok(Strict(Value::Object(out)))
    }
}

/// Parses `bytes` as exactly one JSON object with no duplicate member names.
pub(crate) fn parse_object(bytes: &[u8]) -> Result<Map<String, Value>, JsonError> {
    if bytes.first() != Some(&b'{') || bytes.last() != Some(&b'}') {
        return Err(JsonError::NotAnObject);
    }
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let value = match Strict::deserialize(&mut de) {
        Ok(Strict(v)) => v,
        Err(e) if e.to_string().starts_with(DUPLICATE) => return Err(JsonError::Duplicate),
        Err(_) => return Err(JsonError::Invalid),
    };
    de.end().map_err(|_| JsonError::NotAnObject)?;
    match value {
        Value::Object(m) => Ok(m),
        _ => Err(JsonError::NotAnObject),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_plain_objects() {
        let m = parse_object(br#"{"a":1,"b":{"c":[1,{"d":2}]}}"#).unwrap();
        assert_eq!(m["b"]["c"][1]["d"], 2);
    }

    #[test]
    fn rejects_duplicates_at_any_depth() {
        assert_eq!(parse_object(br#"{"a":1,"a":2}"#), Err(JsonError::Duplicate));
        assert_eq!(
            parse_object(br#"{"a":{"b":1,"b":1}}"#),
            Err(JsonError::Duplicate)
        );
        assert_eq!(
            parse_object(br#"{"a":[{"b":1,"b":1}]}"#),
            Err(JsonError::Duplicate)
        );
        // Escaped spellings of the same name are the same name.
        assert_eq!(
            parse_object(br#"{"alg":1,"\u0061lg":2}"#),
            Err(JsonError::Duplicate)
        );
    }

    #[test]
    fn rejects_anything_around_the_object() {
        for bad in [
            &br#" {"a":1}"#[..],
            br#"{"a":1} "#,
            br#"{"a":1}{"#,
            b"[1]",
            b"1",
            b"",
        ] {
            assert_eq!(parse_object(bad), Err(JsonError::NotAnObject), "{bad:?}");
        }
        assert_eq!(parse_object(br#"{"a":1}x}"#), Err(JsonError::NotAnObject));
        assert_eq!(parse_object(b"{\"a\":\xff}"), Err(JsonError::Invalid));
    }
}
