//! Pool calls: the failover planner over XenAPI, and the pool-membership calls.

use std::collections::BTreeMap;
use std::time::Duration;

use xenpool_core::{CoreError, PoolRecord, Ref};
use xenpool_rpc::{Request, Value as Wire, XenApiError};

use super::{api_error, ref_param, Api, ApiResult, Ctx};
use crate::conv::{to_wire, IntStyle};

fn int(v: i64, ints: IntStyle) -> Wire {
    to_wire(&xenpool_core::Value::Int(v), ints)
}

/// The pool methods routed here (see `api::ROUTES`).
pub const METHODS: &[(&str, &[&str])] = &[
    (
        "pool",
        &[
            "enable_ha",
            "disable_ha",
            "ha_compute_max_host_failures_to_tolerate",
            "ha_compute_hypothetical_max_host_failures_to_tolerate",
            "ha_compute_vm_failover_plan",
            "set_ha_host_failures_to_tolerate",
            "join",
            "join_force",
            "eject",
            "designate_new_master",
            "emergency_transition_to_master",
            "emergency_reset_master",
            "recover_slaves",
        ],
    ),
    ("host", &["emergency_ha_disable"]),
];

/// Pool calls between hosts that travel on a session: routed, never advertised.
pub const INTERNAL_METHODS: &[(&str, &[&str])] = &[("pool", &["xenpool_add_host"])];

impl Api {
    pub(super) async fn pool_call(
        &self,
        cx: &Ctx,
        req: &Request,
    ) -> Result<Option<Wire>, XenApiError> {
        let node = self.node();
        let m = req.message.as_str();
        Ok(Some(match m {
            "enable_ha" => {
                let mut p = req.reader(3)?;
                p.value()?;
                let srs: Vec<Ref> = p
                    .array("heartbeat_srs")?
                    .iter()
                    .filter_map(|v| v.as_str().map(|s| Ref::from_string(s.to_string())))
                    .collect();
                let configuration: BTreeMap<String, String> = p
                    .string_map("configuration")?
                    .into_iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect();
                crate::ha_pool::enable_ha(node, &srs, &configuration).await?;
                Wire::String(String::new())
            }
            "disable_ha" => {
                req.reader(1)?;
                crate::ha_pool::disable_ha(node).await?;
                Wire::String(String::new())
            }
            "emergency_ha_disable" => {
                // host.emergency_ha_disable(soft): this host stops its HA daemon now,
                // whatever the pool thinks (xapi's last resort).
                node.ha_disarm();
                Wire::String(String::new())
            }
            "ha_compute_max_host_failures_to_tolerate" => {
                req.reader(1)?;
                let input = xenpool_ha::pool_input::planner_input(&node.state.db());
                let t = xenpool_ha::max_host_failures_to_tolerate(&input)
                    .map_err(|e| api_error(e.into()))?;
                node.ha_refresh();
                int(i64::from(t.max_failures), cx.ints)
            }
            "ha_compute_hypothetical_max_host_failures_to_tolerate" => {
                let mut p = req.reader(2)?;
                p.value()?;
                let config = p.string_map("configuration")?;
                let mut input = xenpool_ha::pool_input::planner_input(&node.state.db());
                // The configuration replaces the protected set: VMs it does not name are
                // not protected in the hypothesis.
                for v in &mut input.vms {
                    v.priority = xenpool_ha::RestartPriority::None;
                }
                for (vm, priority) in config {
                    let priority = priority.parse().map_err(api_error)?;
                    xenpool_ha::pool_input::set_priority(
                        &mut input,
                        &Ref::from_string(vm),
                        priority,
                    );
                }
                let t = xenpool_ha::max_host_failures_to_tolerate(&input)
                    .map_err(|e| api_error(e.into()))?;
                int(i64::from(t.max_failures), cx.ints)
            }
            "ha_compute_vm_failover_plan" => {
                let mut p = req.reader(3)?;
                p.value()?;
                let failed_hosts: Vec<String> = p
                    .array("failed_hosts")?
                    .iter()
                    .filter_map(|v| v.as_str().map(str::to_string))
                    .collect();
                let failed_vms: Vec<String> = p
                    .array("failed_vms")?
                    .iter()
                    .filter_map(|v| v.as_str().map(str::to_string))
                    .collect();
                let mut input = xenpool_ha::pool_input::planner_input(&node.state.db());
                for h in &failed_hosts {
                    if !input.hosts.iter().any(|x| &x.id == h) {
                        return Err(XenApiError::handle_invalid("host", h));
                    }
                }
                // Failed VMs are the ones to place; every other VM on a failed host is not
                // part of the question.
                for v in &mut input.vms {
                    let on_failed = v
                        .resident_on
                        .as_ref()
                        .is_some_and(|h| failed_hosts.contains(h));
                    if on_failed && !failed_vms.contains(&v.id) {
                        v.priority = xenpool_ha::RestartPriority::None;
                    }
                }
                let plan = xenpool_ha::plan_for_failure(&input, &failed_hosts)
                    .map_err(|e| XenApiError::new("HA_NO_PLAN", [e.to_string()]))?;
                let mut out = Vec::new();
                for step in plan.restarts {
                    let mut inner = BTreeMap::new();
                    inner.insert("host".to_string(), Wire::String(step.host.clone()));
                    out.push((step.vm.clone(), Wire::Struct(inner.into_iter().collect())));
                }
                for vm in plan.unplaced {
                    out.push((
                        vm.clone(),
                        Wire::Struct(vec![(
                            "error_code".to_string(),
                            Wire::String("HOST_NOT_ENOUGH_FREE_MEMORY".into()),
                        )]),
                    ));
                }
                Wire::Struct(out)
            }
            "set_ha_host_failures_to_tolerate" => {
                let mut p = req.reader(3)?;
                p.value()?;
                p.value()?;
                let value = p.int("value")?;
                if value < 0 {
                    return Err(XenApiError::new(
                        "INVALID_VALUE",
                        ["ha_host_failures_to_tolerate", &value.to_string()],
                    ));
                }
                node.state
                    .write(|txn| {
                        let db = txn.db();
                        let (pool_ref, pool) = db
                            .all::<PoolRecord>()
                            .next()
                            .map(|(r, p)| (r.clone(), p.clone()))
                            .ok_or_else(|| CoreError::handle_invalid("pool", Ref::null()))?;
                        let input = xenpool_ha::pool_input::planner_input(db);
                        let k = u32::try_from(value).unwrap_or(u32::MAX);
                        xenpool_ha::check_failures_to_tolerate(&pool, &input, k)?;
                        txn.update::<PoolRecord>(&pool_ref, |p| {
                            p.ha_host_failures_to_tolerate = value;
                        })
                    })
                    .map_err(api_error)?;
                node.ha_refresh();
                Wire::String(String::new())
            }
            _ => return self.pool_membership_call(cx, req).await,
        }))
    }
}

impl Api {
    pub(super) async fn pool_membership_call(
        &self,
        _cx: &Ctx,
        req: &Request,
    ) -> Result<Option<Wire>, XenApiError> {
        let node = self.node();
        let void = || Ok(Some(Wire::String(String::new())));
        match req.message.as_str() {
            "join" | "join_force" => {
                let mut p = req.reader(4)?;
                p.value()?;
                let address = p.string("master_address")?.to_string();
                let user = p.string("master_username")?.to_string();
                let password = p.string("master_password")?.to_string();
                self.join(&address, &user, &password).await?;
                void()
            }
            "eject" => {
                let mut p = req.reader(2)?;
                p.value()?;
                let host = ref_param(&mut p, "host")?;
                self.eject(&host).await?;
                void()
            }
            "designate_new_master" => {
                let mut p = req.reader(2)?;
                p.value()?;
                let host = ref_param(&mut p, "host")?;
                node.state
                    .db()
                    .get::<xenpool_core::HostRecord>(&host)
                    .map_err(api_error)?;
                crate::pool::designate_new_master(node, &host).await?;
                void()
            }
            "emergency_transition_to_master" => {
                req.reader(1)?;
                let ha = node
                    .state
                    .db()
                    .all::<PoolRecord>()
                    .next()
                    .is_some_and(|(_, p)| p.ha_enabled);
                if ha {
                    return Err(XenApiError::new("HA_IS_ENABLED", Vec::<String>::new()));
                }
                if !node.is_coordinator() {
                    crate::pool::become_coordinator(node)?;
                }
                void()
            }
            "emergency_reset_master" => {
                let mut p = req.reader(2)?;
                p.value()?;
                let address = p.string("master_address")?.to_string();
                crate::pool::become_member(node, &address)?;
                void()
            }
            "recover_slaves" => {
                req.reader(1)?;
                let recovered = self.recover_slaves().await?;
                Ok(Some(Wire::Array(
                    recovered
                        .into_iter()
                        .map(|r| Wire::String(r.as_str().to_string()))
                        .collect(),
                )))
            }
            "xenpool_add_host" => {
                // A joining host, authenticated by a pool-admin session, hands over its
                // objects and receives the pool database and the pool secret.
                let mut p = req.reader(2)?;
                p.value()?;
                // xapi refuses to grow a pool while HA is on: the new host would be in no
                // liveset and protected by no plan.
                if xenpool_core::ha_enable::ha_enabled(&node.state.db()) {
                    return Err(api_error(CoreError::HaIsEnabled));
                }
                let objects: Vec<xenpool_core::persist::StoredObject> =
                    serde_json::from_str(p.string("objects")?).map_err(|e| {
                        XenApiError::new("INVALID_VALUE", ["objects", &e.to_string()])
                    })?;
                let secret = match crate::host_files::read_secret(&node.config.data_dir) {
                    Some(s) => s,
                    None => {
                        let s = format!("{:032x}{:032x}", node.state.random(), node.state.random());
                        crate::host_files::write_secret_file(&node.config.data_dir, &s)
                            .map_err(|e| XenApiError::internal_error(e.to_string()))?;
                        s
                    }
                };
                let inputs = node.state.inputs();
                node.state
                    .write(|txn| {
                        crate::pool::import_joining_host(txn, node, &objects)?;
                        xenpool_core::ops::refresh_allowed_operations(txn, &inputs).map(|_| ())
                    })
                    .map_err(api_error)?;
                node.liveness.contact(&Ref::null(), 0);
                let snapshot = serde_json::to_string(&node.state.db().to_stored())
                    .map_err(|e| XenApiError::internal_error(e.to_string()))?;
                node.ha_refresh();
                Ok(Some(Wire::Struct(vec![
                    ("secret".into(), Wire::String(secret)),
                    ("snapshot".into(), Wire::String(snapshot)),
                ])))
            }
            _ => Ok(None),
        }
    }

    async fn join(&self, address: &str, user: &str, password: &str) -> Result<(), XenApiError> {
        let node = self.node();
        crate::pool::check_can_join(node, address)?;
        let objects = {
            let db = node.state.db();
            crate::pool::export_for_join(&db, &node.state.host).map_err(api_error)?
        };
        let objects = serde_json::to_string(&objects)
            .map_err(|e| XenApiError::internal_error(e.to_string()))?;
        let timeout = Duration::from_secs(60);
        let transport = &node.transport;
        let session = transport
            .call(
                address,
                "session.login_with_password",
                vec![
                    Wire::String(user.to_string()),
                    Wire::String(password.to_string()),
                    Wire::String("1.1".into()),
                    Wire::String("xenpool".into()),
                ],
                timeout,
            )
            .await?;
        let answer = transport
            .call(
                address,
                "pool.xenpool_add_host",
                vec![session.clone(), Wire::String(objects)],
                timeout,
            )
            .await;
        let _ = transport
            .call(address, "session.logout", vec![session], timeout)
            .await;
        let answer = answer?;
        let Wire::Struct(fields) = answer else {
            return Err(XenApiError::internal_error("bad answer to a join"));
        };
        let get = |k: &str| {
            fields
                .iter()
                .find(|(n, _)| n == k)
                .and_then(|(_, v)| v.as_str().map(str::to_string))
                .unwrap_or_default()
        };
        let secret = get("secret");
        let snapshot: xenpool_core::persist::StoredState =
            serde_json::from_str(&get("snapshot"))
                .map_err(|e| XenApiError::internal_error(format!("bad pool snapshot: {e}")))?;
        crate::host_files::write_secret_file(&node.config.data_dir, &secret)
            .map_err(|e| XenApiError::internal_error(e.to_string()))?;
        // The answer has to reach the caller before this host stops accepting writes, but
        // the database switch itself is one step: replace, then follow the coordinator.
        crate::pool::become_member(node, address)?;
        node.state
            .replace_replicated(&snapshot)
            .map_err(api_error)?;
        node.needs_snapshot
            .store(false, std::sync::atomic::Ordering::SeqCst);
        tracing::info!(coordinator = %address, "joined the pool");
        Ok(())
    }

    async fn eject(&self, host: &Ref) -> Result<(), XenApiError> {
        let node = self.node();
        let address = {
            let inputs = node.state.inputs();
            let db = node.state.db();
            // A dead host cannot clean itself up: it is forgotten with host.destroy.
            xenpool_core::maintenance::check_pool_eject(&db, host, &node.state.host, &inputs)
                .map_err(api_error)?;
            db.get::<xenpool_core::HostRecord>(host)
                .map_err(api_error)?
                .address
                .clone()
        };
        let secret = crate::host_files::read_secret(&node.config.data_dir)
            .ok_or_else(|| XenApiError::internal_error("no pool secret"))?;
        node.transport
            .call(
                &address,
                "pool.xenpool_ejected",
                vec![Wire::String(secret)],
                Duration::from_secs(60),
            )
            .await?;
        node.state
            .write(|txn| xenpool_core::membership::forget_host(txn, host))
            .map_err(api_error)?;
        node.ha_refresh();
        Ok(())
    }

    async fn recover_slaves(&self) -> Result<Vec<Ref>, XenApiError> {
        let node = self.node();
        if !node.is_coordinator() {
            return Err(XenApiError::new("HOST_IS_SLAVE", [String::new()]));
        }
        let secret = crate::host_files::read_secret(&node.config.data_dir)
            .ok_or_else(|| XenApiError::internal_error("no pool secret"))?;
        let me = node.config.address.to_string();
        let hosts: Vec<(Ref, String)> = node
            .state
            .db()
            .all::<xenpool_core::HostRecord>()
            .filter(|(r, _)| **r != node.state.host)
            .map(|(r, h)| (r.clone(), h.address.clone()))
            .collect();
        let mut recovered = Vec::new();
        for (host, address) in hosts {
            let r = node
                .transport
                .call(
                    &address,
                    "pool.xenpool_reset_master",
                    vec![Wire::String(secret.clone()), Wire::String(me.clone())],
                    Duration::from_secs(10),
                )
                .await;
            match r {
                Ok(_) => recovered.push(host),
                Err(e) => tracing::warn!(host = %host, error = %e, "could not recover a member"),
            }
        }
        Ok(recovered)
    }

    /// Queues work an HA decision left, for one worker to run in order: it writes to the
    /// database, and a write waits for the HA daemon's next lease report, which must not
    /// queue behind the report being answered.
    fn ha_work(&self, work: crate::ha_pool::HaFollowUp) {
        let tx = self.ha_queue.get_or_init(|| {
            let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
            let api = self.clone();
            tokio::spawn(async move {
                while let Some(work) = rx.recv().await {
                    api.run_ha_work(work).await;
                }
            });
            tx
        });
        let _ = tx.send(work);
    }

    async fn run_ha_work(&self, work: crate::ha_pool::HaFollowUp) {
        use crate::ha_pool::HaFollowUp;
        let node = self.node().clone();
        match work {
            HaFollowUp::Liveset(live) => {
                node.record_liveset(&live);
            }
            HaFollowUp::Message { name, obj } => {
                node.ha_message(&name, &obj);
            }
            HaFollowUp::Restart(restarts) => {
                let api = self.clone();
                tokio::spawn(async move { api.ha_restart(restarts).await });
            }
            HaFollowUp::BecomeCoordinator => {
                // Retried while still elected: the heartbeat SR may be slow to answer
                // for a moment.
                for _ in 0..60 {
                    match node.ha_become_coordinator() {
                        Ok(()) => return,
                        Err(e) => {
                            tracing::error!(error = %e, "could not take the coordinator role")
                        }
                    }
                    tokio::time::sleep(std::time::Duration::from_secs(1)).await;
                    if !node.ha.is_armed() {
                        return;
                    }
                }
            }
        }
    }

    /// Starts VMs where HA placed them, one after the other in the order given (the HA
    /// daemon spaces them by their `start_delay`). Forced: the plan already accounts for
    /// them. A failure is reported back at the next health check.
    async fn ha_restart(&self, restarts: Vec<(Ref, Ref)>) {
        let cx = Ctx {
            caller: crate::session::Caller {
                session: Ref::null(),
                user: "HA".into(),
                role: xenpool_core::rbac::Role::PoolAdmin,
            },
            ints: IntStyle::String,
            encoding: xenpool_rpc::Encoding::Xml,
            task: None,
        };
        for (vm, host) in restarts {
            let r = self
                .power_op(
                    &cx,
                    &vm,
                    xenpool_core::VmOperation::StartOn,
                    Some(host.clone()),
                    false,
                    true,
                )
                .await;
            match r {
                Ok(_) => tracing::info!(vm = %vm, host = %host, "HA restarted a VM"),
                Err(e) => {
                    tracing::warn!(vm = %vm, host = %host, error = %e, "HA could not restart a VM");
                    let uuid = self
                        .node()
                        .state
                        .db()
                        .get::<xenpool_core::VmRecord>(&vm)
                        .map(|v| v.uuid.clone())
                        .unwrap_or_default();
                    self.node().ha.start_failed(uuid);
                }
            }
        }
    }

    /// Host-to-host calls, authenticated by the pool secret instead of a session.
    pub(super) async fn internal_call(&self, req: &Request) -> ApiResult {
        let node = self.node();
        self.check_pool_secret(req)?;
        let void = || Ok(Wire::String(String::new()));
        match (req.class.as_str(), req.message.as_str()) {
            ("pool", "xenpool_replicate") => {
                let mut p = req.reader(4)?;
                p.value()?;
                let host = ref_param(&mut p, "host")?;
                let from = p.int("generation")?;
                let from = u64::try_from(from).ok();
                let timeout = p.float("timeout")?;
                crate::pool::serve_replication(node, &host, from, timeout).await
            }
            ("host", "xenpool_domain_op") => {
                let mut p = req.reader(3)?;
                p.value()?;
                let vm: xenpool_core::VmRecord = serde_json::from_str(p.string("vm")?)
                    .map_err(|e| XenApiError::new("INVALID_VALUE", ["vm", &e.to_string()]))?;
                let op = p.string("op")?;
                let op = crate::host_work::parse_op(op)
                    .ok_or_else(|| XenApiError::new("INVALID_VALUE", ["op", op]))?;
                let domid = node.local_domain_op(vm, op).await?;
                Ok(Wire::Int(domid))
            }
            ("host", "xenpool_migrate_receive") => {
                let mut p = req.reader(4)?;
                p.value()?;
                let id = p.string("id")?;
                let op = p.string("op")?;
                let payload = p.string("payload")?;
                crate::migration::receive(node, id, op, payload).await
            }
            ("host", "xenpool_migrate_send") => {
                let mut p = req.reader(6)?;
                p.value()?;
                let vm = p.string("vm")?;
                let destination = p.string("destination")?;
                let id = p.string("id")?;
                let task = p.string("task")?;
                let coordinator = p.string("coordinator")?;
                crate::migration::send(node, vm, destination, id, task, coordinator).await
            }
            ("host", "xenpool_power_cycle") => {
                let mut p = req.reader(2)?;
                p.value()?;
                let what = p.string("what")?;
                let what = crate::power::PowerCycle::parse(what)
                    .ok_or_else(|| XenApiError::new("INVALID_VALUE", ["what", what]))?;
                crate::power::schedule(node.clone(), what);
                Ok(Wire::String(crate::power::boot_id().to_string()))
            }
            ("host", "xenpool_boot_id") => {
                req.reader(1)?;
                Ok(Wire::String(crate::power::boot_id().to_string()))
            }
            ("pool", "xenpool_migration_progress") => {
                let mut p = req.reader(3)?;
                p.value()?;
                let task = Ref::from_string(p.string("task")?.to_string());
                let fraction = p.float("fraction")?.clamp(0.0, 1.0);
                Ok(Wire::Bool(self.migration_progress(&task, fraction)))
            }
            ("pool", "xenpool_become_coordinator") => {
                let mut p = req.reader(2)?;
                p.value()?;
                let wanted = p.int("generation")?.max(0) as u64;
                let have = node.state.db().generation();
                if have < wanted {
                    return Err(XenApiError::new(
                        "OPERATION_NOT_ALLOWED",
                        [format!("replica at {have}, coordinator at {wanted}")],
                    ));
                }
                crate::pool::become_coordinator(node)?;
                void()
            }
            ("pool", "xenpool_whois") => {
                req.reader(1)?;
                // A coordinator waiting to learn whether it was replaced does not claim
                // the role yet.
                let role = match node.role() {
                    crate::node::Role::Coordinator if node.state.write_gate().is_some() => {
                        crate::node::Role::Member {
                            coordinator: String::new(),
                        }
                    }
                    r => r,
                };
                Ok(Wire::String(crate::host_files::role_text(&role)))
            }
            ("host", "xenpool_ha_prepare") => {
                req.reader(1)?;
                let prepared = node.ha_prepare().map_err(api_error)?;
                let text = serde_json::to_string(&prepared)
                    .map_err(|e| XenApiError::internal_error(e.to_string()))?;
                Ok(Wire::String(text))
            }
            ("host", "xenpool_ha_arm") => {
                let mut p = req.reader(2)?;
                p.value()?;
                let arming: xenpool_ha::arming::Arming = serde_json::from_str(p.string("arming")?)
                    .map_err(|e| XenApiError::new("INVALID_VALUE", ["arming", &e.to_string()]))?;
                node.ha_arm(arming).await.map_err(api_error)?;
                void()
            }
            ("host", "xenpool_ha_disarm") => {
                req.reader(1)?;
                node.ha_disarm();
                void()
            }
            ("host", "xenpool_ha_health") => {
                req.reader(1)?;
                let report = node.ha_health();
                let text = serde_json::to_string(&report)
                    .map_err(|e| XenApiError::internal_error(e.to_string()))?;
                Ok(Wire::String(text))
            }
            ("host", "xenpool_ha_event") => {
                let mut p = req.reader(2)?;
                p.value()?;
                let event: xenpool_ha::arming::HaEvent = serde_json::from_str(p.string("event")?)
                    .map_err(|e| {
                    XenApiError::new("INVALID_VALUE", ["event", &e.to_string()])
                })?;
                if let Some(work) = node.ha_event(event)? {
                    self.ha_work(work);
                }
                void()
            }
            ("pool", "xenpool_reset_master") => {
                let mut p = req.reader(2)?;
                p.value()?;
                let address = p.string("master_address")?.to_string();
                crate::pool::become_member(node, &address)?;
                void()
            }
            ("pool", "xenpool_ejected") => {
                req.reader(1)?;
                crate::pool::reset_to_standalone(node)
                    .map_err(|e| XenApiError::internal_error(e.to_string()))?;
                void()
            }
            _ => match self.extras_internal(req).await {
                Some(result) => result,
                None => match self.storage_internal(req).await {
                    Some(result) => result,
                    None => Err(XenApiError::method_unknown(&req.method)),
                },
            },
        }
    }
}
