//! The XenAPI classes the pool keeps: field names, types and enum values as in the
//! XenAPI datamodel, so a client reading `get_record` finds what it expects.

use std::collections::BTreeMap;

use crate::value::{DateTime, Ref};
use crate::{xenapi_class, xenapi_enum};

type StrMap = BTreeMap<String, String>;

xenapi_enum! {
    /// `vm_power_state`
    VmPowerState "vm_power_state" {
        Halted = "Halted", Paused = "Paused", Running = "Running", Suspended = "Suspended",
    }
}

xenapi_enum! {
    /// `vm_operations`
    VmOperation "vm_operations" {
        Snapshot = "snapshot", Clone = "clone", Copy = "copy", CreateTemplate = "create_template",
        Revert = "revert", Checkpoint = "checkpoint", SnapshotWithQuiesce = "snapshot_with_quiesce",
        Provision = "provision", Start = "start", StartOn = "start_on", Pause = "pause",
        Unpause = "unpause", CleanShutdown = "clean_shutdown", CleanReboot = "clean_reboot",
        HardShutdown = "hard_shutdown", PowerStateReset = "power_state_reset",
        HardReboot = "hard_reboot", Suspend = "suspend", Csvm = "csvm", Resume = "resume",
        ResumeOn = "resume_on", PoolMigrate = "pool_migrate", MigrateSend = "migrate_send",
        GetBootRecord = "get_boot_record", SendSysrq = "send_sysrq", SendTrigger = "send_trigger",
        QueryServices = "query_services", Shutdown = "shutdown", CallPlugin = "call_plugin",
        ChangingMemoryLive = "changing_memory_live", AwaitingMemoryLive = "awaiting_memory_live",
        ChangingDynamicRange = "changing_dynamic_range", ChangingStaticRange = "changing_static_range",
        ChangingMemoryLimits = "changing_memory_limits", ChangingShadowMemory = "changing_shadow_memory",
        ChangingShadowMemoryLive = "changing_shadow_memory_live", ChangingVcpus = "changing_VCPUs",
        ChangingVcpusLive = "changing_VCPUs_live", ChangingNvram = "changing_NVRAM",
        AssertOperationValid = "assert_operation_valid", DataSourceOp = "data_source_op",
        UpdateAllowedOperations = "update_allowed_operations", MakeIntoTemplate = "make_into_template",
        Import = "import", Export = "export", MetadataExport = "metadata_export",
        Reverting = "reverting", Destroy = "destroy", CreateVtpm = "create_vtpm",
    }
}

xenapi_enum! {
    /// `host_allowed_operations`
    HostOperation "host_allowed_operations" {
        Provision = "provision", Evacuate = "evacuate", Shutdown = "shutdown", Reboot = "reboot",
        PowerOn = "power_on", VmStart = "vm_start", VmResume = "vm_resume", VmMigrate = "vm_migrate",
        ApplyUpdates = "apply_updates", Enable = "enable", Disable = "disable",
    }
}

xenapi_enum! {
    /// `pool_allowed_operations`
    PoolOperation "pool_allowed_operations" {
        HaEnable = "ha_enable", HaDisable = "ha_disable", ClusterCreate = "cluster_create",
        DesignateNewMaster = "designate_new_master", ConfigureRepositories = "configure_repositories",
        SyncUpdates = "sync_updates", GetUpdates = "get_updates", ApplyUpdates = "apply_updates",
        TlsVerificationEnable = "tls_verification_enable", CertRefresh = "cert_refresh",
        ExchangeCaCertificatesOnJoin = "exchange_ca_certificates_on_join",
        CopyPrimaryHostCerts = "copy_primary_host_certs",
    }
}

xenapi_enum! {
    /// `storage_operations`
    SrOperation "storage_operations" {
        Scan = "scan", Destroy = "destroy", Forget = "forget", Plug = "plug", Unplug = "unplug",
        Update = "update", VdiCreate = "vdi_create", VdiIntroduce = "vdi_introduce",
        VdiDestroy = "vdi_destroy", VdiResize = "vdi_resize", VdiClone = "vdi_clone",
        VdiSnapshot = "vdi_snapshot", VdiMirror = "vdi_mirror", VdiEnableCbt = "vdi_enable_cbt",
        VdiDisableCbt = "vdi_disable_cbt", VdiDataDestroy = "vdi_data_destroy",
        VdiListChangedBlocks = "vdi_list_changed_blocks", VdiSetOnBoot = "vdi_set_on_boot",
        VdiBlocks = "vdi_blocks", PbdCreate = "pbd_create", PbdDestroy = "pbd_destroy",
    }
}

xenapi_enum! {
    /// `vdi_operations`
    VdiOperation "vdi_operations" {
        Clone = "clone", Copy = "copy", Resize = "resize", ResizeOnline = "resize_online",
        Snapshot = "snapshot", Mirror = "mirror", Destroy = "destroy", Forget = "forget",
        Update = "update", ForceUnlock = "force_unlock", GenerateConfig = "generate_config",
        EnableCbt = "enable_cbt", DisableCbt = "disable_cbt", DataDestroy = "data_destroy",
        ListChangedBlocks = "list_changed_blocks", SetOnBoot = "set_on_boot", Blocked = "blocked",
    }
}

xenapi_enum! {
    /// `vdi_type`
    VdiType "vdi_type" {
        System = "system", User = "user", Ephemeral = "ephemeral", Suspend = "suspend",
        Crashdump = "crashdump", HaStatefile = "ha_statefile", Metadata = "metadata",
        RedoLog = "redo_log", Rrd = "rrd", PvsCache = "pvs_cache", CbtMetadata = "cbt_metadata",
    }
}

xenapi_enum! {
    /// `on_boot`
    OnBoot "on_boot" { Reset = "reset", Persist = "persist" }
}

xenapi_enum! {
    /// `vbd_operations`
    VbdOperation "vbd_operations" {
        Attach = "attach", Eject = "eject", Insert = "insert", Plug = "plug", Unplug = "unplug",
        UnplugForce = "unplug_force", Pause = "pause", Unpause = "unpause",
    }
}

xenapi_enum! {
    /// `vbd_type`
    VbdType "vbd_type" { Disk = "Disk", Cd = "CD", Floppy = "Floppy" }
}

xenapi_enum! {
    /// `vbd_mode`
    VbdMode "vbd_mode" { Rw = "RW", Ro = "RO" }
}

xenapi_enum! {
    /// `network_operations`
    NetworkOperation "network_operations" { Attaching = "attaching" }
}

xenapi_enum! {
    /// `network_default_locking_mode`
    NetworkLockingMode "network_default_locking_mode" { Unlocked = "unlocked", Disabled = "disabled" }
}

xenapi_enum! {
    /// `vif_operations`
    VifOperation "vif_operations" { Attach = "attach", Plug = "plug", Unplug = "unplug" }
}

xenapi_enum! {
    /// `vif_locking_mode`
    VifLockingMode "vif_locking_mode" {
        NetworkDefault = "network_default", Locked = "locked", Unlocked = "unlocked", Disabled = "disabled",
    }
}

xenapi_enum! {
    /// `ip_configuration_mode`
    IpConfigurationMode "ip_configuration_mode" { None = "None", Dhcp = "DHCP", Static = "Static" }
}

xenapi_enum! {
    /// `ipv6_configuration_mode`
    Ipv6ConfigurationMode "ipv6_configuration_mode" {
        None = "None", Dhcp = "DHCP", Static = "Static", Autoconf = "Autoconf",
    }
}

xenapi_enum! {
    /// `primary_address_type`
    PrimaryAddressType "primary_address_type" { Ipv4 = "IPv4", Ipv6 = "IPv6" }
}

xenapi_enum! {
    /// `pif_igmp_status`
    PifIgmpStatus "pif_igmp_status" { Unknown = "unknown", Enabled = "enabled", Disabled = "disabled" }
}

xenapi_enum! {
    /// `vif_ipv4_configuration_mode`
    VifIpv4ConfigurationMode "vif_ipv4_configuration_mode" { None = "None", Static = "Static" }
}

xenapi_enum! {
    /// `vif_ipv6_configuration_mode`
    VifIpv6ConfigurationMode "vif_ipv6_configuration_mode" { None = "None", Static = "Static" }
}

xenapi_enum! {
    /// `task_status_type`
    TaskStatus "task_status_type" {
        Pending = "pending", Success = "success", Failure = "failure",
        Cancelling = "cancelling", Cancelled = "cancelled",
    }
}

xenapi_enum! {
    /// `task_allowed_operations`
    TaskOperation "task_allowed_operations" { Cancel = "cancel", Destroy = "destroy" }
}

xenapi_enum! {
    /// `on_normal_exit`
    OnNormalExit "on_normal_exit" { Destroy = "destroy", Restart = "restart" }
}

xenapi_enum! {
    /// `on_crash_behaviour`
    OnCrashBehaviour "on_crash_behaviour" {
        Restart = "restart", Destroy = "destroy", CoredumpAndDestroy = "coredump_and_destroy",
        CoredumpAndRestart = "coredump_and_restart", Preserve = "preserve",
        RenameRestart = "rename_restart",
    }
}

xenapi_enum! {
    /// `domain_type`
    DomainType "domain_type" {
        Hvm = "hvm", Pv = "pv", PvInPvh = "pv_in_pvh", Pvh = "pvh", Unspecified = "unspecified",
    }
}

xenapi_enum! {
    /// `host_display`
    HostDisplay "host_display" {
        Enabled = "enabled", DisableOnReboot = "disable_on_reboot", Disabled = "disabled",
        EnableOnReboot = "enable_on_reboot",
    }
}

xenapi_enum! {
    /// `cls`: the kind of object a message is about
    MessageClass "cls" {
        Vm = "VM", Host = "Host", Sr = "SR", Pool = "Pool", Vmpp = "VMPP", Vmss = "VMSS",
        PvsProxy = "PVS_proxy", Vdi = "VDI", Certificate = "Certificate",
    }
}

xenapi_class! {
    /// `pool`: the pool-wide record (exactly one).
    PoolRecord, Pool {
        ro uuid: String,
        rw name_label: String,
        rw name_description: String,
        ro master: Ref,
        rw default_SR: Ref,
        rw suspend_image_SR: Ref,
        rw crash_dump_SR: Ref,
        rw other_config: StrMap,
        ro ha_enabled: bool,
        ro ha_configuration: StrMap,
        ro ha_statefiles: Vec<String>,
        ro ha_host_failures_to_tolerate: i64,
        ro ha_plan_exists_for: i64,
        rw ha_allow_overcommit: bool,
        ro ha_overcommitted: bool,
        ro blobs: BTreeMap<String, Ref>,
        rw tags: Vec<String>,
        rw gui_config: StrMap,
        rw health_check_config: StrMap,
        ro wlb_url: String,
        ro wlb_username: String,
        rw wlb_enabled: bool,
        rw wlb_verify_cert: bool,
        ro redo_log_enabled: bool,
        ro redo_log_vdi: Ref,
        ro vswitch_controller: String,
        ro restrictions: StrMap,
        ro metadata_VDIs: Vec<Ref>,
        ro ha_cluster_stack: String,
        ro allowed_operations: Vec<PoolOperation>,
        ro current_operations: BTreeMap<String, PoolOperation>,
        ro guest_agent_config: StrMap,
        ro cpu_info: StrMap,
        rw policy_no_vendor_device: bool,
        rw live_patching_disabled: bool,
        ro igmp_snooping_enabled: bool,
        ro uefi_certificates: String,
        ro is_psr_pending: bool,
        ro tls_verification_enabled: bool,
        ro repositories: Vec<Ref>,
        ro client_certificate_auth_enabled: bool,
        ro client_certificate_auth_name: String,
        ro repository_proxy_url: String,
        ro repository_proxy_username: String,
        rw migration_compression: bool,
        rw coordinator_bias: bool,
    }
}

xenapi_class! {
    /// `host`: a physical host.
    HostRecord, Host {
        ro uuid: String,
        rw name_label: String,
        rw name_description: String,
        ro memory_overhead: i64,
        ro allowed_operations: Vec<HostOperation>,
        ro current_operations: BTreeMap<String, HostOperation>,
        ro API_version_major: i64,
        ro API_version_minor: i64,
        ro API_version_vendor: String,
        ro API_version_vendor_implementation: StrMap,
        ro enabled: bool,
        ro software_version: StrMap,
        rw other_config: StrMap,
        ro capabilities: Vec<String>,
        ro cpu_configuration: StrMap,
        ro sched_policy: String,
        ro supported_bootloaders: Vec<String>,
        ro resident_VMs: Vec<Ref>,
        rw logging: StrMap,
        ro PIFs: Vec<Ref>,
        rw suspend_image_sr: Ref,
        rw crash_dump_sr: Ref,
        ro crashdumps: Vec<Ref>,
        ro patches: Vec<Ref>,
        ro updates: Vec<Ref>,
        ro PBDs: Vec<Ref>,
        ro host_CPUs: Vec<Ref>,
        ro cpu_info: StrMap,
        rw hostname: String,
        rw address: String,
        ro metrics: Ref,
        ro license_params: StrMap,
        ro ha_statefiles: Vec<String>,
        ro ha_network_peers: Vec<String>,
        ro blobs: BTreeMap<String, Ref>,
        rw tags: Vec<String>,
        ro external_auth_type: String,
        ro external_auth_service_name: String,
        ro external_auth_configuration: StrMap,
        ro edition: String,
        ro license_server: StrMap,
        ro bios_strings: StrMap,
        ro power_on_mode: String,
        ro power_on_config: StrMap,
        ro local_cache_sr: Ref,
        ro chipset_info: StrMap,
        ro PCIs: Vec<Ref>,
        ro PGPUs: Vec<Ref>,
        ro PUSBs: Vec<Ref>,
        rw ssl_legacy: bool,
        rw guest_VCPUs_params: StrMap,
        rw display: HostDisplay,
        ro virtual_hardware_platform_versions: Vec<i64>,
        ro control_domain: Ref,
        ro updates_requiring_reboot: Vec<Ref>,
        ro features: Vec<Ref>,
        ro iscsi_iqn: String,
        ro multipathing: bool,
        ro uefi_certificates: String,
        ro certificates: Vec<Ref>,
        ro editions: Vec<String>,
        ro pending_guidances: Vec<String>,
        ro tls_verification_enabled: bool,
        ro last_software_update: DateTime,
        ro https_only: bool,
        ro latest_synced_updates_applied: String,
    }
}

xenapi_class! {
    /// `host_metrics`: live figures of a host.
    HostMetricsRecord, HostMetrics {
        ro uuid: String,
        ro memory_total: i64,
        ro memory_free: i64,
        ro live: bool,
        ro last_updated: DateTime,
        rw other_config: StrMap,
    }
}

xenapi_class! {
    /// `VM`: a virtual machine (or template).
    VmRecord, VM {
        ro uuid: String,
        ro allowed_operations: Vec<VmOperation>,
        ro current_operations: BTreeMap<String, VmOperation>,
        rw name_label: String,
        rw name_description: String,
        ro power_state: VmPowerState,
        rw user_version: i64,
        rw is_a_template: bool,
        ro is_default_template: bool,
        ro suspend_VDI: Ref,
        ro resident_on: Ref,
        ro scheduled_to_be_resident_on: Ref,
        rw affinity: Ref,
        ro memory_overhead: i64,
        ro memory_target: i64,
        rw memory_static_max: i64,
        rw memory_dynamic_max: i64,
        rw memory_dynamic_min: i64,
        rw memory_static_min: i64,
        rw VCPUs_params: StrMap,
        rw VCPUs_max: i64,
        rw VCPUs_at_startup: i64,
        rw actions_after_softreboot: OnNormalExit,
        rw actions_after_shutdown: OnNormalExit,
        rw actions_after_reboot: OnNormalExit,
        rw actions_after_crash: OnCrashBehaviour,
        ro consoles: Vec<Ref>,
        ro VIFs: Vec<Ref>,
        ro VBDs: Vec<Ref>,
        ro VUSBs: Vec<Ref>,
        ro crash_dumps: Vec<Ref>,
        ro VTPMs: Vec<Ref>,
        rw PV_bootloader: String,
        rw PV_kernel: String,
        rw PV_ramdisk: String,
        rw PV_args: String,
        rw PV_bootloader_args: String,
        rw PV_legacy_args: String,
        rw HVM_boot_policy: String,
        rw HVM_boot_params: StrMap,
        rw HVM_shadow_multiplier: f64,
        rw platform: StrMap,
        rw PCI_bus: String,
        rw other_config: StrMap,
        ro domid: i64,
        ro domarch: String,
        ro last_boot_CPU_flags: StrMap,
        ro is_control_domain: bool,
        ro metrics: Ref,
        ro guest_metrics: Ref,
        ro last_booted_record: String,
        rw recommendations: String,
        rw xenstore_data: StrMap,
        rw ha_always_run: bool,
        rw ha_restart_priority: String,
        ro is_a_snapshot: bool,
        ro snapshot_of: Ref,
        ro snapshots: Vec<Ref>,
        ro snapshot_time: DateTime,
        ro transportable_snapshot_id: String,
        ro blobs: BTreeMap<String, Ref>,
        rw tags: Vec<String>,
        rw blocked_operations: BTreeMap<VmOperation, String>,
        ro snapshot_info: StrMap,
        ro snapshot_metadata: String,
        ro parent: Ref,
        ro children: Vec<Ref>,
        ro bios_strings: StrMap,
        ro protection_policy: Ref,
        ro is_snapshot_from_vmpp: bool,
        ro snapshot_schedule: Ref,
        ro is_vmss_snapshot: bool,
        ro appliance: Ref,
        rw start_delay: i64,
        rw shutdown_delay: i64,
        rw order: i64,
        ro VGPUs: Vec<Ref>,
        ro attached_PCIs: Vec<Ref>,
        rw suspend_SR: Ref,
        ro version: i64,
        ro generation_id: String,
        ro hardware_platform_version: i64,
        ro has_vendor_device: bool,
        ro requires_reboot: bool,
        ro reference_label: String,
        ro domain_type: DomainType,
        ro NVRAM: StrMap,
        ro pending_guidances: Vec<String>,
    }
}

xenapi_class! {
    /// `VM_metrics`: figures of a VM.
    VmMetricsRecord, VMMetrics {
        ro uuid: String,
        ro memory_actual: i64,
        ro VCPUs_number: i64,
        ro VCPUs_utilisation: BTreeMap<i64, f64>,
        ro VCPUs_CPU: BTreeMap<i64, i64>,
        ro VCPUs_params: StrMap,
        ro VCPUs_flags: BTreeMap<i64, Vec<String>>,
        ro state: Vec<String>,
        ro start_time: DateTime,
        ro install_time: DateTime,
        ro last_updated: DateTime,
        rw other_config: StrMap,
        ro hvm: bool,
        ro nested_virt: bool,
        ro nomigrate: bool,
        ro current_domain_type: DomainType,
    }
}

xenapi_class! {
    /// `SR`: a storage repository.
    SrRecord, SR {
        ro uuid: String,
        rw name_label: String,
        rw name_description: String,
        ro allowed_operations: Vec<SrOperation>,
        ro current_operations: BTreeMap<String, SrOperation>,
        ro VDIs: Vec<Ref>,
        ro PBDs: Vec<Ref>,
        ro virtual_allocation: i64,
        ro physical_utilisation: i64,
        ro physical_size: i64,
        ro r#type as "type": String,
        ro content_type: String,
        ro shared: bool,
        rw other_config: StrMap,
        rw tags: Vec<String>,
        ro sm_config: StrMap,
        ro blobs: BTreeMap<String, Ref>,
        ro local_cache_enabled: bool,
        ro introduced_by: Ref,
        ro clustered: bool,
        ro is_tools_sr: bool,
    }
}

xenapi_class! {
    /// `PBD`: the plug of an SR into a host.
    PbdRecord, PBD {
        ro uuid: String,
        ro host: Ref,
        ro SR: Ref,
        ro device_config: StrMap,
        ro currently_attached: bool,
        rw other_config: StrMap,
    }
}

xenapi_class! {
    /// `VDI`: a virtual disk image.
    VdiRecord, VDI {
        ro uuid: String,
        rw name_label: String,
        rw name_description: String,
        ro allowed_operations: Vec<VdiOperation>,
        ro current_operations: BTreeMap<String, VdiOperation>,
        ro SR: Ref,
        ro VBDs: Vec<Ref>,
        ro crash_dumps: Vec<Ref>,
        ro virtual_size: i64,
        ro physical_utilisation: i64,
        ro r#type as "type": VdiType,
        ro sharable: bool,
        ro read_only: bool,
        rw other_config: StrMap,
        ro storage_lock: bool,
        ro location: String,
        ro managed: bool,
        ro missing: bool,
        ro parent: Ref,
        ro xenstore_data: StrMap,
        ro sm_config: StrMap,
        ro is_a_snapshot: bool,
        ro snapshot_of: Ref,
        ro snapshots: Vec<Ref>,
        ro snapshot_time: DateTime,
        rw tags: Vec<String>,
        ro allow_caching: bool,
        ro on_boot: OnBoot,
        ro metadata_of_pool: Ref,
        ro metadata_latest: bool,
        ro is_tools_iso: bool,
        ro cbt_enabled: bool,
    }
}

xenapi_class! {
    /// `VBD`: a virtual block device, a VDI attached to a VM.
    VbdRecord, VBD {
        ro uuid: String,
        ro allowed_operations: Vec<VbdOperation>,
        ro current_operations: BTreeMap<String, VbdOperation>,
        ro VM: Ref,
        ro VDI: Ref,
        ro device: String,
        rw userdevice: String,
        rw bootable: bool,
        rw mode: VbdMode,
        rw r#type as "type": VbdType,
        rw unpluggable: bool,
        ro storage_lock: bool,
        ro empty: bool,
        rw other_config: StrMap,
        ro currently_attached: bool,
        ro status_code: i64,
        ro status_detail: String,
        ro runtime_properties: StrMap,
        rw qos_algorithm_type: String,
        rw qos_algorithm_params: StrMap,
        ro qos_supported_algorithms: Vec<String>,
        ro metrics: Ref,
    }
}

xenapi_class! {
    /// `network`: a pool-wide virtual network.
    NetworkRecord, Network {
        ro uuid: String,
        rw name_label: String,
        rw name_description: String,
        ro allowed_operations: Vec<NetworkOperation>,
        ro current_operations: BTreeMap<String, NetworkOperation>,
        ro VIFs: Vec<Ref>,
        ro PIFs: Vec<Ref>,
        rw MTU: i64,
        rw other_config: StrMap,
        ro bridge: String,
        ro managed: bool,
        ro blobs: BTreeMap<String, Ref>,
        rw tags: Vec<String>,
        ro default_locking_mode: NetworkLockingMode,
        ro assigned_ips: BTreeMap<Ref, String>,
        ro purpose: Vec<String>,
    }
}

xenapi_class! {
    /// `PIF`: a physical interface of a host on a network.
    PifRecord, PIF {
        ro uuid: String,
        ro device: String,
        ro network: Ref,
        ro host: Ref,
        ro MAC: String,
        ro MTU: i64,
        ro VLAN: i64,
        ro metrics: Ref,
        ro physical: bool,
        ro currently_attached: bool,
        ro ip_configuration_mode: IpConfigurationMode,
        ro IP: String,
        ro netmask: String,
        ro gateway: String,
        ro DNS: String,
        ro bond_slave_of: Ref,
        ro bond_master_of: Vec<Ref>,
        ro VLAN_master_of: Ref,
        ro VLAN_slave_of: Vec<Ref>,
        ro management: bool,
        rw other_config: StrMap,
        rw disallow_unplug: bool,
        ro tunnel_access_PIF_of: Vec<Ref>,
        ro tunnel_transport_PIF_of: Vec<Ref>,
        ro ipv6_configuration_mode: Ipv6ConfigurationMode,
        ro IPv6: Vec<String>,
        ro ipv6_gateway: String,
        ro primary_address_type: PrimaryAddressType,
        ro managed: bool,
        ro properties: StrMap,
        ro capabilities: Vec<String>,
        ro igmp_snooping_status: PifIgmpStatus,
        ro sriov_physical_PIF_of: Vec<Ref>,
        ro sriov_logical_PIF_of: Vec<Ref>,
        ro PCI: Ref,
    }
}

xenapi_enum! {
    /// `bond_mode`
    BondMode "bond_mode" { BalanceSlb = "balance-slb", ActiveBackup = "active-backup", Lacp = "lacp" }
}

xenapi_class! {
    /// `VLAN`: a VLAN on a host: the PIF whose traffic it tags and the PIF that carries it
    /// untagged on its network.
    VlanRecord, VLAN {
        ro uuid: String,
        ro tagged_PIF: Ref,
        ro untagged_PIF: Ref,
        ro tag: i64,
        rw other_config: StrMap,
    }
}

xenapi_class! {
    /// `Bond`: PIFs of one host bonded into one master PIF.
    BondRecord, Bond {
        ro uuid: String,
        ro master: Ref,
        ro slaves: Vec<Ref>,
        rw other_config: StrMap,
        ro primary_slave: Ref,
        ro mode: BondMode,
        ro properties: StrMap,
        ro links_up: i64,
        ro auto_update_mac: bool,
    }
}

xenapi_class! {
    /// `VIF`: a virtual network interface of a VM.
    VifRecord, VIF {
        ro uuid: String,
        ro allowed_operations: Vec<VifOperation>,
        ro current_operations: BTreeMap<String, VifOperation>,
        ro device: String,
        ro network: Ref,
        ro VM: Ref,
        ro MAC: String,
        ro MTU: i64,
        rw other_config: StrMap,
        ro currently_attached: bool,
        ro status_code: i64,
        ro status_detail: String,
        ro runtime_properties: StrMap,
        rw qos_algorithm_type: String,
        rw qos_algorithm_params: StrMap,
        ro qos_supported_algorithms: Vec<String>,
        ro metrics: Ref,
        ro MAC_autogenerated: bool,
        ro locking_mode: VifLockingMode,
        ro ipv4_allowed: Vec<String>,
        ro ipv6_allowed: Vec<String>,
        ro ipv4_configuration_mode: VifIpv4ConfigurationMode,
        ro ipv4_addresses: Vec<String>,
        ro ipv4_gateway: String,
        ro ipv6_configuration_mode: VifIpv6ConfigurationMode,
        ro ipv6_addresses: Vec<String>,
        ro ipv6_gateway: String,
        ro reserved_pci: Ref,
    }
}

xenapi_class! {
    /// `task`: a long-running asynchronous operation.
    TaskRecord, Task {
        ro uuid: String,
        ro name_label: String,
        ro name_description: String,
        ro allowed_operations: Vec<TaskOperation>,
        ro current_operations: BTreeMap<String, TaskOperation>,
        ro created: DateTime,
        ro finished: DateTime,
        ro status: TaskStatus,
        ro resident_on: Ref,
        ro progress: f64,
        ro r#type as "type": String,
        ro result: String,
        ro error_info: Vec<String>,
        rw other_config: StrMap,
        ro subtask_of: Ref,
        ro subtasks: Vec<Ref>,
        ro backtrace: String,
    }
}

xenapi_enum! {
    /// `console_protocol`
    ConsoleProtocol "console_protocol" { Vt100 = "vt100", Rfb = "rfb", Rdp = "rdp" }
}

xenapi_class! {
    /// `console`: how to reach the console of a running VM.
    ConsoleRecord, Console {
        ro uuid: String,
        ro protocol: ConsoleProtocol,
        ro location: String,
        ro VM: Ref,
        rw other_config: StrMap,
    }
}

xenapi_class! {
    /// `message`: an alert raised by the pool.
    MessageRecord, Message {
        ro uuid: String,
        ro name: String,
        ro priority: i64,
        ro cls: MessageClass,
        ro obj_uuid: String,
        ro timestamp: DateTime,
        ro body: String,
    }
}

xenapi_class! {
    /// `session`: a logged-in client.
    SessionRecord, Session {
        ro uuid: String,
        ro this_host: Ref,
        ro this_user: Ref,
        ro last_active: DateTime,
        ro pool: bool,
        rw other_config: StrMap,
        ro is_local_superuser: bool,
        ro subject: Ref,
        ro validation_time: DateTime,
        ro auth_user_sid: String,
        ro auth_user_name: String,
        ro rbac_permissions: Vec<String>,
        ro tasks: Vec<Ref>,
        ro parent: Ref,
        ro originator: String,
        ro client_certificate: bool,
    }
}

xenapi_class! {
    /// `role`: a named set of permissions.
    RoleRecord, Role {
        ro uuid: String,
        ro name_label: String,
        ro name_description: String,
        ro subroles: Vec<Ref>,
        ro is_internal: bool,
    }
}

xenapi_class! {
    /// A local user account: kept in the pool database so every host can check a login,
    /// never served to clients (its password hash must not leave the toolstack).
    LocalUserRecord, LocalUser {
        ro uuid: String,
        ro short_name: String,
        ro password_hash: String,
        ro roles: Vec<String>,
    }
}

/// `VM.ha_restart_priority`: the one type for it, shared by the datamodel's rules and the
/// failover planner, so both accept exactly the same spellings.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum RestartPriority {
    /// `"restart"`: protected, must have a place in the plan.
    Restart,
    /// `"best-effort"`: restarted where room is left, never required.
    BestEffort,
    /// `""`: not restarted by HA.
    None,
}

impl RestartPriority {
    /// The XenAPI spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            RestartPriority::Restart => "restart",
            RestartPriority::BestEffort => "best-effort",
            RestartPriority::None => "",
        }
    }

    /// Whether HA must find this VM a place when its host fails.
    pub fn is_protected(self) -> bool {
        self == RestartPriority::Restart
    }
}

impl std::str::FromStr for RestartPriority {
    type Err = crate::CoreError;
    /// `INVALID_VALUE ["ha_restart_priority", p]` for anything else, as xapi answers.
    fn from_str(s: &str) -> Result<Self, crate::CoreError> {
        match s {
            "restart" => Ok(RestartPriority::Restart),
            "best-effort" => Ok(RestartPriority::BestEffort),
            "" => Ok(RestartPriority::None),
            other => Err(crate::CoreError::InvalidValue {
                field: "ha_restart_priority".into(),
                value: other.to_string(),
            }),
        }
    }
}

impl std::fmt::Display for RestartPriority {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl VmRecord {
    /// The VM's restart priority; an unknown spelling in the database (written by an older
    /// or foreign toolstack) is an error, never silently "protected".
    pub fn restart_priority(&self) -> Result<RestartPriority, crate::CoreError> {
        self.ha_restart_priority.parse()
    }
}

#[cfg(test)]
mod restart_priority_tests {
    use super::*;

    #[test]
    fn spellings_round_trip_and_others_are_invalid_values() {
        for p in [
            RestartPriority::Restart,
            RestartPriority::BestEffort,
            RestartPriority::None,
        ] {
            assert_eq!(p.as_str().parse::<RestartPriority>(), Ok(p));
        }
        let e = "always".parse::<RestartPriority>().unwrap_err();
        assert_eq!(
            e.to_description(),
            ["INVALID_VALUE", "ha_restart_priority", "always"]
        );
        assert!("Restart".parse::<RestartPriority>().is_err());
        assert!(RestartPriority::Restart.is_protected());
        assert!(!RestartPriority::BestEffort.is_protected());
    }
}
