// App events (`manager.publish`) on the path of collection events, and client joins of rooms
// that a `rooms` rule names: real server, real `ws` clients, a real redis-server for the
// cross-instance cases.

import assert from 'node:assert/strict'
import { after, test } from 'node:test'

import { connect, freePort, makeToken, waitUntil, withServer } from './helpers.mjs'
import { cleanups, runCleanups, skip, startInstance, startRedis } from './redis-helpers.mjs'

const T = { timeout: 60_000 }
after(runCleanups)

const inRoom = (c, room) => c.all.filter((m) => m.room === room && m.type !== 'ack' && m.type !== 'error')

test(
  'publish: a client that joined a ruled room gets { ...message, room }; rooms without a rule are refused',
  T,
  async () => {
    const admins = new Set(['boss'])
    await withServer(
      { rooms: { 'role:admin': (user) => admins.has(user?.id), 'orders:*': () => true } },
      async (ctx) => {
        const boss = await ctx.connectAs('boss')
        const clerk = await ctx.connectAs('clerk')
        assert.equal((await boss.request({ type: 'join', room: 'role:admin' })).type, 'ack')
        const refused = await clerk.request({ type: 'join', room: 'role:admin' })
        assert.equal(refused.type, 'error')
        assert.equal(refused.code, 'forbidden')
        const noRule = await clerk.request({ type: 'join', room: 'secret-room' })
        assert.deepEqual([noRule.type, noRule.code], ['error', 'forbidden'])
        const bad = await clerk.request({ type: 'join', room: 'orders:*' })
        assert.deepEqual([bad.type, bad.code], ['error', 'bad-message'])

        const count = await ctx.manager.publish('role:admin', { type: 'plugin-installed', plugin: 'seo' })
        assert.equal(count, 1)
        const got = await boss.waitFor((m) => m.type === 'plugin-installed')
        assert.deepEqual(got, { type: 'plugin-installed', plugin: 'seo', room: 'role:admin' })
        // The clerk was refused: a marker published after shows it got nothing before.
        assert.equal((await clerk.request({ type: 'join', room: 'orders:7' })).type, 'ack')
        await ctx.manager.publish('orders:7', { type: 'marker' })
        await clerk.waitFor((m) => m.type === 'marker')
        assert.equal(clerk.all.filter((m) => m.type === 'plugin-installed').length, 0)

        assert.equal((await boss.request({ type: 'leave', room: 'role:admin' })).type, 'ack')
        assert.equal(await ctx.manager.publish('role:admin', { type: 'after-leave' }), 0)
      },
    )
  },
)

test('publish checks its message: an object with a type that is not the protocol’s own', T, async () => {
  await withServer({}, async (ctx) => {
    assert.throws(() => ctx.manager.publish('r:1', { nope: 1 }), TypeError)
    assert.throws(() => ctx.manager.publish('', { type: 'x' }), TypeError)
    assert.throws(() => ctx.manager.publish('r:1', { type: 'x' }, { except: 42 }), TypeError)
    await assert.rejects(ctx.manager.publish('r:1', { type: 'ack' }), { code: 'invalid-input' })
    await assert.rejects(ctx.manager.publish('r:*', { type: 'x' }), { code: 'invalid-input' })
  })
})

test('authorize keyed by room pattern decides per user; the most specific key wins', T, async () => {
  const asked = []
  await withServer(
    {
      rooms: { 'orders:*': () => true },
      authorize: {
        'orders:*': (user, message) => {
          asked.push(message.room)
          return message.owner === user.id
        },
        'orders:public': () => true,
      },
    },
    async (ctx) => {
      const alice = await ctx.connectAs('alice')
      const bob = await ctx.connectAs('bob')
      for (const c of [alice, bob]) {
        assert.equal((await c.request({ type: 'join', room: 'orders:1' })).type, 'ack')
        assert.equal((await c.request({ type: 'join', room: 'orders:public' })).type, 'ack')
      }
      assert.equal(await ctx.manager.publish('orders:1', { type: 'order.updated', owner: 'alice' }), 1)
      assert.equal(await ctx.manager.publish('orders:public', { type: 'order.updated', owner: 'alice' }), 2)
      await bob.waitFor((m) => m.room === 'orders:public')
      await alice.waitFor((m) => m.room === 'orders:public')
      assert.deepEqual(inRoom(alice, 'orders:1').length, 1)
      assert.deepEqual(inRoom(bob, 'orders:1').length, 0)
      // Asked once per user for orders:1; the exact key, not the pattern, answered for orders:public.
      assert.deepEqual(asked, ['orders:1', 'orders:1'])
    },
  )
})

test('except: a socket, or every socket of a user', T, async () => {
  await withServer({ rooms: { 'team:*': () => true } }, async (ctx) => {
    const a1 = await ctx.connectAs('a')
    const a2 = await ctx.connectAs('a')
    const b = await ctx.connectAs('b')
    for (const c of [a1, a2, b]) assert.equal((await c.request({ type: 'join', room: 'team:1' })).type, 'ack')
    const { socketId } = await a1.whoami()
    const toUser = await ctx.manager.publish(
      'team:1',
      { type: 'n', k: 1 },
      { except: { collection: 'users', id: 'a' } },
    )
    assert.equal(toUser, 1)
    const toSocket = await ctx.manager.publish('team:1', { type: 'n', k: 2 }, { except: socketId })
    assert.equal(toSocket, 2)
    await b.waitFor((m) => m.k === 2)
    await a2.waitFor((m) => m.k === 2)
    assert.deepEqual(
      inRoom(b, 'team:1').map((m) => m.k),
      [1, 2],
    )
    assert.deepEqual(
      inRoom(a2, 'team:1').map((m) => m.k),
      [2],
    )
    assert.deepEqual(
      inRoom(a1, 'team:1').map((m) => m.k),
      [],
    )
  })
})

test('app events in a collection room keep their order with its collection events', T, async () => {
  await withServer({ history: { posts: { size: 1000 } } }, async (ctx) => {
    const c = await ctx.connectAs('u1')
    await c.join('posts')
    const sent = []
    for (let i = 0; i < 200; i++) {
      // Not awaited: emitted and published in one tick, the order of the calls is the order kept.
      if (i % 3 === 0) sent.push(ctx.manager.publish('collection:posts', { type: 'progress', i }))
      else sent.push(ctx.manager.emitEvent({ type: 'update', collection: 'posts', id: i, doc: { i } }))
    }
    await Promise.all(sent)
    await waitUntil(() => inRoom(c, 'collection:posts').length + c.events('posts').length === 200)
    const order = c.all.filter((m) => m.type === 'progress' || m.type === 'update')
    assert.deepEqual(
      order.map((m) => m.i ?? m.doc.i),
      Array.from({ length: 200 }, (_, i) => i),
    )
    assert.deepEqual(
      order.map((m) => m.offset),
      Array.from({ length: 200 }, (_, i) => i + 1),
      'one history numbers both',
    )
  })
})

test('history: a client that rejoins a room with since recovers the app events it missed', T, async () => {
  await withServer({ history: { 'feed:*': { size: 100 } }, rooms: { 'feed:*': () => true } }, async (ctx) => {
    const first = await ctx.connectAs('u1')
    const ack = await first.request({ type: 'join', room: 'feed:news' })
    assert.equal(ack.type, 'ack')
    const { epoch, offset } = ack.positions['feed:news']
    assert.equal(offset, 0)
    for (let i = 1; i <= 3; i++) await ctx.manager.publish('feed:news', { type: 'item', i })
    await waitUntil(() => inRoom(first, 'feed:news').length === 3)
    assert.deepEqual(
      inRoom(first, 'feed:news').map((m) => [m.i, m.offset, m.epoch]),
      [1, 2, 3].map((i) => [i, i, epoch]),
    )
    first.ws.terminate()
    await first.waitForClose()
    for (let i = 4; i <= 8; i++) await ctx.manager.publish('feed:news', { type: 'item', i, offset: 999 })
    const again = await ctx.connectAs('u1')
    const reply = await again.request({ type: 'join', room: 'feed:news', since: { offset: 3, epoch } })
    assert.equal(reply.recovered, true)
    await ctx.manager.publish('feed:news', { type: 'item', i: 9 })
    await waitUntil(() => inRoom(again, 'feed:news').length === 6)
    assert.deepEqual(
      inRoom(again, 'feed:news').map((m) => [m.i, m.offset]),
      [4, 5, 6, 7, 8, 9].map((i) => [i, i]),
      'missed then live; the offset the app wrote is the server’s',
    )
    const stale = await again.request({ type: 'join', room: 'feed:other', since: { offset: 3, epoch: 'gone' } })
    assert.equal(stale.recovered, false)
    await again.waitFor((m) => m.type === 'recovery-failed' && m.room === 'feed:other' && !('collection' in m))
  })
})

test(
  'two instances through Redis: publish reaches the other instance, except a user there too',
  { ...T, skip },
  async () => {
    const redis = await startRedis(await freePort())
    const opts = {
      redis: { url: `redis://127.0.0.1:${redis.port}` },
      allowRooms: ['ops:*'],
      history: { 'ops:*': { size: 50 } },
    }
    const a = await startInstance(opts)
    const b = await startInstance(opts)
    const on = async (instance, id) => {
      const c = await connect(`ws://127.0.0.1:${instance.port}/`, {
        token: makeToken({ id }),
        label: `${id}@${instance.port}`,
      })
      cleanups.push(() => c.close())
      assert.equal((await c.request({ type: 'join', room: 'ops:deploy' })).type, 'ack')
      return c
    }
    const onA = await on(a, 'x')
    const onB = await on(b, 'y')
    const meOnB = await on(b, 'me')
    // Subscriptions to Redis are made as rooms gain members: wait until B hears A.
    await waitUntil(
      async () => {
        await a.call('publish', { room: 'ops:deploy', message: { type: 'probe' } })
        return onB.all.some((m) => m.type === 'probe')
      },
      { interval: 100, label: 'B subscribed' },
    )
    for (let i = 0; i < 20; i++) {
      const r = await a.call('publish', {
        room: 'ops:deploy',
        message: { type: 'step', i },
        except: { collection: 'users', id: 'me' },
      })
      assert.equal(r.error, undefined)
    }
    await b.call('publish', { room: 'ops:deploy', message: { type: 'done' } })
    for (const c of [onA, onB, meOnB]) await c.waitFor((m) => m.type === 'done')
    const steps = (c) => c.all.filter((m) => m.type === 'step').map((m) => m.i)
    const all = Array.from({ length: 20 }, (_, i) => i)
    assert.deepEqual(steps(onA), all)
    assert.deepEqual(steps(onB), all, 'in order, once each, on the other instance')
    assert.deepEqual(steps(meOnB), [], 'except a user holds on every instance')
    const offsets = onB.all.filter((m) => m.type === 'step').map((m) => m.offset)
    assert.ok(
      offsets.every((o, i) => i === 0 || o === offsets[i - 1] + 1),
      'numbered by the shared history',
    )
  },
)

test(
  'onConnect: the initial state comes first, then the rooms it joined, before the client’s own joins',
  T,
  async () => {
    const seen = []
    await withServer(
      {
        onConnect: async (socket) => {
          seen.push({ id: socket.id, user: socket.user?.id })
          if (socket.user?.id === 'boss') socket.join('role:admin')
          return { rooms: ['lobby:1'], initial: [{ type: 'state', plugins: ['seo'] }, { type: 'hello' }] }
        },
        history: { posts: { size: 10 } },
      },
      async (ctx) => {
        const boss = await ctx.connectAs('boss')
        // Sent at once: acted on only after onConnect's joins, so after the initial state.
        const ack = boss.request({ type: 'join-collection', collection: 'posts' })
        await ack
        const { socketId } = await boss.whoami()
        assert.deepEqual(seen, [{ id: socketId, user: 'boss' }])
        assert.deepEqual(
          boss.all.slice(0, 2).map((m) => m.type),
          ['state', 'hello'],
          'the initial messages are the first the socket gets',
        )
        assert.equal(await ctx.manager.publish('role:admin', { type: 'admins-only' }), 1)
        await boss.waitFor((m) => m.type === 'admins-only')
        const listed = ctx.manager.listSockets()
        assert.deepEqual(listed.sockets[0].rooms.sort(), ['collection:posts', 'lobby:1', 'role:admin'])
        const clerk = await ctx.connectAs('clerk')
        await clerk.waitFor((m) => m.type === 'hello')
        assert.equal(await ctx.manager.publish('role:admin', { type: 'admins-only' }), 1, 'not the clerk')
        assert.equal(await ctx.manager.publish('lobby:1', { type: 'lobby' }), 2)
      },
    )
  },
)

test('onConnect failures are contained: a throw, a bad answer or a timeout leave the socket served', T, async () => {
  let mode = 'throw'
  await withServer(
    {
      handlerTimeout: 200,
      logger: { info() {}, warn() {}, error() {} },
      onConnect: () => {
        if (mode === 'throw') throw new Error('boom')
        if (mode === 'bad') return { rooms: 'not-a-list' }
        return new Promise(() => {})
      },
    },
    async (ctx) => {
      for (const m of ['throw', 'bad', 'hang']) {
        mode = m
        const c = await ctx.connectAs(`u-${m}`)
        const pong = await c.request({ type: 'ping' })
        assert.equal(pong.type, 'pong')
        // A join waits for onConnect (here until its timeout): then it is served as usual.
        assert.equal((await c.request({ type: 'join-collection', collection: 'posts' })).type, 'ack', m)
        assert.ok(c.isOpen)
      }
      assert.throws(() => ctx.manager.listSockets({ limit: 0 }), TypeError)
    },
  )
})

test('broadcast reaches every socket; listSockets pages through them', T, async () => {
  await withServer({}, async (ctx) => {
    const clients = []
    for (let i = 0; i < 5; i++) clients.push(await ctx.connectAs(`u${i}`))
    assert.equal(ctx.manager.broadcast({ type: 'maintenance', in: 300 }), 5)
    for (const c of clients)
      assert.deepEqual(await c.waitFor((m) => m.type === 'maintenance'), { type: 'maintenance', in: 300 })
    assert.throws(() => ctx.manager.broadcast('text'), TypeError)
    const ids = []
    let page = ctx.manager.listSockets({ limit: 2 })
    for (;;) {
      ids.push(...page.sockets.map((s) => s.id))
      assert.ok(page.sockets.every((s) => typeof s.user?.id === 'string' && Array.isArray(s.rooms)))
      if (!page.next) break
      page = ctx.manager.listSockets({ limit: 2, after: page.next })
    }
    assert.equal(ids.length, 5)
    assert.equal(new Set(ids).size, 5)
  })
})

test('broadcast crosses instances through Redis', { ...T, skip }, async () => {
  const redis = await startRedis(await freePort())
  const opts = { redis: { url: `redis://127.0.0.1:${redis.port}` } }
  const a = await startInstance(opts)
  const b = await startInstance(opts)
  const onB = await connect(`ws://127.0.0.1:${b.port}/`, { token: makeToken({ id: 'y' }) })
  cleanups.push(() => onB.close())
  await waitUntil(
    async () => {
      await a.call('broadcastAll', { message: { type: 'everyone' } })
      return onB.all.some((m) => m.type === 'everyone')
    },
    { interval: 100, label: 'B heard A' },
  )
})
