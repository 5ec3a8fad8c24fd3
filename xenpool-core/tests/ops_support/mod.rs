//! A small pool builder shared by the allowed-operations and placement tests: hosts with
//! metrics, SRs and PBDs, networks and PIFs, VMs with disks and interfaces, all created
//! through ordinary database transactions so relations are kept as in production.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use xenpool_core::value::uuid_from_random;
use xenpool_core::*;

/// One GiB, so memory figures in tests read as sizes.
pub const GIB: i64 = 1 << 30;

/// A database plus counters for fresh references and UUIDs.
#[derive(Debug, Default)]
pub struct Pool {
    pub db: Database,
    next: u128,
}

impl Pool {
    pub fn new() -> Pool {
        Pool::default()
    }

    /// A readable, ordered reference (`OpaqueRef:host-0003`) and a fresh UUID.
    fn fresh(&mut self, kind: &str) -> (Ref, String) {
        self.next += 1;
        (
            Ref::from_string(format!("OpaqueRef:{kind}-{:04}", self.next)),
            uuid_from_random(self.next),
        )
    }

    fn create<R: Record>(&mut self, r: &Ref, rec: R) {
        self.db.write(|t| t.create(r.clone(), rec)).unwrap();
    }

    /// A host with metrics; `f` may adjust the host record before it is created.
    pub fn host_with(
        &mut self,
        memory_total: i64,
        live: bool,
        enabled: bool,
        f: impl FnOnce(&mut HostRecord),
    ) -> Ref {
        let (m, muuid) = self.fresh("metrics");
        self.create(
            &m,
            HostMetricsRecord {
                uuid: muuid,
                memory_total,
                live,
                ..Default::default()
            },
        );
        let (h, uuid) = self.fresh("host");
        let mut rec = HostRecord {
            uuid,
            name_label: h.as_str().trim_start_matches("OpaqueRef:").to_string(),
            enabled,
            metrics: m,
            ..Default::default()
        };
        f(&mut rec);
        self.create(&h, rec);
        h
    }

    /// A live, enabled host with `memory_total` bytes.
    pub fn host(&mut self, memory_total: i64) -> Ref {
        self.host_with(memory_total, true, true, |_| {})
    }

    pub fn sr_with(&mut self, ty: &str, shared: bool, f: impl FnOnce(&mut SrRecord)) -> Ref {
        let (r, uuid) = self.fresh("sr");
        let mut rec = SrRecord {
            uuid,
            r#type: ty.to_string(),
            shared,
            ..Default::default()
        };
        f(&mut rec);
        self.create(&r, rec);
        r
    }

    pub fn sr(&mut self, ty: &str, shared: bool) -> Ref {
        self.sr_with(ty, shared, |_| {})
    }

    pub fn pbd(&mut self, host: &Ref, sr: &Ref, attached: bool) -> Ref {
        let (r, uuid) = self.fresh("pbd");
        self.create(
            &r,
            PbdRecord {
                uuid,
                host: host.clone(),
                SR: sr.clone(),
                currently_attached: attached,
                ..Default::default()
            },
        );
        r
    }

    pub fn network_with(&mut self, f: impl FnOnce(&mut NetworkRecord)) -> Ref {
        let (r, uuid) = self.fresh("net");
        let mut rec = NetworkRecord {
            uuid,
            ..Default::default()
        };
        f(&mut rec);
        self.create(&r, rec);
        r
    }

    pub fn network(&mut self) -> Ref {
        self.network_with(|_| {})
    }

    pub fn pif(&mut self, host: &Ref, network: &Ref) -> Ref {
        let (r, uuid) = self.fresh("pif");
        self.create(
            &r,
            PifRecord {
                uuid,
                host: host.clone(),
                network: network.clone(),
                currently_attached: true,
                ..Default::default()
            },
        );
        r
    }

    /// A VM; `f` sets power state, memory, flags, residence...
    pub fn vm(&mut self, f: impl FnOnce(&mut VmRecord)) -> Ref {
        let (r, uuid) = self.fresh("vm");
        let mut rec = VmRecord {
            uuid,
            name_label: r.as_str().trim_start_matches("OpaqueRef:").to_string(),
            ..Default::default()
        };
        f(&mut rec);
        self.create(&r, rec);
        r
    }

    /// A halted VM of `static_max` bytes and no overhead.
    pub fn halted_vm(&mut self, static_max: i64) -> Ref {
        self.vm(|v| v.memory_static_max = static_max)
    }

    /// A disk of the VM on the SR: a VDI and a VBD to it.
    pub fn disk(&mut self, vm: &Ref, sr: &Ref) -> (Ref, Ref) {
        let (vdi, vdi_uuid) = self.fresh("vdi");
        self.create(
            &vdi,
            VdiRecord {
                uuid: vdi_uuid,
                SR: sr.clone(),
                ..Default::default()
            },
        );
        let (vbd, vbd_uuid) = self.fresh("vbd");
        self.create(
            &vbd,
            VbdRecord {
                uuid: vbd_uuid,
                VM: vm.clone(),
                VDI: vdi.clone(),
                ..Default::default()
            },
        );
        (vdi, vbd)
    }

    /// An empty CD drive of the VM.
    pub fn empty_cd(&mut self, vm: &Ref) -> Ref {
        let (vbd, uuid) = self.fresh("vbd");
        self.create(
            &vbd,
            VbdRecord {
                uuid,
                VM: vm.clone(),
                empty: true,
                r#type: VbdType::Cd,
                ..Default::default()
            },
        );
        vbd
    }

    pub fn vif(&mut self, vm: &Ref, network: &Ref) -> Ref {
        let (r, uuid) = self.fresh("vif");
        self.create(
            &r,
            VifRecord {
                uuid,
                VM: vm.clone(),
                network: network.clone(),
                ..Default::default()
            },
        );
        r
    }

    pub fn update_vm(&mut self, vm: &Ref, f: impl FnOnce(&mut VmRecord)) {
        self.db.write(|t| t.update::<VmRecord>(vm, f)).unwrap();
    }

    pub fn update_host(&mut self, host: &Ref, f: impl FnOnce(&mut HostRecord)) {
        self.db.write(|t| t.update::<HostRecord>(host, f)).unwrap();
    }

    pub fn vm_rec(&self, vm: &Ref) -> &VmRecord {
        self.db.get::<VmRecord>(vm).unwrap()
    }

    pub fn host_rec(&self, host: &Ref) -> &HostRecord {
        self.db.get::<HostRecord>(host).unwrap()
    }
}

/// The error as XenAPI's `ErrorDescription`, for comparing code and parameters at once.
pub fn desc<T: std::fmt::Debug>(r: Result<T, CoreError>) -> Vec<String> {
    match r {
        Ok(v) => panic!("expected an error, got {v:?}"),
        Err(e) => e.to_description(),
    }
}

/// `["CODE", params...]` from string slices.
pub fn err(code: &str, params: &[&str]) -> Vec<String> {
    std::iter::once(code)
        .chain(params.iter().copied())
        .map(str::to_string)
        .collect()
}

/// The operation functions over every operation xapi has a rule for, served or not: the
/// rule tests pin xapi's rules, including those of operations xenpool does not serve yet.
#[allow(dead_code)]
pub mod with_rules {
    use xenpool_core::ops::{HostOpsInputs, WITH_RULES};
    use xenpool_core::{CoreError, Database, HostOperation, Ref, Txn, VmOperation};

    pub fn check_vm_operation(db: &Database, vm: &Ref, op: VmOperation) -> Result<(), CoreError> {
        WITH_RULES.check_vm_operation(db, vm, op)
    }

    pub fn vm_allowed_operations(db: &Database, vm: &Ref) -> Result<Vec<VmOperation>, CoreError> {
        WITH_RULES.vm_allowed_operations(db, vm)
    }

    pub fn check_host_operation(
        db: &Database,
        host: &Ref,
        op: HostOperation,
        inputs: &HostOpsInputs,
    ) -> Result<(), CoreError> {
        WITH_RULES.check_host_operation(db, host, op, inputs)
    }

    pub fn host_allowed_operations(
        db: &Database,
        host: &Ref,
        inputs: &HostOpsInputs,
    ) -> Result<Vec<HostOperation>, CoreError> {
        WITH_RULES.host_allowed_operations(db, host, inputs)
    }

    pub fn refresh_vm_allowed_operations(txn: &mut Txn<'_>, vm: &Ref) -> Result<bool, CoreError> {
        WITH_RULES.refresh_vm_allowed_operations(txn, vm)
    }

    pub fn refresh_host_allowed_operations(
        txn: &mut Txn<'_>,
        host: &Ref,
        inputs: &HostOpsInputs,
    ) -> Result<bool, CoreError> {
        WITH_RULES.refresh_host_allowed_operations(txn, host, inputs)
    }

    pub fn refresh_hosts_allowed_operations(
        txn: &mut Txn<'_>,
        inputs: &HostOpsInputs,
    ) -> Result<usize, CoreError> {
        WITH_RULES.refresh_hosts_allowed_operations(txn, inputs)
    }

    pub fn refresh_allowed_operations(
        txn: &mut Txn<'_>,
        inputs: &HostOpsInputs,
    ) -> Result<usize, CoreError> {
        WITH_RULES.refresh_allowed_operations(txn, inputs)
    }
}
