//! Networks, VLANs and bonds on a pool of two real hosts with the dry-run network backend:
//! the coordinator records each change, the host that owns the PIF applies it (its
//! backend's steps land in `<data_dir>/network-actions.jsonl`), the member's replica holds
//! the records, and refusals carry xapi's codes.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::time::Duration;

use xenpool_rpc::{Client, Value};
use xenpool_tests::ha::{call, must, HaOptions, HaPool, Net};
use xenpool_tests::wait_for;
use xenpool_tests::wire::{field, s, text};

fn error(r: Result<Value, xenpool_rpc::RpcError>) -> Vec<String> {
    match r {
        Ok(v) => panic!("expected an error, got {v:?}"),
        Err(e) => e.api().expect("a XenAPI error").description(),
    }
}

fn strings(v: &Value) -> Vec<String> {
    match v {
        Value::Array(a) => a.iter().map(text).collect(),
        other => panic!("not an array: {other:?}"),
    }
}

fn int(v: &Value) -> i64 {
    match v {
        Value::Int(i) => *i,
        Value::String(s) => s.parse().unwrap(),
        other => panic!("not an int: {other:?}"),
    }
}

/// Every step a host's dry-run backend has taken, one JSON value per step.
fn steps(data_dir: &Path) -> Vec<serde_json::Value> {
    let text = std::fs::read_to_string(data_dir.join("network-actions.jsonl")).unwrap_or_default();
    text.lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .flat_map(|op| op["steps"].as_array().cloned().unwrap_or_default())
        .collect()
}

/// Whether the host took a step of this kind whose fields include all of `fields`.
fn took(data_dir: &Path, kind: &str, fields: &[(&str, serde_json::Value)]) -> bool {
    steps(data_dir).iter().any(|s| {
        s.get(kind)
            .is_some_and(|body| fields.iter().all(|(k, v)| body.get(*k) == Some(v)))
    })
}

/// The PIF of `device` (no VLAN) on `host`.
async fn pif_of(c: &Client, host: &str, device: &str) -> String {
    for p in strings(&must(c, "host.get_PIFs", vec![s(host)]).await) {
        let rec = must(c, "PIF.get_record", vec![s(&p)]).await;
        if text(field(&rec, "device")) == device && int(field(&rec, "VLAN")) == -1 {
            return p;
        }
    }
    panic!("no PIF {device} on {host}");
}

/// How many records of `class` the member's replica holds, read from the member itself.
async fn member_count(member: &Client, session: &str, class: &str) -> i64 {
    let r = member
        .call(
            "event.from",
            vec![
                s(session),
                Value::Array(vec![s(class)]),
                s(""),
                Value::Double(0.0),
            ],
        )
        .await
        .unwrap();
    int(field(
        field(&r, "valid_ref_counts"),
        &class.to_ascii_lowercase(),
    ))
}

async fn wait_member_count(member: &Client, session: &str, class: &str, n: i64) {
    let seen = wait_for(Duration::from_secs(30), || async {
        (member_count(member, session, class).await == n).then_some(())
    })
    .await;
    assert!(seen.is_some(), "the member never held {n} {class} records");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vlans_bonds_and_pifs_are_recorded_by_the_coordinator_and_applied_by_their_host() {
    let mut pool = HaPool::start(
        Net::Loopback(91),
        &HaOptions {
            hosts: 2,
            vms_per_host: 0,
            enable_ha: false,
            extra: vec!["--network-devices".into(), "eth0,eth1,eth2,eth3".into()],
            ..HaOptions::default()
        },
    )
    .await;
    let c = pool.coordinator_client(&[0]).await;
    let (h1, h2) = (pool.host_refs[0].clone(), pool.host_refs[1].clone());
    let member_dir = pool.hosts[1].data_dir.clone();
    let coordinator_dir = pool.hosts[0].data_dir.clone();
    let member = pool.client(1);
    let member_session = text(
        &member
            .call(
                "session.slave_local_login_with_password",
                vec![s("root"), s(&pool.password)],
            )
            .await
            .unwrap(),
    );

    // PIF.scan finds the NICs the hosts' backends report and gives each a PIF, on the
    // network of its bridge, shared by both hosts.
    for h in [&h1, &h2] {
        must(&c, "PIF.scan", vec![s(h)]).await;
        assert_eq!(
            strings(&must(&c, "host.get_PIFs", vec![s(h)]).await).len(),
            4
        );
    }
    must(&c, "PIF.scan", vec![s(&h2)]).await;
    assert_eq!(
        strings(&must(&c, "host.get_PIFs", vec![s(&h2)]).await).len(),
        4
    );
    let xenbr1 = strings(
        &must(
            &c,
            "network.get_by_name_label",
            vec![s("Pool-wide network associated with eth1")],
        )
        .await,
    );
    assert_eq!(xenbr1.len(), 1);
    assert_eq!(
        text(&must(&c, "network.get_bridge", vec![s(&xenbr1[0])]).await),
        "xenbr1"
    );
    assert_eq!(
        strings(&must(&c, "network.get_PIFs", vec![s(&xenbr1[0])]).await).len(),
        2
    );

    // network.create picks the next free xapiN bridge; a bridge named like xapi's own is
    // refused.
    let net = text(
        &must(
            &c,
            "network.create",
            vec![Value::Struct(vec![("name_label".into(), s("vlan100"))])],
        )
        .await,
    );
    let bridge = text(&must(&c, "network.get_bridge", vec![s(&net)]).await);
    assert_eq!(bridge, "xapi0");
    assert_eq!(
        error(
            call(
                &c,
                "network.create",
                vec![Value::Struct(vec![("bridge".into(), s("xenbr7"))])]
            )
            .await
        ),
        ["INVALID_VALUE", "bridge", "xenbr7"]
    );

    // pool.create_VLAN: one VLAN PIF on every host, plugged there.
    let bad = text(
        &must(
            &c,
            "network.create",
            vec![Value::Struct(vec![("name_label".into(), s("spare"))])],
        )
        .await,
    );
    assert_eq!(
        error(call(&c, "pool.create_VLAN", vec![s("eth1"), s(&bad), s("4095")]).await),
        ["VLAN_TAG_INVALID", "4095"]
    );
    assert_eq!(
        error(call(&c, "pool.create_VLAN", vec![s("eth9"), s(&bad), s("7")]).await),
        ["INVALID_VALUE", "device", "eth9"]
    );
    let vlan_pifs =
        strings(&must(&c, "pool.create_VLAN", vec![s("eth1"), s(&net), s("100")]).await);
    assert_eq!(vlan_pifs.len(), 2);
    let mut on_hosts = Vec::new();
    for p in &vlan_pifs {
        let rec = must(&c, "PIF.get_record", vec![s(p)]).await;
        assert_eq!(int(field(&rec, "VLAN")), 100);
        assert_eq!(text(field(&rec, "device")), "eth1");
        assert_eq!(field(&rec, "currently_attached"), &Value::Bool(true));
        assert_eq!(text(field(&rec, "network")), net);
        let vlan = text(field(&rec, "VLAN_master_of"));
        assert_eq!(int(&must(&c, "VLAN.get_tag", vec![s(&vlan)]).await), 100);
        on_hosts.push(text(field(&rec, "host")));
    }
    on_hosts.sort();
    let mut both = vec![h1.clone(), h2.clone()];
    both.sort();
    assert_eq!(on_hosts, both, "one VLAN PIF per host");
    let eth1_h2 = pif_of(&c, &h2, "eth1").await;
    assert_eq!(
        strings(&must(&c, "PIF.get_VLAN_slave_of", vec![s(&eth1_h2)]).await).len(),
        1
    );
    // Each host applied its own: the member made the VLAN link and put it on the bridge.
    for dir in [&member_dir, &coordinator_dir] {
        assert!(took(
            dir,
            "CreateVlan",
            &[("parent", "eth1".into()), ("vlan", 100.into())]
        ));
        assert!(took(
            dir,
            "AddPort",
            &[("bridge", "xapi0".into()), ("port", "eth1.100".into())]
        ));
    }
    wait_member_count(&member, &member_session, "VLAN", 2).await;

    // The records survive a restart of the coordinator.
    pool.hosts[0].kill9();
    pool.hosts[0].spawn();
    let c = pool.coordinator_client(&[0]).await;
    assert_eq!(strings(&must(&c, "VLAN.get_all", vec![]).await).len(), 2);
    assert_eq!(
        strings(
            &must(
                &c,
                "PIF.get_VLAN_slave_of",
                vec![s(&pif_of(&c, &h1, "eth1").await)]
            )
            .await
        )
        .len(),
        1
    );

    // The same VLAN again, a VLAN on a VLAN, the network twice on one host.
    assert_eq!(
        error(call(&c, "VLAN.create", vec![s(&eth1_h2), s("100"), s(&bad)]).await),
        ["PIF_VLAN_EXISTS", "eth1"]
    );
    let mut vlan_pif_h2 = String::new();
    for p in &vlan_pifs {
        if text(&must(&c, "PIF.get_host", vec![s(p)]).await) == h2 {
            vlan_pif_h2 = p.clone();
        }
    }
    assert_eq!(
        error(call(&c, "VLAN.create", vec![s(&vlan_pif_h2), s("7"), s(&bad)]).await),
        ["PIF_IS_VLAN", vlan_pif_h2.as_str()]
    );
    assert_eq!(
        error(call(&c, "pool.create_VLAN", vec![s("eth2"), s(&net), s("101")]).await)[0],
        "NETWORK_ALREADY_CONNECTED"
    );
    let destroy = error(call(&c, "network.destroy", vec![s(&net)]).await);
    assert_eq!(destroy[0], "NETWORK_CONTAINS_PIF");
    assert_eq!(destroy.len(), 3, "{destroy:?}");

    // Unplug and plug on the member.
    must(&c, "PIF.unplug", vec![s(&vlan_pif_h2)]).await;
    assert_eq!(
        must(&c, "PIF.get_currently_attached", vec![s(&vlan_pif_h2)]).await,
        Value::Bool(false)
    );
    assert!(took(
        &member_dir,
        "DeleteLink",
        &[("name", "eth1.100".into())]
    ));
    must(&c, "PIF.plug", vec![s(&vlan_pif_h2)]).await;
    assert_eq!(
        must(&c, "PIF.get_currently_attached", vec![s(&vlan_pif_h2)]).await,
        Value::Bool(true)
    );

    // reconfigure_ip: recorded, and the member's bridge gets the address.
    let ip = |mode: &str, addr: &str| {
        vec![
            s(&vlan_pif_h2),
            s(mode),
            s(addr),
            s("255.255.255.0"),
            s("192.0.2.1"),
            s("192.0.2.53"),
        ]
    };
    assert_eq!(
        error(call(&c, "PIF.reconfigure_ip", ip("Static", "192.0.2.300")).await),
        ["INVALID_IP_ADDRESS_SPECIFIED", "IP"]
    );
    must(&c, "PIF.reconfigure_ip", ip("Static", "192.0.2.12")).await;
    let rec = must(&c, "PIF.get_record", vec![s(&vlan_pif_h2)]).await;
    assert_eq!(text(field(&rec, "ip_configuration_mode")), "Static");
    assert_eq!(text(field(&rec, "IP")), "192.0.2.12");
    assert_eq!(text(field(&rec, "DNS")), "192.0.2.53");
    assert!(took(
        &member_dir,
        "SetAddress",
        &[
            ("link", "xapi0".into()),
            ("address", "192.0.2.12/24".into())
        ]
    ));
    assert!(took(
        &member_dir,
        "SetGateway",
        &[("link", "xapi0".into()), ("gateway", "192.0.2.1".into())]
    ));

    // The management interface stays up and keeps an address.
    let eth0_h2 = pif_of(&c, &h2, "eth0").await;
    assert_eq!(
        error(call(&c, "PIF.unplug", vec![s(&eth0_h2)]).await),
        ["PIF_IS_MANAGEMENT_IFACE", eth0_h2.as_str()]
    );
    assert_eq!(
        error(
            call(
                &c,
                "PIF.reconfigure_ip",
                vec![s(&eth0_h2), s("None"), s(""), s(""), s(""), s("")]
            )
            .await
        ),
        ["PIF_IS_MANAGEMENT_IFACE", eth0_h2.as_str()]
    );

    // The member's management interface moves to a configured NIC, and back.
    let eth1_h2 = pif_of(&c, &h2, "eth1").await;
    assert_eq!(
        error(call(&c, "host.management_reconfigure", vec![s(&eth1_h2)]).await),
        ["PIF_HAS_NO_NETWORK_CONFIGURATION", eth1_h2.as_str()]
    );
    must(
        &c,
        "PIF.reconfigure_ip",
        vec![
            s(&eth1_h2),
            s("Static"),
            s("198.51.100.2"),
            s("255.255.255.0"),
            s(""),
            s(""),
        ],
    )
    .await;
    must(&c, "host.management_reconfigure", vec![s(&eth1_h2)]).await;
    assert_eq!(
        must(&c, "PIF.get_management", vec![s(&eth1_h2)]).await,
        Value::Bool(true)
    );
    assert_eq!(
        must(&c, "PIF.get_management", vec![s(&eth0_h2)]).await,
        Value::Bool(false)
    );
    assert_eq!(
        must(&c, "PIF.get_currently_attached", vec![s(&eth1_h2)]).await,
        Value::Bool(true)
    );
    assert!(took(
        &member_dir,
        "AddPort",
        &[("bridge", "xenbr1".into()), ("port", "eth1".into())]
    ));
    assert!(took(
        &member_dir,
        "SetAddress",
        &[
            ("link", "xenbr1".into()),
            ("address", "198.51.100.2/24".into())
        ]
    ));
    must(&c, "host.management_reconfigure", vec![s(&eth0_h2)]).await;
    assert_eq!(
        must(&c, "PIF.get_management", vec![s(&eth0_h2)]).await,
        Value::Bool(true)
    );
    assert_eq!(
        must(&c, "PIF.get_management", vec![s(&eth1_h2)]).await,
        Value::Bool(false)
    );

    // A bond of two NICs of the member.
    let bond_net = text(
        &must(
            &c,
            "network.create",
            vec![Value::Struct(vec![("name_label".into(), s("bond"))])],
        )
        .await,
    );
    let (eth2_h2, eth3_h2) = (pif_of(&c, &h2, "eth2").await, pif_of(&c, &h2, "eth3").await);
    // A VLAN on a future member moves up to the bond, and back down when it goes.
    let vnet = text(&must(&c, "network.create", vec![Value::Struct(vec![])]).await);
    let v200 = text(&must(&c, "VLAN.create", vec![s(&eth2_h2), s("200"), s(&vnet)]).await);
    let v200_pif = text(&must(&c, "VLAN.get_untagged_PIF", vec![s(&v200)]).await);
    let members = Value::Array(vec![s(&eth2_h2), s(&eth3_h2)]);
    let bond = text(
        &must(
            &c,
            "Bond.create",
            vec![
                s(&bond_net),
                members.clone(),
                s(""),
                s("active-backup"),
                Value::Struct(vec![]),
            ],
        )
        .await,
    );
    let b = must(&c, "Bond.get_record", vec![s(&bond)]).await;
    assert_eq!(text(field(&b, "mode")), "active-backup");
    let mut slaves = strings(field(&b, "slaves"));
    slaves.sort();
    let mut want = vec![eth2_h2.clone(), eth3_h2.clone()];
    want.sort();
    assert_eq!(slaves, want);
    let master = text(field(&b, "master"));
    let m = must(&c, "PIF.get_record", vec![s(&master)]).await;
    assert_eq!(text(field(&m, "device")), "bond0");
    assert_eq!(text(field(&m, "host")), h2);
    assert_eq!(field(&m, "currently_attached"), &Value::Bool(true));
    assert_eq!(
        text(&must(&c, "PIF.get_bond_slave_of", vec![s(&eth2_h2)]).await),
        bond
    );
    assert!(took(
        &member_dir,
        "CreateBond",
        &[("name", "bond0".into()), ("mode", "ActiveBackup".into())]
    ));
    assert!(took(
        &member_dir,
        "AddBondMember",
        &[("bond", "bond0".into()), ("member", "eth3".into())]
    ));
    assert!(took(
        &member_dir,
        "AddPort",
        &[("bridge", "xapi2".into()), ("port", "bond0".into())]
    ));
    wait_member_count(&member, &member_session, "Bond", 1).await;
    assert_eq!(
        text(&must(&c, "VLAN.get_tagged_PIF", vec![s(&v200)]).await),
        master
    );
    assert_eq!(
        text(&must(&c, "PIF.get_device", vec![s(&v200_pif)]).await),
        "bond0"
    );
    assert_eq!(
        must(&c, "PIF.get_currently_attached", vec![s(&v200_pif)]).await,
        Value::Bool(true)
    );
    assert!(took(
        &member_dir,
        "CreateVlan",
        &[("parent", "bond0".into()), ("vlan", 200.into())]
    ));
    assert_eq!(
        error(call(&c, "PIF.plug", vec![s(&eth2_h2)]).await),
        ["CANNOT_PLUG_BOND_SLAVE", eth2_h2.as_str()]
    );
    let other_net = text(&must(&c, "network.create", vec![Value::Struct(vec![])]).await);
    assert_eq!(
        error(
            call(
                &c,
                "Bond.create",
                vec![
                    s(&other_net),
                    members,
                    s(""),
                    s("lacp"),
                    Value::Struct(vec![])
                ]
            )
            .await
        ),
        ["PIF_ALREADY_BONDED", eth2_h2.as_str()]
    );
    let eth3_h1 = pif_of(&c, &h1, "eth3").await;
    assert_eq!(
        error(
            call(
                &c,
                "Bond.create",
                vec![
                    s(&other_net),
                    Value::Array(vec![s(&eth3_h1), s(&eth1_h2)]),
                    s(""),
                    s("lacp"),
                    Value::Struct(vec![])
                ]
            )
            .await
        ),
        ["PIF_CANNOT_BOND_CROSS_HOST"]
    );
    assert_eq!(
        error(
            call(
                &c,
                "Bond.create",
                vec![
                    s(&other_net),
                    Value::Array(vec![]),
                    s(""),
                    s("lacp"),
                    Value::Struct(vec![])
                ]
            )
            .await
        ),
        ["PIF_BOND_NEEDS_MORE_MEMBERS"]
    );

    // Bond.destroy: the master goes, the members are free again.
    must(&c, "Bond.destroy", vec![s(&bond)]).await;
    assert!(error(call(&c, "PIF.get_record", vec![s(&master)]).await)[0] == "HANDLE_INVALID");
    assert_eq!(
        text(&must(&c, "PIF.get_bond_slave_of", vec![s(&eth2_h2)]).await),
        "OpaqueRef:NULL"
    );
    assert!(took(&member_dir, "DeleteLink", &[("name", "bond0".into())]));
    assert_eq!(
        text(&must(&c, "VLAN.get_tagged_PIF", vec![s(&v200)]).await),
        eth2_h2
    );
    assert_eq!(
        text(&must(&c, "PIF.get_device", vec![s(&v200_pif)]).await),
        "eth2"
    );
    assert_eq!(
        must(&c, "PIF.get_currently_attached", vec![s(&v200_pif)]).await,
        Value::Bool(true)
    );
    let vlan_links_on_eth2 = steps(&member_dir)
        .iter()
        .filter(|s| s["CreateVlan"]["parent"] == "eth2" && s["CreateVlan"]["vlan"] == 200)
        .count();
    assert_eq!(
        vlan_links_on_eth2, 2,
        "made on eth2, then again after the bond"
    );
    wait_member_count(&member, &member_session, "Bond", 0).await;

    // A bond of the management NIC: management and its address move to the bond, and
    // back when it goes.
    let address = pool.hosts[1].address.to_string();
    let mbond_net = text(&must(&c, "network.create", vec![Value::Struct(vec![])]).await);
    let mbridge = text(&must(&c, "network.get_bridge", vec![s(&mbond_net)]).await);
    let mbond = text(
        &must(
            &c,
            "Bond.create",
            vec![
                s(&mbond_net),
                Value::Array(vec![s(&eth3_h2), s(&eth0_h2)]),
                s(""),
                s("balance-slb"),
                Value::Struct(vec![]),
            ],
        )
        .await,
    );
    let mmaster = text(&must(&c, "Bond.get_master", vec![s(&mbond)]).await);
    assert_eq!(
        text(&must(&c, "Bond.get_primary_slave", vec![s(&mbond)]).await),
        eth0_h2
    );
    assert_eq!(
        must(&c, "PIF.get_management", vec![s(&mmaster)]).await,
        Value::Bool(true)
    );
    assert_eq!(
        must(&c, "PIF.get_management", vec![s(&eth0_h2)]).await,
        Value::Bool(false)
    );
    assert_eq!(
        text(&must(&c, "PIF.get_IP", vec![s(&mmaster)]).await),
        address
    );
    assert_eq!(text(&must(&c, "PIF.get_IP", vec![s(&eth0_h2)]).await), "");
    assert!(took(
        &member_dir,
        "SetAddress",
        &[
            ("link", mbridge.clone().into()),
            ("address", format!("{address}/8").into())
        ]
    ));
    assert_eq!(
        error(call(&c, "PIF.unplug", vec![s(&mmaster)]).await),
        ["PIF_IS_MANAGEMENT_IFACE", mmaster.as_str()]
    );
    must(&c, "Bond.destroy", vec![s(&mbond)]).await;
    assert_eq!(
        must(&c, "PIF.get_management", vec![s(&eth0_h2)]).await,
        Value::Bool(true)
    );
    assert_eq!(
        text(&must(&c, "PIF.get_IP", vec![s(&eth0_h2)]).await),
        address
    );
    assert_eq!(
        must(&c, "PIF.get_currently_attached", vec![s(&eth0_h2)]).await,
        Value::Bool(true)
    );
    assert!(took(
        &member_dir,
        "RemoveAddress",
        &[
            ("link", mbridge.clone().into()),
            ("address", format!("{address}/8").into())
        ]
    ));

    // VLAN.destroy of each; then the networks go.
    for v in strings(&must(&c, "VLAN.get_all", vec![]).await) {
        must(&c, "VLAN.destroy", vec![s(&v)]).await;
    }
    for p in &vlan_pifs {
        assert_eq!(
            error(call(&c, "PIF.get_record", vec![s(p)]).await)[0],
            "HANDLE_INVALID"
        );
    }
    assert!(strings(&must(&c, "PIF.get_VLAN_slave_of", vec![s(&eth1_h2)]).await).is_empty());
    wait_member_count(&member, &member_session, "VLAN", 0).await;
    for n in [&net, &bond_net, &bad, &other_net, &mbond_net, &vnet] {
        must(&c, "network.destroy", vec![s(n)]).await;
    }
    assert!(took(&member_dir, "DeleteLink", &[("name", "xapi0".into())]));
    assert_eq!(
        error(call(&c, "network.destroy", vec![s(&net)]).await)[0],
        "HANDLE_INVALID"
    );
}

fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .and_then(|l| l.split_whitespace().nth(2).map(|u| u == "0"))
        })
        .unwrap_or(false)
}

/// `ip -j -n <ns> ARGS`, parsed.
fn ip_json(ns: &str, args: &[&str]) -> serde_json::Value {
    let out = std::process::Command::new(xenpool_tests::netns::IP)
        .args(["-j", "-n", ns])
        .args(args)
        .output()
        .unwrap();
    if !out.status.success() {
        return serde_json::Value::Null;
    }
    serde_json::from_slice(&out.stdout).unwrap_or(serde_json::Value::Null)
}

fn master_of(ns: &str, link: &str) -> Option<String> {
    ip_json(ns, &["link", "show", "dev", link])[0]["master"]
        .as_str()
        .map(str::to_string)
}

fn addresses_of(ns: &str, link: &str) -> Vec<String> {
    ip_json(ns, &["addr", "show", "dev", link, "scope", "global"])[0]["addr_info"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|i| Some(format!("{}/{}", i["local"].as_str()?, i["prefixlen"])))
                .collect()
        })
        .unwrap_or_default()
}

/// The Linux backend through the daemon: each host runs in a network namespace of its own
/// whose NICs `eth0` and `eth1` are veths. The member scans, plugs, addresses and unplugs
/// its `eth1` over netlink, checked with `ip` in its namespace.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_linux_backend_applies_a_members_pif_in_its_namespace() {
    if !is_root() {
        let _ = std::io::Write::write_all(
            &mut std::io::stderr(),
            b"SKIPPED the_linux_backend_applies_a_members_pif_in_its_namespace: needs root for network namespaces (CI runs as root)\n",
        );
        return;
    }
    // Declared first, so the daemons in it are dropped before it is removed.
    let topo = xenpool_tests::netns::Topology::with_second_path(95, 2, 96).unwrap();
    let pool = HaPool::start(
        Net::Namespaces(&topo),
        &HaOptions {
            hosts: 2,
            vms_per_host: 0,
            enable_ha: false,
            extra: vec![
                "--network-backend".into(),
                "linux".into(),
                "--network-nic-kinds".into(),
                "veth".into(),
            ],
            ..HaOptions::default()
        },
    )
    .await;
    let c = pool.coordinator_client(&[0]).await;
    let h2 = pool.host_refs[1].clone();
    let ns = topo.ns(2);

    for h in &pool.host_refs {
        must(&c, "PIF.scan", vec![s(h)]).await;
    }
    let eth1 = pif_of(&c, &h2, "eth1").await;
    assert_eq!(
        text(
            &must(
                &c,
                "network.get_bridge",
                vec![must(&c, "PIF.get_network", vec![s(&eth1)]).await]
            )
            .await
        ),
        "xenbr1"
    );

    must(&c, "PIF.plug", vec![s(&eth1)]).await;
    assert_eq!(master_of(&ns, "eth1").as_deref(), Some("xenbr1"));
    must(
        &c,
        "PIF.reconfigure_ip",
        vec![
            s(&eth1),
            s("Static"),
            s("192.0.2.22"),
            s("255.255.255.0"),
            s(""),
            s(""),
        ],
    )
    .await;
    assert_eq!(
        addresses_of(&ns, "xenbr1"),
        vec!["192.0.2.22/24".to_string()]
    );
    must(&c, "PIF.unplug", vec![s(&eth1)]).await;
    assert_eq!(master_of(&ns, "eth1"), None);
    assert!(addresses_of(&ns, "xenbr1").is_empty());

    // A VLAN PIF is plugged where the kernel can make VLAN links, and left unplugged
    // (as xapi leaves it) where it cannot.
    let net = text(&must(&c, "network.create", vec![Value::Struct(vec![])]).await);
    let pifs = strings(&must(&c, "pool.create_VLAN", vec![s("eth1"), s(&net), s("5")]).await);
    assert_eq!(pifs.len(), 2);
    for p in &pifs {
        if text(&must(&c, "PIF.get_host", vec![s(p)]).await) != h2 {
            continue;
        }
        let attached =
            must(&c, "PIF.get_currently_attached", vec![s(p)]).await == Value::Bool(true);
        let link = master_of(&ns, "eth1.5");
        assert_eq!(
            attached,
            link.is_some(),
            "attached={attached}, eth1.5 on {link:?}"
        );
        if !attached {
            let _ = std::io::Write::write_all(
                &mut std::io::stderr(),
                b"SKIPPED VLAN part: this kernel cannot make VLAN links\n",
            );
        }
    }
}
