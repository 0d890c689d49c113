// Shared by the benchmark servers: the control channel (JSON lines on stdin, one JSON reply line
// on stdout per command, the same protocol as the Rust `ceiling` server), the events they emit,
// and the user rule of the authorize scenario.
//
// Commands: { cmd: 'stats' } -> { cpu_us, rss, connections, ...extra stats }
//           { cmd: 'emit', count, size, rooms, collection, prefix, intervalMs? } -> { t0_us, t1_us }
//             (with intervalMs: one event every intervalMs ms instead of all at once)
//           { cmd: 'gc' } (runs a full GC when node was started with --expose-gc)
//           { cmd: 'quit' }
import { createInterface } from 'node:readline'
import { performance } from 'node:perf_hooks'

/** Command-line `--key value` pairs. */
export function parseArgs(argv = process.argv.slice(2)) {
  const out = {}
  for (let i = 0; i < argv.length; i++) {
    if (argv[i].startsWith('--')) out[argv[i].slice(2)] = argv[i + 1] ?? ''
  }
  return out
}

/** Wall-clock milliseconds with a microsecond fraction (comparable with Rust's SystemTime). */
export const nowMs = () => performance.timeOrigin + performance.now()

const padCache = new Map()

/**
 * An update event whose JSON text is about `size` bytes: `doc.t` is the emit time in wall-clock
 * ms (the load generator's latency reference), `doc.pad` fills up to the size. The timestamp is
 * fixed so that every contender sends the same bytes.
 */
export function makeEvent(collection, id, size) {
  const key = `${collection}:${size}:${String(id).length}`
  let pad = padCache.get(key)
  if (pad === undefined) {
    const probe = {
      type: 'update',
      collection,
      id,
      doc: { t: nowMs(), pad: '' },
      timestamp: '2026-01-01T00:00:00.000Z',
    }
    pad = 'x'.repeat(Math.max(0, size - JSON.stringify(probe).length))
    padCache.set(key, pad)
  }
  return { type: 'update', collection, id, doc: { t: nowMs(), pad }, timestamp: '2026-01-01T00:00:00.000Z' }
}

/** The room (collection) of event `i` of an emit command. */
export function roomOf(cmd, i) {
  const rooms = cmd.rooms ?? 1
  return rooms <= 1 ? (cmd.collection ?? 'posts') : `${cmd.prefix ?? 'r'}${i % rooms}`
}

/**
 * Calls `one(i)` for each event `i` of an emit command and returns what it returned: all in one
 * go, or with `cmd.intervalMs` one every `intervalMs` ms (each scheduled from the start, so a late
 * timer does not push the later events back).
 */
export async function emitEach(cmd, one) {
  const out = []
  if (!(cmd.intervalMs > 0)) {
    for (let i = 0; i < cmd.count; i++) out.push(one(i))
    return out
  }
  const start = performance.now()
  for (let i = 0; i < cmd.count; i++) {
    const wait = start + i * cmd.intervalMs - performance.now()
    if (wait > 0) await new Promise((resolve) => setTimeout(resolve, wait))
    out.push(one(i))
  }
  return out
}

/**
 * What the authorize scenario's rule waits before it answers: a microtask, or with
 * `--ruleDelayMs N` a timer of N ms (a rule that reads a database).
 */
export function ruleWait(args) {
  const ms = Number(args.ruleDelayMs ?? 0)
  return ms > 0 ? () => new Promise((resolve) => setTimeout(resolve, ms)) : async () => {}
}

/** The authorize scenario's rule: users `u0`..`u99`, even numbers may read. */
export function allowUser(user) {
  return user != null && Number(String(user.id).slice(1)) % 2 === 0
}

/** The fan-out scenario's rule with authorize on: every signed-in user may read. */
export function allowAnyUser(user) {
  return user != null && user.id != null
}

/** The user claims of a token, read without checking the signature (anchors only). */
export function unverifiedClaims(token) {
  try {
    return JSON.parse(Buffer.from(String(token).split('.')[1], 'base64url').toString())
  } catch {
    return null
  }
}

/** Runs the control channel; `emit(cmd)` may be async. */
export function control({ port, emit, connections = () => -1, stats = () => ({}), quit = async () => {} }) {
  const reply = (obj) => process.stdout.write(JSON.stringify(obj) + '\n')
  reply({ event: 'listening', port, pid: process.pid })
  const rl = createInterface({ input: process.stdin })
  let chain = Promise.resolve()
  const finish = async () => {
    await quit()
    process.exit(0)
  }
  rl.on('line', (line) => {
    chain = chain.then(async () => {
      let cmd
      try {
        cmd = JSON.parse(line)
      } catch {
        return reply({ ok: false, error: 'bad json' })
      }
      const seq = cmd.seq
      try {
        switch (cmd.cmd) {
          case 'stats': {
            const c = process.cpuUsage()
            return reply({
              ok: true,
              seq,
              cpu_us: c.user + c.system,
              rss: process.memoryUsage().rss,
              connections: connections(),
              ...stats(),
            })
          }
          case 'emit': {
            const t0 = nowMs()
            const extra = (await emit(cmd)) ?? {}
            return reply({ ok: true, seq, t0_us: Math.round(t0 * 1000), t1_us: Math.round(nowMs() * 1000), ...extra })
          }
          case 'gc':
            globalThis.gc?.()
            return reply({ ok: true, seq })
          case 'quit':
            return finish()
          default:
            return reply({ ok: false, seq, error: `unknown command ${cmd.cmd}` })
        }
      } catch (err) {
        return reply({ ok: false, seq, error: String(err?.stack ?? err) })
      }
    })
  })
  rl.on('close', () => chain.then(finish))
}
