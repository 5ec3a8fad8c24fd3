//! Typed core values to wire values and back. The wire loses types (refs, enums and, in
//! XML-RPC, 64-bit ints all travel as strings), so decoding needs the field's type.
//!
//! Large results (records) skip the wire tree: [`write_value`] streams a typed value
//! through a [`ValueWriter`] with the same rules as [`to_wire`], and [`encode`] returns the
//! bytes as a [`Wire::Encoded`] the server splices into its response.

use xenpool_core::{CoreError, DateTime, FieldType, Object, Ref, Value};
use xenpool_rpc::{Encoding, JsonWriter, Value as Wire, ValueWriter, XenApiError, XmlWriter};

/// A core error in wire form: its XenAPI code and parameters.
pub fn api_error(e: CoreError) -> XenApiError {
    let mut d = e.to_description();
    let code = d.remove(0);
    XenApiError::new(code, d)
}

/// How integers travel: xapi's XML-RPC sends 64-bit ints as decimal strings, its JSON-RPC
/// as numbers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IntStyle {
    /// Decimal strings (XML-RPC).
    String,
    /// Numbers (JSON-RPC).
    Number,
}

/// A typed value on the wire.
pub fn to_wire(v: &Value, ints: IntStyle) -> Wire {
    match v {
        Value::String(s) | Value::Enum(s) => Wire::String(s.clone()),
        Value::Int(i) => match ints {
            IntStyle::String => Wire::String(i.to_string()),
            IntStyle::Number => Wire::Int(*i),
        },
        Value::Float(f) => Wire::Double(*f),
        Value::Bool(b) => Wire::Bool(*b),
        Value::DateTime(d) => Wire::DateTime(d.as_str().to_string()),
        Value::Ref(r) => Wire::String(r.as_str().to_string()),
        Value::Set(items) => Wire::Array(items.iter().map(|i| to_wire(i, ints)).collect()),
        Value::Map(pairs) => Wire::Struct(
            pairs
                .iter()
                .map(|(k, v)| (key_text(k), to_wire(v, ints)))
                .collect(),
        ),
        Value::Record(fields) => Wire::Struct(
            fields
                .iter()
                .map(|(k, v)| ((*k).to_string(), to_wire(v, ints)))
                .collect(),
        ),
    }
}

/// A typed value on the wire, moving its strings rather than copying them (the hot path of
/// `get_record` and events).
pub fn into_wire(v: Value, ints: IntStyle) -> Wire {
    match v {
        Value::String(s) | Value::Enum(s) => Wire::String(s),
        Value::Ref(r) => Wire::String(r.as_str().to_string()),
        Value::Set(items) => Wire::Array(items.into_iter().map(|i| into_wire(i, ints)).collect()),
        Value::Map(pairs) => Wire::Struct(
            pairs
                .into_iter()
                .map(|(k, v)| (key_text(&k), into_wire(v, ints)))
                .collect(),
        ),
        Value::Record(fields) => Wire::Struct(
            fields
                .into_iter()
                .map(|(k, v)| (k.to_string(), into_wire(v, ints)))
                .collect(),
        ),
        other => to_wire(&other, ints),
    }
}

/// Writes a typed value as [`to_wire`] would build it: ints as decimal strings or
/// numbers per `ints`, refs and enums as strings, maps as structs with stringified keys,
/// records as structs.
pub fn write_value<W: ValueWriter>(w: &mut W, v: &Value, ints: IntStyle) {
    match v {
        Value::String(s) | Value::Enum(s) => w.string(s),
        Value::Int(i) => match ints {
            IntStyle::String => w.int_string(*i),
            IntStyle::Number => w.int(*i),
        },
        Value::Float(f) => w.double(*f),
        Value::Bool(b) => w.bool(*b),
        Value::DateTime(d) => w.datetime(d.as_str()),
        Value::Ref(r) => w.string(r.as_str()),
        Value::Set(items) => {
            w.begin_array();
            for i in items {
                write_value(w, i, ints);
            }
            w.end_array();
        }
        Value::Map(pairs) => {
            w.begin_struct();
            for (k, v) in pairs {
                match k {
                    Value::String(s) | Value::Enum(s) => w.member(s),
                    Value::Ref(r) => w.member(r.as_str()),
                    Value::DateTime(d) => w.member(d.as_str()),
                    other => w.member(&key_text(other)),
                }
                write_value(w, v, ints);
            }
            w.end_struct();
        }
        Value::Record(fields) => {
            w.begin_struct();
            for (k, v) in fields {
                w.member(k);
                write_value(w, v, ints);
            }
            w.end_struct();
        }
    }
}

/// Writes a whole object as its record (what `get_record` returns).
pub fn write_object<W: ValueWriter>(w: &mut W, o: &Object, ints: IntStyle) {
    // Field by field from the record itself: no copy of the record on the way.
    o.write_to(&mut Sink { w, ints });
}

/// The core's value sink over a wire writer, with the caller's int style.
struct Sink<'a, W> {
    w: &'a mut W,
    ints: IntStyle,
}

impl<W: ValueWriter> xenpool_core::value::ValueSink for Sink<'_, W> {
    fn string(&mut self, s: &str) {
        self.w.string(s);
    }
    fn int(&mut self, i: i64) {
        match self.ints {
            IntStyle::String => self.w.int_string(i),
            IntStyle::Number => self.w.int(i),
        }
    }
    fn float(&mut self, f: f64) {
        self.w.double(f);
    }
    fn bool(&mut self, b: bool) {
        self.w.bool(b);
    }
    fn datetime(&mut self, s: &str) {
        self.w.datetime(s);
    }
    fn begin_set(&mut self) {
        self.w.begin_array();
    }
    fn end_set(&mut self) {
        self.w.end_array();
    }
    fn begin_map(&mut self) {
        self.w.begin_struct();
    }
    fn key(&mut self, key: &str) {
        self.w.member(key);
    }
    fn end_map(&mut self) {
        self.w.end_struct();
    }
}

/// Something [`encode`] can write.
pub trait Encode {
    /// Writes `self` through `w`.
    fn encode<W: ValueWriter>(&self, w: &mut W);
}

/// A typed value with the int style of the caller's protocol.
#[derive(Debug)]
pub struct Typed<'a>(pub &'a Value, pub IntStyle);

impl Encode for Typed<'_> {
    fn encode<W: ValueWriter>(&self, w: &mut W) {
        write_value(w, self.0, self.1);
    }
}

/// An object as its record, with the int style of the caller's protocol.
#[derive(Debug)]
pub struct RecordOf<'a>(pub &'a Object, pub IntStyle);

impl Encode for RecordOf<'_> {
    fn encode<W: ValueWriter>(&self, w: &mut W) {
        write_object(w, self.0, self.1);
    }
}

/// `v` encoded for `encoding` ahead of the response, with a buffer of `capacity` bytes to
/// start with.
pub fn encode(encoding: Encoding, capacity: usize, v: &impl Encode) -> Result<Wire, XenApiError> {
    let encoded = match encoding {
        Encoding::Xml => {
            let mut w = XmlWriter::with_capacity(capacity);
            v.encode(&mut w);
            w.finish()
        }
        Encoding::Json => {
            let mut w = JsonWriter::with_capacity(capacity);
            v.encode(&mut w);
            w.finish()
        }
    };
    encoded
        .map(Wire::Encoded)
        .map_err(|e| XenApiError::internal_error(e.to_string()))
}

fn key_text(k: &Value) -> String {
    match k {
        Value::String(s) | Value::Enum(s) => s.clone(),
        Value::Int(i) => i.to_string(),
        Value::Float(f) => f.to_string(),
        Value::Bool(b) => b.to_string(),
        Value::DateTime(d) => d.as_str().to_string(),
        Value::Ref(r) => r.as_str().to_string(),
        other => format!("{other:?}"),
    }
}

fn type_error(ty: FieldType, got: &Wire) -> CoreError {
    CoreError::FieldType {
        expected: ty.describe(),
        got: format!("{got:?}"),
    }
}

/// A wire value as a typed value of `ty`; clients send ints as strings or numbers, bools
/// as booleans or strings, refs and enums as strings.
pub fn from_wire(ty: FieldType, w: &Wire) -> Result<Value, CoreError> {
    Ok(match (ty, w) {
        (FieldType::String, Wire::String(s)) => Value::String(s.clone()),
        (FieldType::String, Wire::Int(i)) => Value::String(i.to_string()),
        (FieldType::Int, Wire::Int(i)) => Value::Int(*i),
        (FieldType::Int, Wire::String(s)) => {
            Value::Int(s.trim().parse().map_err(|_| type_error(ty, w))?)
        }
        (FieldType::Int, Wire::Double(d)) if d.fract() == 0.0 => Value::Int(*d as i64),
        (FieldType::Float, Wire::Double(d)) => Value::Float(*d),
        (FieldType::Float, Wire::Int(i)) => Value::Float(*i as f64),
        (FieldType::Float, Wire::String(s)) => {
            Value::Float(s.trim().parse().map_err(|_| type_error(ty, w))?)
        }
        (FieldType::Bool, Wire::Bool(b)) => Value::Bool(*b),
        (FieldType::Bool, Wire::String(s)) if s.eq_ignore_ascii_case("true") || s == "1" => {
            Value::Bool(true)
        }
        (FieldType::Bool, Wire::String(s)) if s.eq_ignore_ascii_case("false") || s == "0" => {
            Value::Bool(false)
        }
        (FieldType::Bool, Wire::Int(i)) => Value::Bool(*i != 0),
        (FieldType::DateTime, Wire::DateTime(s) | Wire::String(s)) => {
            Value::DateTime(DateTime::from_wire(s.clone()))
        }
        (FieldType::Ref(_), Wire::String(s)) => Value::Ref(Ref::from_string(s.clone())),
        (FieldType::Ref(_), Wire::Nil) => Value::Ref(Ref::null()),
        (FieldType::Enum(name, names), Wire::String(s)) => {
            let found = names
                .iter()
                .find(|n| n.eq_ignore_ascii_case(s))
                .ok_or_else(|| CoreError::InvalidValue {
                    field: name.to_string(),
                    value: s.clone(),
                })?;
            Value::Enum((*found).to_string())
        }
        (FieldType::Set(inner), Wire::Array(items)) => Value::Set(
            items
                .iter()
                .map(|i| from_wire(*inner, i))
                .collect::<Result<_, _>>()?,
        ),
        (FieldType::Map(k, v), Wire::Struct(members)) => Value::Map(
            members
                .iter()
                .map(|(key, val)| {
                    Ok((
                        from_wire(*k, &Wire::String(key.clone()))?,
                        from_wire(*v, val)?,
                    ))
                })
                .collect::<Result<_, CoreError>>()?,
        ),
        (FieldType::Map(..), Wire::Array(items)) if items.is_empty() => Value::Map(Vec::new()),
        (FieldType::Set(_), Wire::Struct(m)) if m.is_empty() => Value::Set(Vec::new()),
        _ => return Err(type_error(ty, w)),
    })
}

/// A wire string parameter (a ref, a UUID, a name).
pub fn wire_str(w: &Wire) -> Option<&str> {
    match w {
        Wire::String(s) => Some(s),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;
    use xenpool_core::{Class, Record, VmPowerState, VmRecord, XenType};
    use xenpool_rpc::{json, xml, JsonVersion};

    /// A value of `ty` with content: text needing escapes, 64-bit and negative ints,
    /// sets and maps of two entries.
    fn sample(ty: FieldType, n: i64) -> Value {
        match ty {
            FieldType::String => Value::String(format!("s{n} <&> \"q\" é\r")),
            FieldType::Int => Value::Int(-(1 << 40) - n),
            FieldType::Float => Value::Float(1.5 + n as f64),
            FieldType::Bool => Value::Bool(n % 2 == 0),
            FieldType::DateTime => Value::DateTime(DateTime::from_unix(1_800_000_000 + n)),
            FieldType::Ref(_) => Value::Ref(Ref::from_random(n as u128 + 7)),
            FieldType::Enum(_, names) => Value::Enum(names[n as usize % names.len()].to_string()),
            FieldType::Set(inner) => Value::Set(vec![sample(*inner, n), sample(*inner, n + 1)]),
            FieldType::Map(k, v) => Value::Map(vec![
                (sample(*k, n), sample(*v, n)),
                (sample(*k, n + 1), sample(*v, n + 1)),
            ]),
        }
    }

    /// What the server would send for a plain wire value, as the encoded value's bytes.
    fn plain_bytes(w: &Wire, encoding: Encoding) -> Vec<u8> {
        match encoding {
            Encoding::Xml => {
                let mut out = Vec::new();
                xml::encode_value(&mut out, w);
                out
            }
            Encoding::Json => serde_json::to_vec(w).unwrap(),
        }
    }

    fn encoded_bytes(v: &impl Encode, encoding: Encoding) -> Vec<u8> {
        match encode(encoding, 0, v).unwrap() {
            Wire::Encoded(e) => {
                assert_eq!(e.encoding(), encoding);
                e.as_bytes().to_vec()
            }
            other => panic!("not encoded: {other:?}"),
        }
    }

    #[test]
    fn every_field_of_every_class_writes_as_to_wire() {
        let styles = [
            (Encoding::Xml, IntStyle::String),
            (Encoding::Json, IntStyle::Number),
            // Not what the server pairs, but the rules must hold for any combination.
            (Encoding::Xml, IntStyle::Number),
            (Encoding::Json, IntStyle::String),
        ];
        for class in Class::ALL {
            let mut obj = class.default_object();
            for (i, f) in class.fields().iter().enumerate() {
                obj.set_field(f.name, sample(f.ty, i as i64)).unwrap();
            }
            for &(encoding, ints) in &styles {
                for f in class.fields() {
                    let v = obj.get_field(f.name).unwrap();
                    assert_eq!(
                        encoded_bytes(&Typed(&v, ints), encoding),
                        plain_bytes(&to_wire(&v, ints), encoding),
                        "{class}.{} in {encoding:?} with {ints:?}",
                        f.name
                    );
                }
                let whole = to_wire(&obj.to_value(), ints);
                assert_eq!(
                    encoded_bytes(&RecordOf(&obj, ints), encoding),
                    plain_bytes(&whole, encoding),
                    "{class} record"
                );
                assert_eq!(into_wire(obj.to_value(), ints), whole);
            }
            // And through the response envelopes, as clients see them.
            let plain = to_wire(&obj.to_value(), IntStyle::String);
            let encoded = encode(Encoding::Xml, 64, &RecordOf(&obj, IntStyle::String)).unwrap();
            assert_eq!(
                xml::encode_response(&Ok(encoded)),
                xml::encode_response(&Ok(plain))
            );
            let plain = to_wire(&obj.to_value(), IntStyle::Number);
            let encoded = encode(Encoding::Json, 64, &RecordOf(&obj, IntStyle::Number)).unwrap();
            let id = Wire::Int(1);
            assert_eq!(
                json::encode_response(JsonVersion::V2, &id, &Ok(encoded)),
                json::encode_response(JsonVersion::V2, &id, &Ok(plain))
            );
        }
    }

    #[test]
    fn every_vm_field_round_trips() {
        let vm = VmRecord {
            uuid: "u".into(),
            memory_static_max: 1 << 40,
            power_state: VmPowerState::Running,
            ..Default::default()
        };
        for style in [IntStyle::String, IntStyle::Number] {
            for f in VmRecord::FIELDS {
                let v = vm.get_field(f.name).unwrap();
                let w = to_wire(&v, style);
                let back = from_wire(f.ty, &w).unwrap();
                let mut copy = vm.clone();
                copy.set_field(f.name, back).unwrap();
                assert_eq!(copy, vm, "field {}", f.name);
            }
        }
        assert_eq!(
            to_wire(&VmPowerState::Halted.to_value(), IntStyle::String),
            Wire::String("Halted".into())
        );
    }
}
