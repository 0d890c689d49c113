// payload-realtime on the app's own port in a Payload app on Next.js: examples/next/server.mjs, a
// Next custom server in dev mode (Turbopack), where `manager.attachTo(server, { path: '/realtime' })`
// hands `/realtime` upgrades to the Rust server and every other upgrade goes to Next. On that one
// port: a user's socket receives exactly one event per write, Next's HMR socket still works, and
// an upgrade of another path is not taken by the realtime server. The plugin's own port is kept
// on loopback (WS_HOST).
//
// The package is installed into examples/next as in next.test.mjs (`npm pack`, unpacked).

import assert from 'node:assert/strict'
import { existsSync, mkdtempSync, rmSync } from 'node:fs'
import net from 'node:net'
import { tmpdir } from 'node:os'
import { dirname, join } from 'node:path'
import { after, before, test } from 'node:test'
import { fileURLToPath } from 'node:url'
import WebSocket from 'ws'

import { installIntoExample, installedPackage } from '../scripts/install-example.mjs'
import { connect, freePort, handshake, isEvent, waitUntil, withTimeout } from './helpers.mjs'
import { postJson, startProcess } from './next-support.mjs'

const root = join(dirname(fileURLToPath(import.meta.url)), '..')
const app = join(root, 'examples', 'next')
const T = { timeout: 600_000 }
/** A generous guard for what dev mode compiles on demand. */
const COMPILE_WAIT = 120_000

let tmp

before(() => {
  assert.ok(existsSync(join(root, 'node_modules', 'next')), 'next is installed (a devDependency): run npm ci')
  tmp = mkdtempSync(join(tmpdir(), 'payload-realtime-next-custom-'))
  installIntoExample()
})

after(() => {
  rmSync(join(app, '.next'), { recursive: true, force: true })
  rmSync(installedPackage, { recursive: true, force: true })
  if (tmp) rmSync(tmp, { recursive: true, force: true })
})

/** `node server.mjs` in its own process group. */
function startServer(env) {
  return startProcess(['server.mjs'], {
    cwd: app,
    env,
    readyLine: /> Ready on/,
    label: 'server.mjs ready',
    timeout: COMPILE_WAIT,
  })
}

/** An upgrade request for `path` on a raw socket; `received()` is every byte answered so far. */
function rawUpgrade(port, path, headers = {}) {
  const socket = net.connect(port, '127.0.0.1')
  let received = Buffer.alloc(0)
  socket.on('error', () => {})
  socket.on('data', (d) => (received = Buffer.concat([received, d])))
  socket.write(
    [
      `GET ${path} HTTP/1.1`,
      `Host: 127.0.0.1:${port}`,
      'Upgrade: websocket',
      'Connection: Upgrade',
      'Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==',
      'Sec-WebSocket-Version: 13',
      ...Object.entries(headers).map(([k, v]) => `${k}: ${v}`),
      '',
      '',
    ].join('\r\n'),
  )
  return { received: () => received.toString('latin1'), close: () => socket.destroy() }
}

/** Next's HMR socket, as the browser's dev client opens it: resolves its first message. */
function hmrFirstMessage(port) {
  const ws = new WebSocket(`ws://127.0.0.1:${port}/_next/hmr?id=payload-realtime-test`)
  return withTimeout(
    new Promise((resolve, reject) => {
      ws.on('error', reject)
      ws.on('unexpected-response', (req, res) => reject(new Error(`HMR socket refused: HTTP ${res.statusCode}`)))
      ws.once('message', (data) => resolve(JSON.parse(String(data))))
    }),
    COMPILE_WAIT,
    "Next's HMR socket",
  ).finally(() => ws.terminate())
}

test(
  'next dev custom server (server.mjs): /realtime on the app port, HMR still works, other upgrades left alone',
  T,
  async (t) => {
    const [port, wsPort] = [await freePort(), await freePort()]
    const env = {
      NEXT_TELEMETRY_DISABLED: '1',
      PAYLOAD_SECRET: 'payload-realtime-next-test-secret',
      DATABASE_URI: `file:${join(tmp, 'custom.db')}`,
      PORT: String(port),
      WS_PORT: String(wsPort),
      WS_HOST: '127.0.0.1',
    }
    const started = Date.now()
    const server = startServer(env)
    let client
    let other
    try {
      await server.ready()
      assert.match(server.output(), /> Ready on/, server.output())
      t.diagnostic(`server.mjs ready: ${((Date.now() - started) / 1000).toFixed(1)} s`)
      // The plugin's own port, on loopback only (logged once Payload's logger flushes).
      await waitUntil(() => server.output().includes(`payload-realtime listening on ws://127.0.0.1:${wsPort}/`), {
        timeout: COMPILE_WAIT,
        label: `the plugin's server on 127.0.0.1:${wsPort}\n${server.output()}`,
      })

      // Before any HTTP request, the app's port answers /realtime as the realtime server does: no
      // credentials, its own 401.
      const early = await handshake(`ws://127.0.0.1:${port}/realtime`, { timeout: COMPILE_WAIT })
      assert.equal(early.status, 401, `${early.body}\n${server.output()}`)
      assert.equal(early.json?.error, 'unauthorized')

      const base = `http://127.0.0.1:${port}`
      const first = await postJson(`${base}/api/users/first-register`, {
        email: 'alice@example.com',
        password: 'alice-password',
        confirmPassword: 'alice-password',
      })
      assert.equal(first.status, 200, JSON.stringify(first.json))
      const token = first.json.token

      // An upgrade of another path, with a valid token: the realtime server would answer 101.
      other = rawUpgrade(port, '/other', { Authorization: `JWT ${token}` })

      // Next's HMR socket on the same port: connected, its first message received.
      const hmr = await hmrFirstMessage(port)
      t.diagnostic(`HMR first message: ${hmr.type}`)
      assert.equal(typeof hmr.type, 'string')

      client = await connect(`ws://127.0.0.1:${port}/realtime`, { token, label: 'custom server' })
      await client.join('posts')
      const created = await postJson(
        `${base}/api/posts`,
        { title: 'on the app port', _status: 'published' },
        { Authorization: `JWT ${token}` },
      )
      assert.equal(created.status, 201, JSON.stringify(created.json))
      const event = await client.waitFor((m) => isEvent(m) && m.collection === 'posts', { label: 'the create event' })
      // A ping answered after the event: anything sent for the same write would be in by now.
      await client.request({ type: 'ping' })
      assert.equal(event.type, 'create')
      assert.equal(event.id, created.json.doc.id)
      assert.equal(event.doc.title, 'on the app port')
      assert.equal(client.events().filter((e) => e.collection === 'posts').length, 1, JSON.stringify(client.events()))

      // By now the realtime server has long answered anything it took: /other got no 101 (Next
      // leaves an upgrade it has no route for unanswered, for another listener to take).
      assert.doesNotMatch(other.received(), /^HTTP\/1\.1 101/, other.received())
      assert.doesNotMatch(other.received(), /unauthorized|forbidden/, other.received())
      t.diagnostic(`/other answered: ${JSON.stringify(other.received().split('\r\n')[0] ?? '')}`)
      assert.doesNotMatch(server.output(), /Error handling upgrade request|\[payload-realtime\]/, server.output())
    } finally {
      other?.close()
      if (client) await client.close()
      await server.stop()
      t.diagnostic(`total: ${((Date.now() - started) / 1000).toFixed(1)} s`)
    }
  },
)
