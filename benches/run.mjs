#!/usr/bin/env node
// `npm run bench`: payload-realtime side by side with uWebSockets.js, ws and a bare tokio ceiling,
// in one run, on loopback. Builds the addon (release) and the Rust load generator, runs every
// scenario against every contender, writes BENCHMARKS.md and benches/results.json.
//
// Environment (all optional):
//   BENCH_QUICK=1            small sizes and few rounds (about 2 minutes)
//   BENCH_SKIP_BUILD=1       do not rebuild the addon (uses benches/.addon/ or the root .node)
//   BENCH_ADDON=file.node    use this addon (e.g. a release build with symbols, for profiles)
//   BENCH_ROUNDS=n           measured rounds per case (default 5, quick 2); BENCH_WARMUP=n (1)
//   BENCH_ONLY=a,b           scenarios: fanout, rooms, authorize, idle, storm
//   BENCH_SERVERS=a,b        contenders: realtime, uws-plugin, uws-publish, ws, ceiling
//   BENCH_FANOUT_SUBSCRIBERS=1000,10000   BENCH_FANOUT_EVENTS=100 (events per round, every size)
//   BENCH_EVENT_SIZE=1024    BENCH_ROOMS_EVENTS  BENCH_AUTH_EVENTS  BENCH_IDLE_COUNTS=10000,19000
//   BENCH_STORM_CONNS  BENCH_STORM_CONCURRENCY=200
//   BENCH_OUT=path           where BENCHMARKS.md goes (default: the repository root); with it set,
//                            the JSON goes next to it (same name, .json) instead of benches/results.json
//   BENCH_REPORT_ONLY=1      measure nothing: rewrite the Markdown from the JSON of an earlier run
//   BENCH_PERF=id,id         record a CPU profile of these servers (e.g. `realtime`) with
//                            `perf record -e cpu-clock -g` (node gets --perf-basic-prof) into
//                            benches/profiles/<case>-<server>.perf.data; read with `perf report -i`.
//                            Profiles slow the server down: do not mix them with published numbers.
//
// Nothing here is a test: there are no thresholds, only measurements. Every wait is bounded.

import { spawn, execFileSync } from 'node:child_process'
import { copyFileSync, existsSync, mkdirSync, readFileSync, statSync, writeFileSync } from 'node:fs'
import os from 'node:os'
import path from 'node:path'
import { createInterface } from 'node:readline'
import { fileURLToPath } from 'node:url'

const here = path.dirname(fileURLToPath(import.meta.url))
const root = path.resolve(here, '..')
const env = process.env
const QUICK = env.BENCH_QUICK === '1'
const list = (v, d) =>
  v
    ? v
        .split(',')
        .map((s) => s.trim())
        .filter(Boolean)
    : d
const int = (v, d) => (v === undefined || v === '' ? d : Number.parseInt(v, 10))

const cfg = {
  quick: QUICK,
  rounds: int(env.BENCH_ROUNDS, QUICK ? 2 : 5),
  warmup: int(env.BENCH_WARMUP, 1),
  eventSize: int(env.BENCH_EVENT_SIZE, 1024),
  scenarios: list(env.BENCH_ONLY, ['fanout', 'rooms', 'authorize', 'idle', 'storm']),
  servers: list(env.BENCH_SERVERS, ['realtime', 'uws-plugin', 'uws-publish', 'ws', 'ceiling']),
  fanout: {
    subscribers: list(env.BENCH_FANOUT_SUBSCRIBERS, ['1000', '10000']).map(Number),
    // Events per round; quick: 20 to 1,000 subscribers, 10 to 10,000.
    events: (n) => int(env.BENCH_FANOUT_EVENTS, QUICK ? (n >= 10_000 ? 10 : 20) : 100),
  },
  rooms: { sockets: 10_000, rooms: 1_000, events: int(env.BENCH_ROOMS_EVENTS, QUICK ? 3_000 : 20_000) },
  authorize: { sockets: 10_000, users: 100, events: int(env.BENCH_AUTH_EVENTS, QUICK ? 5 : 20) },
  idle: { counts: list(env.BENCH_IDLE_COUNTS, QUICK ? ['10000'] : ['10000', '19000']).map(Number) },
  storm: {
    conns: int(env.BENCH_STORM_CONNS, QUICK ? 4_000 : 10_000),
    concurrency: int(env.BENCH_STORM_CONCURRENCY, 200),
  },
  // One load generator process holds at most this many sockets (20,000 open files per process).
  perLoadgen: 15_000,
  secret: 'bench-secret',
}

const CONTENDERS = {
  realtime: {
    label: 'payload-realtime',
    note: 'initUWebSocket + manager.emitEvent; verifies each HS256 token',
    script: 'realtime.mjs',
  },
  'uws-plugin': {
    label: 'uWS.js, old plugin way',
    note: 'rooms as JS Sets; JSON.stringify + ws.send per socket',
    script: 'uws.mjs',
    args: ['--mode', 'plugin'],
  },
  'uws-publish': {
    label: 'uWS.js publish',
    note: 'ws.subscribe on join; app.publish once per event',
    script: 'uws.mjs',
    args: ['--mode', 'publish'],
  },
  ws: { label: 'ws 8', note: 'JSON.stringify once per event; ws.send per socket', script: 'ws.mjs' },
  ceiling: {
    label: 'ceiling (bare tokio)',
    note: 'pre-encoded frames, one writev per socket per burst, 2 worker threads',
    binary: 'ceiling',
  },
}
const ANCHORS = ['uws-plugin', 'uws-publish', 'ws', 'ceiling']

const loadgenDir = path.join(here, 'loadgen')
const loadgenBin = (name) => path.join(loadgenDir, 'target', 'release', name)
const addonCopy = env.BENCH_ADDON ? path.resolve(env.BENCH_ADDON) : path.join(here, '.addon', 'payload-realtime.node')

const children = new Set()
function cleanup() {
  for (const c of children) {
    try {
      c.kill('SIGKILL')
    } catch {}
  }
}
process.on('exit', cleanup)
for (const sig of ['SIGINT', 'SIGTERM']) {
  process.on(sig, () => {
    cleanup()
    process.exit(130)
  })
}

const log = (...a) => console.error('[bench]', ...a)
const sleep = (ms) => new Promise((r) => setTimeout(r, ms))

function run(cmd, args, opts = {}) {
  log('$', cmd, args.join(' '))
  execFileSync(cmd, args, { cwd: root, stdio: ['ignore', 'inherit', 'inherit'], ...opts })
}

function capture(cmd, args) {
  try {
    return execFileSync(cmd, args, { cwd: root, stdio: ['ignore', 'pipe', 'ignore'] })
      .toString()
      .trim()
  } catch {
    return undefined
  }
}

// ---------------------------------------------------------------------------------------------
// Child processes speaking JSON lines

class Proc {
  constructor(name, cmd, args, extraEnv = {}) {
    this.name = name
    this.lines = []
    this.waiters = []
    this.exited = false
    this.child = spawn(cmd, args, { cwd: root, env: { ...env, ...extraEnv }, stdio: ['pipe', 'pipe', 'pipe'] })
    children.add(this.child)
    this.stderr = ''
    this.child.stderr.on('data', (d) => {
      this.stderr = (this.stderr + d.toString()).slice(-4000)
    })
    this.child.stdin.on('error', () => {})
    createInterface({ input: this.child.stdout }).on('line', (line) => {
      let msg
      try {
        msg = JSON.parse(line)
      } catch {
        return
      }
      const i = this.waiters.findIndex((w) => w.pred(msg))
      if (i >= 0) this.waiters.splice(i, 1)[0].resolve(msg)
      else this.lines.push(msg)
    })
    this.exit = new Promise((resolve) =>
      this.child.on('exit', (code, signal) => {
        this.exited = true
        children.delete(this.child)
        for (const w of this.waiters) w.reject(new Error(`${name} exited (${code ?? signal}): ${this.stderr}`))
        this.waiters = []
        resolve(code)
      }),
    )
  }

  next(pred, timeout, label) {
    const i = this.lines.findIndex(pred)
    if (i >= 0) return Promise.resolve(this.lines.splice(i, 1)[0])
    if (this.exited) return Promise.reject(new Error(`${this.name} has exited: ${this.stderr}`))
    return new Promise((resolve, reject) => {
      const w = { pred, resolve, reject }
      const timer = setTimeout(() => {
        this.waiters = this.waiters.filter((x) => x !== w)
        reject(new Error(`${this.name}: timed out after ${timeout} ms waiting for ${label}`))
      }, timeout)
      w.resolve = (v) => {
        clearTimeout(timer)
        resolve(v)
      }
      w.reject = (e) => {
        clearTimeout(timer)
        reject(e)
      }
      this.waiters.push(w)
    })
  }

  send(line) {
    if (!this.exited) this.child.stdin.write(line + '\n')
  }

  async stop(quitLine, timeout = 10_000) {
    if (this.exited) return
    this.send(quitLine)
    this.child.stdin.end()
    const t = setTimeout(() => this.child.kill('SIGKILL'), timeout)
    await this.exit
    clearTimeout(t)
  }
}

let seq = 0
const perfServers = list(env.BENCH_PERF, [])
/** The case being measured (names profile files). */
let currentCase = 'case'

class Server extends Proc {
  static async start(id, extraArgs = []) {
    const c = CONTENDERS[id]
    let cmd = c.binary ? loadgenBin(c.binary) : process.execPath
    let args = c.binary
      ? ['--host', '127.0.0.1', '--port', '0', ...extraArgs]
      : ['--expose-gc', path.join(here, 'servers', c.script), ...(c.args ?? []), '--secret', cfg.secret, ...extraArgs]
    if (perfServers.includes(id)) {
      const dir = path.join(here, 'profiles')
      mkdirSync(dir, { recursive: true })
      const file = path.join(dir, `${currentCase}-${id}.perf.data`)
      log(`  profiling ${id} into ${path.relative(root, file)}`)
      args = ['record', '-q', '-e', 'cpu-clock', '-F', '999', '-g', '-o', file, '--', cmd]
        .concat(c.binary ? [] : ['--perf-basic-prof'])
        .concat(args)
      cmd = 'perf'
    }
    const p = new Server(
      id,
      cmd,
      args,
      existsSync(addonCopy) && id === 'realtime' ? { NAPI_RS_NATIVE_LIBRARY_PATH: addonCopy } : {},
    )
    const ready = await p.next((m) => m.event === 'listening', 30_000, 'listening')
    p.port = ready.port
    p.pid = ready.pid
    return p
  }

  async cmd(obj, timeout = 180_000) {
    const s = ++seq
    this.send(JSON.stringify({ ...obj, seq: s }))
    const reply = await this.next((m) => m.seq === s, timeout, `reply to ${obj.cmd}`)
    if (!reply.ok) throw new Error(`${this.name}: ${obj.cmd} failed: ${reply.error}`)
    return reply
  }

  stopServer() {
    return this.stop(JSON.stringify({ cmd: 'quit' }))
  }
}

let srcCounter = 0
/** Starts enough load generator processes for `conns` sockets and waits until all are ready. */
async function startLoadgens(port, conns, opts = {}) {
  const procs = Math.ceil(conns / cfg.perLoadgen)
  const per = Math.ceil(conns / procs)
  const gens = []
  for (let i = 0; i < procs; i++) {
    const n = Math.min(per, conns - i * per)
    const offset = i * per
    // A fresh 127.0.x.y source address per process: no shared ephemeral ports or TIME_WAITs.
    const k = srcCounter++
    const src = `127.20.${Math.floor(k / 250) % 250}.${1 + (k % 250)}`
    const args = ['--port', String(port), '--conns', String(n), '--offset', String(offset), '--src', src]
    args.push('--secret', cfg.secret, '--concurrency', String(opts.concurrency ?? 200))
    args.push('--users', String(opts.users ?? conns), '--join', opts.join === false ? '0' : '1')
    if (opts.rooms) args.push('--rooms', String(opts.rooms))
    args.push('--buf', String(opts.buf ?? 16 * 1024))
    const g = new Proc(`loadgen#${i}`, loadgenBin('loadgen'), args)
    g.offset = offset
    g.conns = n
    gens.push(g)
  }
  const ready = await Promise.all(gens.map((g) => g.next((m) => m.event === 'ready', 180_000, 'ready')))
  ready.forEach((r, i) => (gens[i].ready = r))
  return gens
}

async function stopLoadgens(gens) {
  await Promise.all(gens.map((g) => g.stop('quit')))
}

/** Sums the ready lines of several load generators. */
function readySummary(gens) {
  const r = gens.map((g) => g.ready)
  const sum = (k) => r.reduce((a, x) => a + (x[k] ?? 0), 0)
  return {
    handshakes: sum('handshakes'),
    joined: sum('joined'),
    failed: sum('failed'),
    joinErrors: sum('join_errors'),
    retries: sum('retries'),
    timedOut: r.some((x) => x.timed_out),
    connectMs: Math.max(...r.map((x) => x.connect_ms)),
    handshakeSecs: Math.max(...r.map((x) => x.handshake_secs)),
    loadgenCpuUs: sum('cpu_us'),
  }
}

/** System-wide TCP counters (loopback: this run is the only heavy user, but not the only one). */
function tcpCounters() {
  const text = readFileSync('/proc/net/netstat', 'utf8').split('\n')
  const out = {}
  for (let i = 0; i + 1 < text.length; i += 2) {
    const keys = text[i].split(/\s+/)
    const vals = text[i + 1].split(/\s+/)
    if (keys[0] !== 'TcpExt:') continue
    keys.forEach((k, j) => (out[k] = Number(vals[j])))
  }
  return { synRetrans: out.TCPSynRetrans ?? 0, listenOverflows: out.ListenOverflows ?? 0 }
}

// ---------------------------------------------------------------------------------------------
// One measured burst: arm the generators, emit, wait for everything (bounded), read CPU.

async function burst(server, gens, emit, expectedOf) {
  const expected = gens.map(expectedOf)
  const total = expected.reduce((a, b) => a + b, 0)
  const timeout = Math.min(180_000, 20_000 + Math.ceil(total / 5))
  await Promise.all(
    gens.map((g, i) => {
      g.send(`measure ${expected[i]} ${timeout}`)
      return g.next((m) => m.event === 'armed', 10_000, 'armed')
    }),
  )
  const s0 = await server.cmd({ cmd: 'stats' })
  const emitted = await server.cmd({ cmd: 'emit', size: cfg.eventSize, ...emit }, timeout + 10_000)
  const results = await Promise.all(gens.map((g) => g.next((m) => m.event === 'result', timeout + 10_000, 'result')))
  const s1 = await server.cmd({ cmd: 'stats' })
  const delivered = results.reduce((a, r) => a + r.delivered, 0)
  const last = Math.max(...results.map((r) => r.last_recv_us))
  const armed = Math.min(...results.map((r) => r.armed_us))
  const secs = Math.max(1e-6, (last - emitted.t0_us) / 1e6)
  const cpuUs = s1.cpu_us - s0.cpu_us
  const lgCpu = results.reduce((a, r) => a + r.cpu_us, 0)
  return {
    expected: total,
    delivered,
    complete: delivered === total,
    timedOut: results.some((r) => r.timed_out),
    secs,
    msgsPerSec: delivered / secs,
    cpuUs,
    cpuPerMsgUs: delivered ? cpuUs / delivered : null,
    serverCpuShare: cpuUs / 1e6 / secs,
    emitSecs: (emitted.t1_us - emitted.t0_us) / 1e6,
    // Several generators: the worst one's percentiles (an upper bound of the overall figure).
    p50Ms: Math.max(...results.map((r) => r.p50_us)) / 1000,
    p99Ms: Math.max(...results.map((r) => r.p99_us)) / 1000,
    maxMs: Math.max(...results.map((r) => r.max_us)) / 1000,
    loadgenCpuShare: lgCpu / 1e6 / Math.max(1e-6, (last - armed) / 1e6) / gens.length,
    minPerSocket: Math.min(...results.map((r) => r.min_per_socket)),
    socketsReceiving: results.reduce((a, r) => a + r.sockets_receiving, 0),
    closedDuring: results.reduce((a, r) => a + r.closed_during, 0),
    stray: results.reduce((a, r) => a + (r.stray_before ?? 0), 0),
    serverRss: s1.rss,
  }
}

function median(xs) {
  const v = xs.filter((x) => typeof x === 'number' && Number.isFinite(x)).sort((a, b) => a - b)
  if (!v.length) return null
  const m = v.length >> 1
  return v.length % 2 ? v[m] : (v[m - 1] + v[m]) / 2
}

function summarize(rounds) {
  const keys = ['msgsPerSec', 'cpuPerMsgUs', 'p50Ms', 'p99Ms', 'maxMs', 'loadgenCpuShare', 'serverCpuShare', 'emitSecs']
  const out = { rounds: rounds.length }
  for (const k of keys) out[k] = median(rounds.map((r) => r[k]))
  out.allComplete = rounds.every((r) => r.complete)
  out.delivered = rounds.reduce((a, r) => a + r.delivered, 0)
  out.expected = rounds.reduce((a, r) => a + r.expected, 0)
  return out
}

/** Connects, runs warm-up + measured bursts, tears down. */
async function burstCase(id, { sockets, serverArgs = [], loadgenOpts = {}, emit, expectedPerSocket }) {
  const server = await Server.start(id, serverArgs)
  let gens = []
  try {
    gens = await startLoadgens(server.port, sockets, loadgenOpts)
    const ready = readySummary(gens)
    const expectedOf = (g) => {
      let n = 0
      for (let i = 0; i < g.conns; i++) n += expectedPerSocket(g.offset + i)
      return n
    }
    const rounds = []
    for (let r = -cfg.warmup; r < cfg.rounds; r++) {
      const res = await burst(server, gens, emit, expectedOf)
      log(
        `  ${id} round ${r < 0 ? 'warm-up' : r + 1}: ${res.delivered}/${res.expected} in ${res.secs.toFixed(3)} s = ${Math.round(res.msgsPerSec)} msg/s, ` +
          `${res.cpuPerMsgUs?.toFixed(2)} us CPU/msg, p50 ${res.p50Ms.toFixed(1)} ms, p99 ${res.p99Ms.toFixed(1)} ms, loadgen ${(res.loadgenCpuShare * 100).toFixed(0)}%`,
      )
      if (r >= 0) rounds.push(res)
    }
    return { ready, rounds, ...summarize(rounds) }
  } finally {
    await stopLoadgens(gens)
    await server.stopServer()
  }
}

// ---------------------------------------------------------------------------------------------
// Scenarios

const results = { scenarios: {} }

async function forEachServer(fn, only) {
  const out = {}
  for (const id of cfg.servers) {
    if (only && !only.includes(id)) continue
    try {
      out[id] = await fn(id)
    } catch (err) {
      log(`  ${id}: FAILED: ${err.message}`)
      out[id] = { error: String(err.message).slice(0, 500) }
    }
  }
  return out
}

async function scenarioFanout() {
  const { subscribers } = cfg.fanout
  const out = {}
  const eventsBy = {}
  for (const n of subscribers) {
    const events = (eventsBy[n] = cfg.fanout.events(n))
    log(`fan-out: ${events} events of ${cfg.eventSize} B to ${n} subscribers of one room`)
    currentCase = `fanout-${n}`
    out[n] = await forEachServer((id) =>
      burstCase(id, {
        sockets: n,
        loadgenOpts: { users: Math.min(n, 1000) },
        emit: { count: events, collection: 'posts' },
        expectedPerSocket: () => events,
      }),
    )
  }
  return { params: { events: eventsBy, eventSize: cfg.eventSize, subscribers }, bySubscribers: out }
}

async function scenarioRooms() {
  const { sockets, rooms, events } = cfg.rooms
  log(`many rooms: ${sockets} sockets over ${rooms} rooms, ${events} events spread over the rooms`)
  currentCase = 'rooms'
  const perRoom = (r) => Math.floor(events / rooms) + (r < events % rooms ? 1 : 0)
  const res = await forEachServer((id) =>
    burstCase(id, {
      sockets,
      loadgenOpts: { users: 1000, rooms },
      emit: { count: events, rooms, prefix: 'r' },
      expectedPerSocket: (g) => perRoom(g % rooms),
    }),
  )
  return { params: { sockets, rooms, events, eventSize: cfg.eventSize }, results: res }
}

async function scenarioAuthorize() {
  const { sockets, users, events } = cfg.authorize
  log(`authorize: ${sockets} sockets of ${users} users, async rule (even user numbers read), ${events} events`)
  currentCase = 'authorize'
  const res = await forEachServer(
    (id) =>
      burstCase(id, {
        sockets,
        serverArgs: ['--authorize', '1'],
        loadgenOpts: { users },
        emit: { count: events, collection: 'posts' },
        expectedPerSocket: (g) => ((g % users) % 2 === 0 ? events : 0),
      }),
    ['realtime', 'uws-plugin'],
  )
  return { params: { sockets, users, events, eventSize: cfg.eventSize }, results: res }
}

async function scenarioIdle() {
  const out = {}
  for (const n of cfg.idle.counts) {
    log(`idle memory: ${n} idle authenticated sockets, each joined to one room`)
    currentCase = `idle-${n}`
    out[n] = await forEachServer(async (id) => {
      const server = await Server.start(id)
      let gens = []
      try {
        await server.cmd({ cmd: 'gc' })
        await sleep(300)
        const s0 = await server.cmd({ cmd: 'stats' })
        gens = await startLoadgens(server.port, n, { users: Math.min(n, 1000), buf: 1024 })
        const ready = readySummary(gens)
        await sleep(1500)
        await server.cmd({ cmd: 'gc' })
        await sleep(500)
        const s1 = await server.cmd({ cmd: 'stats' })
        const held = ready.joined
        const r = {
          sockets: n,
          held,
          failed: ready.failed,
          rssBase: s0.rss,
          rss: s1.rss,
          bytesPerConn: held ? (s1.rss - s0.rss) / held : null,
          connections: s1.connections,
          generators: gens.length,
        }
        log(`  ${id}: ${held}/${n} held, RSS ${mb(s0.rss)} -> ${mb(s1.rss)}, ${Math.round(r.bytesPerConn)} B/conn`)
        return r
      } finally {
        await stopLoadgens(gens)
        await server.stopServer()
      }
    })
  }
  return { params: { counts: cfg.idle.counts }, byCount: out }
}

async function scenarioStorm() {
  const { conns, concurrency } = cfg.storm
  log(`connection storm: ${conns} authenticated handshakes, ${concurrency} in flight, distinct tokens`)
  currentCase = 'storm'
  const res = await forEachServer(async (id) => {
    const server = await Server.start(id)
    const rounds = []
    try {
      for (let r = -cfg.warmup; r < cfg.rounds; r++) {
        const s0 = await server.cmd({ cmd: 'stats' })
        const tcp0 = tcpCounters()
        const gens = await startLoadgens(server.port, conns, { join: false, users: conns, concurrency, buf: 1024 })
        const ready = readySummary(gens)
        const s1 = await server.cmd({ cmd: 'stats' })
        const tcp1 = tcpCounters()
        await stopLoadgens(gens)
        // Let the server see every close before the next round.
        for (let i = 0; i < 100; i++) {
          const s = await server.cmd({ cmd: 'stats' })
          if (s.connections <= 0) break
          await sleep(100)
        }
        const res = {
          handshakes: ready.handshakes,
          failed: ready.failed,
          retries: ready.retries,
          secs: ready.handshakeSecs,
          perSec: ready.handshakes / Math.max(1e-6, ready.handshakeSecs),
          cpuPerHandshakeUs: ready.handshakes ? (s1.cpu_us - s0.cpu_us) / ready.handshakes : null,
          synRetrans: tcp1.synRetrans - tcp0.synRetrans,
          listenOverflows: tcp1.listenOverflows - tcp0.listenOverflows,
        }
        log(
          `  ${id} round ${r < 0 ? 'warm-up' : r + 1}: ${res.handshakes} in ${res.secs.toFixed(3)} s = ${Math.round(res.perSec)}/s, ` +
            `${res.cpuPerHandshakeUs?.toFixed(1)} us CPU each, ${res.failed} failed, ${res.synRetrans} SYN retransmits`,
        )
        if (r >= 0) rounds.push(res)
      }
      return {
        rounds,
        perSec: median(rounds.map((r) => r.perSec)),
        cpuPerHandshakeUs: median(rounds.map((r) => r.cpuPerHandshakeUs)),
        failed: rounds.reduce((a, r) => a + r.failed, 0),
        synRetrans: rounds.reduce((a, r) => a + r.synRetrans, 0),
        listenOverflows: rounds.reduce((a, r) => a + r.listenOverflows, 0),
      }
    } finally {
      await server.stopServer()
    }
  })
  return { params: { conns, concurrency }, results: res }
}

// ---------------------------------------------------------------------------------------------
// Report

const mb = (b) => `${(b / 1048576).toFixed(1)} MB`
const fmtInt = (v) => (v == null ? '-' : Math.round(v).toLocaleString('en-US'))
const fmt = (v, d = 2) => (v == null ? '-' : v.toFixed(d))
const ratio = (a, b) => (a == null || b == null || b === 0 ? '-' : `${(a / b).toFixed(2)}x`)
const label = (id) => CONTENDERS[id].label

function machine() {
  const cpuModel =
    (readFileSync('/proc/cpuinfo', 'utf8').match(/model name\s*:\s*(.*)/) ?? [])[1] ?? os.cpus()[0]?.model
  let nofile
  try {
    nofile = execFileSync('sh', ['-c', 'ulimit -n']).toString().trim()
  } catch {}
  const pkgVersion = (name) => {
    try {
      return JSON.parse(readFileSync(path.join(root, 'node_modules', name, 'package.json'), 'utf8')).version
    } catch {
      return undefined
    }
  }
  return {
    nproc: os.availableParallelism?.() ?? os.cpus().length,
    cpuModel,
    memoryBytes: os.totalmem(),
    kernel: `${os.type()} ${os.release()}`,
    node: process.version,
    rustc: capture('rustc', ['--version']),
    openFilesLimit: nofile,
    uws: pkgVersion('@trufflesuite/uws-js-unofficial'),
    ws: pkgVersion('ws'),
    gitCommit: capture('git', ['rev-parse', '--short', 'HEAD']),
    gitDirty: Boolean(capture('git', ['status', '--porcelain', '--', 'src', 'crates', 'lib'])),
  }
}

function fanoutTable(byId, anchors) {
  const rows = [
    '| server | msg/s | server CPU per msg | p50 | p99 | max | server CPU | loadgen CPU | delivered |',
    '|---|---:|---:|---:|---:|---:|---:|---:|---|',
  ]
  for (const id of cfg.servers) {
    const r = byId?.[id]
    if (!r) continue
    if (r.error) {
      rows.push(`| ${label(id)} | failed: ${r.error.replace(/\|/g, '/').slice(0, 120)} | | | | | | | |`)
      continue
    }
    rows.push(
      `| ${label(id)} | ${fmtInt(r.msgsPerSec)} | ${fmt(r.cpuPerMsgUs)} µs | ${fmt(r.p50Ms, 1)} ms | ${fmt(r.p99Ms, 1)} ms | ${fmt(r.maxMs, 1)} ms | ` +
        `${fmt(r.serverCpuShare * 100, 0)}% | ${fmt(r.loadgenCpuShare * 100, 0)}% | ${r.allComplete ? 'all' : `${r.delivered}/${r.expected}`} |`,
    )
  }
  const rt = byId?.realtime
  if (rt && !rt.error && anchors.some((a) => byId[a] && !byId[a].error)) {
    rows.push('')
    rows.push(
      '| payload-realtime vs | msg/s ratio (higher is better) | CPU per msg ratio (lower is better) | p99 ratio |',
    )
    rows.push('|---|---:|---:|---:|')
    for (const a of anchors) {
      const r = byId[a]
      if (!r || r.error) continue
      rows.push(
        `| ${label(a)} | ${ratio(rt.msgsPerSec, r.msgsPerSec)} | ${ratio(rt.cpuPerMsgUs, r.cpuPerMsgUs)} | ${ratio(rt.p99Ms, r.p99Ms)} |`,
      )
    }
  }
  return rows.join('\n')
}

function report(meta) {
  const m = meta.machine
  const s = results.scenarios
  const out = []
  out.push('# Benchmarks')
  out.push('')
  out.push(
    'payload-realtime side by side with uWebSockets.js, ws and a bare tokio "ceiling", measured in one run on one machine over loopback. ' +
      'Generated by `npm run bench` (`benches/run.mjs`); the raw figures of every round are in `benches/results.json`.',
  )
  out.push('')
  out.push(
    `- Run: ${meta.date}, ${cfg.quick ? '**quick** run (`BENCH_QUICK=1`: small sizes, few rounds)' : 'full run'}, ${cfg.rounds} measured round(s) after ${cfg.warmup} warm-up round(s) per case; figures are medians over the rounds.`,
  )
  out.push(
    `- Machine: ${m.nproc} cores (${m.cpuModel}), ${(m.memoryBytes / 2 ** 30).toFixed(1)} GiB RAM, ${m.kernel}, Node ${m.node}, ${m.rustc}; open files limit ${m.openFilesLimit} per process.`,
  )
  out.push(
    `- Code: commit ${m.gitCommit}${m.gitDirty ? ' plus uncommitted changes in src/, crates/ or lib/' : ''}; addon ${meta.addon}. Anchors: @trufflesuite/uws-js-unofficial ${m.uws} (a uWebSockets.js 20.x build, native), ws ${m.ws}.`,
  )
  out.push(
    `- Reproduce: \`npm run bench\` (full, about 12 minutes including the addon build) or \`BENCH_QUICK=1 npm run bench\` (about 2 minutes); \`BENCH_SKIP_BUILD=1\` skips the addon build. Other knobs are listed at the top of \`benches/run.mjs\`.`,
  )
  out.push('')
  out.push('## How it is measured')
  out.push('')
  out.push(
    [
      '- **Load generator**: `benches/loadgen` (Rust, tokio current_thread: one core; the server gets the other). A hand-written WebSocket client: raw TCP, handshake with `?token=`, masked outgoing frames, frame parsing. It joins each socket to its room (`{"type":"join-collection","collection":...}`) and waits for every ack before a round starts. Above 15,000 sockets it runs as several processes (20,000 open files per process).',
      '- **Servers**: one process per contender, started fresh for each case, driven over stdin (`benches/servers/*.mjs`, `benches/loadgen/src/bin/ceiling.rs`). Each reports its own CPU time (`process.cpuUsage()` user + system, or `getrusage` for the ceiling) and RSS. payload-realtime runs as an application would: `initUWebSocket(0, { host, secret })`, events through `manager.emitEvent`, release build of the addon.',
      '- **Tokens**: payload-realtime gets Payload tokens (HS256, key = sha256(secret) hex, first 32 chars) and verifies every one. **The anchors check no tokens**: they accept any handshake (in the authorize scenario the uWS server reads the user id out of the token without checking the signature).',
      '- **Events**: `{ type: "update", collection, id, doc: { t, pad }, timestamp }`, about 1 KB of JSON, the same bytes for every contender; `doc.t` is the wall-clock emit time in ms (`performance.timeOrigin + performance.now()`, or `SystemTime` in the ceiling), set just before each event is emitted.',
      '- **Quick runs** move 20,000 to 100,000 messages per round: their figures are indicative and noisy (tenths of a second per round); publish numbers from a full run.',
      '- **msg/s** = messages delivered to the generator ÷ (last receive − first emit). **Server CPU per msg** = server CPU time (all threads) during the round ÷ messages delivered: with server and generator sharing 2 cores this is the figure that holds. **Latency** = receive time − `doc.t` (same clock, same machine), over every message. **server CPU / loadgen CPU** = share of one core (100% = one core; the machine has 2) each used during the round: a loadgen near 100% would mean the generator, not the server, set the pace.',
      "- **Ceiling**: a bare tokio server with no logic (`benches/loadgen/src/bin/ceiling.rs`): accepts handshakes, acks joins, and writes the same pre-encoded frames with one `writev` per socket per burst. It shows what this machine's loopback TCP can do; every other row reads as a fraction of it. In the many-rooms scenario it writes each room\'s events as one burst (the others get them one event at a time).",
      '- Events are emitted "as fast as accepted": payload-realtime gets every `emitEvent` at once and awaits them together; the JS anchors run their send loops synchronously.',
    ].join('\n'),
  )
  out.push('')

  if (s.fanout) {
    const f = s.fanout
    out.push(`## 1. Fan-out: events of ${f.params.eventSize} B to every subscriber of one room, as fast as accepted`)
    out.push('')
    for (const n of f.params.subscribers) {
      const ev = f.params.events[n]
      out.push(
        `### ${n.toLocaleString('en-US')} subscribers, ${ev} events per round (${(n * ev).toLocaleString('en-US')} messages)`,
      )
      out.push('')
      out.push(fanoutTable(f.bySubscribers[n], ANCHORS))
      out.push('')
    }
  }
  if (s.rooms) {
    const p = s.rooms.params
    out.push(
      `## 2. Many rooms: ${p.sockets.toLocaleString('en-US')} sockets over ${p.rooms.toLocaleString('en-US')} rooms, ${p.events.toLocaleString('en-US')} events spread round-robin over the rooms`,
    )
    out.push('')
    out.push(fanoutTable(s.rooms.results, ANCHORS))
    out.push('')
  }
  if (s.authorize) {
    const p = s.authorize.params
    out.push(
      `## 3. Authorize: ${p.sockets.toLocaleString('en-US')} sockets of ${p.users} users, an async rule (even user numbers may read), ${p.events} events`,
    )
    out.push('')
    out.push(
      "payload-realtime calls the rule once per distinct user per event, batched in one crossing; the old plugin's way (emulated on uWS.js) awaits the rule once per socket, in sequence, then stringifies and sends. Half the sockets receive each event. Only these two contenders have an authorize step.",
    )
    out.push('')
    out.push(fanoutTable(s.authorize.results, ['uws-plugin']))
    out.push('')
  }
  if (s.idle) {
    out.push('## 4. Idle memory: RSS per connection')
    out.push('')
    out.push(
      'Server RSS after start (and a GC for the Node servers), then after N authenticated sockets have connected, joined one room and gone quiet (1.5 s, then a GC). RSS per connection = the difference ÷ sockets held. ' +
        'A single server process cannot hold 20,000 sockets here (20,000 open files per process, and the process has other descriptors), the largest case the full run measures is 19,000 sockets, from two generator processes' +
        (s.idle.params.counts.some((n) => n > 10_000) ? '.' : ' (this run measured 10,000 only).'),
    )
    out.push('')
    out.push('| server | sockets held | RSS before | RSS after | RSS per connection |')
    out.push('|---|---:|---:|---:|---:|')
    for (const n of s.idle.params.counts) {
      for (const id of cfg.servers) {
        const r = s.idle.byCount[n]?.[id]
        if (!r) continue
        if (r.error) {
          out.push(`| ${label(id)} @ ${n} | failed: ${r.error.replace(/\|/g, '/').slice(0, 120)} | | | |`)
          continue
        }
        out.push(
          `| ${label(id)} | ${r.held.toLocaleString('en-US')} of ${n.toLocaleString('en-US')} | ${mb(r.rssBase)} | ${mb(r.rss)} | ${fmtInt(r.bytesPerConn)} B |`,
        )
      }
    }
    const rows = []
    for (const n of s.idle.params.counts) {
      const rt = s.idle.byCount[n]?.realtime
      if (!rt || rt.error) continue
      for (const a of ANCHORS) {
        const r = s.idle.byCount[n]?.[a]
        if (r && !r.error)
          rows.push(`| ${n.toLocaleString('en-US')} | ${label(a)} | ${ratio(rt.bytesPerConn, r.bytesPerConn)} |`)
      }
    }
    if (rows.length) {
      out.push('')
      out.push('| sockets | payload-realtime vs | memory per connection ratio (lower is better) |')
      out.push('|---:|---|---:|')
      out.push(...rows)
    }
    out.push('')
  }
  if (s.storm) {
    const p = s.storm.params
    out.push(
      `## 5. Connection storm: ${p.conns.toLocaleString('en-US')} authenticated handshakes, ${p.concurrency} in flight`,
    )
    out.push('')
    out.push(
      "Each round opens every socket with its own token (distinct users) and no join, then closes them all. Handshakes/s = sockets upgraded ÷ time from the first connect to the last 101. SYN retransmits are the kernel's counter over the round (system-wide; a dropped SYN costs a 1 s retransmit), a sign of a full listen queue.",
    )
    out.push('')
    out.push('| server | handshakes/s | server CPU per handshake | failed | SYN retransmits (all rounds) |')
    out.push('|---|---:|---:|---:|---:|')
    for (const id of cfg.servers) {
      const r = s.storm.results[id]
      if (!r) continue
      if (r.error) {
        out.push(`| ${label(id)} | failed: ${r.error.replace(/\|/g, '/').slice(0, 120)} | | | |`)
        continue
      }
      out.push(
        `| ${label(id)} | ${fmtInt(r.perSec)} | ${fmt(r.cpuPerHandshakeUs, 1)} µs | ${r.failed} | ${r.synRetrans} |`,
      )
    }
    const rt = s.storm.results.realtime
    if (rt && !rt.error) {
      out.push('')
      out.push('| payload-realtime vs | handshakes/s ratio | CPU per handshake ratio |')
      out.push('|---|---:|---:|')
      for (const a of ANCHORS) {
        const r = s.storm.results[a]
        if (r && !r.error)
          out.push(
            `| ${label(a)} | ${ratio(rt.perSec, r.perSec)} | ${ratio(rt.cpuPerHandshakeUs, r.cpuPerHandshakeUs)} |`,
          )
      }
    }
    out.push('')
  }
  out.push('## 6. Several instances through Redis')
  out.push('')
  out.push('| server | msg/s | server CPU per msg | p99 |')
  out.push('|---|---:|---:|---:|')
  out.push('| payload-realtime (2 instances, Redis) | not yet measured | | |')
  out.push('')
  out.push('## Contenders')
  out.push('')
  for (const id of cfg.servers) out.push(`- **${label(id)}**: ${CONTENDERS[id].note}.`)
  out.push('')
  return out.join('\n')
}

// ---------------------------------------------------------------------------------------------
// Main

const mdPath = env.BENCH_OUT ? path.resolve(env.BENCH_OUT) : path.join(root, 'BENCHMARKS.md')
const jsonPath = env.BENCH_OUT ? mdPath.replace(/\.md$/, '') + '.json' : path.join(here, 'results.json')

/**
 * Writes the report, keeping the sections written elsewhere (the churn soak's, from
 * benches/soak.mjs, and the hand-written reading of the targets), marked `<!-- name:start -->`.
 */
function writeReport(markdown) {
  const old = existsSync(mdPath) ? readFileSync(mdPath, 'utf8') : ''
  const kept = [...old.matchAll(/<!-- (\w+):start -->[\s\S]*?<!-- \1:end -->/g)].map((m) => m[0])
  writeFileSync(mdPath, kept.length ? `${markdown.trimEnd()}\n\n${kept.join('\n\n')}\n` : markdown)
}

async function main() {
  if (env.BENCH_REPORT_ONLY === '1') {
    const saved = JSON.parse(readFileSync(jsonPath, 'utf8'))
    const { fanout, ...rest } = saved.meta.config
    Object.assign(cfg, rest)
    results.scenarios = saved.scenarios
    writeReport(report(saved.meta))
    log(`rewrote ${path.relative(root, mdPath)} from ${path.relative(root, jsonPath)}`)
    return
  }
  const started = Date.now()
  if (cfg.servers.includes('uws-plugin') || cfg.servers.includes('uws-publish')) {
    const { createRequire } = await import('node:module')
    const uWS = createRequire(import.meta.url)('@trufflesuite/uws-js-unofficial')
    if (!String(uWS.App).includes('[native code]')) {
      throw new Error('@trufflesuite/uws-js-unofficial is not native on this Node: its numbers would be meaningless')
    }
  }
  let addon
  if (env.BENCH_ADDON) {
    if (!existsSync(addonCopy)) throw new Error(`BENCH_ADDON: no file ${addonCopy}`)
    addon = `given by BENCH_ADDON (${env.BENCH_ADDON}), not rebuilt`
  } else if (env.BENCH_SKIP_BUILD === '1') {
    if (!existsSync(addonCopy)) {
      const built = path.join(root, 'payload-realtime.linux-x64-gnu.node')
      if (!existsSync(built)) throw new Error('no addon: run without BENCH_SKIP_BUILD=1')
      mkdirSync(path.dirname(addonCopy), { recursive: true })
      copyFileSync(built, addonCopy)
      addon = 'not rebuilt (the root .node as found: may be a debug build)'
    } else addon = `not rebuilt (benches/.addon copy from ${statSync(addonCopy).mtime.toISOString()})`
  } else {
    run('npx', ['napi', 'build', '--platform', '--release', '--js', 'binding.js', '--dts', 'binding.d.ts'])
    const built = path.join(root, `payload-realtime.${process.platform}-${process.arch}-gnu.node`)
    mkdirSync(path.dirname(addonCopy), { recursive: true })
    // A private copy: a debug rebuild in the work tree during the run cannot swap it.
    copyFileSync(built, addonCopy)
    addon = 'release build, made by this run'
  }
  run('cargo', ['build', '--release', '--manifest-path', path.join(loadgenDir, 'Cargo.toml')], {
    env: { ...env, CARGO_TARGET_DIR: path.join(loadgenDir, 'target') },
  })

  const meta = { date: new Date().toISOString(), machine: machine(), addon, config: cfg }
  log('machine:', JSON.stringify(meta.machine))
  const scenarios = {
    fanout: scenarioFanout,
    rooms: scenarioRooms,
    authorize: scenarioAuthorize,
    idle: scenarioIdle,
    storm: scenarioStorm,
  }
  for (const name of cfg.scenarios) {
    if (!scenarios[name]) throw new Error(`unknown scenario ${name} (BENCH_ONLY)`)
    results.scenarios[name] = await scenarios[name]()
  }
  meta.durationSecs = (Date.now() - started) / 1000
  const json = jsonPath
  writeFileSync(json, JSON.stringify({ meta, ...results }, null, 2) + '\n')
  writeReport(report(meta))
  // Keep results.json in the repository's formatting (prettier --check runs in CI).
  const prettier = path.join(root, 'node_modules', '.bin', 'prettier')
  if (existsSync(prettier)) {
    try {
      execFileSync(prettier, ['--write', json], { cwd: root, stdio: 'ignore' })
    } catch {}
  }
  log(`done in ${meta.durationSecs.toFixed(0)} s: ${path.relative(root, mdPath)}, ${path.relative(root, json)}`)
}

main().catch((err) => {
  console.error(err)
  cleanup()
  process.exit(1)
})
