//! First start of a host: a pool of one with its host, metrics, control domain, local SR,
//! management network, roles, the `root` user, and (optionally) demonstration objects.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use xenpool_core::{
    HostMetricsRecord, HostRecord, IpConfigurationMode, LocalUserRecord, NetworkRecord,
    OnCrashBehaviour, OnNormalExit, PbdRecord, PifRecord, PoolRecord, Ref, RoleRecord, SrRecord,
    VbdMode, VbdRecord, VbdType, VdiRecord, VdiType, VifRecord, VmMetricsRecord, VmPowerState,
    VmRecord,
};

use crate::config::Config;
use crate::passwords::hash_password;
use crate::state::{now, State};
use xenpool_core::rbac::Role;

const MIB: i64 = 1024 * 1024;

/// Where the root password is written on first start.
pub fn root_password_path(data_dir: &Path) -> PathBuf {
    data_dir.join("root-password")
}

/// A random password of 24 characters from an unambiguous alphabet.
pub fn random_password(state: &State) -> String {
    const ALPHABET: &[u8] = b"abcdefghijkmnpqrstuvwxyzABCDEFGHJKLMNPQRSTUVWXYZ23456789";
    let mut bits = state.random();
    let mut more = state.random();
    (0..24)
        .map(|i| {
            if i == 12 {
                bits = more;
                more = 0;
            }
            let c = ALPHABET[(bits % ALPHABET.len() as u128) as usize];
            bits /= ALPHABET.len() as u128;
            c as char
        })
        .collect()
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
    txn: &mut xenpool_core::Txn<'_>,
    state: &State,
    config: &Config,
    host_uuid: &str,
    host: &Ref,
    management_network: &Ref,
    shared_sr: Option<&Ref>,
) -> Result<NewHost, xenpool_core::CoreError> {
    let metrics = state.new_ref();
    txn.create(
        metrics.clone(),
        HostMetricsRecord {
            uuid: state.new_uuid(),
            memory_total: config.memory_total_mib as i64 * MIB,
            memory_free: (config.memory_total_mib - config.dom0_memory_mib) as i64 * MIB,
            live: true,
            last_updated: now(),
            ..Default::default()
        },
    )?;
    let mut software_version = BTreeMap::new();
    software_version.insert("product_brand".to_string(), "xenpool".to_string());
    software_version.insert(
        "product_version".to_string(),
        env!("CARGO_PKG_VERSION").to_string(),
    );
    software_version.insert("xapi".to_string(), "2.21".to_string());
    software_version.insert("platform_name".to_string(), "XCP".to_string());
    software_version.insert("platform_version".to_string(), "3.4.0".to_string());
    txn.create(
        host.clone(),
        HostRecord {
            uuid: host_uuid.to_string(),
            name_label: config.host_label(),
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
            hostname: config.host_label(),
            address: config.address.to_string(),
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
            memory_actual: config.dom0_memory_mib as i64 * MIB,
            VCPUs_number: 2,
            start_time: now(),
            ..Default::default()
        },
    )?;
    let dom0 = state.new_ref();
    let dom0_mem = config.dom0_memory_mib as i64 * MIB;
    txn.create(
        dom0.clone(),
        VmRecord {
            uuid: state.new_uuid(),
            name_label: format!("Control domain on host: {}", config.host_label()),
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
            name_description: format!("Local directory SR on {}", config.host_label()),
            physical_size: 1 << 40,
            r#type: "dir".into(),
            content_type: "user".into(),
            shared: false,
            ..Default::default()
        },
    )?;
    let mut device_config = BTreeMap::new();
    device_config.insert(
        "location".to_string(),
        config
            .data_dir
            .join("sr-local")
            .to_string_lossy()
            .into_owned(),
    );
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
    if let (Some(sr), Some(dir)) = (shared_sr, config.shared_sr_dir.as_ref()) {
        let mut device_config = BTreeMap::new();
        device_config.insert("location".to_string(), dir.to_string_lossy().into_owned());
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
            MAC: xenpool_core::devices::mac_from(state.random()),
            MTU: 1500,
            VLAN: -1,
            physical: true,
            currently_attached: true,
            ip_configuration_mode: IpConfigurationMode::Static,
            IP: config.address.to_string(),
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

/// Builds a new pool of one in an empty database. Returns the root password.
pub fn bootstrap(state: &State, config: &Config, host_uuid: &str) -> anyhow::Result<String> {
    let password = random_password(state);
    let hash = hash_password(&password, state.random()).map_err(|e| anyhow::anyhow!(e))?;
    let host = state.host.clone();
    // The demonstration VM's disk is a real file on the SR it is recorded on.
    let demo_disk = if config.demo_objects {
        let disk: Result<String, xenpool_storage::StorageError> = match &config.shared_sr_dir {
            Some(dir) => xenpool_storage::SharedDirSr::open(dir)
                .and_then(|sr| xenpool_storage::SrDriver::create(&sr, "demo-vm disk", 8 << 30)),
            None => xenpool_storage::LocalDirSr::open(config.data_dir.join("sr-local"))
                .and_then(|sr| xenpool_storage::SrDriver::create(&sr, "demo-vm disk", 8 << 30)),
        }
        .map(|i| i.location);
        disk.map_err(|e| anyhow::anyhow!("cannot create the demonstration disk: {e}"))?
    } else {
        String::new()
    };
    state
        .write(|txn| {
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
            let shared_sr = match &config.shared_sr_dir {
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
            let new = create_host_objects(
                txn,
                state,
                config,
                host_uuid,
                &host,
                &network,
                shared_sr.as_ref(),
            )?;
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
                    password_hash: hash,
                    roles: vec![Role::PoolAdmin.name().into()],
                },
            )?;
            if config.demo_objects {
                demo_objects(txn, state, &default_sr, &network, &demo_disk)?;
            }
            Ok(())
        })
        .map_err(|e| anyhow::anyhow!("cannot create the pool: {e}"))?;
    Ok(password)
}

/// A template and one halted VM with a disk and a network interface.
fn demo_objects(
    txn: &mut xenpool_core::Txn<'_>,
    state: &State,
    sr: &Ref,
    network: &Ref,
    disk_location: &str,
) -> Result<(), xenpool_core::CoreError> {
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
            MAC: xenpool_core::devices::mac_from(state.random()),
            MTU: 1500,
            MAC_autogenerated: true,
            ..Default::default()
        },
    )?;
    Ok(())
}
