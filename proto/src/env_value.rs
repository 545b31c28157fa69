//! The JSON form of `KeyValue.value` (an environment variable's value).
//!
//! The field was a string on the wire until cri-api v0.34.9 and is bytes
//! since (a value need not be UTF-8), so carrackd's store holds records
//! with it as a JSON string. It stays a string whenever it is UTF-8, as
//! cri-api's own JSON form does, so those records and the records of an
//! older carrackd read alike; a value that is not UTF-8 is written as an
//! array of its bytes, and either form reads back.

use serde::de::{self, Deserializer, SeqAccess, Visitor};
use serde::ser::Serializer;

/// Writes `value` as a string when it is UTF-8, else as its bytes.
pub(crate) fn serialize<S: Serializer>(value: &[u8], s: S) -> Result<S::Ok, S::Error> {
    match std::str::from_utf8(value) {
        Ok(text) => s.serialize_str(text),
        Err(_) => s.collect_seq(value),
    }
}

/// Reads a string or an array of bytes.
pub(crate) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
    d.deserialize_any(EnvValue)
}

struct EnvValue;

impl<'de> Visitor<'de> for EnvValue {
    type Value = Vec<u8>;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a string or an array of bytes")
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Vec<u8>, E> {
        Ok(v.as_bytes().to_vec())
    }

    fn visit_bytes<E: de::Error>(self, v: &[u8]) -> Result<Vec<u8>, E> {
        Ok(v.to_vec())
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<u8>, A::Error> {
        let mut out = Vec::with_capacity(seq.size_hint().unwrap_or(0));
        while let Some(b) = seq.next_element::<u8>()? {
            out.push(b);
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use crate::cri::KeyValue;

    fn env(value: &[u8]) -> KeyValue {
        KeyValue {
            key: "K".into(),
            value: value.to_vec(),
        }
    }

    #[test]
    fn a_utf8_value_is_a_json_string() {
        let text = serde_json::to_string(&env(b"v\xc3\xa9")).unwrap();
        assert_eq!(text, r#"{"key":"K","value":"vé"}"#);
        let back: KeyValue = serde_json::from_str(&text).unwrap();
        assert_eq!(back, env("vé".as_bytes()));
    }

    #[test]
    fn other_bytes_round_trip_as_an_array() {
        let text = serde_json::to_string(&env(b"\xff\x00a")).unwrap();
        assert_eq!(text, r#"{"key":"K","value":[255,0,97]}"#);
        let back: KeyValue = serde_json::from_str(&text).unwrap();
        assert_eq!(back, env(b"\xff\x00a"));
    }

    #[test]
    fn a_record_without_a_field_reads_with_its_default() {
        let back: KeyValue = serde_json::from_str(r#"{"key":"K"}"#).unwrap();
        assert_eq!(back, env(b""));
    }
}
