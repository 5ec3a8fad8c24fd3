#!/usr/bin/env python3
"""Drives a xenpoold with the unmodified `xenapi` package from PyPI (XML-RPC).

Usage: python_client.py URL PASSWORD [--https]

Logs in as root, reads every served class with get_all_records, starts the halted VM
`demo-vm` with Async.VM.start and waits for its task, sees the power-state change through
event.from, shuts the VM down again (so that the next run starts from Halted), checks the
errors a client relies on (wrong password, bogus reference) and logs out.
Prints one PASS/FAIL line per check; exits 1 on the first failure.
"""

import re
import sys
import time
import traceback

import XenAPI

CLASSES = [
    "pool", "host", "host_metrics", "VM", "VM_metrics", "SR", "PBD", "VDI", "VBD",
    "network", "PIF", "VIF", "task", "message", "session", "role",
]
# Classes of which a fresh pool always holds at least one object.
NON_EMPTY = {"pool", "host", "host_metrics", "VM", "VM_metrics", "SR", "PBD", "VDI", "VBD",
             "network", "PIF", "VIF", "session", "role"}

TAG = "python"


def passed(what):
    print(f"PASS [{TAG}] {what}", flush=True)


def fail(what):
    print(f"FAIL [{TAG}] {what}", flush=True)
    sys.exit(1)


def check(cond, what):
    if cond:
        passed(what)
    else:
        fail(what)


def event_from(session, classes, token, timeout):
    # `from` is a Python keyword: the dispatcher has to be reached with getattr.
    return getattr(session.xenapi.event, "from")(classes, token, timeout)


def wait_task(session, task, deadline_s=60.0):
    deadline = time.monotonic() + deadline_s
    while True:
        status = session.xenapi.task.get_status(task)
        if status != "pending":
            return status
        if time.monotonic() > deadline:
            fail(f"task {task} still pending after {deadline_s}s")
        time.sleep(0.1)


def wait_power_state(session, vm, token, want, deadline_s=30.0):
    """Follows event.from from `token` until an event on `vm` shows `want`."""
    deadline = time.monotonic() + deadline_s
    seen = []
    while time.monotonic() < deadline:
        res = event_from(session, ["VM"], token, 5.0)
        for key in ("events", "valid_ref_counts", "token"):
            if key not in res:
                fail(f"event.from result lacks {key!r}: {sorted(res)}")
        token = res["token"]
        for ev in res["events"]:
            if ev.get("class", "").lower() != "vm" or ev.get("ref") != vm:
                continue
            snap = ev.get("snapshot") or {}
            seen.append((ev.get("operation"), snap.get("power_state")))
            if snap.get("power_state") == want:
                return token, seen
    fail(f"no event.from event shows {vm} {want} within {deadline_s}s (saw {seen})")


def main():
    args = [a for a in sys.argv[1:] if not a.startswith("--")]
    https = "--https" in sys.argv[1:]
    if len(args) != 2:
        print(__doc__, file=sys.stderr)
        sys.exit(2)
    url, password = args
    global TAG
    TAG = "python " + ("https" if https else "http")

    def new_session():
        if https:
            return XenAPI.Session(url, ignore_ssl=True)
        return XenAPI.Session(url)

    # Wrong password first: the error a client relies on.
    bad = new_session()
    try:
        bad.login_with_password("root", password + "-wrong", "1.0", "xenpool-test")
    except XenAPI.Failure as e:
        check(e.details and e.details[0] == "SESSION_AUTHENTICATION_FAILED",
              f"wrong password refused with {e.details}")
    else:
        fail("login with a wrong password succeeded")

    session = new_session()
    session.login_with_password("root", password, "1.0", "xenpool-test")
    handle = session.handle
    check(isinstance(handle, str) and handle.startswith("OpaqueRef:"),
          f"login_with_password (4 params) -> {handle[:20]}...")
    try:
        run(session)
    finally:
        session.xenapi.session.logout()
    passed("session.logout")

    # The logged-out session is refused with SESSION_INVALID (the client's dispatcher turns
    # that into a re-login, so ask through the raw XML-RPC proxy).
    probe = new_session()
    raw = getattr(probe, "pool.get_all")(handle)
    check(raw.get("Status") == "Failure" and raw["ErrorDescription"][0] == "SESSION_INVALID",
          f"call with a logged-out session refused with {raw.get('ErrorDescription')}")

    # Login with 2 and 3 parameters (old clients).
    probe.login_with_password("root", password)
    probe.xenapi.session.logout()
    passed("login_with_password (2 params) and logout")
    probe.login_with_password("root", password, "1.2")
    probe.xenapi.session.logout()
    passed("login_with_password (3 params) and logout")


def run(session):
    x = session.xenapi

    # Every class with get_all_records.
    for cls in CLASSES:
        records = getattr(x, cls).get_all_records()
        check(isinstance(records, dict), f"{cls}.get_all_records is a map ({len(records)})")
        if cls in NON_EMPTY:
            check(len(records) > 0, f"{cls}.get_all_records is non-empty")
        for ref, rec in records.items():
            if not ref.startswith("OpaqueRef:") or not isinstance(rec, dict):
                fail(f"{cls}.get_all_records: bad entry {ref!r}")
            if cls != "session" and "uuid" in rec:
                if getattr(x, cls).get_by_uuid(rec["uuid"]) != ref:
                    fail(f"{cls}.get_by_uuid({rec['uuid']}) != {ref}")

    pool = list(x.pool.get_all_records().values())[0]
    master = pool["master"]
    check(x.host.get_record(master)["uuid"] != "", "pool.master resolves to a host record")

    vms = x.VM.get_by_name_label("demo-vm")
    check(len(vms) == 1, "VM.get_by_name_label('demo-vm') finds one VM")
    vm = vms[0]
    rec = x.VM.get_record(vm)
    check(not rec["is_a_template"], "demo-vm is not a template")
    if rec["power_state"] != "Halted":
        # A previous run was interrupted: bring the VM back to Halted.
        x.VM.hard_shutdown(vm)
    check(x.VM.get_power_state(vm) == "Halted", "demo-vm is Halted")
    check("start" in x.VM.get_allowed_operations(vm), "'start' in VM.allowed_operations")

    # An event token from now on (with a float timeout and a lower-case class name).
    res = event_from(session, ["vm"], "", 0.0)
    for key in ("events", "valid_ref_counts", "token"):
        check(key in res, f"event.from result has {key!r}")
    counts = res["valid_ref_counts"]
    check(counts.get("vm") == len(x.VM.get_all()),
          f"valid_ref_counts['vm'] is the number of VMs, as an int ({counts.get('vm')!r})")
    token = res["token"]
    check(any(e["ref"] == vm for e in res["events"]),
          "event.from with an empty token lists demo-vm")

    # Async.VM.start and its task.
    task = x.Async.VM.start(vm, False, False)
    check(task.startswith("OpaqueRef:"), f"Async.VM.start returns a task ({task[:20]}...)")
    status = wait_task(session, task)
    if status != "success":
        fail(f"task ended {status}: {x.task.get_error_info(task)}")
    passed("task.get_status -> success")
    trec = x.task.get_record(task)
    check(trec["progress"] == 1.0, f"task progress is 1.0 ({trec['progress']})")
    check(trec["result"] == "" or trec["result"].startswith("<value>"),
          f"task result is '' or an XML-RPC value ({trec['result']!r})")
    x.task.destroy(task)

    token, seen = wait_power_state(session, vm, token, "Running")
    passed(f"event.from shows demo-vm Running (events {seen})")

    # A failing task: starting a running VM.
    task = x.Async.VM.start(vm, False, False)
    status = wait_task(session, task)
    info = x.task.get_error_info(task)
    check(status == "failure" and info and info[0] == "VM_BAD_POWER_STATE",
          f"Async.VM.start of a running VM: task {status} with {info}")
    x.task.destroy(task)
    check(x.VM.get_power_state(vm) == "Running", "VM.get_power_state is Running")
    check(x.VM.get_resident_on(vm) == master, "VM.resident_on is the master")

    # Shut it down again so the next run starts from Halted.
    x.VM.clean_shutdown(vm)
    token, seen = wait_power_state(session, vm, token, "Halted")
    passed(f"VM.clean_shutdown; event.from shows demo-vm Halted (events {seen})")

    # A task with a result: Async.VM.clone returns the new VM as an XML-RPC value.
    task = x.Async.VM.clone(vm, "demo-vm-clone")
    status = wait_task(session, task)
    if status != "success":
        fail(f"Async.VM.clone task ended {status}: {x.task.get_error_info(task)}")
    result = x.task.get_result(task)
    m = re.fullmatch(r"<value>(OpaqueRef:[^<]+)</value>", result)
    check(m is not None, f"Async.VM.clone task result is an XML-RPC value ({result!r})")
    clone = m.group(1)
    check(x.VM.get_name_label(clone) == "demo-vm-clone", "the clone exists")
    x.task.destroy(task)
    x.VM.destroy(clone)
    check(clone not in x.VM.get_all(), "VM.destroy removed the clone")

    # The client's own helper: API_version reads pool.master and host.API_version_*.
    check(re.fullmatch(r"\d+\.\d+", session.API_version) is not None,
          f"Session.API_version -> {session.API_version}")

    # Errors a client relies on.
    try:
        x.VM.get_record("OpaqueRef:00000000-dead-beef-0000-000000000000")
    except XenAPI.Failure as e:
        check(e.details[0] == "HANDLE_INVALID", f"bogus ref refused with {e.details}")
    else:
        fail("VM.get_record on a bogus ref succeeded")
    try:
        x.VM.no_such_message(vm)
    except XenAPI.Failure as e:
        check(e.details[0] == "MESSAGE_METHOD_UNKNOWN", f"unknown message refused with {e.details}")
    else:
        fail("an unknown message succeeded")
    try:
        event_from(session, ["VM"], "not-a-token", 0.0)
    except XenAPI.Failure as e:
        check(e.details[0] == "EVENT_FROM_TOKEN_PARSE_FAILURE", f"bad token refused with {e.details}")
    else:
        fail("event.from with a bad token succeeded")


if __name__ == "__main__":
    try:
        main()
    except SystemExit:
        raise
    except BaseException:  # noqa: BLE001 - any unexpected error is a failure
        traceback.print_exc()
        fail("unexpected exception (see above)")
    print(f"OK [{TAG}] all checks passed", flush=True)
