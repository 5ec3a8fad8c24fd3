//! Create and destroy calls of VBD, VIF and message, and the host calls the pool rules
//! guard.

use xenpool_core::devices;
use xenpool_core::ops::{check_host_operation, refresh_vm_allowed_operations};
use xenpool_core::{Class, HostOperation, HostRecord, MessageClass, MessageRecord, Object, Ref};
use xenpool_rpc::{Request, Value as Wire, XenApiError};

use super::{api_error, ref_param, Api, Ctx};
use crate::conv::{from_wire, to_wire};
use crate::state::now;

/// A record of `class` from a client's create call: fields it does not know are ignored, as
/// xapi ignores them.
pub(super) fn record_from(class: Class, fields: &[(String, Wire)]) -> Result<Object, XenApiError> {
    let mut obj = class.default_object();
    for (name, value) in fields {
        if let Some(meta) = class.fields().iter().find(|f| f.name == name) {
            let v = from_wire(meta.ty, value).map_err(api_error)?;
            obj.set_field(meta.name, v).map_err(api_error)?;
        }
    }
    Ok(obj)
}

/// The methods routed here (see `api::ROUTES`).
pub const METHODS: &[(&str, &[&str])] = &[
    ("VBD", &["create", "destroy"]),
    ("VIF", &["create", "destroy"]),
    ("message", &["create", "destroy", "get_since"]),
    (
        "host",
        &[
            "get_servertime",
            "get_server_localtime",
            "disable",
            "enable",
            "evacuate",
            "get_vms_which_prevent_evacuation",
            "destroy",
            "reboot",
            "shutdown",
        ],
    ),
];

fn void() -> Option<Wire> {
    Some(Wire::String(String::new()))
}

fn string(r: &Ref) -> Option<Wire> {
    Some(Wire::String(r.as_str().to_string()))
}

impl Api {
    /// `<class>.destroy(self)` where the database's relation rules say all there is to say.
    pub(super) fn destroy_call(
        &self,
        class: Class,
        req: &Request,
    ) -> Result<Option<Wire>, XenApiError> {
        let mut p = req.reader(2)?;
        p.value()?;
        let r = ref_param(&mut p, "self")?;
        self.node()
            .state
            .write(|txn| txn.destroy(class, &r))
            .map_err(api_error)?;
        Ok(void())
    }

    pub(super) async fn object_call(
        &self,
        cx: &Ctx,
        req: &Request,
    ) -> Result<Option<Wire>, XenApiError> {
        let node = self.node();
        let state = &node.state;
        let class = req.class.as_str();
        let m = req.message.as_str();
        Ok(match (class, m) {
            ("VBD", "create") | ("VIF", "create") => {
                let cls = if class == "VBD" {
                    Class::VBD
                } else {
                    Class::VIF
                };
                let mut p = req.reader(2)?;
                p.value()?;
                let obj = record_from(cls, p.structure("args")?)?;
                let r = state.new_ref();
                let uuid = state.new_uuid();
                let random = state.random();
                state
                    .write_checked(|txn| {
                        let vm = devices::device_vm(&obj);
                        devices::check_device_create(txn.db(), &vm)?;
                        let obj = devices::new_device(obj, uuid, devices::mac_from(random));
                        node.ha_check_change(txn.db(), false, |db, input| {
                            xenpool_ha::pool_input::add_device(db, input, &obj);
                        })?;
                        txn.create_object(r.clone(), obj)?;
                        refresh_vm_allowed_operations(txn, &vm)
                    })
                    .map_err(api_error)?;
                node.after_vm_change();
                string(&r)
            }
            ("VBD", "destroy") | ("VIF", "destroy") => {
                let cls = if class == "VBD" {
                    Class::VBD
                } else {
                    Class::VIF
                };
                let mut p = req.reader(2)?;
                p.value()?;
                let r = ref_param(&mut p, "self")?;
                state
                    .write(|txn| {
                        devices::check_device_destroy(txn.db(), cls, &r)?;
                        txn.destroy(cls, &r)
                    })
                    .map_err(api_error)?;
                node.after_vm_change();
                void()
            }
            ("message", "create") => {
                let mut p = req.reader(6)?;
                p.value()?;
                let name = p.string("name")?.to_string();
                let priority = p.int("priority")?;
                let cls = p.string("cls")?;
                let cls = MessageClass::parse(cls)
                    .ok_or_else(|| XenApiError::new("INVALID_VALUE", ["cls", cls]))?;
                let obj_uuid = p.string("obj_uuid")?.to_string();
                let body = p.string("body")?.to_string();
                let r = node
                    .raise_message(&name, priority, cls, &obj_uuid, &body)
                    .map_err(api_error)?;
                string(&r)
            }
            ("message", "destroy") => self.destroy_call(Class::Message, req)?,
            ("message", "get_since") => {
                let mut p = req.reader(2)?;
                p.value()?;
                let since = p.value()?;
                let since = match since {
                    Wire::DateTime(s) | Wire::String(s) => s.clone(),
                    _ => String::new(),
                };
                let db = state.db();
                Some(Wire::Struct(
                    db.all::<MessageRecord>()
                        .filter(|(_, m)| m.timestamp.as_str() > since.as_str())
                        .map(|(r, m)| {
                            (
                                r.as_str().to_string(),
                                to_wire(&xenpool_core::Record::to_value(m), cx.ints),
                            )
                        })
                        .collect(),
                ))
            }
            ("host", "get_servertime") | ("host", "get_server_localtime") => {
                Some(Wire::DateTime(now().as_str().to_string()))
            }
            ("host", "destroy") => {
                let mut p = req.reader(2)?;
                p.value()?;
                let host = ref_param(&mut p, "self")?;
                let inputs = state.inputs();
                state
                    .write(|txn| {
                        xenpool_core::maintenance::check_host_destroy(
                            txn.db(),
                            &host,
                            &state.host,
                            &inputs,
                        )?;
                        xenpool_core::membership::forget_host(txn, &host)
                    })
                    .map_err(api_error)?;
                node.ha_refresh();
                void()
            }
            ("host", "reboot") | ("host", "shutdown") => {
                let mut p = req.reader(2)?;
                p.value()?;
                let host = ref_param(&mut p, "host")?;
                let what = if m == "reboot" {
                    crate::power::PowerCycle::Reboot
                } else {
                    crate::power::PowerCycle::Shutdown
                };
                Some(self.power_cycle(cx, &host, what).await?)
            }
            ("host", "evacuate") => {
                let mut p = req.reader(2)?;
                p.value()?;
                let host = ref_param(&mut p, "host")?;
                Some(self.evacuate(cx, &host).await?)
            }
            ("host", "get_vms_which_prevent_evacuation") => {
                let mut p = req.reader(2)?;
                p.value()?;
                let host = ref_param(&mut p, "self")?;
                Some(self.vms_which_prevent_evacuation(&host)?)
            }
            ("host", "disable") | ("host", "enable") => {
                let mut p = req.reader(2)?;
                p.value()?;
                let host = ref_param(&mut p, "host")?;
                let enable = m == "enable";
                let inputs = state.inputs();
                state
                    .write_checked(|txn| {
                        let op = if enable {
                            HostOperation::Enable
                        } else {
                            HostOperation::Disable
                        };
                        check_host_operation(txn.db(), &host, op, &inputs)?;
                        if !enable {
                            node.ha_check_change(txn.db(), false, |_, input| {
                                xenpool_ha::pool_input::disable_host(input, &host);
                            })?;
                        }
                        txn.update::<HostRecord>(&host, |h| h.enabled = enable)?;
                        xenpool_core::ops::refresh_allowed_operations(txn, &inputs)
                    })
                    .map_err(api_error)?;
                node.after_vm_change();
                void()
            }
            _ => None,
        })
    }
}
