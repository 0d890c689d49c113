// WebSockets on the application's own HTTP port: `attachTo` and `handleUpgrade` hand an upgrade's
// connection to the Rust server, which adopts its file descriptor and serves it exactly like a
// socket of its own port (same handshake checks and refusals, same connection code).

import assert from 'node:assert/strict'
import { execFileSync } from 'node:child_process'
import fs from 'node:fs'
import http from 'node:http'
import https from 'node:https'
import net from 'node:net'
import os from 'node:os'
import path from 'node:path'
import { test } from 'node:test'
import WebSocket, { WebSocketServer } from 'ws'

import { start } from '../examples/attach/server.mjs'
import {
  SECRET,
  WAIT,
  connect,
  encodeFrame,
  handshake,
  httpGet,
  makeToken,
  parseFrames,
  sleep,
  startServer,
  waitUntil,
  withTimeout,
  wsUrl,
} from './helpers.mjs'

const T = { timeout: 120_000 }
const LINUX = process.platform === 'linux'

/** The example's app (the code docs/next.md shows) on a free port; `fn` gets `{ server, manager, url }`. */
async function withApp(fn, options = {}) {
  const { server, manager } = await start({ port: 0, secret: SECRET, ...options })
  const port = server.address().port
  const ctx = { server, manager, port, url: (p = '/realtime', q = '') => `ws://127.0.0.1:${port}${p}${q}` }
  try {
    return await fn(ctx)
  } finally {
    await manager.close()
    server.closeAllConnections()
    await new Promise((resolve) => server.close(resolve))
  }
}

/** An HTTP server of the test's own, listening on a free loopback port. */
async function listen(server) {
  await new Promise((resolve) => server.listen(0, '127.0.0.1', resolve))
  return server.address().port
}

async function closeServer(server) {
  server.closeAllConnections?.()
  await new Promise((resolve) => server.close(resolve))
}

const event = (id) => ({ type: 'update', collection: 'posts', id, doc: { title: `post ${id}` } })

/** Descriptors the process holds now. */
const openFds = () => fs.readdirSync('/proc/self/fd').length

/** The inode of what descriptor `fd` refers to (`socket:[123]` gives 123), in hex as fdinfo writes it. */
function inodeOf(fd) {
  const m = fs.readlinkSync(`/proc/self/fd/${fd}`).match(/\[(\d+)\]/)
  return m ? Number(m[1]).toString(16) : undefined
}

/** The inodes each epoll descriptor of the process watches, keyed by that descriptor. */
function epollWatches() {
  const out = new Map()
  for (const fd of fs.readdirSync('/proc/self/fd')) {
    let info
    try {
      if (fs.readlinkSync(`/proc/self/fd/${fd}`) !== 'anon_inode:[eventpoll]') continue
      info = fs.readFileSync(`/proc/self/fdinfo/${fd}`, 'utf8')
    } catch {
      continue
    }
    out.set(fd, new Set([...info.matchAll(/^tfd:.* ino:(\S+)/gm)].map((m) => m[1])))
  }
  return out
}

test('the example: a client connects on the app port, joins, and receives events', T, async () => {
  await withApp(async ({ manager, port, url }) => {
    const client = await connect(url(), { token: makeToken({ id: 'alice' }) })
    assert.equal(manager.stats().connections, 1, 'the socket is one of the server')
    await client.join('posts')
    await manager.emitEvent(event(1))
    const got = await client.waitFor((m) => m.type === 'update', { label: 'the event' })
    assert.deepEqual([got.collection, got.id, got.doc], ['posts', 1, { title: 'post 1' }])
    // The app's own requests are still the app's.
    const page = await httpGet(port, '/')
    assert.equal(page.status, 200)
    assert.equal(page.body, 'hello from the app\n')
    // A query token works there too, and the socket answers pings.
    const byQuery = await connect(url('/realtime', `?token=${makeToken({ id: 'bob' })}`))
    const pong = await byQuery.request({ type: 'ping' })
    assert.equal(pong.type, 'pong')
    await Promise.all([client.close(), byQuery.close()])
  })
})

test("docs/next.md's example is the example file's code", () => {
  const page = fs.readFileSync(new URL('../docs/next.md', import.meta.url), 'utf8')
  const at = page.indexOf("### On the app's own port")
  assert.ok(at >= 0, 'docs/next.md has "On the app\'s own port"')
  const section = page.slice(at)
  const from = section.indexOf('```js\n') + 6
  const shown = section.slice(from, section.indexOf('\n```', from))
  const file = fs.readFileSync(new URL('../examples/attach/server.mjs', import.meta.url), 'utf8')
  const lines = shown.split('\n').filter((l) => l.trim() !== '')
  assert.ok(lines.length > 5, 'docs/next.md shows the example')
  for (const line of lines) assert.ok(file.includes(line), `examples/attach/server.mjs has: ${line}`)
})

test(
  'refusals are the same as on the server own port: bad token 401, foreign origin with a cookie 403',
  T,
  async () => {
    await withApp(async ({ manager, port, url }) => {
      const own = (opts) => handshake(wsUrl(manager, '/'), opts)
      const app = (opts) => handshake(url(), opts)
      const cookie = `payload-token=${makeToken({ id: 'alice' })}`
      const cases = {
        'bad token': [{ token: 'not-a-token' }, 401, 'unauthorized'],
        'no token': [{}, 401, 'unauthorized'],
        'expired token': [{ token: makeToken({}, { expiresIn: -60 }) }, 401, 'unauthorized'],
        'cookie from a foreign origin': [{ cookie, origin: 'https://evil.example' }, 403, 'forbidden-origin'],
      }
      for (const [name, [opts, status, error]] of Object.entries(cases)) {
        const [a, b] = [await app(opts), await own(opts)]
        assert.equal(a.status, status, `${name}: ${a.status} ${a.body}`)
        assert.equal(a.json?.error, error, name)
        assert.deepEqual(a.json, b.json, `${name}: the same body as the own port`)
        assert.equal(a.headers['content-type'], 'application/json', name)
      }
      // The cookie from a page of the app's own host is accepted, as on the own port.
      const r = await app({ cookie, origin: `http://127.0.0.1:${port}` })
      assert.equal(r.status, 101, r.body)
      await r.client.close()
      assert.ok(manager.stats().handshakesRefused >= 8, 'refusals are counted')
    })
  },
)

test("verifyUser confirms the user on the app's port as on the server's own", T, async () => {
  const manager = await startServer({
    verifyUser: async (token, claims) => (claims.id === 'mallory' ? null : { id: claims.id, role: 'editor' }),
  })
  manager.registerCustomHandler('whoami', (socket) => ({ user: socket.user }))
  const server = http.createServer()
  manager.attachTo(server, { path: '/realtime' })
  const port = await listen(server)
  try {
    const refused = await handshake(`ws://127.0.0.1:${port}/realtime`, { token: makeToken({ id: 'mallory' }) })
    assert.equal(refused.status, 401)
    assert.deepEqual(refused.json, { error: 'unauthorized', reason: 'session is not valid' })
    const client = await connect(`ws://127.0.0.1:${port}/realtime`, { token: makeToken({ id: 'alice' }) })
    const who = await client.request({ type: 'whoami' })
    assert.deepEqual(who.user, { id: 'alice', role: 'editor' }, 'the user as verifyUser returned it')
    await client.close()
  } finally {
    await manager.close()
    await closeServer(server)
  }
})

test('the first frames sent with the handshake are read first, and a later call takes what Node read', T, async () => {
  const manager = await startServer()
  const server = http.createServer()
  // Called on a later turn: Node may read the client's next bytes meanwhile.
  server.on('upgrade', (req, socket, head) => setTimeout(() => manager.handleUpgrade(req, socket, head), 50))
  const port = await listen(server)
  try {
    const socket = net.connect(port, '127.0.0.1')
    socket.on('error', () => {})
    let received = Buffer.alloc(0)
    socket.on('data', (chunk) => (received = Buffer.concat([received, chunk])))
    await new Promise((resolve) => socket.once('connect', resolve))
    const request = [
      'GET /anywhere HTTP/1.1',
      `Host: 127.0.0.1:${port}`,
      'Upgrade: websocket',
      'Connection: Upgrade',
      'Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==',
      'Sec-WebSocket-Version: 13',
      `Authorization: JWT ${makeToken({ id: 'alice' })}`,
    ]
    // The first ping in the very same write as the request (Node's `head`), the second before the
    // handover (Node's buffer, or the kernel's), the third after the 101.
    socket.write(
      Buffer.concat([
        Buffer.from(request.join('\r\n') + '\r\n\r\n'),
        encodeFrame(1, JSON.stringify({ type: 'ping', id: 1 })),
      ]),
    )
    await new Promise((resolve) => setTimeout(resolve, 10))
    socket.write(encodeFrame(1, JSON.stringify({ type: 'ping', id: 2 })))
    await waitUntil(() => received.includes('\r\n\r\n'), { label: 'the 101' })
    socket.write(encodeFrame(1, JSON.stringify({ type: 'ping', id: 3 })))
    const frames = () => parseFrames(received.subarray(received.indexOf('\r\n\r\n') + 4))
    await waitUntil(() => frames().length >= 3, { label: 'three pongs' })
    assert.match(received.toString('latin1'), /^HTTP\/1\.1 101 /)
    assert.deepEqual(
      frames().map((f) => JSON.parse(f.payload)),
      [1, 2, 3].map((id) => ({ type: 'pong', id })),
    )
    socket.destroy()
  } finally {
    await manager.close()
    await closeServer(server)
  }
})

test(
  "other paths are left to the server's other listeners (Next's HMR), or answered 404 when there are none",
  T,
  async () => {
    await withApp(async ({ server, manager, port, url }) => {
      // The pattern a Next.js custom server follows: its own upgrade handler for its own path.
      const hmr = new WebSocketServer({ noServer: true })
      hmr.on('connection', (ws) => ws.on('message', (m) => ws.send(`echo ${m}`)))
      const seen = []
      server.on('upgrade', (req, socket, head) => {
        seen.push(req.url)
        if (req.url.startsWith('/_next/webpack-hmr'))
          hmr.handleUpgrade(req, socket, head, (ws) => hmr.emit('connection', ws))
      })
      const other = new WebSocket(`ws://127.0.0.1:${port}/_next/webpack-hmr?page=1`)
      await withTimeout(
        new Promise((resolve, reject) => other.once('open', resolve).once('error', reject)),
        WAIT,
        'HMR',
      )
      other.send('hi')
      const [reply] = await withTimeout(
        new Promise((resolve) => other.once('message', (...a) => resolve(a))),
        WAIT,
        'echo',
      )
      assert.equal(String(reply), 'echo hi')
      other.close()
      assert.equal(manager.stats().connections, 0, 'the realtime server did not take it')
      // Ours still works beside it.
      const client = await connect(url(), { token: makeToken({ id: 'alice' }) })
      // Counted once its task runs, which may be just after the client saw the 101.
      await waitUntil(() => manager.stats().connections === 1, { label: 'the socket counted' })
      await client.close()
      assert.deepEqual(seen, ['/_next/webpack-hmr?page=1', '/realtime'])
      hmr.close()
    })

    // Alone on its server, the listener answers an upgrade it does not take with 404.
    const manager = await startServer()
    const server = http.createServer((req, res) => res.end('app'))
    const detach = manager.attachTo(server, { path: '/realtime' })
    const port = await listen(server)
    try {
      const r = await handshake(`ws://127.0.0.1:${port}/_next/hmr`, { token: makeToken({ id: 'alice' }) })
      assert.equal(r.status, 404)
      assert.deepEqual(r.json, { error: 'not-found' })
      assert.equal(manager.stats().connections, 0)
      // Detached, the server is as before: the upgrade goes to its request handler.
      detach()
      assert.equal(server.listenerCount('upgrade'), 0)
      const after = await handshake(`ws://127.0.0.1:${port}/realtime`, { token: makeToken({ id: 'alice' }) })
      assert.equal(after.status, 200)
      assert.equal(after.body, 'app')
    } finally {
      await manager.close()
      await closeServer(server)
    }
  },
)

test('the path is checked: never Next.js own, and the manager path option if it has one', T, async () => {
  const manager = await startServer({ path: '/ws' })
  const server = http.createServer()
  try {
    for (const p of ['/_next/webpack-hmr', '/_next/hmr', 'realtime', '/a?b']) {
      assert.throws(() => manager.attachTo(server, { path: p }), TypeError, p)
    }
    assert.throws(() => manager.attachTo(server, { path: '/realtime' }), /differs from the manager's `path` option/)
    // Without a path of its own, attachTo takes the manager's.
    const detach = manager.attachTo(server)
    assert.equal(manager.attachTo(server), detach, 'attaching twice is one listener')
    assert.equal(server.listenerCount('upgrade'), 1)
    const port = await listen(server)
    const ok = await handshake(`ws://127.0.0.1:${port}/ws`, { token: makeToken({ id: 'alice' }) })
    assert.equal(ok.status, 101, ok.body)
    await ok.client.close()
    // Closing the manager detaches it.
    await manager.close()
    assert.equal(server.listenerCount('upgrade'), 0)
  } finally {
    await manager.close()
    await closeServer(server)
  }
})

test('200 sockets at once all get the event, and closing the manager closes them with 1001', T, async () => {
  await withApp(async ({ manager, url }) => {
    const clients = await Promise.all(
      Array.from({ length: 200 }, (_, i) => connect(url(), { token: makeToken({ id: `user-${i}` }) })),
    )
    await Promise.all(clients.map((c) => c.join('posts')))
    assert.equal(manager.stats().connections, 200)
    await manager.emitEvent(event(7))
    const got = await Promise.all(clients.map((c) => c.waitFor((m) => m.type === 'update', { label: 'the event' })))
    assert.ok(got.every((m) => m.id === 7))
    await manager.close()
    const closes = await Promise.all(clients.map((c) => c.waitForClose()))
    assert.deepEqual(new Set(closes.map((c) => c.code)), new Set([1001]))
  })
})

test(
  'no descriptor is left behind: 100 adopted connections and 50 refusals, open and closed',
  { ...T, skip: !LINUX },
  async (t) => {
    await withApp(async ({ manager, url }) => {
      const cycle = async (n) => {
        for (let i = 0; i < n; i += 10) {
          const batch = await Promise.all(
            Array.from({ length: 10 }, (_, j) => connect(url(), { token: makeToken({ id: `u${i + j}` }) })),
          )
          await Promise.all(batch.map((c) => c.close()))
          const refused = await Promise.all(Array.from({ length: 5 }, () => handshake(url(), { token: 'bad' })))
          assert.ok(refused.every((r) => r.status === 401))
        }
        await waitUntil(() => manager.stats().connections === 0, { label: 'every socket closed' })
      }
      await cycle(10) // warm-up: what Node and the server open once
      await sleep(1500)
      const before = openFds()
      await cycle(100)
      // A refused connection is closed once its client is gone, or a moment after the answer.
      let after = openFds()
      for (const deadline = Date.now() + 5000; after > before && Date.now() < deadline; after = openFds()) {
        await sleep(100)
      }
      t.diagnostic(`descriptors: ${before} before, ${after} after 150 connections`)
      assert.ok(after <= before + 5, `descriptors: ${before} before, ${after} after 150 connections`)
    })
  },
)

test("Node's event loop no longer watches an adopted connection", { ...T, skip: !LINUX }, async () => {
  await withApp(async ({ server, url }) => {
    const accepted = []
    server.on('connection', (socket) => accepted.push(inodeOf(socket._handle.fd)))
    const listening = inodeOf(server._handle.fd)
    const clients = await Promise.all(
      Array.from({ length: 5 }, (_, i) => connect(url(), { token: makeToken({ id: `u${i}` }) })),
    )
    await Promise.all(clients.map((c) => c.join('posts')))
    const watches = epollWatches()
    const nodeLoop = [...watches.values()].find((w) => w.has(listening))
    assert.ok(nodeLoop, "Node's own epoll (it watches the listening socket)")
    assert.equal(accepted.length, 5)
    for (const inode of accepted) {
      assert.ok(!nodeLoop.has(inode), "Node's loop dropped the connection when it closed its descriptor")
      assert.ok(
        [...watches.values()].some((w) => w !== nodeLoop && w.has(inode)),
        "the server's runtime watches it",
      )
    }
    await Promise.all(clients.map((c) => c.close()))
  })
})

/** A self-signed certificate for 127.0.0.1, made with the openssl command (null without it). */
function selfSigned() {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'attach-tls-'))
  try {
    const [key, cert] = [path.join(dir, 'key.pem'), path.join(dir, 'cert.pem')]
    execFileSync(
      'openssl',
      ['req', '-x509', '-newkey', 'rsa:2048', '-nodes', '-keyout', key, '-out', cert, '-days', '1'].concat([
        '-subj',
        '/CN=127.0.0.1',
      ]),
      { stdio: 'ignore' },
    )
    return { key: fs.readFileSync(key), cert: fs.readFileSync(cert) }
  } catch {
    return null
  } finally {
    fs.rmSync(dir, { recursive: true, force: true })
  }
}

test('what cannot be adopted throws cannot-adopt: a TLS server and socket, a Unix socket', T, async (t) => {
  const manager = await startServer()
  try {
    const tlsOptions = selfSigned()
    if (!tlsOptions) {
      t.diagnostic('no openssl command: the TLS cases are skipped')
    } else {
      const server = https.createServer(tlsOptions)
      assert.throws(
        () => manager.attachTo(server),
        (err) => err.code === 'cannot-adopt' && /HTTPS/.test(err.message) && /own port/.test(err.message),
      )
      // handleUpgrade on a TLS socket throws, and leaves the socket to the caller.
      const errors = []
      server.on('upgrade', (req, socket, head) => {
        try {
          manager.handleUpgrade(req, socket, head)
        } catch (err) {
          errors.push(err)
          socket.end('HTTP/1.1 501 Not Implemented\r\ncontent-length: 0\r\nconnection: close\r\n\r\n')
        }
      })
      const port = await listen(server)
      const ws = new WebSocket(`wss://127.0.0.1:${port}/realtime`, { rejectUnauthorized: false })
      const status = await withTimeout(
        new Promise((resolve) => {
          ws.once('unexpected-response', (req, res) => resolve(res.statusCode))
          ws.once('error', () => {})
        }),
        WAIT,
        'the TLS answer',
      )
      assert.equal(status, 501)
      assert.equal(errors.length, 1)
      assert.equal(errors[0].code, 'cannot-adopt')
      assert.match(errors[0].message, /TLS/)
      ws.terminate()
      await closeServer(server)
    }

    // A server on a Unix domain socket: its connections have descriptors, of the wrong family.
    const sock = path.join(os.tmpdir(), `attach-${process.pid}.sock`)
    fs.rmSync(sock, { force: true })
    const server = http.createServer()
    const errors = []
    server.on('upgrade', (req, socket, head) => {
      try {
        manager.handleUpgrade(req, socket, head)
      } catch (err) {
        errors.push(err)
        socket.destroy()
      }
    })
    await new Promise((resolve) => server.listen(sock, resolve))
    assert.throws(
      () => manager.attachTo(server),
      (err) => err.code === 'cannot-adopt' && /Unix domain/.test(err.message),
    )
    const ws = new WebSocket(`ws+unix://${sock}:/realtime`, { headers: { Authorization: `JWT ${makeToken()}` } })
    await withTimeout(new Promise((resolve) => ws.once('error', resolve).once('close', resolve)), WAIT, 'refusal')
    assert.equal(errors.length, 1)
    assert.equal(errors[0].code, 'cannot-adopt')
    assert.match(errors[0].message, /not a TCP socket/)
    await closeServer(server)

    // A descriptor that is no socket at all.
    const file = fs.openSync('/dev/null', 'r')
    const fake = { _handle: { fd: file }, destroyed: false, writableLength: 0, readableLength: 0 }
    const req = { method: 'GET', url: '/', rawHeaders: [] }
    try {
      assert.throws(
        () => manager.handleUpgrade(req, fake, Buffer.alloc(0)),
        (err) => err.code === 'cannot-adopt' && /not a socket/.test(err.message),
      )
    } finally {
      fs.closeSync(file)
    }
    assert.throws(
      () => manager.handleUpgrade(req, { ...fake, _handle: {} }, Buffer.alloc(0)),
      (err) => err.code === 'cannot-adopt' && /no file descriptor/.test(err.message),
    )
  } finally {
    await manager.close()
  }
})

test('after close, handleUpgrade answers 503 and returns false', T, async () => {
  const manager = await startServer()
  const server = http.createServer()
  const results = []
  server.on('upgrade', (req, socket, head) => results.push(manager.handleUpgrade(req, socket, head)))
  const port = await listen(server)
  try {
    await manager.close()
    const r = await handshake(`ws://127.0.0.1:${port}/`, { token: makeToken() })
    assert.equal(r.status, 503)
    assert.deepEqual(r.json, { error: 'shutting-down' })
    assert.deepEqual(results, [false])
  } finally {
    await closeServer(server)
  }
})

test("attachTo serves Server-Sent Events and long polls on the app's port, before the app's handler", T, async () => {
  const seen = []
  const handler = (req, res) => {
    seen.push(req.url)
    res.end('hello from the app\n')
  }
  await withApp(
    async ({ manager, port }) => {
      const auth = { Authorization: `JWT ${makeToken({ id: 'sue' })}` }
      let text = ''
      const messages = () =>
        text
          .split('\n')
          .filter((l) => l.startsWith('data: '))
          .map((l) => JSON.parse(l.slice(6)))
      const res = await new Promise((resolve, reject) => {
        const path = '/realtime/sse?rooms=posts'
        http.get({ host: '127.0.0.1', port, path, headers: auth, agent: false }, resolve).on('error', reject)
      })
      assert.equal(res.statusCode, 200)
      assert.match(res.headers['content-type'], /^text\/event-stream/)
      res.setEncoding('utf8')
      res.on('data', (c) => (text += c))
      await waitUntil(() => messages().some((m) => m.type === 'ack'), { label: 'the join ack' })
      assert.deepEqual([manager.stats().connections, manager.stats().streams], [1, 1])
      await manager.emitEvent(event(7))
      const e = await waitUntil(() => messages().find((m) => m.type === 'update'), { label: 'the event' })
      assert.deepEqual([e.collection, e.id], ['posts', 7])
      assert.match(text, /event: update\n/)
      // A refusal is the server's own, as on its port.
      const refused = await httpGet(port, '/realtime/sse?rooms=posts')
      assert.equal(refused.status, 401)
      assert.equal(JSON.parse(refused.body).error, 'unauthorized')
      // A long poll: the first answers at once with the ack and a cursor.
      const poll = await httpGet(port, '/realtime/poll?rooms=posts', auth)
      assert.equal(poll.status, 200)
      assert.equal(JSON.parse(poll.body).messages[0].type, 'ack')
      // The app's own requests are still the app's; the streams never reached it.
      assert.equal((await httpGet(port, '/realtime/other')).body, 'hello from the app\n')
      assert.deepEqual(seen, ['/realtime/other'])
      res.destroy()
      await waitUntil(() => manager.stats().connections === 0, { label: 'the stream gone at the server' })
    },
    { handler },
  )
})
