//! The record machinery: one macro declares a XenAPI class as a Rust struct whose field
//! names are the datamodel's, with field metadata so that generic getters, setters, event
//! snapshots and persistence need no per-class code.

use crate::error::CoreError;
use crate::value::{FieldType, Value};

/// Metadata of one field of a class.
#[derive(Clone, Copy, Debug)]
pub struct FieldMeta {
    /// The datamodel name, as on the wire (`VCPUs_max`, `type`, ...).
    pub name: &'static str,
    /// Its type.
    pub ty: FieldType,
    /// Whether clients may set it (`set_<field>`, `add_to_`/`remove_from_` for maps and sets).
    pub writable: bool,
}

/// A typed record of one XenAPI class.
pub trait Record: Clone + std::fmt::Debug + Default + PartialEq + Send + Sync + 'static {
    /// The class this record belongs to.
    const CLASS: crate::Class;
    /// The fields in datamodel order.
    const FIELDS: &'static [FieldMeta];
    /// The object's UUID.
    fn uuid(&self) -> &str;
    /// One field as a typed value, or `None` when the class has no such field.
    fn get_field(&self, name: &str) -> Option<Value>;
    /// Replaces one field from a typed value (writability is the caller's to check).
    fn set_field(&mut self, name: &str, value: Value) -> Result<(), CoreError>;
    /// The whole record as `Value::Record`, what `get_record` returns.
    fn to_value(&self) -> Value;
    /// The whole record through a sink, field by field, without copying it: the same
    /// content as [`Record::to_value`].
    fn write_to(&self, sink: &mut dyn crate::value::ValueSink);
    /// A reference-valued field, for keeping relations consistent.
    fn ref_field(&self, name: &str) -> Option<&crate::value::Ref>;
    /// A reference-valued field, mutably.
    fn ref_field_mut(&mut self, name: &str) -> Option<&mut crate::value::Ref>;
    /// A set-of-references field, mutably.
    fn ref_set_mut(&mut self, name: &str) -> Option<&mut Vec<crate::value::Ref>>;
    /// A set-of-references field.
    fn ref_set(&self, name: &str) -> Option<&Vec<crate::value::Ref>>;
    /// Wraps into the untyped object enum.
    fn into_object(self) -> crate::Object;
    /// Borrows out of the object enum when the class matches.
    fn from_object(obj: &crate::Object) -> Option<&Self>;
    /// Mutably borrows out of the object enum when the class matches.
    fn from_object_mut(obj: &mut crate::Object) -> Option<&mut Self>;
}

/// Looks a field's metadata up by name.
pub fn field_meta(fields: &'static [FieldMeta], name: &str) -> Option<&'static FieldMeta> {
    fields.iter().find(|f| f.name == name)
}

#[doc(hidden)]
#[macro_export]
macro_rules! __wire_name {
    ($field:ident) => {
        stringify!($field)
    };
    ($field:ident, $wire:literal) => {
        $wire
    };
}

#[doc(hidden)]
#[macro_export]
macro_rules! __writable {
    (rw) => {
        true
    };
    (ro) => {
        false
    };
}

/// Declares a XenAPI class.
#[macro_export]
macro_rules! xenapi_class {
    ($(#[$m:meta])* $name:ident, $class:ident {
        $($access:ident $field:ident $(as $wire:literal)? : $ty:ty),+ $(,)?
    }) => {
        $(#[$m])*
        #[derive(Clone, Debug, Default, PartialEq, serde::Serialize, serde::Deserialize)]
        #[allow(non_snake_case, missing_docs)]
        #[serde(default)]
        pub struct $name {
            $(pub $field: $ty),+
        }

        impl $crate::record::Record for $name {
            const CLASS: $crate::Class = $crate::Class::$class;
            const FIELDS: &'static [$crate::record::FieldMeta] = &[
                $($crate::record::FieldMeta {
                    name: $crate::__wire_name!($field $(, $wire)?),
                    ty: <$ty as $crate::value::XenType>::TYPE,
                    writable: $crate::__writable!($access),
                }),+
            ];
            fn uuid(&self) -> &str {
                &self.uuid
            }
            fn get_field(&self, name: &str) -> Option<$crate::value::Value> {
                match name {
                    $($crate::__wire_name!($field $(, $wire)?) =>
                        Some($crate::value::XenType::to_value(&self.$field)),)+
                    _ => None,
                }
            }
            fn set_field(&mut self, name: &str, value: $crate::value::Value) -> Result<(), $crate::error::CoreError> {
                match name {
                    $($crate::__wire_name!($field $(, $wire)?) => {
                        self.$field = <$ty as $crate::value::XenType>::from_value(value)?;
                        Ok(())
                    })+
                    _ => Err($crate::error::CoreError::UnknownField(format!(
                        "{}.{}", $crate::Class::$class.name(), name
                    ))),
                }
            }
            fn to_value(&self) -> $crate::value::Value {
                $crate::value::Value::Record(vec![
                    $(($crate::__wire_name!($field $(, $wire)?),
                       $crate::value::XenType::to_value(&self.$field))),+
                ])
            }
            fn write_to(&self, sink: &mut dyn $crate::value::ValueSink) {
                sink.begin_map();
                $(
                    sink.key($crate::__wire_name!($field $(, $wire)?));
                    $crate::value::XenType::write_to(&self.$field, sink);
                )+
                sink.end_map();
            }
            fn ref_field(&self, name: &str) -> Option<&$crate::value::Ref> {
                match name {
                    $($crate::__wire_name!($field $(, $wire)?) =>
                        (&self.$field as &dyn std::any::Any).downcast_ref::<$crate::value::Ref>(),)+
                    _ => None,
                }
            }
            fn ref_field_mut(&mut self, name: &str) -> Option<&mut $crate::value::Ref> {
                match name {
                    $($crate::__wire_name!($field $(, $wire)?) =>
                        (&mut self.$field as &mut dyn std::any::Any).downcast_mut::<$crate::value::Ref>(),)+
                    _ => None,
                }
            }
            fn ref_set_mut(&mut self, name: &str) -> Option<&mut Vec<$crate::value::Ref>> {
                match name {
                    $($crate::__wire_name!($field $(, $wire)?) =>
                        (&mut self.$field as &mut dyn std::any::Any).downcast_mut::<Vec<$crate::value::Ref>>(),)+
                    _ => None,
                }
            }
            fn ref_set(&self, name: &str) -> Option<&Vec<$crate::value::Ref>> {
                match name {
                    $($crate::__wire_name!($field $(, $wire)?) =>
                        (&self.$field as &dyn std::any::Any).downcast_ref::<Vec<$crate::value::Ref>>(),)+
                    _ => None,
                }
            }
            fn into_object(self) -> $crate::Object {
                $crate::Object::$class(Box::new(self))
            }
            fn from_object(obj: &$crate::Object) -> Option<&Self> {
                match obj {
                    $crate::Object::$class(r) => Some(r),
                    #[allow(unreachable_patterns)]
                    _ => None,
                }
            }
            fn from_object_mut(obj: &mut $crate::Object) -> Option<&mut Self> {
                match obj {
                    $crate::Object::$class(r) => Some(r),
                    #[allow(unreachable_patterns)]
                    _ => None,
                }
            }
        }
    };
}
