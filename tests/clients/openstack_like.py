#!/usr/bin/env python3
"""Drives a xenpool with the unmodified `xenapi` package the way OpenStack Nova's XenAPI
driver (and its os-xenapi session) drives a host: spawn of an instance from a cached
image, snapshot, reboot and destroy.

Usage: openstack_like.py URL PASSWORD [--skip STEP]...

The pool needs a default SR (pool.default_SR) and, on the host the session lands on, the
test plugin `dom0_plugin_version.py` (tests/clients/host_plugin.py, installed by
scripts/client-tests.sh).

Steps, in the driver's order (the calls of each are listed in its docstring):
  connect         login (4 parameters, HOST_IS_SLAVE followed), session.get_this_host,
                  host.get_uuid, host.get_software_version, the plugin version check
  list-instances  VM.get_all_records_where (the driver's list of its VMs)
  find-sr         pool.get_all, pool.get_default_SR, SR.get_type
  image-cache     the image cached in a new VDI (VDI.create and its name and other_config)
  image-lookup    VDI.get_all_records_where finds the cached image (as each spawn does)
  spawn-disk      VDI.clone of the cached image for the root disk
  spawn-resize    VDI.resize of the root disk to the flavor's size
  spawn-vm        VM.create, VBD.create, network.create (interim network), VIF.create
  spawn-start     VM.start_on paused, VM.unpause
  snapshot        VDI.snapshot of the root disk and its VDI chain (SR.scan), VDI.destroy
  vm-snapshot     VM.snapshot (the driver's older path) and its removal
  reboot          VM.clean_reboot, VM.hard_reboot, and a reboot of a halted instance
                  (VM_BAD_POWER_STATE, then VM.start_on)
  destroy         VM.hard_shutdown, VDI.destroy of its disks, VIF.destroy,
                  network.destroy, VM.destroy

--skip STEP leaves a step out (for working on the daemon); the run then ends with status 3,
never 0.

Prints one PASS line per check and exits 1 at the first failure, naming the step and, for
a call the daemon does not serve, the method.
"""

import pickle
import sys
import time
import urllib.parse

import XenAPI
from sequence import StepFailed, check, passed, run_steps

TAG = "openstack"
NULL = "OpaqueRef:NULL"
# os-xenapi logs in with its plugin API version as the API version, and an originator.
PLUGIN_REQUIRED_VERSION = "2.1"
ORIGINATOR = "nova"
GIB = 1 << 30
MIB = 1 << 20
IMAGE_ID = "5f3a9c1e-7b2d-4e8f-9a6b-0c1d2e3f4a5b"
IMAGE_SIZE = 1 * GIB
FLAVOR_ROOT_GB = 3
FLAVOR_MEMORY_MB = 512
FLAVOR_VCPUS = 2
INSTANCE_UUID = "d2b7c1a4-58e3-4f0a-9c6d-1e2f3a4b5c6d"
INSTANCE_NAME = "instance-0000002a"
PORT_ID = "8e1f2d3c-4b5a-4697-8877-665544332211"
PORT_MAC = "fa:16:3e:12:34:56"
DEADLINE_S = 60.0


def image_label(image_id):
    return f"Glance Image {image_id}"


def interim_network_name(port_id):
    return f"net-{port_id}"


class Driver:
    def __init__(self, url, password):
        self.url = url
        self.password = password
        self.session = None
        self.x = None
        self.host_ref = None
        self.host_uuid = None
        self.product_version = None
        self.sr = None
        self.image_vdi = None
        self.root_vdi = None
        self.vm = None
        self.vbd = None
        self.vif = None
        self.net = None

    def login(self, url):
        s = XenAPI.Session(url)
        s.login_with_password("root", self.password, PLUGIN_REQUIRED_VERSION, ORIGINATOR)
        return s

    def wait_power_state(self, want):
        """Polls VM.get_power_state as the driver's _wait_for_instance_to_start does."""
        deadline = time.monotonic() + DEADLINE_S
        while True:
            state = self.x.VM.get_power_state(self.vm)
            if state == want:
                return
            if time.monotonic() > deadline:
                raise StepFailed(f"the instance is {state}, not {want}, after {DEADLINE_S}s")
            time.sleep(0.05)

    def call_plugin(self, plugin, fn, args):
        """The os-xenapi session's call_plugin: adds host_uuid and runs on its host."""
        args = dict(args, host_uuid=self.host_uuid)
        if not plugin.endswith(".py"):
            plugin = f"{plugin}.py"
        return self.x.host.call_plugin(self.host_ref, plugin, fn, args)

    def walk_vdi_chain(self, vdi_uuid):
        """The driver's VDI chain: SR.scan of the default SR (scan_default_sr, which finds
        it again with pool.get_all and pool.get_default_SR), then VDI.get_by_uuid and
        VDI.get_record, following sm_config vhd-parent."""
        x = self.x
        sr = x.pool.get_default_SR(x.pool.get_all()[0])
        x.SR.scan(sr)
        chain = []
        while vdi_uuid:
            ref = x.VDI.get_by_uuid(vdi_uuid)
            rec = x.VDI.get_record(ref)
            chain.append((ref, rec))
            vdi_uuid = rec["sm_config"].get("vhd-parent")
            if len(chain) > 64:
                raise StepFailed("a VDI chain longer than 64: sm_config vhd-parent loops")
        return chain

    def root_disk(self, vm):
        """get_vdi_for_vm_safely: VM.get_VBDs, VBD.get_record (userdevice 0),
        VDI.get_record."""
        x = self.x
        for vbd in x.VM.get_VBDs(vm):
            rec = x.VBD.get_record(vbd)
            if rec["userdevice"] == "0":
                return rec["VDI"], x.VDI.get_record(rec["VDI"])
        raise StepFailed(f"no VBD with userdevice 0 on {vm}")

    # -------------------------------------------------------------------------------
    def step_connect(self):
        """session.login_with_password(uname, pwd, '2.1', 'nova'); on HOST_IS_SLAVE the
        same at the coordinator's address and the host found with
        PIF.get_all_records_where('field "IP"="<address>"'), else session.get_this_host;
        host.get_uuid, host.get_software_version, host.call_plugin(host,
        'dom0_plugin_version.py', 'get_version', {params, host_uuid})."""
        url = self.url
        ip = urllib.parse.urlparse(url).hostname
        is_slave = False
        try:
            s = self.login(url)
        except XenAPI.Failure as e:
            if not e.details or e.details[0] != "HOST_IS_SLAVE":
                raise
            url = url.replace(ip, e.details[1])
            s = self.login(url)
            is_slave = True
            passed(f"{ip} answered HOST_IS_SLAVE; logged in at {e.details[1]}")
        self.session, self.url, self.x = s, url, s.xenapi
        x = self.x
        if is_slave:
            # The driver serves the host it was pointed at: found by its PIF's address.
            pifs = x.PIF.get_all_records_where(f'field "IP"="{ip}"')
            check(len(pifs) == 1, f"PIF.get_all_records_where finds the one PIF with IP {ip}")
            self.host_ref = list(pifs.values())[0]["host"]
            check(x.host.get_address(self.host_ref) == ip, f"the driver's host is {ip}")
        else:
            self.host_ref = x.session.get_this_host(s.handle)
            check(x.host.get_address(self.host_ref) == ip,
                  "session.get_this_host is the host logged in to")
        self.host_uuid = x.host.get_uuid(self.host_ref)
        check(len(self.host_uuid) == 36, f"host.get_uuid {self.host_uuid}")
        sv = x.host.get_software_version(self.host_ref)
        version = sv.get("product_version") or sv.get("platform_version", "0.0.0")
        parts = version.split(".")
        check(len(parts) >= 2 and all(p.isdigit() for p in parts[:3]),
              f"host.get_software_version gives a dotted version ({version})")
        self.product_version = tuple(int(p) for p in parts[:3])
        check("platform_version" in sv,
              f"software_version has platform_version ({sv.get('platform_version')})")
        params = {"params": pickle.dumps({"args": (), "kwargs": {}}, 0).decode("ascii")}
        out = self.call_plugin("dom0_plugin_version", "get_version", params)
        got = pickle.loads(out.encode("ascii"))
        # Compatible: the same major version, a minor one at least the required.
        want = [int(p) for p in PLUGIN_REQUIRED_VERSION.split(".")]
        have = [int(p) for p in got.split(".")]
        check(have[0] == want[0] and have[1:] >= want[1:],
              f"the plugin version check: {got} is compatible with {PLUGIN_REQUIRED_VERSION}")

    def step_list_instances(self):
        """VM.get_all_records_where('field "is_control_domain"="false" and field
        "is_a_template"="false" and field "resident_on"="<host>"')."""
        x = self.x
        expr = ('field "is_control_domain"="false" and field "is_a_template"="false" '
                f'and field "resident_on"="{self.host_ref}"')
        got = x.VM.get_all_records_where(expr)
        want = {r for r, rec in x.VM.get_all_records().items()
                if not rec["is_control_domain"] and not rec["is_a_template"]
                and rec["resident_on"] == self.host_ref}
        check(set(got) == want,
              f"VM.get_all_records_where lists the {len(want)} guest VM(s) resident here")
        check(all(isinstance(rec, dict) and "uuid" in rec for rec in got.values()),
              "VM.get_all_records_where gives records")

    def step_find_sr(self):
        """safe_find_sr: pool.get_all, pool.get_default_SR (sr_matching_filter
        default-sr:true); SR.get_type."""
        x = self.x
        pools = x.pool.get_all()
        check(len(pools) == 1, "pool.get_all lists one pool")
        sr = x.pool.get_default_SR(pools[0])
        check(sr != NULL and sr in x.SR.get_all(), "pool.get_default_SR names an SR")
        check(bool(x.SR.get_type(sr)), f"SR.get_type {x.SR.get_type(sr)!r}")
        self.sr = sr

    def step_image_cache(self):
        """An image not cached yet lands in a new VDI on the SR (VDI.create; the driver
        streams the image into it), then VDI.get_uuid, VDI.get_by_uuid,
        VDI.set_name_label, VDI.set_name_description, VDI.add_to_other_config (image-id,
        cached-time)."""
        x = self.x
        vdi = x.VDI.create({
            "name_label": INSTANCE_NAME, "name_description": "root", "SR": self.sr,
            "virtual_size": str(IMAGE_SIZE), "type": "User", "sharable": False,
            "read_only": False, "xenstore_data": {},
            "other_config": {"nova_disk_type": "root", "nova_instance_uuid": INSTANCE_UUID},
            "sm_config": {}, "tags": [],
        })
        uuid = x.VDI.get_uuid(vdi)
        check(x.VDI.get_by_uuid(uuid) == vdi, "VDI.create; VDI.get_by_uuid finds it")
        x.VDI.set_name_label(vdi, image_label(IMAGE_ID))
        x.VDI.set_name_description(vdi, "root")
        x.VDI.add_to_other_config(vdi, "image-id", IMAGE_ID)
        x.VDI.add_to_other_config(vdi, "cached-time", str(int(time.time())))
        rec = x.VDI.get_record(vdi)
        check(rec["name_label"] == image_label(IMAGE_ID) and rec["name_description"] == "root",
              "the cached image's name and description as set")
        check(rec["other_config"].get("image-id") == IMAGE_ID
              and rec["other_config"].get("nova_instance_uuid") == INSTANCE_UUID,
              "the cached image's other_config: image-id added to what VDI.create set")
        check(int(rec["virtual_size"]) == IMAGE_SIZE and rec["type"] == "user",
              "its virtual_size and type (sent as 'User')")
        self.image_vdi = vdi

    def step_image_lookup(self):
        """_find_cached_image, as every spawn looks the image up: VDI.get_all_records_where(
        'field "name__label"="Glance Image <id>" and field "SR" = "<sr>"')."""
        x = self.x
        if self.image_vdi is None:
            raise StepFailed("no cached image (image-cache skipped)")
        expr = (f'field "name__label"="{image_label(IMAGE_ID)}" and '
                f'field "SR" = "{self.sr}"')
        found = x.VDI.get_all_records_where(expr)
        check(list(found) == [self.image_vdi],
              "VDI.get_all_records_where finds the cached image by name and SR")
        check(found[self.image_vdi]["other_config"].get("image-id") == IMAGE_ID,
              "with its record")
        other = (f'field "name__label"="{image_label(INSTANCE_UUID)}" and '
                 f'field "SR" = "{self.sr}"')
        check(x.VDI.get_all_records_where(other) == {},
              "an image not cached is not found")

    def step_spawn_disk(self):
        """create_image from the cached image with use_cow_images: VDI.clone(image) (one
        parameter: driver_params left to its default), VDI.set_name_label,
        VDI.set_name_description, VDI.remove_from_other_config, VDI.get_uuid; then
        VDI.get_by_uuid, VDI.get_other_config, VDI.set_name_label,
        VDI.set_name_description, VDI.add_to_other_config."""
        x = self.x
        if self.image_vdi is None:
            raise StepFailed("no cached image (image-cache skipped)")
        # create_image, cached image with use_cow_images: a copy-on-write clone.
        image_rec = x.VDI.get_record(self.image_vdi)
        vdi = x.VDI.clone(self.image_vdi)
        x.VDI.set_name_label(vdi, "")
        x.VDI.set_name_description(vdi, "")
        x.VDI.remove_from_other_config(vdi, "image-id")
        uuid = x.VDI.get_uuid(vdi)
        vdi = x.VDI.get_by_uuid(uuid)
        existing = x.VDI.get_other_config(vdi)
        x.VDI.set_name_label(vdi, INSTANCE_NAME)
        x.VDI.set_name_description(vdi, "root")
        for k, v in (("nova_disk_type", "root"), ("nova_instance_uuid", INSTANCE_UUID)):
            if k not in existing:
                x.VDI.add_to_other_config(vdi, k, v)
        rec = x.VDI.get_record(vdi)
        check(vdi != self.image_vdi and rec["uuid"] != image_rec["uuid"],
              "VDI.clone of the cached image: a new VDI")
        check(rec["SR"] == self.sr and rec["virtual_size"] == image_rec["virtual_size"],
              "the clone is on the SR with the image's virtual_size")
        check("image-id" not in rec["other_config"]
              and rec["other_config"].get("nova_instance_uuid") == INSTANCE_UUID,
              "the clone's other_config: no image-id, the instance's uuid")
        check(rec["name_label"] == INSTANCE_NAME, "the clone is named after the instance")
        check(x.VDI.get_other_config(self.image_vdi).get("image-id") == IMAGE_ID
              and x.VDI.get_name_label(self.image_vdi) == image_label(IMAGE_ID),
              "the cached image is unchanged")
        self.root_vdi = vdi

    def step_spawn_resize(self):
        """update_vdi_virtual_size: VDI.get_virtual_size, VDI.resize(vdi, size) when the
        flavor's root disk is larger than the image (the driver does this on a resize up;
        here the flavor is larger at once)."""
        x = self.x
        vdi = self.root_vdi
        if vdi is None:
            raise StepFailed("no root disk (spawn-disk skipped)")
        size = int(x.VDI.get_virtual_size(vdi))
        new_size = FLAVOR_ROOT_GB * GIB
        check(size < new_size, f"the root disk ({size}) is smaller than the flavor's")
        x.VDI.resize(vdi, str(new_size))
        check(int(x.VDI.get_virtual_size(vdi)) == new_size,
              f"VDI.resize: virtual_size is {new_size}")
        check(int(x.VDI.get_virtual_size(self.image_vdi)) == IMAGE_SIZE,
              "the cached image keeps its size")

    def step_spawn_vm(self):
        """create_vm: VM.get_by_name_label, VM.create with the driver's full record;
        create_vbd: VBD.create; _create_vifs: VM.get_domid, VM.get_VIFs,
        network.get_by_name_label, network.create, VIF.create."""
        x = self.x
        if self.root_vdi is None:
            # Only when spawn-disk is skipped, and a run with a skipped step never passes.
            print(f"NOTE [{TAG}] spawn-disk skipped: a new VDI stands for the root disk",
                  flush=True)
            self.root_vdi = x.VDI.create({
                "name_label": INSTANCE_NAME, "name_description": "root", "SR": self.sr,
                "virtual_size": str(FLAVOR_ROOT_GB * GIB), "type": "user",
                "sharable": False, "read_only": False, "other_config": {},
                "xenstore_data": {}, "sm_config": {}, "tags": [],
            })
        check(x.VM.get_by_name_label(INSTANCE_NAME) == [], "no VM has the instance's name")
        mem = str(FLAVOR_MEMORY_MB * MIB)
        vcpus = str(FLAVOR_VCPUS)
        self.vm = x.VM.create({
            "actions_after_crash": "destroy", "actions_after_reboot": "restart",
            "actions_after_shutdown": "destroy", "affinity": "", "blocked_operations": {},
            "ha_always_run": False, "ha_restart_priority": "", "HVM_boot_params": {},
            "HVM_boot_policy": "", "is_a_template": False, "memory_dynamic_min": mem,
            "memory_dynamic_max": mem, "memory_static_min": "0", "memory_static_max": mem,
            "memory_target": mem, "name_description": "", "name_label": INSTANCE_NAME,
            "other_config": {"nova_uuid": INSTANCE_UUID},
            "PCI_bus": "",
            "platform": {"acpi": "true", "apic": "true", "pae": "true", "viridian": "false",
                         "timeoffset": "0", "nx": "false"},
            "PV_args": "", "PV_bootloader": "pygrub", "PV_bootloader_args": "",
            "PV_kernel": "", "PV_legacy_args": "", "PV_ramdisk": "", "recommendations": "",
            "tags": [], "user_version": "0", "VCPUs_at_startup": vcpus, "VCPUs_max": vcpus,
            "VCPUs_params": {"weight": "256", "cap": "0"},
            "xenstore_data": {"vm-data/allowvssprovider": "false"},
        })
        rec = x.VM.get_record(self.vm)
        check(rec["name_label"] == INSTANCE_NAME and rec["power_state"] == "Halted"
              and not rec["is_a_template"], "VM.create: the instance's VM, Halted")
        check(int(rec["memory_static_max"]) == FLAVOR_MEMORY_MB * MIB
              and int(rec["memory_dynamic_max"]) == FLAVOR_MEMORY_MB * MIB
              and rec["VCPUs_max"] == vcpus and rec["VCPUs_at_startup"] == vcpus,
              "memory and VCPUs of the flavor")
        check(rec["other_config"].get("nova_uuid") == INSTANCE_UUID
              and rec["PV_bootloader"] == "pygrub" and rec["platform"].get("nx") == "false",
              "other_config, PV_bootloader and platform as sent")
        check(rec["VCPUs_params"] == {"weight": "256", "cap": "0"}
              and rec["xenstore_data"] == {"vm-data/allowvssprovider": "false"},
              "VCPUs_params and xenstore_data as sent")

        # create_vbd: the driver writes the type in lower case, as xapi accepts.
        self.vbd = x.VBD.create({
            "VM": self.vm, "VDI": self.root_vdi, "userdevice": "0", "bootable": True,
            "mode": "RW", "type": "disk", "unpluggable": True, "empty": False,
            "other_config": {}, "qos_algorithm_type": "", "qos_algorithm_params": {},
            "qos_supported_algorithms": [],
        })
        vbd = x.VBD.get_record(self.vbd)
        check(vbd["VM"] == self.vm and vbd["VDI"] == self.root_vdi and vbd["userdevice"] == "0"
              and vbd["type"] == "Disk" and vbd["bootable"] is True,
              "VBD.create: the root disk is bootable device 0 (type 'disk' read as Disk)")

        # _create_vifs through the vif driver: an interim network per port.
        x.VM.get_domid(self.vm)
        check(x.VM.get_VIFs(self.vm) == [], "the new VM has no VIF yet")
        name = interim_network_name(PORT_ID)
        check(x.network.get_by_name_label(name) == [], f"no network {name} yet")
        self.net = x.network.create({
            "name_label": name, "name_description": f"interim network for vif[{PORT_ID}]",
            "other_config": {"assume_network_is_shared": "true"},
        })
        check(x.network.get_by_name_label(name) == [self.net], "network.create: found by name")
        check(x.network.get_other_config(self.net) == {"assume_network_is_shared": "true"},
              "the network's other_config as sent")
        self.vif = x.VIF.create({
            "device": "0", "network": self.net, "VM": self.vm, "MAC": PORT_MAC,
            "MTU": "1500", "qos_algorithm_type": "", "qos_algorithm_params": {},
            "other_config": {"neutron-port-id": PORT_ID},
        })
        vif = x.VIF.get_record(self.vif)
        check(vif["VM"] == self.vm and vif["network"] == self.net and vif["MAC"] == PORT_MAC
              and vif["device"] == "0" and vif["other_config"] == {"neutron-port-id": PORT_ID},
              "VIF.create: device 0 on the interim network with the port's MAC")

    def step_spawn_start(self):
        """VM.start_on(vm, host, start_paused=true, force=false), VM.unpause once the
        ports are plugged, VM.get_power_state polled; VM.get_by_name_label, VM.get_VIFs,
        VIF.get_record."""
        x = self.x
        if self.vm is None:
            raise StepFailed("no VM (spawn-vm skipped)")
        x.VM.start_on(self.vm, self.host_ref, True, False)
        check(x.VM.get_power_state(self.vm) == "Paused", "VM.start_on paused: the VM is Paused")
        check(x.VM.get_resident_on(self.vm) == self.host_ref, "it is resident on this host")
        x.VM.unpause(self.vm)
        self.wait_power_state("Running")
        passed("VM.unpause: the VM is Running")
        vm = x.VM.get_by_name_label(INSTANCE_NAME)
        check(vm == [self.vm], "the instance is found by its name")
        macs = [x.VIF.get_record(v)["MAC"] for v in x.VM.get_VIFs(self.vm)]
        check(macs == [PORT_MAC], "VM.get_VIFs and VIF.get_record: the port's VIF")
        check(x.VBD.get_currently_attached(self.vbd) is True
              and x.VIF.get_currently_attached(self.vif) is True,
              "the root VBD and the VIF are attached")

    def step_snapshot(self):
        """snapshot_attached_here: VM.get_VBDs, VBD.get_record, VDI.get_record; the chain
        (SR.scan, VDI.get_by_uuid, VDI.get_record); old snapshots among the SR's VDIs
        (SR.get_VDIs, VDI.get_record); VDI.snapshot(vdi, {}); VDI.get_uuid; the snapshot's
        chain; VDI.destroy of the snapshot once uploaded."""
        x = self.x
        if self.vm is None:
            raise StepFailed("no instance (spawn-vm skipped)")
        vdi, vdi_rec = self.root_disk(self.vm)
        check(vdi == self.root_vdi, "the root disk is the VDI on userdevice 0")
        chain = self.walk_vdi_chain(vdi_rec["uuid"])
        check(chain[0][0] == vdi, f"the root disk's chain starts at it ({len(chain)} VDI)")
        chain_uuids = [rec["uuid"] for _, rec in chain]
        old = [r for r in x.SR.get_VDIs(vdi_rec["SR"])
               if x.VDI.get_record(r)["sm_config"].get("vhd-parent") in chain_uuids[1:]
               and x.VDI.get_record(r)["is_a_snapshot"]]
        check(old == [], "no snapshot left over from an interrupted run")
        snap = x.VDI.snapshot(vdi, {})
        srec = x.VDI.get_record(snap)
        check(snap != vdi and srec["is_a_snapshot"] is True and srec["snapshot_of"] == vdi,
              "VDI.snapshot: a new VDI, a snapshot of the root disk")
        check(srec["SR"] == vdi_rec["SR"] and srec["virtual_size"] == x.VDI.get_virtual_size(vdi),
              "the snapshot is on the same SR with the disk's size")
        check(snap in x.VDI.get_snapshots(vdi), "VDI.get_snapshots lists it")
        check(x.VM.get_power_state(self.vm) == "Running", "the instance still runs")
        snap_uuid = x.VDI.get_uuid(snap)
        snap_chain = self.walk_vdi_chain(snap_uuid)
        check(snap_chain[0][0] == snap,
              f"the snapshot's chain starts at it ({len(snap_chain)} VDI)")
        x.VDI.destroy(snap)
        check(snap not in x.VDI.get_all() and snap not in x.VDI.get_snapshots(vdi),
              "VDI.destroy of the uploaded snapshot")
        check(x.VDI.get_record(vdi)["uuid"] == vdi_rec["uuid"], "the root disk remains")

    def step_vm_snapshot(self):
        """The driver's older snapshot: VM.snapshot(vm, label), get_vdi_for_vm_safely of the
        snapshot, then its removal (VM.get_VBDs, VBD.get_VDI, VDI.destroy, VM.destroy)."""
        x = self.x
        if self.vm is None:
            raise StepFailed("no instance (spawn-vm skipped)")
        label = f"{INSTANCE_NAME}-snapshot"
        snap = x.VM.snapshot(self.vm, label)
        rec = x.VM.get_record(snap)
        check(rec["is_a_snapshot"] is True and rec["snapshot_of"] == self.vm
              and rec["name_label"] == label, "VM.snapshot: a snapshot of the instance")
        check(snap in x.VM.get_snapshots(self.vm), "VM.get_snapshots lists it")
        svdi, srec = self.root_disk(snap)
        check(svdi != self.root_vdi and srec["is_a_snapshot"] is True
              and srec["snapshot_of"] == self.root_vdi,
              "the snapshot's root disk is a snapshot of the instance's")
        disks = [x.VBD.get_VDI(v) for v in x.VM.get_VBDs(snap)]
        for d in disks:
            x.VDI.destroy(d)
        x.VM.destroy(snap)
        check(snap not in x.VM.get_all() and not any(d in x.VDI.get_all() for d in disks),
              "the snapshot VM and its disks are destroyed")
        check(x.VM.get_snapshots(self.vm) == [], "the instance has no snapshot left")
        check(x.VM.get_power_state(self.vm) == "Running", "the instance still runs")

    def step_reboot(self):
        """VM.clean_reboot (soft), VM.hard_reboot (hard), VM.get_domid; a reboot of a
        halted instance: VM_BAD_POWER_STATE ending in 'halted', then the driver's start
        (VM.start_on)."""
        x = self.x
        if self.vm is None:
            raise StepFailed("no instance (spawn-vm skipped)")
        x.VM.clean_reboot(self.vm)
        check(x.VM.get_power_state(self.vm) == "Running"
              and x.VM.get_resident_on(self.vm) == self.host_ref,
              "VM.clean_reboot: Running on the same host")
        domid = int(x.VM.get_domid(self.vm))
        x.VM.hard_reboot(self.vm)
        check(x.VM.get_power_state(self.vm) == "Running", "VM.hard_reboot: Running")
        check(int(x.VM.get_domid(self.vm)) not in (domid, -1),
              "VM.hard_reboot built a new domain (new domid)")
        x.VM.hard_shutdown(self.vm)
        check(x.VM.get_power_state(self.vm) == "Halted", "VM.hard_shutdown: Halted")
        try:
            x.VM.clean_reboot(self.vm)
        except XenAPI.Failure as e:
            d = e.details
            check(d[0] == "VM_BAD_POWER_STATE" and d[-1] == "halted",
                  f"a reboot of the halted instance is refused with {d}")
        else:
            raise StepFailed("VM.clean_reboot of a halted VM succeeded")
        x.VM.start_on(self.vm, self.host_ref, False, False)
        check(x.VM.get_power_state(self.vm) == "Running",
              "the driver starts it instead (VM.start_on): Running")

    def step_destroy(self):
        """lookup (VM.get_by_name_label), VM.get_power_state, VM.hard_shutdown; the VM's
        disks (VM.get_VBDs, VBD.get_VDI, VDI.get_uuid, VBD.get_other_config) destroyed
        with VDI.destroy; the port (VM.get_VIFs, VIF.get_record, VIF.destroy) and its
        interim network (network.get_by_name_label, network.destroy); VM.destroy."""
        x = self.x
        vms = x.VM.get_by_name_label(INSTANCE_NAME)
        check(vms == [self.vm] and self.vm is not None, "the instance is found by its name")
        if x.VM.get_power_state(self.vm) != "Halted":
            x.VM.hard_shutdown(self.vm)
        check(x.VM.get_power_state(self.vm) == "Halted", "VM.hard_shutdown: Halted")
        disks = []
        for vbd in x.VM.get_VBDs(self.vm):
            vdi = x.VBD.get_VDI(vbd)
            x.VDI.get_uuid(vdi)
            if not x.VBD.get_other_config(vbd).get("osvol"):
                disks.append(vdi)
        check(disks == [self.root_vdi], "the instance's disk is its root VDI")
        for vdi in disks:
            x.VDI.destroy(vdi)
        check(self.root_vdi not in x.VDI.get_all(), "VDI.destroy of the root disk")
        for vif in x.VM.get_VIFs(self.vm):
            if x.VIF.get_record(vif)["MAC"] == PORT_MAC:
                x.VIF.destroy(vif)
        check(self.vif not in x.VIF.get_all(), "VIF.destroy of the port's VIF")
        for net in x.network.get_by_name_label(interim_network_name(PORT_ID)):
            x.network.destroy(net)
        check(self.net not in x.network.get_all(), "network.destroy of the interim network")
        x.VM.destroy(self.vm)
        check(self.vm not in x.VM.get_all() and x.VM.get_by_name_label(INSTANCE_NAME) == [],
              "VM.destroy")
        check(self.vbd not in x.VBD.get_all(), "VM.destroy removed its VBD")
        check(self.image_vdi in x.VDI.get_all(), "the cached image stays for the next spawn")


STEPS = ["connect", "list-instances", "find-sr", "image-cache", "image-lookup",
         "spawn-disk", "spawn-resize", "spawn-vm", "spawn-start", "snapshot", "vm-snapshot",
         "reboot", "destroy"]


def parse_args(argv):
    args, skip = [], set()
    it = iter(argv)
    for a in it:
        if a == "--skip":
            skip.add(next(it, ""))
        else:
            args.append(a)
    unknown = skip - set(STEPS)
    if len(args) != 2 or unknown or "connect" in skip:
        print(__doc__, file=sys.stderr)
        if unknown:
            print(f"unknown steps: {sorted(unknown)}", file=sys.stderr)
        sys.exit(2)
    return args[0], args[1], skip


def main():
    url, password, skip = parse_args(sys.argv[1:])
    driver = Driver(url, password)
    run_steps(TAG, driver, STEPS, skip)


if __name__ == "__main__":
    main()
