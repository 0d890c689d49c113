// Attacks a client can make on the server, one test each: what the server bounds, how the
// attacker's socket ends, and that the other clients keep their events meanwhile.
//
// No timing thresholds: every timeout is a hang guard, and bounds are on bytes and counts.

import assert from 'node:assert/strict'
import { spawn } from 'node:child_process'
import http from 'node:http'
import net from 'node:net'
import { after, test } from 'node:test'

import {
  closeCodeIn,
  connect,
  encodeFrame,
  freePort,
  handshake,
  httpGet,
  isEvent,
  makeToken,
  SECRET,
  startServer,
  waitUntil,
  withServer,
  withTimeout,
  WAIT,
} from './helpers.mjs'
import { runCleanups, skip as redisSkip, startInstance, startRedis } from './redis-helpers.mjs'

const T = { timeout: 120_000 }

/** Pings answered in the flood: each would have queued a 127-byte pong before the bound. */
const FLOOD_PINGS = 160_000

/** How much the server's heap may grow while it reads the flood (the pongs it would have kept come to about 20 MiB). */
const FLOOD_HEAP_BOUND = 8 * 1024 * 1024

/**
 * A WebSocket that completes its handshake, then stops reading: what the server sends stays in
 * the kernel's buffers until `resume()`. Resolves once the 101 is in.
 */
function silentSocket(port, token) {
  return withTimeout(
    new Promise((resolve, reject) => {
      const socket = net.connect(port, '127.0.0.1')
      let buf = Buffer.alloc(0)
      let head = true
      let ended = false
      const closed = new Promise((r) => socket.on('close', r))
      socket.on('error', () => {})
      socket.on('close', () => (ended = true))
      const onData = (chunk) => {
        buf = Buffer.concat([buf, chunk])
        if (!head) return
        const i = buf.indexOf('\r\n\r\n')
        if (i < 0) return
        head = false
        const status = Number(buf.subarray(0, i).toString().split(' ')[1])
        buf = buf.subarray(i + 4)
        if (status !== 101) return reject(new Error(`handshake refused: ${status}`))
        socket.pause()
        resolve({
          socket,
          received: () => buf,
          resume: () => socket.resume(),
          closed,
          isEnded: () => ended,
        })
      }
      socket.on('data', onData)
      socket.on('connect', () => {
        socket.write(
          'GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n' +
            `Sec-WebSocket-Key: ${Buffer.from('abuse-test-key!!').toString('base64')}\r\n` +
            `Sec-WebSocket-Version: 13\r\nAuthorization: JWT ${token}\r\n\r\n`,
        )
      })
    }),
    WAIT,
    'the silent socket handshake',
  )
}

/** Writes `chunk` `times` times, waiting for the kernel to take each; stops if the socket ends. */
async function writeMany(socket, chunk, times) {
  for (let i = 0; i < times && !socket.destroyed; i++) {
    if (!socket.write(chunk)) {
      await new Promise((r) => {
        const done = () => {
          socket.off('drain', done)
          socket.off('close', done)
          r()
        }
        socket.on('drain', done)
        socket.on('close', done)
      })
    }
  }
}

/** A thousand masked pings of the largest control payload, built once. */
function pingChunk() {
  return Buffer.concat(Array.from({ length: 1000 }, () => encodeFrame(0x9, Buffer.alloc(125, 7))))
}

/** `bob`, in `posts`, gets an event emitted now. */
async function stillDelivers(ctx, bob, n) {
  await ctx.manager.emitEvent({ type: 'create', collection: 'posts', id: n, doc: { n } })
  await bob.waitFor((m) => m.type === 'create' && m.id === n, { label: `event ${n}` })
}

test('a ping flood from a client that reads nothing keeps 16 pongs waiting: the heap stays bounded', T, async () => {
  // No rate limit: the pong bound alone is what is tested here.
  await withServer({ maxMessagesPerSecond: 0 }, async (ctx) => {
    const bob = await ctx.connectAs('bob')
    await bob.join('posts')
    const heap = () => ctx.manager.stats().heapBytes ?? process.memoryUsage().rss
    const flooder = await silentSocket(ctx.manager.port, makeToken({ id: 'mallory' }))
    const before = heap()
    await writeMany(flooder.socket, pingChunk(), FLOOD_PINGS / 1000)
    // Every ping read: the server answered (or replaced the answer to) each of them.
    await waitUntil(() => ctx.manager.stats().connections === 2, { label: 'both sockets open' })
    await stillDelivers(ctx, bob, 1)
    const grown = heap() - before
    assert.ok(grown < FLOOD_HEAP_BOUND, `the heap grew by ${grown} bytes during the flood`)
    assert.equal(flooder.isEnded(), false, 'a flood within no rate limit is not a reason to close')
    flooder.socket.destroy()
  })
})

test('a ping flood past maxMessagesPerSecond ends in close 4029 while others keep their events', T, async () => {
  await withServer({}, async (ctx) => {
    const bob = await ctx.connectAs('bob')
    await bob.join('posts')
    const flooder = await silentSocket(ctx.manager.port, makeToken({ id: 'mallory' }))
    await writeMany(flooder.socket, pingChunk(), 20)
    await waitUntil(() => ctx.manager.stats().rateLimited === 1, { label: 'the flooder closed as rate limited' })
    await stillDelivers(ctx, bob, 1)
    flooder.resume()
    await waitUntil(() => closeCodeIn(flooder.received()) !== undefined, { label: 'the close frame' })
    assert.equal(closeCodeIn(flooder.received()), 4029)
    await withTimeout(flooder.closed, WAIT, 'the flooder to be disconnected')
    await waitUntil(() => ctx.manager.stats().connections === 1, { label: 'the flooder gone' })
    await stillDelivers(ctx, bob, 2)
  })
})

test('messages past the rate are dropped unparsed with one error per episode, then 4029', T, async () => {
  await withServer({ maxMessagesPerSecond: 5 }, async (ctx) => {
    const bob = await ctx.connectAs('bob')
    await bob.join('posts')
    const c = await ctx.connectAs('mallory')
    // Half of them not even JSON: past the limit nothing is parsed, so nothing says bad-json.
    for (let i = 0; i < 200; i++) c.send(i % 2 ? 'not json' : { type: 'ping', id: i })
    const { code } = await c.waitForClose()
    assert.equal(code, 4029)
    const limited = c.all.filter((m) => m.type === 'error' && m.code === 'rate-limited')
    assert.equal(limited.length, 1, 'one rate-limited error for the episode')
    // The first five fit in the allowance; the rest were neither parsed nor answered (a token
    // or two may come back while they are read, hence a bound rather than an exact count).
    assert.ok(c.all.length < 20, `${c.all.length} replies to 200 messages`)
    assert.ok(c.all.filter((m) => m.type === 'pong').length >= 3)
    assert.equal(ctx.manager.stats().rateLimited, 1)
    await stillDelivers(ctx, bob, 1)
  })
})

/** A handshake refused for a connection limit: its status and JSON body. */
function assertTooMany(r, status) {
  assert.equal(r.status, status, r.body)
  assert.equal(r.json?.error, 'too-many-connections', r.body)
  assert.equal(typeof r.json.reason, 'string')
}

test('maxConnections: a handshake past it is refused with 503 and the others keep their events', T, async () => {
  await withServer({ maxConnections: 2 }, async (ctx) => {
    const bob = await ctx.connectAs('bob')
    await bob.join('posts')
    const alice = await ctx.connectAs('alice')
    await alice.join('posts')
    assertTooMany(await ctx.handshake({ token: makeToken({ id: 'carol' }) }), 503)
    const s = ctx.manager.stats()
    assert.equal(s.refusedMaxConnections, 1)
    assert.equal(s.handshakesRefused, 1)
    assert.equal(s.connections, 2)
    await stillDelivers(ctx, bob, 1)
    await alice.waitFor((m) => m.type === 'create' && m.id === 1)
    // A place freed is a place taken again.
    await alice.close()
    await waitUntil(async () => (await ctx.handshake({ token: makeToken({ id: 'carol' }) })).status === 101, {
      label: "alice's place to be free",
    })
  })
})

test('maxConnectionsPerUser: one more socket of that user gets 429; other users connect', T, async () => {
  await withServer({ maxConnectionsPerUser: 2 }, async (ctx) => {
    const tabs = [await ctx.connectAs('alice'), await ctx.connectAs('alice')]
    for (const t of tabs) await t.join('posts')
    assertTooMany(await ctx.handshake({ token: makeToken({ id: 'alice' }) }), 429)
    const bob = await ctx.connectAs('bob')
    await bob.join('posts')
    assert.equal(ctx.manager.stats().refusedPerUser, 1)
    await stillDelivers(ctx, bob, 1)
    for (const t of tabs) await t.waitFor((m) => m.type === 'create' && m.id === 1)
  })
})

test('maxConnectionsPerIp: by the peer address, or X-Forwarded-For from trustedProxies only', T, async () => {
  // trustedProxies: [] trusts no one, not even a proxy on this machine (the default trusts loopback).
  await withServer({ maxConnectionsPerIp: 2, trustedProxies: [] }, async (ctx) => {
    const bob = await ctx.connectAs('bob')
    await bob.join('posts')
    await ctx.connectAs('alice')
    // Not from a trusted proxy: the header is ignored, and this is a third socket from 127.0.0.1.
    const spoofed = await ctx.handshake({
      token: makeToken({ id: 'carol' }),
      headers: { 'X-Forwarded-For': '203.0.113.9' },
    })
    assertTooMany(spoofed, 429)
    assert.equal(ctx.manager.stats().refusedPerIp, 1)
    await stillDelivers(ctx, bob, 1)
  })
  // By default a proxy on this machine (nginx beside the app) is believed: its clients are
  // counted by the address it names, not all as 127.0.0.1.
  await withServer({ maxConnectionsPerIp: 1 }, async (ctx) => {
    const from = (ip, id) => ({ token: makeToken({ id }), headers: { 'X-Forwarded-For': ip } })
    assert.equal((await ctx.handshake(from('203.0.113.1', 'bob'))).status, 101)
    assert.equal((await ctx.handshake(from('203.0.113.2', 'alice'))).status, 101)
    assertTooMany(await ctx.handshake(from('203.0.113.1', 'carol')), 429)
  })
  await withServer({ maxConnectionsPerIp: 1, trustedProxies: ['127.0.0.1'] }, async (ctx) => {
    const from = (ip, id) => ({ token: makeToken({ id }), headers: { 'X-Forwarded-For': ip } })
    const bob = await ctx.connect(from('203.0.113.1', 'bob'))
    await bob.join('posts')
    assert.equal((await ctx.handshake(from('203.0.113.2', 'alice'))).status, 101)
    // The client may write its own entries left of the proxy's: only the last one counts.
    assertTooMany(await ctx.handshake(from('198.51.100.7, 203.0.113.1', 'carol')), 429)
    // RFC 7239's header is read the same way.
    const forwarded = await ctx.handshake({
      token: makeToken({ id: 'dave' }),
      headers: { Forwarded: 'for=198.51.100.7, for="203.0.113.2:5000"' },
    })
    assertTooMany(forwarded, 429)
    assert.equal(ctx.manager.stats().refusedPerIp, 2)
    await stillDelivers(ctx, bob, 1)
  })
})

test("the limits hold on the app's own port too (attachTo): refused with the JSON body", T, async () => {
  const manager = await startServer({ maxConnectionsPerUser: 1 })
  const server = http.createServer((req, res) => res.end('app'))
  manager.attachTo(server, { path: '/realtime' })
  await new Promise((resolve) => server.listen(0, '127.0.0.1', resolve))
  const url = `ws://127.0.0.1:${server.address().port}/realtime`
  try {
    const alice = await connect(url, { token: makeToken({ id: 'alice' }) })
    await alice.join('posts')
    assertTooMany(await handshake(url, { token: makeToken({ id: 'alice' }) }), 429)
    assert.equal(manager.stats().refusedPerUser, 1)
    await manager.emitEvent({ type: 'create', collection: 'posts', id: 1, doc: {} })
    await alice.waitFor((m) => m.type === 'create' && m.id === 1)
    await alice.close()
    // Its place is free once its socket is gone.
    const again = await waitUntil(
      async () => {
        const r = await handshake(url, { token: makeToken({ id: 'alice' }) })
        return r.status === 101 ? r.client : undefined
      },
      { label: "alice's place to be free" },
    )
    await again.close()
  } finally {
    await manager.close()
    server.closeAllConnections()
    await new Promise((resolve) => server.close(resolve))
  }
})

test(
  'out of descriptors, the accept loop backs off and logs once per episode',
  { ...T, skip: process.platform === 'win32' },
  async () => {
    // A server in a process that may open few descriptors; its port comes back on stdout.
    const program = `
    import { initUWebSocket } from ${JSON.stringify(new URL('../index.mjs', import.meta.url).href)}
    const m = await initUWebSocket(0, { host: '127.0.0.1', secret: 's', maxConnectionsPerIp: 0 })
    console.log(m.port)
    process.stdin.on('data', async () => { await m.close(); process.exit(0) })
  `
    const child = spawn('sh', ['-c', 'ulimit -n 200 && exec node --input-type=module -e "$0"', program], {
      stdio: ['pipe', 'pipe', 'pipe'],
    })
    let stderr = ''
    child.stderr.on('data', (d) => (stderr += d))
    const port = await withTimeout(
      new Promise((resolve) => child.stdout.once('data', (d) => resolve(Number(String(d).trim())))),
      WAIT,
      'the server to start',
    )
    const sockets = []
    try {
      // Idle TCP connections, each a descriptor in the server once accepted, until it has none.
      for (let i = 0; i < 300; i++) {
        const s = net.connect(port, '127.0.0.1')
        s.on('error', () => {})
        sockets.push(s)
      }
      await waitUntil(() => stderr.includes('accept failed'), { label: 'accept to fail' })
      for (const s of sockets) s.destroy()
      // Free again: the next connection is accepted, and the episode's end is logged.
      await waitUntil(() => stderr.includes('accepting connections again'), { label: 'accept to recover' })
      const r = await handshake(`ws://127.0.0.1:${port}/`, { token: 'x' })
      assert.equal(r.status, 401, 'the server answers again')
      // Descriptors can run out again while the queued connections are taken: each episode is one
      // line as it starts and one as it ends, never a line per failed try.
      const lines = stderr.split('\n').filter((l) => /accept failed|accepting connections again/.test(l))
      lines.forEach((l, i) => assert.equal(/accept failed/.test(l), i % 2 === 0, stderr))
    } finally {
      for (const s of sockets) s.destroy()
      child.stdin.write('stop')
      await new Promise((resolve) => child.once('exit', resolve))
    }
  },
)

test('connection options are checked at start', async () => {
  await assert.rejects(
    withServer({ trustedProxies: ['proxy.internal'] }, () => {}),
    /trustedProxies/,
  )
  await assert.rejects(
    withServer({ maxConnections: 0 }, () => {}),
    /maxConnections/,
  )
})

// ---------------------------------------------------------------------------------------------
// Handshake work: verifyUser caps, first-message auth, Connection: close

const isEventMsg = (m) => m.type === 'create' && m.collection === 'posts'

/** A promise the test settles, with whether it has been. */
function gate() {
  let open
  const promise = new Promise((resolve) => (open = resolve))
  const g = { promise, settled: false, open: (v) => ((g.settled = true), open(v)) }
  return g
}

test(
  'a verifyUser that hangs forever: past maxVerifying 503, the hung ones refused, then others connect',
  T,
  async () => {
    const hung = []
    const verifyUser = (token, claims) => {
      if (!String(claims.id).startsWith('hang')) return claims
      const g = gate()
      hung.push(g)
      return g.promise // never settled by the server's doing
    }
    await withServer({ maxVerifying: 2, verifyTimeout: 500, verifyUser }, async (ctx) => {
      const stuck = [
        ctx.handshake({ token: makeToken({ id: 'hang-1' }) }),
        ctx.handshake({ token: makeToken({ id: 'hang-2' }) }),
      ]
      await waitUntil(() => ctx.manager.stats().verifying === 2, { label: 'two verifyUser calls in flight' })

      const past = await ctx.handshake({ token: makeToken({ id: 'bob' }) })
      assert.equal(past.status, 503)
      assert.equal(past.json.error, 'too-many-verifications')
      assert.equal(past.headers['retry-after'], '1')
      assert.equal(past.headers.connection, 'close')

      // verifyTimeout refuses the hung ones and frees their places.
      for (const r of await Promise.all(stuck)) {
        assert.equal(r.status, 401)
        assert.equal(r.json.error, 'unauthorized')
      }
      assert.equal(ctx.manager.stats().verifying, 0)
      assert.equal(hung.length, 2)
      assert.ok(
        hung.every((g) => !g.settled),
        'the hung promises are still pending',
      )

      const bob = await ctx.connectAs('bob')
      await bob.join('posts')
      await ctx.manager.emitEvent({ type: 'create', collection: 'posts', id: 1 })
      assert.equal((await bob.waitFor(isEventMsg, { label: 'the event' })).id, 1)
      assert.ok(ctx.manager.stats().refusedVerifying >= 1)
      for (const g of hung) g.open(null)
    })
  },
)

test('maxVerifyingPerUser: 429 for that user; a refresh past it is rate-limited and keeps its session', T, async () => {
  let held = null
  const verifyUser = (token, claims) => (held && claims.id === 'alice' ? held.promise.then(() => claims) : claims)
  await withServer({ maxVerifyingPerUser: 1, verifyUser }, async (ctx) => {
    const a = await ctx.connectAs('alice')
    await a.join('posts')

    held = gate()
    const waiting = ctx.handshake({ token: makeToken({ id: 'alice' }) })
    await waitUntil(() => ctx.manager.stats().verifying === 1, { label: "alice's check in flight" })

    const past = await ctx.handshake({ token: makeToken({ id: 'alice' }) })
    assert.equal(past.status, 429)
    assert.equal(past.json.error, 'too-many-verifications')
    assert.equal(past.headers['retry-after'], '1')
    // Another user is not held up by alice's cap.
    const other = await ctx.connectAs('carol')

    const refresh = await a.request({ type: 'auth', token: makeToken({ id: 'alice' }, { expiresIn: 9000 }) })
    assert.equal(refresh.type, 'error')
    assert.equal(refresh.code, 'rate-limited')
    // Still connected, still receiving.
    await ctx.manager.emitEvent({ type: 'create', collection: 'posts', id: 2 })
    assert.equal((await a.waitFor(isEventMsg, { label: 'the event after the refused refresh' })).id, 2)
    assert.ok(a.isOpen)

    held.open()
    const late = await waiting
    assert.equal(late.status, 101)
    assert.equal(ctx.manager.stats().refusedVerifying, 2)
    await other.close()
  })
})

/**
 * A reverse proxy in front of the server that records the URL of every upgrade it forwards:
 * what a proxy's or APM tool's access log would hold.
 */
async function urlRecordingProxy(targetPort) {
  const urls = []
  const sockets = new Set()
  const server = http.createServer((req, res) => res.writeHead(404).end())
  server.on('upgrade', (req, socket, head) => {
    urls.push(req.url)
    const upstream = net.connect(targetPort, '127.0.0.1')
    for (const s of [socket, upstream]) {
      sockets.add(s)
      s.on('error', () => {})
      s.on('close', () => {
        sockets.delete(s)
        socket.destroy()
        upstream.destroy()
      })
    }
    upstream.on('connect', () => {
      const lines = [`${req.method} ${req.url} HTTP/1.1`]
      for (let i = 0; i < req.rawHeaders.length; i += 2) lines.push(`${req.rawHeaders[i]}: ${req.rawHeaders[i + 1]}`)
      upstream.write(lines.join('\r\n') + '\r\n\r\n')
      upstream.write(head)
      socket.pipe(upstream).pipe(socket)
    })
  })
  await new Promise((r) => server.listen(0, '127.0.0.1', r))
  return {
    urls,
    url: `ws://127.0.0.1:${server.address().port}/`,
    close: () => {
      for (const s of sockets) s.destroy()
      return new Promise((r) => server.close(r))
    },
  }
}

test("the SDK's token never appears in the upgrade URL, yet it is authenticated and gets its events", T, async () => {
  const { createRealtimeClient } = await import('../lib/client/index.mjs')
  const { default: WebSocket } = await import('ws')
  const manager = await startServer()
  const proxy = await urlRecordingProxy(manager.port)
  const clients = []
  try {
    const token = makeToken({ id: 'sdk-user' })
    const client = createRealtimeClient({ url: proxy.url, token, WebSocket, reconnect: false })
    clients.push(client)
    const got = []
    client.subscribe('posts', (e) => got.push(e))
    await waitUntil(() => manager.getSocketsInRoom('collection:posts').length === 1, { label: 'the SDK joined' })
    assert.equal(client.status, 'open')
    assert.equal(manager.getSocketsInRoom('collection:posts')[0].user.id, 'sdk-user')
    await manager.emitEvent({ type: 'create', collection: 'posts', id: 7 })
    await waitUntil(() => got.length === 1, { label: 'the event through the proxy' })

    assert.equal(proxy.urls.length, 1)
    assert.ok(!proxy.urls[0].includes(token), `the token is in the URL: ${proxy.urls[0]}`)
    assert.ok(!proxy.urls[0].includes('token='), proxy.urls[0])
    assert.equal(new URL(proxy.urls[0], 'ws://x').searchParams.get('auth'), 'message')
    client.disconnect()

    // tokenInUrl: the old way still works (and is what a log would show).
    const legacy = createRealtimeClient({ url: proxy.url, token, WebSocket, reconnect: false, tokenInUrl: true })
    clients.push(legacy)
    const legacyGot = []
    legacy.subscribe('posts', (e) => legacyGot.push(e))
    await waitUntil(() => manager.getSocketsInRoom('collection:posts').length === 1 && legacy.status === 'open', {
      label: 'the legacy client joined',
    })
    await manager.emitEvent({ type: 'create', collection: 'posts', id: 8 })
    await waitUntil(() => legacyGot.length === 1, { label: 'the legacy event' })
    assert.equal(new URL(proxy.urls[1], 'ws://x').searchParams.get('token'), token)
  } finally {
    for (const c of clients) c.disconnect()
    await proxy.close()
    await manager.close()
  }
})

test('?auth=message: no token in time, a bad token or another message first closes 4004', T, async () => {
  await withServer({ maxConnections: 3 }, async (ctx) => {
    const open = () => ctx.connect({ query: '?auth=message' })
    const [good, bad, other] = [await open(), await open(), await open()]
    // Pending sockets count against maxConnections, and in stats, but are no peers.
    assert.equal(ctx.manager.stats().pendingAuth, 3)
    assert.equal(ctx.manager.stats().connections, 0)
    const full = await ctx.handshake({ token: makeToken({ id: 'x' }) })
    assert.equal(full.status, 503)
    assert.equal(full.json.error, 'too-many-connections')

    bad.send({ type: 'auth', token: 'garbage' })
    assert.deepEqual(await bad.waitForClose(), { code: 4004, reason: 'malformed token' })
    other.send({ type: 'join-collection', collection: 'posts' })
    const closed = await other.waitForClose()
    assert.equal(closed.code, 4004)
    assert.match(closed.reason, /first message must be/)
    assert.deepEqual(other.all, [], 'nothing but the close before authenticating')

    // The good case: acked, then a socket like any other, its later messages in order.
    good.send({ type: 'auth', token: makeToken({ id: 'dora' }), id: 'a1' })
    good.send({ type: 'whoami', id: 'w1' })
    assert.equal((await good.waitFor((m) => m.id === 'a1')).type, 'ack')
    assert.equal((await good.waitFor((m) => m.id === 'w1')).user.id, 'dora')
    await good.join('posts')
    await ctx.manager.emitEvent({ type: 'create', collection: 'posts', id: 3 })
    assert.equal((await good.waitFor(isEventMsg, { label: 'the event' })).id, 3)
    const s = ctx.manager.stats()
    assert.equal(s.authFailures, 2)
    assert.equal(s.pendingAuth, 0)
    assert.equal(s.connections, 1)
  })
  await withServer({ authTimeout: 300 }, async (ctx) => {
    const silent = await ctx.connect({ query: '?auth=message' })
    assert.deepEqual(await silent.waitForClose(), { code: 4004, reason: 'no auth message within authTimeout' })
    assert.deepEqual(silent.all, [])
    assert.equal(ctx.manager.stats().authFailures, 1)
  })
})

test('?auth=message: a user at maxConnectionsPerUser closes 1013; the SDK renews its token on 4004', T, async () => {
  const { createRealtimeClient } = await import('../lib/client/index.mjs')
  const { default: WebSocket } = await import('ws')
  await withServer({ maxConnectionsPerUser: 1 }, async (ctx) => {
    const first = await ctx.connectAs('erin')
    const again = await ctx.connect({ query: '?auth=message' })
    again.send({ type: 'auth', token: makeToken({ id: 'erin' }) })
    assert.equal((await again.waitForClose()).code, 1013)
    await first.close()

    // getToken's first token is refused: 4004, and the next attempt asks for a fresh one.
    const reasons = []
    const client = createRealtimeClient({
      url: ctx.url(),
      WebSocket,
      reconnect: { initialDelay: 10, maxDelay: 50 },
      getToken: ({ reason }) => {
        reasons.push(reason)
        return reasons.length === 1 ? 'not-a-token' : makeToken({ id: 'erin' })
      },
    })
    const closes = []
    client.on('close', (c) => closes.push(c.code))
    try {
      await waitUntil(() => client.status === 'open', { label: 'open with the fresh token' })
      assert.deepEqual(closes, [4004])
      assert.deepEqual(reasons, ['connect', 'expired'])
    } finally {
      client.disconnect()
    }
  })
})

test('every non-upgrade answer says Connection: close and ends the connection', T, async () => {
  await withServer({}, async (ctx) => {
    const port = ctx.manager.port
    for (const path of ['/healthz', '/nowhere']) {
      const r = await httpGet(port, path)
      assert.equal(r.headers.connection, 'close', path)
    }
    const refused = await ctx.handshake({ token: 'garbage' })
    assert.equal(refused.status, 401)
    assert.equal(refused.headers.connection, 'close')

    // A client asking to keep the connection alive still sees it end after the answer.
    const socket = net.connect(port, '127.0.0.1')
    socket.on('error', () => {})
    let got = ''
    socket.on('data', (c) => (got += c))
    await new Promise((r) => socket.on('connect', r))
    socket.write('GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: keep-alive\r\n\r\n')
    await withTimeout(new Promise((r) => socket.on('end', r)), WAIT, 'the server to end the connection')
    assert.match(got, /^HTTP\/1\.1 200/)
    assert.match(got, /\r\nconnection: close\r\n/i)
    socket.destroy()
  })
})

test("?auth=message on the app's own port (attachTo): the SDK's URL the app sees has no token", T, async () => {
  const { createRealtimeClient } = await import('../lib/client/index.mjs')
  const { default: WebSocket } = await import('ws')
  const manager = await startServer()
  const server = http.createServer((req, res) => res.end('app'))
  const seen = []
  // The app's own listener, first: what its access log would write.
  server.on('upgrade', (req) => seen.push(req.url))
  manager.attachTo(server, { path: '/realtime' })
  await new Promise((resolve) => server.listen(0, '127.0.0.1', resolve))
  const token = makeToken({ id: 'attached' })
  const client = createRealtimeClient({
    url: `ws://127.0.0.1:${server.address().port}/realtime`,
    token,
    WebSocket,
    reconnect: false,
  })
  try {
    const got = []
    client.subscribe('posts', (e) => got.push(e))
    await waitUntil(() => manager.getSocketsInRoom('collection:posts').length === 1, { label: 'joined' })
    assert.equal(manager.getSocketsInRoom('collection:posts')[0].user.id, 'attached')
    await manager.emitEvent({ type: 'create', collection: 'posts', id: 4 })
    await waitUntil(() => got.length === 1, { label: 'the event' })
    assert.deepEqual(seen, ['/realtime?auth=message'])
  } finally {
    client.disconnect()
    await manager.close()
    server.closeAllConnections()
    await new Promise((resolve) => server.close(resolve))
  }
})

// Recovery and memory bounds (issue 18).

/** The room's position from a plain join's ack (rooms with history). */
async function positionOf(client, collection = 'posts') {
  const ack = await client.request({ type: 'join-collection', collection })
  return ack.positions[collection]
}

async function emitMany(manager, from, n, doc = {}) {
  for (let i = from; i < from + n; i++) {
    await manager.emitEvent({ type: 'update', collection: 'posts', id: i, doc: { n: i, ...doc } })
  }
}

test('a client that rejoins with since in a loop is limited; the others keep their events', T, async () => {
  await withServer({ history: { size: 100 }, maxRecoveriesPerMinute: 3 }, async (ctx) => {
    const bob = await ctx.connectAs('bob')
    await bob.join('posts')
    const mallory = await ctx.connectAs('mallory')
    const { epoch } = await positionOf(mallory)
    await emitMany(ctx.manager, 1, 5)
    const replies = []
    for (let i = 0; i < 8; i++) {
      await mallory.request({ type: 'leave-collection', collection: 'posts' })
      replies.push(await mallory.request({ type: 'join-collection', collection: 'posts', since: { offset: 0, epoch } }))
    }
    assert.deepEqual(
      replies.map((r) => [r.type, r.recovered]),
      [...Array(3).fill(['ack', true]), ...Array(5).fill(['ack', false])],
    )
    const failed = mallory.all.filter((m) => m.type === 'recovery-failed')
    assert.equal(failed.length, 5)
    assert.ok(failed.every((m) => m.reason === 'Limited' && m.collection === 'posts'))
    // The five live (joined then), and three replays of them, nothing more. A replay goes
    // through the room's lane while the ack and the pong are written at once, so a pong can
    // pass a replay under load: wait for all twenty, then a ping shows nothing more came.
    await waitUntil(() => mallory.events('posts').length >= 5 + 3 * 5, { label: 'the replays' })
    await mallory.request({ type: 'ping' })
    assert.equal(mallory.events('posts').length, 5 + 3 * 5)
    assert.equal(ctx.manager.stats().recoveriesLimited, 5)
    // Limited, not refused: the socket is in the room, live.
    await ctx.manager.emitEvent({ type: 'create', collection: 'posts', id: 100, doc: {} })
    await mallory.waitFor((m) => m.type === 'create' && m.id === 100)
    // bob got every event once, in order, meanwhile.
    await bob.waitFor((m) => m.type === 'create' && m.id === 100)
    assert.deepEqual(
      bob.events('posts').map((e) => e.id),
      [1, 2, 3, 4, 5, 100],
    )
  })
})

test('a recovery over maxRecoveryEvents is refused: recovered false, recovery-failed TooManyEvents', T, async () => {
  await withServer({ history: { size: 100 }, maxRecoveryEvents: 5 }, async (ctx) => {
    // A member stays in the room: a history with no events and no members may be swept (and a
    // new one started with another epoch) while `u` is away, which is not what is tested here.
    const keeper = await ctx.connectAs('keeper')
    await keeper.join('posts')
    const c = await ctx.connectAs('u')
    const { epoch } = await positionOf(c)
    c.ws.terminate()
    await c.waitForClose()
    await emitMany(ctx.manager, 1, 10)

    const late = await ctx.connectAs('u')
    const reply = await late.request({ type: 'join-collection', collection: 'posts', since: { offset: 0, epoch } })
    assert.equal(reply.recovered, false)
    const failed = await late.waitFor((m) => m.type === 'recovery-failed')
    assert.equal(failed.reason, 'TooManyEvents')
    assert.equal(failed.collection, 'posts')
    assert.equal(ctx.manager.stats().recoveriesTooLong, 1)
    await ctx.manager.emitEvent({ type: 'create', collection: 'posts', id: 11, doc: {} })
    const live = await late.waitFor(isEvent)
    assert.equal(live.id, 11, 'no replay: live from the join on')

    // Five missed is within the bound.
    const soon = await ctx.connectAs('u')
    const ok = await soon.request({ type: 'join-collection', collection: 'posts', since: { offset: 6, epoch } })
    assert.equal(ok.recovered, true)
    await waitUntil(() => soon.events('posts').length === 5, { label: 'the five missed events' })
    assert.deepEqual(
      soon.events('posts').map((e) => e.offset),
      [7, 8, 9, 10, 11],
    )
  })
})

/**
 * The events a history keeps, probed from a client: the oldest offset a join with `since` still
 * recovers from, and the events that replay gives.
 */
async function keptEvents(ctx, last, epoch) {
  for (let since = 0; since <= last; since++) {
    const c = await ctx.connectAs(`probe-${since}`)
    const reply = await c.request({ type: 'join-collection', collection: 'posts', since: { offset: since, epoch } })
    if (reply.recovered) {
      await waitUntil(() => c.events('posts').length === last - since, { label: `the events after ${since}` })
      const events = c.events('posts')
      await c.close()
      return events
    }
    await c.close()
  }
  return []
}

const MAX_HISTORY_BYTES = 16 * 1024

/** 40 events of about 2 KB into a history of 1,000 events but 16 KiB: what is kept is under the cap. */
async function assertHistoryKeepsWithinMaxBytes(ctx) {
  const c = await ctx.connectAs('u')
  const { epoch } = await positionOf(c)
  const pad = 'x'.repeat(2000)
  await emitMany(ctx.manager, 1, 40, { pad })
  const kept = await keptEvents(ctx, 40, epoch)
  const size = (e) => Buffer.byteLength(JSON.stringify(e))
  const bytes = kept.reduce((sum, e) => sum + size(e), 0)
  assert.ok(kept.length >= 4 && kept.length < 10, `${kept.length} events kept`)
  assert.ok(bytes <= MAX_HISTORY_BYTES, `${bytes} bytes kept`)
  assert.equal(kept.at(-1).offset, 40, 'the newest are the ones kept')
  // The one before the oldest kept would not have fitted.
  assert.ok(bytes + size(kept[0]) > MAX_HISTORY_BYTES - 64 * kept.length)
  assert.ok(ctx.manager.stats().historyEvictedBytes >= (40 - 10) * 2000)
  return kept.length
}

test('a history room with big events keeps within maxBytes', T, async () => {
  const history = { size: 1000, maxBytes: MAX_HISTORY_BYTES }
  await withServer({ history, maxRecoveriesPerMinute: 0 }, assertHistoryKeepsWithinMaxBytes)
  await assert.rejects(
    withServer({ history: { size: 10, maxBytes: 100 } }, () => {}),
    /maxBytes/,
  )
})

const RT = { ...T, skip: redisSkip }
after(runCleanups)

/** A redis-server on a free loopback port, stopped after the tests; resolves with its URL. */
async function redisUrl() {
  const { port } = await startRedis(await freePort())
  return `redis://127.0.0.1:${port}`
}

test('the Redis history keeps within maxBytes too', RT, async () => {
  const url = await redisUrl()
  const history = { size: 1000, maxBytes: MAX_HISTORY_BYTES }
  await withServer({ history, maxRecoveriesPerMinute: 0, redis: { url } }, assertHistoryKeepsWithinMaxBytes)
})

/** Events in the flood, about 1 KB each: 60 MB, many times what the instance may hold. */
const FLOOD_EVENTS = 60_000

/** How much the receiving instance's RSS may grow during the flood. */
const FLOOD_RSS_BOUND = 40 * 1024 * 1024

test('a flood of events from Redis to a reader that stops reading ends in 4008, RSS bounded', RT, async () => {
  const url = await redisUrl()
  // A holds the readers; B emits, so everything reaches A from Redis.
  const a = await startInstance({ redis: { url }, maxBacklog: 4 * 1024 * 1024 })
  const b = await startInstance({ redis: { url } })
  const normal = await connect(`ws://127.0.0.1:${a.port}/`, { token: makeToken({ id: 'bob' }), label: 'bob' })
  await normal.join('posts')
  const slow = await silentSocket(a.port, makeToken({ id: 'mallory' }))
  slow.socket.write(
    encodeFrame(0x1, Buffer.from(JSON.stringify({ type: 'join-collection', collection: 'posts', id: 1 }))),
  )
  slow.resume()
  await waitUntil(() => slow.received().includes('"ack"'), { label: "the slow reader's join" })
  slow.socket.pause()
  const before = (await a.call('stats')).rss
  let most = before
  const sampling = setInterval(async () => (most = Math.max(most, (await a.call('stats')).rss)), 50)
  try {
    // A subscribes to the room's channel after the joins are acked, and B connects to Redis in
    // the background: an event published before both would reach no one (pub/sub keeps
    // nothing). Then a marker: both readers are subscribed on A once it arrives.
    await waitUntil(async () => (await a.call('stats')).stats.redis.subscriptions >= 1, {
      label: "A's subscription to the room",
    })
    await waitUntil(async () => (await b.call('stats')).stats.redis.connected, { label: 'B connected to Redis' })
    await b.call('emit', { n: 1, from: 'marker' })
    await normal.waitFor(isEvent, { label: 'the first event through Redis' })
    // Once evicted, the slow reader reads again, to see its close frame.
    const evicted = waitUntil(async () => (await a.call('stats')).stats.slowConsumers === 1, {
      timeout: 120_000,
      label: 'the slow reader evicted',
    }).then(() => slow.resume())
    await b.call('emit', { n: FLOOD_EVENTS, from: 'B', start: 0, pad: 1000 })
    await waitUntil(() => normal.events('posts').length === FLOOD_EVENTS + 1, {
      timeout: 120_000,
      label: `bob to get ${FLOOD_EVENTS} events`,
    })
    const seqs = normal
      .events('posts')
      .slice(1)
      .map((e) => e.doc.seq)
    assert.deepEqual(
      seqs,
      Array.from({ length: FLOOD_EVENTS }, (_, i) => i),
      'every event once, in order',
    )
    await evicted
  } finally {
    clearInterval(sampling)
  }
  assert.ok(most - before < FLOOD_RSS_BOUND, `A's RSS grew by ${most - before} bytes during a 60 MB flood`)
  console.log(`flood: A's RSS grew by ${most - before} bytes`)
  await waitUntil(() => closeCodeIn(slow.received()) !== undefined, { label: "the slow reader's close frame" })
  assert.equal(closeCodeIn(slow.received()), 4008)
  const s = (await a.call('stats')).stats
  assert.equal(s.backlogDropped, 0, 'nothing dropped: the reader that keeps up got it all')
  await normal.close()
  await a.close()
  await b.close()
})
