#![allow(clippy::unwrap_used, clippy::expect_used)]

use xenpool_net::{
    BridgeInfo, DryRunBackend, IpConfig, NetAction, NetError, NetworkBackend, NetworkSpec, PifSpec,
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
    // Applying the same again touches no link (addresses are re-asserted, which is harmless).
    b.ensure_bridge(&n).unwrap();
    b.attach_pif(&n, &p).unwrap();
    assert!(b.take_actions().iter().all(|a| matches!(
        a,
        NetAction::SetAddress { .. } | NetAction::SetGateway { .. }
    )));
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
