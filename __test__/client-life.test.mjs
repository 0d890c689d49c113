// The client SDK surviving real life, on Node with `ws` against the real server:
// - liveness: a TCP proxy between client and server stops forwarding without closing anything
//   (a server host gone, a NAT that forgot the flow); the client notices (no data, no pong),
//   drops that socket, reconnects through a new connection and gets events again; a handshake
//   that never completes is given up and retried;
// - a quiet healthy connection is kept: pings get pongs, no reconnect, and pongs are not
//   surfaced as messages;
// - the same handler subscribed twice to one subscription is called once and removed once;
// - send() and unsolicited errors as messages.
// Liveness delays are short options, never asserted; waits are polls with hang guards.

import assert from 'node:assert/strict'
import net from 'node:net'
import { test } from 'node:test'
import WebSocket from 'ws'

import { initUWebSocket } from '../index.mjs'
import { createRealtimeClient, DEFAULT_LIVENESS } from '../lib/client/index.mjs'
import { makeToken, recordingWebSocket, SECRET, tcpProxy, waitUntil } from './helpers.mjs'

const T = { timeout: 60_000 }
const FAST = { initialDelay: 20, maxDelay: 200, stableAfter: 1000 }

const startServer = (options = {}) =>
  initUWebSocket(0, { host: '127.0.0.1', secret: SECRET, includeCollections: ['posts'], ...options })

test('liveness options: defaults, false, and bad values refused', () => {
  assert.deepEqual({ ...DEFAULT_LIVENESS }, { interval: 25_000, timeout: 10_000 })
  const make = (liveness) => createRealtimeClient({ url: 'ws://127.0.0.1:9/', WebSocket, autoConnect: false, liveness })
  make(undefined)
  make(false)
  make({ interval: 1000 })
  for (const bad of [{ interval: 0 }, { timeout: -1 }, { interval: Infinity }, { timeout: '5s' }, 'fast', 0]) {
    assert.throws(() => make(bad), /liveness/, JSON.stringify(bad))
  }
})

test('a path that goes dead without a close: the client reconnects through a new connection', T, async () => {
  const manager = await startServer()
  const proxy = await tcpProxy(manager.port)
  const events = []
  const closes = []
  const client = createRealtimeClient({
    url: `ws://127.0.0.1:${proxy.port}/`,
    token: makeToken({ id: 'walker' }),
    WebSocket,
    reconnect: FAST,
    liveness: { interval: 200, timeout: 300 },
  })
  client.on('close', (info) => closes.push(info))
  client.on('error', () => {})
  try {
    client.subscribe('posts', (e) => events.push(e.id))
    await waitUntil(() => client.status === 'open' && manager.getSocketsInRoom('collection:posts').length === 1, {
      label: 'joined through the proxy',
    })
    await manager.emitEvent({ type: 'create', collection: 'posts', id: 1 })
    await waitUntil(() => events.length === 1, { label: 'event 1' })

    proxy.freeze()
    // The server still holds the old socket (nothing told it otherwise); the client must see
    // that nothing comes back, and come back through a second connection.
    await waitUntil(() => proxy.links.length === 2 && client.status === 'open', { label: 'reconnected' })
    await waitUntil(() => manager.getSocketsInRoom('collection:posts').length === 2, {
      label: 'rejoined on the new socket',
    })
    assert.equal(closes.length, 1)
    assert.equal(closes[0].code, 1006)
    assert.match(closes[0].reason, /^liveness: no reply to a ping within 300 ms$/)

    await manager.emitEvent({ type: 'update', collection: 'posts', id: 2 })
    await waitUntil(() => events.length === 2, { label: 'event 2 through the new connection' })
    assert.deepEqual(events, [1, 2])
    // The server never closed the first connection: it still counts it.
    assert.equal(proxy.links[0].up.destroyed, false)
    assert.equal(manager.stats().connections, 2)
  } finally {
    client.disconnect()
    await proxy.close()
    await manager.close()
  }
})

test('a handshake that never completes is given up and retried', T, async () => {
  // Accepts TCP connections and never answers the upgrade request (`ws` has no handshake
  // timeout of its own: without liveness the client would wait forever).
  const sockets = []
  let closed = 0
  const silent = net.createServer((socket) => {
    sockets.push(socket)
    socket.on('error', () => {})
    socket.on('close', () => closed++)
    socket.resume() // read (and drop) the upgrade request, so the peer's FIN is seen
  })
  await new Promise((resolve) => silent.listen(0, '127.0.0.1', resolve))
  const closes = []
  const client = createRealtimeClient({
    url: `ws://127.0.0.1:${silent.address().port}/`,
    token: makeToken({ id: 'stuck' }),
    WebSocket,
    reconnect: FAST,
    liveness: { interval: 100, timeout: 100 },
  })
  client.on('close', (info) => closes.push(info))
  client.on('error', () => {})
  try {
    await waitUntil(() => sockets.length >= 3 && closes.length >= 2, { label: 'three attempts' })
    for (const info of closes)
      assert.deepEqual(info, { code: 1006, reason: 'liveness: not open within 200 ms', wasClean: false })
    // Each abandoned attempt's TCP connection is closed by the client, not left behind.
    await waitUntil(() => closed >= 2, { label: 'the abandoned attempts closed' })
  } finally {
    client.disconnect()
    for (const s of sockets) s.destroy()
    await new Promise((r) => silent.close(r))
  }
})

test('a quiet healthy connection is kept: pings get pongs, which are not messages', T, async () => {
  const manager = await startServer()
  const { RecordingWebSocket, sent } = recordingWebSocket()
  const statuses = []
  const messages = []
  const client = createRealtimeClient({
    url: `ws://127.0.0.1:${manager.port}/`,
    token: makeToken({ id: 'quiet' }),
    WebSocket: RecordingWebSocket,
    reconnect: FAST,
    // Pings often; the timeout is only a guard (a pong on loopback never takes this long).
    liveness: { interval: 30, timeout: 15_000 },
  })
  client.on('status', (s) => statuses.push(s))
  client.on('message', (m) => messages.push(m))
  try {
    await waitUntil(() => sent.filter((m) => m.type === 'ping').length >= 5, { label: 'five pings' })
    assert.equal(client.status, 'open')
    assert.deepEqual(statuses, ['open'])
    assert.equal(manager.stats().connections, 1)
    assert.deepEqual(messages, [])
    // Each ping carries an id, so its pong is consumed as that ping's reply.
    for (const ping of sent.filter((m) => m.type === 'ping')) assert.match(String(ping.id), /^rt:\d+$/)
  } finally {
    client.disconnect()
    await manager.close()
  }
})

test('the same handler twice on one subscription: called once, removed once', T, async () => {
  const manager = await startServer()
  const client = createRealtimeClient({
    url: `ws://127.0.0.1:${manager.port}/`,
    token: makeToken({ id: 'twice' }),
    WebSocket,
    reconnect: FAST,
  })
  client.on('error', () => {})
  try {
    const calls = []
    const handler = (e) => calls.push(e.id)
    const offA = client.subscribe('posts', handler)
    const offB = client.subscribe('posts', handler)
    client.subscribe('posts.*', handler) // the same subscription as 'posts'
    const other = []
    client.subscribe('posts', (e) => other.push(e.id)) // another handler: its own entry
    await waitUntil(() => client.status === 'open' && manager.getSocketsInRoom('collection:posts').length === 1, {
      label: 'joined',
    })
    await manager.emitEvent({ type: 'create', collection: 'posts', id: 1 })
    await waitUntil(() => other.length === 1, { label: 'event 1' })
    await client.request('ping') // everything sent before has been delivered
    assert.deepEqual(calls, [1])

    offA() // removing it once removes it
    await manager.emitEvent({ type: 'update', collection: 'posts', id: 2 })
    await waitUntil(() => other.length === 2, { label: 'event 2' })
    await client.request('ping')
    assert.deepEqual(calls, [1])
    offB() // a no-op now
    assert.deepEqual(client.collections, ['posts'])

    // A different subscription of the same collection is its own entry.
    const typed = []
    const h2 = (e) => typed.push(e.type)
    client.subscribe('posts', h2)
    client.subscribe('posts.delete', h2)
    await manager.emitEvent({ type: 'delete', collection: 'posts', id: 3 })
    await waitUntil(() => other.length === 3, { label: 'event 3' })
    await client.request('ping')
    assert.deepEqual(typed, ['delete', 'delete'])
  } finally {
    client.disconnect()
    await manager.close()
  }
})

test('send(): a message without a reply; unsolicited errors are also messages', T, async () => {
  const manager = await startServer()
  const got = []
  manager.registerCustomHandler('note', (socket, msg) => {
    got.push(msg.text)
  })
  const messages = []
  const errors = []
  const client = createRealtimeClient({
    url: `ws://127.0.0.1:${manager.port}/`,
    token: makeToken({ id: 'sender' }),
    WebSocket,
    reconnect: FAST,
    autoConnect: false,
  })
  client.on('message', (m) => messages.push(m))
  client.on('error', (e) => errors.push(e.code))
  try {
    assert.equal(client.send({ type: 'note', text: 'offline' }), false) // not queued
    assert.throws(() => client.send({ text: 'no type' }), /string `type`/)
    client.connect()
    await waitUntil(() => client.status === 'open', { label: 'open' })
    assert.equal(client.send({ type: 'note', text: 'hello' }), true)
    await waitUntil(() => got.length === 1, { label: 'the handler ran' })
    assert.deepEqual(got, ['hello'])
    // No id: the server's complaint is unsolicited, so a message and an error event.
    assert.equal(client.send({ type: 'no-such-type' }), true)
    await waitUntil(() => errors.length === 1, { label: 'the error' })
    assert.deepEqual(errors, ['unknown-type'])
    assert.equal(messages.length, 1)
    assert.equal(messages[0].type, 'error')
    assert.equal(messages[0].code, 'unknown-type')
  } finally {
    client.disconnect()
    await manager.close()
  }
})

test('app events missed while disconnected are recovered on reconnect, in order, once', T, async () => {
  const manager = await startServer({ rooms: { 'orders:*': () => true }, history: { 'orders:*': { size: 100 } } })
  const proxy = await tcpProxy(manager.port)
  const shipped = []
  const statuses = []
  // A refused handshake may fall back to SSE: app rooms recover there the same way.
  const client = createRealtimeClient({
    url: `ws://127.0.0.1:${proxy.port}/`,
    token: makeToken({ id: 'clerk' }),
    WebSocket,
    reconnect: FAST,
  })
  client.on('status', (s) => statuses.push(s))
  const errors = []
  client.on('error', (e) => errors.push(e.code))
  const members = () => manager.getSocketsInRoom('orders:42').length
  try {
    client.subscribe('orders:42.shipped', (m) => shipped.push(m.n))
    await waitUntil(() => client.status === 'open' && members() === 1, { label: 'joined orders:42' })
    await manager.publish('orders:42', { type: 'shipped', n: 1 })
    await waitUntil(() => shipped.length === 1, { label: 'the live event' })

    // The network drops and the server stays out of reach: these are published to nobody.
    proxy.blocked = true
    proxy.cut()
    await waitUntil(() => members() === 0 && client.status === 'reconnecting', { label: 'disconnected' })
    for (const n of [2, 3, 4]) await manager.publish('orders:42', { type: 'shipped', n })
    await manager.publish('orders:42', { type: 'packed', n: 0 })
    assert.deepEqual(shipped, [1])

    proxy.blocked = false
    await waitUntil(() => client.status === 'open' && members() === 1, { label: 'rejoined' })
    await manager.publish('orders:42', { type: 'shipped', n: 5 })
    await waitUntil(() => shipped.includes(5), { label: 'the live event after the reconnect' })
    assert.deepEqual(shipped, [1, 2, 3, 4, 5], 'the missed events, then live ones: no gap, no duplicate')
    assert.ok(statuses.includes('reconnecting'))
    assert.deepEqual(errors, [])
  } finally {
    client.disconnect()
    await proxy.close()
    await manager.close()
  }
})

test('an SSE stream whose request is never answered is given up after the liveness timeout', T, async () => {
  // A proxy with no server behind it: every connection is closed before any answer. Node's
  // fetch then waits forever, and the SSE transport answers pings itself, so without a time
  // limit on the request the client would stay 'open' with no stream.
  const dropping = net.createServer((c) => c.destroy())
  await new Promise((resolve) => dropping.listen(0, '127.0.0.1', resolve))
  const statuses = []
  const client = createRealtimeClient({
    url: `ws://127.0.0.1:${dropping.address().port}/`,
    token: makeToken({ id: 'reader' }),
    transports: ['sse'],
    reconnect: FAST,
    liveness: { interval: 1000, timeout: 300 },
  })
  client.on('status', (s) => statuses.push(s))
  try {
    client.subscribe('orders:1.shipped', () => {})
    await waitUntil(() => statuses.indexOf('reconnecting', statuses.indexOf('open')) > 0, {
      label: 'the unanswered stream given up',
    })
  } finally {
    client.disconnect()
    await new Promise((r) => dropping.close(r))
  }
})
