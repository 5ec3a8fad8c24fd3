//! Typed XenAPI values: what a field holds, independent of the wire encoding.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

use crate::error::CoreError;

/// An opaque reference as XenAPI writes it: `OpaqueRef:<uuid>`, or `OpaqueRef:NULL`.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Ref(String);

/// The text of the null reference.
pub const NULL_REF: &str = "OpaqueRef:NULL";

impl Ref {
    /// The null reference.
    pub fn null() -> Ref {
        Ref(NULL_REF.to_string())
    }
    /// Wraps a reference string as given (from the wire or the database).
    pub fn from_string(s: impl Into<String>) -> Ref {
        Ref(s.into())
    }
    /// A fresh reference derived from a random 128-bit number supplied by the caller.
    pub fn from_random(bits: u128) -> Ref {
        Ref(format!("OpaqueRef:{}", uuid_from_random(bits)))
    }
    /// Whether this is `OpaqueRef:NULL` (or empty, which clients also send for "none").
    pub fn is_null(&self) -> bool {
        self.0 == NULL_REF || self.0.is_empty()
    }
    /// The reference text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl Default for Ref {
    fn default() -> Self {
        Ref::null()
    }
}

impl fmt::Debug for Ref {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Display for Ref {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A random (version 4) UUID text built from caller-supplied randomness.
pub fn uuid_from_random(bits: u128) -> String {
    uuid::Builder::from_random_bytes(bits.to_be_bytes())
        .into_uuid()
        .hyphenated()
        .to_string()
}

/// A point in time as XenAPI's `dateTime`: ISO 8601 basic form, UTC, e.g. `20261123T12:00:00Z`.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct DateTime(String);

impl DateTime {
    /// The epoch, which xapi uses for "never".
    pub fn epoch() -> DateTime {
        DateTime("19700101T00:00:00Z".to_string())
    }
    /// From seconds since the Unix epoch (the caller reads the clock).
    pub fn from_unix(secs: i64) -> DateTime {
        let days = secs.div_euclid(86_400);
        let rem = secs.rem_euclid(86_400);
        let (y, m, d) = civil_from_days(days);
        DateTime(format!(
            "{y:04}{m:02}{d:02}T{:02}:{:02}:{:02}Z",
            rem / 3600,
            (rem % 3600) / 60,
            rem % 60
        ))
    }
    /// Wraps a timestamp already in wire form.
    pub fn from_wire(s: impl Into<String>) -> DateTime {
        DateTime(s.into())
    }
    /// The wire text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl Default for DateTime {
    fn default() -> Self {
        DateTime::epoch()
    }
}

impl fmt::Debug for DateTime {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

// Howard Hinnant's days-to-civil algorithm; avoids a date crate in the pure core.
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

/// A XenAPI value with its type kept: the wire layer decides how each is encoded
/// (64-bit ints and refs travel as strings in XML-RPC, maps as structs, ...).
#[derive(Clone, Debug, PartialEq)]
pub enum Value {
    /// `string`
    String(String),
    /// `int` (64-bit)
    Int(i64),
    /// `float`
    Float(f64),
    /// `bool`
    Bool(bool),
    /// `datetime`
    DateTime(DateTime),
    /// `ref`
    Ref(Ref),
    /// an enum value, as its wire name
    Enum(String),
    /// `set`
    Set(Vec<Value>),
    /// `map`, keys kept in order
    Map(Vec<(Value, Value)>),
    /// a whole record: field name → value, in datamodel order
    Record(Vec<(&'static str, Value)>),
}

/// The shape of a field, so a caller can decode a wire value into it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FieldType {
    /// string
    String,
    /// 64-bit int
    Int,
    /// float
    Float,
    /// bool
    Bool,
    /// datetime
    DateTime,
    /// reference to an object of the named class
    Ref(&'static str),
    /// enum with these wire names
    Enum(&'static str, &'static [&'static str]),
    /// set of the inner type
    Set(&'static FieldType),
    /// map from the first to the second
    Map(&'static FieldType, &'static FieldType),
}

impl FieldType {
    /// The XenAPI name of the type, as error messages and docs print it.
    pub fn describe(&self) -> String {
        match self {
            FieldType::String => "string".into(),
            FieldType::Int => "int".into(),
            FieldType::Float => "float".into(),
            FieldType::Bool => "bool".into(),
            FieldType::DateTime => "datetime".into(),
            FieldType::Ref(c) => format!("{c} ref"),
            FieldType::Enum(n, _) => (*n).to_string(),
            FieldType::Set(t) => format!("{} set", t.describe()),
            FieldType::Map(k, v) => format!("({} -> {}) map", k.describe(), v.describe()),
        }
    }
}

/// Receives a value piece by piece, borrowing from the record: how a record is written out
/// (to a wire encoder, say) without first being copied into a [`Value`]. References and
/// enum values arrive as strings, map keys as text.
pub trait ValueSink {
    /// A string, reference or enum value.
    fn string(&mut self, s: &str);
    /// An int.
    fn int(&mut self, i: i64);
    /// A float.
    fn float(&mut self, f: f64);
    /// A bool.
    fn bool(&mut self, b: bool);
    /// A timestamp in wire form.
    fn datetime(&mut self, s: &str);
    /// The start of a set.
    fn begin_set(&mut self);
    /// The end of a set.
    fn end_set(&mut self);
    /// The start of a map or record.
    fn begin_map(&mut self);
    /// The key of the next map entry or record field.
    fn key(&mut self, key: &str);
    /// The end of a map or record.
    fn end_map(&mut self);
}

/// Writes a typed value through a sink (the slow path, for values already built).
pub fn write_value(v: &Value, sink: &mut dyn ValueSink) {
    match v {
        Value::String(s) | Value::Enum(s) => sink.string(s),
        Value::Int(i) => sink.int(*i),
        Value::Float(f) => sink.float(*f),
        Value::Bool(b) => sink.bool(*b),
        Value::DateTime(d) => sink.datetime(d.as_str()),
        Value::Ref(r) => sink.string(r.as_str()),
        Value::Set(items) => {
            sink.begin_set();
            for i in items {
                write_value(i, sink);
            }
            sink.end_set();
        }
        Value::Map(pairs) => {
            sink.begin_map();
            for (k, v) in pairs {
                sink.key(&key_text(k));
                write_value(v, sink);
            }
            sink.end_map();
        }
        Value::Record(fields) => {
            sink.begin_map();
            for (k, v) in fields {
                sink.key(k);
                write_value(v, sink);
            }
            sink.end_map();
        }
    }
}

/// A map key as text, as the wire carries it.
pub fn key_text(k: &Value) -> std::borrow::Cow<'_, str> {
    use std::borrow::Cow;
    match k {
        Value::String(s) | Value::Enum(s) => Cow::Borrowed(s),
        Value::Ref(r) => Cow::Borrowed(r.as_str()),
        Value::DateTime(d) => Cow::Borrowed(d.as_str()),
        Value::Int(i) => Cow::Owned(i.to_string()),
        Value::Float(f) => Cow::Owned(f.to_string()),
        Value::Bool(b) => Cow::Owned(b.to_string()),
        other => Cow::Owned(format!("{other:?}")),
    }
}

/// Conversion between a Rust field type and [`Value`].
pub trait XenType: Sized {
    /// The field's shape.
    const TYPE: FieldType;
    /// To a typed value.
    fn to_value(&self) -> Value;
    /// From a typed value; a mismatch is a `FIELD_TYPE_ERROR`.
    fn from_value(v: Value) -> Result<Self, CoreError>;
    /// Writes the value through a sink without building a [`Value`].
    fn write_to(&self, sink: &mut dyn ValueSink) {
        write_value(&self.to_value(), sink);
    }
    /// The value as a map key.
    fn write_key(&self, sink: &mut dyn ValueSink) {
        sink.key(&key_text(&self.to_value()));
    }
}

fn type_error(expected: FieldType, got: &Value) -> CoreError {
    CoreError::FieldType {
        expected: expected.describe(),
        got: format!("{got:?}"),
    }
}

impl XenType for String {
    const TYPE: FieldType = FieldType::String;
    fn write_to(&self, sink: &mut dyn ValueSink) {
        sink.string(self);
    }
    fn write_key(&self, sink: &mut dyn ValueSink) {
        sink.key(self);
    }
    fn to_value(&self) -> Value {
        Value::String(self.clone())
    }
    fn from_value(v: Value) -> Result<Self, CoreError> {
        match v {
            Value::String(s) | Value::Enum(s) => Ok(s),
            other => Err(type_error(Self::TYPE, &other)),
        }
    }
}

impl XenType for i64 {
    const TYPE: FieldType = FieldType::Int;
    fn write_to(&self, sink: &mut dyn ValueSink) {
        sink.int(*self);
    }
    fn to_value(&self) -> Value {
        Value::Int(*self)
    }
    fn from_value(v: Value) -> Result<Self, CoreError> {
        match v {
            Value::Int(i) => Ok(i),
            Value::String(ref s) => s.trim().parse().map_err(|_| type_error(Self::TYPE, &v)),
            other => Err(type_error(Self::TYPE, &other)),
        }
    }
}

impl XenType for f64 {
    const TYPE: FieldType = FieldType::Float;
    fn write_to(&self, sink: &mut dyn ValueSink) {
        sink.float(*self);
    }
    fn to_value(&self) -> Value {
        Value::Float(*self)
    }
    fn from_value(v: Value) -> Result<Self, CoreError> {
        match v {
            Value::Float(f) => Ok(f),
            Value::Int(i) => Ok(i as f64),
            Value::String(ref s) => s.trim().parse().map_err(|_| type_error(Self::TYPE, &v)),
            other => Err(type_error(Self::TYPE, &other)),
        }
    }
}

impl XenType for bool {
    const TYPE: FieldType = FieldType::Bool;
    fn write_to(&self, sink: &mut dyn ValueSink) {
        sink.bool(*self);
    }
    fn to_value(&self) -> Value {
        Value::Bool(*self)
    }
    fn from_value(v: Value) -> Result<Self, CoreError> {
        match v {
            Value::Bool(b) => Ok(b),
            Value::String(ref s) if s.eq_ignore_ascii_case("true") => Ok(true),
            Value::String(ref s) if s.eq_ignore_ascii_case("false") => Ok(false),
            other => Err(type_error(Self::TYPE, &other)),
        }
    }
}

impl XenType for DateTime {
    const TYPE: FieldType = FieldType::DateTime;
    fn write_to(&self, sink: &mut dyn ValueSink) {
        sink.datetime(&self.0);
    }
    fn to_value(&self) -> Value {
        Value::DateTime(self.clone())
    }
    fn from_value(v: Value) -> Result<Self, CoreError> {
        match v {
            Value::DateTime(d) => Ok(d),
            Value::String(s) => Ok(DateTime(s)),
            other => Err(type_error(Self::TYPE, &other)),
        }
    }
}

impl XenType for Ref {
    const TYPE: FieldType = FieldType::Ref("");
    fn write_to(&self, sink: &mut dyn ValueSink) {
        sink.string(&self.0);
    }
    fn write_key(&self, sink: &mut dyn ValueSink) {
        sink.key(&self.0);
    }
    fn to_value(&self) -> Value {
        Value::Ref(self.clone())
    }
    fn from_value(v: Value) -> Result<Self, CoreError> {
        match v {
            Value::Ref(r) => Ok(r),
            Value::String(s) => Ok(Ref(s)),
            other => Err(type_error(Self::TYPE, &other)),
        }
    }
}

impl<T: XenType + 'static> XenType for Vec<T> {
    const TYPE: FieldType = FieldType::Set(&T::TYPE);
    fn write_to(&self, sink: &mut dyn ValueSink) {
        sink.begin_set();
        for i in self {
            i.write_to(sink);
        }
        sink.end_set();
    }
    fn to_value(&self) -> Value {
        Value::Set(self.iter().map(XenType::to_value).collect())
    }
    fn from_value(v: Value) -> Result<Self, CoreError> {
        match v {
            Value::Set(items) => items.into_iter().map(T::from_value).collect(),
            other => Err(type_error(Self::TYPE, &other)),
        }
    }
}

/// Map keys must be ordered for deterministic encoding.
impl<K: XenType + Ord + 'static, V: XenType + 'static> XenType for BTreeMap<K, V> {
    const TYPE: FieldType = FieldType::Map(&K::TYPE, &V::TYPE);
    fn write_to(&self, sink: &mut dyn ValueSink) {
        sink.begin_map();
        for (k, v) in self {
            k.write_key(sink);
            v.write_to(sink);
        }
        sink.end_map();
    }
    fn to_value(&self) -> Value {
        Value::Map(
            self.iter()
                .map(|(k, v)| (k.to_value(), v.to_value()))
                .collect(),
        )
    }
    fn from_value(v: Value) -> Result<Self, CoreError> {
        match v {
            Value::Map(items) => items
                .into_iter()
                .map(|(k, v)| Ok((K::from_value(k)?, V::from_value(v)?)))
                .collect(),
            other => Err(type_error(Self::TYPE, &other)),
        }
    }
}

/// Declares a XenAPI enum: a Rust enum whose variants map to wire names.
#[macro_export]
macro_rules! xenapi_enum {
    ($(#[$m:meta])* $name:ident $wire_name:literal { $($(#[$vm:meta])* $variant:ident = $wire:literal),+ $(,)? }) => {
        $(#[$m])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize)]
        pub enum $name {
            $($(#[$vm])* #[doc = $wire] #[serde(rename = $wire)] $variant),+
        }
        impl $name {
            /// Every wire name, in datamodel order.
            pub const NAMES: &'static [&'static str] = &[$($wire),+];
            /// Every value, in datamodel order.
            pub const ALL: &'static [$name] = &[$($name::$variant),+];
            /// The wire name.
            pub fn as_str(&self) -> &'static str {
                match self { $($name::$variant => $wire),+ }
            }
            /// From a wire name; XenAPI enum names are matched without regard to case.
            pub fn parse(s: &str) -> Option<Self> {
                $(if s.eq_ignore_ascii_case($wire) { return Some($name::$variant); })+
                None
            }
        }
        impl Default for $name {
            fn default() -> Self { Self::ALL[0] }
        }
        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result { f.write_str(self.as_str()) }
        }
        impl $crate::value::XenType for $name {
            const TYPE: $crate::value::FieldType = $crate::value::FieldType::Enum($wire_name, $name::NAMES);
            fn to_value(&self) -> $crate::value::Value { $crate::value::Value::Enum(self.as_str().to_string()) }
            fn write_to(&self, sink: &mut dyn $crate::value::ValueSink) { sink.string(self.as_str()) }
            fn write_key(&self, sink: &mut dyn $crate::value::ValueSink) { sink.key(self.as_str()) }
            fn from_value(v: $crate::value::Value) -> Result<Self, $crate::error::CoreError> {
                match v {
                    $crate::value::Value::Enum(ref s) | $crate::value::Value::String(ref s) => {
                        $name::parse(s).ok_or_else(|| $crate::error::CoreError::InvalidValue {
                            field: $wire_name.to_string(),
                            value: s.clone(),
                        })
                    }
                    other => Err($crate::error::CoreError::FieldType {
                        expected: $wire_name.to_string(),
                        got: format!("{other:?}"),
                    }),
                }
            }
        }
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A set (true) or a map being rebuilt, with its items, entries and pending key.
    type Open = (bool, Vec<Value>, Vec<(Value, Value)>, Option<String>);

    /// Rebuilds a value from what a sink receives (maps come back with string keys).
    #[derive(Default)]
    struct Rebuild {
        stack: Vec<Open>,
        out: Option<Value>,
    }

    impl Rebuild {
        fn push(&mut self, v: Value) {
            match self.stack.last_mut() {
                Some((true, items, _, _)) => items.push(v),
                Some((false, _, pairs, key)) => {
                    let k = key.take().unwrap_or_default();
                    pairs.push((Value::String(k), v));
                }
                None => self.out = Some(v),
            }
        }
    }

    impl ValueSink for Rebuild {
        fn string(&mut self, s: &str) {
            self.push(Value::String(s.into()));
        }
        fn int(&mut self, i: i64) {
            self.push(Value::Int(i));
        }
        fn float(&mut self, f: f64) {
            self.push(Value::Float(f));
        }
        fn bool(&mut self, b: bool) {
            self.push(Value::Bool(b));
        }
        fn datetime(&mut self, s: &str) {
            self.push(Value::DateTime(DateTime::from_wire(s)));
        }
        fn begin_set(&mut self) {
            self.stack.push((true, vec![], vec![], None));
        }
        fn end_set(&mut self) {
            let (_, items, _, _) = self.stack.pop().unwrap();
            self.push(Value::Set(items));
        }
        fn begin_map(&mut self) {
            self.stack.push((false, vec![], vec![], None));
        }
        fn key(&mut self, key: &str) {
            if let Some(top) = self.stack.last_mut() {
                top.3 = Some(key.to_string());
            }
        }
        fn end_map(&mut self) {
            let (_, _, pairs, _) = self.stack.pop().unwrap();
            self.push(Value::Map(pairs));
        }
    }

    #[test]
    fn a_record_written_through_a_sink_equals_its_value() {
        use crate::record::Record;
        use crate::{VmOperation, VmPowerState, VmRecord};
        let mut vm = VmRecord {
            uuid: "u".into(),
            power_state: VmPowerState::Running,
            memory_static_max: 1 << 40,
            VBDs: vec![Ref::from_random(1), Ref::from_random(2)],
            HVM_shadow_multiplier: 1.5,
            ..Default::default()
        };
        vm.other_config.insert("k".into(), "v".into());
        vm.blocked_operations
            .insert(VmOperation::Start, "no".into());
        let mut sink = Rebuild::default();
        vm.write_to(&mut sink);
        let mut direct = Rebuild::default();
        write_value(&vm.to_value(), &mut direct);
        assert_eq!(sink.out, direct.out);
        assert!(sink.out.is_some());
    }

    #[test]
    fn datetime_from_unix() {
        assert_eq!(DateTime::from_unix(0).as_str(), "19700101T00:00:00Z");
        assert_eq!(
            DateTime::from_unix(1_795_435_200).as_str(),
            "20261123T12:00:00Z"
        );
    }

    #[test]
    fn refs() {
        assert!(Ref::null().is_null());
        let r = Ref::from_random(42);
        assert!(r.as_str().starts_with("OpaqueRef:"));
        assert!(!r.is_null());
    }
}
