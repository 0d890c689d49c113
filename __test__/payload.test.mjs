// The Payload plugin inside a real Payload 3 (headless, SQLite): collection events with the
// contract's shapes, exactly once; only committed writes; Payload decides who may connect.

import assert from 'node:assert/strict'
import { createRequire } from 'node:module'
import { test } from 'node:test'

import { createLocalReq } from 'payload'

import { getUWebSocketManager, initUWebSocket, uWebSocketPlugin } from '../index.mjs'
import { isEvent, makeToken, registerWhoami } from './helpers.mjs'
import { startPayload } from './payload-fixture.mjs'

const require = createRequire(import.meta.url)
const T = { timeout: 120_000 }

const ISO = /^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z$/

test('the plugin appends hooks, chains onInit, and leaves other collections alone', () => {
  const own = () => {}
  const onInit = async () => {}
  const config = {
    secret: 's',
    onInit,
    collections: [
      { slug: 'posts', fields: [], hooks: { afterChange: [own], afterDelete: [own], beforeChange: [own] } },
      { slug: 'pages', fields: [] },
      { slug: 'users', auth: true, fields: [], hooks: { afterLogout: [own] } },
    ],
  }
  const out = uWebSocketPlugin({ includeCollections: ['posts'] })(config)
  const [posts, pages, users] = out.collections
  assert.equal(posts.hooks.afterChange.length, 2)
  assert.equal(posts.hooks.afterChange[0], own, "the collection's own hook stays first")
  assert.equal(posts.hooks.afterDelete.length, 2)
  assert.equal(posts.hooks.afterDelete[0], own)
  assert.deepEqual(posts.hooks.beforeChange, [own])
  assert.equal(pages, config.collections[1], 'a collection not included is the same object')
  assert.equal(users.hooks.afterLogout.length, 2, 'auth collections get an afterLogout hook')
  assert.equal(users.hooks.afterLogout[0], own)
  // Users are not in includeCollections: no events, only the plugin's user tracking.
  assert.equal(users.hooks.afterChange.length, 1)
  assert.equal(users.hooks.afterDelete.length, 1)
  assert.notEqual(out.onInit, onInit)
  assert.equal(config.collections[0].hooks.afterChange.length, 1, 'the input config is not mutated')

  assert.equal(uWebSocketPlugin({ enabled: false, includeCollections: ['posts'] })(config), config)
  assert.throws(() => uWebSocketPlugin({ includeCollections: 'posts' }), TypeError)
  assert.throws(() => uWebSocketPlugin({ readAccess: 'yes' }), TypeError)
})

test('a logged-in socket receives create, update and delete exactly once each', T, async () => {
  const calls = []
  const ctx = await startPayload({
    configure: (config) => ({
      ...config,
      onInit: async (payload) => {
        // The user's own onInit runs first, with the instance getPayload() returns.
        calls.push({ hasFind: typeof payload.find === 'function' })
      },
    }),
  })
  try {
    assert.deepEqual(calls, [{ hasFind: true }])
    const { user, token } = await ctx.createUser('editor@example.com', { role: 'admin', team: 'red' })
    assert.equal(typeof token, 'string')
    const client = await ctx.connect(token, { label: 'editor' })
    await client.join('posts')

    const created = await ctx.payload.create({ collection: 'posts', data: { title: 'Hello', team: 'red' }, user })
    const e1 = await client.waitFor((m) => m.type === 'create', { label: 'the create event' })
    await ctx.payload.update({ collection: 'posts', id: created.id, data: { title: 'Hello again' }, user })
    const e2 = await client.waitFor((m) => m.type === 'update', { label: 'the update event' })
    await ctx.payload.delete({ collection: 'posts', id: created.id, user })
    const e3 = await client.waitFor((m) => m.type === 'delete', { label: 'the delete event' })

    for (const [e, type, title] of [
      [e1, 'create', 'Hello'],
      [e2, 'update', 'Hello again'],
      [e3, 'delete', 'Hello again'],
    ]) {
      assert.equal(e.type, type)
      assert.equal(e.collection, 'posts')
      assert.equal(e.id, created.id)
      assert.equal(e.doc.id, created.id)
      assert.equal(e.doc.title, title)
      assert.match(e.timestamp, ISO)
      assert.deepEqual(e.user, { id: user.id, collection: 'users' }, 'the editor as { id, collection } only')
    }
    assert.deepEqual(Object.keys(e1).sort(), ['collection', 'doc', 'id', 'timestamp', 'type', 'user'])

    // Exactly once: nothing else arrives before a barrier sent after everything was delivered.
    await ctx.settle([client])
    const events = client.events('posts')
    assert.deepEqual(
      events.map((e) => e.type),
      ['create', 'update', 'delete'],
    )
    for (const raw of client.all) {
      assert.ok(!JSON.stringify(raw).includes('editor@example.com'), 'no email in any message')
    }
  } finally {
    await ctx.close()
  }
})

test('shouldEmit and transformEvent apply; a write without a user names no editor', T, async () => {
  const ctx = await startPayload({
    plugin: {
      shouldEmit: (event) => event.doc?.title !== 'quiet',
      transformEvent: (event) =>
        event.doc?.title === 'slim' ? { ...event, doc: { id: event.id, title: event.doc.title.toUpperCase() } } : event,
    },
  })
  try {
    const { token } = await ctx.createUser('a@example.com', { role: 'admin' })
    const client = await ctx.connect(token)
    await client.join('posts')
    await ctx.payload.create({ collection: 'posts', data: { title: 'quiet' } })
    const slim = await ctx.payload.create({ collection: 'posts', data: { title: 'slim' } })
    const plain = await ctx.payload.create({ collection: 'posts', data: { title: 'plain' } })
    await ctx.settle([client])
    const events = client.events('posts')
    assert.deepEqual(
      events.map((e) => e.id),
      [slim.id, plain.id],
      'the quiet write was not emitted',
    )
    assert.deepEqual(events[0].doc, { id: slim.id, title: 'SLIM' }, 'transformEvent changed the doc')
    assert.equal(events[1].doc.title, 'plain')
    assert.equal(events[1].user, undefined, 'a Local API write without a user has no editor')
  } finally {
    await ctx.close()
  }
})

test('joining a collection outside includeCollections answers unknown-collection', T, async () => {
  const ctx = await startPayload()
  try {
    const { token } = await ctx.createUser('a@example.com')
    const client = await ctx.connect(token)
    const reply = await client.request({ type: 'join-collection', collection: 'notes' })
    assert.equal(reply.type, 'error')
    assert.equal(reply.code, 'unknown-collection')
    assert.equal((await client.request({ type: 'join-collection', collection: 'posts' })).type, 'ack')
    // Writes to collections without the plugin's hooks send nothing.
    await ctx.payload.create({ collection: 'notes', data: { body: 'x' } })
    await ctx.settle([client])
    assert.deepEqual(client.events(), [])
  } finally {
    await ctx.close()
  }
})

test("Payload decides who connects: the socket's user is the user document without secrets", T, async () => {
  const ctx = await startPayload()
  try {
    const { user, token } = await ctx.createUser('member@example.com', { role: 'member', team: 'blue' })
    const client = await ctx.connect(token)
    const who = await client.whoami()
    assert.equal(who.user.id, user.id)
    assert.equal(who.user.collection, 'users')
    assert.equal(who.user.role, 'member', 'fields of the user document, not only token claims')
    assert.equal(who.user.team, 'blue')
    for (const secret of ['sessions', 'hash', 'salt', 'password', '_sid', 'resetPasswordToken']) {
      assert.equal(who.user[secret], undefined, `no ${secret}`)
    }

    // Signed for another secret: the Rust core refuses it.
    const foreign = makeToken({ id: user.id, collection: 'users', email: user.email }, { secret: 'another-secret' })
    const r1 = await ctx.handshake(foreign)
    assert.equal(r1.status, 401)
    assert.equal(r1.json?.error, 'unauthorized')

    // Correctly signed, but a session Payload never issued: Payload refuses it.
    const forged = makeToken({ id: user.id, collection: 'users', email: user.email }, { secret: ctx.secret })
    const r2 = await ctx.handshake(forged)
    assert.equal(r2.status, 401)
    assert.deepEqual(r2.json, { error: 'unauthorized', reason: 'session is not valid' })

    // A deleted user's (still unexpired) token is refused.
    const { user: gone, token: goneToken } = await ctx.createUser('gone@example.com')
    assert.equal((await ctx.handshake(goneToken)).status, 101, 'accepted while the user exists')
    await ctx.payload.delete({ collection: 'users', id: gone.id })
    const r3 = await ctx.handshake(goneToken)
    assert.equal(r3.status, 401)
    // Payload refuses it, or (once the deletion has reached the server through updateUser) the
    // server's own record of the user's revocation does: either way before verifyUser is asked.
    assert.ok(['session is not valid', 'session revoked'].includes(r3.json?.reason), JSON.stringify(r3.json))

    // A token naming another user than Payload resolves is not possible to forge without the
    // key; a valid login keeps working.
    const again = await ctx.login('member@example.com')
    assert.equal((await ctx.handshake(again.token)).status, 101)
  } finally {
    await ctx.close()
  }
})

test('only committed writes are sent: a rolled-back write sends nothing (SQLite with transactions)', T, async () => {
  const ctx = await startPayload({ transactions: true })
  try {
    const { user, token } = await ctx.createUser('tx@example.com', { role: 'admin' })
    const client = await ctx.connect(token)
    await client.join('posts')
    const { payload } = ctx

    // An operation's own transaction (Payload begins and commits it): sent after the commit.
    const auto = await payload.create({ collection: 'posts', data: { title: 'auto' }, user })
    await client.waitFor((m) => m.type === 'create' && m.id === auto.id, { label: 'the committed create' })

    // An explicit transaction that is rolled back.
    const emittedBefore = ctx.emitted.length
    const tx1 = await payload.db.beginTransaction()
    assert.ok(tx1, 'the SQLite adapter with transactionOptions gives a transaction id')
    const req1 = await createLocalReq({ user, req: { transactionID: tx1 } }, payload)
    const doomed = await payload.create({ collection: 'posts', data: { title: 'doomed' }, req: req1 })
    await payload.update({ collection: 'posts', id: doomed.id, data: { title: 'doomed 2' }, req: req1 })
    assert.equal(ctx.emitted.length, emittedBefore, 'nothing is emitted inside the transaction')
    await payload.db.rollbackTransaction(tx1)
    assert.equal(ctx.emitted.length, emittedBefore, 'nothing is emitted after the rollback')
    assert.equal(
      (await payload.find({ collection: 'posts', where: { title: { like: 'doomed' } } })).totalDocs,
      0,
      'the write really was rolled back',
    )

    // An explicit transaction that commits: sent once, after the commit.
    const tx2 = await payload.db.beginTransaction()
    const req2 = await createLocalReq({ user, req: { transactionID: tx2 } }, payload)
    const kept = await payload.create({ collection: 'posts', data: { title: 'kept' }, req: req2 })
    assert.equal(ctx.emitted.length, emittedBefore, 'held until the commit')
    await payload.db.commitTransaction(tx2)
    assert.equal(ctx.emitted.length, emittedBefore + 1, 'emitted when the commit succeeds')
    await client.waitFor((m) => m.type === 'create' && m.id === kept.id, { label: 'the create after commit' })

    // A failing operation: Payload kills its own transaction; the afterChange hook had run.
    await assert.rejects(
      payload.create({
        collection: 'posts',
        data: { title: 'fails later' },
        user,
        context: { failAfterChange: true },
      }),
    )

    await ctx.settle([client])
    const ids = client.events('posts').map((e) => `${e.type}:${e.doc?.title}`)
    assert.deepEqual(ids, ['create:auto', 'create:kept'])
  } finally {
    await ctx.close()
  }
})

test('initUWebSocket(port, { secret }) after getPayload(): the hooks find that server', T, async () => {
  const ctx = await startPayload({ plugin: { port: undefined } })
  let manager
  try {
    assert.throws(() => getUWebSocketManager(), /not started/)
    manager = await initUWebSocket(0, { host: '127.0.0.1', secret: ctx.secret, includeCollections: ['posts'] })
    ctx.manager = manager
    ctx.watch(manager)
    const { user, token } = await ctx.createUser('late@example.com', { role: 'admin', team: 'red' })
    const client = await ctx.connect(token)
    await client.join('posts')
    const post = await ctx.payload.create({ collection: 'posts', data: { title: 'late' }, user })
    const e = await client.waitFor(isEvent, { label: 'the create event' })
    assert.equal(e.id, post.id)
    assert.deepEqual(e.user, { id: user.id, collection: 'users' })
  } finally {
    await ctx.close()
    await manager?.close()
  }
})

const hasPluginDefaults = typeof require('../lib/manager.js').setPluginDefaults === 'function'

test(
  "initUWebSocket(port) alone after getPayload() gets the plugin's options (secret, verifyUser, includeCollections)",
  { ...T, skip: !hasPluginDefaults && 'needs setPluginDefaults() in lib/manager.js' },
  async () => {
    const ctx = await startPayload({ plugin: { port: undefined } })
    let manager
    try {
      manager = await initUWebSocket(0, { host: '127.0.0.1' })
      ctx.manager = manager
      ctx.watch(manager)
      registerWhoami(manager)
      const { user, token } = await ctx.createUser('late@example.com', { role: 'admin', team: 'red' })
      const client = await ctx.connect(token)
      await client.join('posts')
      const who = await client.whoami()
      assert.equal(who.user.role, 'admin', "verifyUser ran: the socket's user is the Payload user")
      const joined = await client.request({ type: 'join-collection', collection: 'notes' })
      assert.equal(joined.code, 'unknown-collection', "the plugin's includeCollections apply")
      const post = await ctx.payload.create({ collection: 'posts', data: { title: 'late' }, user })
      const e = await client.waitFor(isEvent, { label: 'the create event' })
      assert.equal(e.id, post.id)
      const forged = makeToken({ id: user.id, collection: 'users', email: user.email }, { secret: ctx.secret })
      assert.equal((await ctx.handshake(forged)).status, 401, 'a session Payload never issued is refused')
    } finally {
      await ctx.close()
      await manager?.close()
    }
  },
)

test(
  "two Payloads in one process: initUWebSocket(port) gets the last one's options, then, once it is destroyed, the other's",
  T,
  async () => {
    const first = await startPayload({ plugin: { port: undefined, includeCollections: ['posts'] } })
    const second = await startPayload({ plugin: { port: undefined, includeCollections: ['notes'] } })
    const managers = []
    let secondClosed = false
    /** A manager started by the application, as after getPayload(), serving `ctx`'s sockets. */
    const startFor = async (ctx) => {
      const manager = await initUWebSocket(0, { host: '127.0.0.1' })
      managers.push(manager)
      ctx.manager = manager
      registerWhoami(manager)
      return manager
    }
    try {
      assert.notEqual(first.secret, second.secret)
      const fromFirst = await first.createUser('first@example.com', { role: 'admin' })
      const fromSecond = await second.createUser('second@example.com', { role: 'admin' })

      // The second Payload was initialised last: its secret, users and collections.
      await startFor(second)
      assert.equal((await second.handshake(fromFirst.token)).status, 401, "the first Payload's token is refused")
      const b = await second.connect(fromSecond.token)
      assert.equal((await b.whoami()).user.email, 'second@example.com')
      assert.equal((await b.request({ type: 'join-collection', collection: 'posts' })).code, 'unknown-collection')
      await b.join('notes')
      await b.close()

      // Once it is destroyed, the first Payload's options apply again (not none).
      await managers.pop().close()
      await second.close()
      secondClosed = true
      await startFor(first)
      assert.equal((await first.handshake(fromSecond.token)).status, 401, "the second Payload's token is refused")
      const a = await first.connect(fromFirst.token)
      assert.equal((await a.whoami()).user.email, 'first@example.com', 'verifyUser of the first Payload ran')
      assert.equal((await a.request({ type: 'join-collection', collection: 'notes' })).code, 'unknown-collection')
      await a.join('posts')
      const post = await first.payload.create({ collection: 'posts', data: { title: 'first' }, user: fromFirst.user })
      assert.equal((await a.waitFor(isEvent, { label: 'the create event' })).id, post.id)
    } finally {
      for (const m of managers) await m.close()
      await first.close()
      if (!secondClosed) await second.close()
    }
  },
)
