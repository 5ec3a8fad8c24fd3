//! The wire value model shared by both codecs.
//!
//! `Value` is deliberately the XML-RPC type system (which is what XenAPI was designed
//! around); JSON-RPC maps onto a subset of it. The codecs encode exactly what they are
//! given: turning a 64-bit integer field into a decimal string, as xapi does, is the
//! caller's choice, not this module's.

use std::fmt;

use serde::de::{self, Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
use serde::ser::{Error as _, Serialize, SerializeMap, SerializeSeq, Serializer};

use crate::error::RpcError;

/// One XenAPI value as it travels on the wire.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    /// A string; also what a bare `<value>text</value>` decodes to.
    String(String),
    /// An integer (`<i4>`, `<int>`, `<i8>`, or a JSON integer).
    Int(i64),
    /// A floating-point number (`<double>`, or a JSON number with a fraction or exponent).
    Double(f64),
    /// A boolean (`<boolean>1</boolean>`).
    Bool(bool),
    /// An ISO 8601 timestamp kept as the text seen on the wire, e.g. `20261123T12:00:00Z`.
    DateTime(String),
    /// An ordered list.
    Array(Vec<Value>),
    /// A struct with its members in wire order (duplicate names are kept as sent).
    Struct(Vec<(String, Value)>),
    /// `<nil/>` or JSON `null`.
    Nil,
    /// A value already encoded for one protocol by a [`ValueWriter`](crate::ValueWriter);
    /// the codec of that protocol copies its bytes in place. Decoders never produce it.
    ///
    /// A response encoder refuses one encoded for the other protocol and answers
    /// `INTERNAL_ERROR` instead: the mix means the handler chose its integer style or
    /// shapes for the wrong protocol. The other encoders (fragments, calls, serde) decode
    /// and re-encode it, which is correct but slow.
    Encoded(EncodedValue),
}

/// The value syntax an [`EncodedValue`] is written in; JSON-RPC 1.0 and 2.0 share one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Encoding {
    /// An XML-RPC `<value>…</value>` element.
    Xml,
    /// A JSON value.
    Json,
}

impl Encoding {
    /// The protocol's name, for messages.
    pub fn name(self) -> &'static str {
        match self {
            Encoding::Xml => "XML-RPC",
            Encoding::Json => "JSON-RPC",
        }
    }
}

/// The bytes of exactly one complete value in one [`Encoding`], as a [`ValueWriter`]
/// finished them. Only the writers make one, so the bytes are always well formed.
///
/// [`ValueWriter`]: crate::ValueWriter
#[derive(Clone, PartialEq, Eq)]
pub struct EncodedValue {
    encoding: Encoding,
    bytes: Vec<u8>,
}

impl EncodedValue {
    /// Only the writers call this, after checking the value is complete.
    pub(crate) fn new(encoding: Encoding, bytes: Vec<u8>) -> Self {
        EncodedValue { encoding, bytes }
    }

    /// The bytes, for a response that sends them as they are.
    pub(crate) fn into_bytes(self) -> Vec<u8> {
        self.bytes
    }

    /// The syntax the bytes are in.
    pub fn encoding(&self) -> Encoding {
        self.encoding
    }

    /// The encoded value alone, without any envelope.
    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// The value as a plain tree (for tests, and for re-encoding in the other protocol).
    pub fn decode(&self) -> Result<Value, RpcError> {
        match self.encoding {
            Encoding::Xml => crate::xml::decode_value(&self.bytes),
            Encoding::Json => {
                serde_json::from_slice(&self.bytes).map_err(|e| RpcError::Json(e.to_string()))
            }
        }
    }
}

impl fmt::Debug for EncodedValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EncodedValue")
            .field("encoding", &self.encoding)
            .field("bytes", &String::from_utf8_lossy(&self.bytes))
            .finish()
    }
}

impl Value {
    /// A string value.
    pub fn string(s: impl Into<String>) -> Value {
        Value::String(s.into())
    }

    /// A struct from `(name, value)` pairs, keeping their order.
    pub fn structure<K: Into<String>>(members: impl IntoIterator<Item = (K, Value)>) -> Value {
        Value::Struct(members.into_iter().map(|(k, v)| (k.into(), v)).collect())
    }

    /// The string inside, if this is a `String`.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::String(s) => Some(s),
            _ => None,
        }
    }

    /// The integer inside, if this is an `Int`.
    pub fn as_i64(&self) -> Option<i64> {
        match self {
            Value::Int(i) => Some(*i),
            _ => None,
        }
    }

    /// The number inside, if this is a `Double` (or an `Int`, which widens losslessly
    /// for the magnitudes XenAPI uses).
    pub fn as_f64(&self) -> Option<f64> {
        match self {
            Value::Double(d) => Some(*d),
            Value::Int(i) => Some(*i as f64),
            _ => None,
        }
    }

    /// The boolean inside, if this is a `Bool`.
    pub fn as_bool(&self) -> Option<bool> {
        match self {
            Value::Bool(b) => Some(*b),
            _ => None,
        }
    }

    /// The timestamp text inside, if this is a `DateTime`.
    pub fn as_datetime(&self) -> Option<&str> {
        match self {
            Value::DateTime(s) => Some(s),
            _ => None,
        }
    }

    /// The elements, if this is an `Array`.
    pub fn as_array(&self) -> Option<&[Value]> {
        match self {
            Value::Array(a) => Some(a),
            _ => None,
        }
    }

    /// The members, if this is a `Struct`.
    pub fn as_struct(&self) -> Option<&[(String, Value)]> {
        match self {
            Value::Struct(m) => Some(m),
            _ => None,
        }
    }

    /// The first member of a struct with this name.
    pub fn get(&self, name: &str) -> Option<&Value> {
        self.as_struct()?
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v)
    }

    /// Whether this is `Nil`.
    pub fn is_nil(&self) -> bool {
        matches!(self, Value::Nil)
    }

    /// The first [`Value::Encoded`] inside (or this value itself) whose encoding is not
    /// `encoding`: what a response encoder must refuse.
    pub fn foreign_encoding(&self, encoding: Encoding) -> Option<Encoding> {
        match self {
            Value::Encoded(e) if e.encoding != encoding => Some(e.encoding),
            Value::Array(items) => items.iter().find_map(|i| i.foreign_encoding(encoding)),
            Value::Struct(members) => members
                .iter()
                .find_map(|(_, v)| v.foreign_encoding(encoding)),
            _ => None,
        }
    }

    /// A scalar rendered as the text XenAPI would put in an error parameter; `None` for
    /// arrays, structs and nil.
    pub fn scalar_text(&self) -> Option<String> {
        match self {
            Value::String(s) | Value::DateTime(s) => Some(s.clone()),
            Value::Int(i) => Some(i.to_string()),
            Value::Double(d) => Some(d.to_string()),
            Value::Bool(b) => Some(b.to_string()),
            Value::Array(_) | Value::Struct(_) | Value::Nil | Value::Encoded(_) => None,
        }
    }

    /// A short name of the variant, for error messages.
    pub fn kind(&self) -> &'static str {
        match self {
            Value::String(_) => "string",
            Value::Int(_) => "int",
            Value::Double(_) => "double",
            Value::Bool(_) => "boolean",
            Value::DateTime(_) => "dateTime",
            Value::Array(_) => "array",
            Value::Struct(_) => "struct",
            Value::Nil => "nil",
            Value::Encoded(_) => "encoded",
        }
    }
}

impl From<&str> for Value {
    fn from(s: &str) -> Self {
        Value::String(s.to_owned())
    }
}

impl From<String> for Value {
    fn from(s: String) -> Self {
        Value::String(s)
    }
}

impl From<i64> for Value {
    fn from(i: i64) -> Self {
        Value::Int(i)
    }
}

impl From<bool> for Value {
    fn from(b: bool) -> Self {
        Value::Bool(b)
    }
}

impl From<f64> for Value {
    fn from(d: f64) -> Self {
        Value::Double(d)
    }
}

impl From<Vec<Value>> for Value {
    fn from(a: Vec<Value>) -> Self {
        Value::Array(a)
    }
}

// JSON mapping, following xapi's ocaml-rpc: a dateTime travels as a plain string, nil as
// null, and struct members keep their order.
impl Serialize for Value {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self {
            Value::String(s) | Value::DateTime(s) => serializer.serialize_str(s),
            Value::Int(i) => serializer.serialize_i64(*i),
            Value::Double(d) => serializer.serialize_f64(*d),
            Value::Bool(b) => serializer.serialize_bool(*b),
            Value::Nil => serializer.serialize_unit(),
            Value::Array(a) => {
                let mut seq = serializer.serialize_seq(Some(a.len()))?;
                for v in a {
                    seq.serialize_element(v)?;
                }
                seq.end()
            }
            Value::Struct(m) => {
                let mut map = serializer.serialize_map(Some(m.len()))?;
                for (k, v) in m {
                    map.serialize_entry(k, v)?;
                }
                map.end()
            }
            // Serde cannot splice raw bytes; go through the plain tree.
            Value::Encoded(e) => e.decode().map_err(S::Error::custom)?.serialize(serializer),
        }
    }
}

impl<'de> Deserialize<'de> for Value {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(ValueVisitor)
    }
}

struct ValueVisitor;

impl<'de> Visitor<'de> for ValueVisitor {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a XenAPI value")
    }

    fn visit_bool<E: de::Error>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Value, E> {
        Ok(Value::Int(v))
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Value, E> {
        // Beyond i64 there is no XenAPI integer type; keep the magnitude as a double
        // rather than refusing the whole request.
        Ok(i64::try_from(v).map_or(Value::Double(v as f64), Value::Int))
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Value, E> {
        Ok(Value::Double(v))
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Value, E> {
        Ok(Value::String(v.to_owned()))
    }

    fn visit_string<E: de::Error>(self, v: String) -> Result<Value, E> {
        Ok(Value::String(v))
    }

    fn visit_unit<E: de::Error>(self) -> Result<Value, E> {
        Ok(Value::Nil)
    }

    fn visit_none<E: de::Error>(self) -> Result<Value, E> {
        Ok(Value::Nil)
    }

    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        Value::deserialize(d)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        // Cap the pre-allocation: the hint comes from the peer.
        let mut out = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(64));
        while let Some(v) = seq.next_element()? {
            out.push(v);
        }
        Ok(Value::Array(out))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut out = Vec::with_capacity(map.size_hint().unwrap_or(0).min(64));
        while let Some((k, v)) = map.next_entry::<String, Value>()? {
            out.push((k, v));
        }
        Ok(Value::Struct(out))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    #[test]
    fn json_keeps_member_order() {
        let v: Value = serde_json::from_str(r#"{"z":1,"a":"x","m":[true,null,1.5]}"#).unwrap();
        assert_eq!(
            v,
            Value::structure([
                ("z", Value::Int(1)),
                ("a", Value::from("x")),
                (
                    "m",
                    Value::Array(vec![Value::Bool(true), Value::Nil, Value::Double(1.5)])
                ),
            ])
        );
        assert_eq!(
            serde_json::to_string(&v).unwrap(),
            r#"{"z":1,"a":"x","m":[true,null,1.5]}"#
        );
    }

    #[test]
    fn accessors() {
        let v = Value::structure([("name_label", Value::from("vm1"))]);
        assert_eq!(v.get("name_label").and_then(Value::as_str), Some("vm1"));
        assert_eq!(v.get("missing"), None);
        assert_eq!(Value::Int(3).as_f64(), Some(3.0));
        assert_eq!(Value::Int(3).scalar_text().as_deref(), Some("3"));
    }
}
