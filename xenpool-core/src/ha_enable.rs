//! Whether HA may be turned on or off, and with what settings: xapi's preconditions of
//! `pool.enable_ha` and `pool.disable_ha`, as pure functions of the pool database.

use std::time::Duration;

use crate::{
    CoreError, Database, HostMetricsRecord, HostRecord, PbdRecord, PoolRecord, Ref, SrRecord,
};

/// The HA timeout when the configuration names none (xapi's default).
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(60);
/// The shortest HA timeout accepted: below it the heartbeat arithmetic leaves no room for
/// network jitter (see xenpool-ha's timeouts).
pub const MIN_TIMEOUT: Duration = Duration::from_secs(5);

/// The settings `pool.enable_ha` was given, checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HaSettings {
    /// The HA timeout `T` (`configuration["timeout"]`, seconds).
    pub timeout: Duration,
    /// `configuration["external_manager"] = "true"`: the pool elects and fences but restarts
    /// no VM; a cloud manager does, from `HA_HOST_FAILED` and the halted VMs.
    pub external_manager: bool,
    /// The heartbeat SR (the first one given).
    pub heartbeat_sr: Ref,
}

fn pool(db: &Database) -> Result<(Ref, &PoolRecord), CoreError> {
    db.all::<PoolRecord>()
        .next()
        .map(|(r, p)| (r.clone(), p))
        .ok_or_else(|| CoreError::handle_invalid("pool", Ref::null()))
}

/// Whether HA is on.
pub fn ha_enabled(db: &Database) -> bool {
    pool(db).is_ok_and(|(_, p)| p.ha_enabled)
}

/// Reads the configuration map of `pool.enable_ha`.
pub fn parse_configuration(
    configuration: &std::collections::BTreeMap<String, String>,
) -> Result<(Duration, bool), CoreError> {
    let timeout = match configuration.get("timeout") {
        None => DEFAULT_TIMEOUT,
        Some(v) => {
            let bad = || CoreError::InvalidValue {
                field: "timeout".into(),
                value: v.clone(),
            };
            let secs: f64 = v.trim().parse().map_err(|_| bad())?;
            if !secs.is_finite() || secs < MIN_TIMEOUT.as_secs_f64() || secs > 3600.0 {
                return Err(bad());
            }
            Duration::from_millis((secs * 1000.0).round() as u64)
        }
    };
    let external_manager = match configuration.get("external_manager").map(String::as_str) {
        None | Some("false") => false,
        Some("true") => true,
        Some(v) => {
            return Err(CoreError::InvalidValue {
                field: "external_manager".into(),
                value: v.to_string(),
            })
        }
    };
    Ok((timeout, external_manager))
}

/// xapi's preconditions of `pool.enable_ha`, in its order: HA not on already, at least two
/// hosts, every host live, a heartbeat SR that exists, is shared and is plugged on every
/// host, and a valid configuration.
pub fn check_enable_ha(
    db: &Database,
    heartbeat_srs: &[Ref],
    configuration: &std::collections::BTreeMap<String, String>,
) -> Result<HaSettings, CoreError> {
    let (_, p) = pool(db)?;
    if p.ha_enabled {
        return Err(CoreError::HaIsEnabled);
    }
    let hosts: Vec<(&Ref, &HostRecord)> = db.all::<HostRecord>().collect();
    if hosts.len() < 2 {
        return Err(CoreError::HaTooFewHosts);
    }
    for (r, h) in &hosts {
        let live = db
            .get::<HostMetricsRecord>(&h.metrics)
            .is_ok_and(|m| m.live);
        if !live {
            return Err(CoreError::HostOffline((*r).clone()));
        }
    }
    let Some(first) = heartbeat_srs.first() else {
        return Err(CoreError::InvalidValue {
            field: "heartbeat_srs".into(),
            value: String::new(),
        });
    };
    for sr in heartbeat_srs {
        let record = db.get::<SrRecord>(sr)?;
        let plugged_everywhere = hosts.iter().all(|(host, _)| {
            record.PBDs.iter().any(|pbd| {
                db.get::<PbdRecord>(pbd)
                    .is_ok_and(|b| b.host == **host && b.currently_attached)
            })
        });
        if !record.shared || !plugged_everywhere {
            return Err(CoreError::HaSrNotShared(sr.clone()));
        }
    }
    let (timeout, external_manager) = parse_configuration(configuration)?;
    Ok(HaSettings {
        timeout,
        external_manager,
        heartbeat_sr: first.clone(),
    })
}

/// `pool.disable_ha` needs HA on.
pub fn check_disable_ha(db: &Database) -> Result<(), CoreError> {
    if ha_enabled(db) {
        Ok(())
    } else {
        Err(CoreError::HaNotEnabled)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    #[test]
    fn configuration_is_checked() {
        let mut c = BTreeMap::new();
        assert_eq!(parse_configuration(&c).ok(), Some((DEFAULT_TIMEOUT, false)));
        c.insert("timeout".to_string(), "7.5".to_string());
        c.insert("external_manager".to_string(), "true".to_string());
        assert_eq!(
            parse_configuration(&c).ok(),
            Some((Duration::from_millis(7500), true))
        );
        for bad in ["4", "abc", "NaN", "-10", "100000"] {
            c.insert("timeout".to_string(), bad.to_string());
            let e = parse_configuration(&c).err().map(|e| e.to_description());
            assert_eq!(
                e,
                Some(vec![
                    "INVALID_VALUE".to_string(),
                    "timeout".to_string(),
                    bad.to_string()
                ])
            );
        }
    }

    #[test]
    fn a_pool_of_one_cannot_have_ha() {
        let mut db = Database::new();
        let pool = Ref::from_string("OpaqueRef:pool".to_string());
        let host = Ref::from_string("OpaqueRef:host".to_string());
        let metrics = Ref::from_string("OpaqueRef:metrics".to_string());
        let r = db.write(|txn| {
            txn.create(
                metrics.clone(),
                HostMetricsRecord {
                    uuid: "m".into(),
                    live: true,
                    ..Default::default()
                },
            )?;
            txn.create(
                host.clone(),
                HostRecord {
                    uuid: "h".into(),
                    metrics: metrics.clone(),
                    ..Default::default()
                },
            )?;
            txn.create(
                pool.clone(),
                PoolRecord {
                    uuid: "p".into(),
                    master: host.clone(),
                    ..Default::default()
                },
            )
        });
        assert!(r.is_ok());
        let e = check_enable_ha(&db, &[], &BTreeMap::new()).err();
        assert_eq!(
            e.map(|e| e.code().to_string()),
            Some("HA_TOO_FEW_HOSTS".into())
        );
        assert_eq!(
            check_disable_ha(&db).err().map(|e| e.code().to_string()),
            Some("HA_NOT_ENABLED".into())
        );
    }
}
