//! Parked long-polls starve nobody: a thousand `event.from` calls parked by one read-only
//! user on a two-host pool, the per-session and per-user caps refusing the excess, and a
//! login, a write and the member's replication all still answering.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::task::JoinSet;
use xenpool_rpc::{Client, RpcError, Value};
use xenpool_tests::wire::{field, s, text};
use xenpool_tests::{add_user, free_port, raise_file_limit, wait_for, Daemon};

const PER_SESSION: usize = 100;
const PER_USER: usize = 1000;
const SESSIONS: usize = PER_USER / PER_SESSION;

/// Ten times what any step needs here; steps are awaited to completion, never timed.
const BOUND: Duration = Duration::from_secs(60);

/// One object nothing writes: calls watching it stay parked until the test ends.
const WATCHED: &str = "vm/OpaqueRef:nothing-writes-this";

fn addr(i: u8) -> IpAddr {
    IpAddr::from([127, 41, 0, i])
}

async fn within<T>(what: &str, f: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(BOUND, f)
        .await
        .unwrap_or_else(|_| panic!("{what} did not answer within {BOUND:?}"))
}

fn park(set: &mut JoinSet<Result<Value, RpcError>>, c: &Arc<Client>, token: &str) {
    let c = c.clone();
    let token = token.to_string();
    set.spawn(async move {
        let session = c.session().unwrap();
        c.call(
            "event.from",
            vec![
                s(&session),
                Value::Array(vec![s(WATCHED)]),
                s(&token),
                Value::Double(3000.0),
            ],
        )
        .await
    });
}

fn assert_too_many_pending(r: Result<Value, RpcError>) {
    match r {
        Ok(v) => panic!("expected TOO_MANY_PENDING_TASKS, got {v:?}"),
        Err(e) => assert_eq!(
            e.api().expect("a XenAPI error").description(),
            vec!["TOO_MANY_PENDING_TASKS".to_string()]
        ),
    }
}

async fn root_call(c: &Client, method: &str, mut params: Vec<Value>) -> Value {
    params.insert(0, s(&c.session().unwrap()));
    within(method, c.call(method, params)).await.expect(method)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_parked_event_from_calls_starve_nobody() {
    let files = raise_file_limit();
    assert!(
        files > 3 * PER_USER as u64,
        "open-file limit {files} too low for this test"
    );
    let dir = tempfile::tempdir().unwrap();
    let (http, https) = (free_port(addr(1)), free_port(addr(1)));
    let caps = [
        "--max-parked-per-session",
        &PER_SESSION.to_string(),
        "--max-parked-per-user",
        &PER_USER.to_string(),
    ]
    .map(str::to_string);
    let caps: Vec<&str> = caps.iter().map(String::as_str).collect();
    let mut h1 = Daemon::start_on(dir.path(), "h1", addr(1), http, https, &caps);
    let reader_password = add_user(&mut h1, "reader", "read-only");
    let mut member_flags = vec!["--no-demo"];
    member_flags.extend_from_slice(&caps);
    let h2 = Daemon::start_on(dir.path(), "h2", addr(2), http, https, &member_flags);

    // A pool of two; the member follows the coordinator by long-polling it.
    let root_password = h1.root_password();
    let joiner = h2.client().await;
    root_call(
        &joiner,
        "pool.join",
        vec![s(&addr(1).to_string()), s("root"), s(&root_password)],
    )
    .await;
    let root = h1.client().await;
    let member = {
        let Value::Array(hosts) = root_call(&root, "host.get_all", vec![]).await else {
            panic!("host.get_all");
        };
        let mut found = None;
        for h in hosts {
            let a = root_call(&root, "host.get_address", vec![h.clone()]).await;
            if text(&a) == addr(2).to_string() {
                found = Some(h);
            }
        }
        found.expect("the member's host record")
    };
    let metrics = root_call(&root, "host.get_metrics", vec![member.clone()]).await;
    let member_live = || async {
        let live = root_call(&root, "host_metrics.get_live", vec![metrics.clone()]).await;
        (live == Value::Bool(true)).then_some(())
    };
    wait_for(BOUND, member_live)
        .await
        .expect("the member is live");

    // The read-only user logs in eleven times; a token to park from.
    let mut readers = Vec::new();
    for _ in 0..=SESSIONS {
        let c = Client::new(&h1.url()).unwrap();
        within("login", c.login_with_password("reader", &reader_password))
            .await
            .expect("reader login");
        readers.push(Arc::new(c));
    }
    let first = within(
        "event.from",
        readers[0].call(
            "event.from",
            vec![
                s(&readers[0].session().unwrap()),
                Value::Array(vec![s(WATCHED)]),
                s(""),
                Value::Double(0.0),
            ],
        ),
    )
    .await
    .expect("a first event.from");
    let token = text(field(&first, "token"));

    // Each of ten sessions asks to park one call more than its cap: exactly one of each
    // session's calls is refused, whichever came last, and the rest stay parked.
    let mut parked: Vec<JoinSet<_>> = (0..SESSIONS).map(|_| JoinSet::new()).collect();
    for (set, c) in parked.iter_mut().zip(&readers) {
        for _ in 0..=PER_SESSION {
            park(set, c, &token);
        }
    }
    for set in &mut parked {
        let refused = within("the session cap", set.join_next())
            .await
            .expect("a call")
            .expect("the call task");
        assert_too_many_pending(refused);
    }
    assert_eq!(parked.iter().map(JoinSet::len).sum::<usize>(), PER_USER);
    // The user now has PER_USER parked: a session with none parked is refused too.
    let over_user = within(
        "the user cap",
        readers[SESSIONS].call(
            "event.from",
            vec![
                s(&readers[SESSIONS].session().unwrap()),
                Value::Array(vec![s(WATCHED)]),
                s(&token),
                Value::Double(3000.0),
            ],
        ),
    )
    .await;
    assert_too_many_pending(over_user);

    // With all of them parked, the rest of the world still gets answers: a login, the
    // same user's ordinary reads, a write...
    let late = Client::new(&h1.url()).unwrap();
    within("login", late.login_with_password("root", &root_password))
        .await
        .expect("root login");
    let reader = &readers[0];
    within(
        "a reader's read",
        reader.call("VM.get_all", vec![s(&reader.session().unwrap())]),
    )
    .await
    .expect("VM.get_all");
    let Value::Array(vms) = root_call(&late, "VM.get_by_name_label", vec![s("demo-vm")]).await
    else {
        panic!("VM.get_by_name_label");
    };
    root_call(
        &late,
        "VM.set_name_label",
        vec![vms[0].clone(), s("renamed-while-parked")],
    )
    .await;

    // ...and the member's replication polls, which bring the write to its replica.
    let local = Client::builder(&h2.url()).max_redirects(0).build().unwrap();
    let replica_has_it = || async {
        let session = local
            .call(
                "session.slave_local_login_with_password",
                vec![s("root"), s(&root_password)],
            )
            .await
            .ok()?;
        let events = local
            .call(
                "event.from",
                vec![
                    session,
                    Value::Array(vec![s("vm")]),
                    s(""),
                    Value::Double(0.0),
                ],
            )
            .await
            .ok()?;
        let Value::Array(evs) = field(&events, "events") else {
            return None;
        };
        evs.iter()
            .any(|e| text(field(field(e, "snapshot"), "name_label")) == "renamed-while-parked")
            .then_some(())
    };
    wait_for(BOUND, replica_has_it)
        .await
        .expect("the member's replica catches up with the write");
    wait_for(BOUND, member_live)
        .await
        .expect("the member is still live");

    // Nothing parked was dropped to make room.
    for set in &mut parked {
        assert!(set.try_join_next().is_none(), "a parked call ended");
        assert_eq!(set.len(), PER_SESSION);
    }
}
