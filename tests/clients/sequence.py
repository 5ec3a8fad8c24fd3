"""What the call-sequence scripts (cloudstack_like.py, openstack_like.py) share: checks that
print one PASS line each, and the runner that takes a client through its steps in order."""

import sys
import traceback

import XenAPI

TAG = "sequence"


class StepFailed(Exception):
    pass


def passed(what):
    print(f"PASS [{TAG}] {what}", flush=True)


def check(cond, what):
    if not cond:
        raise StepFailed(what)
    passed(what)


def run_steps(tag, client, steps, skip):
    """Runs `client.step_<name>` for each step not skipped; exits 1 at the first failure,
    naming the step (and, for a call the daemon does not serve, the method), 3 when steps
    were skipped, so that a run with skips never passes."""
    global TAG
    TAG = tag
    for name in steps:
        if name in skip:
            print(f"SKIP [{tag}] step {name}", flush=True)
            continue
        print(f"== [{tag}] step {name}", flush=True)
        try:
            getattr(client, "step_" + name.replace("-", "_"))()
        except StepFailed as e:
            print(f"FAIL [{tag}] step {name}: {e}", flush=True)
            sys.exit(1)
        except XenAPI.Failure as e:
            d = e.details or []
            if d and d[0] == "MESSAGE_METHOD_UNKNOWN":
                print(f"FAIL [{tag}] step {name}: the daemon does not serve {d[1:]} "
                      f"(MESSAGE_METHOD_UNKNOWN)", flush=True)
            else:
                traceback.print_exc()
                print(f"FAIL [{tag}] step {name}: XenAPI error {d}", flush=True)
            sys.exit(1)
        except Exception:  # noqa: BLE001 - any unexpected error fails the step
            traceback.print_exc()
            print(f"FAIL [{tag}] step {name}: unexpected exception (see above)", flush=True)
            sys.exit(1)
    if client.session is not None:
        client.x.session.logout()
    if skip:
        print(f"INCOMPLETE [{tag}] steps skipped: {', '.join(s for s in steps if s in skip)}",
              flush=True)
        sys.exit(3)
    print(f"OK [{tag}] all steps passed", flush=True)
