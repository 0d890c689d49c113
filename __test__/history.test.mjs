// History and recovery (single instance): events carry `offset` and `epoch`; a client that
// rejoins with `since` gets exactly what it missed, in order, through the authorize rules, then
// live events with no gap and no duplicate; otherwise `recovery-failed`.

import assert from 'node:assert/strict'
import { test } from 'node:test'

import { connect, isEvent, makeToken, SECRET, waitUntil, withServer, wsUrl } from './helpers.mjs'
import { initUWebSocket } from '../index.mjs'

const T = { timeout: 60_000 }

const emit = (manager, n, doc = {}) =>
  (async () => {
    for (let i = 0; i < n; i++) await manager.emitEvent({ type: 'update', collection: 'posts', id: i, doc })
  })()

const offsets = (c) => c.events('posts').map((e) => e.offset)
const range = (from, to) => Array.from({ length: to - from + 1 }, (_, i) => from + i)

test('a client that drops gets exactly the 50 events it missed, in order, then live ones', T, async () => {
  await withServer({ history: { posts: { size: 100 } } }, async (ctx) => {
    const first = await ctx.connectAs('u1')
    const ack = await first.request({ type: 'join-collection', collection: 'posts' })
    assert.equal(ack.type, 'ack')
    const { epoch } = ack.positions.posts
    assert.equal(ack.positions.posts.offset, 0)
    await emit(ctx.manager, 10)
    await waitUntil(() => first.events('posts').length === 10)
    assert.deepEqual(offsets(first), range(1, 10))
    assert.ok(first.events('posts').every((e) => e.epoch === epoch))
    first.ws.terminate()
    await first.waitForClose()

    await emit(ctx.manager, 50)
    const again = await ctx.connectAs('u1')
    const reply = await again.request({ type: 'join-collection', collection: 'posts', since: { offset: 10, epoch } })
    assert.equal(reply.type, 'ack')
    assert.equal(reply.recovered, true)
    await waitUntil(() => again.events('posts').length === 50, { label: 'the 50 missed events' })
    await emit(ctx.manager, 5)
    await waitUntil(() => again.events('posts').length === 55)
    ctx.manager.broadcastToRoom('collection:posts', { type: 'marker' })
    await again.waitFor((m) => m.type === 'marker')
    assert.deepEqual(offsets(again), range(11, 65), 'missed then live, no gap, no duplicate')
  })
})

test('recovering while events keep flowing: no gap and no duplicate at the seam', T, async () => {
  await withServer({ history: { posts: { size: 1000 } }, maxMessagesPerSecond: 0 }, async (ctx) => {
    const watcher = await ctx.connectAs('w')
    const { epoch } = (await watcher.request({ type: 'join-collection', collection: 'posts' })).positions.posts
    let running = true
    const flow = (async () => {
      while (running) await ctx.manager.emitEvent({ type: 'update', collection: 'posts', id: 1 })
    })()
    await waitUntil(() => watcher.events('posts').length >= 20)
    const since = watcher.events('posts')[9].offset
    const rejoin = await ctx.connectAs('r')
    const reply = await rejoin.request({
      type: 'join-collection',
      collection: 'posts',
      since: { offset: since, epoch },
    })
    assert.equal(reply.recovered, true)
    await waitUntil(() => rejoin.events('posts').length >= 200)
    running = false
    await flow
    ctx.manager.broadcastToRoom('collection:posts', { type: 'marker' })
    await rejoin.waitFor((m) => m.type === 'marker')
    const got = offsets(rejoin)
    assert.equal(got[0], since + 1)
    assert.deepEqual(got, range(since + 1, since + got.length))
  })
})

test('an unauthorized user recovers nothing it could not have received live', T, async () => {
  const authorize = { posts: (user, event) => user.id === 'alice' || !event.doc.secret }
  await withServer({ history: { posts: { size: 100 } }, authorize }, async (ctx) => {
    const bob = await ctx.connectAs('bob')
    const { epoch } = (await bob.request({ type: 'join-collection', collection: 'posts' })).positions.posts
    bob.ws.terminate()
    await bob.waitForClose()
    for (let i = 0; i < 10; i++) {
      await ctx.manager.emitEvent({ type: 'update', collection: 'posts', id: i, doc: { secret: i % 2 === 0 } })
    }
    const again = await ctx.connectAs('bob')
    const alice = await ctx.connectAs('alice')
    assert.equal(
      (await again.request({ type: 'join-collection', collection: 'posts', since: { offset: 0, epoch } })).recovered,
      true,
    )
    assert.equal(
      (await alice.request({ type: 'join-collection', collection: 'posts', since: { offset: 0, epoch } })).recovered,
      true,
    )
    await waitUntil(() => alice.events('posts').length === 10)
    ctx.manager.broadcastToRoom('collection:posts', { type: 'marker' })
    await again.waitFor((m) => m.type === 'marker')
    assert.deepEqual(
      again.events('posts').map((e) => e.id),
      [1, 3, 5, 7, 9],
    )
  })
})

test('trimmed history, a changed epoch or no history: recovery-failed, and the socket goes on live', T, async () => {
  await withServer({ history: { posts: { size: 10 } } }, async (ctx) => {
    const c = await ctx.connectAs('u')
    const { epoch } = (await c.request({ type: 'join-collection', collection: 'posts' })).positions.posts
    c.ws.terminate()
    await c.waitForClose()
    await emit(ctx.manager, 20)

    const trimmed = await ctx.connectAs('u')
    const reply = await trimmed.request({ type: 'join-collection', collection: 'posts', since: { offset: 0, epoch } })
    assert.equal(reply.recovered, false)
    const failed = await trimmed.waitFor((m) => m.type === 'recovery-failed')
    assert.equal(failed.room, 'collection:posts')
    assert.equal(failed.collection, 'posts')
    await emit(ctx.manager, 1)
    assert.equal((await trimmed.waitFor(isEvent)).offset, 21, 'joined live after the failure')

    const wrongEpoch = await ctx.connectAs('u')
    const r2 = await wrongEpoch.request({
      type: 'join-collection',
      collection: 'posts',
      since: { offset: 5, epoch: 'another-epoch' },
    })
    assert.equal(r2.recovered, false)
    await wrongEpoch.waitFor((m) => m.type === 'recovery-failed')

    const bad = await wrongEpoch.request({ type: 'join-collection', collection: 'posts', since: { offset: 'x' } })
    assert.equal(bad.code, 'bad-message')
  })

  await withServer({}, async (ctx) => {
    const c = await ctx.connectAs('u')
    const r = await c.request({ type: 'join-collection', collection: 'posts', since: { offset: 1, epoch: 'e' } })
    assert.equal(r.recovered, false)
    assert.equal((await c.waitFor((m) => m.type === 'recovery-failed')).reason, 'NoHistory')
  })
})

test('a restarted server has a new epoch: old positions fail to recover', T, async () => {
  const first = await initUWebSocket(0, { host: '127.0.0.1', secret: SECRET, history: { size: 10 } })
  const port = first.port
  const c = await connect(wsUrl(first), { token: makeToken({ id: 'u' }) })
  const { epoch } = (await c.request({ type: 'join-collection', collection: 'posts' })).positions.posts
  await first.emitEvent({ type: 'create', collection: 'posts', id: 1 })
  await c.waitFor(isEvent)
  await first.close()
  await c.waitForClose()

  const second = await initUWebSocket(port, { host: '127.0.0.1', secret: SECRET, history: { size: 10 } })
  try {
    const c2 = await connect(wsUrl(second), { token: makeToken({ id: 'u' }) })
    const r = await c2.request({ type: 'join-collection', collection: 'posts', since: { offset: 1, epoch } })
    assert.equal(r.recovered, false)
    assert.notEqual(r.positions.posts.epoch, epoch)
    assert.equal((await c2.waitFor((m) => m.type === 'recovery-failed')).reason, 'EpochChanged')
    await c2.close()
  } finally {
    await second.close()
  }
})

test('the client SDK recovers after a reconnect: each event once, recovery-failed as an event', T, async () => {
  const { createRealtimeClient } = await import('../lib/client/index.mjs')
  const { default: WebSocket } = await import('ws')
  const failures = []
  let manager = await initUWebSocket(0, { host: '127.0.0.1', secret: SECRET, history: { size: 1000 } })
  const port = manager.port
  const c2 = createRealtimeClient({
    url: `ws://127.0.0.1:${port}/`,
    token: makeToken({ id: 'sdk2' }),
    WebSocket,
    reconnect: { initialDelay: 50, maxDelay: 200 },
  })
  const got = []
  c2.on('recovery-failed', (info) => failures.push(info))
  c2.subscribe('posts', (e) => got.push(e.offset))
  try {
    await waitUntil(() => manager.getSocketsInRoom('collection:posts').length === 1, { label: 'c2 joined' })
    await emit(manager, 3)
    await waitUntil(() => got.length === 3)
    // Drop the connection; events emitted meanwhile reach the client through recovery (or
    // live, if they beat the close): either way once each, in order.
    const before = manager.stats().connectionsTotal
    c2._ws.close(4999, 'test drop')
    await emit(manager, 7)
    await waitUntil(() => manager.stats().connectionsTotal > before && got.length === 10, {
      label: 'reconnected and recovered',
    })
    await emit(manager, 2)
    await waitUntil(() => got.length === 12)
    assert.deepEqual(got, range(1, 12), 'each event once, in order')
    assert.deepEqual(failures, [])

    // A restart loses the history: the client is told to refetch.
    await manager.close()
    manager = await initUWebSocket(port, { host: '127.0.0.1', secret: SECRET, history: { size: 1000 } })
    await waitUntil(() => failures.length === 1, { label: 'recovery-failed after the restart' })
    assert.equal(failures[0].collection, 'posts')
    await emit(manager, 1)
    await waitUntil(() => got.length === 13)
    assert.equal(got[12], 1, 'the new epoch starts again at 1')
  } finally {
    c2.disconnect()
    await manager.close()
  }
})
