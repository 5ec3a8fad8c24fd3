//! The `key=value` words of the commands that write, turned into XenAPI calls before any
//! call is made: a mistyped number or an unknown key is refused whole, so a command never
//! leaves an object half changed because of its own spelling.

use anyhow::{bail, Context};
use xenpool_rpc::Value;

/// How a parameter's text becomes a XenAPI value.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Text,
    /// An `int` field: sent as a decimal string, xapi's wire form of int64.
    Int,
    Bool,
}

/// One parameter a `*-param-set` command writes with one setter.
#[derive(Debug, PartialEq, Eq)]
pub struct Settable {
    pub key: &'static str,
    pub message: &'static str,
    pub kind: Kind,
}

/// What a `*-param-set` command may write on objects of one class.
#[derive(Debug, PartialEq, Eq)]
pub struct ParamSet {
    pub command: &'static str,
    /// The key naming the object; not written.
    pub selector: &'static str,
    pub fields: &'static [Settable],
    /// `prefix:<key>=<value>` writes `<key>` of the map field with this datamodel name.
    pub maps: &'static [(&'static str, &'static str)],
    /// Keys applied after all the others, in this order, whatever their place on the line.
    pub last: &'static [&'static str],
}

/// One call on the object: `<class>.<message>(session, object, args...)`.
#[derive(Clone, Debug, PartialEq)]
pub struct SetCall {
    pub message: String,
    pub args: Vec<Value>,
}

pub const VM_PARAM_SET: ParamSet = ParamSet {
    command: "vm-param-set",
    selector: "uuid",
    fields: &[
        Settable {
            key: "name-label",
            message: "set_name_label",
            kind: Kind::Text,
        },
        Settable {
            key: "name-description",
            message: "set_name_description",
            kind: Kind::Text,
        },
        Settable {
            key: "order",
            message: "set_order",
            kind: Kind::Int,
        },
        Settable {
            key: "start-delay",
            message: "set_start_delay",
            kind: Kind::Int,
        },
        Settable {
            key: "ha-restart-priority",
            message: "set_ha_restart_priority",
            kind: Kind::Text,
        },
        Settable {
            key: "ha-always-run",
            message: "set_ha_always_run",
            kind: Kind::Bool,
        },
    ],
    maps: &[("other-config", "other_config")],
    // Protecting a VM checks the failover plan: it must see the VM's final order and
    // settings. ha_always_run follows the priority, so it can only agree once the
    // priority is in place.
    last: &["ha-restart-priority", "ha-always-run"],
};

pub const POOL_PARAM_SET: ParamSet = ParamSet {
    command: "pool-param-set",
    selector: "uuid",
    fields: &[
        Settable {
            key: "name-label",
            message: "set_name_label",
            kind: Kind::Text,
        },
        Settable {
            key: "name-description",
            message: "set_name_description",
            kind: Kind::Text,
        },
        Settable {
            key: "ha-host-failures-to-tolerate",
            message: "set_ha_host_failures_to_tolerate",
            kind: Kind::Int,
        },
        Settable {
            key: "ha-allow-overcommit",
            message: "set_ha_allow_overcommit",
            kind: Kind::Bool,
        },
    ],
    maps: &[("other-config", "other_config")],
    last: &[],
};

impl ParamSet {
    /// The keys this command writes, as `help` and its errors name them.
    pub fn keys(&self) -> Vec<String> {
        self.fields
            .iter()
            .map(|f| f.key.to_string())
            .chain(
                self.maps
                    .iter()
                    .map(|(prefix, _)| format!("{prefix}:<key>")),
            )
            .collect()
    }

    /// The calls that write `pairs` (the command line's `key=value` words in their order),
    /// or why they cannot be made.
    pub fn plan(&self, pairs: &[(String, String)]) -> anyhow::Result<Vec<SetCall>> {
        let mut first = Vec::new();
        let mut last: Vec<(usize, Vec<SetCall>)> = Vec::new();
        for (key, value) in pairs {
            if key == self.selector {
                continue;
            }
            let calls = self.calls(key, value)?;
            match self.last.iter().position(|l| l == key) {
                Some(rank) => last.push((rank, calls)),
                None => first.push(calls),
            }
        }
        // Stable: repeats of one late key keep their order on the line.
        last.sort_by_key(|(rank, _)| *rank);
        let calls: Vec<SetCall> = first
            .into_iter()
            .chain(last.into_iter().map(|(_, c)| c))
            .flatten()
            .collect();
        if calls.is_empty() {
            bail!(
                "{}: nothing to set; give one of {}",
                self.command,
                self.keys().join(", ")
            );
        }
        Ok(calls)
    }

    fn calls(&self, key: &str, value: &str) -> anyhow::Result<Vec<SetCall>> {
        if let Some(f) = self.fields.iter().find(|f| f.key == key) {
            return Ok(vec![SetCall {
                message: f.message.to_string(),
                args: vec![typed(f.kind, key, value)?],
            }]);
        }
        for (prefix, field) in self.maps {
            let Some(map_key) = key
                .strip_prefix(prefix)
                .and_then(|rest| rest.strip_prefix(':'))
            else {
                continue;
            };
            if map_key.is_empty() {
                bail!(
                    "{}: {prefix}: needs a key ({prefix}:<key>=<value>)",
                    self.command
                );
            }
            // add_to_ refuses a key already there (MAP_DUPLICATE_KEY); removing a key
            // that is absent is no error, so a replacement is always remove then add.
            return Ok(vec![
                SetCall {
                    message: format!("remove_from_{field}"),
                    args: vec![Value::String(map_key.to_string())],
                },
                SetCall {
                    message: format!("add_to_{field}"),
                    args: vec![
                        Value::String(map_key.to_string()),
                        Value::String(value.to_string()),
                    ],
                },
            ]);
        }
        bail!(
            "{}: cannot set {key}; settable parameters: {}",
            self.command,
            self.keys().join(", ")
        )
    }
}

/// The text of `key=value` as the value its setter takes.
pub fn typed(kind: Kind, key: &str, value: &str) -> anyhow::Result<Value> {
    match kind {
        Kind::Text => Ok(Value::String(value.to_string())),
        Kind::Int => Ok(Value::String(int(key, value)?.to_string())),
        Kind::Bool => Ok(Value::Bool(boolean(key, value)?)),
    }
}

fn int(key: &str, value: &str) -> anyhow::Result<i64> {
    value
        .trim()
        .parse()
        .ok()
        .with_context(|| format!("{key}={value}: not a whole number"))
}

/// A boolean as xe reads one.
pub fn boolean(key: &str, value: &str) -> anyhow::Result<bool> {
    match value.trim().to_ascii_lowercase().as_str() {
        "true" | "yes" => Ok(true),
        "false" | "no" => Ok(false),
        _ => bail!("{key}={value}: not true or false"),
    }
}

/// `pool-ha-enable`'s arguments, checked.
#[derive(Debug, PartialEq, Eq)]
pub struct HaEnable {
    pub sr_uuids: Vec<String>,
    /// `pool.enable_ha`'s configuration map, in the order given, one entry per key.
    pub config: Vec<(String, String)>,
}

const HA_SRS: &str = "heartbeat-sr-uuids";
const HA_CONFIG: &str = "ha-config:";

/// Reads `heartbeat-sr-uuids=<uuid>[,<uuid>...]` and any `ha-config:<key>=<value>`.
pub fn ha_enable(pairs: &[(String, String)]) -> anyhow::Result<HaEnable> {
    let mut sr_uuids = None;
    let mut config: Vec<(String, String)> = Vec::new();
    for (key, value) in pairs {
        if key == HA_SRS {
            let uuids: Vec<String> = value
                .split(',')
                .map(str::trim)
                .filter(|u| !u.is_empty())
                .map(String::from)
                .collect();
            if uuids.is_empty() {
                bail!("pool-ha-enable: {HA_SRS}= names no SR; give one or more uuids, comma-separated");
            }
            sr_uuids = Some(uuids);
        } else if let Some(name) = key.strip_prefix(HA_CONFIG) {
            if name.is_empty() {
                bail!("pool-ha-enable: {HA_CONFIG} needs a key ({HA_CONFIG}<key>=<value>)");
            }
            if name == "timeout" && value.trim().parse::<u64>().is_err() {
                bail!("pool-ha-enable: {key}={value}: the HA timeout is a whole number of seconds");
            }
            let value = if name == "timeout" {
                value.trim().to_string()
            } else {
                value.clone()
            };
            match config.iter_mut().find(|(k, _)| k == name) {
                Some(entry) => entry.1 = value,
                None => config.push((name.to_string(), value)),
            }
        } else {
            bail!(
                "pool-ha-enable: unknown parameter {key}; it takes {HA_SRS}= and {HA_CONFIG}<key>="
            );
        }
    }
    let sr_uuids = sr_uuids.with_context(|| format!("pool-ha-enable needs {HA_SRS}="))?;
    Ok(HaEnable { sr_uuids, config })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    /// Split at the first '=' as the command line is: a value keeps any further '='.
    fn pairs(words: &[&str]) -> Vec<(String, String)> {
        words
            .iter()
            .map(|w| {
                let (k, v) = w.split_once('=').unwrap();
                (k.to_string(), v.to_string())
            })
            .collect()
    }

    fn messages(calls: &[SetCall]) -> Vec<&str> {
        calls.iter().map(|c| c.message.as_str()).collect()
    }

    #[test]
    fn vm_param_set_keeps_the_line_order_and_protects_last() {
        let calls = VM_PARAM_SET
            .plan(&pairs(&[
                "uuid=u",
                "ha-always-run=true",
                "ha-restart-priority=restart",
                "start-delay=5",
                "order=2",
                "name-label=web",
            ]))
            .unwrap();
        assert_eq!(
            messages(&calls),
            [
                "set_start_delay",
                "set_order",
                "set_name_label",
                "set_ha_restart_priority",
                "set_ha_always_run"
            ]
        );
        assert_eq!(calls[0].args, [Value::String("5".into())]);
        assert_eq!(calls[1].args, [Value::String("2".into())]);
        assert_eq!(calls[3].args, [Value::String("restart".into())]);
        assert_eq!(calls[4].args, [Value::Bool(true)]);
    }

    #[test]
    fn vm_param_set_order_is_the_line_order_when_nothing_is_late() {
        let calls = VM_PARAM_SET
            .plan(&pairs(&["order=1", "name-description=d", "start-delay=0"]))
            .unwrap();
        assert_eq!(
            messages(&calls),
            ["set_order", "set_name_description", "set_start_delay"]
        );
        let calls = VM_PARAM_SET
            .plan(&pairs(&["start-delay=0", "order=-1"]))
            .unwrap();
        assert_eq!(messages(&calls), ["set_start_delay", "set_order"]);
        assert_eq!(calls[1].args, [Value::String("-1".into())]);
    }

    #[test]
    fn unprotecting_takes_an_empty_priority() {
        let calls = VM_PARAM_SET
            .plan(&pairs(&["ha-restart-priority=", "ha-always-run=false"]))
            .unwrap();
        assert_eq!(
            messages(&calls),
            ["set_ha_restart_priority", "set_ha_always_run"]
        );
        assert_eq!(calls[0].args, [Value::String(String::new())]);
        assert_eq!(calls[1].args, [Value::Bool(false)]);
    }

    #[test]
    fn a_map_key_is_replaced_by_remove_then_add() {
        let calls = VM_PARAM_SET
            .plan(&pairs(&["other-config:owner=ops=team"]))
            .unwrap();
        assert_eq!(
            messages(&calls),
            ["remove_from_other_config", "add_to_other_config"]
        );
        assert_eq!(calls[0].args, [Value::String("owner".into())]);
        assert_eq!(
            calls[1].args,
            [
                Value::String("owner".into()),
                Value::String("ops=team".into())
            ]
        );
    }

    #[test]
    fn bad_values_and_keys_are_refused_before_any_call() {
        let err = |words: &[&str]| VM_PARAM_SET.plan(&pairs(words)).unwrap_err().to_string();
        let e = err(&["name-label=x", "order=first"]);
        assert!(e.contains("order=first: not a whole number"), "{e}");
        let e = err(&["start-delay=1.5"]);
        assert!(e.contains("start-delay=1.5"), "{e}");
        let e = err(&["ha-always-run=maybe"]);
        assert!(e.contains("not true or false"), "{e}");
        let e = err(&["memory-static-max=1"]);
        assert!(e.contains("cannot set memory-static-max"), "{e}");
        assert!(e.contains("other-config:<key>"), "{e}");
        let e = err(&["other-config:=v"]);
        assert!(e.contains("needs a key"), "{e}");
        let e = err(&["uuid=u"]);
        assert!(e.contains("nothing to set"), "{e}");
        let e = err(&["order=99999999999999999999"]);
        assert!(e.contains("not a whole number"), "{e}");
    }

    #[test]
    fn booleans_as_xe_reads_them() {
        assert!(boolean("k", "TRUE").unwrap());
        assert!(boolean("k", "yes").unwrap());
        assert!(!boolean("k", "False").unwrap());
        assert!(!boolean("k", "no").unwrap());
        assert!(boolean("k", "1x").is_err());
        assert!(boolean("k", "").is_err());
    }

    #[test]
    fn pool_param_set_writes_the_ha_settings_in_line_order() {
        let calls = POOL_PARAM_SET
            .plan(&pairs(&[
                "uuid=p",
                "ha-allow-overcommit=true",
                "ha-host-failures-to-tolerate=2",
                "name-label=prod",
            ]))
            .unwrap();
        assert_eq!(
            messages(&calls),
            [
                "set_ha_allow_overcommit",
                "set_ha_host_failures_to_tolerate",
                "set_name_label"
            ]
        );
        assert_eq!(calls[0].args, [Value::Bool(true)]);
        assert_eq!(calls[1].args, [Value::String("2".into())]);
        let e = POOL_PARAM_SET
            .plan(&pairs(&["ha-host-failures-to-tolerate=two"]))
            .unwrap_err()
            .to_string();
        assert!(e.contains("ha-host-failures-to-tolerate=two"), "{e}");
        assert!(POOL_PARAM_SET
            .plan(&pairs(&["ha-restart-priority=restart"]))
            .is_err());
    }

    #[test]
    fn ha_enable_splits_the_sr_list_and_reads_the_configuration() {
        let a = ha_enable(&pairs(&[
            "heartbeat-sr-uuids=aaa, bbb,,ccc,",
            "ha-config:timeout=30",
            "ha-config:note=x=y",
        ]))
        .unwrap();
        assert_eq!(a.sr_uuids, ["aaa", "bbb", "ccc"]);
        assert_eq!(
            a.config,
            [
                ("timeout".to_string(), "30".to_string()),
                ("note".to_string(), "x=y".to_string())
            ]
        );
        let a = ha_enable(&pairs(&["heartbeat-sr-uuids=one"])).unwrap();
        assert_eq!(a.sr_uuids, ["one"]);
        assert!(a.config.is_empty());
        let a = ha_enable(&pairs(&[
            "ha-config:timeout=20",
            "heartbeat-sr-uuids=one",
            "ha-config:timeout=40",
        ]))
        .unwrap();
        assert_eq!(a.config, [("timeout".to_string(), "40".to_string())]);
    }

    #[test]
    fn ha_enable_refuses_what_it_cannot_send() {
        let err = |words: &[&str]| ha_enable(&pairs(words)).unwrap_err().to_string();
        let e = err(&["heartbeat-sr-uuids=a", "ha-config:timeout=abc"]);
        assert!(e.contains("ha-config:timeout=abc"), "{e}");
        assert!(e.contains("whole number of seconds"), "{e}");
        assert!(err(&["heartbeat-sr-uuids=a", "ha-config:timeout=-5"]).contains("timeout"));
        assert!(err(&["heartbeat-sr-uuids=a", "ha-config:timeout="]).contains("timeout"));
        let e = err(&["ha-config:timeout=30"]);
        assert!(e.contains("needs heartbeat-sr-uuids="), "{e}");
        let e = err(&["heartbeat-sr-uuids=,"]);
        assert!(e.contains("names no SR"), "{e}");
        let e = err(&["heartbeat-sr-uuids=a", "timeout=30"]);
        assert!(e.contains("unknown parameter timeout"), "{e}");
        let e = err(&["heartbeat-sr-uuids=a", "ha-config:=1"]);
        assert!(e.contains("needs a key"), "{e}");
    }
}
