//! Storage calls: SR create, introduce, forget, destroy, scan and update; PBD create,
//! destroy, plug and unplug; VDI create, destroy, snapshot, clone, copy and resize; VM
//! snapshot, checkpoint and revert. The rules are `xenpool_core::snapshot`'s; the work on
//! disks is done by a host that has the SR plugged (`crate::storage`), forwarded when that
//! host is a member.

use xenpool_core::lifecycle::DomainAction;
use xenpool_core::ops::refresh_vm_allowed_operations;
use xenpool_core::snapshot::{self as rules, StorageRefusal};
use xenpool_core::{
    devices, Class, CoreError, HostRecord, Object, PbdRecord, Ref, SrRecord, Txn, VbdRecord,
    VdiRecord, VdiType, VifRecord, VmMetricsRecord, VmOperation, VmPowerState, VmRecord,
};
use xenpool_rpc::{Request, Value as Wire, XenApiError};
use xenpool_storage::VdiInfo;

use super::{api_error, ref_param, Api, ApiResult, Ctx};
use crate::state::now;
use crate::storage::{dir_kind, place_of, SrDone, SrWork};

/// The methods routed here (see `api::ROUTES`).
pub const METHODS: &[(&str, &[&str])] = &[
    (
        "SR",
        &["create", "introduce", "forget", "destroy", "scan", "update"],
    ),
    ("PBD", &["create", "destroy", "plug", "unplug"]),
    (
        "VDI",
        &[
            "create",
            "destroy",
            "snapshot",
            "clone",
            "copy",
            "resize",
            "resize_online",
            "forget",
            "update",
        ],
    ),
    ("VM", &["snapshot", "checkpoint", "revert"]),
];

/// Host-to-host storage calls, authenticated by the pool secret (see
/// [`Api::storage_internal`]).
pub const INTERNAL_METHODS: &[(&str, &[&str])] = &[("host", &["xenpool_sr_work"])];

fn void() -> Wire {
    Wire::String(String::new())
}

fn string(r: &Ref) -> Wire {
    Wire::String(r.as_str().to_string())
}

fn refusal(r: StorageRefusal) -> XenApiError {
    let mut d = r.to_description();
    let code = d.remove(0);
    XenApiError::new(code, d)
}

fn size_i64(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

/// Writes the sizes a driver reported into the VDI's record.
fn record_vdi_sizes(
    node: &crate::node::Node,
    vdi: &Ref,
    info: &xenpool_storage::VdiInfo,
) -> Result<(), XenApiError> {
    node.state
        .write(|txn| {
            txn.update::<VdiRecord>(vdi, |d| {
                d.virtual_size = size_i64(info.virtual_size);
                d.physical_utilisation = size_i64(info.physical_utilisation);
            })
        })
        .map_err(api_error)
}

fn no_vdi() -> XenApiError {
    XenApiError::internal_error("no VDI from the storage host")
}

/// Records the SR's space as its driver reports it, and its allowed operations.
fn record_usage(
    txn: &mut Txn<'_>,
    sr: &Ref,
    usage: Option<xenpool_storage::SrUsage>,
) -> Result<(), CoreError> {
    if !txn.db().exists(Class::SR, sr) {
        return Ok(());
    }
    let ops = rules::sr_allowed_operations(txn.db(), sr);
    txn.update::<SrRecord>(sr, |s| {
        if let Some(u) = usage {
            s.physical_size = size_i64(u.physical_size);
            s.physical_utilisation = size_i64(u.physical_utilisation);
            s.virtual_allocation = size_i64(u.virtual_allocation);
        }
        s.allowed_operations = ops;
    })
}

impl Api {
    pub(super) async fn storage_call(
        &self,
        cx: &Ctx,
        req: &Request,
    ) -> Result<Option<Wire>, XenApiError> {
        let class = req.class.as_str();
        let m = req.message.as_str();
        Ok(Some(match (class, m) {
            ("SR", "create") => return self.sr_create(cx, req).await,
            ("SR", "introduce") => self.sr_introduce(req)?,
            ("SR", "forget") => {
                let sr = self.one_ref(req, "sr")?;
                self.node()
                    .state
                    .write(|txn| {
                        rules::check_sr_forget(txn.db(), &sr)?;
                        // The PBDs and the VDI records go with the SR; the data stays.
                        txn.destroy(Class::SR, &sr)
                    })
                    .map_err(api_error)?;
                self.node().after_vm_change();
                void()
            }
            ("SR", "destroy") => self.sr_destroy(req).await?,
            ("SR", "scan") => {
                let sr = self.one_ref(req, "sr")?;
                self.sr_scan(&sr, true).await?;
                void()
            }
            ("SR", "update") => {
                let sr = self.one_ref(req, "sr")?;
                self.sr_scan(&sr, false).await?;
                void()
            }
            ("PBD", "create") => self.pbd_create(req)?,
            ("PBD", "destroy") => {
                let pbd = self.one_ref(req, "self")?;
                let state = &self.node().state;
                state
                    .write(|txn| {
                        rules::check_pbd_destroy(txn.db(), &pbd)?;
                        let sr = txn.get::<PbdRecord>(&pbd)?.SR.clone();
                        txn.destroy(Class::PBD, &pbd)?;
                        record_usage(txn, &sr, None)
                    })
                    .map_err(api_error)?;
                void()
            }
            ("PBD", "plug") => {
                let pbd = self.one_ref(req, "self")?;
                self.plug_pbd(&pbd).await?;
                void()
            }
            ("PBD", "unplug") => {
                let pbd = self.one_ref(req, "self")?;
                self.unplug_pbd(&pbd).await?;
                void()
            }
            ("VDI", "create") => self.vdi_create(req).await?,
            ("VDI", "destroy") => {
                let vdi = self.one_ref(req, "self")?;
                self.vdi_destroy(&vdi).await?;
                void()
            }
            ("VDI", "snapshot") | ("VDI", "clone") => {
                let mut p = req.reader_range(2, 3)?;
                p.value()?;
                let vdi = ref_param(&mut p, "vdi")?;
                let r = self.vdi_duplicate(&vdi, None, m == "snapshot").await?;
                string(&r)
            }
            ("VDI", "copy") => {
                let mut p = req.reader_range(3, 5)?;
                p.value()?;
                let vdi = ref_param(&mut p, "vdi")?;
                let sr = ref_param(&mut p, "sr")?;
                let _base = p.optional();
                let into = p
                    .optional()
                    .and_then(|v| v.as_str())
                    .filter(|s| !Ref::from_string(*s).is_null());
                if into.is_some() {
                    return Err(XenApiError::new(
                        "OPERATION_NOT_ALLOWED",
                        ["VDI.copy into an existing VDI is not supported"],
                    ));
                }
                let r = self.vdi_duplicate(&vdi, Some(sr), false).await?;
                string(&r)
            }
            ("VDI", "forget") => {
                let vdi = self.one_ref(req, "vdi")?;
                self.node()
                    .state
                    .write(|txn| {
                        rules::check_vdi_unused(txn.db(), &vdi, "forget")?;
                        let sr = txn.get::<VdiRecord>(&vdi)?.SR.clone();
                        // The record goes; the data stays for a scan to find again.
                        txn.destroy(Class::VDI, &vdi)?;
                        record_usage(txn, &sr, None)
                    })
                    .map_err(api_error)?;
                self.node().after_vm_change();
                void()
            }
            ("VDI", "update") => {
                let vdi = self.one_ref(req, "vdi")?;
                self.vdi_update(&vdi).await?;
                void()
            }
            ("VDI", "resize") | ("VDI", "resize_online") => {
                let mut p = req.reader(3)?;
                p.value()?;
                let vdi = ref_param(&mut p, "vdi")?;
                let size = p.int("size")?;
                self.vdi_resize(&vdi, size, m == "resize_online").await?;
                void()
            }
            ("VM", "snapshot") | ("VM", "checkpoint") => {
                let checkpoint = m == "checkpoint";
                // Since 8.3 `VM.snapshot` takes the disks to leave out, `ignore_vdis`.
                let mut p = req.reader_range(3, if checkpoint { 3 } else { 4 })?;
                p.value()?;
                let vm = ref_param(&mut p, "vm")?;
                let name = p.string("new_name")?.to_string();
                let ignore: Vec<Ref> = match p.optional() {
                    Some(Wire::Array(a)) => a
                        .iter()
                        .filter_map(|v| v.as_str().map(|s| Ref::from_string(s.to_string())))
                        .collect(),
                    Some(_) => return Err(XenApiError::field_type_error("ignore_vdis")),
                    None => Vec::new(),
                };
                let r = self
                    .snapshot_vm(cx, &vm, &name, checkpoint, &ignore)
                    .await?;
                string(&r)
            }
            ("VM", "revert") => {
                let snapshot = self.one_ref(req, "snapshot")?;
                self.revert_vm(cx, &snapshot).await?;
                void()
            }
            _ => return Ok(None),
        }))
    }

    fn one_ref(&self, req: &Request, name: &str) -> Result<Ref, XenApiError> {
        let mut p = req.reader(2)?;
        p.value()?;
        ref_param(&mut p, name)
    }

    /// Host-to-host storage work: `host.xenpool_sr_work(secret, work)`, the secret checked
    /// by the caller. `None` for methods not listed in [`INTERNAL_METHODS`].
    pub(super) async fn storage_internal(&self, req: &Request) -> Option<ApiResult> {
        let listed = INTERNAL_METHODS
            .iter()
            .any(|(c, ms)| *c == req.class && ms.contains(&req.message.as_str()));
        if !listed {
            return None;
        }
        let run = async {
            let mut p = req.reader(2)?;
            p.value()?;
            let work: SrWork = serde_json::from_str(p.string("work")?)
                .map_err(|e| XenApiError::new("INVALID_VALUE", ["work", &e.to_string()]))?;
            let done = self.node().local_sr_work(work).await?;
            let text = serde_json::to_string(&done)
                .map_err(|e| XenApiError::internal_error(e.to_string()))?;
            Ok(Wire::String(text))
        };
        Some(run.await)
    }

    // -----------------------------------------------------------------------------------
    // SR

    async fn sr_create(&self, cx: &Ctx, req: &Request) -> Result<Option<Wire>, XenApiError> {
        let mut p = req.reader(10)?;
        p.value()?;
        let host = ref_param(&mut p, "host")?;
        let device_config: std::collections::BTreeMap<String, String> = p
            .string_map("device_config")?
            .into_iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let physical_size = p.int("physical_size")?;
        let name_label = p.string("name_label")?.to_string();
        let name_description = p.string("name_description")?.to_string();
        let ty = p.string("type")?.to_ascii_lowercase();
        let content_type = p.string("content_type")?.to_string();
        let shared = p.bool("shared")?;
        let sm_config: std::collections::BTreeMap<String, String> = p
            .string_map("sm_config")?
            .into_iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        if ty == xenpool_storage::als::SR_TYPE {
            return self.als_sr_create(cx, req).await.map(Some);
        }
        if !matches!(ty.as_str(), "dir" | "shared-dir" | "shared_dir") {
            return Err(XenApiError::new("SR_UNKNOWN_DRIVER", [ty]));
        }
        if device_config.get("location").is_none_or(|l| l.is_empty()) {
            return Err(XenApiError::new(
                "SR_BACKEND_FAILURE",
                ["", "device_config must give the directory as location", ""],
            ));
        }
        let node = self.node();
        let state = &node.state;
        // As xapi: a shared SR gets a PBD on every host of the pool, any other one on the
        // host named.
        let hosts: Vec<Ref> = {
            let db = state.db();
            db.get::<HostRecord>(&host).map_err(api_error)?;
            if shared {
                db.all::<HostRecord>().map(|(r, _)| r.clone()).collect()
            } else {
                vec![host.clone()]
            }
        };
        let sr = state.new_ref();
        let pbds: Vec<Ref> = hosts.iter().map(|_| state.new_ref()).collect();
        state
            .write(|txn| {
                txn.create(
                    sr.clone(),
                    SrRecord {
                        uuid: state.new_uuid(),
                        name_label: name_label.clone(),
                        name_description: name_description.clone(),
                        physical_size,
                        r#type: ty.clone(),
                        content_type: content_type.clone(),
                        shared,
                        sm_config: sm_config.clone(),
                        ..Default::default()
                    },
                )?;
                for (pbd, h) in pbds.iter().zip(&hosts) {
                    txn.create(
                        pbd.clone(),
                        PbdRecord {
                            uuid: state.new_uuid(),
                            host: h.clone(),
                            SR: sr.clone(),
                            device_config: device_config.clone(),
                            currently_attached: false,
                            ..Default::default()
                        },
                    )?;
                }
                Ok(())
            })
            .map_err(api_error)?;
        // The SR exists once its storage is attached everywhere it is recorded; a refusal
        // (another pool's claim above all) leaves nothing behind.
        let mut plugged = Vec::new();
        for pbd in &pbds {
            if let Err(e) = self.plug_pbd(pbd).await {
                for done in &plugged {
                    if let Err(e) = self.unplug_pbd(done).await {
                        tracing::warn!(pbd = %done, error = %e, "could not unplug after a failed SR.create");
                    }
                }
                let _ = state.write(|txn| txn.destroy(Class::SR, &sr));
                return Err(e);
            }
            plugged.push(pbd.clone());
        }
        Ok(Some(string(&sr)))
    }

    fn sr_introduce(&self, req: &Request) -> Result<Wire, XenApiError> {
        let mut p = req.reader(8)?;
        p.value()?;
        let uuid = p.string("uuid")?.to_string();
        let name_label = p.string("name_label")?.to_string();
        let name_description = p.string("name_description")?.to_string();
        let ty = p.string("type")?.to_ascii_lowercase();
        let content_type = p.string("content_type")?.to_string();
        let shared = p.bool("shared")?;
        let sm_config = p
            .string_map("sm_config")?
            .into_iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let state = &self.node().state;
        let uuid = if uuid.is_empty() {
            state.new_uuid()
        } else {
            uuid
        };
        if state.db().ref_by_uuid(Class::SR, &uuid).is_ok() {
            return Err(XenApiError::new("SR_UUID_EXISTS", [uuid]));
        }
        let sr = state.new_ref();
        state
            .write(|txn| {
                txn.create(
                    sr.clone(),
                    SrRecord {
                        uuid: uuid.clone(),
                        name_label: name_label.clone(),
                        name_description: name_description.clone(),
                        // Unknown until a host reaches the storage, as xapi records it.
                        physical_size: -1,
                        physical_utilisation: -1,
                        r#type: ty.clone(),
                        content_type: content_type.clone(),
                        shared,
                        sm_config,
                        ..Default::default()
                    },
                )?;
                record_usage(txn, &sr, None)
            })
            .map_err(api_error)?;
        Ok(string(&sr))
    }

    async fn sr_destroy(&self, req: &Request) -> Result<Wire, XenApiError> {
        let sr = self.one_ref(req, "sr")?;
        let node = self.node();
        let site = {
            let db = node.state.db();
            let rec = db.get::<SrRecord>(&sr).map_err(api_error)?;
            rules::check_sr_destroy(&db, &sr).map_err(refusal)?;
            dir_kind(rec).and_then(|kind| {
                let pbds: Vec<&PbdRecord> = rec
                    .PBDs
                    .iter()
                    .filter_map(|p| db.get::<PbdRecord>(p).ok())
                    .collect();
                let pbd = pbds
                    .iter()
                    .find(|p| p.host == node.state.host)
                    .or(pbds.first())?;
                Some((pbd.host.clone(), place_of(kind, pbd)))
            })
        };
        if let Some((host, place)) = site {
            node.sr_work(
                &host,
                SrWork::Destroy {
                    sr: place,
                    pool: node.pool_uuid(),
                },
            )
            .await?;
        }
        let mut refused = None;
        let destroyed = node.state.write(|txn| {
            if let Err(r) = rules::check_sr_destroy(txn.db(), &sr) {
                refused = Some(r);
                return Ok(());
            }
            txn.destroy(Class::SR, &sr)
        });
        if let Some(r) = refused {
            return Err(refusal(r));
        }
        destroyed.map_err(api_error)?;
        node.after_vm_change();
        Ok(void())
    }

    /// The host that works on an SR's disks, and the SR's place there. Aggregated local
    /// storage has its own calls.
    fn work_site(&self, sr: &Ref) -> Result<(Ref, crate::storage::SrPlace), XenApiError> {
        let node = self.node();
        let als = node
            .state
            .db()
            .get::<SrRecord>(sr)
            .map_err(api_error)?
            .r#type
            == xenpool_storage::als::SR_TYPE;
        if als {
            return Err(XenApiError::new(
                "SR_OPERATION_NOT_SUPPORTED",
                [sr.as_str()],
            ));
        }
        node.sr_site(sr, None)
    }

    /// `SR.scan` (`full`): VDIs written behind the toolstack's back get records, records
    /// whose VDI vanished go, sizes are refreshed; `SR.update`: sizes only.
    async fn sr_scan(&self, sr: &Ref, full: bool) -> Result<(), XenApiError> {
        let node = self.node();
        let (host, place) = self.work_site(sr)?;
        let done: SrDone = node.sr_work(&host, SrWork::Scan { sr: place }).await?;
        let found: Vec<rules::FoundVdi> = done
            .vdis
            .iter()
            .map(|v| rules::FoundVdi {
                location: v.location.clone(),
                name: v.name.clone(),
                virtual_size: size_i64(v.virtual_size),
                physical_utilisation: size_i64(v.physical_utilisation),
            })
            .collect();
        let state = &node.state;
        state
            .write(|txn| {
                let plan = rules::scan_plan(txn.db(), sr, &found, || state.new_uuid())?;
                for (vdi, virtual_size, physical) in plan.update {
                    txn.update::<VdiRecord>(&vdi, |d| {
                        d.virtual_size = virtual_size;
                        d.physical_utilisation = physical;
                    })?;
                }
                if full {
                    for vdi in plan.remove {
                        txn.destroy(Class::VDI, &vdi)?;
                    }
                    for rec in plan.create {
                        txn.create(state.new_ref(), rec)?;
                    }
                }
                record_usage(txn, sr, done.usage)
            })
            .map_err(api_error)?;
        Ok(())
    }

    // -----------------------------------------------------------------------------------
    // PBD

    fn pbd_create(&self, req: &Request) -> Result<Wire, XenApiError> {
        let mut p = req.reader(2)?;
        p.value()?;
        let obj = super::objects::record_from(Class::PBD, p.structure("args")?)?;
        let Object::PBD(mut rec) = obj else {
            return Err(XenApiError::internal_error("not a PBD"));
        };
        let state = &self.node().state;
        let pbd = state.new_ref();
        rec.uuid = state.new_uuid();
        rec.currently_attached = false;
        state
            .write(|txn| {
                txn.get::<HostRecord>(&rec.host)?;
                txn.get::<SrRecord>(&rec.SR)?;
                rules::check_pbd_create(txn.db(), &rec.SR, &rec.host)?;
                let sr = rec.SR.clone();
                txn.create(pbd.clone(), (*rec).clone())?;
                record_usage(txn, &sr, None)
            })
            .map_err(api_error)?;
        Ok(string(&pbd))
    }

    /// Attaches the PBD's SR on its host (the directory made, a shared one claimed for the
    /// pool), then records it plugged. Plugging a plugged PBD does nothing, as in xapi.
    async fn plug_pbd(&self, pbd: &Ref) -> Result<(), XenApiError> {
        let node = self.node();
        let state = &node.state;
        let (host, sr, site) = {
            let db = state.db();
            let b = db.get::<PbdRecord>(pbd).map_err(api_error)?;
            if b.currently_attached {
                return Ok(());
            }
            rules::check_pbd_plug(&db, pbd).map_err(api_error)?;
            let rec = db.get::<SrRecord>(&b.SR).map_err(api_error)?;
            let site = dir_kind(rec).map(|kind| place_of(kind, b));
            (b.host.clone(), b.SR.clone(), site)
        };
        // SRs of other drivers are attached by their own code; the record is all there is.
        let usage = match site {
            Some(place) => {
                node.sr_work(
                    &host,
                    SrWork::Plug {
                        sr: place,
                        pool: node.pool_uuid(),
                    },
                )
                .await?
                .usage
            }
            None => None,
        };
        let inputs = state.inputs();
        state
            .write(|txn| {
                rules::check_pbd_plug(txn.db(), pbd)?;
                txn.update::<PbdRecord>(pbd, |x| x.currently_attached = true)?;
                record_usage(txn, &sr, usage)?;
                xenpool_core::ops::refresh_allowed_operations(txn, &inputs).map(drop)
            })
            .map_err(api_error)?;
        node.after_vm_change();
        Ok(())
    }

    /// Records the PBD unplugged (once no VM running on its host uses the SR and the HA
    /// plan survives it), then detaches the SR on its host: the last plug of a shared SR in
    /// the pool gives up the pool's claim. Unplugging an unplugged PBD does nothing.
    async fn unplug_pbd(&self, pbd: &Ref) -> Result<(), XenApiError> {
        let node = self.node();
        let state = &node.state;
        let inputs = state.inputs();
        let detach = state
            .write_checked(|txn| {
                let b = txn.get::<PbdRecord>(pbd)?.clone();
                if !b.currently_attached {
                    return Ok(None);
                }
                let db = txn.db();
                devices::check_pbd_unplug(db, pbd)?;
                node.ha_check_change(db, false, |_, input| {
                    xenpool_ha::pool_input::unplug_pbd(input, &b.host, &b.SR);
                })?;
                let release = rules::last_plug_of_sr(db, pbd);
                let site = db
                    .get::<SrRecord>(&b.SR)
                    .ok()
                    .and_then(dir_kind)
                    .map(|kind| place_of(kind, &b));
                txn.update::<PbdRecord>(pbd, |x| x.currently_attached = false)?;
                record_usage(txn, &b.SR, None)?;
                xenpool_core::ops::refresh_allowed_operations(txn, &inputs)?;
                Ok(Some((b.host, site, release)))
            })
            .map_err(api_error)?;
        if let Some((host, Some(place), release)) = detach {
            let work = SrWork::Unplug {
                sr: place,
                pool: node.pool_uuid(),
                release,
            };
            if let Err(e) = node.sr_work(&host, work).await {
                // Still attached there: say so.
                let _ = state.write(|txn| {
                    txn.update::<PbdRecord>(pbd, |x| x.currently_attached = true)?;
                    xenpool_core::ops::refresh_allowed_operations(txn, &inputs).map(drop)
                });
                return Err(e);
            }
        }
        node.after_vm_change();
        Ok(())
    }

    // -----------------------------------------------------------------------------------
    // VDI

    async fn vdi_create(&self, req: &Request) -> Result<Wire, XenApiError> {
        let node = self.node();
        let state = &node.state;
        let mut p = req.reader(2)?;
        p.value()?;
        let obj = super::objects::record_from(Class::VDI, p.structure("args")?)?;
        let Object::VDI(mut rec) = obj else {
            return Err(XenApiError::internal_error("not a VDI"));
        };
        let vdi = state.new_ref();
        rec.uuid = state.new_uuid();
        rec.VBDs.clear();
        rec.managed = true;
        rec.is_a_snapshot = false;
        rec.snapshot_of = Ref::null();
        if rec.virtual_size < 0 {
            return Err(XenApiError::new(
                "INVALID_VALUE",
                ["virtual_size", &rec.virtual_size.to_string()],
            ));
        }
        let sr = rec.SR.clone();
        state.db().get::<SrRecord>(&sr).map_err(api_error)?;
        let info = node
            .vdi_create_info(&sr, &rec.uuid, rec.virtual_size as u64)
            .await?;
        rec.location = info.location.clone();
        rec.physical_utilisation = size_i64(info.physical_utilisation);
        let created = state.write(|txn| {
            put_vdi(txn, &vdi, (*rec).clone())?;
            record_usage(txn, &sr, None)
        });
        if let Err(e) = created {
            let _ = node.vdi_destroy(&sr, &info.location).await;
            return Err(api_error(e));
        }
        Ok(string(&vdi))
    }

    async fn vdi_destroy(&self, vdi: &Ref) -> Result<(), XenApiError> {
        let node = self.node();
        let state = &node.state;
        let (sr, location) = {
            let db = state.db();
            devices::check_vdi_destroy(&db, vdi).map_err(api_error)?;
            let d = db.get::<VdiRecord>(vdi).map_err(api_error)?;
            (d.SR.clone(), d.location.clone())
        };
        // The storage must be reachable before the record goes, or the data would be
        // left behind without a record.
        if node.sr_hosts(&sr).is_empty() && !self.is_als(&sr) {
            return Err(XenApiError::new("SR_HAS_NO_PBDS", [sr.as_str()]));
        }
        match node.vdi_destroy(&sr, &location).await {
            // Gone already: only the record is left to remove.
            Err(e) if e.code == "VDI_MISSING" => {}
            other => other?,
        }
        state
            .write(|txn| {
                // A scan that ran since the file went may have removed the record already.
                if txn.db().exists(Class::VDI, vdi) {
                    txn.destroy(Class::VDI, vdi)?;
                }
                record_usage(txn, &sr, None)
            })
            .map_err(api_error)?;
        node.after_vm_change();
        Ok(())
    }

    fn is_als(&self, sr: &Ref) -> bool {
        self.node()
            .state
            .db()
            .get::<SrRecord>(sr)
            .is_ok_and(|s| s.r#type == xenpool_storage::als::SR_TYPE)
    }

    /// `VDI.snapshot`, `VDI.clone` (same SR) and `VDI.copy` (`to`): the driver copies the
    /// contents, then the record is made.
    async fn vdi_duplicate(
        &self,
        vdi: &Ref,
        to: Option<Ref>,
        snapshot: bool,
    ) -> Result<Ref, XenApiError> {
        let node = self.node();
        let state = &node.state;
        let src = state.db().get::<VdiRecord>(vdi).map_err(api_error)?.clone();
        let target = to.unwrap_or_else(|| src.SR.clone());
        state.db().get::<SrRecord>(&target).map_err(api_error)?;
        let info = node
            .vdi_copy_info(&src.SR, &src.location, &target, &src.name_label)
            .await?;
        let new = state.new_ref();
        let at = now();
        let created = state.write(|txn| {
            let src = txn.get::<VdiRecord>(vdi)?.clone();
            let mut rec = rules::vdi_copy_record(
                &src,
                vdi,
                &target,
                &info.location,
                state.new_uuid(),
                snapshot.then_some(&at),
            );
            rec.virtual_size = size_i64(info.virtual_size);
            rec.physical_utilisation = size_i64(info.physical_utilisation);
            put_vdi(txn, &new, rec)?;
            record_usage(txn, &target, None)
        });
        if let Err(e) = created {
            let _ = node.vdi_destroy(&target, &info.location).await;
            return Err(api_error(e));
        }
        Ok(new)
    }

    /// `VDI.update`: the sizes as the driver reports them.
    async fn vdi_update(&self, vdi: &Ref) -> Result<(), XenApiError> {
        let node = self.node();
        let (sr, location) = {
            let db = node.state.db();
            let d = db.get::<VdiRecord>(vdi).map_err(api_error)?;
            (d.SR.clone(), d.location.clone())
        };
        let (host, place) = self.work_site(&sr)?;
        let info = node
            .sr_work(
                &host,
                SrWork::VdiStat {
                    sr: place,
                    location,
                },
            )
            .await?
            .vdi
            .ok_or_else(no_vdi)?;
        record_vdi_sizes(node, vdi, &info)
    }

    async fn vdi_resize(&self, vdi: &Ref, size: i64, online: bool) -> Result<(), XenApiError> {
        let node = self.node();
        let (sr, location) = {
            let db = node.state.db();
            rules::check_vdi_resize(&db, vdi, online).map_err(api_error)?;
            let d = db.get::<VdiRecord>(vdi).map_err(api_error)?;
            (d.SR.clone(), d.location.clone())
        };
        let size = u64::try_from(size)
            .map_err(|_| XenApiError::new("INVALID_VALUE", ["size", &size.to_string()]))?;
        let (host, place) = self.work_site(&sr)?;
        let info = node
            .sr_work(
                &host,
                SrWork::VdiResize {
                    sr: place,
                    location,
                    size,
                },
            )
            .await?
            .vdi
            .ok_or_else(no_vdi)?;
        record_vdi_sizes(node, vdi, &info)
    }

    // -----------------------------------------------------------------------------------
    // VM snapshots

    /// Marks `op` in progress on `vm` after `check` passes; returns the key to clear.
    fn mark_vm(
        &self,
        cx: &Ctx,
        vm: &Ref,
        op: VmOperation,
        check: impl FnOnce(&xenpool_core::Database) -> Result<(), CoreError>,
    ) -> Result<Ref, XenApiError> {
        let state = &self.node().state;
        let key = cx.task.clone().unwrap_or_else(|| state.new_ref());
        state
            .write(|txn| {
                check(txn.db())?;
                txn.update::<VmRecord>(vm, |v| {
                    v.current_operations.insert(key.as_str().to_string(), op);
                })?;
                refresh_vm_allowed_operations(txn, vm).map(drop)
            })
            .map_err(api_error)?;
        Ok(key)
    }

    fn unmark_vm(&self, vm: &Ref, key: &Ref) {
        let result = self.node().state.write(|txn| {
            if !txn.db().exists(Class::VM, vm) {
                return Ok(());
            }
            txn.update::<VmRecord>(vm, |v| {
                v.current_operations.remove(key.as_str());
            })?;
            refresh_vm_allowed_operations(txn, vm).map(drop)
        });
        if let Err(e) = result {
            tracing::error!(vm = %vm, error = %e, "could not clear a VM operation");
        }
    }

    async fn snapshot_vm(
        &self,
        cx: &Ctx,
        vm: &Ref,
        name: &str,
        checkpoint: bool,
        ignore: &[Ref],
    ) -> Result<Ref, XenApiError> {
        let op = if checkpoint {
            VmOperation::Checkpoint
        } else {
            VmOperation::Snapshot
        };
        let key = self.mark_vm(cx, vm, op, |db| rules::check_snapshot(db, vm, checkpoint))?;
        let result = self.snapshot_work(cx, vm, name, checkpoint, ignore).await;
        self.unmark_vm(vm, &key);
        self.node().after_vm_change();
        result
    }

    /// Copies the disks (but those in `ignore`, which the snapshot goes without) and, for
    /// a checkpoint, the memory image; then records the snapshot.
    async fn snapshot_work(
        &self,
        cx: &Ctx,
        vm: &Ref,
        name: &str,
        checkpoint: bool,
        ignore: &[Ref],
    ) -> Result<Ref, XenApiError> {
        let node = self.node();
        let state = &node.state;
        let (src, devices) = {
            let db = state.db();
            let src = db.get::<VmRecord>(vm).map_err(api_error)?.clone();
            (src, rules::snapshot_devices(&db, vm).map_err(api_error)?)
        };
        // Files made so far, removed if the snapshot fails: (SR, location).
        let mut made: Vec<(Ref, String)> = Vec::new();
        let mut image: Option<(Ref, VdiInfo, String)> = None; // SR, file, name
        let mut paused_on: Option<Ref> = None;
        let live = matches!(
            src.power_state,
            VmPowerState::Running | VmPowerState::Paused
        );
        let work = async {
            if checkpoint && live {
                let sr = rules::suspend_image_sr(&state.db(), vm, |sr| {
                    sr.r#type != xenpool_storage::als::SR_TYPE
                })
                .map_err(api_error)?;
                let (host, place) = node.sr_site(&sr, Some(&src.resident_on))?;
                let image_name = format!("Suspend image of {name}");
                let done = node
                    .sr_work(
                        &host,
                        SrWork::MemoryImage {
                            vm_uuid: src.uuid.clone(),
                            sr: place,
                            name: image_name.clone(),
                        },
                    )
                    .await?;
                if done.paused {
                    paused_on = Some(host.clone());
                }
                let info = done.vdi.ok_or_else(no_vdi)?;
                made.push((sr.clone(), info.location.clone()));
                image = Some((sr, info, image_name));
            } else if checkpoint && !src.suspend_VDI.is_null() {
                let d = state
                    .db()
                    .get::<VdiRecord>(&src.suspend_VDI)
                    .map_err(api_error)?
                    .clone();
                let info = node
                    .vdi_copy_info(&d.SR, &d.location, &d.SR, &d.name_label)
                    .await?;
                made.push((d.SR.clone(), info.location.clone()));
                image = Some((d.SR.clone(), info, d.name_label.clone()));
            }
            self.progress(cx, 0.3);
            let mut copies: Vec<(Ref, VdiInfo)> = Vec::new();
            for (vdi, d) in devices
                .iter()
                .filter_map(|d| d.disk.as_ref())
                .filter(|(vdi, _)| !ignore.contains(vdi))
            {
                let info = node
                    .vdi_copy_info(&d.SR, &d.location, &d.SR, &d.name_label)
                    .await?;
                made.push((d.SR.clone(), info.location.clone()));
                copies.push((vdi.clone(), info));
            }
            Ok::<_, XenApiError>(copies)
        };
        let copies = work.await;
        // A checkpoint's VM runs on as soon as its disks are copied.
        if let Some(host) = &paused_on {
            let resume = SrWork::Unpause {
                vm_uuid: src.uuid.clone(),
            };
            if let Err(e) = node.sr_work(host, resume).await {
                tracing::error!(vm = %vm, error = %e, "could not unpause after a checkpoint");
            }
        }
        self.progress(cx, 0.7);
        let created = match copies {
            Ok(copies) => self.record_snapshot(vm, name, checkpoint, &copies, image.as_ref()),
            Err(e) => Err(e),
        };
        if created.is_err() {
            for (sr, location) in &made {
                let _ = node.vdi_destroy(sr, location).await;
            }
        }
        created
    }

    fn record_snapshot(
        &self,
        vm: &Ref,
        name: &str,
        checkpoint: bool,
        copies: &[(Ref, VdiInfo)],
        image: Option<&(Ref, VdiInfo, String)>,
    ) -> Result<Ref, XenApiError> {
        let state = &self.node().state;
        let snap = state.new_ref();
        let at = now();
        state
            .write(|txn| {
                let src = txn.get::<VmRecord>(vm)?.clone();
                let metrics = state.new_ref();
                txn.create(
                    metrics.clone(),
                    VmMetricsRecord {
                        uuid: state.new_uuid(),
                        ..Default::default()
                    },
                )?;
                let mut rec = rules::vm_snapshot_record(
                    &src,
                    vm,
                    name,
                    &at,
                    checkpoint,
                    state.new_uuid(),
                    metrics,
                );
                if let Some((sr, info, label)) = image {
                    let suspend = state.new_ref();
                    put_vdi(
                        txn,
                        &suspend,
                        VdiRecord {
                            uuid: state.new_uuid(),
                            name_label: label.clone(),
                            SR: sr.clone(),
                            virtual_size: size_i64(info.virtual_size),
                            physical_utilisation: size_i64(info.physical_utilisation),
                            r#type: VdiType::Suspend,
                            location: info.location.clone(),
                            managed: true,
                            ..Default::default()
                        },
                    )?;
                    rec.suspend_VDI = suspend;
                }
                txn.create(snap.clone(), rec)?;
                for dev in rules::snapshot_devices(txn.db(), vm)? {
                    let vdi = match (
                        &dev.disk,
                        copies
                            .iter()
                            .find(|(v, _)| Some(v) == dev.disk.as_ref().map(|d| &d.0)),
                    ) {
                        (Some((src_vdi, d)), Some((_, info))) => {
                            let r = state.new_ref();
                            let mut v = rules::vdi_copy_record(
                                d,
                                src_vdi,
                                &d.SR,
                                &info.location,
                                state.new_uuid(),
                                Some(&at),
                            );
                            v.physical_utilisation = size_i64(info.physical_utilisation);
                            put_vdi(txn, &r, v)?;
                            r
                        }
                        // A disk left out, or added while the snapshot ran, has no
                        // copy: the snapshot goes without it.
                        (Some(_), None) => continue,
                        (None, _) => dev.record.VDI.clone(),
                    };
                    txn.create(
                        state.new_ref(),
                        VbdRecord {
                            uuid: state.new_uuid(),
                            VM: snap.clone(),
                            VDI: vdi,
                            currently_attached: false,
                            allowed_operations: Vec::new(),
                            current_operations: Default::default(),
                            ..dev.record.clone()
                        },
                    )?;
                }
                copy_vifs(txn, state, &src.VIFs, &snap)?;
                let mut srs: Vec<Ref> = rules::snapshot_devices(txn.db(), &snap)?
                    .into_iter()
                    .filter_map(|d| d.disk.map(|(_, v)| v.SR))
                    .chain(image.map(|(sr, _, _)| sr.clone()))
                    .collect();
                srs.dedup();
                for sr in srs {
                    record_usage(txn, &sr, None)?;
                }
                refresh_vm_allowed_operations(txn, &snap).map(drop)
            })
            .map_err(api_error)?;
        Ok(snap)
    }

    async fn revert_vm(&self, cx: &Ctx, snapshot: &Ref) -> Result<(), XenApiError> {
        let node = self.node();
        let state = &node.state;
        let vm = rules::check_revert(&state.db(), snapshot).map_err(api_error)?;
        let key = self.mark_vm(cx, &vm, VmOperation::Revert, |db| {
            rules::check_revert(db, snapshot).map(drop)
        })?;
        let result = self.revert_work(&vm, snapshot).await;
        self.unmark_vm(&vm, &key);
        node.after_vm_change();
        result.map_err(|e| {
            tracing::error!(vm = %vm, snapshot = %snapshot, error = %e, "revert failed");
            match e.code.as_str() {
                "SR_HAS_NO_PBDS" | "SR_BACKEND_FAILURE" | "VDI_MISSING" => e,
                _ => XenApiError::new("VM_REVERT_FAILED", [snapshot.as_str(), vm.as_str()]),
            }
        })
    }

    async fn revert_work(&self, vm: &Ref, snapshot: &Ref) -> Result<(), XenApiError> {
        let node = self.node();
        let state = &node.state;
        let (before, snap, snap_devices) = {
            let db = state.db();
            (
                db.get::<VmRecord>(vm).map_err(api_error)?.clone(),
                db.get::<VmRecord>(snapshot).map_err(api_error)?.clone(),
                rules::snapshot_devices(&db, snapshot).map_err(api_error)?,
            )
        };
        // As xapi: a VM that is not halted is stopped first; whatever it ran is lost.
        if let Some(action) = xenpool_core::lifecycle::domain_action(
            VmOperation::HardShutdown,
            before.power_state,
            false,
        ) {
            if matches!(action, DomainAction::Shutdown { .. }) {
                node.domain_op(&before.resident_on, &before, action).await?;
            }
        }
        if before.power_state != VmPowerState::Halted {
            state
                .write(|txn| {
                    txn.update::<VmRecord>(vm, |v| {
                        v.power_state = VmPowerState::Halted;
                        v.resident_on = Ref::null();
                        v.domid = -1;
                    })?;
                    crate::domains::follow_power_state(txn, node, vm)
                })
                .map_err(api_error)?;
        }
        // Copies of the snapshot's disks and memory image become the VM's.
        let mut made: Vec<(Ref, String)> = Vec::new();
        let copy = async {
            let mut disks = Vec::new();
            for (vdi, d) in snap_devices.iter().filter_map(|d| d.disk.as_ref()) {
                let info = node
                    .vdi_copy_info(&d.SR, &d.location, &d.SR, &d.name_label)
                    .await?;
                made.push((d.SR.clone(), info.location.clone()));
                disks.push((vdi.clone(), info));
            }
            let suspend = if snap.suspend_VDI.is_null() {
                None
            } else {
                let d = state
                    .db()
                    .get::<VdiRecord>(&snap.suspend_VDI)
                    .map_err(api_error)?
                    .clone();
                let info = node
                    .vdi_copy_info(&d.SR, &d.location, &d.SR, &d.name_label)
                    .await?;
                made.push((d.SR.clone(), info.location.clone()));
                Some((snap.suspend_VDI.clone(), info))
            };
            Ok::<_, XenApiError>((disks, suspend))
        };
        let copies = copy.await;
        let recorded = match copies {
            Ok((disks, suspend)) => self.record_revert(vm, snapshot, &disks, suspend.as_ref()),
            Err(e) => Err(e),
        };
        let old = match recorded {
            Ok(old) => old,
            Err(e) => {
                for (sr, location) in &made {
                    let _ = node.vdi_destroy(sr, location).await;
                }
                return Err(e);
            }
        };
        for (sr, location) in old {
            if let Err(e) = node.vdi_destroy(&sr, &location).await {
                tracing::warn!(vm = %vm, error = %e, "could not remove a disk replaced by a revert");
            }
        }
        Ok(())
    }

    /// Gives `vm` the snapshot's configuration, devices and copied disks in one
    /// transaction. Returns the files of the VM's replaced disks, to remove.
    fn record_revert(
        &self,
        vm: &Ref,
        snapshot: &Ref,
        disks: &[(Ref, VdiInfo)],
        suspend: Option<&(Ref, VdiInfo)>,
    ) -> Result<Vec<(Ref, String)>, XenApiError> {
        let node = self.node();
        let state = &node.state;
        state
            .write(|txn| {
                let snap = txn.get::<VmRecord>(snapshot)?.clone();
                let current = txn.get::<VmRecord>(vm)?.clone();
                txn.update::<VmRecord>(vm, |v| *v = rules::reverted_record(v, &snap, snapshot))?;
                // The VM's disks that this snapshot has a copy of are replaced, as is its
                // memory image; disks the snapshot does not know stay, unattached.
                let snap_devices = rules::snapshot_devices(txn.db(), snapshot)?;
                let own: Vec<Ref> = rules::snapshot_devices(txn.db(), vm)?
                    .into_iter()
                    .filter_map(|d| d.disk.map(|(r, _)| r))
                    .collect();
                let replaced: Vec<Ref> = snap_devices
                    .iter()
                    .filter_map(|d| d.disk.as_ref().map(|(_, v)| v.snapshot_of.clone()))
                    .filter(|r| own.contains(r))
                    .collect();
                let mut old_files = Vec::new();
                for vbd in &current.VBDs {
                    if txn.db().exists(Class::VBD, vbd) {
                        txn.destroy(Class::VBD, vbd)?;
                    }
                }
                let mut old_vdis = replaced;
                if !current.suspend_VDI.is_null() {
                    old_vdis.push(current.suspend_VDI.clone());
                }
                let mut new_of: Vec<(Ref, Ref)> = Vec::new(); // snapshot disk → new disk
                for (snap_vdi, info) in disks {
                    let d = txn.get::<VdiRecord>(snap_vdi)?.clone();
                    let r = state.new_ref();
                    let mut rec = rules::vdi_copy_record(
                        &d,
                        snap_vdi,
                        &d.SR,
                        &info.location,
                        state.new_uuid(),
                        None,
                    );
                    rec.physical_utilisation = size_i64(info.physical_utilisation);
                    put_vdi(txn, &r, rec)?;
                    // Every snapshot of the replaced disk now belongs to its successor.
                    if !d.snapshot_of.is_null() {
                        let siblings: Vec<Ref> = txn
                            .db()
                            .all::<VdiRecord>()
                            .filter(|(_, v)| v.snapshot_of == d.snapshot_of)
                            .map(|(s, _)| s.clone())
                            .collect();
                        for s in siblings {
                            txn.update::<VdiRecord>(&s, |v| v.snapshot_of = r.clone())?;
                        }
                    }
                    new_of.push((snap_vdi.clone(), r));
                }
                for dev in &snap_devices {
                    let vdi = match &dev.disk {
                        Some((snap_vdi, _)) => match new_of.iter().find(|(s, _)| s == snap_vdi) {
                            Some((_, r)) => r.clone(),
                            None => continue,
                        },
                        None => dev.record.VDI.clone(),
                    };
                    txn.create(
                        state.new_ref(),
                        VbdRecord {
                            uuid: state.new_uuid(),
                            VM: vm.clone(),
                            VDI: vdi,
                            currently_attached: false,
                            allowed_operations: Vec::new(),
                            current_operations: Default::default(),
                            ..dev.record.clone()
                        },
                    )?;
                }
                for vif in &current.VIFs {
                    if txn.db().exists(Class::VIF, vif) {
                        txn.destroy(Class::VIF, vif)?;
                    }
                }
                copy_vifs(txn, state, &snap.VIFs, vm)?;
                let suspend_vdi = match suspend {
                    Some((snap_image, info)) => {
                        let d = txn.get::<VdiRecord>(snap_image)?.clone();
                        let r = state.new_ref();
                        let mut rec = rules::vdi_copy_record(
                            &d,
                            snap_image,
                            &d.SR,
                            &info.location,
                            state.new_uuid(),
                            None,
                        );
                        rec.physical_utilisation = size_i64(info.physical_utilisation);
                        put_vdi(txn, &r, rec)?;
                        r
                    }
                    None => Ref::null(),
                };
                txn.update::<VmRecord>(vm, |v| v.suspend_VDI = suspend_vdi)?;
                for old in old_vdis {
                    if let Ok(d) = txn.get::<VdiRecord>(&old) {
                        old_files.push((d.SR.clone(), d.location.clone()));
                        txn.destroy(Class::VDI, &old)?;
                    }
                }
                let srs: Vec<Ref> = old_files.iter().map(|(sr, _)| sr.clone()).collect();
                for sr in srs {
                    record_usage(txn, &sr, None)?;
                }
                crate::domains::follow_power_state(txn, node, vm)?;
                refresh_vm_allowed_operations(txn, vm)?;
                Ok(old_files)
            })
            .map_err(api_error)
    }
}

/// Records a VDI whose file the driver just made. A scan that ran in between may have
/// recorded the file already, as a disk written behind the toolstack's back: that record
/// gives way to this one.
fn put_vdi(txn: &mut Txn<'_>, r: &Ref, rec: VdiRecord) -> Result<(), CoreError> {
    let scanned: Vec<Ref> = txn
        .db()
        .get::<SrRecord>(&rec.SR)?
        .VDIs
        .iter()
        .filter(|v| {
            txn.db()
                .get::<VdiRecord>(v)
                .is_ok_and(|d| d.location == rec.location && d.VBDs.is_empty())
        })
        .cloned()
        .collect();
    for v in scanned {
        txn.destroy(Class::VDI, &v)?;
    }
    txn.create(r.clone(), rec)
}

/// Copies of `vifs` for `vm`, with the same MAC addresses (a snapshot and a reverted VM
/// keep their network identity, as in xapi).
fn copy_vifs(
    txn: &mut Txn<'_>,
    state: &crate::state::State,
    vifs: &[Ref],
    vm: &Ref,
) -> Result<(), CoreError> {
    for vif in vifs {
        let f = txn.get::<VifRecord>(vif)?.clone();
        txn.create(
            state.new_ref(),
            VifRecord {
                uuid: state.new_uuid(),
                VM: vm.clone(),
                currently_attached: false,
                ..f
            },
        )?;
    }
    Ok(())
}
