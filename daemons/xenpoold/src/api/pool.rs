//! Pool calls: the failover planner over XenAPI, and the pool-membership calls.

use std::collections::BTreeMap;

use xenpool_core::{CoreError, PoolRecord, Ref};
use xenpool_rpc::{Request, Value as Wire, XenApiError};

use super::{api_error, Api, Ctx};
use crate::conv::{to_wire, IntStyle};

fn int(v: i64, ints: IntStyle) -> Wire {
    to_wire(&xenpool_core::Value::Int(v), ints)
}

impl Api {
    pub(super) async fn pool_call(
        &self,
        cx: &Ctx,
        req: &Request,
    ) -> Result<Option<Wire>, XenApiError> {
        let node = self.node();
        let m = req.message.as_str();
        Ok(Some(match m {
            "ha_compute_max_host_failures_to_tolerate" => {
                req.reader(1)?;
                let input = crate::ha::planner_input(&node.state.db());
                let t = crate::ha::tolerance(&input).map_err(api_error)?;
                node.ha_refresh();
                int(i64::from(t.max_failures), cx.ints)
            }
            "ha_compute_hypothetical_max_host_failures_to_tolerate" => {
                let mut p = req.reader(2)?;
                p.value()?;
                let config = p.string_map("configuration")?;
                let mut input = crate::ha::planner_input(&node.state.db());
                for (vm, priority) in config {
                    if !crate::api::vm::PRIORITIES.contains(&priority) {
                        return Err(XenApiError::new(
                            "INVALID_VALUE",
                            ["ha_restart_priority", priority],
                        ));
                    }
                    crate::ha::set_priority(&mut input, &Ref::from_string(vm), priority);
                }
                // VMs not named in the configuration are not protected in the hypothesis.
                let named: Vec<String> = p_names(req);
                for v in &mut input.vms {
                    if !named.contains(&v.id) {
                        v.priority = xenpool_ha::RestartPriority::None;
                    }
                }
                let t = crate::ha::tolerance(&input).map_err(api_error)?;
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
                let mut input = crate::ha::planner_input(&node.state.db());
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
                        if !pool.ha_allow_overcommit {
                            let input = crate::ha::planner_input(db);
                            if crate::ha::overcommitted(&input, value as u32)? {
                                return Err(CoreError::api(
                                    "HA_OPERATION_WOULD_BREAK_FAILOVER_PLAN",
                                    Vec::<String>::new(),
                                ));
                            }
                        }
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

fn p_names(req: &Request) -> Vec<String> {
    match req.params.get(1) {
        Some(Wire::Struct(members)) => members.iter().map(|(k, _)| k.clone()).collect(),
        _ => Vec::new(),
    }
}

impl Api {
    pub(super) async fn pool_membership_call(
        &self,
        _cx: &Ctx,
        _req: &Request,
    ) -> Result<Option<Wire>, XenApiError> {
        Ok(None)
    }
}
