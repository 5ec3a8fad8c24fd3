//! What a new pool and a new host hold: the records a host brings (its metrics, control
//! domain, local SR and its plug, management PIF) and those of a pool of one (the
//! management network, pool record, roles, the `root` user, optional demonstration
//! objects). Facts about the machine and fresh identifiers come in as arguments, so the
//! same records are built on every host and in tests.

use std::collections::BTreeMap;

use crate::db::Txn;
use crate::error::CoreError;
use crate::model::*;
use crate::rbac::Role;
use crate::value::{DateTime, Ref};

const MIB: i64 = 1024 * 1024;

/// Where fresh references, UUIDs and random bits come from (the caller owns randomness).
pub trait Fresh {
    /// A new reference.
    fn new_ref(&self) -> Ref;
    /// A new UUID.
    fn new_uuid(&self) -> String;
    /// 128 random bits.
    fn random(&self) -> u128;
}

/// What a host knows about itself when it creates its records.
#[derive(Clone, Debug, PartialEq)]
pub struct HostFacts {
    /// The host's UUID, kept on its disk.
    pub uuid: String,
    /// Its name.
    pub label: String,
    /// Its management address.
    pub address: String,
    /// Memory of the machine, bytes.
    pub memory_total: i64,
    /// Memory the control domain takes, bytes.
    pub dom0_memory: i64,
    /// Where its local SR keeps VDIs.
    pub local_sr_location: String,
    /// Where the shared SR is mounted on it, if the pool has one.
    pub shared_sr_location: Option<String>,
    /// The software version it reports.
    pub product_version: String,
    /// The time of creation.
    pub now: DateTime,
}

/// The objects of a new host record, created in one transaction with the caller's pool.
#[derive(Debug)]
pub struct NewHost {
    /// The host.
    pub host: Ref,
    /// Its local SR.
    pub local_sr: Ref,
}

/// Creates this host's own objects (host, metrics, control domain, local SR + PBD, PIF on
/// the management network, PBD for the shared SR) inside `txn`.
pub fn create_host_objects(
    txn: &mut Txn<'_>,
    state: &dyn Fresh,
    facts: &HostFacts,
    host: &Ref,
    management_network: &Ref,
    shared_sr: Option<&Ref>,
) -> Result<NewHost, CoreError> {
    let metrics = state.new_ref();
    txn.create(
        metrics.clone(),
        HostMetricsRecord {
            uuid: state.new_uuid(),
            memory_total: facts.memory_total,
            memory_free: facts.memory_total - facts.dom0_memory,
            live: true,
            last_updated: facts.now.clone(),
            ..Default::default()
        },
    )?;
    let mut software_version = BTreeMap::new();
    software_version.insert("product_brand".to_string(), "xenpool".to_string());
    software_version.insert("product_version".to_string(), facts.product_version.clone());
    software_version.insert("xapi".to_string(), "2.21".to_string());
    software_version.insert("platform_name".to_string(), "XCP".to_string());
    software_version.insert("platform_version".to_string(), "3.4.0".to_string());
    txn.create(
        host.clone(),
        HostRecord {
            uuid: facts.uuid.clone(),
            name_label: facts.label.clone(),
            name_description: "A xenpool host".into(),
            memory_overhead: 0,
            API_version_major: 2,
            API_version_minor: 21,
            API_version_vendor: "XenSource".into(),
            enabled: true,
            software_version,
            capabilities: vec!["xen-3.0-x86_64".into(), "hvm-3.0-x86_64".into()],
            sched_policy: "credit".into(),
            supported_bootloaders: vec!["pygrub".into(), "eliloader".into()],
            hostname: facts.label.clone(),
            address: facts.address.clone(),
            metrics: metrics.clone(),
            edition: "xenpool".into(),
            ..Default::default()
        },
    )?;
    // The control domain is resident and takes its memory, so placement sees it.
    let dom0_metrics = state.new_ref();
    txn.create(
        dom0_metrics.clone(),
        VmMetricsRecord {
            uuid: state.new_uuid(),
            memory_actual: facts.dom0_memory,
            VCPUs_number: 2,
            start_time: facts.now.clone(),
            ..Default::default()
        },
    )?;
    let dom0 = state.new_ref();
    let dom0_mem = facts.dom0_memory;
    txn.create(
        dom0.clone(),
        VmRecord {
            uuid: state.new_uuid(),
            name_label: format!("Control domain on host: {}", facts.label),
            power_state: VmPowerState::Running,
            is_control_domain: true,
            resident_on: host.clone(),
            memory_static_min: dom0_mem,
            memory_static_max: dom0_mem,
            memory_dynamic_min: dom0_mem,
            memory_dynamic_max: dom0_mem,
            memory_target: dom0_mem,
            VCPUs_max: 2,
            VCPUs_at_startup: 2,
            domid: 0,
            metrics: dom0_metrics,
            actions_after_shutdown: OnNormalExit::Destroy,
            actions_after_reboot: OnNormalExit::Restart,
            actions_after_crash: OnCrashBehaviour::Restart,
            ..Default::default()
        },
    )?;
    txn.update::<HostRecord>(host, |h| h.control_domain = dom0.clone())?;
    let local_sr = state.new_ref();
    txn.create(
        local_sr.clone(),
        SrRecord {
            uuid: state.new_uuid(),
            name_label: "Local storage".into(),
            name_description: format!("Local directory SR on {}", facts.label),
            physical_size: 1 << 40,
            r#type: "dir".into(),
            content_type: "user".into(),
            shared: false,
            ..Default::default()
        },
    )?;
    let mut device_config = BTreeMap::new();
    device_config.insert("location".to_string(), facts.local_sr_location.clone());
    txn.create(
        state.new_ref(),
        PbdRecord {
            uuid: state.new_uuid(),
            host: host.clone(),
            SR: local_sr.clone(),
            device_config,
            currently_attached: true,
            ..Default::default()
        },
    )?;
    if let (Some(sr), Some(dir)) = (shared_sr, facts.shared_sr_location.as_ref()) {
        let mut device_config = BTreeMap::new();
        device_config.insert("location".to_string(), dir.clone());
        txn.create(
            state.new_ref(),
            PbdRecord {
                uuid: state.new_uuid(),
                host: host.clone(),
                SR: sr.clone(),
                device_config,
                currently_attached: true,
                ..Default::default()
            },
        )?;
    }
    txn.create(
        state.new_ref(),
        PifRecord {
            uuid: state.new_uuid(),
            device: "eth0".into(),
            network: management_network.clone(),
            host: host.clone(),
            MAC: crate::devices::mac_from(state.random()),
            MTU: 1500,
            VLAN: -1,
            physical: true,
            currently_attached: true,
            ip_configuration_mode: IpConfigurationMode::Static,
            IP: facts.address.clone(),
            netmask: "255.0.0.0".into(),
            management: true,
            managed: true,
            ..Default::default()
        },
    )?;
    Ok(NewHost {
        host: host.clone(),
        local_sr,
    })
}

/// Creates a pool of one in an empty database: its network, the shared SR when the host
/// has one, the host's objects, the pool record, the roles, and `root` with
/// `root_password_hash`; with `demo_disk` (the location of its disk on the default SR), a
/// template and a halted demonstration VM.
pub fn create_pool(
    txn: &mut Txn<'_>,
    state: &dyn Fresh,
    facts: &HostFacts,
    host: &Ref,
    root_password_hash: &str,
    demo_disk: Option<&str>,
) -> Result<(), CoreError> {
    let network = state.new_ref();
    txn.create(
        network.clone(),
        NetworkRecord {
            uuid: state.new_uuid(),
            name_label: "Pool-wide network associated with eth0".into(),
            MTU: 1500,
            bridge: "xenbr0".into(),
            managed: true,
            ..Default::default()
        },
    )?;
    let shared_sr = match &facts.shared_sr_location {
        Some(_) => {
            let sr = state.new_ref();
            txn.create(
                sr.clone(),
                SrRecord {
                    uuid: state.new_uuid(),
                    name_label: "Shared storage".into(),
                    name_description: "Shared directory SR".into(),
                    physical_size: 1 << 40,
                    r#type: "shared_dir".into(),
                    content_type: "user".into(),
                    shared: true,
                    ..Default::default()
                },
            )?;
            Some(sr)
        }
        None => None,
    };
    let new = create_host_objects(txn, state, facts, host, &network, shared_sr.as_ref())?;
    let default_sr = shared_sr.clone().unwrap_or(new.local_sr.clone());
    txn.create(
        state.new_ref(),
        PoolRecord {
            uuid: state.new_uuid(),
            name_label: String::new(),
            master: host.clone(),
            default_SR: default_sr.clone(),
            suspend_image_SR: default_sr.clone(),
            crash_dump_SR: default_sr.clone(),
            ..Default::default()
        },
    )?;
    for role in Role::ALL {
        txn.create(
            state.new_ref(),
            RoleRecord {
                uuid: state.new_uuid(),
                name_label: role.name().into(),
                name_description: role.description().into(),
                ..Default::default()
            },
        )?;
    }
    txn.create(
        state.new_ref(),
        LocalUserRecord {
            uuid: state.new_uuid(),
            short_name: "root".into(),
            password_hash: root_password_hash.to_string(),
            roles: vec![Role::PoolAdmin.name().into()],
        },
    )?;
    if let Some(disk) = demo_disk {
        demo_objects(txn, state, &default_sr, &network, disk)?;
    }
    Ok(())
}

/// A template and one halted VM with a disk and a network interface.
fn demo_objects(
    txn: &mut Txn<'_>,
    state: &dyn Fresh,
    sr: &Ref,
    network: &Ref,
    disk_location: &str,
) -> Result<(), CoreError> {
    let template = state.new_ref();
    let mut other_config = BTreeMap::new();
    other_config.insert("default_template".to_string(), "true".to_string());
    txn.create(
        template.clone(),
        VmRecord {
            uuid: state.new_uuid(),
            name_label: "Generic Linux (xenpool)".into(),
            name_description: "A template for a small Linux guest".into(),
            is_a_template: true,
            is_default_template: true,
            memory_static_min: 256 * MIB,
            memory_static_max: 1024 * MIB,
            memory_dynamic_min: 1024 * MIB,
            memory_dynamic_max: 1024 * MIB,
            VCPUs_max: 1,
            VCPUs_at_startup: 1,
            HVM_boot_policy: "BIOS order".into(),
            other_config,
            ..Default::default()
        },
    )?;
    let vm = state.new_ref();
    let metrics = state.new_ref();
    txn.create(
        metrics.clone(),
        VmMetricsRecord {
            uuid: state.new_uuid(),
            ..Default::default()
        },
    )?;
    txn.create(
        vm.clone(),
        VmRecord {
            uuid: state.new_uuid(),
            name_label: "demo-vm".into(),
            name_description: "A small VM to start".into(),
            memory_static_min: 256 * MIB,
            memory_static_max: 512 * MIB,
            memory_dynamic_min: 512 * MIB,
            memory_dynamic_max: 512 * MIB,
            VCPUs_max: 1,
            VCPUs_at_startup: 1,
            HVM_boot_policy: "BIOS order".into(),
            metrics,
            domid: -1,
            ..Default::default()
        },
    )?;
    let vdi = state.new_ref();
    let vdi_uuid = state.new_uuid();
    txn.create(
        vdi.clone(),
        VdiRecord {
            uuid: vdi_uuid.clone(),
            name_label: "demo-vm disk".into(),
            SR: sr.clone(),
            virtual_size: 8 << 30,
            r#type: VdiType::User,
            location: disk_location.to_string(),
            managed: true,
            ..Default::default()
        },
    )?;
    txn.create(
        state.new_ref(),
        VbdRecord {
            uuid: state.new_uuid(),
            VM: vm.clone(),
            VDI: vdi,
            userdevice: "0".into(),
            bootable: true,
            mode: VbdMode::Rw,
            r#type: VbdType::Disk,
            unpluggable: true,
            ..Default::default()
        },
    )?;
    txn.create(
        state.new_ref(),
        VifRecord {
            uuid: state.new_uuid(),
            device: "0".into(),
            network: network.clone(),
            VM: vm,
            MAC: crate::devices::mac_from(state.random()),
            MTU: 1500,
            MAC_autogenerated: true,
            ..Default::default()
        },
    )?;
    Ok(())
}
