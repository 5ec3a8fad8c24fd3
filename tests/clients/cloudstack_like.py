#!/usr/bin/env python3
"""Drives a two-host xenpool with the unmodified `xenapi` package the way the XenServer
resource of Apache CloudStack's agent drives a pool.

Usage: cloudstack_like.py URL PASSWORD [--strict] [--skip STEP]...

URL may name any host of the pool: as the agent does, the script follows HOST_IS_SLAVE to
the coordinator. The pool must have two hosts, a shared SR with a PBD on each, and on each
host the test plugin `vmops` (tests/clients/host_plugin.py, installed by
scripts/client-tests.sh).

Steps, in the agent's order (the calls of each are listed in its docstring):
  connect        login (3 parameters), session.get_this_host, host.get_enabled, logout and
                 the long-lived login
  host-info      what the agent reads about its host at start-up (records, metrics, control
                 domain, management PIF, pool)
  storage        the shared SR, its PBDs (plugged where they are not) and its free space
  create-volume  VDI.create on the shared SR
  vlan-network   network.create and VLAN.create on each host's management PIF
  pif-plug       PIF.plug of each host's VLAN PIF
  create-vm      VM.create from the template's record, VBD.create, VIF.create on the VLAN
  start          Async.VM.start_on and its task
  snapshot       Async.VM.snapshot and its task
  migrate        Async.VM.pool_migrate to the other host and its task, VM.set_affinity
  plugin         host.call_plugin (and its Async form) on each host
  data-sources   host.get_data_sources, host.query_data_source, VM.get_data_sources,
                 VM.query_data_source
  cleanup        the snapshot's disks and VM, Async.VM.clean_shutdown, VM.destroy, VDI.destroy

--strict adds checks of what the real agent needs beyond these calls (host_CPUs listed).
--skip STEP leaves a step out (for working on the daemon); the run then ends with status 3,
never 0.

Prints one PASS line per check and exits 1 at the first failure, naming the step and, for
a call the daemon does not serve, the method.
"""

import hashlib
import json
import random
import re
import ssl
import sys
import time
import urllib.parse
import urllib.request
import xml.etree.ElementTree as ET

import XenAPI
from sequence import StepFailed, check, passed, run_steps

TAG = "cloudstack"
NULL = "OpaqueRef:NULL"
# The Java SDK logs in with the newest API version it knows, as a third parameter.
API_VERSION = "2.21"
GIB = 1 << 30
MIB = 1 << 20
VLAN_TAG = 1234
VOLUME_SIZE = 2 * GIB
VM_NAME = "i-2-42-VM"
SNAPSHOT_NAME = "i-2-42-VM_VS_20260101000000"
NIC_MAC = "02:00:4c:5d:00:2a"
PLUGIN = "vmops"
TASK_DEADLINE_S = 60.0


def expect_failure(code, what, fn, *args):
    """Runs a call that must fail with XenAPI error `code`; returns the error's details."""
    try:
        fn(*args)
    except XenAPI.Failure as e:
        if e.details and e.details[0] == "MESSAGE_METHOD_UNKNOWN":
            raise
        check(e.details and e.details[0] == code, f"{what}: refused with {e.details}")
        return e.details
    raise StepFailed(f"{what}: the call succeeded, {code} expected")


def as_int(v):
    return int(v)


def task_value(result):
    """The reference inside a task result `<value>ref</value>`, as the agent strips it."""
    m = re.fullmatch(r"\s*<value>(.*)</value>\s*", result, re.S)
    if not m:
        raise StepFailed(f"task result {result!r} is not an XML-RPC value")
    return m.group(1)


class Agent:
    def __init__(self, url, password, strict):
        self.url = url
        self.password = password
        self.strict = strict
        self.https = url.startswith("https:")
        self.session = None
        self.x = None
        # Filled in by the steps.
        self.master = None
        self.hosts = {}  # ref -> record
        self.mgmt_pif = {}  # host ref -> PIF ref
        self.sr = None
        self.vdi = None
        self.vlan_net = None
        self.vlan_pifs = {}  # host ref -> PIF ref
        self.template = None
        self.vm = None
        self.vbd = None
        self.vif = None
        self.vif_net = None
        self.snapshot = None
        self.source = None
        self.dest = None

    def new_session(self, url):
        if self.https:
            return XenAPI.Session(url, ignore_ssl=True)
        return XenAPI.Session(url)

    def login(self, url):
        """Logs in at `url`, following HOST_IS_SLAVE to the coordinator as the agent's
        connection pool does; returns (session, url used, coordinator named or None)."""
        s = self.new_session(url)
        try:
            s.login_with_password("root", self.password, API_VERSION)
            return s, url, None
        except XenAPI.Failure as e:
            if not e.details or e.details[0] != "HOST_IS_SLAVE":
                raise
            master = e.details[1]
        parts = urllib.parse.urlsplit(url)
        master_url = urllib.parse.urlunsplit(parts._replace(netloc=f"{master}:{parts.port}"))
        s = self.new_session(master_url)
        s.login_with_password("root", self.password, API_VERSION)
        return s, master_url, master

    def wait_task(self, task, what):
        """Polls the task's status until it leaves pending, as the agent's waitForTask does,
        then requires success (checkForSuccess)."""
        x = self.x
        deadline = time.monotonic() + TASK_DEADLINE_S
        while x.task.get_status(task) == "pending":
            if time.monotonic() > deadline:
                x.task.cancel(task)
                raise StepFailed(f"{what}: task still pending after {TASK_DEADLINE_S}s")
            time.sleep(0.05)
        status = x.task.get_status(task)
        if status != "success":
            raise StepFailed(f"{what}: task ended {status}: {x.task.get_error_info(task)}")
        passed(f"{what}: task {x.task.get_name_label(task)!r} succeeded")

    # -------------------------------------------------------------------------------
    def step_connect(self):
        """session.login_with_password(uname, pwd, version) (HOST_IS_SLAVE: again at the
        coordinator), session.get_this_host, host.get_enabled, session.logout, then the
        login the agent keeps."""
        s, url, named = self.login(self.url)
        member = urllib.parse.urlsplit(self.url).hostname
        if named is not None:
            passed(f"{member} answered HOST_IS_SLAVE {named}; logged in at the coordinator")
        x = s.xenapi
        this = x.session.get_this_host(s.handle)
        check(this.startswith("OpaqueRef:") and this != NULL, "session.get_this_host")
        check(x.host.get_enabled(this) is True, "host.get_enabled of the coordinator is true")
        address = x.host.get_address(this)
        check(address == urllib.parse.urlsplit(url).hostname,
              f"session.get_this_host is the host logged in to ({address})")
        x.session.logout()
        passed("session.logout of the probing session")
        self.session, self.url, _ = self.login(url)
        self.x = self.session.xenapi
        self.master = this
        check(self.x.session.get_this_host(self.session.handle) == this,
              "the long-lived session is on the coordinator")

    def step_host_info(self):
        """host.get_all_records; then per host, as its agent starts: host.get_by_uuid,
        host.get_record, pool.get_all_records, host.get_host_CPUs (--strict),
        host.get_metrics, host_metrics.get_memory_total, host.get_resident_VMs,
        VM.get_is_control_domain, VM.get_memory_static_max, host.get_PIFs, PIF.get_record,
        PIF.get_by_uuid, network.get_record, pool.get_by_uuid, pool.get_record."""
        x = self.x
        hosts = x.host.get_all_records()
        check(len(hosts) == 2, f"host.get_all_records lists the pool's 2 hosts ({len(hosts)})")
        addresses = {rec["address"] for rec in hosts.values()}
        check(len(addresses) == 2, f"the hosts have distinct addresses {sorted(addresses)}")
        check(all(rec["enabled"] for rec in hosts.values()), "both hosts are enabled")
        self.hosts = hosts
        pools = x.pool.get_all_records()
        check(len(pools) == 1, "pool.get_all_records lists one pool")
        (pool_ref, pool), = pools.items()
        check(pool["master"] == self.master, "pool.master is the host the session is on")
        for host, rec in hosts.items():
            label = rec["address"]
            check(x.host.get_by_uuid(rec["uuid"]) == host, f"[{label}] host.get_by_uuid")
            hr = x.host.get_record(host)
            brand = hr["software_version"].get("product_brand") or \
                hr["software_version"].get("platform_name")
            check(bool(brand), f"[{label}] software_version names the product ({brand})")
            if self.strict:
                cpus = x.host.get_host_CPUs(host)
                check(len(cpus) > 0, f"[{label}] host.get_host_CPUs lists the CPUs ({len(cpus)})")
            metrics = x.host.get_metrics(host)
            total = as_int(x.host_metrics.get_memory_total(metrics))
            check(total > 0, f"[{label}] host_metrics.memory_total {total}")
            dom0 = [vm for vm in x.host.get_resident_VMs(host)
                    if x.VM.get_is_control_domain(vm)]
            check(len(dom0) == 1, f"[{label}] one control domain among host.resident_VMs")
            check(as_int(x.VM.get_memory_static_max(dom0[0])) > 0,
                  f"[{label}] the control domain's memory_static_max")
            mgmt = []
            for pif in x.host.get_PIFs(host):
                prec = x.PIF.get_record(pif)
                if prec["management"]:
                    mgmt.append((pif, prec))
            check(len(mgmt) == 1, f"[{label}] one management PIF among host.get_PIFs")
            pif, prec = mgmt[0]
            check(prec["VLAN"] == "-1" and prec["bond_slave_of"] == NULL,
                  f"[{label}] the management PIF {prec['device']} is no VLAN and no bond slave")
            check(x.PIF.get_by_uuid(prec["uuid"]) == pif, f"[{label}] PIF.get_by_uuid")
            net = x.network.get_record(prec["network"])
            check(pif in net["PIFs"],
                  f"[{label}] the management network {net['name_label']!r} lists the PIF")
            self.mgmt_pif[host] = pif
            check(x.pool.get_by_uuid(pool["uuid"]) == pool_ref, f"[{label}] pool.get_by_uuid")
            check(x.pool.get_record(pool_ref)["master"] == self.master,
                  f"[{label}] pool.get_record names the coordinator")

    def step_storage(self):
        """SR.get_all_records, pool.get_default_SR, SR.get_by_name_label, SR.get_record,
        SR.get_PBDs, PBD.get_record, PBD.plug (of a PBD not attached),
        SR.get_physical_size, SR.get_physical_utilisation."""
        x = self.x
        srs = x.SR.get_all_records()
        shared = {r: rec for r, rec in srs.items()
                  if rec["shared"] and rec["content_type"] != "iso"}
        check(len(shared) >= 1, f"SR.get_all_records lists a shared SR ({len(shared)})")
        pool = x.pool.get_all()[0]
        default = x.pool.get_default_SR(pool)
        sr = default if default in shared else sorted(shared)[0]
        name = shared[sr]["name_label"]
        check(x.SR.get_by_name_label(name) == [sr],
              f"SR.get_by_name_label({name!r}) finds exactly the shared SR")
        srr = x.SR.get_record(sr)
        pbds = x.SR.get_PBDs(sr)
        check(sorted(pbds) == sorted(srr["PBDs"]) and len(pbds) > 0,
              f"SR.get_PBDs lists its {len(pbds)} PBDs")
        for host, hrec in self.hosts.items():
            mine = [p for p in pbds if x.PBD.get_record(p)["host"] == host]
            check(len(mine) == 1, f"[{hrec['address']}] the shared SR has a PBD on the host")
            if not x.PBD.get_record(mine[0])["currently_attached"]:
                x.PBD.plug(mine[0])
            check(x.PBD.get_record(mine[0])["currently_attached"] is True,
                  f"[{hrec['address']}] the PBD is attached")
        free = as_int(x.SR.get_physical_size(sr)) - as_int(x.SR.get_physical_utilisation(sr))
        check(free >= VOLUME_SIZE, f"the shared SR has room for the volume ({free} bytes free)")
        self.sr = sr

    def step_create_volume(self):
        """VDI.create with the record the agent sends, VDI.get_record, SR.get_VDIs."""
        x = self.x
        name = "ROOT-42"
        self.vdi = x.VDI.create({
            "name_label": name, "name_description": "", "SR": self.sr,
            "virtual_size": str(VOLUME_SIZE), "type": "user", "sharable": False,
            "read_only": False, "other_config": {}, "xenstore_data": {}, "sm_config": {},
            "tags": [],
        })
        rec = x.VDI.get_record(self.vdi)
        check(rec["name_label"] == name and rec["SR"] == self.sr and rec["type"] == "user",
              "VDI.create: the VDI is on the shared SR with its name and type")
        check(as_int(rec["virtual_size"]) == VOLUME_SIZE,
              f"VDI.create: virtual_size is {VOLUME_SIZE} ({rec['virtual_size']})")
        check(self.vdi in x.SR.get_VDIs(self.sr), "SR.get_VDIs lists the new VDI")

    def step_vlan_network(self):
        """Per host, as each host's agent enables a VLAN: network.get_by_name_label,
        network.create (name VLAN-<network uuid>-<tag>, a creation-time tag),
        network.get_record, PIF.get_record, host.get_uuid, VLAN.create(tagged_PIF, tag,
        network), VLAN.get_record; then network.get_PIFs."""
        x = self.x
        first = sorted(self.hosts)[0]
        base_net = x.PIF.get_network(self.mgmt_pif[first])
        name = f"VLAN-{x.network.get_uuid(base_net)}-{VLAN_TAG}"
        for host, hrec in sorted(self.hosts.items()):
            label = hrec["address"]
            nets = x.network.get_by_name_label(name)
            if not nets:
                stamp = f"CsCreateTime-{int(time.time() * 1000)}-{random.randrange(1 << 31)}"
                created = x.network.create({
                    "name_label": name, "name_description": "", "MTU": "1500",
                    "other_config": {}, "tags": [stamp],
                })
                nets = x.network.get_by_name_label(name)
                check(nets == [created], f"[{label}] network.create: {name} found by name")
            check(len(nets) == 1, f"[{label}] one network named {name}")
            net = nets[0]
            own = [p for p in x.network.get_record(net)["PIFs"]
                   if x.host.get_uuid(x.PIF.get_record(p)["host"]) == hrec["uuid"]]
            if own:
                self.vlan_pifs[host] = own[0]
                passed(f"[{label}] the VLAN network already has this host's PIF")
                continue
            tagged = self.mgmt_pif[host]
            vlan = x.VLAN.create(tagged, str(VLAN_TAG), net)
            vrec = x.VLAN.get_record(vlan)
            check(vrec["tagged_PIF"] == tagged and as_int(vrec["tag"]) == VLAN_TAG,
                  f"[{label}] VLAN.create: tagged_PIF and tag {vrec['tag']}")
            untagged = vrec["untagged_PIF"]
            prec = x.PIF.get_record(untagged)
            check(prec["host"] == host and prec["network"] == net,
                  f"[{label}] the VLAN's untagged PIF is on the host and the VLAN network")
            check(as_int(prec["VLAN"]) == VLAN_TAG and prec["VLAN_master_of"] == vlan,
                  f"[{label}] the PIF has VLAN {prec['VLAN']} and is master of the VLAN")
            check(prec["device"] == x.PIF.get_device(tagged),
                  f"[{label}] the VLAN PIF is on device {prec['device']}")
            check(vlan in x.PIF.get_VLAN_slave_of(tagged),
                  f"[{label}] the tagged PIF lists the VLAN in VLAN_slave_of")
            self.vlan_pifs[host] = untagged
        self.vlan_net = x.network.get_by_name_label(name)[0]
        pifs = x.network.get_PIFs(self.vlan_net)
        by_host = {x.PIF.get_host(p): as_int(x.PIF.get_VLAN(p)) for p in pifs}
        check(by_host == {h: VLAN_TAG for h in self.hosts},
              f"every host has one PIF with tag {VLAN_TAG} on the VLAN network")

    def step_pif_plug(self):
        """PIF.plug of each host's VLAN PIF, PIF.get_currently_attached."""
        x = self.x
        for host, pif in sorted(self.vlan_pifs.items()):
            x.PIF.plug(pif)
            check(x.PIF.get_currently_attached(pif) is True,
                  f"[{self.hosts[host]['address']}] PIF.plug: the VLAN PIF is attached")

    def step_create_vm(self):
        """VM.get_by_name_label (the template), VM.get_record, VM.create with the template's
        record changed, VM.set_VCPUs_params, VM.set_PV_bootloader,
        VM.set_PV_bootloader_args, VM.get_platform, VM.set_platform,
        VM.get_allowed_VBD_devices, VBD.create, VIF.create."""
        x = self.x
        templates = [r for r, rec in x.VM.get_all_records().items()
                     if rec["is_a_template"] and not rec["is_a_snapshot"]]
        check(len(templates) >= 1, f"the pool has {len(templates)} template(s)")
        name = x.VM.get_name_label(sorted(templates)[0])
        found = x.VM.get_by_name_label(name)
        check(len(found) == 1, f"VM.get_by_name_label({name!r}) finds the template")
        self.template = found[0]
        # The agent sends the template's whole record back, with its own changes.
        vmr = x.VM.get_record(self.template)
        template_uuid = vmr["uuid"]
        vmr["affinity"] = self.master
        for k in ("disks", "default_template", "mac_seed"):
            vmr["other_config"].pop(k, None)
        vmr["other_config"]["vm_uuid"] = "7f3c2a52-36b8-4b0c-9b55-1d1f0e5e2a42"
        vmr["is_a_template"] = False
        vmr["name_label"] = VM_NAME
        vmr["actions_after_crash"] = "destroy"
        vmr["actions_after_shutdown"] = "destroy"
        memory = str(256 * MIB)
        for k in ("memory_static_min", "memory_static_max", "memory_dynamic_min",
                  "memory_dynamic_max"):
            vmr[k] = memory
        vmr["VCPUs_max"] = "1"
        vmr["VCPUs_at_startup"] = "1"
        vmr["consoles"] = []
        vmr["xenstore_data"] = {}
        self.vm = x.VM.create(vmr)
        rec = x.VM.get_record(self.vm)
        check(rec["uuid"] != template_uuid and not rec["is_a_template"],
              "VM.create from the template's record: a new VM, not a template")
        check(rec["name_label"] == VM_NAME and rec["power_state"] == "Halted",
              f"the VM is {VM_NAME}, Halted")
        check(rec["affinity"] == self.master and rec["actions_after_shutdown"] == "destroy",
              "affinity and actions_after_shutdown as sent")
        check(as_int(rec["memory_static_max"]) == 256 * MIB and rec["VCPUs_max"] == "1",
              "memory_static_max and VCPUs_max as sent")
        check(rec["other_config"].get("vm_uuid") == vmr["other_config"]["vm_uuid"]
              and "default_template" not in rec["other_config"],
              "other_config as sent")
        x.VM.set_VCPUs_params(self.vm, {"weight": "128", "cap": "0"})
        check(x.VM.get_VCPUs_params(self.vm) == {"weight": "128", "cap": "0"},
              "VM.set_VCPUs_params")
        x.VM.set_PV_bootloader(self.vm, "pygrub")
        x.VM.set_PV_bootloader_args(self.vm, "")
        check(x.VM.get_record(self.vm)["PV_bootloader"] == "pygrub", "VM.set_PV_bootloader")
        platform = x.VM.get_platform(self.vm)
        platform.pop("device_id", None)
        platform["timeoffset"] = "0"
        x.VM.set_platform(self.vm, platform)
        check(x.VM.get_platform(self.vm) == platform, "VM.set_platform")

        allowed = x.VM.get_allowed_VBD_devices(self.vm)
        check("0" in allowed, f"VM.get_allowed_VBD_devices offers 0 ({allowed})")
        self.vbd = x.VBD.create({
            "VM": self.vm, "VDI": self.vdi, "userdevice": "0", "bootable": True,
            "mode": "RW", "type": "Disk", "unpluggable": False, "empty": False,
            "other_config": {}, "qos_algorithm_type": "", "qos_algorithm_params": {},
        })
        allowed = x.VM.get_allowed_VBD_devices(self.vm)
        check("0" not in allowed and "1" in allowed,
              f"VM.get_allowed_VBD_devices no longer offers the slot taken ({allowed})")
        vbd = x.VBD.get_record(self.vbd)
        check(vbd["VM"] == self.vm and vbd["VDI"] == self.vdi and vbd["userdevice"] == "0",
              "VBD.create: the volume is device 0 of the VM")
        check(vbd["mode"] == "RW" and vbd["type"] == "Disk" and vbd["bootable"] is True
              and vbd["unpluggable"] is False, "VBD mode, type, bootable, unpluggable as sent")
        check(self.vbd in x.VM.get_VBDs(self.vm) and self.vbd in x.VDI.get_VBDs(self.vdi),
              "VM.get_VBDs and VDI.get_VBDs list the VBD")

        network = self.vlan_net
        if network is None:
            # Only when vlan-network is skipped, and a run with a skipped step never passes.
            network = x.PIF.get_network(self.mgmt_pif[self.master])
            print(f"NOTE [{TAG}] vlan-network skipped: the VIF goes on the management network",
                  flush=True)
        other = {
            "nicira-iface-id": "0c9a1f56-9f6e-4bb4-93a4-7d8d6a1b2c3d",
            "nicira-vm-id": rec["uuid"],
            "cloudstack-nic-id": "0c9a1f56-9f6e-4bb4-93a4-7d8d6a1b2c3d",
            "cloudstack-vm-id": vmr["other_config"]["vm_uuid"],
            "cloudstack-network-id": "4b1e0c6e-2f1a-4e7e-8a1b-5c2d3e4f5a6b",
        }
        self.vif = x.VIF.create({
            "VM": self.vm, "device": "0", "MAC": NIC_MAC, "MTU": "1500",
            "network": network, "other_config": other,
            "qos_algorithm_type": "ratelimit", "qos_algorithm_params": {"kbps": "25600"},
            "locking_mode": "network_default",
        })
        vif = x.VIF.get_record(self.vif)
        check(vif["VM"] == self.vm and vif["network"] == network and vif["device"] == "0",
              "VIF.create: device 0 of the VM, on the VLAN network")
        check(vif["MAC"] == NIC_MAC and vif["other_config"] == other,
              "VIF MAC and other_config as sent")
        check(vif["qos_algorithm_type"] == "ratelimit"
              and vif["qos_algorithm_params"] == {"kbps": "25600"},
              "VIF qos_algorithm_type and qos_algorithm_params as sent")
        check(self.vif in x.network.get_VIFs(network), "network.get_VIFs lists the VIF")
        self.vif_net = network

    def step_start(self):
        """Async.VM.start_on(vm, host, start_paused=false, force=true), task.get_status
        polled, task.destroy."""
        x = self.x
        task = x.Async.VM.start_on(self.vm, self.master, False, True)
        self.wait_task(task, "Async.VM.start_on")
        x.task.destroy(task)
        rec = x.VM.get_record(self.vm)
        check(rec["power_state"] == "Running" and rec["resident_on"] == self.master,
              "the VM runs on the coordinator")
        check(x.VBD.get_currently_attached(self.vbd) is True, "its VBD is attached")
        check(x.VIF.get_currently_attached(self.vif) is True, "its VIF is attached")

    def step_snapshot(self):
        """VM.get_by_name_label (no snapshot of that name yet), task.get_by_name_label
        ('Async.VM.snapshot', 'Async.VM.checkpoint'), VM.get_power_state,
        Async.VM.snapshot(vm, new_name), task.add_to_other_config, task.get_status polled,
        task.get_result; then what it reads to size the snapshot: VM.get_snapshots,
        VM.get_is_a_snapshot, VM.get_suspend_VDI, VDI.get_by_name_label,
        VDI.get_is_a_snapshot, VDI.get_sm_config, VDI.get_physical_utilisation."""
        x = self.x
        check(x.VM.get_by_name_label(SNAPSHOT_NAME) == [], "no VM has the snapshot's name yet")
        x.task.get_by_name_label("Async.VM.snapshot")
        x.task.get_by_name_label("Async.VM.checkpoint")
        check(x.VM.get_power_state(self.vm) == "Running", "the VM to snapshot is Running")
        task = x.Async.VM.snapshot(self.vm, SNAPSHOT_NAME)
        x.task.add_to_other_config(task, "CS_VM_SNAPSHOT_KEY", SNAPSHOT_NAME)
        check(task in x.task.get_by_name_label("Async.VM.snapshot"),
              "the task is found by its name 'Async.VM.snapshot' (how the agent finds it again)")
        check(x.task.get_other_config(task).get("CS_VM_SNAPSHOT_KEY") == SNAPSHOT_NAME,
              "task.add_to_other_config")
        self.wait_task(task, "Async.VM.snapshot")
        snap = task_value(x.task.get_result(task))
        x.task.destroy(task)
        self.snapshot = snap
        rec = x.VM.get_record(snap)
        check(rec["is_a_snapshot"] is True and rec["snapshot_of"] == self.vm,
              "the result is a snapshot of the VM")
        check(rec["name_label"] == SNAPSHOT_NAME and rec["power_state"] == "Halted",
              "the snapshot has its name and is Halted")
        check(snap in x.VM.get_snapshots(self.vm), "VM.get_snapshots lists it")
        check(x.VM.get_is_a_snapshot(snap) is True, "VM.get_is_a_snapshot")
        check(x.VM.get_suspend_VDI(snap) == NULL, "a disk-only snapshot has no suspend VDI")
        check(x.VM.get_power_state(self.vm) == "Running", "the VM still runs")
        disks = []
        for vbd in x.VM.get_VBDs(snap):
            vrec = x.VBD.get_record(vbd)
            if vrec["type"] == "Disk":
                disks.append(vrec["VDI"])
        check(len(disks) == 1, "the snapshot has one disk")
        sdisk = disks[0]
        drec = x.VDI.get_record(sdisk)
        check(sdisk != self.vdi and drec["is_a_snapshot"] is True
              and drec["snapshot_of"] == self.vdi,
              "its disk is a new VDI, a snapshot of the volume")
        check(drec["virtual_size"] == x.VDI.get_virtual_size(self.vdi),
              "the snapshot disk has the volume's virtual_size")
        name = x.VDI.get_name_label(self.vdi)
        named = x.VDI.get_by_name_label(name)
        check(self.vdi in named and sdisk in named,
              f"VDI.get_by_name_label({name!r}) finds the volume and its snapshot")
        size = 0
        for vdi in named:
            if x.VDI.get_is_a_snapshot(vdi):
                x.VDI.get_sm_config(vdi)
                size += as_int(x.VDI.get_physical_utilisation(vdi))
        check(size >= 0, f"the snapshot chain size reads ({size} bytes)")

    def step_migrate(self):
        """VM.get_by_name_label, host.get_all, host.get_address, VM.get_VBDs,
        VBD.get_record, Async.VM.pool_migrate(vm, host, {live: true}), task.get_status
        polled, task.destroy, VM.set_affinity."""
        x = self.x
        vms = x.VM.get_by_name_label(VM_NAME)
        check(vms == [self.vm], f"VM.get_by_name_label({VM_NAME!r})")
        self.source = x.VM.get_resident_on(self.vm)
        dest_address = next(rec["address"] for h, rec in self.hosts.items() if h != self.source)
        dest = None
        for h in x.host.get_all():
            if x.host.get_address(h) == dest_address:
                dest = h
        check(dest is not None and dest != self.source,
              f"the destination {dest_address} is found by its address")
        for vbd in x.VM.get_VBDs(self.vm):
            rec = x.VBD.get_record(vbd)
            check(not (rec["type"] == "CD" and not rec["empty"]), "no CD to eject")
        task = x.Async.VM.pool_migrate(self.vm, dest, {"live": "true"})
        self.wait_task(task, "Async.VM.pool_migrate")
        x.task.destroy(task)
        x.VM.set_affinity(self.vm, dest)
        rec = x.VM.get_record(self.vm)
        check(rec["resident_on"] == dest and rec["power_state"] == "Running",
              f"the VM runs on {dest_address} now")
        check(rec["affinity"] == dest, "VM.set_affinity")
        check(self.vm in x.host.get_resident_VMs(dest)
              and self.vm not in x.host.get_resident_VMs(self.source),
              "host.resident_VMs moved")
        check(x.VBD.get_currently_attached(self.vbd) is True
              and x.VIF.get_currently_attached(self.vif) is True,
              "the VBD and the VIF are attached on the destination")
        check(x.VIF.get_network(self.vif) == self.vif_net
              and self.vif in x.network.get_VIFs(self.vif_net),
              "the VIF is still on its network")
        self.dest = dest

    def step_plugin(self):
        """Per host: host.get_by_uuid, host.call_plugin(host, plugin, fn, args);
        Async.host.call_plugin and task.get_result (the agent's long plugin calls);
        a failing plugin (XENAPI_PLUGIN_FAILURE) and a missing one
        (XENAPI_MISSING_PLUGIN)."""
        x = self.x
        for host, rec in sorted(self.hosts.items()):
            label = rec["address"]
            h = x.host.get_by_uuid(rec["uuid"])
            args = {"host_uuid": rec["uuid"], "instance": "VM", "vmName": VM_NAME,
                    "text": "a b\tc\u00e9"}
            out = x.host.call_plugin(h, PLUGIN, "echo_args", args).replace("\n", "")
            got = json.loads(out)
            check(got == {"host": label, "fn": "echo_args", "args": args},
                  f"[{label}] host.call_plugin echo_args ran there and got the arguments")
            out = x.host.call_plugin(h, PLUGIN, "digest", args).replace("\n", "")
            check(out == plugin_digest(args),
                  f"[{label}] host.call_plugin digest equals the digest of the arguments")
            task = x.Async.host.call_plugin(h, PLUGIN, "digest", {"n": label})
            self.wait_task(task, f"[{label}] Async.host.call_plugin")
            result = x.task.get_result(task)
            x.task.destroy(task)
            value = result.replace("<value>", "").replace("</value>", "").replace("\n", "")
            check(value == plugin_digest({"n": label}),
                  f"[{label}] the task's result is the plugin's output")
            details = expect_failure("XENAPI_PLUGIN_FAILURE", f"[{label}] a failing plugin",
                                     x.host.call_plugin, h, PLUGIN, "fail", {})
            check(len(details) == 4 and "partial" in details[2] and "went wrong" in details[3],
                  f"[{label}] XENAPI_PLUGIN_FAILURE carries status, stdout and stderr")
            expect_failure("XENAPI_MISSING_PLUGIN", f"[{label}] a missing plugin",
                           x.host.call_plugin, h, "no-such-plugin", "main", {})

    def step_data_sources(self):
        """Per host: host.get_data_sources, host.query_data_source(memory_total_kib,
        memory_free_kib), host.get_metrics, host_metrics.get_memory_total; for the VM:
        VM.get_data_sources, VM.query_data_source(memory), VM.get_memory_static_max.
        GET /rrd_updates as the agent reads host and VM statistics."""
        x = self.x
        for host, rec in sorted(self.hosts.items()):
            label = rec["address"]
            names = {d["name_label"] for d in x.host.get_data_sources(host)}
            for n in ("memory_total_kib", "memory_free_kib", "cpu_avg"):
                check(n in names, f"[{label}] host.get_data_sources lists {n}")
            total = x.host.query_data_source(host, "memory_total_kib")
            metrics_total = as_int(x.host_metrics.get_memory_total(x.host.get_metrics(host)))
            check(isinstance(total, float) and total == metrics_total / 1024,
                  f"[{label}] memory_total_kib {total} is host_metrics.memory_total in KiB")
            free = x.host.query_data_source(host, "memory_free_kib")
            check(isinstance(free, float) and 0 < free <= total,
                  f"[{label}] memory_free_kib {free} is a number within the total")
            cpu = x.host.query_data_source(host, "cpu_avg")
            check(isinstance(cpu, float) and 0.0 <= cpu <= 1.0,
                  f"[{label}] cpu_avg {cpu} is a fraction")
        if self.vm is None:
            raise StepFailed("no VM to read data sources of (create-vm skipped)")
        names = {d["name_label"] for d in x.VM.get_data_sources(self.vm)}
        check("memory" in names, f"VM.get_data_sources lists memory ({sorted(names)})")
        memory = x.VM.query_data_source(self.vm, "memory")
        static_max = as_int(x.VM.get_memory_static_max(self.vm))
        check(isinstance(memory, float) and memory == static_max,
              f"VM.query_data_source memory {memory} is the VM's memory")
        cpus = [n for n in names if "cpu" in n]
        check(len(cpus) >= 1, f"the VM has a CPU data source ({cpus})")
        for n in cpus:
            v = x.VM.query_data_source(self.vm, n)
            check(isinstance(v, float) and 0.0 <= v <= 1.0, f"VM {n} {v} is a fraction")
        expect_failure("INVALID_VALUE", "an unknown VM data source",
                       x.VM.query_data_source, self.vm, "no_such_source")
        self.rrd_updates()

    def rrd_updates(self):
        """GET /rrd_updates?session_id&host=true&cf=AVERAGE&interval=60&start on the host
        the VM runs on, as the agent's getStatsRawXML: an XML document with meta (rows,
        columns, legend `AVERAGE:host|vm:<uuid>:<name>`) and data rows of <t> and <v>."""
        x = self.x
        host = x.VM.get_resident_on(self.vm)
        address = x.host.get_address(host)
        parsed = urllib.parse.urlsplit(self.url)
        netloc = address + (f":{parsed.port}" if parsed.port else "")
        start = int(time.time()) - 1100
        query = urllib.parse.urlencode({
            "session_id": self.session.handle, "host": "true", "cf": "AVERAGE",
            "interval": "60", "start": str(start),
        })
        url = f"{parsed.scheme}://{netloc}/rrd_updates?{query}"
        ctx = ssl._create_unverified_context() if self.https else None
        with urllib.request.urlopen(url, context=ctx, timeout=30) as r:
            body = r.read()
        root = ET.fromstring(body)
        meta = root.find("meta")
        check(meta is not None and root.find("data") is not None,
              "/rrd_updates answers an XML document with meta and data")
        legend = [e.text for e in meta.find("legend")]
        rows = root.find("data").findall("row")
        check(int(meta.find("columns").text) == len(legend) and len(rows) >= 1,
              f"/rrd_updates: {len(legend)} columns named, {len(rows)} row(s)")
        values = [float(v.text) for v in rows[-1].findall("v")]
        check(len(values) == len(legend), "each row has a value per column")
        by_name = dict(zip(legend, values))
        host_uuid = x.host.get_uuid(host)
        check(f"AVERAGE:host:{host_uuid}:memory_total_kib" in by_name,
              "the legend names the host's memory_total_kib")
        vm_uuid = x.VM.get_uuid(self.vm)
        memory = by_name.get(f"AVERAGE:vm:{vm_uuid}:memory")
        static_max = as_int(x.VM.get_memory_static_max(self.vm))
        check(memory == static_max,
              f"/rrd_updates gives the VM's memory ({memory}, expected {static_max})")

    def step_cleanup(self):
        """The snapshot deleted as the agent does (VM.get_by_name_label, VM.get_VBDs,
        VBD.get_record, VDI.destroy of each disk, VM.destroy); Async.VM.clean_shutdown and
        its task; VM.destroy; VDI.destroy of the volume."""
        x = self.x
        if self.snapshot is not None:
            check(x.VM.get_by_name_label(SNAPSHOT_NAME) == [self.snapshot],
                  "the snapshot is found by its name")
            disks = [x.VBD.get_record(v)["VDI"] for v in x.VM.get_VBDs(self.snapshot)
                     if x.VBD.get_record(v)["type"] == "Disk"]
            for vdi in disks:
                x.VDI.destroy(vdi)
            x.VM.destroy(self.snapshot)
            check(self.snapshot not in x.VM.get_all()
                  and not any(d in x.VDI.get_all() for d in disks),
                  "the snapshot and its disk are destroyed")
        if self.vm is not None:
            if x.VM.get_power_state(self.vm) == "Running":
                task = x.Async.VM.clean_shutdown(self.vm)
                self.wait_task(task, "Async.VM.clean_shutdown")
                x.task.destroy(task)
            check(x.VM.get_power_state(self.vm) == "Halted", "the VM is Halted")
            x.VM.destroy(self.vm)
            check(self.vm not in x.VM.get_all(), "VM.destroy")
            check(self.vbd not in x.VBD.get_all() and self.vif not in x.VIF.get_all(),
                  "VM.destroy removed its VBD and VIF")
        if self.vdi is not None:
            x.VDI.destroy(self.vdi)
            check(self.vdi not in x.VDI.get_all(), "VDI.destroy of the volume")


def plugin_digest(args):
    """What the test plugin's `digest` answers: the SHA-256 of the sorted `key=value`
    lines of its arguments."""
    text = "".join(f"{k}={v}\n" for k, v in sorted(args.items()))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


STEPS = ["connect", "host-info", "storage", "create-volume", "vlan-network", "pif-plug",
         "create-vm", "start", "snapshot", "migrate", "plugin", "data-sources", "cleanup"]


def parse_args(argv):
    args, skip, strict = [], set(), False
    it = iter(argv)
    for a in it:
        if a == "--strict":
            strict = True
        elif a == "--skip":
            skip.add(next(it, ""))
        else:
            args.append(a)
    unknown = skip - set(STEPS)
    if len(args) != 2 or unknown or "connect" in skip:
        print(__doc__, file=sys.stderr)
        if unknown:
            print(f"unknown steps: {sorted(unknown)}", file=sys.stderr)
        sys.exit(2)
    return args[0], args[1], strict, skip


def main():
    url, password, strict, skip = parse_args(sys.argv[1:])
    agent = Agent(url, password, strict)
    run_steps(TAG, agent, STEPS, skip)


if __name__ == "__main__":
    main()
