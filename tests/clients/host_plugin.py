#!/usr/bin/env python3
"""The host plugin the client tests install in each host's plugin directory.

xenpoold runs a plugin with the function name as its only argument and writes
{"fn": <name>, "args": {<string>: <string>}} on its standard input; its standard output is
the call's result. scripts/client-tests.sh installs a small wrapper under the names the
clients call (`vmops` for the CloudStack-like client, `dom0_plugin_version.py` for the
OpenStack-like one) that sets XENPOOL_TEST_PLUGIN_HOST to the address of the host it is
installed on, so that a caller can tell which host ran it.

Functions:
  echo_args    {"host": <address>, "fn": <name>, "args": <args>} as JSON
  digest       SHA-256 (hex) of the sorted "key=value\\n" lines of the arguments
  get_version  the plugin API version, pickled (protocol 0) as the OpenStack driver reads
               it; the arguments must hold "params" (the caller's pickled arguments) and
               "host_uuid"
  fail         writes to both streams and exits 3
Any other function exits 2.
"""

import hashlib
import json
import os
import pickle
import sys

PLUGIN_API_VERSION = "2.1"


def main():
    if len(sys.argv) != 2:
        print("usage: host_plugin.py FUNCTION < request", file=sys.stderr)
        return 2
    fn = sys.argv[1]
    request = json.load(sys.stdin)
    args = request.get("args", {})
    if request.get("fn") != fn:
        print(f"function {fn!r} but request for {request.get('fn')!r}", file=sys.stderr)
        return 2
    host = os.environ.get("XENPOOL_TEST_PLUGIN_HOST", "")
    if fn == "echo_args":
        sys.stdout.write(json.dumps({"host": host, "fn": fn, "args": args}, sort_keys=True))
    elif fn == "digest":
        text = "".join(f"{k}={v}\n" for k, v in sorted(args.items()))
        sys.stdout.write(hashlib.sha256(text.encode("utf-8")).hexdigest())
    elif fn == "get_version":
        if "params" not in args or not args.get("host_uuid"):
            print(f"get_version needs params and host_uuid, got {sorted(args)}",
                  file=sys.stderr)
            return 1
        sys.stdout.write(pickle.dumps(PLUGIN_API_VERSION, 0).decode("ascii"))
    elif fn == "fail":
        print("partial")
        print("it went wrong", file=sys.stderr)
        return 3
    else:
        print(f"unknown function {fn!r}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
