// The wire protocol: every row of the contract's table, every error code, the server message
// shapes, custom handlers, and the close codes a client can provoke (1000, 1002, 1009).

import assert from 'node:assert/strict'
import { test } from 'node:test'

import {
  closeCodeIn,
  connect,
  encodeFrame,
  isEvent,
  makeToken,
  parseFrames,
  rawUpgrade,
  startServer,
  waitUntil,
  withServer,
  wsUrl,
} from './helpers.mjs'

const T = { timeout: 60_000 }
const ISO_8601 = /^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?(Z|[+-]\d{2}:\d{2})$/

/** Every error reply has the contract's shape. */
function assertError(msg, code, id) {
  assert.equal(msg.type, 'error', JSON.stringify(msg))
  assert.equal(msg.code, code, JSON.stringify(msg))
  assert.equal(typeof msg.message, 'string', `error message missing: ${JSON.stringify(msg)}`)
  if (id !== undefined) assert.deepEqual(msg.id, id)
}

/**
 * Proves that `client` was not sent a matching message before this point: a marker sent with
 * `sendToSocket` after the action travels the same per-socket queue, so anything queued earlier
 * arrives before it.
 */
async function assertNothingBefore(manager, client, pred, what) {
  if (!client.socketId) await client.whoami()
  const n = `marker-${Math.random()}`
  assert.equal(manager.sendToSocket(client.socketId, { type: 'marker', n }), true)
  await client.waitFor((m) => m.type === 'marker' && m.n === n, { label: 'the marker' })
  const seen = client.all.filter(pred)
  assert.deepEqual(seen, [], `${client.label} unexpectedly received ${what}`)
}

test('join-collection (collection: "posts") is acked and delivers events of the contract shape', T, async () => {
  await withServer({}, async (ctx) => {
    const c = await ctx.connectAs('alice')
    const ack = await c.request({ type: 'join-collection', collection: 'posts', id: 'j1' })
    assert.deepEqual(ack, { type: 'ack', id: 'j1' })

    const editor = { id: 'editor-9', collection: 'users', email: 'editor@example.com', name: 'Ed' }
    await ctx.manager.emitEvent({ type: 'create', collection: 'posts', id: 1, doc: { title: 'a' }, user: editor })
    await ctx.manager.emitEvent({ type: 'update', collection: 'posts', id: 1, doc: { title: 'b' }, user: editor })
    await ctx.manager.emitEvent({ type: 'delete', collection: 'posts', id: 1 })

    const create = await c.waitFor((m) => m.type === 'create')
    const update = await c.waitFor((m) => m.type === 'update')
    const del = await c.waitFor((m) => m.type === 'delete')

    for (const ev of [create, update, del]) {
      assert.equal(ev.collection, 'posts')
      assert.equal(ev.id, 1)
      assert.equal(typeof ev.timestamp, 'string')
      assert.match(ev.timestamp, ISO_8601)
      assert.ok(!Number.isNaN(Date.parse(ev.timestamp)))
    }
    assert.deepEqual(create.doc, { title: 'a' })
    assert.deepEqual(update.doc, { title: 'b' })
    // The editor is named by id and collection only: never an email (nor other fields).
    assert.deepEqual(create.user, { id: 'editor-9', collection: 'users' })
    assert.deepEqual(update.user, { id: 'editor-9', collection: 'users' })
    assert.equal(del.user, undefined, 'no user given, none sent')
    for (const ev of [create, update]) assert.ok(!JSON.stringify(ev).includes('editor@example.com'))
    // Events come in the order they were emitted.
    assert.deepEqual(
      c.events().map((e) => e.type),
      ['create', 'update', 'delete'],
    )
  })
})

test(
  'an event reaches its sockets with doc exactly as JSON.stringify wrote it, and nothing else added',
  T,
  async () => {
    await withServer({}, async (ctx) => {
      const c = await ctx.connectAs('alice')
      await c.join('posts')
      const raw = []
      c.ws.on('message', (data) => raw.push(data.toString()))
      const doc = {
        title: 'quote " backslash \\ newline \n tab \t',
        unicode: 'é 日本 😀',
        lone: '\ud800',
        numbers: [0.1, 1e21, -0, 123456789012345680000, 5e-324, -1.5],
        nested: { a: [{ b: null }, [], {}], t: true, f: false },
      }
      const timestamp = '2026-12-02T00:00:00.000Z'
      await ctx.manager.emitEvent({ type: 'update', collection: 'posts', id: 'a"b', doc, timestamp, secret: 'x' })
      const ev = await c.waitFor((m) => m.type === 'update')
      assert.equal(
        raw.find((m) => m.includes('"type":"update"')),
        `{"type":"update","collection":"posts","id":"a\\"b","doc":${JSON.stringify(doc)},"timestamp":"${timestamp}"}`,
      )
      assert.deepEqual(ev.doc, JSON.parse(JSON.stringify(doc)))
      assert.equal(ev.secret, undefined, 'keys outside the contract are dropped')
    })
  },
)

test('subscribe (alias) with data: "slug" and data: [slugs] joins every named collection', T, async () => {
  await withServer({}, async (ctx) => {
    const a = await ctx.connectAs('alice')
    const b = await ctx.connectAs('bob')
    assert.deepEqual(await a.request({ type: 'subscribe', data: 'posts', id: 1 }), { type: 'ack', id: 1 })
    assert.deepEqual(await b.request({ type: 'join-collection', data: ['posts', 'pages'], id: 2 }), {
      type: 'ack',
      id: 2,
    })
    await ctx.manager.emitEvent({ type: 'create', collection: 'posts', id: 'p1', doc: {} })
    await ctx.manager.emitEvent({ type: 'create', collection: 'pages', id: 'g1', doc: {} })
    await b.waitFor((m) => m.collection === 'posts' && m.id === 'p1')
    await b.waitFor((m) => m.collection === 'pages' && m.id === 'g1')
    await a.waitFor((m) => m.collection === 'posts' && m.id === 'p1')
    await assertNothingBefore(ctx.manager, a, (m) => isEvent(m) && m.collection === 'pages', 'a pages event')

    // Rooms are `collection:<slug>`.
    const inPages = ctx.manager.getSocketsInRoom('collection:pages').map((s) => s.id)
    await b.whoami()
    assert.deepEqual(inPages, [b.socketId])
  })
})

test('a join without an id gets no ack but still joins', T, async () => {
  await withServer({}, async (ctx) => {
    const c = await ctx.connectAs('alice')
    c.send({ type: 'join-collection', collection: 'posts' })
    // A ping with an id after it: its pong proves the join was processed (same socket, in order).
    const pong = await c.request({ type: 'ping', id: 'after-join' })
    assert.equal(pong.type, 'pong')
    await waitUntil(() => ctx.manager.getSocketsInRoom('collection:posts').length === 1, {
      label: 'the socket to be in the room',
    })
    await ctx.manager.emitEvent({ type: 'create', collection: 'posts', id: 5, doc: {} })
    await c.waitFor((m) => m.type === 'create' && m.id === 5)
    assert.equal(c.all.filter((m) => m.type === 'ack').length, 0, `no ack without an id: ${JSON.stringify(c.all)}`)
  })
})

test('leave-collection and unsubscribe (alias) are acked and stop the events', T, async () => {
  await withServer({}, async (ctx) => {
    const a = await ctx.connectAs('alice')
    const b = await ctx.connectAs('bob')
    await a.join('posts')
    await b.request({ type: 'join-collection', data: ['posts', 'pages'] })

    assert.deepEqual(await a.request({ type: 'leave-collection', collection: 'posts', id: 'l1' }), {
      type: 'ack',
      id: 'l1',
    })
    assert.deepEqual(await b.request({ type: 'unsubscribe', data: ['posts', 'pages'], id: 'l2' }), {
      type: 'ack',
      id: 'l2',
    })
    assert.deepEqual(ctx.manager.getSocketsInRoom('collection:posts'), [])

    await ctx.manager.emitEvent({ type: 'create', collection: 'posts', id: 1, doc: {} })
    await ctx.manager.emitEvent({ type: 'create', collection: 'pages', id: 2, doc: {} })
    await assertNothingBefore(ctx.manager, a, isEvent, 'an event after leaving')
    await assertNothingBefore(ctx.manager, b, isEvent, 'an event after unsubscribing')

    // Leaving a collection one is not in is harmless (acked, not an error).
    const again = await a.request({ type: 'leave-collection', collection: 'posts', id: 'l3' })
    assert.deepEqual(again, { type: 'ack', id: 'l3' })
  })
})

test('ping gets pong, with the request id when one was given', T, async () => {
  await withServer({}, async (ctx) => {
    const c = await ctx.connectAs('alice')
    assert.deepEqual(await c.request({ type: 'ping', id: 'p1' }), { type: 'pong', id: 'p1' })
    assert.deepEqual(await c.request({ type: 'ping', id: 42 }), { type: 'pong', id: 42 })
    c.send({ type: 'ping' })
    const bare = await c.waitFor((m) => m.type === 'pong')
    assert.deepEqual(bare, { type: 'pong' })
  })
})

test('an unregistered type gets error unknown-type', T, async () => {
  await withServer({}, async (ctx) => {
    const c = await ctx.connectAs('alice')
    assertError(await c.request({ type: 'no-such-thing', id: 'u1' }), 'unknown-type', 'u1')
    c.send({ type: 'no-such-thing-either' })
    assertError(await c.waitFor((m) => m.type === 'error'), 'unknown-type')
  })
})

test('custom handlers: replies, wrapping, acks, socket info and socket.send', T, async () => {
  await withServer({}, async (ctx) => {
    const { manager } = ctx
    const seen = []
    manager.registerCustomHandler('echo', (socket, msg) => {
      seen.push({ socket: { id: socket.id, user: socket.user }, msg })
      return { text: msg.text, from: socket.user?.id }
    })
    manager.registerCustomHandler('typed', () => ({ type: 'typed-result', value: 1 }))
    manager.registerCustomHandler('sum', (_s, msg) => msg.a + msg.b)
    manager.registerCustomHandler('text', () => 'plain string')
    manager.registerCustomHandler('list', () => [1, 2, 3])
    manager.registerCustomHandler('async', async (_s, msg) => {
      await new Promise((r) => setImmediate(r))
      return { doubled: msg.n * 2 }
    })
    manager.registerCustomHandler('nothing', () => undefined)
    manager.registerCustomHandler('push', (socket) => {
      const ok = socket.send({ type: 'pushed', to: socket.id })
      return { sent: ok }
    })

    const c = await ctx.connectAs('alice')
    const who = await c.whoami()

    assert.deepEqual(await c.request({ type: 'echo', text: 'hi', id: 'e1' }), {
      type: 'echo',
      id: 'e1',
      text: 'hi',
      from: 'alice',
    })
    assert.equal(seen.length, 1)
    assert.equal(seen[0].socket.id, who.socketId)
    assert.equal(seen[0].socket.user.id, 'alice')
    assert.equal(seen[0].msg.type, 'echo')
    assert.equal(seen[0].msg.text, 'hi')

    // An object reply keeps its own type.
    assert.deepEqual(await c.request({ type: 'typed', id: 't1' }), { type: 'typed-result', value: 1, id: 't1' })
    // Non-object replies are wrapped as { type, id, data }.
    assert.deepEqual(await c.request({ type: 'sum', a: 2, b: 3, id: 's1' }), { type: 'sum', id: 's1', data: 5 })
    assert.deepEqual(await c.request({ type: 'text', id: 7 }), { type: 'text', id: 7, data: 'plain string' })
    assert.deepEqual(await c.request({ type: 'list', id: 'l' }), { type: 'list', id: 'l', data: [1, 2, 3] })
    // A Promise reply is awaited.
    assert.deepEqual(await c.request({ type: 'async', n: 21, id: 'a1' }), { type: 'async', id: 'a1', doubled: 42 })
    // undefined: an ack when the request had an id.
    assert.deepEqual(await c.request({ type: 'nothing', id: 'n1' }), { type: 'ack', id: 'n1' })
    // socket.send from inside the handler reaches the client.
    const reply = await c.request({ type: 'push', id: 'x1' })
    assert.deepEqual(reply, { type: 'push', id: 'x1', sent: true })
    const pushed = await c.waitFor((m) => m.type === 'pushed')
    assert.equal(pushed.to, who.socketId)

    // A handler reply without a request id carries no id.
    c.send({ type: 'typed' })
    const noId = await c.waitFor((m) => m.type === 'typed-result')
    assert.deepEqual(noId, { type: 'typed-result', value: 1 })
  })
})

test('handler failures: throw/reject give internal; an error with a contract code keeps its code', T, async () => {
  await withServer({}, async (ctx) => {
    const { manager } = ctx
    manager.registerCustomHandler('throws', () => {
      throw new Error('boom')
    })
    manager.registerCustomHandler('rejects', async () => {
      throw new Error('async boom')
    })
    manager.registerCustomHandler('denied', () => {
      throw Object.assign(new Error('you may not'), { code: 'forbidden' })
    })
    manager.registerCustomHandler('denied-async', () =>
      Promise.reject(Object.assign(new Error('not you either'), { code: 'forbidden' })),
    )
    manager.registerCustomHandler('odd-code', () => {
      throw Object.assign(new Error('no such file'), { code: 'ENOENT' })
    })
    manager.registerCustomHandler('throws-string', () => {
      throw 'a string' // eslint-disable-line no-throw-literal
    })

    const c = await ctx.connectAs('alice')
    assertError(await c.request({ type: 'throws', id: 1 }), 'internal', 1)
    assertError(await c.request({ type: 'rejects', id: 2 }), 'internal', 2)
    const denied = await c.request({ type: 'denied', id: 3 })
    assertError(denied, 'forbidden', 3)
    assert.equal(denied.message, 'you may not')
    const deniedAsync = await c.request({ type: 'denied-async', id: 4 })
    assertError(deniedAsync, 'forbidden', 4)
    assert.equal(deniedAsync.message, 'not you either')
    assertError(await c.request({ type: 'odd-code', id: 5 }), 'internal', 5)
    assertError(await c.request({ type: 'throws-string', id: 6 }), 'internal', 6)

    // The socket survives all of that.
    assert.deepEqual(await c.request({ type: 'ping', id: 'still' }), { type: 'pong', id: 'still' })
  })
})

test('bad-json: invalid JSON gets an error and the socket stays usable', T, async () => {
  await withServer({}, async (ctx) => {
    const c = await ctx.connectAs('alice')
    for (const raw of ['{not json', '', '{"type":"ping"', 'null x']) {
      c.send(raw)
      assertError(
        await c.waitFor((m) => m.type === 'error', { label: `the error for ${JSON.stringify(raw)}` }),
        'bad-json',
      )
    }
    assert.deepEqual(await c.request({ type: 'ping', id: 'ok' }), { type: 'pong', id: 'ok' })
  })
})

test('bad-message: wrong shapes and binary frames', T, async () => {
  await withServer({}, async (ctx) => {
    const c = await ctx.connectAs('alice')
    const cases = [
      '[1,2]',
      '"ping"',
      '42',
      JSON.stringify({ id: 'no-type' }),
      JSON.stringify({ type: 5 }),
      JSON.stringify({ type: '' }),
      JSON.stringify({ type: 'ping', id: { nested: true } }),
    ]
    for (const raw of cases) {
      c.send(raw)
      assertError(await c.waitFor((m) => m.type === 'error', { label: `the error for ${raw}` }), 'bad-message')
    }
    // A join that names no collection (or a malformed one) is bad-message, with the request id.
    for (const [i, msg] of [
      { type: 'join-collection' },
      { type: 'join-collection', data: [] },
      { type: 'join-collection', data: [1] },
      { type: 'subscribe', collection: 'a b' },
      { type: 'leave-collection', collection: 42 },
    ].entries()) {
      assertError(await c.request({ ...msg, id: `bm${i}` }), 'bad-message', `bm${i}`)
    }
    // Binary frames are not part of the protocol.
    c.send(Buffer.from('{"type":"ping","id":"bin"}'), { binary: true })
    const binErr = await c.waitFor((m) => m.type === 'error')
    assertError(binErr, 'bad-message')
    assert.equal(c.all.filter((m) => m.type === 'pong').length, 0, 'a binary frame is not processed')

    assert.deepEqual(await c.request({ type: 'ping', id: 'ok' }), { type: 'pong', id: 'ok' })
  })
})

test('unknown-collection: joining a slug outside includeCollections', T, async () => {
  await withServer({ includeCollections: ['posts', 'pages'] }, async (ctx) => {
    const c = await ctx.connectAs('alice')
    assertError(
      await c.request({ type: 'join-collection', collection: 'secrets', id: 'uc' }),
      'unknown-collection',
      'uc',
    )
    assertError(await c.request({ type: 'subscribe', data: ['secrets'], id: 'uc2' }), 'unknown-collection', 'uc2')
    assert.deepEqual(ctx.manager.getSocketsInRoom('collection:secrets'), [])
    // Listed collections still work.
    assert.deepEqual(await c.request({ type: 'join-collection', data: ['posts', 'pages'], id: 'ok' }), {
      type: 'ack',
      id: 'ok',
    })
  })
})

test('too-large: more than 100 collections in one join', T, async () => {
  await withServer({}, async (ctx) => {
    const c = await ctx.connectAs('alice')
    const many = Array.from({ length: 101 }, (_, i) => `c${i}`)
    assertError(await c.request({ type: 'join-collection', data: many, id: 'big' }), 'too-large', 'big')
    assert.deepEqual(ctx.manager.getSocketsInRoom('collection:c0'), [], 'nothing was joined')
    // Exactly 100 is fine.
    assert.deepEqual(await c.request({ type: 'join-collection', data: many.slice(0, 100), id: 'max' }), {
      type: 'ack',
      id: 'max',
    })
  })
})

test('rate-limited: a client sending faster than maxMessagesPerSecond gets one error, then 4029', T, async () => {
  await withServer({ maxMessagesPerSecond: 2 }, async (ctx) => {
    const c = await ctx.connectAs('alice')
    const ids = Array.from({ length: 40 }, (_, i) => `burst-${i}`)
    for (const id of ids) c.send({ type: 'ping', id })
    const { code } = await c.waitForClose()
    assert.equal(code, 4029)
    // The first requests of the burst fit in the allowance; the rest are dropped unanswered,
    // with one error for the whole episode.
    assert.deepEqual(
      c.all.filter((m) => m.type === 'pong').map((m) => m.id),
      ['burst-0', 'burst-1'],
    )
    const errors = c.all.filter((m) => m.type === 'error')
    assert.equal(errors.length, 1, JSON.stringify(errors))
    assertError(errors[0], 'rate-limited')
  })
})

test('forbidden is a contract code a handler can choose', T, async () => {
  // (The other source of `forbidden` is covered in the handler-failure test; this one checks the
  // round trip without an id as well.)
  await withServer({}, async (ctx) => {
    ctx.manager.registerCustomHandler('admin-only', (socket) => {
      if (socket.user?.id !== 'admin') throw Object.assign(new Error('admins only'), { code: 'forbidden' })
      return { ok: true }
    })
    const user = await ctx.connectAs('alice')
    const admin = await ctx.connectAs('admin')
    user.send({ type: 'admin-only' })
    assertError(await user.waitFor((m) => m.type === 'error'), 'forbidden')
    assert.deepEqual(await admin.request({ type: 'admin-only', id: 'a' }), { type: 'admin-only', id: 'a', ok: true })
  })
})

test('bad input on one socket does not disturb another socket', T, async () => {
  await withServer({}, async (ctx) => {
    const bad = await ctx.connectAs('mallory')
    const good = await ctx.connectAs('alice')
    await good.join('posts')
    await bad.join('posts')
    for (const raw of ['{', '[]', '{"type":7}', '{"type":"nope"}']) bad.send(raw)
    bad.send(Buffer.from([0xff, 0x00]), { binary: true })
    await ctx.manager.emitEvent({ type: 'update', collection: 'posts', id: 1, doc: { v: 1 } })
    const ev = await good.waitFor((m) => m.type === 'update')
    assert.deepEqual(ev.doc, { v: 1 })
    await bad.waitFor((m) => m.type === 'update')
  })
})

test('close 1000: a client closing normally gets 1000 back and is removed', T, async () => {
  await withServer({}, async (ctx) => {
    const c = await ctx.connectAs('alice')
    await c.join('posts')
    c.ws.close(1000, 'bye')
    const { code } = await c.waitForClose()
    assert.equal(code, 1000)
    await waitUntil(() => ctx.manager.getSocketsInRoom('collection:posts').length === 0, {
      label: 'the closed socket to leave its rooms',
    })
    await waitUntil(() => ctx.manager.stats().connections === 0, { label: 'stats().connections to reach 0' })
  })
})

test('close 1002: an unmasked client frame is a protocol error', T, async () => {
  await withServer({}, async (ctx) => {
    const port = ctx.manager.port
    const raw = await rawUpgrade(port, { headers: { Authorization: `JWT ${makeToken({ id: 'alice' })}` } })
    try {
      assert.equal(raw.status, 101, raw.head)
      // Control: a masked frame through the same hand-made connection works.
      raw.socket.write(encodeFrame(0x1, JSON.stringify({ type: 'ping', id: 'masked' })))
      await waitUntil(
        () => parseFrames(raw.received()).some((f) => f.opcode === 0x1 && f.payload.toString().includes('masked')),
        { label: 'the pong to the masked ping' },
      )
      // Now the same message unmasked.
      raw.socket.write(encodeFrame(0x1, JSON.stringify({ type: 'ping', id: 'unmasked' }), { mask: false }))
      await waitUntil(() => closeCodeIn(raw.received()) !== undefined || raw.isEnded(), {
        label: 'a close frame after the unmasked frame',
      })
      assert.equal(closeCodeIn(raw.received()), 1002, 'the server sends close 1002 (not just a dropped connection)')
      const pongs = parseFrames(raw.received()).filter(
        (f) => f.opcode === 0x1 && f.payload.toString().includes('unmasked'),
      )
      assert.deepEqual(pongs, [], 'the unmasked frame was not processed')
    } finally {
      raw.socket.destroy()
    }
  })
})

test('close 1009: a message larger than maxPayloadLength', T, async () => {
  await withServer({ maxPayloadLength: 1024 }, async (ctx) => {
    const c = await ctx.connectAs('alice')
    // Just under the limit: fine.
    const small = JSON.stringify({ type: 'ping', id: 'small', pad: 'x'.repeat(900) })
    assert.ok(small.length <= 1024)
    c.send(small)
    await c.waitFor((m) => m.type === 'pong' && m.id === 'small')
    // Over the limit: closed with 1009.
    c.send(JSON.stringify({ type: 'ping', id: 'big', pad: 'x'.repeat(4000) }))
    const { code } = await c.waitForClose()
    assert.equal(code, 1009)
    assert.equal(c.all.filter((m) => m.id === 'big').length, 0)

    // Other sockets are unaffected.
    const d = await ctx.connectAs('bob')
    assert.deepEqual(await d.request({ type: 'ping', id: 'p' }), { type: 'pong', id: 'p' })
  })
})

test('server-side room API: joinRoom, leaveRoom, getSocketsInRoom, sendToSocket', T, async () => {
  await withServer({}, async (ctx) => {
    const { manager } = ctx
    const a = await ctx.connectAs('alice')
    const b = await ctx.connectAs('bob')
    await a.whoami()
    await b.whoami()

    manager.joinRoom(a.socketId, 'chat:1')
    manager.joinRoom(b.socketId, 'chat:1')
    const members = manager.getSocketsInRoom('chat:1')
    assert.deepEqual(members.map((s) => s.id).sort(), [a.socketId, b.socketId].sort())
    const alice = members.find((s) => s.id === a.socketId)
    assert.equal(alice.user.id, 'alice')
    assert.equal(alice.user.collection, 'users')

    manager.broadcastToRoom('chat:1', { type: 'chat', text: 'hello', nested: { n: [1, 2] } })
    assert.deepEqual(await a.waitFor((m) => m.type === 'chat'), { type: 'chat', text: 'hello', nested: { n: [1, 2] } })
    assert.deepEqual(await b.waitFor((m) => m.type === 'chat'), { type: 'chat', text: 'hello', nested: { n: [1, 2] } })

    manager.leaveRoom(b.socketId, 'chat:1')
    assert.deepEqual(
      manager.getSocketsInRoom('chat:1').map((s) => s.id),
      [a.socketId],
    )
    manager.broadcastToRoom('chat:1', { type: 'chat', text: 'second' })
    await a.waitFor((m) => m.type === 'chat' && m.text === 'second')
    await assertNothingBefore(
      manager,
      b,
      (m) => m.type === 'chat' && m.text === 'second',
      'a broadcast after leaveRoom',
    )

    // sendToSocket: true for a live socket, false for an unknown one.
    assert.equal(manager.sendToSocket(a.socketId, { type: 'direct', v: 1 }), true)
    assert.deepEqual(await a.waitFor((m) => m.type === 'direct'), { type: 'direct', v: 1 })
    assert.equal(manager.sendToSocket('no-such-socket', { type: 'direct' }), false)
    assert.deepEqual(manager.getSocketsInRoom('no-such-room'), [])

    // A closed socket is false too.
    const bId = b.socketId
    await b.close()
    await waitUntil(() => manager.sendToSocket(bId, { type: 'direct' }) === false, {
      label: 'sendToSocket to return false for a closed socket',
    })
  })
})

test('stats() counts connections, rooms and messages', T, async () => {
  await withServer({}, async (ctx) => {
    const { manager } = ctx
    const s0 = manager.stats()
    for (const k of ['connections', 'rooms', 'messagesIn', 'messagesOut', 'dropped', 'slowConsumers']) {
      assert.equal(typeof s0[k], 'number', `stats().${k} is a number: ${JSON.stringify(s0)}`)
    }
    assert.equal(s0.connections, 0)
    const a = await ctx.connectAs('alice')
    const b = await ctx.connectAs('bob')
    await a.join('posts')
    await b.join('pages')
    await waitUntil(() => manager.stats().connections === 2, { label: 'two connections' })
    const s1 = manager.stats()
    assert.ok(s1.rooms >= 2, `rooms: ${JSON.stringify(s1)}`)
    assert.ok(s1.messagesIn >= s0.messagesIn + 2, `messagesIn: ${JSON.stringify(s1)}`)
    await manager.emitEvent({ type: 'create', collection: 'posts', id: 1, doc: {} })
    await a.waitFor(isEvent)
    const s2 = manager.stats()
    assert.ok(s2.messagesOut > s1.messagesOut, `messagesOut grows: ${JSON.stringify(s1)} -> ${JSON.stringify(s2)}`)
    assert.equal(s2.dropped, 0)
    assert.equal(s2.slowConsumers, 0)
  })
})

test('path option: only upgrades on that path are accepted', T, async () => {
  await withServer({ path: '/realtime' }, async (ctx) => {
    const token = makeToken({ id: 'alice' })
    const ok = await ctx.handshake({ path: '/realtime', token })
    assert.equal(ok.status, 101, `${ok.status} ${ok.body}`)
    const okQuery = await ctx.handshake({ path: '/realtime', query: `?token=${token}` })
    assert.equal(okQuery.status, 101, `${okQuery.status} ${okQuery.body}`)
    const wrong = await ctx.handshake({ path: '/elsewhere', token })
    if (wrong.client) await wrong.client.close()
    assert.ok(wrong.status >= 400 && wrong.status < 500, `another path is refused: ${wrong.status}`)
  })
})

test('the request id may be a string or a number and is echoed with its type', T, async () => {
  await withServer({}, async (ctx) => {
    const c = await ctx.connectAs('alice')
    assert.deepEqual(await c.request({ type: 'join-collection', collection: 'posts', id: 0 }), { type: 'ack', id: 0 })
    assert.deepEqual(await c.request({ type: 'join-collection', collection: 'posts', id: '0' }), {
      type: 'ack',
      id: '0',
    })
    assert.deepEqual(await c.request({ type: 'ping', id: 1.5 }), { type: 'pong', id: 1.5 })
  })
})

test('a handler that never settles gets internal after handlerTimeout; the socket keeps working', T, async () => {
  await withServer({ handlerTimeout: 300 }, async (ctx) => {
    ctx.manager.registerCustomHandler('stuck', () => new Promise(() => {}))
    const c = await ctx.connectAs('alice')
    assertError(await c.request({ type: 'stuck', id: 'st' }), 'internal', 'st')
    assert.deepEqual(await c.request({ type: 'ping', id: 'p' }), { type: 'pong', id: 'p' })
  })
})

test('a reply that cannot be serialized gives internal, not a crash', T, async () => {
  await withServer({}, async (ctx) => {
    ctx.manager.registerCustomHandler('bigint', () => ({ n: 10n }))
    ctx.manager.registerCustomHandler('circular', () => {
      const o = {}
      o.self = o
      return o
    })
    const c = await ctx.connectAs('alice')
    assertError(await c.request({ type: 'bigint', id: 'b' }), 'internal', 'b')
    assertError(await c.request({ type: 'circular', id: 'c' }), 'internal', 'c')
    assert.deepEqual(await c.request({ type: 'ping', id: 'p' }), { type: 'pong', id: 'p' })
  })
})

test('a handler that answers after its socket closed does no harm', T, async () => {
  await withServer({}, async (ctx) => {
    let release
    let called
    const calledP = new Promise((r) => (called = r))
    ctx.manager.registerCustomHandler('slow', (socket) => {
      called(socket.id)
      return new Promise((r) => (release = r)).then(() => ({ late: true, sent: socket.send({ type: 'late-push' }) }))
    })
    const a = await ctx.connectAs('alice')
    a.send({ type: 'slow', id: 's' })
    const socketId = await calledP
    await a.close()
    await waitUntil(() => ctx.manager.sendToSocket(socketId, { type: 'probe' }) === false, {
      label: 'the closed socket to be gone',
    })
    release()
    const b = await ctx.connectAs('bob')
    await b.join('posts')
    await ctx.manager.emitEvent({ type: 'create', collection: 'posts', id: 1, doc: {} })
    await b.waitFor((m) => m.type === 'create')
  })
})

test('a client that answers the server pings stays connected past idleTimeout', T, async () => {
  await withServer({ idleTimeout: 3 }, async (ctx) => {
    const c = await ctx.connectAs('alice')
    // `ws` answers pings automatically. Waiting for two pings spans more than one idle period.
    let pings = 0
    await new Promise((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error('the server sent no pings')), 60_000)
      c.ws.on('ping', () => {
        if (++pings === 2) {
          clearTimeout(timer)
          resolve()
        }
      })
      c.ws.once('close', (code) => {
        clearTimeout(timer)
        reject(new Error(`closed with ${code} while answering pings`))
      })
    })
    assert.ok(c.isOpen)
    assert.deepEqual(await c.request({ type: 'ping', id: 'p' }), { type: 'pong', id: 'p' })
  })
})

test('a client that never answers is closed after idleTimeout (after being pinged)', T, async () => {
  await withServer({ idleTimeout: 1 }, async (ctx) => {
    const raw = await rawUpgrade(ctx.manager.port, {
      headers: { Authorization: `JWT ${makeToken({ id: 'alice' })}` },
    })
    try {
      assert.equal(raw.status, 101, raw.head)
      await waitUntil(() => closeCodeIn(raw.received()) !== undefined || raw.isEnded(), {
        timeout: 60_000,
        label: 'the idle connection to be closed',
      })
      const frames = parseFrames(raw.received())
      assert.ok(
        frames.some((f) => f.opcode === 0x9),
        `the server pinged before closing: opcodes ${frames.map((f) => f.opcode)}`,
      )
      const code = closeCodeIn(raw.received())
      assert.ok(code !== undefined, 'the server sent a close frame, not just a dropped connection')
      assert.equal(code, 1001, `idle close code ${code}`)
    } finally {
      raw.socket.destroy()
    }
  })
})

test('rooms: a join rule decides who joins; a throw, a rejection or a timeout refuses with forbidden', T, async () => {
  let release
  const slow = new Promise((r) => (release = r))
  const rooms = {
    posts: (user) => user?.id === 'alice',
    // Every rule that names the room must allow: both this pattern and `posts` above.
    'collection:p*': (user, room) => room === 'collection:posts' || user?.id === 'nobody',
    pages: () => {
      throw new Error('rule failed')
    },
    drafts: () => Promise.reject(new Error('rule rejected')),
    slow: () => slow,
  }
  await withServer(
    { includeCollections: ['posts', 'pages', 'drafts', 'slow', 'open'], rooms, authorizeTimeout: 200 },
    async (ctx) => {
      const alice = await ctx.connectAs('alice')
      const bob = await ctx.connectAs('bob')
      assert.equal((await alice.request({ type: 'join-collection', collection: 'posts', id: 1 })).type, 'ack')
      assertError(await bob.request({ type: 'join-collection', collection: 'posts', id: 2 }), 'forbidden', 2)
      assertError(await alice.request({ type: 'join-collection', collection: 'pages', id: 3 }), 'forbidden', 3)
      assertError(await alice.request({ type: 'join-collection', collection: 'drafts', id: 4 }), 'forbidden', 4)
      // A join naming an allowed and a refused collection joins neither.
      assertError(await bob.request({ type: 'subscribe', data: ['open', 'posts'], id: 5 }), 'forbidden', 5)
      // A rule that answers after authorizeTimeout refuses; its late answer changes nothing.
      assertError(await alice.request({ type: 'join-collection', collection: 'slow', id: 6 }), 'forbidden', 6)
      release(true)
      // A collection without a rule is joined at once.
      assert.equal((await bob.request({ type: 'join-collection', collection: 'open', id: 7 })).type, 'ack')

      assert.deepEqual(
        ctx.manager.getSocketsInRoom('collection:posts').map((s) => s.user.id),
        ['alice'],
      )
      assert.deepEqual(
        ctx.manager.getSocketsInRoom('collection:open').map((s) => s.user.id),
        ['bob'],
      )
      for (const c of ['pages', 'drafts', 'slow']) assert.deepEqual(ctx.manager.getSocketsInRoom(`collection:${c}`), [])
      await ctx.manager.emitEvent({ type: 'create', collection: 'posts', id: 1, doc: { title: 'for alice' } })
      await alice.waitFor((m) => isEvent(m) && m.id === 1, { label: 'the posts event' })
      await assertNothingBefore(ctx.manager, bob, (m) => isEvent(m) && m.collection === 'posts', 'a posts event')
    },
  )
})

test('rooms: joins and leaves take effect in the order sent while a join rule is thinking', T, async () => {
  const answers = []
  const rooms = {
    posts: () =>
      new Promise((resolve) => {
        answers.push(resolve)
      }),
  }
  await withServer({ rooms }, async (ctx) => {
    const a = await ctx.connectAs('alice')
    // join (waits for the rule), leave, join (waits), leave of another collection: sent together.
    a.send({ type: 'join-collection', collection: 'posts', id: 'j1' })
    a.send({ type: 'leave-collection', collection: 'posts', id: 'l1' })
    a.send({ type: 'join-collection', collection: 'posts', id: 'j2' })
    a.send({ type: 'leave-collection', collection: 'pages', id: 'l2' })
    await waitUntil(() => answers.length === 1, { label: 'the first rule call' })
    // Nothing after the first join has happened yet: the leave waits for it.
    assert.equal(
      a.all.some((m) => m.type === 'ack'),
      false,
    )
    answers[0](true)
    await waitUntil(() => answers.length === 2, { label: 'the second rule call' })
    answers[1](true)
    const acks = await waitUntil(() => {
      const ids = a.all.filter((m) => m.type === 'ack').map((m) => m.id)
      return ids.length === 4 && ids
    })
    assert.deepEqual(acks, ['j1', 'l1', 'j2', 'l2'])
    assert.deepEqual(
      ctx.manager.getSocketsInRoom('collection:posts').map((s) => s.user.id),
      ['alice'],
      'the last join wins',
    )
  })
})

test('rooms: a join rule that is not a function is refused at start', T, async () => {
  await assert.rejects(startServer({ rooms: { posts: true } }), /`rooms` must map/)
})

test(
  "sendToSocket takes the socket object a handler was given (the old plugin's way), and a closed server's emitEvent says closed",
  T,
  async () => {
    const manager = await startServer()
    const received = []
    manager.registerCustomHandler('hello', (socket) => {
      received.push(manager.sendToSocket(socket, { type: 'welcome', to: socket.user.id }))
    })
    const c = await connect(wsUrl(manager), { token: makeToken({ id: 'alice' }) })
    try {
      c.send({ type: 'hello' })
      const m = await c.waitFor((x) => x.type === 'welcome', { label: 'the welcome' })
      assert.equal(m.to, 'alice')
      assert.deepEqual(received, [true])
    } finally {
      await c.close()
      await manager.close()
    }
    await assert.rejects(manager.emitEvent({ type: 'create', collection: 'posts', id: 1 }), { code: 'closed' })
  },
)
