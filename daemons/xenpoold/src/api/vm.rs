//! VM lifecycle: each call checks the rules in core, records the operation as current,
//! does the domain work without holding the database, then records the result.

use xenpool_core::ops::{
    check_ha_restart_priority, check_vm_memory_limits, check_vm_operation,
    refresh_vm_allowed_operations, MemoryLimits,
};
use xenpool_core::placement::{check_vm_fits_host, choose_host};
use xenpool_core::{
    Class, CoreError, Ref, VbdRecord, VdiRecord, VifRecord, VmMetricsRecord, VmOperation,
    VmPowerState, VmRecord,
};
use xenpool_rpc::{Request, Value as Wire, XenApiError};

use super::{api_error, ref_param, Api, ApiResult, Ctx};
use crate::state::now;
use xenpool_core::lifecycle;

/// The VM messages handled here, beyond the generic ones.
pub const MESSAGES: &[&str] = &[
    "start",
    "start_on",
    "clean_shutdown",
    "hard_shutdown",
    "shutdown",
    "clean_reboot",
    "hard_reboot",
    "suspend",
    "resume",
    "resume_on",
    "pause",
    "unpause",
    "destroy",
    "clone",
    "copy",
    "provision",
    "create",
    "assert_can_boot_here",
    "get_allowed_VBD_devices",
    "get_allowed_VIF_devices",
    "pool_migrate",
    "set_ha_restart_priority",
    "set_memory_limits",
    "set_memory",
    "set_VCPUs_max",
    "set_VCPUs_at_startup",
];

/// The VM methods routed here (see `api::ROUTES`).
pub const METHODS: &[(&str, &[&str])] = &[("VM", MESSAGES)];

impl Api {
    pub(super) async fn vm_call(
        &self,
        cx: &Ctx,
        req: &Request,
    ) -> Result<Option<Wire>, XenApiError> {
        let m = req.message.as_str();
        let out = match m {
            "start" | "resume" => {
                let mut p = req.reader(4)?;
                p.value()?;
                let vm = ref_param(&mut p, "vm")?;
                let start_paused = p.bool("start_paused")?;
                let force = p.bool("force")?;
                let op = if m == "start" {
                    VmOperation::Start
                } else {
                    VmOperation::Resume
                };
                self.power_op(cx, &vm, op, None, start_paused, force)
                    .await?
            }
            "start_on" | "resume_on" => {
                let mut p = req.reader(5)?;
                p.value()?;
                let vm = ref_param(&mut p, "vm")?;
                let host = ref_param(&mut p, "host")?;
                let start_paused = p.bool("start_paused")?;
                let force = p.bool("force")?;
                let op = if m == "start_on" {
                    VmOperation::StartOn
                } else {
                    VmOperation::ResumeOn
                };
                self.power_op(cx, &vm, op, Some(host), start_paused, force)
                    .await?
            }
            "clean_shutdown" | "hard_shutdown" | "shutdown" | "clean_reboot" | "hard_reboot"
            | "suspend" | "pause" | "unpause" => {
                let mut p = req.reader(2)?;
                p.value()?;
                let vm = ref_param(&mut p, "vm")?;
                let op = match m {
                    "clean_shutdown" => VmOperation::CleanShutdown,
                    "hard_shutdown" => VmOperation::HardShutdown,
                    "shutdown" => VmOperation::Shutdown,
                    "clean_reboot" => VmOperation::CleanReboot,
                    "hard_reboot" => VmOperation::HardReboot,
                    "suspend" => VmOperation::Suspend,
                    "pause" => VmOperation::Pause,
                    _ => VmOperation::Unpause,
                };
                self.power_op(cx, &vm, op, None, false, false).await?
            }
            "destroy" => {
                let mut p = req.reader(2)?;
                p.value()?;
                let vm = ref_param(&mut p, "self")?;
                self.node()
                    .state
                    .write(|txn| {
                        check_vm_operation(txn.db(), &vm, VmOperation::Destroy)?;
                        txn.destroy(Class::VM, &vm)
                    })
                    .map_err(api_error)?;
                Wire::String(String::new())
            }
            "clone" | "copy" => {
                let mut p = req.reader(if m == "clone" { 3 } else { 4 })?;
                p.value()?;
                let vm = ref_param(&mut p, "vm")?;
                let name = p.string("new_name")?.to_string();
                let (op, sr) = if m == "clone" {
                    (VmOperation::Clone, None)
                } else {
                    let sr = ref_param(&mut p, "sr")?;
                    (VmOperation::Copy, Some(sr).filter(|r| !r.is_null()))
                };
                let new = self.clone_vm(&vm, &name, op, sr).await?;
                Wire::String(new.as_str().to_string())
            }
            "provision" => {
                let mut p = req.reader(2)?;
                p.value()?;
                let vm = ref_param(&mut p, "vm")?;
                self.node()
                    .state
                    .db()
                    .get::<VmRecord>(&vm)
                    .map_err(api_error)?;
                Wire::String(String::new())
            }
            "create" => {
                let mut p = req.reader(2)?;
                p.value()?;
                let fields = p.structure("args")?;
                let vm = self.create_vm(fields)?;
                Wire::String(vm.as_str().to_string())
            }
            "pool_migrate" => {
                let mut p = req.reader(4)?;
                p.value()?;
                let vm = ref_param(&mut p, "vm")?;
                let host = ref_param(&mut p, "host")?;
                self.pool_migrate(cx, &vm, &host).await?
            }
            "assert_can_boot_here" => {
                let mut p = req.reader(3)?;
                p.value()?;
                let vm = ref_param(&mut p, "self")?;
                let host = ref_param(&mut p, "host")?;
                let inputs = self.node().state.inputs();
                let db = self.node().state.db();
                check_vm_fits_host(&db, &vm, &host, &inputs).map_err(api_error)?;
                xenpool_core::upgrade::check_boot_here_during_upgrade(&db, &vm, &host)
                    .map_err(api_error)?;
                Wire::String(String::new())
            }
            "get_allowed_VBD_devices" | "get_allowed_VIF_devices" => {
                let mut p = req.reader(2)?;
                p.value()?;
                let vm = ref_param(&mut p, "vm")?;
                let db = self.node().state.db();
                let free = if m == "get_allowed_VBD_devices" {
                    xenpool_core::devices::allowed_vbd_devices(&db, &vm)
                } else {
                    xenpool_core::devices::allowed_vif_devices(&db, &vm)
                }
                .map_err(api_error)?;
                Wire::Array(free.into_iter().map(Wire::String).collect())
            }
            "set_ha_restart_priority" => {
                let mut p = req.reader(3)?;
                p.value()?;
                let vm = ref_param(&mut p, "self")?;
                let value = p.string("value")?.to_string();
                check_ha_restart_priority(&value).map_err(api_error)?;
                self.set_ha_restart_priority(&vm, value, false)?;
                Wire::String(String::new())
            }
            "set_memory_limits" => {
                let mut p = req.reader(6)?;
                p.value()?;
                let vm = ref_param(&mut p, "self")?;
                let mut vals = [0i64; 4];
                for (i, name) in ["static_min", "static_max", "dynamic_min", "dynamic_max"]
                    .iter()
                    .enumerate()
                {
                    vals[i] = p.int(name)?;
                }
                self.set_memory(&vm, vals)?;
                Wire::String(String::new())
            }
            "set_memory" => {
                let mut p = req.reader(3)?;
                p.value()?;
                let vm = ref_param(&mut p, "self")?;
                let v = p.int("value")?;
                let smin = self
                    .node()
                    .state
                    .db()
                    .get::<VmRecord>(&vm)
                    .map_err(api_error)?
                    .memory_static_min;
                self.set_memory(&vm, [smin.min(v), v, v, v])?;
                Wire::String(String::new())
            }
            _ => return Ok(None),
        };
        Ok(Some(out))
    }

    fn set_memory(&self, vm: &Ref, [smin, smax, dmin, dmax]: [i64; 4]) -> Result<(), XenApiError> {
        let limits = MemoryLimits {
            static_min: smin,
            static_max: smax,
            dynamic_min: dmin,
            dynamic_max: dmax,
        };
        let node = self.node();
        node.state
            .write(|txn| {
                let effect = check_vm_memory_limits(txn.db(), vm, limits)?;
                if let Some(static_max) = effect.static_max {
                    node.ha_check_change(txn.db(), false, |db, input| {
                        xenpool_ha::pool_input::resize_vm(db, input, vm, static_max);
                    })?;
                }
                txn.update::<VmRecord>(vm, |v| {
                    v.memory_static_min = smin;
                    v.memory_static_max = smax;
                    v.memory_dynamic_min = dmin;
                    v.memory_dynamic_max = dmax;
                    v.memory_target = dmax;
                })
            })
            .map_err(api_error)?;
        node.ha_refresh();
        Ok(())
    }

    fn create_vm(&self, fields: &[(String, Wire)]) -> Result<Ref, XenApiError> {
        let state = &self.node().state;
        let obj = super::objects::record_from(Class::VM, fields)?;
        let vm = state.new_ref();
        let uuid = state.new_uuid();
        let metrics = state.new_ref();
        state
            .write(|txn| {
                txn.create(
                    metrics.clone(),
                    VmMetricsRecord {
                        uuid: state.new_uuid(),
                        ..Default::default()
                    },
                )?;
                let xenpool_core::Object::VM(mut rec) = obj else {
                    return Err(CoreError::handle_invalid("VM", &vm));
                };
                // Runtime fields are the toolstack's, whatever the caller sent.
                rec.uuid = uuid;
                rec.power_state = VmPowerState::Halted;
                rec.resident_on = Ref::null();
                rec.scheduled_to_be_resident_on = Ref::null();
                rec.is_control_domain = false;
                rec.current_operations.clear();
                rec.VBDs.clear();
                rec.VIFs.clear();
                rec.snapshots.clear();
                rec.domid = -1;
                rec.metrics = metrics.clone();
                check_ha_restart_priority(&rec.ha_restart_priority)?;
                txn.create(vm.clone(), *rec)?;
                refresh_vm_allowed_operations(txn, &vm).map(|_| ())
            })
            .map_err(api_error)?;
        Ok(vm)
    }

    /// Clones (or copies to `sr`) a VM: its disks are copied by the SR drivers first, then
    /// the records are created in one transaction; if that fails the copies are removed.
    async fn clone_vm(
        &self,
        vm: &Ref,
        name: &str,
        op: VmOperation,
        sr: Option<Ref>,
    ) -> Result<Ref, XenApiError> {
        let node = self.node();
        let state = &node.state;
        let disks: Vec<(Ref, VdiRecord)> = {
            let db = state.db();
            check_vm_operation(&db, vm, op).map_err(api_error)?;
            let src = db.get::<VmRecord>(vm).map_err(api_error)?;
            src.VBDs
                .iter()
                .filter_map(|b| db.get::<VbdRecord>(b).ok())
                .filter(|b| !b.VDI.is_null())
                .filter_map(|b| {
                    db.get::<VdiRecord>(&b.VDI)
                        .ok()
                        .map(|d| (b.VDI.clone(), d.clone()))
                })
                .collect()
        };
        let mut copies: Vec<(Ref, Ref, String)> = Vec::new(); // source VDI, target SR, location
        for (vdi, d) in &disks {
            let target = sr.clone().unwrap_or_else(|| d.SR.clone());
            match node
                .vdi_copy(&d.SR, &d.location, &target, &d.name_label)
                .await
            {
                Ok(location) => copies.push((vdi.clone(), target, location)),
                Err(e) => {
                    for (_, t, l) in &copies {
                        let _ = node.vdi_destroy(t, l).await;
                    }
                    return Err(e);
                }
            }
        }
        let new = state.new_ref();
        let created = state.write(|txn| {
            check_vm_operation(txn.db(), vm, op)?;
            let src = txn.get::<VmRecord>(vm)?.clone();
            let metrics = state.new_ref();
            txn.create(
                metrics.clone(),
                VmMetricsRecord {
                    uuid: state.new_uuid(),
                    ..Default::default()
                },
            )?;
            let mut rec = src.clone();
            rec.uuid = state.new_uuid();
            rec.name_label = name.to_string();
            rec.is_default_template = false;
            rec.VBDs.clear();
            rec.VIFs.clear();
            rec.snapshots.clear();
            rec.current_operations.clear();
            rec.allowed_operations.clear();
            rec.other_config.remove("default_template");
            rec.metrics = metrics;
            rec.domid = -1;
            txn.create(new.clone(), rec)?;
            for vbd in &src.VBDs {
                let b = txn.get::<VbdRecord>(vbd)?.clone();
                let mut vdi_ref = Ref::null();
                if let Some((_, target, location)) = copies.iter().find(|(v, _, _)| *v == b.VDI) {
                    let d = txn.get::<VdiRecord>(&b.VDI)?.clone();
                    vdi_ref = state.new_ref();
                    txn.create(
                        vdi_ref.clone(),
                        VdiRecord {
                            uuid: state.new_uuid(),
                            name_label: d.name_label.clone(),
                            name_description: d.name_description.clone(),
                            SR: target.clone(),
                            virtual_size: d.virtual_size,
                            r#type: d.r#type,
                            location: location.clone(),
                            managed: true,
                            sm_config: d.sm_config.clone(),
                            ..Default::default()
                        },
                    )?;
                }
                txn.create(
                    state.new_ref(),
                    VbdRecord {
                        uuid: state.new_uuid(),
                        VM: new.clone(),
                        VDI: vdi_ref,
                        currently_attached: false,
                        allowed_operations: Vec::new(),
                        current_operations: Default::default(),
                        ..b
                    },
                )?;
            }
            for vif in &src.VIFs {
                let f = txn.get::<VifRecord>(vif)?.clone();
                txn.create(
                    state.new_ref(),
                    VifRecord {
                        uuid: state.new_uuid(),
                        VM: new.clone(),
                        MAC: xenpool_core::devices::mac_from(state.random()),
                        currently_attached: false,
                        ..f
                    },
                )?;
            }
            refresh_vm_allowed_operations(txn, &new).map(|_| ())
        });
        if let Err(e) = created {
            for (_, t, l) in &copies {
                let _ = node.vdi_destroy(t, l).await;
            }
            return Err(api_error(e));
        }
        Ok(new)
    }

    pub(crate) fn set_ha_restart_priority(
        &self,
        vm: &Ref,
        value: String,
        force: bool,
    ) -> Result<(), XenApiError> {
        let node = self.node();
        let priority: xenpool_ha::RestartPriority = value.parse().map_err(api_error)?;
        node.state
            .write_checked(|txn| {
                let db = txn.db();
                node.ha_check_change(db, force, |_, input| {
                    xenpool_ha::pool_input::set_priority(input, vm, priority);
                })?;
                txn.update::<VmRecord>(vm, |v| {
                    v.ha_always_run = value == "restart";
                    v.ha_restart_priority = value;
                })
            })
            .map_err(api_error)?;
        node.ha_refresh();
        Ok(())
    }

    /// Recomputes a VM's allowed operations (after a field its rules read changed).
    pub(crate) fn refresh_vm(&self, vm: &Ref) {
        let _ = self
            .node()
            .state
            .write(|txn| refresh_vm_allowed_operations(txn, vm).map(|_| ()));
    }

    pub(super) async fn power_op(
        &self,
        cx: &Ctx,
        vm: &Ref,
        op: VmOperation,
        target: Option<Ref>,
        start_paused: bool,
        force: bool,
    ) -> ApiResult {
        let node = self.node();
        let state = &node.state;
        // The key under which the operation shows in current_operations: the task when
        // there is one, else a fresh reference standing for this call.
        let key = cx.task.clone().unwrap_or_else(|| state.new_ref());
        let inputs = state.inputs();
        let (host, before) = state
            .write_checked(|txn| {
                check_vm_operation(txn.db(), vm, op)?;
                let v = txn.get::<VmRecord>(vm)?.clone();
                let host = match op {
                    VmOperation::Start | VmOperation::Resume => choose_host(txn.db(), vm, &inputs)?,
                    VmOperation::StartOn | VmOperation::ResumeOn => {
                        let host = target.clone().unwrap_or_default();
                        check_vm_fits_host(txn.db(), vm, &host, &inputs)?;
                        xenpool_core::upgrade::check_start_on_during_upgrade(txn.db(), &host)?;
                        host
                    }
                    _ => v.resident_on.clone(),
                };
                let starting = lifecycle::is_starting(op);
                if starting {
                    node.ha_check_change(txn.db(), force, |_, input| {
                        xenpool_ha::pool_input::place_vm(input, vm, &host);
                    })?;
                }
                txn.update::<VmRecord>(vm, |r| {
                    r.current_operations.insert(key.as_str().to_string(), op);
                    if starting {
                        r.scheduled_to_be_resident_on = host.clone();
                    }
                })?;
                refresh_vm_allowed_operations(txn, vm)?;
                Ok((host, v))
            })
            .map_err(api_error)?;
        self.progress(cx, 0.1);
        let work = async {
            self.check_cancelled(cx)?;
            let Some(action) = lifecycle::domain_action(op, before.power_state, start_paused)
            else {
                // A suspended VM has no running domain: stopping it discards its image.
                return Ok(-1);
            };
            node.domain_op(&host, &before, action).await
        };
        let mut outcome = work.await;
        // Cancelled while the domain was being built: undo it, so a cancelled start leaves
        // the VM as it found it.
        if let (Some(undo), true) = (lifecycle::undo_of_cancelled(op), outcome.is_ok()) {
            if let Err(cancelled) = self.check_cancelled(cx) {
                match node.domain_op(&host, &before, undo).await {
                    Ok(_) => outcome = Err(cancelled),
                    Err(e) => {
                        tracing::warn!(vm = %vm, error = %e, "could not undo a cancelled start")
                    }
                }
            }
        }
        self.progress(cx, 0.9);
        let result = state.write(|txn| {
            if !txn.db().exists(Class::VM, vm) {
                return Ok(());
            }
            txn.update::<VmRecord>(vm, |r| {
                r.current_operations.remove(key.as_str());
                r.scheduled_to_be_resident_on = Ref::null();
            })?;
            let done = outcome
                .as_ref()
                .ok()
                .zip(lifecycle::power_outcome(op, start_paused));
            if let Some((domid, after)) = done {
                let power = after.power_state;
                let (resident, domid) = if after.resident {
                    (host.clone(), *domid)
                } else {
                    (Ref::null(), -1)
                };
                let metrics = before.metrics.clone();
                txn.update::<VmRecord>(vm, |r| {
                    r.power_state = power;
                    r.resident_on = resident;
                    r.domid = domid;
                })?;
                if txn.db().exists(Class::VMMetrics, &metrics) {
                    txn.update::<VmMetricsRecord>(&metrics, |m| {
                        m.last_updated = now();
                        if power == VmPowerState::Running
                            && before.power_state != VmPowerState::Running
                        {
                            m.start_time = now();
                        }
                        m.memory_actual = if power == VmPowerState::Halted {
                            0
                        } else {
                            before.memory_static_max
                        };
                        m.VCPUs_number = before.VCPUs_at_startup;
                    })?;
                }
            }
            crate::domains::follow_power_state(txn, node, vm)?;
            refresh_vm_allowed_operations(txn, vm).map(|_| ())
        });
        if let Err(e) = result {
            tracing::error!(vm = %vm, error = %e, "could not record a VM operation's result");
        }
        node.after_vm_change();
        outcome.map(|_| Wire::String(String::new()))
    }
}
