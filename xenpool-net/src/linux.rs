//! Applies networks on Linux by running `ip` (iproute2): bridges, VLAN links, addresses and
//! the default route. It acts in the network namespace the process runs in, or in a named
//! one (`ip -n NAME`), which is how the tests keep off the host's own interfaces.
//!
//! DHCP is not done here: a host that wants it runs its own DHCP client on the bridge, so
//! a PIF with [`crate::IpConfig::Dhcp`] fails with [`NetError::Unsupported`].

use std::process::Command;

use serde_json::Value;

use crate::backend::{BridgeInfo, NetworkBackend};
use crate::plan::{self, Link, LinkSnapshot, NetAction};
use crate::spec::{NetworkSpec, PifSpec};
use crate::NetError;

/// Runs `ip` to apply networks. Needs `CAP_NET_ADMIN` in its namespace.
#[derive(Debug, Clone, Default)]
pub struct LinuxBridgeBackend {
    netns: Option<String>,
}

/// The `ip` arguments for one step (without the namespace prefix).
pub fn ip_args(action: &NetAction) -> Result<Vec<String>, NetError> {
    let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
    Ok(match action {
        NetAction::CreateBridge { name, mtu } => s(&[
            "link",
            "add",
            "name",
            name,
            "mtu",
            &mtu.to_string(),
            "type",
            "bridge",
        ]),
        NetAction::SetMtu { link, mtu } => {
            s(&["link", "set", "dev", link, "mtu", &mtu.to_string()])
        }
        NetAction::SetUp { link } => s(&["link", "set", "dev", link, "up"]),
        NetAction::CreateVlan { parent, vlan, name } => s(&[
            "link",
            "add",
            "link",
            parent,
            "name",
            name,
            "type",
            "vlan",
            "id",
            &vlan.to_string(),
        ]),
        NetAction::AddPort { bridge, port } => s(&["link", "set", "dev", port, "master", bridge]),
        NetAction::SetAddress { link, address } => s(&["addr", "replace", address, "dev", link]),
        NetAction::SetGateway { link, gateway } => {
            s(&["route", "replace", "default", "via", gateway, "dev", link])
        }
        NetAction::StartDhcp { .. } => {
            return Err(NetError::Unsupported(
                "DHCP (run a DHCP client on the bridge)",
            ))
        }
        NetAction::DeleteLink { name } => s(&["link", "del", "dev", name]),
    })
}

impl LinuxBridgeBackend {
    /// Acts in the process's own network namespace.
    pub fn new() -> Self {
        Self::default()
    }

    /// Acts in the named network namespace (`ip netns add NAME` made it).
    pub fn in_netns(name: impl Into<String>) -> Self {
        LinuxBridgeBackend {
            netns: Some(name.into()),
        }
    }

    fn ip(&self, args: &[String]) -> Result<String, NetError> {
        let mut full: Vec<String> = Vec::new();
        if let Some(ns) = &self.netns {
            full.push("-n".into());
            full.push(ns.clone());
        }
        full.extend(args.iter().cloned());
        let command = format!("ip {}", full.join(" "));
        let out = Command::new("ip")
            .args(&full)
            .output()
            .map_err(|source| NetError::Spawn {
                command: command.clone(),
                source,
            })?;
        if !out.status.success() {
            return Err(NetError::Command {
                command,
                status: out.status.to_string(),
                stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
            });
        }
        String::from_utf8(out.stdout).map_err(|e| NetError::Parse {
            command,
            reason: e.to_string(),
        })
    }

    /// Reads the links of the namespace.
    pub fn snapshot(&self) -> Result<LinkSnapshot, NetError> {
        let args: Vec<String> = ["-d", "-j", "link", "show"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let text = self.ip(&args)?;
        parse_links(&text).map_err(|reason| NetError::Parse {
            command: "ip -d -j link show".into(),
            reason,
        })
    }

    fn run(
        &self,
        make: impl FnOnce(&LinkSnapshot) -> Result<Vec<NetAction>, NetError>,
    ) -> Result<(), NetError> {
        let now = self.snapshot()?;
        let steps = make(&now)?;
        // Translate every step before running any, so an unsupported one changes nothing.
        let commands = steps.iter().map(ip_args).collect::<Result<Vec<_>, _>>()?;
        for args in commands {
            self.ip(&args)?;
        }
        Ok(())
    }
}

/// Parses `ip -d -j link show`.
pub fn parse_links(text: &str) -> Result<LinkSnapshot, String> {
    let v: Value = serde_json::from_str(text).map_err(|e| e.to_string())?;
    let arr = v.as_array().ok_or("not a JSON array")?;
    let mut snap = LinkSnapshot::default();
    for l in arr {
        let name = l
            .get("ifname")
            .and_then(Value::as_str)
            .ok_or("link without ifname")?
            .to_string();
        let mtu = l
            .get("mtu")
            .and_then(Value::as_u64)
            .and_then(|m| u32::try_from(m).ok())
            .unwrap_or(1500);
        let kind = l
            .get("linkinfo")
            .and_then(|i| i.get("info_kind"))
            .and_then(Value::as_str)
            .unwrap_or("");
        let up = l
            .get("flags")
            .and_then(Value::as_array)
            .is_some_and(|f| f.iter().any(|x| x.as_str() == Some("UP")));
        snap.links.insert(
            name,
            Link {
                mtu,
                bridge: kind == "bridge",
                vlan: kind == "vlan",
                master: l.get("master").and_then(Value::as_str).map(str::to_string),
                up,
            },
        );
    }
    Ok(snap)
}

impl NetworkBackend for LinuxBridgeBackend {
    fn ensure_bridge(&self, network: &NetworkSpec) -> Result<(), NetError> {
        self.run(|now| plan::ensure_bridge(now, network))
    }

    fn remove_bridge(&self, bridge: &str) -> Result<(), NetError> {
        self.run(|now| plan::remove_bridge(now, bridge))
    }

    fn attach_pif(&self, network: &NetworkSpec, pif: &PifSpec) -> Result<(), NetError> {
        self.run(|now| plan::attach_pif(now, network, pif))
    }

    fn list_bridges(&self) -> Result<Vec<BridgeInfo>, NetError> {
        Ok(self.snapshot()?.bridges())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_ip_json() {
        let text = r#"[
          {"ifindex":1,"ifname":"lo","flags":["LOOPBACK","UP"],"mtu":65536},
          {"ifindex":2,"ifname":"eth0","flags":["BROADCAST","UP"],"mtu":1500,"master":"xenbr0"},
          {"ifindex":3,"ifname":"xenbr0","flags":["BROADCAST"],"mtu":9000,"linkinfo":{"info_kind":"bridge"}},
          {"ifindex":4,"ifname":"eth0.7","flags":[],"mtu":1500,"master":"xenbr0","linkinfo":{"info_kind":"vlan"}}
        ]"#;
        let snap = parse_links(text).unwrap();
        assert_eq!(
            snap.bridges(),
            vec![BridgeInfo {
                name: "xenbr0".into(),
                mtu: 9000,
                ports: vec!["eth0".into(), "eth0.7".into()],
            }]
        );
        assert!(snap.links["eth0.7"].vlan);
        assert!(!snap.links["xenbr0"].up);
        assert!(parse_links("{}").is_err());
    }

    #[test]
    fn commands_for_each_step() {
        assert_eq!(
            ip_args(&NetAction::CreateVlan {
                parent: "eth0".into(),
                vlan: 7,
                name: "eth0.7".into()
            })
            .unwrap()
            .join(" "),
            "link add link eth0 name eth0.7 type vlan id 7"
        );
        assert!(matches!(
            ip_args(&NetAction::StartDhcp { link: "x".into() }),
            Err(NetError::Unsupported(_))
        ));
    }
}
