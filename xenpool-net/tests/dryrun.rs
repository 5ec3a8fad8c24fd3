#![allow(clippy::unwrap_used, clippy::expect_used)]

use proptest::prelude::*;
use xenpool_net::backend::Plan;
use xenpool_net::{
    plan, BondMode, BondSpec, BridgeInfo, DryRunBackend, IpConfig, IpMode, LinuxBondMode,
    NetAction, NetError, NetworkBackend, NetworkSpec, PhysicalInterface, PifSpec,
};

fn net(bridge: &str, vlan: Option<u16>) -> NetworkSpec {
    NetworkSpec {
        uuid: format!("uuid-{bridge}"),
        bridge: bridge.into(),
        mtu: 1500,
        vlan,
    }
}

fn pif(device: &str, vlan: Option<u16>, ip: IpConfig) -> PifSpec {
    PifSpec {
        device: device.into(),
        mac: "52:54:00:00:00:01".into(),
        vlan,
        management: matches!(ip, IpConfig::Static { .. }),
        ip,
    }
}

#[test]
fn management_network_is_built_once() {
    let b = DryRunBackend::with_devices(["eth0"]).unwrap();
    let n = net("xenbr0", None);
    let p = pif(
        "eth0",
        None,
        IpConfig::Static {
            address: "10.0.0.5/24".into(),
            gateway: Some("10.0.0.1".into()),
        },
    );
    b.ensure_bridge(&n).unwrap();
    b.attach_pif(&n, &p).unwrap();
    assert_eq!(
        b.take_actions(),
        vec![
            NetAction::CreateBridge {
                name: "xenbr0".into(),
                mtu: 1500
            },
            NetAction::SetUp {
                link: "xenbr0".into()
            },
            NetAction::SetUp {
                link: "eth0".into()
            },
            NetAction::AddPort {
                bridge: "xenbr0".into(),
                port: "eth0".into()
            },
            NetAction::SetAddress {
                link: "xenbr0".into(),
                address: "10.0.0.5/24".into()
            },
            NetAction::SetGateway {
                link: "xenbr0".into(),
                gateway: "10.0.0.1".into()
            },
        ]
    );
    // Applying the same again takes no step at all.
    b.ensure_bridge(&n).unwrap();
    b.attach_pif(&n, &p).unwrap();
    assert_eq!(b.take_actions(), vec![]);
    assert_eq!(
        b.list_bridges().unwrap(),
        vec![BridgeInfo {
            name: "xenbr0".into(),
            mtu: 1500,
            ports: vec!["eth0".into()]
        }]
    );
}

#[test]
fn vlan_network_gets_a_vlan_link_that_goes_with_the_bridge() {
    let b = DryRunBackend::with_devices(["eth1"]).unwrap();
    let n = net("xapi7", Some(7));
    b.ensure_bridge(&n).unwrap();
    b.attach_pif(&n, &pif("eth1", Some(7), IpConfig::None))
        .unwrap();
    assert!(b.actions().contains(&NetAction::CreateVlan {
        parent: "eth1".into(),
        vlan: 7,
        name: "eth1.7".into()
    }));
    assert_eq!(
        b.list_bridges().unwrap()[0].ports,
        vec!["eth1.7".to_string()]
    );
    b.take_actions();
    b.remove_bridge("xapi7").unwrap();
    assert_eq!(
        b.take_actions(),
        vec![
            NetAction::DeleteLink {
                name: "eth1.7".into()
            },
            NetAction::DeleteLink {
                name: "xapi7".into()
            },
        ]
    );
    assert!(b.list_bridges().unwrap().is_empty());
    assert!(
        b.snapshot().links.contains_key("eth1"),
        "the physical device stays"
    );
    b.remove_bridge("xapi7").unwrap();
    assert!(b.take_actions().is_empty());
}

#[test]
fn mtu_change_is_applied_in_place() {
    let b = DryRunBackend::new();
    let mut n = net("xenbr1", None);
    b.ensure_bridge(&n).unwrap();
    b.take_actions();
    n.mtu = 9000;
    b.ensure_bridge(&n).unwrap();
    assert_eq!(
        b.take_actions(),
        vec![NetAction::SetMtu {
            link: "xenbr1".into(),
            mtu: 9000
        }]
    );
}

#[test]
fn bad_requests_change_nothing() {
    let b = DryRunBackend::with_devices(["eth0"]).unwrap();
    let n = net("xenbr0", Some(5));
    assert!(matches!(
        b.attach_pif(&n, &pif("eth0", Some(5), IpConfig::None)),
        Err(NetError::NoSuchBridge(_))
    ));
    b.ensure_bridge(&n).unwrap();
    b.take_actions();
    assert!(matches!(
        b.attach_pif(&n, &pif("eth0", Some(6), IpConfig::None)),
        Err(NetError::VlanMismatch { .. })
    ));
    assert!(matches!(
        b.attach_pif(&n, &pif("eth9", Some(5), IpConfig::None)),
        Err(NetError::NoSuchDevice(_))
    ));
    assert!(matches!(
        b.ensure_bridge(&net("a-name-far-too-long", None)),
        Err(NetError::InvalidName(_))
    ));
    assert!(matches!(
        b.ensure_bridge(&net("eth0", None)),
        Err(NetError::InvalidName(_))
    ));
    assert!(matches!(
        b.remove_bridge("eth0"),
        Err(NetError::NoSuchBridge(_))
    ));
    assert!(b.actions().is_empty());
}

#[test]
fn jumbo_network_raises_the_port_mtu_before_it_joins() {
    let b = DryRunBackend::with_devices(["eth0"]).unwrap();
    let mut n = net("xenbr0", None);
    n.mtu = 9000;
    b.ensure_bridge(&n).unwrap();
    b.take_actions();
    b.attach_pif(&n, &pif("eth0", None, IpConfig::None))
        .unwrap();
    let steps = b.take_actions();
    let set = steps
        .iter()
        .position(|a| {
            *a == NetAction::SetMtu {
                link: "eth0".into(),
                mtu: 9000,
            }
        })
        .expect("port MTU not raised");
    let join = steps
        .iter()
        .position(|a| matches!(a, NetAction::AddPort { .. }))
        .unwrap();
    assert!(set < join);
}

fn static_ip(address: &str, gateway: Option<&str>) -> IpConfig {
    IpConfig::Static {
        address: address.into(),
        gateway: gateway.map(str::to_string),
    }
}

#[test]
fn unplug_takes_the_pif_off_and_clears_its_address() {
    let b = DryRunBackend::with_devices(["eth0", "eth1"]).unwrap();
    let n = net("xenbr0", None);
    let p = pif("eth0", None, static_ip("10.0.0.5/24", Some("10.0.0.1")));
    b.ensure_bridge(&n).unwrap();
    b.attach_pif(&n, &p).unwrap();
    b.take_actions();
    b.detach_pif(&n, &p).unwrap();
    assert_eq!(
        b.take_actions(),
        vec![
            NetAction::RemovePort {
                port: "eth0".into()
            },
            NetAction::SetDown {
                link: "eth0".into()
            },
            NetAction::RemoveGateway {
                link: "xenbr0".into(),
                gateway: "10.0.0.1".into()
            },
            NetAction::RemoveAddress {
                link: "xenbr0".into(),
                address: "10.0.0.5/24".into()
            },
        ]
    );
    assert_eq!(b.list_bridges().unwrap()[0].ports, Vec::<String>::new());
    assert_eq!(b.ip_state("xenbr0").unwrap().mode, IpMode::None);
    b.detach_pif(&n, &p).unwrap();
    assert_eq!(b.take_actions(), vec![], "unplugging twice changes nothing");

    // A VLAN PIF's link goes with it; the device under it stays up for other VLANs.
    let v = net("xapi1", Some(20));
    let vp = pif("eth1", Some(20), IpConfig::None);
    b.ensure_bridge(&v).unwrap();
    b.attach_pif(&v, &vp).unwrap();
    b.take_actions();
    b.detach_pif(&v, &vp).unwrap();
    assert_eq!(
        b.take_actions(),
        vec![NetAction::DeleteLink {
            name: "eth1.20".into()
        }]
    );
    assert!(b.snapshot().links["eth1"].up);
}

#[test]
fn reconfigure_ip_replaces_addresses_and_records_dhcp() {
    let b = DryRunBackend::new();
    let n = net("xenbr0", None);
    b.ensure_bridge(&n).unwrap();
    b.take_actions();
    b.reconfigure_ip("xenbr0", &static_ip("10.0.0.5/24", Some("10.0.0.1")))
        .unwrap();
    b.reconfigure_ip("xenbr0", &static_ip("10.0.1.5/24", Some("10.0.1.1")))
        .unwrap();
    let st = b.ip_state("xenbr0").unwrap();
    assert_eq!(st.mode, IpMode::Static);
    assert_eq!(st.addresses, vec!["10.0.1.5/24".to_string()]);
    assert_eq!(st.gateways, vec!["10.0.1.1".to_string()]);
    b.take_actions();

    b.reconfigure_ip("xenbr0", &IpConfig::Dhcp).unwrap();
    assert_eq!(
        b.take_actions(),
        vec![
            NetAction::RemoveGateway {
                link: "xenbr0".into(),
                gateway: "10.0.1.1".into()
            },
            NetAction::RemoveAddress {
                link: "xenbr0".into(),
                address: "10.0.1.5/24".into()
            },
            NetAction::StartDhcp {
                link: "xenbr0".into()
            },
        ]
    );
    assert_eq!(b.ip_state("xenbr0").unwrap().mode, IpMode::Dhcp);
    b.reconfigure_ip("xenbr0", &IpConfig::Dhcp).unwrap();
    assert_eq!(b.take_actions(), vec![]);

    b.reconfigure_ip("xenbr0", &IpConfig::None).unwrap();
    assert_eq!(
        b.take_actions(),
        vec![NetAction::StopDhcp {
            link: "xenbr0".into()
        }]
    );
    assert_eq!(b.ip_state("xenbr0").unwrap().mode, IpMode::None);
    assert!(matches!(
        b.reconfigure_ip("xenbr9", &IpConfig::None),
        Err(NetError::NoSuchDevice(_))
    ));
    assert!(matches!(
        b.reconfigure_ip("xenbr0", &static_ip("10.0.0.5/24", Some("fd00::1"))),
        Err(NetError::InvalidAddress(_))
    ));
}

#[test]
fn management_moves_the_default_route_and_keeps_the_old_address() {
    let b = DryRunBackend::with_devices(["eth0", "eth1"]).unwrap();
    let old = net("xenbr0", None);
    let new = net("xenbr1", None);
    b.management_reconfigure(
        &old,
        &pif("eth0", None, static_ip("10.0.0.5/24", Some("10.0.0.1"))),
    )
    .unwrap();
    let st = b
        .management_reconfigure(
            &new,
            &pif("eth1", None, static_ip("10.1.0.5/24", Some("10.1.0.1"))),
        )
        .unwrap();
    assert_eq!(st.addresses, vec!["10.1.0.5/24".to_string()]);
    assert_eq!(st.gateways, vec!["10.1.0.1".to_string()]);
    let snap = b.snapshot();
    assert_eq!(snap.default_routes.len(), 1, "{:?}", snap.default_routes);
    assert_eq!(
        snap.links["xenbr0"].addresses,
        vec!["10.0.0.5/24".to_string()]
    );
}

#[test]
fn bonds_are_built_changed_and_removed() {
    let b = DryRunBackend::with_devices(["eth0", "eth1", "eth2"]).unwrap();
    let mut bond = BondSpec {
        name: "bond0".into(),
        members: vec!["eth0".into(), "eth1".into()],
        mode: BondMode::Lacp,
        mtu: 1500,
        mac: Some("02:00:00:00:00:01".into()),
    };
    b.ensure_bond(&bond).unwrap();
    assert_eq!(
        b.take_actions(),
        vec![
            NetAction::CreateBond {
                name: "bond0".into(),
                mode: LinuxBondMode::Lacp8023ad,
                mtu: 1500
            },
            NetAction::SetMac {
                link: "bond0".into(),
                mac: "02:00:00:00:00:01".into()
            },
            NetAction::AddBondMember {
                bond: "bond0".into(),
                member: "eth0".into()
            },
            NetAction::AddBondMember {
                bond: "bond0".into(),
                member: "eth1".into()
            },
            NetAction::SetUp {
                link: "bond0".into()
            },
        ]
    );
    b.ensure_bond(&bond).unwrap();
    assert_eq!(b.take_actions(), vec![]);

    // The bond is a PIF device like a NIC; scan does not report it.
    let n = net("xapi0", None);
    b.ensure_bridge(&n).unwrap();
    b.attach_pif(&n, &pif("bond0", None, IpConfig::None))
        .unwrap();
    assert_eq!(
        b.list_bridges().unwrap()[0].ports,
        vec!["bond0".to_string()]
    );
    let scanned: Vec<String> = b.scan().unwrap().into_iter().map(|p| p.device).collect();
    assert_eq!(scanned, vec!["eth0", "eth1", "eth2"]);
    b.take_actions();

    bond.members = vec!["eth1".into(), "eth2".into()];
    b.ensure_bond(&bond).unwrap();
    assert_eq!(
        b.take_actions(),
        vec![
            NetAction::RemovePort {
                port: "eth0".into()
            },
            NetAction::AddBondMember {
                bond: "bond0".into(),
                member: "eth2".into()
            },
        ]
    );

    bond.mode = BondMode::ActiveBackup;
    b.ensure_bond(&bond).unwrap();
    let steps = b.take_actions();
    assert_eq!(
        steps[..2],
        [
            NetAction::DeleteLink {
                name: "bond0".into()
            },
            NetAction::CreateBond {
                name: "bond0".into(),
                mode: LinuxBondMode::ActiveBackup,
                mtu: 1500
            },
        ],
        "the driver changes mode only on an empty bond"
    );

    b.remove_bond("bond0").unwrap();
    assert!(!b.snapshot().links.contains_key("bond0"));
    assert!(b.snapshot().links["eth1"].master.is_none());
    b.remove_bond("bond0").unwrap();
    assert!(matches!(
        b.remove_bond("eth0"),
        Err(NetError::WrongKind { .. })
    ));
    bond.members = vec!["eth9".into()];
    assert!(matches!(
        b.ensure_bond(&bond),
        Err(NetError::NoSuchDevice(_))
    ));
}

#[test]
fn vlans_on_their_own() {
    let b = DryRunBackend::with_devices(["eth0", "enx001122334455"]).unwrap();
    assert_eq!(b.ensure_vlan("eth0", 100).unwrap(), "eth0.100");
    assert_eq!(b.ensure_vlan("eth0", 100).unwrap(), "eth0.100");
    let long = b.ensure_vlan("enx001122334455", 100).unwrap();
    assert!(long.len() <= 15);
    let snap = b.snapshot();
    assert_eq!(snap.links[&long].parent.as_deref(), Some("enx001122334455"));
    assert_eq!(snap.links["eth0.100"].vlan_id, Some(100));
    b.remove_vlan("eth0", 100).unwrap();
    b.remove_vlan("eth0", 100).unwrap();
    assert!(!b.snapshot().links.contains_key("eth0.100"));
    assert!(matches!(
        b.ensure_vlan("eth7", 100),
        Err(NetError::NoSuchDevice(_))
    ));
}

#[test]
fn scan_reports_what_the_host_has() {
    let b = DryRunBackend::with_interfaces([PhysicalInterface {
        device: "eth0".into(),
        mac: "52:54:00:AA:BB:CC".into(),
        mtu: 9000,
        carrier: true,
        up: true,
        master: None,
    }])
    .unwrap();
    b.ensure_bridge(&net("xenbr0", None)).unwrap();
    let s = b.scan().unwrap();
    assert_eq!(s.len(), 1);
    assert_eq!(s[0].mac, "52:54:00:aa:bb:cc");
    assert_eq!((s[0].mtu, s[0].carrier), (9000, true));
    b.set_carrier("eth0", false).unwrap();
    assert!(!b.scan().unwrap()[0].carrier);
}

/// One operation of the property test below.
#[derive(Clone, Debug)]
enum Op {
    Bridge(usize),
    RemoveBridge(usize),
    Plug(usize, usize, u8),
    Unplug(usize, usize),
    Ip(usize, u8),
    Bond(bool, u8),
    RemoveBond,
}

const DEVICES: [&str; 3] = ["eth0", "eth1", "eth2"];

fn networks() -> Vec<NetworkSpec> {
    vec![
        net("xenbr0", None),
        NetworkSpec {
            mtu: 9000,
            ..net("xenbr1", None)
        },
        net("xapi5", Some(5)),
    ]
}

fn ip_choice(i: u8) -> IpConfig {
    match i % 4 {
        0 => IpConfig::None,
        1 => IpConfig::Dhcp,
        2 => static_ip("10.0.0.5/24", Some("10.0.0.1")),
        _ => static_ip("fd00::5/64", None),
    }
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        (0..3usize).prop_map(Op::Bridge),
        (0..3usize).prop_map(Op::RemoveBridge),
        (0..3usize, 0..4usize, any::<u8>()).prop_map(|(n, d, i)| Op::Plug(n, d, i)),
        (0..3usize, 0..4usize).prop_map(|(n, d)| Op::Unplug(n, d)),
        (0..3usize, any::<u8>()).prop_map(|(n, i)| Op::Ip(n, i)),
        (any::<bool>(), any::<u8>()).prop_map(|(two, m)| Op::Bond(two, m)),
        Just(Op::RemoveBond),
    ]
}

fn plan_for(op: &Op) -> Box<Plan<'static>> {
    let nets = networks();
    let device = |d: usize| if d == 3 { "bond0" } else { DEVICES[d] };
    match op.clone() {
        Op::Bridge(n) => Box::new(move |s| plan::ensure_bridge(s, &nets[n])),
        Op::RemoveBridge(n) => Box::new(move |s| plan::remove_bridge(s, &nets[n].bridge)),
        Op::Plug(n, d, i) => {
            let p = pif(device(d), nets[n].vlan, ip_choice(i));
            Box::new(move |s| plan::attach_pif(s, &nets[n], &p))
        }
        Op::Unplug(n, d) => {
            let p = pif(device(d), nets[n].vlan, IpConfig::Dhcp);
            Box::new(move |s| plan::detach_pif(s, &nets[n], &p))
        }
        Op::Ip(n, i) => Box::new(move |s| plan::ip_steps(s, &nets[n].bridge, &ip_choice(i))),
        Op::Bond(two, m) => {
            let bond = BondSpec {
                name: "bond0".into(),
                members: if two {
                    vec!["eth1".into(), "eth2".into()]
                } else {
                    vec!["eth2".into()]
                },
                mode: [BondMode::BalanceSlb, BondMode::ActiveBackup, BondMode::Lacp]
                    [usize::from(m % 3)],
                mtu: 1500,
                mac: None,
            };
            Box::new(move |s| plan::ensure_bond(s, &bond))
        }
        Op::RemoveBond => Box::new(|s| plan::remove_bond(s, "bond0")),
    }
}

proptest! {
    /// Whatever came before, an operation that succeeded asks for nothing when repeated:
    /// the plans read the state they leave behind as done.
    #[test]
    fn every_operation_is_idempotent(ops in proptest::collection::vec(op(), 1..25)) {
        let b = DryRunBackend::with_devices(DEVICES).unwrap();
        for op in &ops {
            let plan = plan_for(op);
            let before = b.snapshot();
            match b.apply(&*plan) {
                Ok(_) => {
                    let again = b.apply(&*plan).unwrap();
                    prop_assert!(again.is_empty(), "{op:?} repeated took {again:?}");
                }
                Err(_) => prop_assert_eq!(b.snapshot(), before, "a refused {:?} changed the host", op),
            }
        }
    }
}

#[test]
fn a_dry_run_can_start_from_what_a_host_has() {
    let real = DryRunBackend::with_devices(["eth0", "eth1"]).unwrap();
    real.ensure_bridge(&net("xenbr0", None)).unwrap();
    let b = DryRunBackend::from_snapshot(real.snapshot());
    assert_eq!(b.scan().unwrap().len(), 2);
    b.ensure_bridge(&net("xenbr0", None)).unwrap();
    assert_eq!(b.actions(), vec![], "the bridge is already there");
}

#[test]
fn each_address_family_is_configured_on_its_own() {
    let b = DryRunBackend::new();
    b.ensure_bridge(&net("xenbr0", None)).unwrap();
    b.reconfigure_ip("xenbr0", &static_ip("10.0.0.5/24", Some("10.0.0.1")))
        .unwrap();
    b.reconfigure_ip("xenbr0", &static_ip("fd00::5/64", Some("fd00::1")))
        .unwrap();
    let st = b.ip_state("xenbr0").unwrap();
    assert_eq!(st.addresses, vec!["10.0.0.5/24", "fd00::5/64"]);
    assert_eq!(st.gateways, vec!["10.0.0.1", "fd00::1"]);
    // IPv4 off (what `PIF.reconfigure_ip` with mode None asks) leaves IPv6 alone.
    b.reconfigure_ip("xenbr0", &IpConfig::None).unwrap();
    let st = b.ip_state("xenbr0").unwrap();
    assert_eq!(st.addresses, vec!["fd00::5/64"]);
    assert_eq!(st.gateways, vec!["fd00::1"]);
}
