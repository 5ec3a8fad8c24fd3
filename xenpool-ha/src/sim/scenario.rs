//! The scenario format of `ha_sim`: parsing (with clear errors) and writing back.

use std::collections::BTreeMap;

use serde_json::{json, Map, Value};

use crate::{HaError, RestartPriority};

/// A host of a scenario.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SimHost {
    /// Name.
    pub name: String,
    /// Memory, bytes.
    pub memory: u64,
}

/// A VM of a scenario.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SimVm {
    /// Name.
    pub name: String,
    /// Memory, bytes.
    pub memory: u64,
    /// Host it runs on at the start (`None`: halted).
    pub on: Option<String>,
    /// Restart priority.
    pub priority: RestartPriority,
    /// `VM.order`.
    pub order: i64,
    /// `VM.start_delay`, seconds.
    pub start_delay: i64,
}

/// One fault or repair.
#[derive(Debug, Clone, PartialEq)]
pub enum EventKind {
    /// The host dies with its VMs.
    Crash(String),
    /// The host's software stops (its hardware watchdog keeps counting; its VMs keep
    /// running).
    Freeze(String),
    /// A frozen host resumes.
    Thaw(String),
    /// The network splits into these groups; hosts in no group are cut off.
    Partition(Vec<Vec<String>>),
    /// Directed links that stop carrying heartbeats (asymmetric faults), added to the
    /// current cuts.
    Block(Vec<(String, String)>),
    /// These hosts lose the statefile.
    StatefileLost(Vec<String>),
    /// These hosts reach the statefile again.
    StatefileBack(Vec<String>),
    /// The host's toolstack stops answering its health check.
    ToolstackHang(String),
    /// The host's toolstack answers again.
    ToolstackBack(String),
    /// The network is whole again and every host reaches the statefile.
    Heal,
}

/// A timed event.
#[derive(Debug, Clone, PartialEq)]
pub struct SimEvent {
    /// Seconds from the start.
    pub at: f64,
    /// What happens.
    pub kind: EventKind,
}

/// A whole scenario.
#[derive(Debug, Clone, PartialEq)]
pub struct Scenario {
    /// HA timeout `T`, seconds.
    pub timeout: f64,
    /// Seed for delays and tick jitter.
    pub seed: u64,
    /// When the run stops, seconds.
    pub until: f64,
    /// External-manager mode.
    pub external_manager: bool,
    /// `ha_host_failures_to_tolerate` (reported; restarts use whatever the planner finds).
    pub host_failures_to_tolerate: u32,
    /// Initial coordinator (default: the first host).
    pub coordinator: Option<String>,
    /// Hosts in pool order.
    pub hosts: Vec<SimHost>,
    /// VMs.
    pub vms: Vec<SimVm>,
    /// Events.
    pub events: Vec<SimEvent>,
    /// Largest extra lateness of a tick, seconds (default 0).
    pub tick_jitter: f64,
    /// Largest heartbeat delay, seconds (default 0.001).
    pub message_delay: f64,
}

fn bad(msg: impl Into<String>) -> HaError {
    HaError::InvalidScenario(msg.into())
}

fn num(o: &Map<String, Value>, key: &str, default: Option<f64>) -> Result<f64, HaError> {
    match o.get(key) {
        Some(v) => v
            .as_f64()
            // A million seconds is far beyond any scenario and keeps time arithmetic exact.
            .filter(|x| x.is_finite() && (0.0..=1e6).contains(x))
            .ok_or_else(|| bad(format!("{key:?} must be a number from 0 to 1e6"))),
        None => default.ok_or_else(|| bad(format!("missing {key:?}"))),
    }
}

fn uint(o: &Map<String, Value>, key: &str, default: Option<u64>) -> Result<u64, HaError> {
    match o.get(key) {
        Some(v) => v
            .as_u64()
            .ok_or_else(|| bad(format!("{key:?} must be a non-negative integer"))),
        None => default.ok_or_else(|| bad(format!("missing {key:?}"))),
    }
}

fn int(o: &Map<String, Value>, key: &str) -> Result<i64, HaError> {
    match o.get(key) {
        Some(v) => v
            .as_i64()
            .filter(|x| x.abs() <= 1_000_000)
            .ok_or_else(|| bad(format!("{key:?} must be an integer within ±1e6"))),
        None => Ok(0),
    }
}

fn string(v: &Value, what: &str) -> Result<String, HaError> {
    v.as_str()
        .map(str::to_string)
        .ok_or_else(|| bad(format!("{what} must be a string")))
}

fn names(v: &Value, what: &str) -> Result<Vec<String>, HaError> {
    v.as_array()
        .ok_or_else(|| bad(format!("{what} must be a list of host names")))?
        .iter()
        .map(|x| string(x, what))
        .collect()
}

impl Scenario {
    /// Parses the JSON text of a scenario, checking every host name it uses.
    pub fn from_json(text: &str) -> Result<Scenario, HaError> {
        let v: Value = serde_json::from_str(text).map_err(|e| bad(format!("not JSON: {e}")))?;
        let o = v
            .as_object()
            .ok_or_else(|| bad("top level must be an object"))?;
        let timeout = num(o, "timeout", None)?;
        let hosts = o
            .get("hosts")
            .and_then(Value::as_array)
            .ok_or_else(|| bad("\"hosts\" must be a list"))?
            .iter()
            .map(|h| {
                let h = h
                    .as_object()
                    .ok_or_else(|| bad("a host must be an object"))?;
                Ok(SimHost {
                    name: string(h.get("name").unwrap_or(&Value::Null), "host \"name\"")?,
                    memory: uint(h, "memory", None)?,
                })
            })
            .collect::<Result<Vec<_>, HaError>>()?;
        let known: BTreeMap<&str, ()> = hosts.iter().map(|h| (h.name.as_str(), ())).collect();
        let check = |n: &str| -> Result<(), HaError> {
            if known.contains_key(n) {
                Ok(())
            } else {
                Err(bad(format!("unknown host {n:?}")))
            }
        };
        let vms = match o.get("vms") {
            None => Vec::new(),
            Some(list) => list
                .as_array()
                .ok_or_else(|| bad("\"vms\" must be a list"))?
                .iter()
                .map(|vm| {
                    let vm = vm
                        .as_object()
                        .ok_or_else(|| bad("a VM must be an object"))?;
                    let on = match vm.get("on") {
                        None | Some(Value::Null) => None,
                        Some(x) => {
                            let n = string(x, "VM \"on\"")?;
                            check(&n)?;
                            Some(n)
                        }
                    };
                    let priority = match vm.get("priority") {
                        None => RestartPriority::None,
                        Some(p) => string(p, "VM \"priority\"")?
                            .parse()
                            .map_err(|_| bad(format!("invalid VM priority {p}")))?,
                    };
                    Ok(SimVm {
                        name: string(vm.get("name").unwrap_or(&Value::Null), "VM \"name\"")?,
                        memory: uint(vm, "memory", None)?,
                        on,
                        priority,
                        order: int(vm, "order")?,
                        start_delay: int(vm, "start_delay")?,
                    })
                })
                .collect::<Result<Vec<_>, HaError>>()?,
        };
        let coordinator = match o.get("coordinator") {
            None | Some(Value::Null) => None,
            Some(c) => {
                let n = string(c, "\"coordinator\"")?;
                check(&n)?;
                Some(n)
            }
        };
        let mut events = Vec::new();
        if let Some(list) = o.get("events") {
            for e in list
                .as_array()
                .ok_or_else(|| bad("\"events\" must be a list"))?
            {
                let e = e
                    .as_object()
                    .ok_or_else(|| bad("an event must be an object"))?;
                let at = num(e, "at", None)?;
                let kinds: Vec<(&String, &Value)> = e.iter().filter(|(k, _)| *k != "at").collect();
                let [(key, val)] = kinds.as_slice() else {
                    return Err(bad(format!("event at {at} must have exactly one action")));
                };
                let one = |what: &str| -> Result<String, HaError> {
                    let n = string(val, what)?;
                    check(&n)?;
                    Ok(n)
                };
                let many = |what: &str| -> Result<Vec<String>, HaError> {
                    let v = names(val, what)?;
                    for n in &v {
                        check(n)?;
                    }
                    Ok(v)
                };
                let kind = match key.as_str() {
                    "crash" => EventKind::Crash(one("\"crash\"")?),
                    "freeze" => EventKind::Freeze(one("\"freeze\"")?),
                    "thaw" => EventKind::Thaw(one("\"thaw\"")?),
                    "toolstack_hang" => EventKind::ToolstackHang(one("\"toolstack_hang\"")?),
                    "toolstack_back" => EventKind::ToolstackBack(one("\"toolstack_back\"")?),
                    "statefile_lost" => EventKind::StatefileLost(many("\"statefile_lost\"")?),
                    "statefile_back" => EventKind::StatefileBack(many("\"statefile_back\"")?),
                    "partition" => {
                        let groups = val
                            .as_array()
                            .ok_or_else(|| bad("\"partition\" must be a list of groups"))?
                            .iter()
                            .map(|g| names(g, "a partition group"))
                            .collect::<Result<Vec<_>, _>>()?;
                        for n in groups.iter().flatten() {
                            check(n)?;
                        }
                        EventKind::Partition(groups)
                    }
                    "block" => {
                        let pairs = val
                            .as_array()
                            .ok_or_else(|| bad("\"block\" must be a list of [from, to]"))?
                            .iter()
                            .map(|p| {
                                let v = names(p, "a blocked link")?;
                                match v.as_slice() {
                                    [a, b] => {
                                        check(a)?;
                                        check(b)?;
                                        Ok((a.clone(), b.clone()))
                                    }
                                    _ => Err(bad("a blocked link is [from, to]")),
                                }
                            })
                            .collect::<Result<Vec<_>, HaError>>()?;
                        EventKind::Block(pairs)
                    }
                    "heal" => EventKind::Heal,
                    other => return Err(bad(format!("unknown event {other:?}"))),
                };
                events.push(SimEvent { at, kind });
            }
        }
        Ok(Scenario {
            timeout,
            seed: uint(o, "seed", Some(0))?,
            until: num(o, "until", None)?,
            external_manager: o
                .get("external_manager")
                .map(|v| {
                    v.as_bool()
                        .ok_or_else(|| bad("\"external_manager\" must be a boolean"))
                })
                .transpose()?
                .unwrap_or(false),
            host_failures_to_tolerate: u32::try_from(uint(
                o,
                "host_failures_to_tolerate",
                Some(1),
            )?)
            .map_err(|_| bad("\"host_failures_to_tolerate\" too large"))?,
            coordinator,
            hosts,
            vms,
            events,
            tick_jitter: num(o, "tick_jitter", Some(0.0))?,
            message_delay: num(o, "message_delay", Some(0.001))?,
        })
    }

    /// The scenario as JSON, in the format [`Scenario::from_json`] reads.
    pub fn to_json(&self) -> Value {
        let events: Vec<Value> = self
            .events
            .iter()
            .map(|e| {
                let (k, v) = match &e.kind {
                    EventKind::Crash(h) => ("crash", json!(h)),
                    EventKind::Freeze(h) => ("freeze", json!(h)),
                    EventKind::Thaw(h) => ("thaw", json!(h)),
                    EventKind::ToolstackHang(h) => ("toolstack_hang", json!(h)),
                    EventKind::ToolstackBack(h) => ("toolstack_back", json!(h)),
                    EventKind::StatefileLost(v) => ("statefile_lost", json!(v)),
                    EventKind::StatefileBack(v) => ("statefile_back", json!(v)),
                    EventKind::Partition(g) => ("partition", json!(g)),
                    EventKind::Block(p) => (
                        "block",
                        Value::Array(p.iter().map(|(a, b)| json!([a, b])).collect()),
                    ),
                    EventKind::Heal => ("heal", json!(true)),
                };
                let mut m = Map::new();
                m.insert("at".into(), json!(e.at));
                m.insert(k.into(), v);
                Value::Object(m)
            })
            .collect();
        json!({
            "timeout": self.timeout, "seed": self.seed, "until": self.until,
            "external_manager": self.external_manager,
            "host_failures_to_tolerate": self.host_failures_to_tolerate,
            "coordinator": self.coordinator,
            "hosts": self.hosts.iter().map(|h| json!({"name": h.name, "memory": h.memory})).collect::<Vec<_>>(),
            "vms": self.vms.iter().map(|v| json!({"name": v.name, "memory": v.memory, "on": v.on,
                "priority": v.priority.as_str(), "order": v.order, "start_delay": v.start_delay})).collect::<Vec<_>>(),
            "events": events,
            "tick_jitter": self.tick_jitter, "message_delay": self.message_delay,
        })
    }
}
