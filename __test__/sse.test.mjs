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

test('a real browser EventSource, cross-origin with ?token=, gets the events', T, async (t) => {
  const browser = await launchBrowser(t)
  if (!browser) return
  const site = await startHttpServer({ '/': '<!doctype html><title>sse</title>' })
  try {
    await withServer({ includeCollections: ['posts'], history: { posts: { size: 10 } } }, async (ctx) => {
      const page = await openPage(browser)
      await page.goto(`${site.origin}/`)
      const url = `http://127.0.0.1:${ctx.manager.port}/sse?rooms=posts&token=${encodeURIComponent(makeToken({ id: 'hal' }))}`
      await page.evaluate((url) => {
        window.got = []
        const es = new EventSource(url)
        es.addEventListener('ack', () => (window.opened = true))
        es.addEventListener('create', (e) => window.got.push({ id: e.lastEventId, data: JSON.parse(e.data) }))
        window.es = es
      }, url)
      await waitUntil(() => page.evaluate(() => window.opened === true), { label: 'the ack in the page' })
      for (let i = 1; i <= 3; i++) await ctx.manager.emitEvent({ type: 'create', collection: 'posts', id: i })
      await waitUntil(() => page.evaluate(() => window.got.length === 3), { label: 'three events in the page' })
      const got = await page.evaluate(() => window.got)
      assert.deepEqual(
        got.map((g) => g.data.id),
        [1, 2, 3],
      )
      assert.equal(got[2].id, `${got[2].data.epoch}:3`)
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

test('the SDK falls back to SSE when upgrades are blocked: subscribe, recovery, requests', T, async () => {
  const { createRealtimeClient } = await import('../lib/client/index.mjs')
  const { default: WebSocket } = await import('ws')
  await withServer({ includeCollections: ['posts'], history: { posts: { size: 100 } } }, async (ctx) => {
    const proxy = await blockingProxy(ctx.manager.port)
    const client = createRealtimeClient({
      url: `ws://127.0.0.1:${proxy.port}/`,
      WebSocket,
      token: makeToken({ id: 'ivy' }),
      reconnect: { initialDelay: 10, maxDelay: 50 },
    })
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
