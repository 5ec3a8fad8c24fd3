//! xenpool: an `xe`-style command line client for a xenpool (or XenServer) pool.
//!
//! `xenpool -s HOST [-p PORT] -u USER (-pw PASSWORD | -pwf FILE) [--minimal] COMMAND [key=value ...]`

mod format;
mod params;

use std::collections::BTreeMap;
use std::io::Write;
use std::time::Duration;

use anyhow::{bail, Context};
use xenpool_rpc::{Client, RpcError, Value, XenApiError};

use crate::format::{field_name, print_records, wire_text};
use crate::params::{ParamSet, POOL_PARAM_SET, VM_PARAM_SET};

struct Options {
    server: String,
    port: Option<u16>,
    https: bool,
    user: String,
    password: Option<String>,
    minimal: bool,
    command: String,
    args: BTreeMap<String, String>,
    /// The same `key=value` words in command-line order, for commands that apply them in turn.
    pairs: Vec<(String, String)>,
    flags: Vec<String>,
    /// Words after the command that are not key=value: only `help` takes one.
    positional: Vec<String>,
}

const USAGE: &str = "usage: xenpool -s HOST [-p PORT] [--https] -u USER (-pw PASSWORD | -pwf FILE) [--minimal] COMMAND [key=value ...]
       xenpool help [COMMAND]";

/// Parameters every command that names one VM accepts.
const VM_SELECTORS: &[&str] = &["uuid", "vm", "name-label"];
/// What the record listing commands accept besides field filters.
const LIST_PARAMS: &[&str] = &["params", "<field>=<value>"];

/// What a command does once connected.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Action {
    /// Prints the records of `class`, showing `columns` unless `params=` says otherwise.
    List {
        class: &'static str,
        columns: &'static [&'static str],
    },
    /// Starts, stops or moves one VM between power states.
    VmPower(Power),
    VmInstall,
    VmUninstall,
    VmParamList,
    EventWait,
    PoolJoin,
    /// Calls `method` with the host named by `host-uuid=`.
    PoolHost {
        method: &'static str,
    },
    EmergencyTransitionToMaster,
    EmergencyResetMaster,
    RecoverSlaves,
    HostParamList,
    /// Writes what `set` allows on the object of `class` named by its selector.
    ParamSet {
        class: &'static str,
        set: &'static ParamSet,
    },
    /// `VM.pool_migrate` of the VM named by its selector to `host=`, with a progress bar.
    VmMigrate,
    /// Calls `method` with the host named by `uuid=`; as a task with a progress bar when
    /// `task`.
    HostCall {
        method: &'static str,
        task: bool,
    },
    PoolHaEnable,
    PoolHaDisable,
    PoolHaComputeMaxFailures,
    HostEmergencyHaDisable,
    HostCallPlugin,
    /// `VM.snapshot` or `VM.checkpoint` of the VM named by its selector; prints the
    /// snapshot's uuid.
    VmSnapshot {
        method: &'static str,
    },
    SrCreate,
    /// Calls `method` with the object of `class` named by `uuid=` (and, with `size`, the
    /// whole number `disk-size=`); prints the uuid of the object made, if any.
    ObjectCall {
        class: &'static str,
        method: &'static str,
        size: bool,
    },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Power {
    Start,
    Shutdown,
    Reboot,
    Suspend,
    Resume,
}

/// One command of the CLI: how it is dispatched and how `help` describes it.
#[derive(Debug)]
struct Command {
    name: &'static str,
    /// The heading `help` lists it under.
    group: &'static str,
    summary: &'static str,
    required: &'static [&'static str],
    optional: &'static [&'static str],
    description: &'static str,
    /// Logs in with a session of this host only, which works while the coordinator is gone.
    local_session: bool,
    action: Action,
}

impl Command {
    const fn new(name: &'static str, group: &'static str, action: Action) -> Self {
        Command {
            name,
            group,
            summary: "",
            required: &[],
            optional: &[],
            description: "",
            local_session: false,
            action,
        }
    }
    const fn summary(mut self, summary: &'static str, description: &'static str) -> Self {
        self.summary = summary;
        self.description = description;
        self
    }
    const fn required(mut self, required: &'static [&'static str]) -> Self {
        self.required = required;
        self
    }
    const fn optional(mut self, optional: &'static [&'static str]) -> Self {
        self.optional = optional;
        self
    }
    const fn local(mut self) -> Self {
        self.local_session = true;
        self
    }
}

const LIST_DESCRIPTION: &str = "Lists the records, one block per record. Any field=value filters the records; params= names the fields to print (params=all prints every field). With --minimal, prints the first field of params= (uuid by default) of every record, comma-separated.";
const VM_NAMED: &str = "The VM is named by uuid=, vm= (a uuid or a name) or name-label=.";
const HOST_LIST_DESCRIPTION: &str = "Lists the records, one block per record. Any field=value filters the records; params= names the fields to print (params=all prints every field). host-metrics-live, read from the host's metrics, says whether the pool sees the host as live; it can be printed and filtered on like a field. With --minimal, prints the first field of params= (uuid by default) of every record, comma-separated.";
/// What vm-param-set writes: the keys of `VM_PARAM_SET`, as help lists them.
const VM_SETTABLE: &[&str] = &[
    "name-label",
    "name-description",
    "order",
    "start-delay",
    "ha-restart-priority",
    "ha-always-run",
    "other-config:<key>",
];
/// What pool-param-set writes: the keys of `POOL_PARAM_SET`, as help lists them.
const POOL_SETTABLE: &[&str] = &[
    "name-label",
    "name-description",
    "ha-host-failures-to-tolerate",
    "ha-allow-overcommit",
    "other-config:<key>",
];

/// Every command, in the order `help` lists them: the one list the dispatcher and `help` use.
const COMMANDS: &[Command] = &[
    Command::new("vm-list", "VM", Action::List { class: "VM", columns: &["uuid", "name_label", "power_state"] })
        .optional(&["is-a-template", "params", "<field>=<value>"])
        .summary("List the VMs (or, with is-a-template=true, the templates)", LIST_DESCRIPTION),
    Command::new("vm-install", "VM", Action::VmInstall)
        .required(&["template", "new-name-label"])
        .summary("Make a VM from a template", "Clones the template named by template= (a uuid or a name) into a new VM called new-name-label= and prints the new VM's uuid."),
    Command::new("vm-uninstall", "VM", Action::VmUninstall)
        .optional(VM_SELECTORS)
        .summary("Destroy a VM", VM_NAMED),
    Command::new("vm-destroy", "VM", Action::VmUninstall)
        .optional(VM_SELECTORS)
        .summary("Destroy a VM (the same as vm-uninstall)", VM_NAMED),
    Command::new("vm-start", "VM", Action::VmPower(Power::Start))
        .optional(&["uuid", "vm", "name-label", "on", "--force"])
        .summary("Start a VM", "Starts the VM, on the host named by on= (a uuid or a name) when given. --force starts it even if its recorded state forbids it. The VM is named by uuid=, vm= (a uuid or a name) or name-label=."),
    Command::new("vm-shutdown", "VM", Action::VmPower(Power::Shutdown))
        .optional(&["uuid", "vm", "name-label", "--force"])
        .summary("Shut a VM down", "Asks the guest to shut down; --force stops it without asking. The VM is named by uuid=, vm= (a uuid or a name) or name-label=."),
    Command::new("vm-reboot", "VM", Action::VmPower(Power::Reboot))
        .optional(&["uuid", "vm", "name-label", "--force"])
        .summary("Reboot a VM", "Asks the guest to reboot; --force restarts it without asking. The VM is named by uuid=, vm= (a uuid or a name) or name-label=."),
    Command::new("vm-suspend", "VM", Action::VmPower(Power::Suspend))
        .optional(VM_SELECTORS)
        .summary("Suspend a VM", "Saves the running VM's state and stops it. The VM is named by uuid=, vm= (a uuid or a name) or name-label=."),
    Command::new("vm-resume", "VM", Action::VmPower(Power::Resume))
        .optional(&["uuid", "vm", "name-label", "--force"])
        .summary("Resume a suspended VM", "Restores a suspended VM and runs it. The VM is named by uuid=, vm= (a uuid or a name) or name-label=."),
    Command::new("vm-param-list", "VM", Action::VmParamList)
        .optional(VM_SELECTORS)
        .summary("Print every field of a VM", VM_NAMED),
    Command::new("vm-param-set", "VM", Action::ParamSet { class: "VM", set: &VM_PARAM_SET })
        .required(&["uuid"])
        .optional(VM_SETTABLE)
        .summary("Set parameters of a VM", "Writes each given parameter of the VM uuid=, in the order given, stopping at the first refusal. ha-restart-priority= is restart, best-effort or empty (not protected); it is written after the other parameters so that a VM being protected is checked against the failover plan with its new order and settings, and ha-always-run= (which must agree with the priority) after it. order= and start-delay= (seconds) are whole numbers; other-config:<key>=<value> replaces that key."),
    Command::new("vm-snapshot", "VM", Action::VmSnapshot { method: "VM.snapshot" })
        .required(&["new-name-label"])
        .optional(VM_SELECTORS)
        .summary("Snapshot a VM", "Makes a snapshot of the VM and its disks called new-name-label= and prints its uuid. The VM is named by uuid=, vm= (a uuid or a name) or name-label=."),
    Command::new("vm-checkpoint", "VM", Action::VmSnapshot { method: "VM.checkpoint" })
        .required(&["new-name-label"])
        .optional(VM_SELECTORS)
        .summary("Snapshot a running VM with its memory", "Makes a snapshot of the VM, its disks and its memory called new-name-label= and prints its uuid; the VM runs on. The VM is named by uuid=, vm= (a uuid or a name) or name-label=."),
    Command::new("snapshot-revert", "VM", Action::ObjectCall { class: "VM", method: "VM.revert", size: false })
        .required(&["uuid"])
        .summary("Bring a VM back to a snapshot", "Reverts the VM of the snapshot uuid= to it: the VM is stopped, gets the snapshot's disks and settings, and is left halted (suspended for a checkpoint)."),
    Command::new("vm-migrate", "VM", Action::VmMigrate)
        .required(&["host"])
        .optional(&["uuid", "vm", "name-label", "live"])
        .summary("Move a running VM to another host of the pool", "Migrates the running VM live to the host named by host= (a uuid or a name), drawing the task's progress; the VM keeps running throughout and never runs on two hosts at once. live=true is accepted for xe's sake (every migration here is live). The VM is named by uuid=, vm= (a uuid or a name) or name-label=."),
    Command::new("host-list", "Host", Action::List { class: "host", columns: &["uuid", "name_label", "name_description"] })
        .optional(LIST_PARAMS)
        .summary("List the hosts", HOST_LIST_DESCRIPTION),
    Command::new("host-param-list", "Host", Action::HostParamList)
        .required(&["uuid"])
        .summary("Print every field of a host", "The host is named by uuid=. Besides the host's own fields, host-metrics-live says whether the pool sees the host as live."),
    Command::new("host-disable", "Host", Action::HostCall { method: "host.disable", task: false })
        .required(&["uuid"])
        .summary("Stop new VMs from starting on a host", "Disables the host uuid=: no VM starts or arrives there, the first step of maintenance mode."),
    Command::new("host-enable", "Host", Action::HostCall { method: "host.enable", task: false })
        .required(&["uuid"])
        .summary("Let VMs start on a host again", "Enables the host uuid=, the last step of maintenance mode."),
    Command::new("host-evacuate", "Host", Action::HostCall { method: "host.evacuate", task: true })
        .required(&["uuid"])
        .summary("Move every running VM off a host", "Migrates every running VM of the host uuid= to the other hosts as placement allows, drawing the progress; refused before anything moves if a VM cannot go anywhere."),
    Command::new("host-reboot", "Host", Action::HostCall { method: "host.reboot", task: false })
        .required(&["uuid"])
        .summary("Reboot a disabled host", "Reboots the host uuid=, which must be disabled; VMs still running there go down with it. It rejoins the pool when it is back."),
    Command::new("host-shutdown", "Host", Action::HostCall { method: "host.shutdown", task: false })
        .required(&["uuid"])
        .summary("Shut a disabled host down", "Shuts the host uuid= down; it must be disabled, and VMs still running there go down with it."),
    Command::new("host-forget", "Host", Action::HostCall { method: "host.destroy", task: false })
        .required(&["uuid"])
        .summary("Remove a host that is gone for good", "Forgets the host uuid=, which must not be live and must have no running VMs (a dead host cannot be ejected)."),
    Command::new("host-emergency-ha-disable", "Host", Action::HostEmergencyHaDisable)
        .optional(&["--force"])
        .local()
        .summary("Turn HA off on this host when the pool cannot", "Run against a host (coordinator or member) that must stop taking part in HA while pool-ha-disable cannot reach the pool; logs in with a session of that host only. Without --force the change is soft: it lasts until the host restarts or HA is changed again. With --force HA stays off on this host."),
    Command::new("host-call-plugin", "Host", Action::HostCallPlugin)
        .required(&["host-uuid", "plugin", "fn"])
        .optional(&["args:<key>"])
        .summary("Run a plugin on a host", "Runs the executable plugin= of the plugin directory of host host-uuid= with the function fn= and the arguments args:<key>=<value>, and prints what it wrote."),
    Command::new("pool-list", "Pool", Action::List { class: "pool", columns: &["uuid", "name_label", "name_description", "master", "default_SR"] })
        .optional(LIST_PARAMS)
        .summary("List the pool", "Lists the records, one block per record. Any field=value filters the records; params= names the fields to print (params=all prints every field), such as ha-enabled, ha-configuration, ha-statefiles, ha-host-failures-to-tolerate, ha-plan-exists-for, ha-allow-overcommit and ha-overcommitted. master and the default SRs print as uuids. With --minimal, prints the first field of params= (uuid by default) of every record, comma-separated."),
    Command::new("pool-param-set", "Pool", Action::ParamSet { class: "pool", set: &POOL_PARAM_SET })
        .required(&["uuid"])
        .optional(POOL_SETTABLE)
        .summary("Set parameters of the pool", "Writes each given parameter of the pool uuid=, in the order given, stopping at the first refusal. ha-host-failures-to-tolerate= is a whole number, checked against the failover plan while HA is on unless ha-allow-overcommit= is true; other-config:<key>=<value> replaces that key."),
    Command::new("pool-ha-enable", "Pool", Action::PoolHaEnable)
        .required(&["heartbeat-sr-uuids"])
        .optional(&["ha-config:timeout", "ha-config:<key>"])
        .summary("Turn high availability on", "Turns HA on for the pool with its statefile on the shared SRs heartbeat-sr-uuids= (comma-separated uuids). ha-config:timeout= is the HA timeout in whole seconds: how long a host may go unheard before the others count it as failed. Any other ha-config:<key>=<value> goes into the pool's HA configuration as given. Waits until every host is armed, which can take minutes."),
    Command::new("pool-ha-disable", "Pool", Action::PoolHaDisable)
        .summary("Turn high availability off", "Disarms HA on every host of the pool: no host fences itself and no VM is restarted for failover any more."),
    Command::new("pool-ha-compute-max-host-failures-to-tolerate", "Pool", Action::PoolHaComputeMaxFailures)
        .summary("Print how many host failures the pool can tolerate", "Prints the largest number of host failures after which every protected VM can still be restarted, computed from the hosts and VMs as they are now."),
    Command::new("pool-join", "Pool", Action::PoolJoin)
        .required(&["master-address", "master-username", "master-password"])
        .summary("Make this host a member of another pool", "Asks the host this command talks to to join the pool whose coordinator is at master-address=, logging in there with master-username= and master-password=."),
    Command::new("pool-eject", "Pool", Action::PoolHost { method: "pool.eject" })
        .required(&["host-uuid"])
        .summary("Remove a host from the pool", "Ejects the member host-uuid= from the pool; it starts over as a pool of its own."),
    Command::new("pool-designate-new-master", "Pool", Action::PoolHost { method: "pool.designate_new_master" })
        .required(&["host-uuid"])
        .summary("Hand the coordinator role to another host", "Makes the member host-uuid= the pool's coordinator, in an orderly handover."),
    Command::new("pool-emergency-transition-to-master", "Pool", Action::EmergencyTransitionToMaster)
        .local()
        .summary("Make this member the coordinator when the old one is gone", "Run against a member whose coordinator is unreachable; logs in with a session of that host only."),
    Command::new("pool-emergency-reset-master", "Pool", Action::EmergencyResetMaster)
        .required(&["master-address"])
        .local()
        .summary("Point this member at a new coordinator", "Tells a member that the coordinator is now at master-address=; logs in with a session of that host only."),
    Command::new("pool-recover-slaves", "Pool", Action::RecoverSlaves)
        .local()
        .summary("Point the members at this new coordinator", "Run on a host after pool-emergency-transition-to-master; prints the members that were told."),
    Command::new("sr-list", "Storage", Action::List { class: "SR", columns: &["uuid", "name_label", "name_description", "host", "type", "content_type"] })
        .optional(LIST_PARAMS)
        .summary("List the storage repositories", LIST_DESCRIPTION),
    Command::new("sr-create", "Storage", Action::SrCreate)
        .required(&["name-label", "type", "device-config:location"])
        .optional(&["host-uuid", "name-description", "content-type", "shared", "physical-size", "sm-config:<key>"])
        .summary("Make a storage repository", "Makes an SR of type= dir (a directory of one host) or shared-dir (a directory every host mounts, used by this pool only) in the directory device-config:location=, on the host host-uuid= (the coordinator by default), or with shared=true on every host; plugs it and prints its uuid."),
    Command::new("sr-scan", "Storage", Action::ObjectCall { class: "SR", method: "SR.scan", size: false })
        .required(&["uuid"])
        .summary("Bring an SR's records in line with its storage", "Records the disks found on the SR uuid= that the pool did not know, forgets those that are gone, and refreshes the sizes."),
    Command::new("sr-destroy", "Storage", Action::ObjectCall { class: "SR", method: "SR.destroy", size: false })
        .required(&["uuid"])
        .summary("Destroy an SR and its storage", "Removes the SR uuid= and its directory; every PBD must be unplugged and no disk left."),
    Command::new("sr-forget", "Storage", Action::ObjectCall { class: "SR", method: "SR.forget", size: false })
        .required(&["uuid"])
        .summary("Forget an SR, keeping its data", "Removes the records of the SR uuid=, its PBDs and disks; the data stays. Every PBD must be unplugged."),
    Command::new("pbd-plug", "Storage", Action::ObjectCall { class: "PBD", method: "PBD.plug", size: false })
        .required(&["uuid"])
        .summary("Attach an SR to its host", "Attaches the SR of the PBD uuid= on the PBD's host."),
    Command::new("pbd-unplug", "Storage", Action::ObjectCall { class: "PBD", method: "PBD.unplug", size: false })
        .required(&["uuid"])
        .summary("Detach an SR from its host", "Detaches the SR of the PBD uuid= from the PBD's host; refused while a VM running there uses it."),
    Command::new("vdi-snapshot", "Storage", Action::ObjectCall { class: "VDI", method: "VDI.snapshot", size: false })
        .required(&["uuid"])
        .summary("Snapshot a virtual disk", "Makes a snapshot of the disk uuid= on its SR and prints its uuid."),
    Command::new("vdi-clone", "Storage", Action::ObjectCall { class: "VDI", method: "VDI.clone", size: false })
        .required(&["uuid"])
        .summary("Copy a virtual disk on its SR", "Makes an independent copy of the disk uuid= on its SR and prints its uuid."),
    Command::new("vdi-resize", "Storage", Action::ObjectCall { class: "VDI", method: "VDI.resize", size: true })
        .required(&["uuid", "disk-size"])
        .summary("Grow a virtual disk", "Grows the disk uuid= to disk-size= bytes."),
    Command::new("vdi-destroy", "Storage", Action::ObjectCall { class: "VDI", method: "VDI.destroy", size: false })
        .required(&["uuid"])
        .summary("Destroy a virtual disk", "Removes the disk uuid= and its data; refused while a VM has it attached."),
    Command::new("vdi-list", "Storage", Action::List { class: "VDI", columns: &["uuid", "name_label", "name_description", "virtual_size", "sr_uuid"] })
        .optional(LIST_PARAMS)
        .summary("List the virtual disks", LIST_DESCRIPTION),
    Command::new("network-list", "Network", Action::List { class: "network", columns: &["uuid", "name_label", "name_description", "bridge"] })
        .optional(LIST_PARAMS)
        .summary("List the networks", LIST_DESCRIPTION),
    Command::new("task-list", "Other", Action::List { class: "task", columns: &["uuid", "name_label", "name_description", "status", "progress"] })
        .optional(LIST_PARAMS)
        .summary("List the tasks", LIST_DESCRIPTION),
    Command::new("message-list", "Other", Action::List { class: "message", columns: &["uuid", "name", "priority", "class", "obj_uuid", "timestamp", "body"] })
        .optional(LIST_PARAMS)
        .summary("List the messages", LIST_DESCRIPTION),
    Command::new("event-wait", "Other", Action::EventWait)
        .required(&["class"])
        .optional(&["<field>=<value>"])
        .summary("Wait until an object matches conditions", "Blocks until an object of class= (such as vm or host) has every given field=value."),
];

/// The command named `name`, or an error that says where the list is.
fn lookup(name: &str) -> anyhow::Result<&'static Command> {
    COMMANDS
        .iter()
        .find(|c| c.name == name)
        .with_context(|| format!("unknown command {name}; `xenpool help` lists the commands"))
}

/// `xenpool help`: the commands by group, each with its one-line summary.
fn help_list() -> String {
    let width = COMMANDS.iter().map(|c| c.name.len()).max().unwrap_or(0);
    let mut out = format!("{USAGE}\n");
    let mut groups: Vec<&str> = Vec::new();
    for c in COMMANDS {
        if !groups.contains(&c.group) {
            groups.push(c.group);
        }
    }
    for group in groups {
        out.push_str(&format!("\n{group} commands:\n"));
        for c in COMMANDS.iter().filter(|c| c.group == group) {
            out.push_str(&format!("  {:<width$}  {}\n", c.name, c.summary));
        }
    }
    out.push_str("\n`xenpool help COMMAND` describes a command and its parameters.\n");
    out
}

/// `xenpool help COMMAND`, laid out as `xe help` does.
fn help_command(c: &Command) -> String {
    format!(
        "command name            : {}\n        reqd params     : {}\n        optional params : {}\n        description     : {}. {}\n",
        c.name,
        c.required.join(", "),
        c.optional.join(", "),
        c.summary,
        c.description
    )
}

fn help(topic: Option<&str>) -> anyhow::Result<String> {
    match topic {
        None => Ok(help_list()),
        Some(name) => lookup(name).map(help_command),
    }
}

fn parse_args(mut it: impl Iterator<Item = String>) -> anyhow::Result<Options> {
    let mut o = Options {
        server: "127.0.0.1".into(),
        port: None,
        https: false,
        user: "root".into(),
        password: None,
        minimal: false,
        command: String::new(),
        args: BTreeMap::new(),
        pairs: Vec::new(),
        flags: Vec::new(),
        positional: Vec::new(),
    };
    while let Some(a) = it.next() {
        let mut value = |name: &str| it.next().with_context(|| format!("{name} needs a value"));
        match a.as_str() {
            "-s" => o.server = value("-s")?,
            "-p" => o.port = Some(value("-p")?.parse().context("-p: not a port")?),
            "-u" => o.user = value("-u")?,
            "-pw" => o.password = Some(value("-pw")?),
            "-pwf" => {
                let path = value("-pwf")?;
                let text = std::fs::read_to_string(&path)
                    .with_context(|| format!("cannot read {path}"))?;
                o.password = Some(text.lines().next().unwrap_or("").to_string());
            }
            "--https" => o.https = true,
            "--minimal" => o.minimal = true,
            "-h" | "--help" => {
                print!("{}", help_list());
                std::process::exit(0);
            }
            s if s.starts_with("--") => o.flags.push(s.trim_start_matches("--").to_string()),
            s if o.command.is_empty() && !s.contains('=') => o.command = s.to_string(),
            s => match s.split_once('=') {
                Some((k, v)) => {
                    o.args.insert(k.to_string(), v.to_string());
                    o.pairs.push((k.to_string(), v.to_string()));
                }
                None => o.positional.push(s.to_string()),
            },
        }
    }
    if o.command.is_empty() {
        bail!("{USAGE}");
    }
    let most = if o.command == "help" { 1 } else { 0 };
    if let Some(extra) = o.positional.get(most) {
        bail!("unexpected argument {extra}\n{USAGE}");
    }
    Ok(o)
}

struct Session {
    client: Client,
    session: Value,
}

impl Session {
    async fn call(&self, method: &str, mut params: Vec<Value>) -> Result<Value, RpcError> {
        params.insert(0, self.session.clone());
        self.client.call(method, params).await
    }

    async fn records(&self, class: &str) -> anyhow::Result<Vec<(String, Vec<(String, Value)>)>> {
        let all = self
            .call(&format!("{class}.get_all_records"), vec![])
            .await?;
        let Value::Struct(items) = all else {
            bail!("unexpected answer to {class}.get_all_records");
        };
        Ok(items
            .into_iter()
            .filter_map(|(r, v)| match v {
                Value::Struct(fields) => Some((r, fields)),
                _ => None,
            })
            .collect())
    }

    async fn find_vm(&self, args: &BTreeMap<String, String>) -> anyhow::Result<String> {
        if let Some(uuid) = args.get("uuid").or_else(|| args.get("vm")) {
            if let Ok(Value::String(r)) = self
                .call("VM.get_by_uuid", vec![Value::String(uuid.clone())])
                .await
            {
                return Ok(r);
            }
            if let Value::Array(refs) = self
                .call("VM.get_by_name_label", vec![Value::String(uuid.clone())])
                .await?
            {
                if let [Value::String(r)] = refs.as_slice() {
                    return Ok(r.clone());
                }
            }
            bail!("no VM with uuid or name {uuid}");
        }
        if let Some(name) = args.get("name-label") {
            if let Value::Array(refs) = self
                .call("VM.get_by_name_label", vec![Value::String(name.clone())])
                .await?
            {
                return match refs.as_slice() {
                    [Value::String(r)] => Ok(r.clone()),
                    [] => bail!("no VM named {name}"),
                    _ => bail!("more than one VM named {name}; give uuid="),
                };
            }
        }
        bail!("name a VM with uuid= or name-label=")
    }

    /// The host named by `name`: a uuid, else a name label.
    async fn find_host(&self, name: &str) -> anyhow::Result<Value> {
        if let Ok(h) = self
            .call("host.get_by_uuid", vec![Value::String(name.to_string())])
            .await
        {
            return Ok(h);
        }
        match self
            .call(
                "host.get_by_name_label",
                vec![Value::String(name.to_string())],
            )
            .await?
        {
            Value::Array(mut a) if a.len() == 1 => Ok(a.remove(0)),
            Value::Array(a) if a.is_empty() => bail!("no host {name}"),
            _ => bail!("more than one host named {name}; give its uuid"),
        }
    }

    /// Runs an `Async.` call and waits for its task, drawing progress on stderr.
    async fn run_task(&self, method: &str, params: Vec<Value>) -> anyhow::Result<Value> {
        let task = self.call(&format!("Async.{method}"), params).await?;
        let task_ref = wire_text(&task);
        let mut last = -1i64;
        let tty = std::io::IsTerminal::is_terminal(&std::io::stderr());
        loop {
            let rec = self
                .call("task.get_record", vec![Value::String(task_ref.clone())])
                .await?;
            let Value::Struct(fields) = rec else {
                bail!("unexpected task record");
            };
            let get = |k: &str| {
                fields
                    .iter()
                    .find(|(n, _)| n == k)
                    .map(|(_, v)| v.clone())
                    .unwrap_or(Value::Nil)
            };
            let status = wire_text(&get("status"));
            let progress = get("progress").as_f64().unwrap_or(0.0);
            let pct = (progress * 100.0).round() as i64;
            if tty && pct != last {
                let filled = (pct / 5) as usize;
                eprint!(
                    "\r[{}{}] {pct:3}%",
                    "#".repeat(filled),
                    " ".repeat(20 - filled.min(20))
                );
                let _ = std::io::stderr().flush();
                last = pct;
            }
            match status.as_str() {
                "pending" | "cancelling" => tokio::time::sleep(Duration::from_millis(100)).await,
                "success" => {
                    if tty {
                        eprintln!();
                    }
                    let _ = self
                        .call("task.destroy", vec![Value::String(task_ref.clone())])
                        .await;
                    return Ok(get("result"));
                }
                _ => {
                    if tty {
                        eprintln!();
                    }
                    let info = match get("error_info") {
                        Value::Array(items) => items.iter().map(wire_text).collect::<Vec<_>>(),
                        _ => vec![],
                    };
                    let _ = self
                        .call("task.destroy", vec![Value::String(task_ref.clone())])
                        .await;
                    // The task's failure is the call's: printed as any XenAPI error is.
                    return Err(RpcError::Api(XenApiError::from_description(info)).into());
                }
            }
        }
    }
}

fn matches_filters(fields: &[(String, Value)], args: &BTreeMap<String, String>) -> bool {
    args.iter()
        .filter(|(k, _)| k.as_str() != "params")
        .all(|(k, want)| {
            let name = field_name(k);
            fields
                .iter()
                .find(|(n, _)| n.eq_ignore_ascii_case(&name))
                .is_some_and(|(_, v)| wire_text(v).eq_ignore_ascii_case(want))
        })
}

async fn run(o: Options) -> anyhow::Result<()> {
    let spec = lookup(&o.command)?;
    for p in spec.required {
        if !o.args.contains_key(*p) {
            bail!("{} needs {p}=; see `xenpool help {}`", spec.name, spec.name);
        }
    }
    check_arguments(&o, spec.action)?;
    let scheme = if o.https { "https" } else { "http" };
    let port = o.port.unwrap_or(if o.https { 8443 } else { 8080 });
    let url = format!("{scheme}://{}:{port}/", o.server);
    let client = Client::builder(&url)
        .accept_invalid_certs(true)
        .originator("xenpool-cli")
        .build()?;
    let password = o
        .password
        .clone()
        .context("give a password with -pw or -pwf")?;
    // Emergency commands go to a member whose coordinator may be gone: a local session.
    let session = if spec.local_session {
        let v = client
            .call(
                "session.slave_local_login_with_password",
                vec![
                    Value::String(o.user.clone()),
                    Value::String(password.clone()),
                ],
            )
            .await?;
        wire_text(&v)
    } else {
        client.login_with_password(&o.user, &password).await?
    };
    let s = Session {
        client,
        session: Value::String(session),
    };
    let result = command(&s, &o, spec.action).await;
    let _ = s.client.logout().await;
    result
}

/// Refuses a command line its command cannot send, before connecting to anything.
fn check_arguments(o: &Options, action: Action) -> anyhow::Result<()> {
    match action {
        Action::ParamSet { set, .. } => set.plan(&o.pairs).map(drop),
        Action::PoolHaEnable => params::ha_enable(&o.pairs).map(drop),
        _ => Ok(()),
    }
}

/// The computed column of host records: whether the host's metrics say it is live.
const HOST_METRICS_LIVE: &str = "host_metrics_live";

/// Reference fields xe prints as the uuid of the object they point at: (class, field,
/// class pointed at).
const REF_COLUMNS: &[(&str, &str, &str)] = &[
    ("pool", "master", "host"),
    ("pool", "default_SR", "SR"),
    ("pool", "suspend_image_SR", "SR"),
    ("pool", "crash_dump_SR", "SR"),
];

/// What xe prints for a reference to nothing.
const NOT_IN_DATABASE: &str = "<not in database>";

fn is_null_ref(r: &str) -> bool {
    r.is_empty() || r == "OpaqueRef:NULL"
}

/// Whether the command line prints or filters on the field `name` (datamodel spelling),
/// so that a column that costs a call per record is computed only when asked for.
fn wants_column(o: &Options, name: &str) -> bool {
    let asked = |k: &str| field_name(k.trim()).eq_ignore_ascii_case(name);
    let printed = o
        .args
        .get("params")
        .is_some_and(|p| p == "all" || p.split(',').any(asked));
    printed || o.args.keys().any(|k| asked(k))
}

/// Appends `host_metrics_live` to a host record, from `host_metrics.get_live` of its
/// metrics (false when it has none, as xe shows it).
async fn add_host_metrics_live(
    s: &Session,
    fields: &mut Vec<(String, Value)>,
) -> anyhow::Result<()> {
    let metrics = fields
        .iter()
        .find(|(n, _)| n == "metrics")
        .map(|(_, v)| wire_text(v))
        .unwrap_or_default();
    let live = if is_null_ref(&metrics) {
        false
    } else {
        match s
            .call("host_metrics.get_live", vec![Value::String(metrics)])
            .await
        {
            Ok(v) => wire_text(&v).eq_ignore_ascii_case("true"),
            Err(e) if e.api().is_some_and(|a| a.code == "HANDLE_INVALID") => false,
            Err(e) => return Err(e.into()),
        }
    };
    fields.retain(|(n, _)| n != HOST_METRICS_LIVE);
    fields.push((HOST_METRICS_LIVE.to_string(), Value::Bool(live)));
    Ok(())
}

/// Replaces the references of `REF_COLUMNS` in a record of `class` by uuids.
async fn refs_to_uuids(
    s: &Session,
    class: &str,
    fields: &mut [(String, Value)],
) -> anyhow::Result<()> {
    for (name, value) in fields.iter_mut() {
        let Some((_, _, target)) = REF_COLUMNS
            .iter()
            .find(|(c, f, _)| *c == class && f == name)
        else {
            continue;
        };
        let r = wire_text(value);
        let uuid = if is_null_ref(&r) {
            NOT_IN_DATABASE.to_string()
        } else {
            match s
                .call(&format!("{target}.get_uuid"), vec![Value::String(r)])
                .await
            {
                Ok(v) => wire_text(&v),
                Err(e) if e.api().is_some_and(|a| a.code == "HANDLE_INVALID") => {
                    NOT_IN_DATABASE.to_string()
                }
                Err(e) => return Err(e.into()),
            }
        };
        *value = Value::String(uuid);
    }
    Ok(())
}

/// Prints the records of `class` that match the filters of the command line.
async fn list(s: &Session, o: &Options, class: &str, defaults: &[&str]) -> anyhow::Result<()> {
    let mut rows = s.records(class).await?;
    let live = class == "host" && wants_column(o, HOST_METRICS_LIVE);
    for (_, fields) in rows.iter_mut() {
        if live {
            add_host_metrics_live(s, fields).await?;
        }
        refs_to_uuids(s, class, fields).await?;
    }
    if class == "VM" {
        let want_templates = o.args.get("is-a-template").is_some_and(|v| v == "true");
        rows.retain(|(_, f)| {
            let t = f
                .iter()
                .any(|(n, v)| n == "is_a_template" && v.as_bool() == Some(true));
            t == want_templates
        });
    }
    rows.retain(|(_, f)| {
        matches_filters(
            f,
            &o.args
                .iter()
                .filter(|(k, _)| k.as_str() != "is-a-template")
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
        )
    });
    rows.sort_by_key(|r| format::uuid_of(&r.1));
    let params = o.args.get("params").map(String::as_str);
    if o.minimal {
        // xe prints the first requested field of every record, comma-separated.
        let field = params
            .and_then(|p| p.split(',').next())
            .filter(|p| *p != "all")
            .map(field_name)
            .unwrap_or_else(|| "uuid".to_string());
        let values: Vec<String> = rows
            .iter()
            .map(|(_, f)| {
                f.iter()
                    .find(|(n, _)| n.eq_ignore_ascii_case(&field))
                    .map(|(n, v)| format::display_value(n, v))
                    .unwrap_or_default()
            })
            .collect();
        println!("{}", values.join(","));
        return Ok(());
    }
    print_records(&rows, defaults, params);
    Ok(())
}

async fn command(s: &Session, o: &Options, action: Action) -> anyhow::Result<()> {
    match action {
        Action::List { class, columns } => list(s, o, class, columns).await,
        Action::VmPower(power) => {
            let vm = s.find_vm(&o.args).await?;
            let force = o.flags.iter().any(|f| f == "force");
            let (method, params) = match power {
                Power::Start => match o.args.get("on") {
                    Some(host) => {
                        let h = s
                            .call("host.get_by_uuid", vec![Value::String(host.clone())])
                            .await;
                        let h = match h {
                            Ok(v) => v,
                            Err(_) => match s
                                .call("host.get_by_name_label", vec![Value::String(host.clone())])
                                .await?
                            {
                                Value::Array(mut a) if a.len() == 1 => a.remove(0),
                                _ => bail!("no host {host}"),
                            },
                        };
                        (
                            "VM.start_on",
                            vec![Value::String(vm), h, Value::Bool(false), Value::Bool(force)],
                        )
                    }
                    None => (
                        "VM.start",
                        vec![Value::String(vm), Value::Bool(false), Value::Bool(force)],
                    ),
                },
                Power::Shutdown if force => ("VM.hard_shutdown", vec![Value::String(vm)]),
                Power::Shutdown => ("VM.clean_shutdown", vec![Value::String(vm)]),
                Power::Reboot if force => ("VM.hard_reboot", vec![Value::String(vm)]),
                Power::Reboot => ("VM.clean_reboot", vec![Value::String(vm)]),
                Power::Suspend => ("VM.suspend", vec![Value::String(vm)]),
                Power::Resume => (
                    "VM.resume",
                    vec![Value::String(vm), Value::Bool(false), Value::Bool(force)],
                ),
            };
            s.run_task(method, params).await?;
            Ok(())
        }
        Action::VmInstall => {
            let template = o
                .args
                .get("template")
                .context("vm-install needs template=")?;
            let name = o
                .args
                .get("new-name-label")
                .context("vm-install needs new-name-label=")?;
            let t = match s
                .call("VM.get_by_uuid", vec![Value::String(template.clone())])
                .await
            {
                Ok(v) => v,
                Err(_) => match s
                    .call(
                        "VM.get_by_name_label",
                        vec![Value::String(template.clone())],
                    )
                    .await?
                {
                    Value::Array(mut a) if !a.is_empty() => a.remove(0),
                    _ => bail!("no template {template}"),
                },
            };
            let new = s
                .run_task("VM.clone", vec![t, Value::String(name.clone())])
                .await?;
            let new_ref = format::task_result_ref(&new);
            s.call(
                "VM.set_is_a_template",
                vec![Value::String(new_ref.clone()), Value::Bool(false)],
            )
            .await?;
            let uuid = s.call("VM.get_uuid", vec![Value::String(new_ref)]).await?;
            println!("{}", wire_text(&uuid));
            Ok(())
        }
        Action::VmUninstall => {
            let vm = s.find_vm(&o.args).await?;
            s.call("VM.destroy", vec![Value::String(vm)]).await?;
            Ok(())
        }
        Action::VmParamList => {
            let vm = s.find_vm(&o.args).await?;
            let rec = s
                .call("VM.get_record", vec![Value::String(vm.clone())])
                .await?;
            if let Value::Struct(fields) = rec {
                print_records(&[(vm, fields)], &[], Some("all"));
            }
            Ok(())
        }
        Action::EventWait => event_wait(s, &o.args).await,
        Action::PoolJoin => {
            let get = |k: &str| {
                o.args
                    .get(k)
                    .cloned()
                    .with_context(|| format!("pool-join needs {k}="))
            };
            s.call(
                "pool.join",
                vec![
                    Value::String(get("master-address")?),
                    Value::String(get("master-username")?),
                    Value::String(get("master-password")?),
                ],
            )
            .await?;
            Ok(())
        }
        Action::VmMigrate => {
            let vm = s.find_vm(&o.args).await?;
            let host = o.args.get("host").context("vm-migrate needs host=")?;
            let host = s.find_host(host).await?;
            let options = Value::Struct(vec![("live".into(), Value::String("true".into()))]);
            s.run_task("VM.pool_migrate", vec![Value::String(vm), host, options])
                .await?;
            Ok(())
        }
        Action::HostCall { method, task } => {
            let uuid = o.args.get("uuid").context("give uuid=")?;
            let host = s.find_host(uuid).await?;
            if task {
                s.run_task(method, vec![host]).await?;
            } else {
                s.call(method, vec![host]).await?;
            }
            Ok(())
        }
        Action::VmSnapshot { method } => {
            let vm = s.find_vm(&o.args).await?;
            let name = o
                .args
                .get("new-name-label")
                .context("give new-name-label=")?;
            let snap = s
                .run_task(method, vec![Value::String(vm), Value::String(name.clone())])
                .await?;
            let uuid = s
                .call(
                    "VM.get_uuid",
                    vec![Value::String(format::task_result_ref(&snap))],
                )
                .await?;
            println!("{}", wire_text(&uuid));
            Ok(())
        }
        Action::SrCreate => {
            let arg = |k: &str| o.args.get(k).cloned().unwrap_or_default();
            let host = match o.args.get("host-uuid") {
                Some(h) => s.find_host(h).await?,
                None => {
                    let pools = s.call("pool.get_all", vec![]).await?;
                    let Value::Array(pools) = pools else {
                        bail!("unexpected answer to pool.get_all");
                    };
                    let pool = pools.into_iter().next().context("no pool")?;
                    s.call("pool.get_master", vec![pool]).await?
                }
            };
            let prefixed = |prefix: &str| {
                Value::Struct(
                    o.pairs
                        .iter()
                        .filter_map(|(k, v)| {
                            k.strip_prefix(prefix)
                                .map(|k| (k.to_string(), Value::String(v.clone())))
                        })
                        .collect(),
                )
            };
            let size = o.args.get("physical-size").map_or("0", String::as_str);
            let content_type = o.args.get("content-type").map_or("user", String::as_str);
            let sr = s
                .call(
                    "SR.create",
                    vec![
                        host,
                        prefixed("device-config:"),
                        Value::String(size.to_string()),
                        Value::String(arg("name-label")),
                        Value::String(arg("name-description")),
                        Value::String(arg("type")),
                        Value::String(content_type.to_string()),
                        Value::Bool(arg("shared") == "true"),
                        prefixed("sm-config:"),
                    ],
                )
                .await?;
            let uuid = s.call("SR.get_uuid", vec![sr]).await?;
            println!("{}", wire_text(&uuid));
            Ok(())
        }
        Action::ObjectCall {
            class,
            method,
            size,
        } => {
            let uuid = o.args.get("uuid").context("give uuid=")?;
            let object = s
                .call(
                    &format!("{class}.get_by_uuid"),
                    vec![Value::String(uuid.clone())],
                )
                .await?;
            let mut params = vec![object];
            if size {
                let bytes = o.args.get("disk-size").context("give disk-size=")?;
                let bytes: u64 = bytes.parse().context("disk-size= is a number of bytes")?;
                params.push(Value::String(bytes.to_string()));
            } else if matches!(method, "VDI.snapshot" | "VDI.clone") {
                params.push(Value::Struct(Vec::new()));
            }
            let made = s.call(method, params).await?;
            if let Value::String(r) = &made {
                if r.starts_with("OpaqueRef:") {
                    let uuid = s
                        .call(&format!("{class}.get_uuid"), vec![made.clone()])
                        .await?;
                    println!("{}", wire_text(&uuid));
                }
            }
            Ok(())
        }
        Action::PoolHost { method } => {
            let uuid = o.args.get("host-uuid").context("give host-uuid=")?;
            let host = s
                .call("host.get_by_uuid", vec![Value::String(uuid.clone())])
                .await?;
            s.call(method, vec![host]).await?;
            Ok(())
        }
        Action::EmergencyTransitionToMaster => {
            s.call("pool.emergency_transition_to_master", vec![])
                .await?;
            Ok(())
        }
        Action::EmergencyResetMaster => {
            let addr = o
                .args
                .get("master-address")
                .context("give master-address=")?;
            s.call(
                "pool.emergency_reset_master",
                vec![Value::String(addr.clone())],
            )
            .await?;
            Ok(())
        }
        Action::RecoverSlaves => {
            let v = s.call("pool.recover_slaves", vec![]).await?;
            println!("{}", wire_text(&v));
            Ok(())
        }
        Action::HostParamList => {
            let uuid = o.args.get("uuid").context("host-param-list needs uuid=")?;
            let host = s
                .call("host.get_by_uuid", vec![Value::String(uuid.clone())])
                .await?;
            let host = wire_text(&host);
            let rec = s
                .call("host.get_record", vec![Value::String(host.clone())])
                .await?;
            let Value::Struct(mut fields) = rec else {
                bail!("unexpected answer to host.get_record");
            };
            add_host_metrics_live(s, &mut fields).await?;
            print_records(&[(host, fields)], &[], Some("all"));
            Ok(())
        }
        Action::ParamSet { class, set } => {
            let calls = set.plan(&o.pairs)?;
            let uuid = o
                .args
                .get(set.selector)
                .with_context(|| format!("{} needs {}=", set.command, set.selector))?;
            let object = s
                .call(
                    &format!("{class}.get_by_uuid"),
                    vec![Value::String(uuid.clone())],
                )
                .await?;
            for c in calls {
                let mut params = vec![object.clone()];
                params.extend(c.args);
                s.call(&format!("{class}.{}", c.message), params).await?;
            }
            Ok(())
        }
        Action::PoolHaEnable => {
            let ha = params::ha_enable(&o.pairs)?;
            let mut srs = Vec::with_capacity(ha.sr_uuids.len());
            for uuid in ha.sr_uuids {
                srs.push(s.call("SR.get_by_uuid", vec![Value::String(uuid)]).await?);
            }
            let config = Value::Struct(
                ha.config
                    .into_iter()
                    .map(|(k, v)| (k, Value::String(v)))
                    .collect(),
            );
            // Arming every host takes longer than a call should be held open: wait on
            // the task instead.
            s.run_task("pool.enable_ha", vec![Value::Array(srs), config])
                .await?;
            Ok(())
        }
        Action::PoolHaDisable => {
            s.call("pool.disable_ha", vec![]).await?;
            Ok(())
        }
        Action::PoolHaComputeMaxFailures => {
            let n = s
                .call("pool.ha_compute_max_host_failures_to_tolerate", vec![])
                .await?;
            println!("{}", wire_text(&n));
            Ok(())
        }
        Action::HostCallPlugin => {
            let get = |k: &str| o.args.get(k).with_context(|| format!("give {k}="));
            let host = s
                .call(
                    "host.get_by_uuid",
                    vec![Value::String(get("host-uuid")?.clone())],
                )
                .await?;
            let args = o
                .pairs
                .iter()
                .filter_map(|(k, v)| {
                    k.strip_prefix("args:")
                        .map(|k| (k.to_string(), Value::String(v.clone())))
                })
                .collect();
            let out = s
                .call(
                    "host.call_plugin",
                    vec![
                        host,
                        Value::String(get("plugin")?.clone()),
                        Value::String(get("fn")?.clone()),
                        Value::Struct(args),
                    ],
                )
                .await?;
            println!("{}", wire_text(&out));
            Ok(())
        }
        Action::HostEmergencyHaDisable => {
            let soft = !o.flags.iter().any(|f| f == "force");
            s.call("host.emergency_ha_disable", vec![Value::Bool(soft)])
                .await?;
            Ok(())
        }
    }
}

/// Waits until an object of `class=` satisfies every other `key=value`.
async fn event_wait(s: &Session, args: &BTreeMap<String, String>) -> anyhow::Result<()> {
    let class = args
        .get("class")
        .context("event-wait needs class=")?
        .to_string();
    let conditions: BTreeMap<String, String> = args
        .iter()
        .filter(|(k, _)| k.as_str() != "class")
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    let mut token = String::new();
    loop {
        let result = s
            .call(
                "event.from",
                vec![
                    Value::Array(vec![Value::String(class.clone())]),
                    Value::String(token.clone()),
                    Value::Double(30.0),
                ],
            )
            .await?;
        let Value::Struct(fields) = result else {
            bail!("unexpected event.from answer");
        };
        for (name, value) in &fields {
            match (name.as_str(), value) {
                ("token", Value::String(t)) => token = t.clone(),
                ("events", Value::Array(events)) => {
                    for ev in events {
                        let Value::Struct(ev) = ev else { continue };
                        let snapshot = ev.iter().find(|(n, _)| n == "snapshot");
                        if let Some((_, Value::Struct(snap))) = snapshot {
                            if matches_filters(snap, &conditions) {
                                return Ok(());
                            }
                        }
                    }
                }
                _ => {}
            }
        }
    }
}

fn main() {
    let result = parse_args(std::env::args().skip(1)).and_then(|o| {
        // Help needs no server, so it works before the password is known.
        if o.command == "help" {
            print!("{}", help(o.positional.first().map(String::as_str))?);
            return Ok(());
        }
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        rt.block_on(run(o))
    });
    if let Err(e) = result {
        match e.downcast_ref::<RpcError>().and_then(RpcError::api) {
            Some(api) => {
                eprintln!("{}", api.description().join("\n"));
            }
            None => eprintln!("{e:#}"),
        }
        std::process::exit(1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(line: &str) -> impl Iterator<Item = String> + '_ {
        line.split_whitespace().map(String::from)
    }

    #[test]
    fn command_names_are_unique_and_described() {
        for (i, c) in COMMANDS.iter().enumerate() {
            assert!(
                COMMANDS[..i].iter().all(|d| d.name != c.name),
                "{} twice",
                c.name
            );
            assert!(!c.summary.is_empty(), "{} has no summary", c.name);
            assert!(!c.description.is_empty(), "{} has no description", c.name);
            assert!(!c.group.is_empty(), "{} has no group", c.name);
            assert!(
                c.required.iter().all(|p| !c.optional.contains(p)),
                "{} lists a parameter as both required and optional",
                c.name
            );
        }
    }

    #[test]
    fn help_lists_every_command_with_its_summary() {
        let text = help(None).unwrap();
        for c in COMMANDS {
            let line = text
                .lines()
                .find(|l| l.split_whitespace().next() == Some(c.name))
                .unwrap_or_else(|| panic!("{} missing from help", c.name));
            assert!(line.ends_with(c.summary), "{line}");
        }
        assert!(text.starts_with(USAGE));
    }

    #[test]
    fn every_command_has_its_own_help() {
        for c in COMMANDS {
            let text = help(Some(c.name)).unwrap();
            let field = |label: &str| {
                text.lines()
                    .find_map(|l| l.trim_start().strip_prefix(label))
                    .map(|rest| rest.trim_start().trim_start_matches(':').trim().to_string())
                    .unwrap_or_else(|| panic!("{}: no {label} line in\n{text}", c.name))
            };
            assert_eq!(field("command name"), c.name);
            assert_eq!(field("reqd params"), c.required.join(", "), "{}", c.name);
            assert_eq!(
                field("optional params"),
                c.optional.join(", "),
                "{}",
                c.name
            );
            assert!(field("description").contains(c.description), "{}", c.name);
        }
    }

    #[test]
    fn help_shows_required_parameters() {
        let text = help(Some("pool-join")).unwrap();
        assert!(
            text.contains("reqd params     : master-address, master-username, master-password"),
            "{text}"
        );
        let text = help(Some("vm-start")).unwrap();
        assert!(
            text.contains("optional params : uuid, vm, name-label, on, --force"),
            "{text}"
        );
    }

    #[test]
    fn help_for_an_unknown_command_is_an_error() {
        let e = help(Some("vm-frobnicate")).unwrap_err().to_string();
        assert!(e.contains("unknown command vm-frobnicate"), "{e}");
        assert!(e.contains("xenpool help"), "{e}");
        assert!(lookup("help-me").is_err());
    }

    #[test]
    fn help_parses_without_a_password_or_server() {
        let o = parse_args(args("help")).unwrap();
        assert_eq!(o.command, "help");
        assert!(o.positional.is_empty());
        assert!(o.password.is_none());
        let o = parse_args(args("help vm-start")).unwrap();
        assert_eq!(o.positional, ["vm-start"]);
        assert!(parse_args(args("help vm-start vm-list")).is_err());
        assert!(parse_args(args("vm-list extra")).is_err());
    }

    #[test]
    fn local_sessions_are_for_emergency_commands_only() {
        let local: Vec<&str> = COMMANDS
            .iter()
            .filter(|c| c.local_session)
            .map(|c| c.name)
            .collect();
        assert_eq!(
            local,
            [
                "host-emergency-ha-disable",
                "pool-emergency-transition-to-master",
                "pool-emergency-reset-master",
                "pool-recover-slaves"
            ]
        );
    }

    #[test]
    fn help_describes_the_ha_commands() {
        let text = help(Some("pool-ha-enable")).unwrap();
        assert!(
            text.starts_with("command name            : pool-ha-enable\n"),
            "{text}"
        );
        assert!(
            text.contains("reqd params     : heartbeat-sr-uuids\n"),
            "{text}"
        );
        assert!(
            text.contains("optional params : ha-config:timeout, ha-config:<key>\n"),
            "{text}"
        );
        for name in [
            "pool-ha-disable",
            "pool-ha-compute-max-host-failures-to-tolerate",
            "pool-param-set",
            "vm-param-set",
            "host-param-list",
            "host-emergency-ha-disable",
        ] {
            assert!(help(Some(name)).is_ok(), "{name}");
        }
        let text = help(Some("host-emergency-ha-disable")).unwrap();
        assert!(text.contains("optional params : --force"), "{text}");
    }

    #[test]
    fn param_set_help_lists_exactly_what_the_planner_writes() {
        assert_eq!(VM_PARAM_SET.keys(), VM_SETTABLE);
        assert_eq!(POOL_PARAM_SET.keys(), POOL_SETTABLE);
        for (name, set) in [
            ("vm-param-set", &VM_PARAM_SET),
            ("pool-param-set", &POOL_PARAM_SET),
        ] {
            let c = lookup(name).unwrap();
            assert_eq!(set.command, name);
            assert_eq!(c.required, [set.selector]);
        }
    }

    #[test]
    fn key_value_words_keep_their_order() {
        let o = parse_args(args(
            "vm-param-set uuid=u order=2 name-label=a=b ha-restart-priority= start-delay=3",
        ))
        .unwrap();
        let keys: Vec<&str> = o.pairs.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(
            keys,
            [
                "uuid",
                "order",
                "name-label",
                "ha-restart-priority",
                "start-delay"
            ]
        );
        assert_eq!(o.pairs[2].1, "a=b");
        assert_eq!(o.pairs[3].1, "");
        assert_eq!(o.args["order"], "2");
    }

    #[test]
    fn bad_arguments_are_refused_before_connecting() {
        let check = |line: &str| {
            let o = parse_args(args(line)).unwrap();
            check_arguments(&o, lookup(&o.command).unwrap().action)
        };
        let e = check("vm-param-set uuid=u order=abc")
            .unwrap_err()
            .to_string();
        assert!(e.contains("order=abc: not a whole number"), "{e}");
        let e = check("vm-param-set uuid=u colour=red")
            .unwrap_err()
            .to_string();
        assert!(e.contains("cannot set colour"), "{e}");
        let e = check("pool-param-set uuid=p ha-allow-overcommit=sometimes")
            .unwrap_err()
            .to_string();
        assert!(e.contains("not true or false"), "{e}");
        let e = check("pool-ha-enable heartbeat-sr-uuids=a ha-config:timeout=abc")
            .unwrap_err()
            .to_string();
        assert!(e.contains("ha-config:timeout=abc"), "{e}");
        assert!(check("pool-ha-enable heartbeat-sr-uuids=a,b ha-config:timeout=45").is_ok());
        assert!(check("vm-param-set uuid=u order=1 ha-restart-priority=restart").is_ok());
        assert!(check("host-list params=all").is_ok());
    }

    #[test]
    fn host_metrics_live_is_computed_only_when_asked_for() {
        let wants = |line: &str| wants_column(&parse_args(args(line)).unwrap(), HOST_METRICS_LIVE);
        assert!(wants("host-list params=all"));
        assert!(wants("host-list params=uuid,host-metrics-live"));
        assert!(wants("host-list host-metrics-live=true"));
        assert!(!wants("host-list"));
        assert!(!wants("host-list params=uuid,name-label"));
    }
}
