#!/usr/bin/env node
// `npm run bench`: payload-realtime side by side with uWebSockets.js, ws and a bare tokio ceiling
// (and, across two instances through Redis, Socket.IO with its Redis adapter), in one run, on
// loopback. Builds the addon (release) and the Rust load generator, runs every scenario against
// every contender, writes BENCHMARKS.md and benches/results.json.
//
// Environment (all optional):
//   BENCH_QUICK=1            small sizes and few rounds (about 4 minutes)
//   BENCH_SKIP_BUILD=1       do not rebuild the addon (uses the root .node if newer than benches/.addon/)
//   BENCH_ADDON=file.node    use this addon (e.g. a release build with symbols, for profiles)
//   BENCH_ROUNDS=n           measured rounds per case (default 5, quick 2); BENCH_WARMUP=n (1)
//   BENCH_ONLY=a,b           scenarios: fanout, clients, rooms, authorize, idle, storm, redis; the other
//                            scenarios keep their figures from the JSON this run replaces (each
//                            section of the report says which run measured it)
//   BENCH_SERVERS=a,b        contenders: realtime, realtime-authorize (fan-out only), uws-plugin,
//                            uws-publish, ws, ceiling
//   BENCH_REALTIME_THREADS=n payload-realtime's workerThreads (default: its own default)
//   BENCH_CEILING_THREADS=n  the ceiling's worker threads (default: payload-realtime's default,
//                            the cores minus one)
//   BENCH_FANOUT_SUBSCRIBERS=1000,10000   BENCH_FANOUT_EVENTS=100 (events per round, every size)
//   BENCH_FANOUT_PACED_RATE=100000 (messages/s offered in the paced fan-out case; 0 leaves it out)
//   BENCH_LOADGEN_BUF=262144 the load generator's read buffer (one per process, shared by its sockets)
//   BENCH_CLIENTS=tungstenite,browser the clients scenario's generators: tungstenite (tokio-tungstenite
//                            0.24, benches/loadgen/src/bin/tungstenite.rs), browser (headless Chromium
//                            pages, benches/clients/browser.mjs; default where /usr/bin/chromium is),
//                            ws (Node's ws 8 clients in one process, benches/clients/ws.mjs),
//                            loadgen (the bench's own)
//   BENCH_BROWSER_SOCKETS=200  BENCH_BROWSER_PAGES=4 (the browser case's sockets, over that many pages)
//   BENCH_BROWSER_EVENTS=20  BENCH_BROWSER_PACED_RATE=2000 (its burst, and its paced rate)
//   BENCH_WS_CLIENTS=2000 (the ws generator's sockets; it takes the tungstenite case's events and rate)
//   BENCH_CLIENTS_SUBSCRIBERS=10000  BENCH_CLIENTS_EVENTS=100 (quick: 20)
//   BENCH_CLIENTS_PACED_RATE=50000 (messages/s offered, one event at a time; 0 leaves it out)
//   BENCH_CLIENTS_PACED_EVENTS=20 (quick: 10)
//   BENCH_EVENT_SIZE=1024    BENCH_ROOMS_EVENTS  BENCH_IDLE_COUNTS=10000,19000
//   BENCH_AUTH_EVENTS=1,20,100 (events per round, one case each)  BENCH_AUTH_SLOW_MS=1 (the lone
//                            event's case whose rule waits that long; 0 leaves it out)
//   BENCH_STORM_CONNS  BENCH_STORM_CONCURRENCY=200
//   BENCH_REDIS_SUBSCRIBERS=1000,10000   BENCH_REDIS_SERVERS=realtime,socketio
//   BENCH_REDIS_PACED_RATE=20000 (messages/s offered in the paced case)  BENCH_REDIS_PACED_EVENTS
//   BENCH_REDIS_BURST_EVENTS   (the redis scenario starts its own redis-server: Debian's package)
//   BENCH_OUT=path           where BENCHMARKS.md goes (default: the repository root); with it set,
//                            the JSON goes next to it (same name, .json) instead of benches/results.json
//   BENCH_STRICT=1           exit with 1 if any case failed or lost an event (CI's smoke run)
//   BENCH_REPORT_ONLY=1      measure nothing: rewrite the Markdown from the JSON of an earlier run
//   BENCH_PERF=id,id         record a CPU profile of these servers (e.g. `realtime`; or of the
//                            load generators: `loadgen`, `tungstenite`) with
//                            `perf record -e cpu-clock -g` (node gets --perf-basic-prof) into
//                            benches/profiles/<case>-<server>.perf.data; read with `perf report -i`.
//                            Profiles slow the server down: do not mix them with published numbers.
//
// Nothing here is a test: there are no thresholds, only measurements. Every wait is bounded.

import { spawn, execFileSync } from 'node:child_process'
import { copyFileSync, existsSync, mkdirSync, readFileSync, statSync, writeFileSync } from 'node:fs'
import net from 'node:net'
import os from 'node:os'
import path from 'node:path'
import { createInterface } from 'node:readline'
import { fileURLToPath } from 'node:url'

import { wrapReport } from './markdown.mjs'

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
  scenarios: list(env.BENCH_ONLY, ['fanout', 'clients', 'rooms', 'authorize', 'idle', 'storm', 'redis']),
  servers: list(env.BENCH_SERVERS, ['realtime', 'realtime-authorize', 'uws-plugin', 'uws-publish', 'ws', 'ceiling']),
  fanout: {
    subscribers: list(env.BENCH_FANOUT_SUBSCRIBERS, ['1000', '10000']).map(Number),
    // Events per round; quick: 20 to 1,000 subscribers, 10 to 10,000.
    events: (n) => int(env.BENCH_FANOUT_EVENTS, QUICK ? (n >= 10_000 ? 10 : 20) : 100),
    // The paced case: messages/s offered, and events per round.
    pacedRate: int(env.BENCH_FANOUT_PACED_RATE, 100_000),
    pacedEvents: (n) => (n >= 10_000 ? (QUICK ? 10 : 40) : QUICK ? 50 : 200),
  },
  // Fan-out to clients built on a real client library (see scenarioClients), against uWS.js publish.
  clients: {
    // The browser case runs where Debian's Chromium is (CI has it).
    generators: list(
      env.BENCH_CLIENTS,
      existsSync(env.PAYLOAD_REALTIME_CHROMIUM || '/usr/bin/chromium') ? ['tungstenite', 'browser'] : ['tungstenite'],
    ),
    // Real browser WebSockets: a few hundred, over a few pages (each page is a renderer).
    // A browser takes about 150-250 µs of CPU per message here (every message crosses from its
    // network process to a renderer): fewer events, and a paced rate it sustains.
    browserSockets: int(env.BENCH_BROWSER_SOCKETS, 200),
    browserPages: int(env.BENCH_BROWSER_PAGES, 4),
    browserEvents: int(env.BENCH_BROWSER_EVENTS, 20),
    browserPacedRate: int(env.BENCH_BROWSER_PACED_RATE, 2_000),
    // Node's ws client costs several µs per message: fewer sockets.
    wsSockets: int(env.BENCH_WS_CLIENTS, 2_000),
    subscribers: int(env.BENCH_CLIENTS_SUBSCRIBERS, 10_000),
    events: int(env.BENCH_CLIENTS_EVENTS, QUICK ? 20 : 100),
    // And events one at a time, this many messages/s offered (0 leaves the paced case out).
    pacedRate: int(env.BENCH_CLIENTS_PACED_RATE, 50_000),
    pacedEvents: int(env.BENCH_CLIENTS_PACED_EVENTS, QUICK ? 10 : 20),
    servers: ['realtime', 'uws-publish'],
  },
  rooms: { sockets: 10_000, rooms: 1_000, events: int(env.BENCH_ROOMS_EVENTS, QUICK ? 3_000 : 20_000) },
  // Events per round, one case each: a lone event (how a saved document reaches the sockets),
  // a short burst, and the fan-out scenario's burst.
  authorize: {
    sockets: 10_000,
    users: 100,
    events: list(env.BENCH_AUTH_EVENTS, QUICK ? ['1', '5'] : ['1', '20', '100']).map(Number),
    // And a lone event whose rule waits this long (a database read); 0 leaves the case out.
    slowRuleMs: int(env.BENCH_AUTH_SLOW_MS, 1),
  },
  idle: { counts: list(env.BENCH_IDLE_COUNTS, QUICK ? ['10000'] : ['10000', '19000']).map(Number) },
  storm: {
    conns: int(env.BENCH_STORM_CONNS, QUICK ? 4_000 : 10_000),
    concurrency: int(env.BENCH_STORM_CONCURRENCY, 200),
  },
  redis: {
    subscribers: list(env.BENCH_REDIS_SUBSCRIBERS, ['1000', '10000']).map(Number),
    servers: list(env.BENCH_REDIS_SERVERS, ['realtime', 'socketio']),
    // Paced: one event at a time, at this many messages per second offered (events/s × subscribers):
    // 1 event every 50 ms to 1,000 subscribers, every 500 ms to 10,000.
    pacedRate: int(env.BENCH_REDIS_PACED_RATE, 20_000),
  },
  // One load generator process holds at most this many sockets (20,000 open files per process).
  perLoadgen: 15_000,
  secret: 'bench-secret',
  // The ceiling gets as many worker threads as payload-realtime's default (the cores minus one,
  // 1 to 16): the same shape of runtime, with none of the logic.
  // payload-realtime's workerThreads (default: its own default).
  realtimeThreads: int(env.BENCH_REALTIME_THREADS, 0),
  ceilingThreads: int(env.BENCH_CEILING_THREADS, Math.min(16, Math.max(1, os.availableParallelism() - 1))),
}

const CONTENDERS = {
  realtime: {
    label: 'payload-realtime',
    note: 'initUWebSocket + manager.emitEvent; verifies each HS256 token',
    script: 'realtime.mjs',
  },
  // The issue's fan-out targets hold "with authorize and backpressure on": the same server with an
  // async rule on the room's collection that lets every signed-in user read, so it delivers what
  // the others deliver. The rule runs once per distinct user per event (the fan-out's sockets
  // belong to 1,000 users). Measured in the fan-out scenario only.
  'realtime-authorize': {
    label: 'payload-realtime, authorize on',
    note: 'the same, with an async authorize rule on `posts` that lets every signed-in user read (called once per distinct user per event, 1,000 users)',
    script: 'realtime.mjs',
    args: ['--authorize', '1', '--rule', 'any'],
    fanoutOnly: true,
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
    note: 'pre-encoded frames, one writev per socket per burst, as many worker threads as payload-realtime',
    binary: 'ceiling',
  },
  // Only in the redis scenario (BENCH_REDIS_SERVERS); the load generator speaks Engine.IO v4 to it.
  socketio: {
    label: 'Socket.IO 4 + redis-adapter',
    note: 'socket.io 4 with @socket.io/redis-adapter and the redis client (pub/sub), WebSocket transport only, no token check; io.to(room).emit per event',
    script: 'socketio.mjs',
    loadgen: { protocol: 'socketio', path: '/socket.io/?EIO=4&transport=websocket' },
  },
}
const ANCHORS = ['uws-plugin', 'uws-publish', 'ws', 'ceiling']
/** The load generators: the bench's own (reads a whole burst per socket at once) and clients on a real library. */
const GENERATORS = {
  loadgen: { label: "the bench's own generator", binary: 'loadgen' },
  tungstenite: { label: 'tokio-tungstenite 0.24', binary: 'tungstenite' },
  browser: { label: 'Chromium, headless', script: 'clients/browser.mjs' },
  ws: { label: 'ws 8 (Node)', script: 'clients/ws.mjs' },
}
/** Events per case of the redis scenario (functions stay out of `cfg`, which is saved as JSON). */
const redisEvents = {
  paced: (n) => int(env.BENCH_REDIS_PACED_EVENTS, n >= 10_000 ? (QUICK ? 10 : 20) : QUICK ? 50 : 100),
  burst: (n) => int(env.BENCH_REDIS_BURST_EVENTS, n >= 10_000 ? (QUICK ? 10 : 50) : QUICK ? 50 : 100),
}

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

const clockTicks = Number(capture('getconf', ['CLK_TCK'])) || 100

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
/** What went wrong in this run (BENCH_STRICT=1 makes any of it fail the run). */
const problems = []
function problem(what) {
  problems.push(`${currentCase}: ${what}`)
}

class Server extends Proc {
  static async start(id, extraArgs = []) {
    const c = CONTENDERS[id]
    let cmd = c.binary ? loadgenBin(c.binary) : process.execPath
    let args = c.binary
      ? ['--host', '127.0.0.1', '--port', '0', '--threads', String(cfg.ceilingThreads), ...extraArgs]
      : ['--expose-gc', path.join(here, 'servers', c.script), ...(c.args ?? []), '--secret', cfg.secret, ...extraArgs]
    if (c.script === 'realtime.mjs' && cfg.realtimeThreads) args.push('--workerThreads', String(cfg.realtimeThreads))
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
      existsSync(addonCopy) && c.script === 'realtime.mjs' ? { NAPI_RS_NATIVE_LIBRARY_PATH: addonCopy } : {},
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
    if (env.BENCH_LOADGEN_BUF) args.push('--buf', env.BENCH_LOADGEN_BUF)
    if (opts.checkIds) args.push('--check-ids', String(opts.checkIds))
    if (opts.kernelTs) args.push('--kernel-ts', '1')
    if (opts.protocol) args.push('--protocol', opts.protocol)
    if (opts.path) args.push('--path', opts.path)
    const gen = GENERATORS[opts.generator ?? 'loadgen']
    let cmd = gen.script ? process.execPath : loadgenBin(gen.binary)
    if (gen.script) args.unshift(path.join(here, gen.script))
    if (opts.pages) args.push('--pages', String(opts.pages))
    const genId = opts.generator ?? 'loadgen'
    if (perfServers.includes(genId)) {
      // BENCH_PERF=tungstenite (or loadgen, ws): the generators' profiles, named by the server they read.
      const dir = path.join(here, 'profiles')
      mkdirSync(dir, { recursive: true })
      const file = path.join(dir, `${currentCase}-${opts.serverId ?? 'server'}-${genId}-${i}.perf.data`)
      log(`  profiling ${genId}#${i} into ${path.relative(root, file)}`)
      if (gen.script) args.unshift('--perf-basic-prof')
      args.unshift('record', '-q', '-e', 'cpu-clock', '-F', '999', '-g', '-o', file, '--', cmd)
      cmd = 'perf'
    }
    const g = new Proc(`${gen.binary ?? opts.generator}#${i}`, cmd, args)
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

/** CPU time (µs) the whole machine has spent busy so far (all processes, all cores). */
function machineBusyUs() {
  const f = readFileSync('/proc/stat', 'utf8').split('\n')[0].trim().split(/\s+/).slice(1).map(Number)
  // user nice system idle iowait irq softirq steal
  const busy = f[0] + f[1] + f[2] + f[5] + f[6] + (f[7] ?? 0)
  return (busy * 1e6) / clockTicks
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

/**
 * The CPU time of the processes a case measures: by default the one server; the redis scenario
 * adds up both instances and redis-server (`parts` keeps them apart).
 */
const serverCpu = (server) => async () => {
  const s = await server.cmd({ cmd: 'stats' })
  return { total: s.cpu_us, rss: s.rss, parts: { server: s.cpu_us } }
}

/** Pages (4 KiB) all TCP sockets of the machine hold now (`/proc/net/sockstat`, "TCP: ... mem N"). */
function tcpMemPages() {
  const m = readFileSync('/proc/net/sockstat', 'utf8').match(/^TCP:.* mem (\d+)/m)
  return m ? Number(m[1]) : 0
}

async function burst(server, gens, emit, expectedOf, { cpu = serverCpu(server) } = {}) {
  const expected = gens.map(expectedOf)
  const total = expected.reduce((a, b) => a + b, 0)
  const pacing = emit.intervalMs ? emit.intervalMs * emit.count : 0
  const timeout = Math.min(180_000 + pacing, 20_000 + pacing + Math.ceil(total / 5))
  await Promise.all(
    gens.map((g, i) => {
      g.send(`measure ${expected[i]} ${timeout}`)
      return g.next((m) => m.event === 'armed', 10_000, 'armed')
    }),
  )
  const busy0 = machineBusyUs()
  const c0 = await cpu()
  // What the burst parks in the kernel's socket buffers (sampled every 50 ms; the machine's, so
  // it includes the little the rest of the machine holds).
  let tcpMemPeak = tcpMemPages()
  const sampler = setInterval(() => (tcpMemPeak = Math.max(tcpMemPeak, tcpMemPages())), 50)
  const emitted = await server.cmd({ cmd: 'emit', size: cfg.eventSize, ...emit }, timeout + 10_000)
  const results = await Promise.all(
    gens.map((g) => g.next((m) => m.event === 'result', timeout + 10_000, 'result')),
  ).finally(() => clearInterval(sampler))
  const c1 = await cpu()
  const busy1 = machineBusyUs()
  const delivered = results.reduce((a, r) => a + r.delivered, 0)
  const last = Math.max(...results.map((r) => r.last_recv_us))
  const armed = Math.min(...results.map((r) => r.armed_us))
  const secs = Math.max(1e-6, (last - emitted.t0_us) / 1e6)
  const cpuUs = c1.total - c0.total
  const machineUs = busy1 - busy0
  const cpuParts = Object.fromEntries(Object.keys(c1.parts).map((k) => [k, c1.parts[k] - c0.parts[k]]))
  const lgCpu = results.reduce((a, r) => a + r.cpu_us, 0)
  const roundSecs = Math.max(1e-6, (Math.max(last, emitted.t1_us) - armed) / 1e6)
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
    // With --kernel-ts: latency to the kernel's receive timestamp (the event reached the socket).
    ...(results.every((r) => r.arrival_samples > 0)
      ? {
          p50ArrivalMs: Math.max(...results.map((r) => r.p50_arrival_us)) / 1000,
          p99ArrivalMs: Math.max(...results.map((r) => r.p99_arrival_us)) / 1000,
          maxArrivalMs: Math.max(...results.map((r) => r.max_arrival_us)) / 1000,
        }
      : {}),
    loadgenCpuShare: lgCpu / 1e6 / Math.max(1e-6, (last - armed) / 1e6) / gens.length,
    minPerSocket: Math.min(...results.map((r) => r.min_per_socket)),
    socketsReceiving: results.reduce((a, r) => a + r.sockets_receiving, 0),
    closedDuring: results.reduce((a, r) => a + r.closed_during, 0),
    stray: results.reduce((a, r) => a + (r.stray_before ?? 0), 0),
    // With --check-ids: each socket's events by id (see benches/loadgen/src/main.rs).
    duplicates: results.reduce((a, r) => a + (r.duplicates ?? 0), 0),
    outOfOrder: results.reduce((a, r) => a + (r.out_of_order ?? 0), 0),
    idOutOfRange: results.reduce((a, r) => a + (r.id_out_of_range ?? 0), 0),
    cpuShares: Object.fromEntries(Object.entries(cpuParts).map(([k, v]) => [k, v / 1e6 / secs])),
    serverRss: c1.rss,
    // Everything else the machine did during the round (other processes, this script), in cores:
    // a sign that something outside the benchmark competed for the 2 cores.
    otherCpuShare: Math.max(0, machineUs - cpuUs - lgCpu) / 1e6 / roundSecs,
    // The whole machine (all cores, /proc/stat) and server + generators, per delivered message:
    // on loopback a send the reader's window cannot take yet is transmitted later in the
    // reader's context, so server CPU alone flatters a server that leaves its transmit work to
    // the clients' core (see scenarioClients).
    machineCpuPerMsgUs: delivered ? machineUs / delivered : null,
    pairCpuPerMsgUs: delivered ? (cpuUs + lgCpu) / delivered : null,
    tcpMemPeakBytes: tcpMemPeak * 4096,
    // When the whole burst had arrived, at half of it and at 99% of it, from the first emit:
    // the same clock for a server that accepts a burst at once and one whose emit loop blocks
    // while it sends (whose per-event latency starts each event's clock late).
    ...(results.every((r) => r.recv_p50_us > 0)
      ? {
          deliveredHalfMs: (Math.max(...results.map((r) => r.recv_p50_us)) - emitted.t0_us) / 1000,
          delivered99Ms: (Math.max(...results.map((r) => r.recv_p99_us)) - emitted.t0_us) / 1000,
        }
      : {}),
  }
}

function median(xs) {
  const v = xs.filter((x) => typeof x === 'number' && Number.isFinite(x)).sort((a, b) => a - b)
  if (!v.length) return null
  const m = v.length >> 1
  return v.length % 2 ? v[m] : (v[m - 1] + v[m]) / 2
}

function summarize(rounds) {
  const keys = [
    'msgsPerSec',
    'cpuPerMsgUs',
    'p50Ms',
    'p99Ms',
    'maxMs',
    'loadgenCpuShare',
    'serverCpuShare',
    'emitSecs',
    'machineCpuPerMsgUs',
    'pairCpuPerMsgUs',
    'otherCpuShare',
    'tcpMemPeakBytes',
    'deliveredHalfMs',
    'delivered99Ms',
  ]
  const out = { rounds: rounds.length }
  for (const k of keys) out[k] = median(rounds.map((r) => r[k]))
  out.allComplete = rounds.every((r) => r.complete)
  out.delivered = rounds.reduce((a, r) => a + r.delivered, 0)
  out.expected = rounds.reduce((a, r) => a + r.expected, 0)
  if (!out.allComplete) problem(`delivered ${out.delivered} of ${out.expected}`)
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
    return { ready, ...summarize(rounds), rounds }
  } finally {
    await stopLoadgens(gens)
    await server.stopServer()
  }
}

// ---------------------------------------------------------------------------------------------
// Scenarios

const results = { scenarios: {}, runs: {} }

/** What a section's figures came from (a run of some scenarios keeps the others' earlier figures). */
function runSummary(meta) {
  return {
    date: meta.date,
    quick: meta.config?.quick ?? false,
    rounds: meta.config?.rounds,
    warmup: meta.config?.warmup,
    commit: meta.machine?.gitCommit,
    dirty: meta.machine?.gitDirty ?? false,
    addon: meta.addon,
  }
}

/** Runs `fn` for each contender of the run (`only`: these of them; else all but the fan-out-only ones). */
async function forEachServer(fn, only) {
  const out = {}
  for (const id of cfg.servers) {
    if (only ? !only.includes(id) : CONTENDERS[id].fanoutOnly) continue
    try {
      out[id] = await fn(id)
    } catch (err) {
      log(`  ${id}: FAILED: ${err.message}`)
      problem(`${id} failed: ${err.message}`)
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
    out[n] = await forEachServer(
      (id) =>
        burstCase(id, {
          sockets: n,
          loadgenOpts: { users: Math.min(n, 1000) },
          emit: { count: events, collection: 'posts' },
          expectedPerSocket: () => events,
        }),
      cfg.servers,
    )
  }
  // The same room, events one at a time at a rate below every fast contender's burst rate: the
  // latency a subscriber sees in normal operation, not a queue's.
  const paced = {}
  const pacedEvents = {}
  const rate = cfg.fanout.pacedRate
  // A rate of 0 leaves the paced case out.
  for (const n of rate > 0 ? subscribers : []) {
    const events = (pacedEvents[n] = cfg.fanout.pacedEvents(n))
    const intervalMs = (n / rate) * 1000
    log(`fan-out, paced: ${events} events, one every ${intervalMs.toFixed(1)} ms, to ${n} subscribers`)
    currentCase = `fanout-paced-${n}`
    paced[n] = await forEachServer(
      (id) =>
        burstCase(id, {
          sockets: n,
          loadgenOpts: { users: Math.min(n, 1000) },
          emit: { count: events, collection: 'posts', intervalMs },
          expectedPerSocket: () => events,
        }),
      cfg.servers,
    )
  }
  return {
    params: { events: eventsBy, eventSize: cfg.eventSize, subscribers, pacedRate: rate, pacedEvents },
    bySubscribers: out,
    paced,
  }
}

/**
 * Fan-out to clients on a real client library (`tokio-tungstenite`: a task per socket, frame by
 * frame, 4 KB reads), payload-realtime against uWS.js publish. Both servers hold their sockets
 * at once and take turns round by round, so a noisy stretch of the machine hits both alike.
 */
async function scenarioClients() {
  const { generators, subscribers, pacedRate, pacedEvents } = cfg.clients
  const servers = cfg.clients.servers.filter((id) => cfg.servers.includes(id))
  const out = {}
  const paced = {}
  const socketsBy = {}
  const eventsBy = {}
  const pacedRateBy = {}
  for (const gen of generators) {
    if (!GENERATORS[gen]) throw new Error(`BENCH_CLIENTS: ${gen}? (${Object.keys(GENERATORS).join(', ')})`)
    // The same offered rate for the browser's few hundred sockets: more events, closer together.
    const browser = gen === 'browser'
    const n = (socketsBy[gen] = browser
      ? cfg.clients.browserSockets
      : gen === 'ws'
        ? cfg.clients.wsSockets
        : cfg.clients.subscribers)
    const events = (eventsBy[gen] = browser ? cfg.clients.browserEvents : cfg.clients.events)
    const rate = (pacedRateBy[gen] = browser ? cfg.clients.browserPacedRate : pacedRate)
    const intervalMs = rate > 0 ? (n / rate) * 1000 : 0
    const modes = [{ key: 'burst', emit: { count: events, collection: 'posts' }, events }]
    if (rate > 0)
      modes.push({ key: 'paced', emit: { count: pacedEvents, collection: 'posts', intervalMs }, events: pacedEvents })
    log(
      `real clients (${GENERATORS[gen].label}): ${events} events of ${cfg.eventSize} B to ${n} subscribers of one room, ${servers.join(' and ')} in turns`,
    )
    currentCase = `clients-${gen}`
    const byId = (out[gen] = {})
    const pacedById = (paced[gen] = {})
    const live = {}
    const fail = (id, err) => {
      log(`  ${id}: FAILED: ${err.message}`)
      problem(`${id} failed: ${err.message}`)
      byId[id] = { error: String(err.message).slice(0, 500) }
    }
    try {
      for (const id of servers) {
        try {
          live[id] = { server: await Server.start(id), rounds: { burst: [], paced: [] } }
          live[id].gens = await startLoadgens(live[id].server.port, n, {
            users: Math.min(n, 1000),
            generator: gen,
            serverId: id,
            pages: cfg.clients.browserPages,
          })
          live[id].ready = readySummary(live[id].gens)
        } catch (err) {
          fail(id, err)
        }
      }
      for (const mode of modes) {
        if (mode.key === 'paced')
          log(`  paced: ${pacedEvents} events, one every ${intervalMs.toFixed(0)} ms (${rate} messages/s offered)`)
        for (let r = -cfg.warmup; r < cfg.rounds; r++) {
          for (const id of servers) {
            const l = live[id]
            if (!l?.gens || byId[id]) continue
            try {
              const res = await burst(l.server, l.gens, mode.emit, (g) => g.conns * mode.events)
              log(
                `  ${id} ${mode.key} round ${r < 0 ? 'warm-up' : r + 1}: ${res.delivered}/${res.expected} in ${res.secs.toFixed(3)} s = ${Math.round(res.msgsPerSec)} msg/s, ` +
                  `server ${res.cpuPerMsgUs?.toFixed(2)} / +client ${res.pairCpuPerMsgUs?.toFixed(2)} / machine ${res.machineCpuPerMsgUs?.toFixed(2)} us CPU/msg, p50 ${res.p50Ms.toFixed(1)} ms, p99 ${res.p99Ms.toFixed(1)} ms, ` +
                  `99% in ${res.delivered99Ms?.toFixed(0)} ms, TCP mem ${mb(res.tcpMemPeakBytes)}, ` +
                  `server ${(res.serverCpuShare * 100).toFixed(0)}%, client ${(res.loadgenCpuShare * 100).toFixed(0)}%, other ${(res.otherCpuShare * 100).toFixed(0)}%`,
              )
              if (r >= 0) l.rounds[mode.key].push(res)
            } catch (err) {
              fail(id, err)
            }
          }
        }
      }
      for (const id of servers) {
        if (byId[id] || !live[id]) continue
        const rounds = live[id].rounds
        byId[id] = { ready: live[id].ready, ...summarize(rounds.burst), rounds: rounds.burst }
        if (rounds.paced.length) pacedById[id] = { ...summarize(rounds.paced), rounds: rounds.paced }
      }
    } finally {
      for (const l of Object.values(live)) {
        if (l.gens) await stopLoadgens(l.gens)
        await l.server.stopServer()
      }
    }
  }
  return {
    params: {
      subscribers,
      socketsBy,
      events: cfg.clients.events,
      eventsBy,
      eventSize: cfg.eventSize,
      generators,
      servers,
      pacedRate,
      pacedRateBy,
      pacedEvents,
    },
    byGenerator: out,
    pacedByGenerator: paced,
  }
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
  const { sockets, users, events, slowRuleMs } = cfg.authorize
  const one = (n, ruleMs) =>
    forEachServer(
      (id) =>
        burstCase(id, {
          sockets,
          serverArgs: ['--authorize', '1', '--ruleDelayMs', String(ruleMs)],
          loadgenOpts: { users },
          emit: { count: n, collection: 'posts' },
          expectedPerSocket: (g) => ((g % users) % 2 === 0 ? n : 0),
        }),
      ['realtime', 'uws-plugin'],
    )
  const byEvents = {}
  for (const n of events) {
    log(`authorize: ${sockets} sockets of ${users} users, async rule (even user numbers read), ${n} event(s) per round`)
    currentCase = `authorize-${n}`
    byEvents[n] = await one(n, 0)
  }
  let slow = null
  if (slowRuleMs > 0) {
    log(`authorize: ${sockets} sockets of ${users} users, a lone event, the rule waits ${slowRuleMs} ms`)
    currentCase = 'authorize-slow-rule'
    slow = { ruleMs: slowRuleMs, results: await one(1, slowRuleMs) }
  }
  return { params: { sockets, users, events, eventSize: cfg.eventSize }, byEvents, slow }
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
        gens = await startLoadgens(server.port, n, { users: Math.min(n, 1000) })
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
        const gens = await startLoadgens(server.port, conns, { join: false, users: conns, concurrency })
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
      const failed = rounds.reduce((a, r) => a + r.failed, 0)
      if (failed) problem(`${id}: ${failed} handshakes failed`)
      return {
        rounds,
        perSec: median(rounds.map((r) => r.perSec)),
        cpuPerHandshakeUs: median(rounds.map((r) => r.cpuPerHandshakeUs)),
        failed,
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
// Redis: two instances of a contender (A and B) share one redis-server; sockets on B.

function which(cmd) {
  return capture('sh', ['-c', `command -v ${cmd}`]) || null
}

function freePort() {
  return new Promise((resolve, reject) => {
    const srv = net.createServer()
    srv.on('error', reject)
    srv.listen(0, '127.0.0.1', () => {
      const { port } = srv.address()
      srv.close(() => resolve(port))
    })
  })
}

function pkgVersion(name) {
  try {
    return JSON.parse(readFileSync(path.join(root, 'node_modules', name, 'package.json'), 'utf8')).version
  } catch {
    return undefined
  }
}

/** Starts redis-server on a free loopback port (no persistence) and waits until it answers. */
async function startRedis() {
  const server = which('redis-server')
  const cli = which('redis-cli')
  if (!server || !cli) throw new Error('redis-server is not installed (Debian: apt-get install -y redis-server)')
  const port = await freePort()
  const args = ['--port', String(port), '--bind', '127.0.0.1', '--save', '', '--appendonly', 'no']
  args.push('--logfile', '', '--daemonize', 'no')
  log('$', server, args.join(' '))
  const child = spawn(server, args, { cwd: os.tmpdir(), stdio: 'ignore' })
  children.add(child)
  const exited = new Promise((resolve) => child.once('exit', resolve)).then(() => children.delete(child))
  const call = (...cmd) => capture(cli, ['-h', '127.0.0.1', '-p', String(port), ...cmd])
  const redis = {
    port,
    url: `redis://127.0.0.1:${port}`,
    pid: child.pid,
    call,
    version: capture(server, ['--version']),
    /** CPU time (user + system) of redis-server so far, in µs. */
    cpuUs() {
      const stat = readFileSync(`/proc/${child.pid}/stat`, 'utf8')
      const f = stat.slice(stat.lastIndexOf(')') + 2).split(' ')
      return ((Number(f[11]) + Number(f[12])) * 1e6) / clockTicks
    },
    async stop() {
      if (child.exitCode === null && child.signalCode === null) child.kill('SIGTERM')
      const t = setTimeout(() => child.kill('SIGKILL'), 5000)
      await exited
      clearTimeout(t)
    },
  }
  for (let i = 0; call('PING') !== 'PONG'; i++) {
    if (i > 100 || child.exitCode !== null) throw new Error(`redis-server on ${port} did not answer PING`)
    await sleep(100)
  }
  return redis
}

/** Waits (bounded) until Redis has the subscriptions delivery from A to B needs. */
async function waitRedisSubscribed(id, redis) {
  // payload-realtime subscribes to a room's channel where it has local members (B only). The
  // Socket.IO adapter psubscribes its pattern, then subscribes its request channel, on one
  // connection per instance: both instances on the request channel means both patterns are in
  // place (NUMPAT counts distinct patterns, the same for both).
  // payload-realtime's channels start with a prefix derived from the secret: found by their end.
  const channel = id === 'socketio' ? 'socket.io-request#/#' : '*:room:collection:posts'
  const want = id === 'socketio' ? 2 : 1
  const names = () =>
    id === 'socketio' ? [channel] : (redis.call('PUBSUB', 'CHANNELS', channel) ?? '').split('\n').filter(Boolean)
  const subs = () =>
    names().reduce((n, name) => n + Number(redis.call('PUBSUB', 'NUMSUB', name)?.split('\n')[1] ?? 0), 0)
  for (let i = 0; !(subs() >= want); i++) {
    if (i > 100) throw new Error(`${id}: ${subs()} of ${want} subscriptions to ${channel} in Redis after 10 s`)
    await sleep(100)
  }
}

/** Medians of a redis case's rounds, plus what the exactly-once check found over all of them. */
function summarizeRedis(rounds, n, events) {
  const out = summarize(rounds)
  const sum = (k) => rounds.reduce((a, r) => a + (r[k] ?? 0), 0)
  out.duplicates = sum('duplicates')
  out.outOfOrder = sum('outOfOrder')
  out.idOutOfRange = sum('idOutOfRange')
  out.stray = sum('stray')
  // Every subscriber got every event exactly once: the count is complete, no id twice, none
  // outside the events sent (so each socket holds each id once).
  out.exactlyOnce = rounds.every(
    (r) =>
      r.complete && r.duplicates === 0 && r.idOutOfRange === 0 && r.socketsReceiving === n && r.minPerSocket === events,
  )
  if (!out.exactlyOnce) problem(`not exactly once: ${out.duplicates} duplicates, ${out.idOutOfRange} ids out of range`)
  for (const k of ['p50ArrivalMs', 'p99ArrivalMs', 'maxArrivalMs']) out[k] = median(rounds.map((r) => r[k]))
  out.otherCpuShareMax = Math.max(...rounds.map((r) => r.otherCpuShare ?? 0))
  out.cpuShares = {}
  for (const k of Object.keys(rounds[0]?.cpuShares ?? {})) out.cpuShares[k] = median(rounds.map((r) => r.cpuShares[k]))
  return out
}

const REDIS_MODES = ['paced', 'burst']
const REDIS_PLACEMENTS = ['cross', 'local']

/** One contender at one size: A and B, sockets on B, every mode × placement on the same sockets. */
async function redisCase(id, n, redis) {
  const c = CONTENDERS[id]
  const servers = []
  let gens = []
  try {
    // B first: it holds the sockets. A emits.
    const b = await Server.start(id, ['--redis', redis.url])
    servers.push(b)
    const a = await Server.start(id, ['--redis', redis.url])
    servers.push(a)
    const maxEvents = Math.max(redisEvents.paced(n), redisEvents.burst(n))
    gens = await startLoadgens(b.port, n, {
      users: Math.min(n, 1000),
      checkIds: maxEvents,
      kernelTs: true,
      ...c.loadgen,
    })
    const ready = readySummary(gens)
    if (ready.joined !== n) throw new Error(`only ${ready.joined} of ${n} sockets joined (${ready.failed} failed)`)
    await waitRedisSubscribed(id, redis)
    const cpu = async () => {
      const [sa, sb] = await Promise.all([a.cmd({ cmd: 'stats' }), b.cmd({ cmd: 'stats' })])
      const r = redis.cpuUs()
      return { total: sa.cpu_us + sb.cpu_us + r, rss: sb.rss, parts: { a: sa.cpu_us, b: sb.cpu_us, redis: r } }
    }
    const cases = {}
    for (const mode of REDIS_MODES) {
      const events = redisEvents[mode](n)
      const intervalMs = mode === 'paced' ? (n / cfg.redis.pacedRate) * 1000 : 0
      for (const placement of REDIS_PLACEMENTS) {
        const emitter = placement === 'cross' ? a : b
        const rounds = []
        for (let r = -cfg.warmup; r < cfg.rounds; r++) {
          const emit = { count: events, collection: 'posts', ...(intervalMs ? { intervalMs } : {}) }
          const res = await burst(emitter, gens, emit, (g) => g.conns * events, { cpu })
          log(
            `  ${id} ${mode} ${placement === 'cross' ? 'A -> Redis -> B' : 'B only'} round ${r < 0 ? 'warm-up' : r + 1}: ` +
              `${res.delivered}/${res.expected} in ${res.secs.toFixed(3)} s = ${Math.round(res.msgsPerSec)} msg/s, ` +
              `p50 ${res.p50Ms.toFixed(1)} ms, p99 ${res.p99Ms.toFixed(1)} ms, max ${res.maxMs.toFixed(1)} ms, ` +
              `dup ${res.duplicates}, out of order ${res.outOfOrder}`,
          )
          if (r >= 0) rounds.push(res)
        }
        cases[`${mode}-${placement}`] = { events, intervalMs, ...summarizeRedis(rounds, n, events), rounds }
      }
    }
    // Anything late (an extra copy after a round's count was reached) shows up as a stray.
    await sleep(300)
    const after = await Promise.all(
      gens.map((g) => {
        g.send('stats')
        return g.next((m) => m.event === 'stats', 10_000, 'stats')
      }),
    )
    const strayAfter = after.reduce((x, m) => x + m.stray, 0)
    const bStats = await b.cmd({ cmd: 'stats' })
    return { ready, cases, strayAfter, redisStatsB: bStats.redis ?? null }
  } finally {
    await stopLoadgens(gens)
    for (const s of servers) await s.stopServer()
  }
}

async function scenarioRedis() {
  const { subscribers, servers, pacedRate } = cfg.redis
  let redis
  try {
    redis = await startRedis()
  } catch (err) {
    log(`redis: not measured: ${err.message}`)
    return { params: { subscribers, servers, pacedRate }, error: err.message }
  }
  const out = {}
  const events = {}
  try {
    for (const n of subscribers) {
      events[n] = { paced: redisEvents.paced(n), burst: redisEvents.burst(n) }
      log(
        `redis: ${n} subscribers on instance B; paced ${events[n].paced} events (one every ${((n / pacedRate) * 1000).toFixed(0)} ms), ` +
          `burst ${events[n].burst} events; emitted on A (through Redis) and on B (same instance)`,
      )
      currentCase = `redis-${n}`
      out[n] = {}
      for (const id of servers) {
        if (!CONTENDERS[id] || !['realtime', 'socketio'].includes(id)) throw new Error(`BENCH_REDIS_SERVERS: ${id}?`)
        try {
          out[n][id] = await redisCase(id, n, redis)
        } catch (err) {
          log(`  ${id}: FAILED: ${err.message}`)
          problem(`${id} failed: ${err.message}`)
          out[n][id] = { error: String(err.message).slice(0, 500) }
        }
      }
    }
  } finally {
    await redis.stop()
  }
  return {
    params: {
      subscribers,
      servers,
      pacedRate,
      events,
      eventSize: cfg.eventSize,
      redisVersion: redis.version,
      versions: {
        socketio: pkgVersion('socket.io'),
        adapter: pkgVersion('@socket.io/redis-adapter'),
        redisClient: pkgVersion('redis'),
      },
    },
    bySubscribers: out,
  }
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
    socketio: pkgVersion('socket.io'),
    socketioRedisAdapter: pkgVersion('@socket.io/redis-adapter'),
    redisClient: pkgVersion('redis'),
    gitCommit: capture('git', ['rev-parse', '--short', 'HEAD']),
    gitDirty: Boolean(capture('git', ['status', '--porcelain', '--', 'src', 'crates', 'lib'])),
  }
}

function fanoutTable(byId, anchors) {
  const rows = [
    '| server | msg/s | server CPU per msg | p50 | p99 | max | server CPU | loadgen CPU | other CPU | delivered |',
    '|---|---:|---:|---:|---:|---:|---:|---:|---:|---|',
  ]
  for (const id of cfg.servers) {
    const r = byId?.[id]
    if (!r) continue
    if (r.error) {
      rows.push(`| ${label(id)} | failed: ${r.error.replace(/\|/g, '/').slice(0, 120)} | | | | | | | | |`)
      continue
    }
    rows.push(
      `| ${label(id)} | ${fmtInt(r.msgsPerSec)} | ${fmt(r.cpuPerMsgUs)} µs | ${fmt(r.p50Ms, 1)} ms | ${fmt(r.p99Ms, 1)} ms | ${fmt(r.maxMs, 1)} ms | ` +
        `${fmt(r.serverCpuShare * 100, 0)}% | ${fmt(r.loadgenCpuShare * 100, 0)}% | ${fmt(median((r.rounds ?? []).map((x) => x.otherCpuShare * 100)), 0)}% | ` +
        `${r.allComplete ? 'all' : `${r.delivered}/${r.expected}`} |`,
    )
  }
  for (const ours of ['realtime', 'realtime-authorize']) {
    const rt = byId?.[ours]
    if (!rt || rt.error || !anchors.some((a) => byId[a] && !byId[a].error)) continue
    rows.push('')
    rows.push(
      `| ${label(ours)} vs | msg/s ratio (higher is better) | CPU per msg ratio (lower is better) | p99 ratio |`,
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

/** Section 1b, fan-out to clients on a real client library. */
function clientsSection(c, provenance) {
  const p = c.params
  const out = [
    `## 1b. Fan-out to real clients: a client library and a browser, events of ${p.eventSize} B to every subscriber of one room`,
    '',
  ]
  provenance()
  out.push(
    "The same fan-out as section 1, read by clients built on a real WebSocket client library instead of the bench's own generator: `tokio-tungstenite` 0.24 (`benches/loadgen/src/bin/tungstenite.rs`: one current-thread runtime, a task per socket, `connect_async` with `?token=`, then message by message; the library reads 4 KB per `read`), and, where Chromium is installed, by real browser WebSockets: headless Chromium driven by playwright-core, a few hundred sockets spread over a few pages, each a plain `new WebSocket(url)` whose `onmessage` records the event (`benches/clients/browser.mjs`; its client CPU is the whole browser's, every process of it). Both servers hold their sockets at once and take turns round by round. " +
      "**server CPU per msg** is the server alone; **server + client** adds the generator; **machine** is every core of the machine from `/proc/stat` (other processes included: see **other CPU**). On loopback, bytes the reader's window cannot take yet are transmitted later in the reader's context, so server CPU alone flatters a server that leaves its transmit work to the clients' core; the machine figure is the fair one on one box. " +
      "**p50 / p99** are per event, from each event's emit (as in section 1): uWS.js's emit loop blocks while it sends (about 1 s of a 1.3 s round at 10,000 × 100), so its later events start their clocks late, where payload-realtime takes the whole burst at once; **50% / 99% delivered** is the time from the round's first emit until half and 99% of its messages had arrived, the same clock for both. In the paced rows events come one at a time at a rate both servers sustain, so p50 / p99 are the path's latency with these clients, not a queue's. " +
      "**TCP memory peak**: the most the machine's TCP sockets held during the round (`/proc/net/sockstat`, sampled every 50 ms): what a burst parks in socket buffers (Linux stops every socket of the machine from growing at `tcp_mem`'s high mark).",
  )
  out.push('')
  out.push(
    '| client | server | events | msg/s | p50 | p99 | max | 50% / 99% delivered | server CPU per msg | server + client CPU per msg | machine CPU per msg | server CPU | client CPU | other CPU | TCP memory peak | delivered |',
  )
  out.push('|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|')
  const pct = (v) => (v == null ? '-' : `${(v * 100).toFixed(0)}%`)
  // Runs before the paced case have none.
  const socketsOf = (gen) => p.socketsBy?.[gen] ?? p.subscribers
  const modes = [[(gen) => `${p.eventsBy?.[gen] ?? p.events} at once`, c.byGenerator]]
  const rateOf = (gen) => p.pacedRateBy?.[gen] ?? p.pacedRate
  if (c.pacedByGenerator)
    modes.push([
      (gen) => `${p.pacedEvents}, one every ${((socketsOf(gen) / rateOf(gen)) * 1000).toFixed(0)} ms`,
      c.pacedByGenerator,
    ])
  const client = (gen) => `${GENERATORS[gen]?.label ?? gen}, ${socketsOf(gen).toLocaleString('en-US')} sockets`
  for (const [eventsOf, byGen] of modes) {
    for (const gen of p.generators) {
      const events = eventsOf(gen)
      for (const id of p.servers) {
        const r = byGen[gen]?.[id]
        if (!r) continue
        const g = client(gen)
        if (r.error) {
          out.push(
            `| ${g} | ${label(id)} | ${events} | failed: ${r.error.replace(/\|/g, '/').slice(0, 120)} | | | | | | | | | | | | |`,
          )
          continue
        }
        out.push(
          `| ${g} | ${label(id)} | ${events} | ${fmtInt(r.msgsPerSec)} | ${fmt(r.p50Ms, 1)} ms | ${fmt(r.p99Ms, 1)} ms | ${fmt(r.maxMs, 1)} ms | ${fmt(r.deliveredHalfMs, 0)} / ${fmt(r.delivered99Ms, 0)} ms | ` +
            `${fmt(r.cpuPerMsgUs)} µs | ${fmt(r.pairCpuPerMsgUs)} µs | ${fmt(r.machineCpuPerMsgUs)} µs | ` +
            `${pct(r.serverCpuShare)} | ${pct(r.loadgenCpuShare)} | ${pct(r.otherCpuShare)} | ${r.tcpMemPeakBytes == null ? '-' : mb(r.tcpMemPeakBytes)} | ${r.allComplete ? 'all' : `${r.delivered}/${r.expected}`} |`,
        )
      }
    }
  }
  const rows = []
  for (const [eventsOf, byGen] of modes) {
    for (const gen of p.generators) {
      const rt = byGen[gen]?.realtime
      const u = byGen[gen]?.['uws-publish']
      if (!rt || rt.error || !u || u.error) continue
      rows.push(
        `| ${client(gen)} | ${eventsOf(gen)} | ${ratio(rt.msgsPerSec, u.msgsPerSec)} | ${ratio(rt.p50Ms, u.p50Ms)} | ${ratio(rt.p99Ms, u.p99Ms)} | ${ratio(rt.delivered99Ms, u.delivered99Ms)} | ${ratio(rt.cpuPerMsgUs, u.cpuPerMsgUs)} | ${ratio(rt.pairCpuPerMsgUs, u.pairCpuPerMsgUs)} | ${ratio(rt.machineCpuPerMsgUs, u.machineCpuPerMsgUs)} |`,
      )
    }
  }
  if (rows.length) {
    out.push('')
    out.push(
      '| payload-realtime vs uWS.js publish, client | events | msg/s ratio (higher is better) | p50 ratio | p99 ratio | 99% delivered ratio | server CPU per msg ratio | server + client CPU per msg ratio | machine CPU per msg ratio |',
    )
    out.push('|---|---|---:|---:|---:|---:|---:|---:|---:|')
    out.push(...rows)
  }
  out.push('')
  return out
}

/** A redis case's latency at the socket (kernel receive timestamp), or as read where it has none. */
const at = (c, k) => c[`${k}ArrivalMs`] ?? c[`${k}Ms`]

const PLACEMENT_LABEL = { cross: 'A → Redis → B', local: 'B only (no hop)' }

/** Section 6, from the saved results (BENCH_REPORT_ONLY rewrites it the same way). */
function redisSection(r) {
  const out = ['## 6. Several instances through Redis: emit on one instance, receive on another', '']
  if (!r || r.error || !r.bySubscribers) {
    out.push(
      r?.error
        ? `Not measured in this run: ${r.error}.`
        : 'Not measured in this run (`BENCH_ONLY=redis` runs it; it needs `redis-server`, Debian: `apt-get install -y redis-server`).',
    )
    out.push('')
    return out
  }
  const p = r.params
  const hasSio = p.servers.includes('socketio')
  const v = p.versions ?? {}
  const sio = hasSio
    ? `, Socket.IO ${v.socketio ?? '4'} with \`@socket.io/redis-adapter\` ${v.adapter ?? ''} (the \`redis\` client ${v.redisClient ?? ''}, pub/sub)`
    : ''
  const pace = Object.keys(p.events)
    .map(
      (n) =>
        `1 event every ${((Number(n) / p.pacedRate) * 1000).toFixed(0)} ms to ${Number(n).toLocaleString('en-US')}`,
    )
    .join(', ')
  out.push(
    `Two processes of the same server, **A** and **B**, share one \`redis-server\` (${(p.redisVersion ?? '').replace(/ sha=.*/, '')}, started by the run on a loopback port with \`--save '' --appendonly no\`): payload-realtime with \`redis: { url }\` and the same secret${sio}. ` +
      `The load generator's sockets all connect to B and join one room; events of ${p.eventSize} B are emitted on A (\`manager.emitEvent\`${hasSio ? ', `io.to(room).emit`' : ''}), go through Redis to B, and B writes them to its sockets: **A → Redis → B**. ` +
      `To Socket.IO the load generator speaks Engine.IO v4 over the same raw WebSocket (\`/socket.io/?EIO=4&transport=websocket\`: the open packet answered with \`40\`, the join as an event \`420["join","posts"]\` with an ack, pings answered, events \`42["event",{...}]\`). ` +
      'For reference, the same events are then emitted on B itself, in the same run, to the same sockets: **B only**, what a single instance does (B still publishes each event to Redis for the other instances, but its own sockets get it directly). The difference between the two rows is the cost of the Redis hop.',
  )
  out.push('')
  out.push(
    [
      `- **Paced**: one event at a time, ${p.pacedRate.toLocaleString('en-US')} messages/s offered (${pace} subscribers): the latency a user sees in normal operation. The rate is below every contender's burst rate (the burst rows), so the latency is the path's, not a queue's (\`BENCH_REDIS_PACED_RATE\` changes it).`,
      '- **Burst**: every event of the round emitted at once (payload-realtime: all `emitEvent` calls, then awaited together; Socket.IO: a synchronous loop): the delivered messages per second.',
      '- **CPU per msg** = CPU time of A + B + redis-server during the round ÷ messages delivered (in the paced rows this includes what the processes spend idle between events); **CPU A / B / Redis** = share of one core each used during the round (the machine has 2, shared with the load generator).',
      "- **delivered**: `all, once each` = every subscriber got every event exactly once in every measured round: the load generator records each event's `id` per socket (no id twice, none missing, none that was not sent); events out of order would be counted in this column too.",
      "- **Latency** (p50, p99, max) = the moment the event reached the subscriber's socket − `doc.t` (set just before the emit call on the emitting instance; same machine, same clock), medians over the rounds. The moment it reached the socket is the kernel's receive timestamp (`SO_TIMESTAMPNS`, of the last segment in the read that completed the frame: frames waiting together in a socket count as arriving with the last), so the figure is what a subscriber's own socket sees. **As read** = the moment the load generator read it, the measure of sections 1 to 5: one event to N sockets is N reads on the generator's one thread, one after another, and the later sockets wait for the generator, not for the server.",
    ].join('\n'),
  )
  out.push('')
  for (const n of p.subscribers) {
    const byId = r.bySubscribers[n] ?? {}
    const ev = p.events[n] ?? {}
    out.push(
      `### ${n.toLocaleString('en-US')} subscribers on B: paced ${ev.paced} events (${(n * ev.paced).toLocaleString('en-US')} messages), burst ${ev.burst} events (${(n * ev.burst).toLocaleString('en-US')} messages) per round`,
    )
    out.push('')
    out.push(
      '| server | events | emitted on | msg/s | CPU per msg (A + B + Redis) | p50 | p99 | max | p50 / p99 as read | CPU A / B / Redis | delivered |',
    )
    out.push('|---|---|---|---:|---:|---:|---:|---:|---:|---|---|')
    for (const mode of REDIS_MODES) {
      for (const id of p.servers) {
        const x = byId[id]
        if (!x) continue
        if (x.error) {
          if (mode === 'paced')
            out.push(`| ${label(id)} | failed: ${x.error.replace(/\|/g, '/').slice(0, 160)} | | | | | | | | | |`)
          continue
        }
        for (const placement of REDIS_PLACEMENTS) {
          const c = x.cases[`${mode}-${placement}`]
          if (!c) continue
          const sh = c.cpuShares ?? {}
          const pct = (v) => `${fmt(v * 100, 0)}%`
          let delivered = c.exactlyOnce ? 'all, once each' : `${c.delivered}/${c.expected}`
          if (c.duplicates) delivered += `, ${c.duplicates} duplicates`
          if (c.outOfOrder) delivered += `, ${c.outOfOrder} out of order`
          out.push(
            `| ${label(id)} | ${mode} | ${PLACEMENT_LABEL[placement]} | ${fmtInt(c.msgsPerSec)} | ${fmt(c.cpuPerMsgUs)} µs | ${fmt(at(c, 'p50'), 1)} ms | ${fmt(at(c, 'p99'), 1)} ms | ${fmt(at(c, 'max'), 1)} ms | ` +
              `${fmt(c.p50Ms, 1)} / ${fmt(c.p99Ms, 1)} ms | ${pct(sh.a)} / ${pct(sh.b)} / ${pct(sh.redis)} | ${delivered} |`,
          )
        }
      }
    }
    const extras = p.servers
      .map((id) => byId[id])
      .filter((x) => x && !x.error)
      .reduce((a, x) => a + (x.strayAfter ?? 0) + Object.values(x.cases).reduce((b, c) => b + (c.stray ?? 0), 0), 0)
    const other = Math.max(
      ...p.servers
        .map((id) => byId[id])
        .filter((x) => x && !x.error)
        .flatMap((x) => Object.values(x.cases).map((c) => c.otherCpuShareMax ?? 0)),
    )
    out.push('')
    out.push(
      `Messages that arrived between rounds (after a round had its count: a duplicate, or a late copy): ${extras.toLocaleString('en-US')}. ` +
        `Everything else on the machine during the measured rounds (other processes, the harness; from \`/proc/stat\`): at most ${fmt(other * 100, 0)}% of a core in any round.`,
    )
    out.push('')
    // The Redis hop, read directly: A → Redis → B against B only, same contender, same sockets.
    const hop = []
    for (const id of p.servers) {
      const x = byId[id]
      if (!x || x.error) continue
      for (const mode of REDIS_MODES) {
        const cr = x.cases[`${mode}-cross`]
        const lo = x.cases[`${mode}-local`]
        if (!cr || !lo) continue
        const d = (a, b) => (a == null || b == null ? '-' : `${a - b >= 0 ? '+' : ''}${(a - b).toFixed(1)} ms`)
        hop.push(
          `| ${label(id)} | ${mode} | ${d(at(cr, 'p50'), at(lo, 'p50'))} | ${d(at(cr, 'p99'), at(lo, 'p99'))} | ${ratio(cr.msgsPerSec, lo.msgsPerSec)} | ${ratio(cr.cpuPerMsgUs, lo.cpuPerMsgUs)} |`,
        )
      }
    }
    if (hop.length) {
      out.push('| the Redis hop: A → Redis → B vs B only | events | p50 | p99 | msg/s ratio | CPU per msg ratio |')
      out.push('|---|---|---:|---:|---:|---:|')
      out.push(...hop)
      out.push('')
    }
    const rt = byId.realtime
    const sio = byId.socketio
    if (rt && !rt.error && sio && !sio.error) {
      out.push(
        '| payload-realtime vs Socket.IO, A → Redis → B | msg/s ratio (higher is better) | CPU per msg ratio (lower is better) | p50 ratio | p99 ratio |',
      )
      out.push('|---|---:|---:|---:|---:|')
      for (const mode of REDIS_MODES) {
        const a = rt.cases[`${mode}-cross`]
        const b = sio.cases[`${mode}-cross`]
        if (!a || !b) continue
        out.push(
          `| ${mode} | ${ratio(a.msgsPerSec, b.msgsPerSec)} | ${ratio(a.cpuPerMsgUs, b.cpuPerMsgUs)} | ${ratio(at(a, 'p50'), at(b, 'p50'))} | ${ratio(at(a, 'p99'), at(b, 'p99'))} |`,
        )
      }
      out.push('')
    }
  }
  return out
}

function report(meta) {
  const m = meta.machine
  const s = results.scenarios
  const out = []
  const earlier = Object.keys(s).filter((k) => results.runs?.[k] && results.runs[k].date !== meta.date)
  /** A line under a section's heading when its figures come from another run than this one. */
  const provenance = (name) => {
    const r = results.runs?.[name]
    if (!r || r.date === meta.date) return
    out.push(
      `_Measured in an earlier run: ${r.date}, ${r.quick ? 'quick run' : 'full run'}, ${r.rounds} measured round(s) after ${r.warmup} warm-up round(s), commit ${r.commit}${r.dirty ? ' plus uncommitted changes' : ''}; addon ${r.addon}._`,
    )
    out.push('')
  }
  out.push('# Benchmarks')
  out.push('')
  out.push(
    'payload-realtime side by side with uWebSockets.js, ws and a bare tokio "ceiling" (and, across two instances through Redis, Socket.IO with its Redis adapter), measured in one run on one machine over loopback. ' +
      'Generated by `npm run bench` (`benches/run.mjs`); the raw figures of every round are in `benches/results.json`.',
  )
  out.push('')
  out.push(
    `- Run: ${meta.date}, ${cfg.quick ? '**quick** run (`BENCH_QUICK=1`: small sizes, few rounds)' : 'full run'}, ${cfg.rounds} measured round(s) after ${cfg.warmup} warm-up round(s) per case; figures are medians over the rounds.` +
      (earlier.length
        ? ` This run measured ${Object.keys(s)
            .filter((k) => !earlier.includes(k))
            .join(
              ', ',
            )} only (\`BENCH_ONLY\`); the other sections keep the figures of an earlier run, named under their headings.`
        : ''),
  )
  out.push(
    `- Machine: ${m.nproc} cores (${m.cpuModel}), ${(m.memoryBytes / 2 ** 30).toFixed(1)} GiB RAM, ${m.kernel}, Node ${m.node}, ${m.rustc}; open files limit ${m.openFilesLimit} per process.`,
  )
  out.push(
    `- Code: commit ${m.gitCommit}${m.gitDirty ? ' plus uncommitted changes in src/, crates/ or lib/' : ''}; addon ${meta.addon}. Anchors: @trufflesuite/uws-js-unofficial ${m.uws} (a uWebSockets.js 20.x build, native), ws ${m.ws}.`,
  )
  out.push(
    `- Reproduce: \`npm run bench\` (full, about 20 minutes including the addon build) or \`BENCH_QUICK=1 npm run bench\` (about 4 minutes); \`BENCH_SKIP_BUILD=1\` skips the addon build. Other knobs are listed at the top of \`benches/run.mjs\`.`,
  )
  out.push('')
  out.push('## How it is measured')
  out.push('')
  out.push(
    [
      '- **Load generator**: `benches/loadgen` (Rust, tokio current_thread: one core; the server gets the other). A hand-written WebSocket client: raw TCP, handshake with `?token=`, masked outgoing frames, frame parsing. Every socket reads into one 256 KB buffer shared by the process, so a socket takes a whole burst in one read and the buffer stays in cache (until 2026-12-03 each socket had a 16 KB buffer of its own: seven reads per socket for a burst of 100 events, and the generator near a full core in the 10,000-subscriber fan-out). It joins each socket to its room (`{"type":"join-collection","collection":...}`) and waits for every ack before a round starts. Above 15,000 sockets it runs as several processes (20,000 open files per process).',
      '- **Servers**: one process per contender, started fresh for each case, driven over stdin (`benches/servers/*.mjs`, `benches/loadgen/src/bin/ceiling.rs`). Each reports its own CPU time (`process.cpuUsage()` user + system, or `getrusage` for the ceiling) and RSS. payload-realtime runs as an application would: `initUWebSocket(0, { host, secret })`, events through `manager.emitEvent`, release build of the addon.',
      '- **Tokens**: payload-realtime gets Payload tokens (HS256, key = sha256(secret) hex, first 32 chars) and verifies every one. **The anchors check no tokens**: they accept any handshake (in the authorize scenario the uWS server reads the user id out of the token without checking the signature).',
      '- **Events**: `{ type: "update", collection, id, doc: { t, pad }, timestamp }`, about 1 KB of JSON, the same bytes for every contender; `doc.t` is the wall-clock emit time in ms (`performance.timeOrigin + performance.now()`, or `SystemTime` in the ceiling), set just before each event is emitted.',
      '- **Quick runs** move 20,000 to 100,000 messages per round: their figures are indicative and noisy (tenths of a second per round); publish numbers from a full run.',
      '- **msg/s** = messages delivered to the generator ÷ (last receive − first emit). **Server CPU per msg** = server CPU time (all threads) during the round ÷ messages delivered: with server and generator sharing 2 cores this is the figure that holds. **Latency** = receive time − `doc.t` (same clock, same machine), over every message. **server CPU / loadgen CPU** = share of one core (100% = one core; the machine has 2) each used during the round: a loadgen near 100% would mean the generator, not the server, set the pace. **other CPU** = everything else the machine did during the round (other processes, this harness; from `/proc/stat`), median over the rounds: the cores are shared, and a row whose other CPU is high was measured while something else ran.',
      "- **Ceiling**: a bare tokio server with no logic (`benches/loadgen/src/bin/ceiling.rs`): accepts handshakes, acks joins, and writes the same pre-encoded frames with one `writev` per socket per burst. It shows what this machine's loopback TCP can do; every other row reads as a fraction of it. In the many-rooms scenario it writes each room\'s events as one burst (the others get them one event at a time).",
      '- Events are emitted "as fast as accepted": payload-realtime gets every `emitEvent` at once and awaits them together; the JS anchors run their send loops synchronously.',
      "- **Second load generator, a real client library** (section 1b): `benches/loadgen/src/bin/tungstenite.rs`, clients built on `tokio-tungstenite` 0.24 as an application uses it: one current-thread runtime, a task per socket, `connect_async(\"ws://host:port/?token=...\")`, the join sent with `send`, then `next()` message by message (the library reads 4 KB per `read` and parses frame by frame, where the bench's own generator takes a whole burst per socket in one read). Same stdin protocol and figures as the first generator; payload-realtime and uWS.js publish hold their sockets at once and take turns round by round. Its rows add server + client and whole-machine CPU per message (`/proc/stat`), the time from a round's first emit until 50% and 99% of its messages arrived, and the peak of the machine's TCP memory during the round (`/proc/net/sockstat`). `BENCH_CLIENTS=tungstenite,loadgen` measures both generators the same way; `BENCH_PERF=tungstenite` profiles the clients. **Real browsers** (section 1b, where `/usr/bin/chromium` is): `benches/clients/browser.mjs` launches Debian's Chromium headless through playwright-core and opens 200 plain `new WebSocket(\"ws://host:port/?token=...\")` over 4 pages; each page's `onmessage` takes the receive time (`performance.timeOrigin + performance.now()`) and the event's `doc.t`, and the harness reads the pages' counts over the same stdin protocol. A browser spends 150-250 µs of CPU per message here (each message crosses from its network process to a renderer), so its case is small: 20 events per burst, paced at 2,000 messages/s; its client CPU is every process of the browser. **Node's `ws` 8** (`BENCH_CLIENTS=...,ws`, not in the default run): `benches/clients/ws.mjs`, 2,000 `ws` clients in one Node process (`BENCH_WS_CLIENTS`), the same events and rates as the tokio-tungstenite case.",
    ].join('\n'),
  )
  out.push('')

  if (s.fanout) {
    const f = s.fanout
    out.push(`## 1. Fan-out: events of ${f.params.eventSize} B to every subscriber of one room, as fast as accepted`)
    out.push('')
    provenance('fanout')
    for (const n of f.params.subscribers) {
      const ev = f.params.events[n]
      out.push(
        `### ${n.toLocaleString('en-US')} subscribers, ${ev} events per round (${(n * ev).toLocaleString('en-US')} messages)`,
      )
      out.push('')
      out.push(fanoutTable(f.bySubscribers[n], ANCHORS))
      out.push('')
    }
    if (f.paced && Object.keys(f.paced).length > 0) {
      const rate = f.params.pacedRate
      out.push(`### Paced: one event at a time, ${rate.toLocaleString('en-US')} messages/s offered`)
      out.push('')
      out.push(
        "The bursts above measure throughput: every event is accepted at once, so an event waits behind the ones before it and its latency is mostly queueing (the JS anchors, whose send loops block, only start the clock of an event once the previous one is sent). Here events come one at a time, at about half the rate the fast contenders reach with one write per socket per event (about 5 µs per message: at 200,000 messages/s, this case's rate until 2026-12-02, every contender was saturated and its latency was queueing again), so the latency is mostly the path's: how long one event takes to reach every socket. A write to a socket whose reader is asleep costs more than one in a stream, so the servers' CPU per message is higher here than in bursts. The slow contenders cannot keep up with this rate, and their figures show it.",
      )
      out.push('')
      for (const n of f.params.subscribers) {
        const ev = f.params.pacedEvents?.[n]
        if (!f.paced[n]) continue
        out.push(
          `#### ${n.toLocaleString('en-US')} subscribers: ${ev} events, one every ${((n / rate) * 1000).toFixed(0)} ms`,
        )
        out.push('')
        out.push(fanoutTable(f.paced[n], ANCHORS))
        out.push('')
      }
    }
  }
  if (s.clients) out.push(...clientsSection(s.clients, () => provenance('clients')))
  if (s.rooms) {
    const p = s.rooms.params
    out.push(
      `## 2. Many rooms: ${p.sockets.toLocaleString('en-US')} sockets over ${p.rooms.toLocaleString('en-US')} rooms, ${p.events.toLocaleString('en-US')} events spread round-robin over the rooms`,
    )
    out.push('')
    provenance('rooms')
    out.push(fanoutTable(s.rooms.results, ANCHORS))
    out.push('')
  }
  if (s.authorize) {
    const p = s.authorize.params
    // Runs before 2026-12-03 measured one burst size (`results`).
    const byEvents = s.authorize.byEvents ?? { [p.events]: s.authorize.results }
    const sizes = Object.keys(byEvents)
      .map(Number)
      .sort((a, b) => a - b)
    out.push(
      `## 3. Authorize: ${p.sockets.toLocaleString('en-US')} sockets of ${p.users} users, an async rule (even user numbers may read)`,
    )
    out.push('')
    provenance('authorize')
    out.push(
      "payload-realtime calls the rule once per distinct user per event, batched in one crossing; the old plugin's way (emulated on uWS.js) awaits the rule once per socket, in sequence, then stringifies and sends. Half the sockets receive each event. Only these two contenders have an authorize step. " +
        'Except in the last case, the rule answers at once (`await null`): what is measured is the delivery; a rule that reads a database waits that long once per user per event here, and once per socket in the old way.',
    )
    out.push('')
    out.push(
      'Each round emits its events at once. A lone event is how a saved document reaches the sockets: one write per receiving socket for both contenders. In a burst, payload-realtime gives each socket all of the burst it may read in one write (`sendmsg`), where the old way writes once per event per socket.',
    )
    out.push('')
    out.push(
      '| events per round | messages | payload-realtime msg/s | old way msg/s | msg/s ratio | CPU per msg ratio | p99 ratio |',
    )
    out.push('|---:|---:|---:|---:|---:|---:|---:|')
    const slow = s.authorize.slow
    const cases = sizes.map((n) => [String(n), byEvents[n], `${n} event${n === 1 ? '' : 's'} per round`])
    if (slow)
      cases.push([
        `1, the rule waits ${slow.ruleMs} ms`,
        slow.results,
        `1 event per round, the rule waits ${slow.ruleMs} ms (a database read)`,
      ])
    for (const [name, byId] of cases) {
      const rt = byId?.realtime
      const old = byId?.['uws-plugin']
      if (!rt || rt.error || !old || old.error) continue
      out.push(
        `| ${name} | ${fmtInt(rt.expected / (Array.isArray(rt.rounds) ? rt.rounds.length : rt.rounds))} | ${fmtInt(rt.msgsPerSec)} | ${fmtInt(old.msgsPerSec)} | ${ratio(rt.msgsPerSec, old.msgsPerSec)} | ${ratio(rt.cpuPerMsgUs, old.cpuPerMsgUs)} | ${ratio(rt.p99Ms, old.p99Ms)} |`,
      )
    }
    out.push('')
    if (slow)
      out.push(
        `In the last case the rule waits ${slow.ruleMs} ms (a timer) before it answers, as one that reads a database would: payload-realtime asks it once per user, all at once; the old way once per socket, one after the other. Its server CPU per message counts the time the server spends waiting too.`,
        '',
      )
    for (const [, byId, title] of cases) {
      out.push(`### ${title}`)
      out.push('')
      out.push(fanoutTable(byId, ['uws-plugin']))
      out.push('')
    }
  }
  if (s.idle) {
    out.push('## 4. Idle memory: RSS per connection')
    out.push('')
    provenance('idle')
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
    provenance('storm')
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
  const redisLines = redisSection(s.redis)
  out.push(...redisLines.slice(0, 2))
  provenance('redis')
  out.push(...redisLines.slice(2))
  out.push('## Contenders')
  out.push('')
  const listed = [...cfg.servers]
  if (s.redis?.params?.servers?.includes('socketio') && !listed.includes('socketio')) listed.push('socketio')
  for (const id of listed) out.push(`- **${label(id)}**: ${CONTENDERS[id].note}.`)
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
async function writeReport(markdown) {
  const old = existsSync(mdPath) ? readFileSync(mdPath, 'utf8') : ''
  const kept = [...old.matchAll(/<!-- (\w+):start -->[\s\S]*?<!-- \1:end -->/g)].map((m) => m[0])
  const text = kept.length ? `${markdown.trimEnd()}\n\n${kept.join('\n\n')}\n` : markdown
  writeFileSync(mdPath, await wrapReport(text))
}

async function main() {
  if (env.BENCH_REPORT_ONLY === '1') {
    const saved = JSON.parse(readFileSync(jsonPath, 'utf8'))
    const { fanout, ...rest } = saved.meta.config
    Object.assign(cfg, rest)
    results.scenarios = saved.scenarios
    results.runs =
      saved.runs ?? Object.fromEntries(Object.keys(saved.scenarios).map((k) => [k, runSummary(saved.meta)]))
    await writeReport(report(saved.meta))
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
    const built = path.join(root, 'payload-realtime.linux-x64-gnu.node')
    // The root .node when it is newer than the copy (a copy left by an earlier run would
    // measure old code).
    if (!existsSync(addonCopy) || (existsSync(built) && statSync(built).mtimeMs > statSync(addonCopy).mtimeMs)) {
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
    clients: scenarioClients,
    rooms: scenarioRooms,
    authorize: scenarioAuthorize,
    idle: scenarioIdle,
    storm: scenarioStorm,
    redis: scenarioRedis,
  }
  for (const name of cfg.scenarios) {
    if (!scenarios[name]) throw new Error(`unknown scenario ${name} (BENCH_ONLY)`)
    results.scenarios[name] = await scenarios[name]()
  }
  meta.durationSecs = (Date.now() - started) / 1000
  const json = jsonPath
  for (const name of cfg.scenarios) results.runs[name] = runSummary(meta)
  if (env.BENCH_ONLY && existsSync(json)) {
    // A run of some scenarios: the others keep the figures (and the run) the JSON had.
    try {
      const saved = JSON.parse(readFileSync(json, 'utf8'))
      for (const [name, value] of Object.entries(saved.scenarios ?? {})) {
        if (name in results.scenarios) continue
        results.scenarios[name] = value
        results.runs[name] = saved.runs?.[name] ?? runSummary(saved.meta)
      }
      const order = Object.keys(scenarios)
      results.scenarios = Object.fromEntries(
        Object.entries(results.scenarios).sort(([a], [b]) => order.indexOf(a) - order.indexOf(b)),
      )
    } catch (err) {
      log(`could not keep the earlier figures of ${path.relative(root, json)}: ${err.message}`)
    }
  }
  mkdirSync(path.dirname(json), { recursive: true })
  mkdirSync(path.dirname(mdPath), { recursive: true })
  writeFileSync(json, JSON.stringify({ meta, ...results }, null, 2) + '\n')
  await writeReport(report(meta))
  // Keep results.json in the repository's formatting (prettier --check runs in CI).
  const prettier = path.join(root, 'node_modules', '.bin', 'prettier')
  if (existsSync(prettier)) {
    try {
      execFileSync(prettier, ['--write', json], { cwd: root, stdio: 'ignore' })
    } catch {}
  }
  log(`done in ${meta.durationSecs.toFixed(0)} s: ${path.relative(root, mdPath)}, ${path.relative(root, json)}`)
  if (problems.length) {
    log(`${problems.length} problem(s):\n  ${problems.join('\n  ')}`)
    if (env.BENCH_STRICT === '1') process.exit(1)
  }
}

main().catch((err) => {
  console.error(err)
  cleanup()
  process.exit(1)
})
