// A load generator of Node `ws` 8 clients: `--conns` sockets in this one Node process, each a
// `new WebSocket('ws://host:port/?token=...')` that joins the room and records every event its
// 'message' handler gets. It speaks the same stdin/stdout lines as benches/loadgen
// (`measure <expected> <timeout_ms>`, `stats`, `quit`), so benches/run.mjs drives it like the others.
// Latency is emit-to-receive on the wall clock (`performance.timeOrigin + performance.now()`).

import WebSocket from 'ws'
import { arg, commandLoop, options, out, ms2us, result, token } from './common.mjs'

const { host, port, conns, offset, users, room, secret } = options(1000)
const concurrency = Number(arg('concurrency', '200'))

const nowMs = () => performance.timeOrigin + performance.now()
const cpuUs = () => {
  const c = process.cpuUsage()
  return c.user + c.system
}

const s = { joined: 0, failed: 0, closed: 0, stray: 0, armed: false, expected: 0, lat: [], recv: [], first: 0, last: 0 }
const perSocket = new Array(conns).fill(0)
let wake = () => {}
const tRe = /"t":([0-9.eE+-]+)/

/** Opens socket `i`, joins, and resolves once it is settled (joined or failed). */
function open(i) {
  return new Promise((resolve) => {
    const ws = new WebSocket(`ws://${host}:${port}/?token=${token(secret, (i + offset) % users)}`)
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

await commandLoop({
  stats: () => ({ closed: s.closed, stray: s.stray, cpu_us: cpuUs() }),
  async measure(expected, timeout) {
    const strayBefore = s.stray
    Object.assign(s, { stray: 0, lat: [], recv: [], first: 0, last: 0, expected })
    perSocket.fill(0)
    const closed0 = s.closed
    const c0 = cpuUs()
    const armedUs = ms2us(nowMs())
    s.armed = true
    out({ event: 'armed', armed_us: armedUs })
    await new Promise((resolve) => {
      const timer = setTimeout(resolve, timeout)
      wake = () => {
        clearTimeout(timer)
        resolve()
      }
    })
    wake = () => {}
    s.armed = false
    const lat = s.lat.sort((a, b) => a - b)
    const per = perSocket.filter((c) => c > 0)
    out(
      result({
        strayBefore,
        expected,
        delivered: s.recv.length,
        armedUs,
        first: s.first,
        last: s.last,
        lat,
        // Arrival order is already sorted.
        recv: s.recv,
        per,
        closedDuring: s.closed - closed0,
        cpuUs: cpuUs() - c0,
      }),
    )
  },
})
process.exit(0)
