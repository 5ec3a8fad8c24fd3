#!/usr/bin/env node
// Drives a xenpoold with the unmodified `xen-api` npm package (Xen Orchestra's client).
//
// Usage: node node_client.mjs URL PASSWORD
//
// The package is loaded from $XEN_API_DIR (default: target/client-npm/node_modules/xen-api,
// where scripts/client-tests.sh installs it). The full scenario runs once with the JSON-RPC
// transport and once with the XML-RPC transport (both forced), and a short one with the
// library's automatic choice, which must settle on JSON-RPC. With each: log in (the library
// then lists the types with system.listMethods, takes a token with event.inject and keeps a
// cache of every object up to date with event.from), read every class with get_all_records,
// start the halted VM `demo-vm` with Async.VM.start and wait for the task, see the power
// state change through event.from (our own calls and the library's object cache), shut it
// down again, check the errors a client relies on, log out.
// Prints one PASS/FAIL line per check; exits 1 on the first failure.

import diagnosticsChannel from 'node:diagnostics_channel'
import path from 'node:path'
import { fileURLToPath, pathToFileURL } from 'node:url'

const here = path.dirname(fileURLToPath(import.meta.url))
const libDir = process.env.XEN_API_DIR ?? path.join(here, '..', '..', 'target', 'client-npm', 'node_modules', 'xen-api')
const lib = file => import(pathToFileURL(path.join(libDir, file)).href)
const { createClient } = await lib('index.mjs')
const transports = (await lib('transports/index.mjs')).default
const { Agent } = await import(pathToFileURL(path.join(libDir, '..', 'undici', 'index.js')).href)

const CLASSES = [
  'pool', 'host', 'host_metrics', 'VM', 'VM_metrics', 'SR', 'PBD', 'VDI', 'VBD',
  'network', 'PIF', 'VIF', 'task', 'message', 'session', 'role',
]
// Classes of which a fresh pool always holds at least one object.
const NON_EMPTY = new Set(['pool', 'host', 'host_metrics', 'VM', 'VM_metrics', 'SR', 'PBD', 'VDI', 'VBD',
  'network', 'PIF', 'VIF', 'session', 'role'])

const [url, password] = process.argv.slice(2)
if (url === undefined || password === undefined) {
  console.error('usage: node node_client.mjs URL PASSWORD')
  process.exit(2)
}
const scheme = new URL(url).protocol.replace(':', '')

let tag = 'node'
const pass = what => console.log(`PASS [${tag}] ${what}`)
class Failed extends Error {}
const fail = what => {
  console.log(`FAIL [${tag}] ${what}`)
  throw new Failed(what)
}
const check = (cond, what) => (cond ? pass(what) : fail(what))

// The library reports trouble in its background event loop only through console.warn and
// `eventFetchingError`: both are failures here.
const warnings = []
const origWarn = console.warn
console.warn = (...args) => {
  warnings.push(args.map(a => (a instanceof Error ? `${a.code ?? ''} ${a.message}` : String(a))).join(' '))
  origWarn(...args)
}
const noWarnings = what => check(warnings.length === 0, `${what}: no warning from the library (${warnings.join('; ')})`)

const sleep = ms => new Promise(resolve => setTimeout(resolve, ms))

async function expectError(promise, code, what) {
  try {
    await promise
  } catch (error) {
    check(error?.code === code, `${what} refused with ${error?.code}(${(error?.params ?? []).join(', ')})`)
    return error
  }
  fail(`${what} succeeded`)
}

function newClient(transport, pw = password, extra = {}) {
  return createClient({
    url,
    auth: { user: 'root', password: pw },
    allowUnauthorized: true,
    transport,
    ...extra,
  })
}

// A call through one of the library's transports, bypassing its session handling.
async function rawCall(transport, method, args) {
  const u = new URL(url)
  const call = transports[transport]({
    dispatcher: new Agent({ connect: { rejectUnauthorized: false } }),
    url: { protocol: u.protocol, hostname: u.hostname, port: u.port, pathname: u.pathname },
  })
  return call(method, args)
}

// Follows event.from from `token` until an event on `vm` shows `want`.
async function waitPowerState(xapi, vm, token, want, classes = ['VM'], deadlineMs = 30e3) {
  const deadline = Date.now() + deadlineMs
  const seen = []
  while (Date.now() < deadline) {
    const res = await xapi.call('event.from', classes, token, 5.0)
    for (const key of ['events', 'valid_ref_counts', 'token']) {
      if (!(key in res)) fail(`event.from result lacks ${key}`)
    }
    token = res.token
    for (const ev of res.events) {
      if (ev.class.toLowerCase() !== 'vm' || ev.ref !== vm) continue
      seen.push(`${ev.operation}:${ev.snapshot?.power_state}`)
      if (ev.snapshot?.power_state === want) return { token, seen }
    }
  }
  fail(`no event.from event shows ${vm} ${want} within ${deadlineMs} ms (saw ${seen.join(', ')})`)
}

// Waits until the library's own object cache (kept by its event.from loop) shows `want`.
async function waitCached(xapi, vm, want, deadlineMs = 30e3) {
  const deadline = Date.now() + deadlineMs
  while (Date.now() < deadline) {
    const obj = xapi.getObjectByRef(vm, undefined)
    if (obj?.power_state === want) return obj
    await sleep(50)
  }
  fail(`the library's object cache never showed ${vm} ${want}`)
}

async function scenario(transport) {
  tag = `node ${scheme} ${transport}`
  warnings.length = 0

  // A wrong password: the error a client relies on.
  {
    const bad = newClient(transport, password + '-wrong', { watchEvents: false })
    await expectError(bad.connect(), 'SESSION_AUTHENTICATION_FAILED', 'login with a wrong password')
  }

  const xapi = newClient(transport)
  let eventErrors = 0
  xapi.on('eventFetchingError', error => {
    eventErrors++
    console.log(`  event loop error: ${error?.code} ${error?.message}`)
  })
  await xapi.connect()
  check(xapi.status === 'connected' && xapi.sessionId.startsWith('OpaqueRef:'), 'connect (session.login_with_password, pool.get_all_records, system.listMethods)')
  try {
    // Every class with get_all_records.
    for (const cls of CLASSES) {
      // The library refuses `session.*` calls of its own: ask through its transport.
      const records =
        cls === 'session'
          ? await rawCall(transport, 'session.get_all_records', [xapi.sessionId])
          : await xapi.call(`${cls}.get_all_records`)
      const refs = Object.keys(records)
      check(typeof records === 'object' && refs.every(r => r.startsWith('OpaqueRef:')), `${cls}.get_all_records is a map (${refs.length})`)
      if (NON_EMPTY.has(cls)) check(refs.length > 0, `${cls}.get_all_records is non-empty`)
    }
    const vms = Object.values(await xapi.getAllRecords('VM')).filter(vm => vm.name_label === 'demo-vm')
    check(vms.length === 1, "getAllRecords('VM') finds demo-vm")
    const vm = vms[0].$ref

    // The library's cache, filled by get_all_records of every type and event.from.
    await xapi.objectsFetched
    check(xapi.getObjectByRef(vm).name_label === 'demo-vm', 'objectsFetched: the object cache holds demo-vm')
    check(xapi.pool.$master?.$type === 'host', 'xapi.pool.$master resolves to the host')
    const barrier = await xapi.barrier(vm)
    check(barrier?.$ref === vm, 'barrier() (pool.add_to_other_config seen through event.from)')

    if ((await xapi.call('VM.get_power_state', vm)) !== 'Halted') {
      // A previous run was interrupted: bring the VM back to Halted.
      await xapi.call('VM.hard_shutdown', vm)
    }
    check((await xapi.call('VM.get_power_state', vm)) === 'Halted', 'demo-vm is Halted')

    // An event token from now on (lower-case class name, empty token, timeout 0).
    const first = await xapi.call('event.from', ['vm'], '', 0.0)
    check(['events', 'valid_ref_counts', 'token'].every(k => k in first), 'event.from result has events, valid_ref_counts, token')
    const nVms = (await xapi.call('VM.get_all')).length
    check(first.valid_ref_counts.vm === nVms, `valid_ref_counts.vm is the number of VMs, as a number (${JSON.stringify(first.valid_ref_counts.vm)})`)
    check(first.events.some(e => e.ref === vm), 'event.from with an empty token lists demo-vm')
    let token = first.token

    // Async.VM.start, waiting for the task through the library's event loop.
    const task = await xapi.call('Async.VM.start', vm, false, false)
    check(typeof task === 'string' && task.startsWith('OpaqueRef:'), `Async.VM.start returns a task (${task.slice(0, 20)}...)`)
    const result = await xapi.watchTask(task)
    pass(`watchTask: the task succeeded (result ${JSON.stringify(result)})`)
    const trec = await xapi.getRecord('task', task)
    check(trec.status === 'success' && trec.progress === 1, `task.get_record: status ${trec.status}, progress ${trec.progress}`)
    await xapi.call('task.destroy', task)

    let r = await waitPowerState(xapi, vm, token, 'Running')
    token = r.token
    pass(`event.from shows demo-vm Running (events ${r.seen.join(', ')})`)
    await waitCached(xapi, vm, 'Running')
    pass("the library's object cache shows demo-vm Running")
    check(xapi.getObjectByRef(vm).$resident_on?.$ref === xapi.pool.master, 'VM.resident_on is the master')

    // A failing task through callAsync: the task's error_info becomes the error.
    await expectError(xapi.callAsync('VM.start', vm, false, false), 'VM_BAD_POWER_STATE', 'callAsync VM.start of a running VM')

    // Shut it down again (callAsync: Async.VM.clean_shutdown + watchTask + task.destroy).
    await xapi.callAsync('VM.clean_shutdown', vm)
    pass('callAsync VM.clean_shutdown')
    r = await waitPowerState(xapi, vm, token, 'Halted', [`vm/${vm}`])
    pass(`event.from on vm/<ref> shows demo-vm Halted (events ${r.seen.join(', ')})`)
    await waitCached(xapi, vm, 'Halted')
    pass("the library's object cache shows demo-vm Halted")

    // A task with a result: callAsync parses the task's XML-RPC `result`.
    const clone = await xapi.callAsync('VM.clone', vm, `demo-vm-clone-${transport}`)
    check(typeof clone === 'string' && clone.startsWith('OpaqueRef:'), `callAsync VM.clone returns the new VM (${clone.slice(0, 20)}...)`)
    check((await xapi.call('VM.get_name_label', clone)) === `demo-vm-clone-${transport}`, 'the clone exists')
    await xapi.call('VM.destroy', clone)
    check(!(await xapi.call('VM.get_all')).includes(clone), 'VM.destroy removed the clone')

    // Errors a client relies on.
    await expectError(xapi.call('VM.get_record', 'OpaqueRef:00000000-dead-beef-0000-000000000000'), 'HANDLE_INVALID', 'VM.get_record on a bogus ref')
    await expectError(xapi.call('VM.no_such_message', vm), 'MESSAGE_METHOD_UNKNOWN', 'an unknown message')
    await expectError(xapi.call('event.from', ['VM'], 'not-a-token', 0.0), 'EVENT_FROM_TOKEN_PARSE_FAILURE', 'event.from with a bad token')

    check(eventErrors === 0, 'the library event loop had no error')
    noWarnings('scenario')
  } finally {
    await xapi.disconnect()
  }
  check(xapi.status === 'disconnected', 'disconnect (session.logout)')
}

// The library's automatic transport choice: JSON-RPC when the server offers it.
async function autoTransport() {
  tag = `node ${scheme} auto`
  // Count the requests by path (the library sends JSON-RPC to /jsonrpc and XML-RPC to
  // /xmlrpc) through undici's diagnostics channel.
  let jsonRequests = 0
  let xmlRequests = 0
  const onRequest = ({ request }) => {
    if (request.path.endsWith('/jsonrpc')) jsonRequests++
    else if (request.path.endsWith('/xmlrpc')) xmlRequests++
  }
  diagnosticsChannel.subscribe('undici:request:create', onRequest)
  const xapi = newClient('auto', password, { watchEvents: false })
  await xapi.connect()
  const vms = await xapi.call('VM.get_all')
  check(vms.length > 0, 'VM.get_all with the automatic transport')
  await xapi.disconnect()
  diagnosticsChannel.unsubscribe('undici:request:create', onRequest)
  check(jsonRequests > 0 && xmlRequests === 0, `the automatic transport chose JSON-RPC (${jsonRequests} JSON-RPC, ${xmlRequests} XML-RPC requests)`)
}

try {
  await scenario('json-rpc')
  await scenario('xml-rpc')
  await autoTransport()
  console.log(`OK [node ${scheme}] all checks passed`)
  // The library's event loop may still hold a long-poll open: do not wait for it.
  process.exit(0)
} catch (error) {
  if (!(error instanceof Failed)) {
    console.log(error)
    console.log(`FAIL [${tag}] unexpected error: ${error?.code ?? ''} ${error?.message}`)
  }
  process.exit(1)
}
