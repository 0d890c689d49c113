// Server-Sent Events on the WebSocket's port: `GET <path>/sse?rooms=...` with the same
// credentials, limits, rooms, authorize rules and event JSON as a socket, `Last-Event-ID` mapped
// to history recovery, and the stream's end on drain, revocation and slow consumption. Real HTTP
// clients here; a real Chromium `EventSource` at the end.

import assert from 'node:assert/strict'
import http from 'node:http'
import { test } from 'node:test'

import { isEvent, makeToken, waitUntil, withServer, WAIT, withTimeout } from './helpers.mjs'
import { launchBrowser, openPage, startHttpServer } from './browser-support.mjs'

const T = { timeout: 60_000 }

/**
 * Opens an SSE stream with a plain HTTP client. Resolves once the response head is in:
 * `{ status, headers, json, messages, comments, ended, waitFor(pred), close(), pause(), resume() }`.
 * `messages` are `{ event, id, data }` as the SSE rules parse them (`data` JSON-parsed).
 */
function openStream(port, path, headers = {}) {
  return withTimeout(
    new Promise((resolve, reject) => {
      const req = http.get({ host: '127.0.0.1', port, path, headers, agent: false }, (res) => {
        const s = {
          status: res.statusCode,
          headers: res.headers,
          messages: [],
          comments: 0,
          body: '',
          res,
          ended: new Promise((r) => res.on('close', r)),
          close: () => req.destroy(),
          pause: () => res.pause(),
          resume: () => res.resume(),
          events: (c) => s.messages.map((m) => m.data).filter((m) => isEvent(m) && (!c || m.collection === c)),
          waitFor: (pred, label = 'a message') =>
            waitUntil(() => s.messages.find(pred), { label }).then(() => s.messages.find(pred)),
        }
        if (res.statusCode !== 200) {
          res.on('data', (c) => (s.body += c))
          res.on('end', () => {
            s.json = JSON.parse(s.body)
            resolve(s)
          })
          return
        }
        let buf = ''
        res.setEncoding('utf8')
        res.on('data', (chunk) => {
          buf += chunk
          let at
          while ((at = buf.indexOf('\n\n')) >= 0) {
            const block = buf.slice(0, at)
            buf = buf.slice(at + 2)
            const m = { event: 'message', id: undefined, data: '' }
            let data = []
            for (const line of block.split('\n')) {
              if (line.startsWith(':')) {
                s.comments++
                continue
              }
              const [field, ...rest] = line.split(':')
              const value = rest.join(':').replace(/^ /, '')
              if (field === 'event') m.event = value
              if (field === 'id') m.id = value
              if (field === 'data') data.push(value)
            }
            if (data.length === 0) continue
            m.data = JSON.parse(data.join('\n'))
            s.messages.push(m)
          }
        })
        resolve(s)
      })
      req.on('error', reject)
    }),
    WAIT,
    `GET ${path}`,
  )
}

const auth = (id) => ({ Authorization: `JWT ${makeToken({ id })}` })

test('a stream gets the same events, JSON and all, as a socket of the same user, authorize applied', T, async () => {
  const options = {
    includeCollections: ['posts', 'pages'],
    authorize: { posts: (user, event) => event.doc?.owner === user?.id },
  }
  await withServer(options, async (ctx) => {
    const port = ctx.manager.port
    const ws = await ctx.connectAs('alice')
    await ws.request({ type: 'join-collection', data: ['posts', 'pages'] })
    const sse = await openStream(port, '/sse?rooms=posts,pages', auth('alice'))
    assert.equal(sse.status, 200)
    assert.match(sse.headers['content-type'], /^text\/event-stream/)
    await sse.waitFor((m) => m.event === 'ack', 'the join ack')
    for (const owner of ['bob', 'alice', 'bob', 'alice']) {
      await ctx.manager.emitEvent({ type: 'create', collection: 'posts', id: owner, doc: { owner } })
    }
    await ctx.manager.emitEvent({ type: 'delete', collection: 'pages', id: 9 })
    ctx.manager.broadcastToRoom('collection:pages', { type: 'marker' })
    await ws.waitFor((m) => m.type === 'marker')
    await sse.waitFor((m) => m.event === 'marker', 'the marker')
    const fromWs = ws.all.filter(isEvent)
    assert.equal(fromWs.length, 3, 'two of alice’s posts and the page')
    assert.deepEqual(sse.events(), fromWs, 'the same events, the same JSON')
    for (const m of sse.messages.filter((m) => isEvent(m.data))) assert.equal(m.event, m.data.type)
    sse.close()
  })
})

test('refusals: credentials, the Origin rule for cookies, unknown rooms, bad queries, limits', T, async () => {
  await withServer({ includeCollections: ['posts'], maxConnectionsPerUser: 1 }, async (ctx) => {
    const port = ctx.manager.port
    const token = makeToken({ id: 'carol' })
    const none = await openStream(port, '/sse?rooms=posts')
    assert.equal(none.status, 401)
    assert.equal(none.json.error, 'unauthorized')
    const garbage = await openStream(port, '/sse?rooms=posts', { Authorization: 'JWT aaa.bbb.ccc' })
    assert.equal(garbage.status, 401)
    const foreign = await openStream(port, '/sse?rooms=posts', {
      cookie: `payload-token=${token}`,
      origin: 'https://evil.example',
    })
    assert.equal(foreign.status, 403)
    assert.equal(foreign.json.error, 'forbidden-origin')
    const unknown = await openStream(port, '/sse?rooms=posts,secrets', auth('carol'))
    assert.equal(unknown.status, 404)
    assert.equal(unknown.json.error, 'unknown-collection')
    for (const q of ['/sse', '/sse?rooms=', '/sse?rooms=a%20b', '/sse?rooms=posts&auth=message']) {
      const r = await openStream(port, q, auth('carol'))
      assert.equal(r.status, 400, q)
      assert.equal(r.json.error, 'bad-request', q)
    }
    // The same credential sources as a socket: the cookie of the server's own origin, ?token=.
    const byCookie = await openStream(port, '/sse?rooms=posts', {
      cookie: `payload-token=${token}`,
      origin: `http://127.0.0.1:${port}`,
    })
    assert.equal(byCookie.status, 200)
    assert.equal(byCookie.headers['access-control-allow-origin'], `http://127.0.0.1:${port}`)
    // maxConnectionsPerUser counts streams and sockets together.
    const second = await openStream(port, `/sse?rooms=posts&token=${token}`)
    assert.equal(second.status, 429)
    assert.equal(second.json.error, 'too-many-connections')
    const ws = await ctx.handshake({ token })
    assert.equal(ws.status, 429)
    byCookie.close()
    await byCookie.ended
    await waitUntil(() => ctx.manager.stats().connections === 0, { label: 'the stream to be gone' })
    const byQuery = await openStream(port, `/sse?rooms=posts&token=${encodeURIComponent(token)}`)
    assert.equal(byQuery.status, 200)
    byQuery.close()
  })
})

test('Last-Event-ID recovers what the stream missed, in order; a lost position gets recovery-failed', T, async () => {
  await withServer({ includeCollections: ['posts'], history: { posts: { size: 100 } } }, async (ctx) => {
    const port = ctx.manager.port
    const first = await openStream(port, '/sse?rooms=posts', auth('dan'))
    const ack = await first.waitFor((m) => m.event === 'ack')
    const { epoch } = ack.data.positions.posts
    assert.equal(ack.id, `${epoch}:0`, 'the join sets the stream’s position')
    for (let i = 1; i <= 5; i++) await ctx.manager.emitEvent({ type: 'update', collection: 'posts', id: i })
    await waitUntil(() => first.events().length === 5)
    const last = first.messages.at(-1)
    assert.equal(last.id, `${epoch}:5`)
    first.close()
    await first.ended
    for (let i = 6; i <= 12; i++) await ctx.manager.emitEvent({ type: 'update', collection: 'posts', id: i })

    const again = await openStream(port, '/sse?rooms=posts', { ...auth('dan'), 'Last-Event-ID': last.id })
    await waitUntil(() => again.events().length === 7, { label: 'the 7 missed events' })
    await ctx.manager.emitEvent({ type: 'update', collection: 'posts', id: 13 })
    await waitUntil(() => again.events().length === 8)
    assert.deepEqual(
      again.events().map((e) => e.offset),
      [6, 7, 8, 9, 10, 11, 12, 13],
    )
    assert.equal(again.messages.find((m) => m.event === 'ack').data.recovered, true)
    again.close()

    // The same through ?lastEventId= (what a client that cannot set headers has).
    const byQuery = await openStream(
      port,
      `/sse?rooms=posts&lastEventId=${encodeURIComponent(`${epoch}:10`)}`,
      auth('dan'),
    )
    await waitUntil(() => byQuery.events().length === 3)
    assert.deepEqual(
      byQuery.events().map((e) => e.offset),
      [11, 12, 13],
    )
    byQuery.close()

    const lost = await openStream(port, '/sse?rooms=posts', { ...auth('dan'), 'Last-Event-ID': 'gone-epoch:3' })
    const failed = await lost.waitFor((m) => m.event === 'recovery-failed')
    assert.equal(failed.data.collection, 'posts')
    lost.close()
  })
})

test('a drain ends the stream with a close event (1001); a revoked session with 4003', T, async () => {
  await withServer({ includeCollections: ['posts'] }, async (ctx) => {
    const port = ctx.manager.port
    const token = makeToken({ id: 'erin', sid: 's1' })
    const revoked = await openStream(port, '/sse?rooms=posts', { Authorization: `JWT ${token}` })
    await revoked.waitFor((m) => m.event === 'ack')
    assert.equal(ctx.manager.revokeSession({ collection: 'users', id: 'erin', sid: 's1' }), 1)
    const closed = await revoked.waitFor((m) => m.event === 'close')
    assert.equal(closed.data.code, 4003)
    await revoked.ended

    const drained = await openStream(port, '/sse?rooms=posts', auth('frank'))
    await drained.waitFor((m) => m.event === 'ack')
    await ctx.manager.emitEvent({ type: 'create', collection: 'posts', id: 1 })
    await waitUntil(() => drained.events().length === 1)
    const closing = ctx.manager.close()
    const end = await drained.waitFor((m) => m.event === 'close')
    assert.equal(end.data.code, 1001)
    await drained.ended
    await closing
  })
})

test('a stream that stops reading is closed past maxBackpressure (4008), others go on', T, async () => {
  await withServer({ includeCollections: ['posts'], maxBackpressure: 64 * 1024 }, async (ctx) => {
    const port = ctx.manager.port
    const slow = await openStream(port, '/sse?rooms=posts', auth('slow'))
    const fast = await openStream(port, '/sse?rooms=posts', auth('fast'))
    await slow.waitFor((m) => m.event === 'ack')
    await fast.waitFor((m) => m.event === 'ack')
    slow.pause()
    slow.res.socket.pause()
    const doc = { body: 'x'.repeat(16 * 1024) }
    let sent = 0
    while (ctx.manager.stats().slowConsumers === 0) {
      await ctx.manager.emitEvent({ type: 'update', collection: 'posts', id: sent++, doc })
      assert.ok(sent < 10_000, 'the stream was never found slow')
    }
    await waitUntil(() => fast.events().length === sent, { label: 'every event at the reading stream' })
    slow.res.socket.resume()
    slow.resume()
    const end = await slow.waitFor((m) => m.event === 'close')
    assert.equal(end.data.code, 4008)
    await slow.ended
    fast.close()
  })
})

test('heartbeats keep a quiet stream alive as SSE comments', T, async () => {
  await withServer({ includeCollections: ['posts'], idleTimeout: 1 }, async (ctx) => {
    const s = await openStream(ctx.manager.port, '/sse?rooms=posts', auth('gina'))
    // One comment opens the stream; the rest are heartbeats (every half idleTimeout here).
    await waitUntil(() => s.comments >= 3, { label: 'heartbeat comments' })
    s.close()
  })
})

test('a real browser EventSource, cross-origin with ?token=, gets the events, of an app room too', T, async (t) => {
  const browser = await launchBrowser(t)
  if (!browser) return
  const site = await startHttpServer({ '/': '<!doctype html><title>sse</title>' })
  try {
    const options = { includeCollections: ['posts'], history: { posts: { size: 10 } }, rooms: { 'desk:*': () => true } }
    await withServer(options, async (ctx) => {
      const page = await openPage(browser)
      await page.goto(`${site.origin}/`)
      const token = encodeURIComponent(makeToken({ id: 'hal' }))
      const url = `http://127.0.0.1:${ctx.manager.port}/sse?rooms=posts&room=desk%3A1&token=${token}`
      await page.evaluate((url) => {
        window.got = []
        window.memos = []
        window.acks = 0
        const es = new EventSource(url)
        es.addEventListener('ack', () => window.acks++)
        es.addEventListener('create', (e) => window.got.push({ id: e.lastEventId, data: JSON.parse(e.data) }))
        es.addEventListener('memo', (e) => window.memos.push(JSON.parse(e.data)))
        window.es = es
      }, url)
      await waitUntil(() => page.evaluate(() => window.acks === 2), { label: 'both acks in the page' })
      await ctx.manager.publish('desk:1', { type: 'memo', text: 'hi' })
      await waitUntil(() => page.evaluate(() => window.memos.length === 1), { label: 'the app event in the page' })
      assert.deepEqual(await page.evaluate(() => window.memos[0]), { type: 'memo', text: 'hi', room: 'desk:1' })
      for (let i = 1; i <= 3; i++) await ctx.manager.emitEvent({ type: 'create', collection: 'posts', id: i })
      await waitUntil(() => page.evaluate(() => window.got.length === 3), { label: 'three events in the page' })
      const got = await page.evaluate(() => window.got)
      assert.deepEqual(
        got.map((g) => g.data.id),
        [1, 2, 3],
      )
      assert.equal(got[2].id, `posts/${got[2].data.epoch}:3`, 'two rooms: the id names them')
      await page.evaluate(() => window.es.close())
      assert.deepEqual(page.problems, [])
    })
  } finally {
    await site.close()
    await browser.close()
  }
})

/** A proxy that refuses WebSocket upgrades and passes plain requests on (a network that blocks WebSockets). */
async function blockingProxy(target) {
  const sockets = new Set()
  const state = { down: false }
  const server = http.createServer((req, res) => {
    if (state.down) return res.writeHead(503).end()
    const up = http.request(
      { host: '127.0.0.1', port: target, path: req.url, method: req.method, headers: req.headers, agent: false },
      (r) => {
        res.writeHead(r.statusCode, r.headers)
        r.pipe(res)
      },
    )
    up.on('error', () => res.destroy())
    res.on('close', () => up.destroy())
    req.pipe(up)
  })
  server.on('connection', (s) => {
    sockets.add(s)
    s.on('close', () => sockets.delete(s))
  })
  server.on('upgrade', (req, socket) => socket.end('HTTP/1.1 403 Forbidden\r\ncontent-length: 0\r\n\r\n'))
  await new Promise((r) => server.listen(0, '127.0.0.1', r))
  return {
    port: server.address().port,
    state,
    cut: () => sockets.forEach((s) => s.destroy()),
    close: () => {
      sockets.forEach((s) => s.destroy())
      return new Promise((r) => server.close(r))
    },
  }
}

/** The SDK (as user ivy, reconnecting fast) pointed at ctx's server through a blockingProxy(). */
async function sdkBehindBlockingProxy(ctx) {
  const { createRealtimeClient } = await import('../lib/client/index.mjs')
  const { default: WebSocket } = await import('ws')
  const proxy = await blockingProxy(ctx.manager.port)
  const client = createRealtimeClient({
    url: `ws://127.0.0.1:${proxy.port}/`,
    WebSocket,
    token: makeToken({ id: 'ivy' }),
    reconnect: { initialDelay: 10, maxDelay: 50 },
  })
  return { proxy, client }
}

test('the SDK falls back to SSE when upgrades are blocked: subscribe, recovery, requests', T, async () => {
  await withServer({ includeCollections: ['posts'], history: { posts: { size: 100 } } }, async (ctx) => {
    const { proxy, client } = await sdkBehindBlockingProxy(ctx)
    const transports = []
    client.on('transport', (t) => transports.push(t.transport))
    const got = []
    try {
      const offPosts = client.subscribe('posts', (e) => got.push(e.id))
      await waitUntil(() => client.status === 'open' && client.transport === 'sse', { label: 'open over SSE' })
      await waitUntil(() => ctx.manager.stats().connections === 1, { label: 'the stream at the server' })
      // A join is answered before events flow: the first emit below reaches the stream.
      await waitUntil(() => ctx.manager.getSocketsInRoom('collection:posts').length === 1)
      for (let i = 1; i <= 3; i++) await ctx.manager.emitEvent({ type: 'create', collection: 'posts', id: i })
      await waitUntil(() => got.length === 3, { label: 'three events through the fallback' })
      await assert.rejects(client.request('whoami'), { code: 'transport-unsupported' })

      // The stream breaks (the proxy drops it, and refuses for a while); events go on; the
      // client recovers them once it is back.
      proxy.state.down = true
      proxy.cut()
      await waitUntil(() => ctx.manager.stats().connections === 0, { label: 'the stream gone' })
      for (let i = 4; i <= 6; i++) await ctx.manager.emitEvent({ type: 'create', collection: 'posts', id: i })
      proxy.state.down = false
      await waitUntil(() => ctx.manager.getSocketsInRoom('collection:posts').length === 1, { label: 'back' })
      await ctx.manager.emitEvent({ type: 'create', collection: 'posts', id: 7 })
      await waitUntil(() => got.length === 7, { label: 'missed and live events' })
      assert.deepEqual(got, [1, 2, 3, 4, 5, 6, 7])
      assert.equal(client.transport, 'sse')
      assert.ok(transports.includes('sse'))

      // Leaving every room ends the stream quietly; a new subscription opens another.
      const closes = []
      client.on('close', (c) => closes.push(c))
      offPosts()
      await waitUntil(() => ctx.manager.stats().connections === 0, { label: 'the stream ended' })
      assert.equal(client.status, 'open')
      assert.deepEqual(closes, [])
      const again = []
      client.subscribe('posts', (e) => again.push(e.id))
      await waitUntil(() => ctx.manager.getSocketsInRoom('collection:posts').length === 1, { label: 'rejoined' })
      await ctx.manager.emitEvent({ type: 'create', collection: 'posts', id: 8 })
      await waitUntil(() => again.includes(8), { label: 'an event on the new stream' })
      assert.deepEqual(closes, [])
    } finally {
      client.disconnect()
      await proxy.close()
    }
  })
})

/** A long poll: `{ status, json }`. */
function poll(port, path, headers) {
  return new Promise((resolve, reject) => {
    http
      .get({ host: '127.0.0.1', port, path, headers, agent: false }, (res) => {
        let body = ''
        res.on('data', (c) => (body += c))
        res.on('end', () => resolve({ status: res.statusCode, json: JSON.parse(body) }))
      })
      .on('error', reject)
  })
}

test('long polling: a cursor from the first poll, then every event after it, authorize applied', T, async () => {
  const options = {
    includeCollections: ['posts'],
    history: { posts: { size: 100 } },
    authorize: { posts: (user, event) => event.doc?.owner === user?.id },
  }
  await withServer(options, async (ctx) => {
    const port = ctx.manager.port
    const refused = await poll(port, '/poll?rooms=posts')
    assert.equal(refused.status, 401)
    const start = await poll(port, '/poll?rooms=posts', auth('jo'))
    assert.equal(start.status, 200)
    assert.equal(start.json.messages[0].type, 'ack')
    let cursor = start.json.cursor
    assert.match(cursor, /^posts\/.+:0$/)
    for (const owner of ['jo', 'kim', 'jo']) {
      await ctx.manager.emitEvent({ type: 'create', collection: 'posts', id: owner, doc: { owner } })
    }
    const got = []
    while (got.length < 2) {
      const r = await poll(port, `/poll?rooms=posts&cursor=${encodeURIComponent(cursor)}`, auth('jo'))
      assert.equal(r.status, 200)
      got.push(...r.json.messages.filter(isEvent))
      cursor = r.json.cursor
    }
    assert.deepEqual(
      got.map((e) => [e.offset, e.doc.owner]),
      [
        [1, 'jo'],
        [3, 'jo'],
      ],
    )
    // A poll waiting for the next event is answered when it comes.
    const waiting = poll(port, `/poll?rooms=posts&cursor=${encodeURIComponent(cursor)}`, auth('jo'))
    await waitUntil(() => ctx.manager.getSocketsInRoom('collection:posts').length === 1, { label: 'the poll waiting' })
    await ctx.manager.emitEvent({ type: 'update', collection: 'posts', id: 'x', doc: { owner: 'jo' } })
    const next = await waiting
    assert.deepEqual(
      next.json.messages.filter(isEvent).map((e) => e.offset),
      [4],
    )
  })
})

test(
  'app rooms over SSE: ?room= under the rooms rules, the same JSON as a socket, recovery by Last-Event-ID',
  T,
  async () => {
    const options = {
      includeCollections: ['posts'],
      rooms: { admins: (user) => user?.role === 'admin', 'orders:*': () => true },
      history: { 'orders:*': { size: 100 } },
    }
    await withServer(options, async (ctx) => {
      const port = ctx.manager.port
      const admin = { Authorization: `JWT ${makeToken({ id: 'ann', role: 'admin' })}` }
      const ws = await ctx.connect({ token: makeToken({ id: 'ann', role: 'admin' }) })
      await ws.request({ type: 'join', room: 'admins' })
      const sse = await openStream(port, `/sse?rooms=posts&room=admins&room=${encodeURIComponent('orders:4,2')}`, admin)
      assert.equal(sse.status, 200)
      await sse.waitFor((m) => m.event === 'ack' && m.data.id === 'sse:admins', 'the ack of admins')
      await sse.waitFor((m) => m.event === 'ack' && m.data.id === 'sse:orders:4,2', 'the ack of the order')
      await ctx.manager.publish('admins', { type: 'plugin-installed', name: 'seo' })
      await ws.waitFor((m) => m.type === 'plugin-installed')
      const got = await sse.waitFor((m) => m.event === 'plugin-installed', 'the app event')
      assert.deepEqual(
        got.data,
        ws.all.find((m) => m.type === 'plugin-installed'),
        'the same JSON as the socket',
      )
      assert.deepEqual(got.data, { type: 'plugin-installed', name: 'seo', room: 'admins' })
      // The stream is a connection, and one of the `streams`; the socket is not.
      assert.deepEqual([ctx.manager.stats().connections, ctx.manager.stats().streams], [2, 1])

      // A room with no rule, and a rule that says no, are refused as a socket's join is.
      const bob = await openStream(port, '/sse?room=admins&room=secret', auth('bob'))
      const refusals = await waitUntil(() => {
        const e = bob.messages.filter((m) => m.data.type === 'error')
        return e.length === 2 && e
      })
      assert.deepEqual(refusals.map((m) => [m.data.id, m.data.code]).sort(), [
        ['sse:admins', 'forbidden'],
        ['sse:secret', 'forbidden'],
      ])
      assert.equal(ctx.manager.getSocketsInRoom('secret').length, 0)
      assert.equal(ctx.manager.getSocketsInRoom('admins').length, 2, 'the socket and ann’s stream')
      bob.close()

      // Missed app events come back from the stream's last id, in order.
      const order = 'orders:4,2'
      await ctx.manager.publish(order, { type: 'shipped', n: 1 })
      const one = await sse.waitFor((m) => m.event === 'shipped', 'the live order event')
      assert.equal(one.data.offset, 1)
      assert.match(one.id, /^@orders:4%2C2\/[^,/]+:1$/, 'the app room named by `@` and its name encoded')
      sse.close()
      await sse.ended
      await waitUntil(() => ctx.manager.getSocketsInRoom(order).length === 0, { label: 'the stream gone' })
      for (const n of [2, 3]) await ctx.manager.publish(order, { type: 'shipped', n })
      const back = await openStream(port, `/sse?rooms=posts&room=admins&room=${encodeURIComponent(order)}`, {
        ...admin,
        'Last-Event-ID': one.id,
      })
      const ack = await back.waitFor((m) => m.event === 'ack' && m.data.id === `sse:${order}`, 'the rejoin')
      assert.equal(ack.data.recovered, true)
      await ctx.manager.publish(order, { type: 'shipped', n: 4 })
      await waitUntil(() => back.messages.filter((m) => m.event === 'shipped').length === 3, { label: 'missed + live' })
      assert.deepEqual(
        back.messages.filter((m) => m.event === 'shipped').map((m) => m.data.n),
        [2, 3, 4],
      )
      back.close()
    })
  },
)

test('onConnect runs for a stream as for a socket: its initial state, its rooms, recovered too', T, async () => {
  const options = {
    history: { 'role:*': { size: 100 } },
    onConnect: (socket) => ({
      initial: { type: 'hello', user: socket.user?.id },
      rooms: [`role:${socket.user?.role}`],
    }),
  }
  await withServer(options, async (ctx) => {
    const port = ctx.manager.port
    const headers = { Authorization: `JWT ${makeToken({ id: 'eve', role: 'editor' })}` }
    // `lobby` has no rule (refused in the stream); onConnect's room is the server's to join.
    const s = await openStream(port, '/sse?room=lobby', headers)
    const hello = await s.waitFor((m) => m.event === 'hello', 'the initial state')
    assert.equal(hello.data.user, 'eve')
    await waitUntil(() => ctx.manager.getSocketsInRoom('role:editor').length === 1, { label: 'onConnect’s room' })
    await ctx.manager.publish('role:editor', { type: 'memo', n: 1 })
    const memo = await s.waitFor((m) => m.event === 'memo', 'an event of onConnect’s room')
    assert.equal(s.messages.indexOf(hello) < s.messages.indexOf(memo), true, 'the initial state first')
    s.close()
    await waitUntil(() => ctx.manager.getSocketsInRoom('role:editor').length === 0, { label: 'gone' })
    await ctx.manager.publish('role:editor', { type: 'memo', n: 2 })
    const again = await openStream(port, '/sse?room=lobby', { ...headers, 'Last-Event-ID': memo.id })
    await again.waitFor((m) => m.event === 'memo', 'the missed memo')
    await ctx.manager.publish('role:editor', { type: 'memo', n: 3 })
    await waitUntil(() => again.messages.filter((m) => m.event === 'memo').length === 2, { label: 'missed + live' })
    assert.deepEqual(
      again.messages.filter((m) => m.event === 'memo').map((m) => m.data.n),
      [2, 3],
    )
    again.close()
  })
})

test('long polling serves app rooms: their events, their refusals, from a cursor', T, async () => {
  const options = { rooms: { 'orders:*': () => true }, history: { 'orders:*': { size: 100 } } }
  await withServer(options, async (ctx) => {
    const port = ctx.manager.port
    const start = await poll(port, '/poll?room=orders:7&room=nope', auth('jo'))
    assert.equal(start.status, 200)
    assert.deepEqual(start.json.messages.map((m) => [m.type, m.id]).sort(), [
      ['ack', 'poll:orders:7'],
      ['error', 'poll:nope'],
    ])
    let cursor = start.json.cursor
    assert.match(cursor, /^@orders:7\/[^,/]+:0$/)
    for (const n of [1, 2]) await ctx.manager.publish('orders:7', { type: 'paid', n })
    // A poll answers with what it has: the second event may come in the next one, from the cursor.
    const paid = []
    for (let i = 0; i < 5 && paid.length < 2; i++) {
      const r = await poll(port, `/poll?room=orders:7&cursor=${encodeURIComponent(cursor)}`, auth('jo'))
      paid.push(...r.json.messages.filter((m) => m.type === 'paid').map((m) => m.n))
      cursor = r.json.cursor
    }
    assert.deepEqual(paid, [1, 2])
    // Waiting for the next app event: answered when it comes.
    const waiting = poll(port, `/poll?room=orders:7&cursor=${encodeURIComponent(cursor)}`, auth('jo'))
    await waitUntil(() => ctx.manager.getSocketsInRoom('orders:7').length === 1, { label: 'the poll waiting' })
    assert.deepEqual([ctx.manager.stats().connections, ctx.manager.stats().streams], [1, 1], 'a waiting poll')
    await ctx.manager.publish('orders:7', { type: 'paid', n: 3 })
    const next = await waiting
    await waitUntil(() => ctx.manager.stats().streams === 0, { label: 'the poll answered and gone' })
    assert.equal(ctx.manager.stats().connections, 0)
    assert.deepEqual(
      next.json.messages.filter((m) => m.type === 'paid').map((m) => m.n),
      [3],
    )
  })
})

test('the SDK over SSE keeps its app rooms: events, a refused room, recovery after a break', T, async () => {
  const options = {
    includeCollections: ['posts'],
    rooms: { 'orders:*': () => true, desk: () => true },
    history: { 'orders:*': { size: 100 } },
  }
  await withServer(options, async (ctx) => {
    const { proxy, client } = await sdkBehindBlockingProxy(ctx)
    const shipped = []
    const posts = []
    const errors = []
    client.on('error', (e) => errors.push(e.code))
    const members = () => ctx.manager.getSocketsInRoom('orders:42').length
    try {
      client.subscribe('orders:42.shipped', (m) => shipped.push(m.n))
      client.subscribe('posts', (e) => posts.push(e.id))
      // A bare name that is no collection is tried as an app room, as over a socket.
      const pings = []
      client.subscribe('desk.ping', (m) => pings.push(m.n))
      // `secret:1` has no rule: refused, as over a socket.
      client.subscribe('secret:1.x', () => {})
      await waitUntil(() => client.transport === 'sse' && members() === 1, { label: 'joined over SSE' })
      await waitUntil(() => errors.length > 0, { label: 'the refused room reported' })
      await ctx.manager.publish('orders:42', { type: 'shipped', n: 1 })
      await ctx.manager.emitEvent({ type: 'create', collection: 'posts', id: 1 })
      await waitUntil(() => shipped.length === 1 && posts.length === 1, { label: 'app and collection events' })
      await waitUntil(() => ctx.manager.getSocketsInRoom('desk').length === 1, { label: 'desk joined' })
      await ctx.manager.publish('desk', { type: 'ping', n: 1 })
      await waitUntil(() => pings.length === 1, { label: 'an event of a bare-named app room' })

      proxy.state.down = true
      proxy.cut()
      await waitUntil(() => members() === 0, { label: 'the stream gone' })
      for (const n of [2, 3]) await ctx.manager.publish('orders:42', { type: 'shipped', n })
      proxy.state.down = false
      await waitUntil(() => members() === 1, { label: 'back' })
      await ctx.manager.publish('orders:42', { type: 'shipped', n: 4 })
      await waitUntil(() => shipped.length === 4, { label: 'missed and live app events' })
      assert.deepEqual(shipped, [1, 2, 3, 4])
      assert.equal(client.transport, 'sse')
      assert.equal(ctx.manager.getSocketsInRoom('secret:1').length, 0)
      assert.deepEqual([...new Set(errors)], ['forbidden'])
    } finally {
      client.disconnect()
      await proxy.close()
    }
  })
})
