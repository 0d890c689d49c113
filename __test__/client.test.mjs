// The client SDK (payload-realtime/client) on Node: its pure parts (backoff, subscription parsing,
// message validation), its reconnect schedule against a scripted WebSocket with fake timers, and
// its behaviour against the real server with `ws` as the WebSocket implementation (Node 20 has no
// global WebSocket).
//
// No wall-clock thresholds: waits are polls with generous hang guards; delays are checked as the
// numbers the client reports and schedules, never by measuring time.

import assert from 'node:assert/strict'
import { mock, test } from 'node:test'
import WebSocket, { WebSocketServer } from 'ws'

import { initUWebSocket } from '../index.mjs'
import {
  backoffDelay,
  createRealtimeClient,
  DEFAULT_RECONNECT,
  parseSubscription,
  RealtimeClientError,
  validateMessage,
} from '../lib/client/index.mjs'
import {
  SECRET,
  makeToken,
  recordingWebSocket,
  registerWhoami,
  sleep,
  waitUntil,
  withTimeout,
  WAIT,
} from './helpers.mjs'

const T = { timeout: 60_000 }
// Short delays so reconnects in these tests happen quickly (never asserted as timing).
const FAST = { initialDelay: 20, maxDelay: 200, stableAfter: 1000 }
const COLLECTIONS = ['posts', 'pages', 'media']

// ---------------------------------------------------------------------------------------------
// Helpers

/** Creates a client on `ws` that records its errors and statuses; `done()` disconnects them all. */
function clientFactory() {
  const clients = []
  const make = (options) => {
    const client = createRealtimeClient({ WebSocket, reconnect: FAST, ...options })
    client.errors = []
    client.statuses = [client.status]
    client.on('error', (err) => client.errors.push(err))
    client.on('status', (s) => client.statuses.push(s))
    clients.push(client)
    return client
  }
  make.done = () => {
    for (const c of clients) c.disconnect()
  }
  return make
}

const startServer = (options = {}, port = 0) =>
  initUWebSocket(port, { host: '127.0.0.1', secret: SECRET, includeCollections: COLLECTIONS, ...options })

/** Starts a server on `port`, retrying while the port is still being released. */
async function restartOn(port, options) {
  for (let i = 0; ; i++) {
    try {
      return await startServer(options, port)
    } catch (err) {
      if (i >= 50) throw err
      await sleep(100)
    }
  }
}

const inRoom = (manager, collection) => manager.getSocketsInRoom(`collection:${collection}`).length

function waitForStatus(client, status) {
  if (client.status === status) return Promise.resolve()
  return withTimeout(
    new Promise((resolve) => {
      const off = client.on('status', (s) => {
        if (s === status) {
          off()
          resolve()
        }
      })
    }),
    WAIT,
    `status ${status}`,
  )
}

/** A round trip on the client's socket: everything the server sent before is delivered after. */
const roundTrip = (client) => client.request('ping')

// ---------------------------------------------------------------------------------------------
// Pure parts

test('backoffDelay: full jitter between 0 and min(maxDelay, initialDelay * factor^attempt)', () => {
  const opts = { initialDelay: 100, maxDelay: 5000, factor: 2 }
  for (let attempt = 0; attempt < 30; attempt++) {
    const ceiling = Math.min(5000, 100 * 2 ** attempt)
    assert.equal(
      backoffDelay(attempt, opts, () => 0),
      0,
    )
    assert.equal(
      backoffDelay(attempt, opts, () => 1),
      ceiling,
    )
    assert.equal(
      backoffDelay(attempt, opts, () => 0.5),
      Math.floor(ceiling / 2),
    )
    for (let i = 0; i < 50; i++) {
      const d = backoffDelay(attempt, opts)
      assert.ok(Number.isInteger(d) && d >= 0 && d <= ceiling, `attempt ${attempt}: ${d} not in [0, ${ceiling}]`)
    }
  }
  // Huge attempt numbers stay capped (no Infinity, no NaN); nonsense input is attempt 0.
  assert.equal(
    backoffDelay(10_000, opts, () => 1),
    5000,
  )
  assert.equal(
    backoffDelay(-3, opts, () => 1),
    100,
  )
  assert.equal(
    backoffDelay(NaN, opts, () => 1),
    100,
  )
  // Defaults.
  assert.equal(
    backoffDelay(0, {}, () => 1),
    DEFAULT_RECONNECT.initialDelay,
  )
  assert.equal(
    backoffDelay(100, {}, () => 1),
    DEFAULT_RECONNECT.maxDelay,
  )
})

test('parseSubscription: collection, collection.type and collection.*', () => {
  assert.deepEqual(parseSubscription('posts'), { collection: 'posts', type: null })
  assert.deepEqual(parseSubscription('posts.*'), { collection: 'posts', type: null })
  assert.deepEqual(parseSubscription('posts.update'), { collection: 'posts', type: 'update' })
  assert.deepEqual(parseSubscription('blog-posts.delete'), { collection: 'blog-posts', type: 'delete' })
  for (const bad of ['', '  ', null, undefined, 42, {}]) assert.throws(() => parseSubscription(bad), TypeError)
})

test('validateMessage accepts what the server sends and names what is wrong otherwise', () => {
  const ok = [
    { type: 'create', collection: 'posts', id: 1, doc: { id: 1 }, timestamp: '2024-01-01T00:00:00Z' },
    { type: 'delete', collection: 'posts', id: 'abc' },
    { type: 'ack', id: 'rt:1' },
    { type: 'error', code: 'forbidden', message: 'no', id: 3 },
    { type: 'pong' },
    { type: 'custom', anything: [1, 2] },
  ]
  for (const m of ok) assert.equal(validateMessage(m), null, JSON.stringify(m))
  const bad = [
    null,
    [],
    'text',
    42,
    {},
    { type: 5 },
    { type: 'update', collection: 'posts' },
    { type: 'update', collection: '', id: 1 },
    { type: 'update', collection: 'posts', id: { x: 1 } },
    { type: 'update', collection: 'posts', id: 1, doc: 'not an object' },
    { type: 'update', collection: 'posts', id: 1, timestamp: 5 },
    { type: 'custom', collection: 7 },
    { type: 'ack' },
    { type: 'error', message: 'no code' },
    { type: 'x', id: [1] },
  ]
  for (const m of bad) assert.equal(typeof validateMessage(m), 'string', JSON.stringify(m))
})

test('createRealtimeClient checks its options; with no WebSocket at all it says so', () => {
  assert.throws(() => createRealtimeClient({}), TypeError)
  assert.throws(() => createRealtimeClient({ url: 'ftp://x/', WebSocket }), TypeError)
  assert.throws(() => createRealtimeClient({ url: 'ws://x/', WebSocket, getToken: 'nope' }), TypeError)
  assert.throws(() => createRealtimeClient({ url: 'ws://x/', WebSocket, reconnect: { maxDelay: -1 } }), TypeError)
  if (typeof globalThis.WebSocket !== 'function') {
    // Without SSE to fall back to (with it, the client connects over SSE).
    assert.throws(() => createRealtimeClient({ url: 'ws://127.0.0.1:9/', transports: ['websocket'] }), /WebSocket/)
  }
  // Not connecting: nothing to clean up.
  const c = createRealtimeClient({ url: 'http://127.0.0.1:9/x', WebSocket, autoConnect: false })
  assert.equal(c.status, 'closed')
})

// ---------------------------------------------------------------------------------------------
// The reconnect schedule, with a scripted WebSocket and fake timers

/** A WebSocket the test drives by hand: `open()`, `receive(msg)`, `drop(code)`. */
function scriptedWebSocket() {
  const sockets = []
  class ScriptedWebSocket {
    constructor(url) {
      this.url = url
      this.sent = []
      this.closedByClient = null
      sockets.push(this)
    }
    send(data) {
      this.sent.push(JSON.parse(data))
    }
    close(code, reason) {
      this.closedByClient = { code, reason }
    }
    open() {
      this.onopen?.({})
    }
    receive(msg) {
      this.onmessage?.({ data: typeof msg === 'string' ? msg : JSON.stringify(msg) })
    }
    drop(code = 1006, reason = '') {
      this.onclose?.({ code, reason, wasClean: code !== 1006 })
    }
  }
  return { ScriptedWebSocket, sockets }
}

function scriptedClient(options) {
  const { ScriptedWebSocket, sockets } = scriptedWebSocket()
  // WebSocket only: these scripts test its reconnect schedule, not the SSE fallback (sse.test.mjs).
  const client = createRealtimeClient({
    url: 'ws://realtime.invalid/',
    WebSocket: ScriptedWebSocket,
    transports: ['websocket'],
    ...options,
  })
  const log = { errors: [], statuses: [client.status], reconnecting: [] }
  client.on('error', (e) => log.errors.push(e))
  client.on('status', (s) => log.statuses.push(s))
  client.on('reconnecting', (r) => log.reconnecting.push(r))
  return { client, sockets, log }
}

test('reconnect: jittered delays within bounds, growing to the cap, then giving up after maxAttempts', () => {
  mock.timers.enable({ apis: ['setTimeout'] })
  try {
    const reconnect = { initialDelay: 100, maxDelay: 1000, factor: 2, maxAttempts: 7, stableAfter: 5000 }
    // A random source near 1 shows the ceiling itself; the bounds check holds for any source.
    const { client, sockets, log } = scriptedClient({ reconnect, random: () => 0.999 })
    assert.equal(sockets.length, 1)
    assert.equal(client.status, 'connecting')
    for (let i = 0; i < 7; i++) {
      sockets.at(-1).drop(1006)
      const r = log.reconnecting.at(-1)
      assert.equal(r.attempt, i + 1)
      const ceiling = Math.min(1000, 100 * 2 ** i)
      assert.ok(r.delay >= 0 && r.delay <= ceiling, `attempt ${i + 1}: ${r.delay} > ${ceiling}`)
      assert.equal(r.delay, Math.floor(0.999 * ceiling))
      assert.equal(client.status, 'reconnecting')
      // Nothing happens before the delay, the next attempt right at it.
      if (r.delay > 0) {
        mock.timers.tick(r.delay - 1)
        assert.equal(sockets.length, i + 1)
      }
      mock.timers.tick(1)
      assert.equal(sockets.length, i + 2)
    }
    sockets.at(-1).drop(1006)
    assert.equal(client.status, 'closed')
    assert.equal(log.errors.at(-1).code, 'reconnect-failed')
    mock.timers.tick(1_000_000)
    assert.equal(sockets.length, 8, 'no attempt after giving up')

    // Default random source: every delay stays within its ceiling.
    const other = scriptedClient({ reconnect: { ...reconnect, maxAttempts: Infinity } })
    for (let i = 0; i < 12; i++) {
      other.sockets.at(-1).drop(1011)
      const r = other.log.reconnecting.at(-1)
      assert.ok(r.delay >= 0 && r.delay <= Math.min(1000, 100 * 2 ** i))
      mock.timers.tick(r.delay)
    }
    other.client.disconnect()
    assert.equal(other.client.status, 'closed')
  } finally {
    mock.timers.reset()
  }
})

test('reconnect: the attempt count resets after a stable connection, not after a short one', () => {
  mock.timers.enable({ apis: ['setTimeout'] })
  try {
    const reconnect = { initialDelay: 100, maxDelay: 10_000, stableAfter: 5000 }
    const { client, sockets, log } = scriptedClient({ reconnect, random: () => 1 })
    const fail = () => {
      sockets.at(-1).drop(1006)
      mock.timers.tick(log.reconnecting.at(-1).delay)
    }
    fail()
    fail()
    assert.deepEqual(
      log.reconnecting.map((r) => r.attempt),
      [1, 2],
    )
    // Open, but closed again before `stableAfter`: the count goes on.
    sockets.at(-1).open()
    assert.equal(client.status, 'open')
    mock.timers.tick(4999)
    fail()
    assert.equal(log.reconnecting.at(-1).attempt, 3)
    assert.equal(log.reconnecting.at(-1).delay, 400)
    // Open long enough: the next drop starts from the first attempt again.
    sockets.at(-1).open()
    mock.timers.tick(5000)
    sockets.at(-1).drop(1001)
    assert.equal(log.reconnecting.at(-1).attempt, 1)
    assert.equal(log.reconnecting.at(-1).delay, 100)
    assert.deepEqual(log.statuses.slice(0, 4), ['connecting', 'reconnecting', 'open', 'reconnecting'])
    client.disconnect()
  } finally {
    mock.timers.reset()
  }
})

test('no reconnect after disconnect(), whether waiting to retry or connected', () => {
  mock.timers.enable({ apis: ['setTimeout'] })
  try {
    const { client, sockets, log } = scriptedClient({ reconnect: { initialDelay: 100, maxDelay: 100 } })
    sockets[0].drop(1006)
    assert.equal(client.status, 'reconnecting')
    client.disconnect()
    assert.equal(client.status, 'closed')
    mock.timers.tick(1_000_000)
    assert.equal(sockets.length, 1)

    client.connect()
    assert.equal(sockets.length, 2)
    sockets[1].open()
    client.disconnect()
    assert.deepEqual(sockets[1].closedByClient, { code: 1000, reason: 'client disconnect' })
    sockets[1].drop(1000) // a late close event from the old socket changes nothing
    mock.timers.tick(1_000_000)
    assert.equal(sockets.length, 2)
    assert.equal(client.status, 'closed')
    assert.deepEqual(log.errors, [])
  } finally {
    mock.timers.reset()
  }
})

test('4001 with a fixed token (no getToken) stops with a token-expired error', () => {
  mock.timers.enable({ apis: ['setTimeout'] })
  try {
    // tokenInUrl: the old `?token=`, for servers without first-message auth.
    const { client, sockets, log } = scriptedClient({ token: 'abc', tokenInUrl: true, reconnect: { initialDelay: 10 } })
    assert.equal(new URL(sockets[0].url).searchParams.get('token'), 'abc')
    assert.equal(new URL(sockets[0].url).searchParams.get('auth'), null)
    sockets[0].open()
    sockets[0].drop(4001, 'token expired')
    assert.equal(client.status, 'closed')
    assert.equal(log.errors.at(-1).code, 'token-expired')
    mock.timers.tick(1_000_000)
    assert.equal(sockets.length, 1)
  } finally {
    mock.timers.reset()
  }
})

test('rooms are joined once per collection, on open, and left after the last handler', () => {
  const { client, sockets } = scriptedClient({ reconnect: false })
  const offA = client.subscribe('posts', () => {})
  const offB = client.subscribe('posts.update', () => {})
  const offC = client.subscribe('pages', () => {})
  assert.deepEqual(sockets[0].sent, [], 'nothing is sent before the socket is open')
  sockets[0].open()
  const joins = sockets[0].sent.filter((m) => m.type === 'join-collection')
  assert.deepEqual(
    joins.map((m) => m.collection),
    ['posts', 'pages'],
  )
  assert.ok(joins.every((m) => typeof m.id === 'string'))
  offA()
  offA() // twice is harmless
  assert.equal(sockets[0].sent.filter((m) => m.type === 'leave-collection').length, 0)
  offB()
  offC()
  assert.deepEqual(
    sockets[0].sent.filter((m) => m.type === 'leave-collection').map((m) => m.collection),
    ['posts', 'pages'],
  )
  assert.deepEqual(client.collections, [])
  client.disconnect()
})

// ---------------------------------------------------------------------------------------------
// Against the real server

test('subscribe: per collection, per type and wildcard; a throwing handler does not stop the others', T, async () => {
  const manager = await startServer()
  const make = clientFactory()
  try {
    const { RecordingWebSocket, sent } = recordingWebSocket()
    const client = make({
      url: `ws://127.0.0.1:${manager.port}/`,
      token: makeToken({ id: 'alice' }),
      WebSocket: RecordingWebSocket,
    })
    const got = { all: [], updates: [], star: [], pages: [], after: [] }
    client.subscribe('posts', (e) => got.all.push(e))
    client.subscribe('posts', () => {
      throw new Error('handler bug')
    })
    client.subscribe('posts.update', (e) => got.updates.push(e))
    client.subscribe('posts.*', (e) => got.star.push(e))
    client.subscribe('posts', async () => {
      throw new Error('async handler bug')
    })
    client.subscribe('posts', (e) => got.after.push(e))
    client.subscribe('pages', (e) => got.pages.push(e))

    await waitForStatus(client, 'open')
    await waitUntil(() => inRoom(manager, 'posts') === 1 && inRoom(manager, 'pages') === 1, { label: 'joined' })
    assert.equal(sent.filter((m) => m.type === 'join-collection' && m.collection === 'posts').length, 1)

    await manager.emitEvent({ type: 'create', collection: 'posts', id: 1, doc: { id: 1, title: 'a' } })
    await manager.emitEvent({ type: 'update', collection: 'posts', id: 1, doc: { id: 1, title: 'b' } })
    await manager.emitEvent({ type: 'delete', collection: 'pages', id: 'home' })
    await manager.emitEvent({ type: 'create', collection: 'media', id: 9 })
    await waitUntil(() => got.all.length === 2 && got.pages.length === 1, { label: 'events' })
    await roundTrip(client)

    assert.deepEqual(
      got.all.map((e) => e.type),
      ['create', 'update'],
    )
    assert.deepEqual(got.all[1].doc, { id: 1, title: 'b' })
    assert.equal(typeof got.all[0].timestamp, 'string')
    assert.deepEqual(
      got.updates.map((e) => e.type),
      ['update'],
    )
    assert.deepEqual(
      got.star.map((e) => e.type),
      ['create', 'update'],
    )
    assert.deepEqual(
      got.after.map((e) => e.type),
      ['create', 'update'],
    )
    assert.deepEqual(
      got.pages.map((e) => [e.type, e.id]),
      [['delete', 'home']],
    )
    await waitUntil(() => client.errors.length === 4, { label: 'handler errors' })
    assert.ok(client.errors.every((e) => e instanceof RealtimeClientError && e.code === 'handler-error'))
    assert.equal(client.errors[0].collection, 'posts')

    // A room broadcast that names the collection reaches the collection's handlers too.
    manager.broadcastToRoom('collection:posts', { type: 'typing', collection: 'posts', user: 'bob' })
    await waitUntil(() => got.star.length === 3, { label: 'broadcast' })
    assert.equal(got.star[2].type, 'typing')
    assert.equal(got.updates.length, 1)
  } finally {
    make.done()
    await manager.close()
  }
})

test('unsubscribe: the room is left after the last handler, and no more events arrive', T, async () => {
  const manager = await startServer()
  const make = clientFactory()
  try {
    const { RecordingWebSocket, sent } = recordingWebSocket()
    const client = make({
      url: `ws://127.0.0.1:${manager.port}/`,
      getToken: () => makeToken({ id: 'alice' }),
      WebSocket: RecordingWebSocket,
    })
    const a = []
    const b = []
    const offA = client.subscribe('posts', (e) => a.push(e))
    const offB = client.subscribe('posts.create', (e) => b.push(e))
    await waitUntil(() => inRoom(manager, 'posts') === 1, { label: 'joined' })

    offA()
    await roundTrip(client)
    assert.equal(inRoom(manager, 'posts'), 1, 'one handler left: still in the room')
    await manager.emitEvent({ type: 'create', collection: 'posts', id: 1 })
    await waitUntil(() => b.length === 1, { label: 'event for b' })
    assert.equal(a.length, 0)

    offB()
    await waitUntil(() => inRoom(manager, 'posts') === 0, { label: 'left the room' })
    assert.equal(sent.filter((m) => m.type === 'leave-collection').length, 1)
    await manager.emitEvent({ type: 'create', collection: 'posts', id: 2 })
    await roundTrip(client)
    assert.equal(b.length, 1)

    // Subscribing again joins again.
    const c = []
    client.subscribe('posts', (e) => c.push(e))
    await waitUntil(() => inRoom(manager, 'posts') === 1, { label: 'joined again' })
    await manager.emitEvent({ type: 'create', collection: 'posts', id: 3 })
    await waitUntil(() => c.length === 1, { label: 'event after rejoin' })
    assert.deepEqual(client.errors, [])
  } finally {
    make.done()
    await manager.close()
  }
})

test('request: replies, server errors, unknown types, timeouts, and requests made before open', T, async () => {
  const manager = await startServer()
  registerWhoami(manager)
  let release
  const never = new Promise((r) => (release = r))
  manager.registerCustomHandler('sum', (socket, msg) => ({ sum: msg.a + msg.b }))
  manager.registerCustomHandler('answer', () => 42)
  manager.registerCustomHandler('nothing', () => undefined)
  manager.registerCustomHandler('deny', () => {
    const err = new Error('not for you')
    err.code = 'forbidden'
    throw err
  })
  manager.registerCustomHandler('crash', () => {
    throw new Error('boom')
  })
  manager.registerCustomHandler('slow', () => never)
  const make = clientFactory()
  try {
    const client = make({ url: `ws://127.0.0.1:${manager.port}/`, token: makeToken({ id: 'alice' }) })
    // Sent once the socket is open.
    const early = client.request('whoami')
    assert.equal(client.status, 'connecting')
    const who = await early
    assert.equal(who.user.id, 'alice')
    assert.equal(typeof who.socketId, 'string')

    const sum = await client.request('sum', { a: 2, b: 3 })
    assert.equal(sum.sum, 5)
    assert.equal(sum.type, 'sum')
    assert.equal((await client.request('answer')).data, 42)
    assert.equal((await client.request('nothing')).type, 'ack')
    assert.equal((await client.request('ping')).type, 'pong')
    // `type` and `id` cannot be overridden by data.
    assert.equal((await client.request('sum', { type: 'deny', id: 'x', a: 1, b: 1 })).sum, 2)

    const denied = await client.request('deny').then(
      () => assert.fail('resolved'),
      (e) => e,
    )
    assert.ok(denied instanceof RealtimeClientError)
    assert.equal(denied.code, 'forbidden')
    assert.equal(denied.message, 'not for you')
    await assert.rejects(client.request('crash'), { code: 'internal' })
    await assert.rejects(client.request('no-such-type'), { code: 'unknown-type' })
    await assert.rejects(client.request('slow', {}, { timeout: 50 }), { code: 'timeout' })
    await assert.rejects(client.request(''), TypeError)

    // A join the server refuses is an error event naming the collection.
    client.subscribe('secret-collection', () => {})
    await waitUntil(() => client.errors.length === 1, { label: 'join error' })
    assert.equal(client.errors[0].code, 'unknown-collection')
    assert.equal(client.errors[0].collection, 'secret-collection')

    // Pending requests fail when the client disconnects.
    const pending = client.request('slow', {}, { timeout: 60_000 })
    await sleep(10)
    client.disconnect()
    await assert.rejects(pending, { code: 'disconnected' })
    await assert.rejects(client.request('ping'), { code: 'disconnected' })
  } finally {
    release()
    make.done()
    await manager.close()
  }
})

test('reconnect: after the server restarts on the same port, every room is joined again', T, async () => {
  let manager = await startServer()
  const port = manager.port
  const make = clientFactory()
  try {
    let tokens = 0
    const reasons = []
    const client = make({
      url: `ws://127.0.0.1:${port}/`,
      getToken: async ({ reason }) => {
        reasons.push(reason)
        tokens++
        return makeToken({ id: 'alice' })
      },
    })
    const posts = []
    const pages = []
    client.subscribe('posts', (e) => posts.push(e))
    client.subscribe('pages.update', (e) => pages.push(e))
    await waitUntil(() => inRoom(manager, 'posts') === 1 && inRoom(manager, 'pages') === 1, { label: 'joined' })
    await manager.emitEvent({ type: 'create', collection: 'posts', id: 1 })
    await waitUntil(() => posts.length === 1, { label: 'first event' })

    const closes = []
    client.on('close', (c) => closes.push(c.code))
    await manager.close()
    await waitForStatus(client, 'reconnecting')
    assert.equal(closes[0], 1001)

    // Subscribed while offline: joined once connected.
    const media = []
    client.subscribe('media', (e) => media.push(e))

    manager = await restartOn(port)
    await waitForStatus(client, 'open')
    await waitUntil(() => ['posts', 'pages', 'media'].every((c) => inRoom(manager, c) === 1), {
      label: 'rooms joined again',
    })
    await manager.emitEvent({ type: 'update', collection: 'posts', id: 1 })
    await manager.emitEvent({ type: 'update', collection: 'pages', id: 2 })
    await manager.emitEvent({ type: 'delete', collection: 'media', id: 3 })
    await waitUntil(() => posts.length === 2 && pages.length === 1 && media.length === 1, { label: 'events' })
    assert.equal(reasons[0], 'connect')
    assert.ok(reasons.slice(1).every((r) => r === 'reconnect'))
    assert.ok(tokens >= 2)
    assert.ok(client.statuses.includes('reconnecting'))
    assert.deepEqual(client.errors, [])
  } finally {
    make.done()
    await manager.close()
  }
})

test('4001: on token expiry the client gets a fresh token from getToken and carries on', T, async (t) => {
  const manager = await startServer()
  const make = clientFactory()
  try {
    const calls = []
    const client = make({
      url: `ws://127.0.0.1:${manager.port}/`,
      getToken: async (ctx) => {
        calls.push(ctx.reason)
        // The first token expires 3 s from now; later ones are good for an hour.
        const expiresIn = calls.length === 1 ? 3 : 3600
        return makeToken({ id: 'alice' }, { expiresIn })
      },
    })
    const posts = []
    client.subscribe('posts', (e) => posts.push(e))
    const closes = []
    client.on('close', (c) => closes.push(c.code))
    await waitForStatus(client, 'open')
    if (calls.length > 1) {
      t.skip('the short-lived token was refused before it was used: machine too slow')
      return
    }
    await waitUntil(() => closes.includes(4001), { label: 'the 4001 close' })
    await waitForStatus(client, 'open')
    assert.deepEqual(calls.slice(0, 2), ['connect', 'expired'])
    await waitUntil(() => inRoom(manager, 'posts') === 1, { label: 'rejoined' })
    await manager.emitEvent({ type: 'create', collection: 'posts', id: 1 })
    await waitUntil(() => posts.length === 1, { label: 'event after refresh' })
    assert.deepEqual(client.errors, [])
  } finally {
    make.done()
    await manager.close()
  }
})

test('4003: a revoked session stops the client and reports it; it does not reconnect', T, async () => {
  const manager = await startServer()
  const make = clientFactory()
  try {
    let calls = 0
    const client = make({
      url: `ws://127.0.0.1:${manager.port}/`,
      getToken: () => {
        calls++
        return makeToken({ id: 'alice', sid: 'session-1' })
      },
    })
    client.subscribe('posts', () => {})
    await waitUntil(() => inRoom(manager, 'posts') === 1, { label: 'joined' })
    const reconnecting = []
    client.on('reconnecting', (r) => reconnecting.push(r))

    assert.equal(manager.revokeSession({ collection: 'users', id: 'alice', sid: 'session-1' }), 1)
    await waitForStatus(client, 'closed')
    await waitUntil(() => client.errors.length === 1, { label: 'the error event' })
    assert.equal(client.errors[0].code, 'session-revoked')
    assert.equal(client.errors[0].closeCode, 4003)
    // Plenty of time for a reconnect with these short delays: none happens.
    await sleep(300)
    assert.equal(client.status, 'closed')
    assert.equal(calls, 1)
    assert.deepEqual(reconnecting, [])
    assert.equal(manager.stats().connections, 0)
  } finally {
    make.done()
    await manager.close()
  }
})

test('a server the test controls (ws): malformed messages are reported, not thrown; 4003 stops', T, async () => {
  // A raw `ws` server lets the test send what payload-realtime's server never sends.
  const wss = new WebSocketServer({ host: '127.0.0.1', port: 0 })
  await new Promise((r) => wss.once('listening', r))
  const make = clientFactory()
  try {
    const connections = []
    const auths = []
    wss.on('connection', (socket, req) => {
      connections.push({ socket, url: req.url })
      // First-message auth, as the real server answers it: an ack for the token.
      socket.once('message', (data) => {
        const msg = JSON.parse(data.toString())
        auths.push(msg)
        socket.send(JSON.stringify({ type: 'ack', id: msg.id }))
      })
    })
    const client = make({ url: `ws://127.0.0.1:${wss.address().port}/rt?x=1`, token: 'tok en' })
    const posts = []
    const messages = []
    client.subscribe('posts', (e) => posts.push(e))
    client.on('message', (m) => messages.push(m))
    await waitUntil(() => connections.length === 1 && client.status === 'open', { label: 'connected' })
    const url = new URL(connections[0].url, 'ws://x')
    assert.equal(url.pathname, '/rt')
    assert.equal(url.searchParams.get('x'), '1')
    // The token is in the first message, not the URL.
    assert.equal(url.searchParams.get('token'), null)
    assert.equal(url.searchParams.get('auth'), 'message')
    assert.equal(auths[0].type, 'auth')
    assert.equal(auths[0].token, 'tok en')

    const server = connections[0].socket
    for (const bad of [
      'not json',
      '[1,2]',
      '{"no":"type"}',
      '{"type":"update","collection":"posts"}',
      '{"type":"update","collection":"posts","id":1,"doc":"x"}',
      '{"type":"error","message":"no code"}',
    ]) {
      server.send(bad)
    }
    server.send(Buffer.from([1, 2, 3]), { binary: true })
    server.send(JSON.stringify({ type: 'update', collection: 'posts', id: 1, doc: { ok: true } }))
    server.send(JSON.stringify({ type: 'error', code: 'rate-limited', message: 'slow down' }))
    server.send(JSON.stringify({ type: 'ack', id: 'rt:unknown' }))
    await waitUntil(() => posts.length === 1 && client.errors.length === 8, { label: 'messages' })
    assert.deepEqual(
      client.errors.slice(0, 7).map((e) => e.code),
      Array(7).fill('bad-message'),
    )
    assert.equal(client.errors[7].code, 'rate-limited')
    assert.deepEqual(posts[0].doc, { ok: true })
    await waitUntil(() => messages.some((m) => m.type === 'ack'), { label: 'the stray ack' })

    // Emulates a logout on this raw server (the real one is tested above with revokeSession).
    server.close(4003, 'session revoked')
    await waitForStatus(client, 'closed')
    await waitUntil(() => client.errors.some((e) => e.code === 'session-revoked'), { label: 'session-revoked' })
    await sleep(300)
    assert.equal(connections.length, 1, 'no reconnect after 4003')
  } finally {
    make.done()
    for (const c of wss.clients) c.terminate()
    await new Promise((r) => wss.close(r))
  }
})

test('errors never escape: a throwing error listener and throwing status listeners are contained', T, async () => {
  const manager = await startServer()
  const make = clientFactory()
  const originalConsoleError = console.error
  const logged = []
  console.error = (...args) => logged.push(args)
  try {
    const client = make({ url: `ws://127.0.0.1:${manager.port}/`, token: makeToken({ id: 'alice' }) })
    client.on('status', () => {
      throw new Error('status listener bug')
    })
    client.on('error', () => {
      throw new Error('error listener bug')
    })
    const got = []
    client.subscribe('posts', () => {
      throw new Error('handler bug')
    })
    client.subscribe('posts', (e) => got.push(e))
    await waitUntil(() => inRoom(manager, 'posts') === 1, { label: 'joined' })
    await manager.emitEvent({ type: 'create', collection: 'posts', id: 1 })
    await waitUntil(() => got.length === 1, { label: 'event' })
    // The error listener's own failure is logged, never thrown.
    assert.ok(logged.length >= 1)
  } finally {
    make.done()
    console.error = originalConsoleError
    await manager.close()
  }
})

test(
  'subscribe to app events: room.type names, a collection fallback, and a name that can never match warns once',
  T,
  async () => {
    const options = { rooms: { order: () => true, 'role:*': (user) => user?.id === 'boss' } }
    let manager = await startServer(options)
    const port = manager.port
    const make = clientFactory()
    try {
      const { RecordingWebSocket, sent } = recordingWebSocket()
      const client = make({
        url: `ws://127.0.0.1:${port}/`,
        token: makeToken({ id: 'boss' }),
        WebSocket: RecordingWebSocket,
      })
      const got = { created: [], admin: [], posts: [] }
      client.subscribe('order.created', (m) => got.created.push(m))
      client.subscribe('role:admin', (m) => got.admin.push(m))
      client.subscribe('posts.progress', (m) => got.posts.push(m))
      client.subscribe('nowhere.x', () => assert.fail('never called'))
      const joined = () =>
        manager.getSocketsInRoom('order').length === 1 &&
        manager.getSocketsInRoom('role:admin').length === 1 &&
        inRoom(manager, 'posts') === 1
      await waitUntil(joined, { label: 'joined the app rooms' })
      const warnings = () => client.errors.filter((e) => e.code === 'unknown-collection')
      await waitUntil(() => warnings().length === 1, { label: 'the warning' })
      assert.match(warnings()[0].message, /"nowhere"/)
      // A bare name is tried as a collection first; a name with ':' is a room at once.
      const joins = sent
        .filter((m) => m.type === 'join' || m.type === 'join-collection')
        .map((m) => `${m.type} ${m.room ?? m.collection}`)
      for (const j of [
        'join-collection order',
        'join order',
        'join role:admin',
        'join-collection nowhere',
        'join nowhere',
      ]) {
        assert.ok(joins.includes(j), `${j} in ${joins}`)
      }
      assert.ok(!joins.includes('join-collection role:admin'))

      await manager.publish('order', { type: 'created', id: 7 })
      await manager.publish('order', { type: 'cancelled', id: 7 })
      await manager.publish('role:admin', { type: 'plugin-installed', plugin: 'seo' })
      await manager.publish('collection:posts', { type: 'progress', pct: 50 })
      await waitUntil(() => got.created.length === 1 && got.admin.length === 1 && got.posts.length === 1)
      assert.deepEqual(got.created, [{ type: 'created', id: 7, room: 'order' }])
      assert.deepEqual(got.admin, [{ type: 'plugin-installed', plugin: 'seo', room: 'role:admin' }])
      assert.deepEqual(got.posts, [{ type: 'progress', pct: 50, room: 'collection:posts' }])

      // After a restart the rooms are joined again, and the warning is not repeated.
      await manager.close()
      manager = await restartOn(port, options)
      await waitUntil(joined, { label: 'joined again' })
      await manager.publish('order', { type: 'created', id: 8 })
      await waitUntil(() => got.created.length === 2)
      await client.request('ping')
      assert.equal(warnings().length, 1, 'warned once')
    } finally {
      make.done()
      await manager.close()
    }
  },
)
