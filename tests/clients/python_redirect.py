"""The `xenapi` Python client pointed at a pool member: it is told HOST_IS_SLAVE with the
coordinator's address, reconnects there (as XenCenter does) and carries on.

usage: python_redirect.py MEMBER_URL PASSWORD COORDINATOR_ADDRESS
"""
import sys
import urllib.parse

import XenAPI


def main():
    member_url, password, coordinator = sys.argv[1:4]
    session = XenAPI.Session(member_url)
    try:
        session.xenapi.login_with_password("root", password, "1.0", "xenpool-redirect-test")
        print("FAIL [redirect] a member accepted a login")
        return 1
    except XenAPI.Failure as f:
        if f.details[0] != "HOST_IS_SLAVE":
            print(f"FAIL [redirect] expected HOST_IS_SLAVE, got {f.details}")
            return 1
        named = f.details[1]
    if named != coordinator:
        print(f"FAIL [redirect] HOST_IS_SLAVE named {named}, not {coordinator}")
        return 1
    print(f"PASS [redirect] the member answered HOST_IS_SLAVE {named}")
    # Keep the scheme and port, change the host: every host of a pool serves the same port.
    parts = urllib.parse.urlsplit(member_url)
    url = urllib.parse.urlunsplit(parts._replace(netloc=f"{named}:{parts.port}"))
    session = XenAPI.Session(url)
    session.xenapi.login_with_password("root", password, "1.0", "xenpool-redirect-test")
    hosts = session.xenapi.host.get_all_records()
    if len(hosts) != 2:
        print(f"FAIL [redirect] expected 2 hosts in the pool, saw {len(hosts)}")
        return 1
    vms = session.xenapi.VM.get_all_records()
    master = session.xenapi.pool.get_master(session.xenapi.pool.get_all()[0])
    if session.xenapi.host.get_address(master) != named:
        print("FAIL [redirect] pool.master is not the host named by HOST_IS_SLAVE")
        return 1
    print(f"PASS [redirect] reconnected to {url}: {len(hosts)} hosts, {len(vms)} VMs")
    session.xenapi.session.logout()
    return 0


if __name__ == "__main__":
    sys.exit(main())
