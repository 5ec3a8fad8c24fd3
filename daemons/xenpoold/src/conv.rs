//! Typed core values to wire values and back. The wire loses types (refs, enums and, in
//! XML-RPC, 64-bit ints all travel as strings), so decoding needs the field's type.

use xenpool_core::{CoreError, DateTime, FieldType, Ref, Value};
use xenpool_rpc::Value as Wire;

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
    use super::*;
    use xenpool_core::{Record, VmPowerState, VmRecord, XenType};

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
