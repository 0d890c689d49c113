// A load generator of Node `ws` 8 clients: `--conns` sockets in this one Node process, each a
// `new WebSocket('ws://host:port/?token=...')` that joins the room and records every event its
// 'message' handler gets. It speaks the same stdin/stdout lines as benches/loadgen
// (`measure <expected> <timeout_ms>`, `stats`, `quit`), so benches/run.mjs drives it like the others.
// Latency is emit-to-receive on the wall clock (`performance.timeOrigin + performance.now()`).

import { createHash, createHmac } from 'node:crypto'
import { createInterface } from 'node:readline'
import WebSocket from 'ws'

const argv = process.argv.slice(2)
const arg = (k, d) => {
  const i = argv.indexOf(`--${k}`)
  return i >= 0 ? argv[i + 1] : d
}
const host = arg('host', '127.0.0.1')
const port = Number(arg('port', '3002'))
const conns = Number(arg('conns', '1000'))
const offset = Number(arg('offset', '0'))
const users = Math.max(1, Number(arg('users', String(conns))))
const room = arg('room', 'posts')
const secret = arg('secret', 'bench-secret')
const concurrency = Number(arg('concurrency', '200'))

const out = (obj) => process.stdout.write(JSON.stringify(obj) + '\n')
const nowMs = () => performance.timeOrigin + performance.now()
const cpuUs = () => {
  const c = process.cpuUsage()
  return c.user + c.system
}

/** A token as Payload 3 mints it (HS256, key = sha256(secret) hex, first 32 characters). */
function token(user) {
  const key = createHash('sha256').update(secret).digest('hex').slice(0, 32)
  const now = Math.floor(Date.now() / 1000)
  const b64 = (o) => Buffer.from(JSON.stringify(o)).toString('base64url')
  const body = `${b64({ alg: 'HS256', typ: 'JWT', authVersion: 1 })}.${b64({
    id: `u${user}`,
    collection: 'users',
    email: `u${user}@example.com`,
    sid: `bench-sid-${user}`,
    iat: now,
    exp: now + 7200,
  })}`
  return `${body}.${createHmac('sha256', key).update(body).digest('base64url')}`
}

const s = { joined: 0, failed: 0, closed: 0, stray: 0, armed: false, expected: 0, lat: [], recv: [], first: 0, last: 0 }
const perSocket = new Array(conns).fill(0)
let wake = () => {}
const tRe = /"t":([0-9.eE+-]+)/

/** Opens socket `i`, joins, and resolves once it is settled (joined or failed). */
function open(i) {
  return new Promise((resolve) => {
    const ws = new WebSocket(`ws://${host}:${port}/?token=${token((i + offset) % users)}`)
    let awaiting = true
    const settle = (ok) => {
      if (!awaiting) return
      awaiting = false
      if (ok) s.joined++
      else s.failed++
      resolve()
    }
    ws.on('open', () => ws.send(JSON.stringify({ type: 'join-collection', collection: room, id: 1 })))
    ws.on('message', (data) => {
      const now = nowMs()
      const text = data.toString()
      if (awaiting) return settle(text.includes('"ack"'))
      if (!s.armed) return void s.stray++
      if (!s.first) s.first = now
      s.last = now
      s.recv.push(now)
      const t = tRe.exec(text)
      if (t) s.lat.push(now - Number(t[1]))
      perSocket[i]++
      if (s.recv.length >= s.expected) wake()
    })
    ws.on('error', () => settle(false))
    ws.on('close', () => {
      s.closed++
      settle(false)
    })
  })
}

const started = Date.now()
const cpu0 = cpuUs()
let next = 0
await Promise.all(
  Array.from({ length: Math.min(concurrency, conns) }, async () => {
    while (next < conns) await open(next++)
  }),
)
out({
  event: 'ready',
  client: 'ws 8 (Node)',
  conns,
  handshakes: s.joined,
  joined: s.joined,
  join_errors: 0,
  failed: s.failed,
  retries: 0,
  timed_out: false,
  connect_ms: Date.now() - started,
  handshake_secs: (Date.now() - started) / 1000,
  cpu_us: cpuUs() - cpu0,
})

const pct = (sorted, p) => (sorted.length ? sorted[Math.round((sorted.length - 1) * p)] : 0)
const ms2us = (v) => Math.round(v * 1000)
for await (const line of createInterface({ input: process.stdin })) {
  const [cmd, expectedS, timeoutS] = line.trim().split(/\s+/)
  if (cmd === 'quit') break
  if (cmd === 'stats') {
    out({ event: 'stats', closed: s.closed, stray: s.stray, cpu_us: cpuUs() })
    continue
  }
  if (cmd !== 'measure') continue
  const strayBefore = s.stray
  Object.assign(s, { stray: 0, lat: [], recv: [], first: 0, last: 0, expected: Number(expectedS) })
  perSocket.fill(0)
  const closed0 = s.closed
  const c0 = cpuUs()
  const armedUs = ms2us(nowMs())
  s.armed = true
  out({ event: 'armed', armed_us: armedUs })
  await new Promise((resolve) => {
    const timer = setTimeout(resolve, Number(timeoutS))
    wake = () => {
      clearTimeout(timer)
      resolve()
    }
  })
  wake = () => {}
  s.armed = false
  const lat = s.lat.sort((a, b) => a - b)
  const per = perSocket.filter((c) => c > 0)
  out({
    event: 'result',
    stray_before: strayBefore,
    expected: s.expected,
    delivered: s.recv.length,
    timed_out: s.recv.length < s.expected,
    armed_us: armedUs,
    first_recv_us: ms2us(s.first),
    last_recv_us: ms2us(s.last),
    latency_samples: lat.length,
    p50_us: ms2us(pct(lat, 0.5)),
    p99_us: ms2us(pct(lat, 0.99)),
    max_us: ms2us(lat.at(-1) ?? 0),
    // Arrival order is already sorted.
    recv_p50_us: ms2us(pct(s.recv, 0.5)),
    recv_p99_us: ms2us(pct(s.recv, 0.99)),
    arrival_samples: 0,
    sockets_receiving: per.length,
    min_per_socket: per.length ? per.reduce((a, b) => Math.min(a, b)) : 0,
    max_per_socket: per.length ? per.reduce((a, b) => Math.max(a, b)) : 0,
    closed_during: s.closed - closed0,
    duplicates: 0,
    out_of_order: 0,
    id_out_of_range: 0,
    cpu_us: cpuUs() - c0,
  })
}
process.exit(0)
