// Smoke test of one built binary, run by the `node` of its platform (under qemu-user for
// aarch64, see scripts/smoke-cross.sh): loads the addon through the package's own entry, starts
// a server on loopback, connects a real WebSocket client with a Payload-style token, joins a
// collection, receives an event, and prints one JSON line with what it saw.
//
//   NAPI_RS_NATIVE_LIBRARY_PATH=dist/npm/linux-arm64-gnu/payload-realtime.linux-arm64-gnu.node \
//     qemu-aarch64 -L /usr/aarch64-linux-gnu node-arm64 scripts/smoke.mjs

import { createHash, createHmac } from 'node:crypto'
import WebSocket from 'ws'
import { initUWebSocket } from '../index.mjs'

const SECRET = 'smoke-secret'
const WAIT = 120_000 // emulated startup is slow; a guard against a hang, not a measurement

function token() {
  const key = createHash('sha256').update(SECRET).digest('hex').slice(0, 32)
  const now = Math.floor(Date.now() / 1000)
  const b64 = (o) => Buffer.from(JSON.stringify(o)).toString('base64url')
  const body = `${b64({ alg: 'HS256', typ: 'JWT' })}.${b64({ id: 'u1', collection: 'users', email: 'u1@example.com', iat: now, exp: now + 600 })}`
  return `${body}.${createHmac('sha256', key).update(body).digest('base64url')}`
}

const guard = setTimeout(() => {
  console.error('smoke: no event in time')
  process.exit(1)
}, WAIT)

const manager = await initUWebSocket(0, { secret: SECRET, host: '127.0.0.1' })
const ws = new WebSocket(`ws://127.0.0.1:${manager.port}/`, { headers: { Authorization: `JWT ${token()}` } })
const event = await new Promise((resolve, reject) => {
  ws.on('error', reject)
  ws.on('open', () => ws.send(JSON.stringify({ type: 'join-collection', collection: 'posts', id: 'j' })))
  ws.on('message', (data) => {
    const msg = JSON.parse(String(data))
    if (msg.type === 'ack' && msg.id === 'j') {
      manager.emitEvent({ type: 'create', collection: 'posts', id: 1, doc: { title: 'smoke' } }).catch(reject)
    } else if (msg.type === 'create') resolve(msg)
  })
})
const stats = manager.stats()
ws.close()
await manager.close()
clearTimeout(guard)
console.log(
  JSON.stringify({
    arch: process.arch,
    node: process.version,
    glibc: process.report.getReport().header.glibcVersionRuntime ?? null,
    event: { type: event.type, collection: event.collection, title: event.doc?.title },
    heapBytes: stats.heapBytes ?? null,
  }),
)
