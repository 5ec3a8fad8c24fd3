//! The pure heart of a xenpool pool: the XenAPI datamodel as typed records, the in-memory
//! pool database with generations for `event.from`, the rules that decide which operations
//! are allowed, and VM placement.
//!
//! This crate must never do I/O, read a clock, draw randomness or spawn anything: time,
//! random numbers and persistence come in as arguments or traits, so every decision here is a
//! pure function a test can call without a network.
//!
//! # Layout
//! - [`value`]: typed XenAPI values, references, UUIDs and timestamps.
//! - [`record`]: the class-declaring macro and the [`Record`] trait.
//! - [`model`]: the classes and enums of the datamodel.
//! - [`db`]: the pool database: tables, relations, transactions, generations, changes since a token.
//! - [`persist`]: the persistence trait the database writes through (implemented elsewhere).
//! - [`ops`]: allowed operations of VMs and hosts, and the check run before each operation.
//! - [`placement`]: where a VM may start.
//! - [`lifecycle`]: what each VM power operation does to its domain and leaves behind.
//! - [`genesis`]: the records of a new host and of a pool of one.
//! - [`devices`]: when VBDs and VIFs may come and go, and when a disk or SR plug is in use.
//! - [`rbac`]: the XenAPI roles and the role each call needs.
//! - [`membership`]: join and eject preconditions, forgetting a host, what a member serves.
//! - [`migration`]: the checks of `VM.pool_migrate` and what a migration records.
//! - [`evacuate`]: the evacuation plan of a host and the VMs that prevent it.
//! - [`maintenance`]: the guards of host reboot, shutdown and destroy, and of ejecting a
//!   dead host.
//! - [`upgrade`]: rolling pool upgrade: the mode, version comparison, what it forbids.
//! - [`network`]: what the network, PIF, VLAN and bond calls check and record.
//! - [`ha_enable`]: the preconditions and settings of `pool.enable_ha` and `pool.disable_ha`.
//! - [`snapshot`]: snapshots, checkpoints and reverts; the rules of the SR and PBD calls.
//! - [`error`]: [`CoreError`] and the XenAPI codes.
#![deny(missing_docs)]

pub mod db;
pub mod devices;
pub mod error;
pub mod evacuate;
pub mod genesis;
pub mod ha_enable;
pub mod lifecycle;
pub mod maintenance;
pub mod membership;
pub mod migration;
pub mod model;
pub mod network;
pub mod ops;
pub mod persist;
pub mod placement;
pub mod query;
pub mod rbac;
pub mod record;
pub mod snapshot;
pub mod upgrade;
pub mod value;

// The shared pool builder of the integration tests, reused by the unit tests of the
// maintenance rules: it names this crate by its package name.
#[cfg(test)]
extern crate self as xenpool_core;
#[cfg(test)]
mod maintenance_tests;
#[cfg(test)]
#[path = "../tests/ops_support/mod.rs"]
mod ops_support;

pub use db::{Change, ChangeKind, Database, Txn};
pub use error::CoreError;
pub use model::*;
pub use record::{FieldMeta, Record};
pub use value::{DateTime, FieldType, Ref, Value, XenType};

/// Runs `$m!` with the list of `(variant, record type)` of every class.
macro_rules! with_classes {
    ($m:ident) => {
        $m! {
            Pool => PoolRecord,
            Host => HostRecord,
            HostMetrics => HostMetricsRecord,
            VM => VmRecord,
            VMMetrics => VmMetricsRecord,
            SR => SrRecord,
            PBD => PbdRecord,
            VDI => VdiRecord,
            VBD => VbdRecord,
            Network => NetworkRecord,
            PIF => PifRecord,
            VIF => VifRecord,
            VLAN => VlanRecord,
            Bond => BondRecord,
            Console => ConsoleRecord,
            Task => TaskRecord,
            Message => MessageRecord,
            Session => SessionRecord,
            Role => RoleRecord,
            LocalUser => LocalUserRecord,
        }
    };
}

macro_rules! define_object {
    ($($variant:ident => $rec:ident),+ $(,)?) => {
        /// A record of any class.
        #[derive(Clone, Debug, PartialEq)]
        #[allow(missing_docs)]
        pub enum Object {
            $($variant(Box<$rec>)),+
        }

        impl Object {
            /// The object's class.
            pub fn class(&self) -> Class {
                match self { $(Object::$variant(_) => Class::$variant),+ }
            }
            /// The object's UUID.
            pub fn uuid(&self) -> &str {
                match self { $(Object::$variant(r) => r.uuid()),+ }
            }
            /// One field as a typed value.
            pub fn get_field(&self, name: &str) -> Option<Value> {
                match self { $(Object::$variant(r) => r.get_field(name)),+ }
            }
            /// Replaces one field.
            pub fn set_field(&mut self, name: &str, value: Value) -> Result<(), CoreError> {
                match self { $(Object::$variant(r) => r.set_field(name, value)),+ }
            }
            /// The whole record as a value.
            pub fn to_value(&self) -> Value {
                match self { $(Object::$variant(r) => r.to_value()),+ }
            }
            /// The whole record through a sink, without copying it.
            pub fn write_to(&self, sink: &mut dyn value::ValueSink) {
                match self { $(Object::$variant(r) => r.write_to(sink)),+ }
            }
            /// A reference-valued field.
            pub fn ref_field(&self, name: &str) -> Option<&Ref> {
                match self { $(Object::$variant(r) => r.ref_field(name)),+ }
            }
            /// A reference-valued field, mutably.
            pub fn ref_field_mut(&mut self, name: &str) -> Option<&mut Ref> {
                match self { $(Object::$variant(r) => r.ref_field_mut(name)),+ }
            }
            /// A set-of-references field.
            pub fn ref_set(&self, name: &str) -> Option<&Vec<Ref>> {
                match self { $(Object::$variant(r) => r.ref_set(name)),+ }
            }
            /// A set-of-references field, mutably.
            pub fn ref_set_mut(&mut self, name: &str) -> Option<&mut Vec<Ref>> {
                match self { $(Object::$variant(r) => r.ref_set_mut(name)),+ }
            }
            /// The record serialised as JSON (the persistence and replication format).
            pub fn to_json(&self) -> String {
                // Records hold only strings, numbers, bools, sequences and string-keyed or
                // integer-keyed maps, which serde_json always encodes.
                match self { $(Object::$variant(r) => serde_json::to_string(r).unwrap_or_default()),+ }
            }
            /// A record of `class` from its JSON form.
            pub fn from_json(class: Class, json: &str) -> Result<Object, CoreError> {
                match class {
                    $(Class::$variant => serde_json::from_str::<$rec>(json)
                        .map(|r| Object::$variant(Box::new(r)))
                        .map_err(|e| CoreError::Persistence(crate::persist::PersistenceError::with_source(format!("bad {} record", class.name()), e)))),+
                }
            }
        }

        /// The classes of the datamodel the pool keeps.
        #[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
        #[allow(missing_docs)]
        pub enum Class {
            $($variant),+
        }

        impl Class {
            /// Every class.
            pub const ALL: &'static [Class] = &[$(Class::$variant),+];
            /// The field metadata of the class.
            pub fn fields(self) -> &'static [FieldMeta] {
                match self { $(Class::$variant => <$rec as Record>::FIELDS),+ }
            }
            /// A record with every field at its default.
            pub fn default_object(self) -> Object {
                match self { $(Class::$variant => Object::$variant(Box::default())),+ }
            }
        }
    };
}

with_classes!(define_object);

impl Class {
    /// The class name as XenAPI writes it (`VM`, `host_metrics`, ...).
    pub fn name(self) -> &'static str {
        match self {
            Class::Pool => "pool",
            Class::Host => "host",
            Class::HostMetrics => "host_metrics",
            Class::VM => "VM",
            Class::VMMetrics => "VM_metrics",
            Class::SR => "SR",
            Class::PBD => "PBD",
            Class::VDI => "VDI",
            Class::VBD => "VBD",
            Class::Network => "network",
            Class::PIF => "PIF",
            Class::VIF => "VIF",
            Class::VLAN => "VLAN",
            Class::Bond => "Bond",
            Class::Console => "console",
            Class::Task => "task",
            Class::Message => "message",
            Class::Session => "session",
            Class::Role => "role",
            Class::LocalUser => "local_user",
        }
    }

    /// From a class name, in any case (clients send `vm`, `VM`, `Vm`).
    pub fn parse(name: &str) -> Option<Class> {
        Class::ALL
            .iter()
            .copied()
            .find(|c| c.name().eq_ignore_ascii_case(name))
    }

    /// Whether clients may see this class over the API.
    pub fn is_exposed(self) -> bool {
        !matches!(self, Class::LocalUser)
    }

    /// Position in per-class arrays.
    pub fn index(self) -> usize {
        self as usize
    }
}

impl std::fmt::Display for Class {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}
