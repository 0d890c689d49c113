// Presence on one instance: who is in a room (distinct users, never emails), and presence-join
// / presence-leave announcements. The multi-instance part is in redis.test.mjs.

import assert from 'node:assert/strict'
import { test } from 'node:test'

import { makeToken, withServer } from './helpers.mjs'

const T = { timeout: 60_000 }
const ids = (members) => members.map((m) => m.id).sort()

test('presence lists distinct users and announces joins and leaves', T, async () => {
  await withServer({ presence: ['posts'] }, async (ctx) => {
    const alice = await ctx.connect({ token: makeToken({ id: 'alice', email: 'alice@example.com' }), label: 'alice' })
    await alice.join('posts')
    const bob1 = await ctx.connectAs('bob')
    const bob2 = await ctx.connectAs('bob')
    await bob1.join('posts')
    const joined = await alice.waitFor((m) => m.type === 'presence-join' && m.user.id === 'bob')
    assert.deepEqual(joined, {
      type: 'presence-join',
      room: 'collection:posts',
      collection: 'posts',
      user: { id: 'bob', collection: 'users' },
    })
    await bob2.join('posts') // a second socket of bob: no new join

    const reply = await alice.request({ type: 'presence', collection: 'posts' })
    assert.equal(reply.type, 'presence')
    assert.deepEqual(ids(reply.members), ['alice', 'bob'])
    assert.ok(!JSON.stringify(reply).includes('@'), 'no email in presence')

    await bob1.close() // bob still has bob2: no leave
    const mid = await alice.request({ type: 'presence', collection: 'posts' })
    assert.deepEqual(ids(mid.members), ['alice', 'bob'])
    bob2.send({ type: 'leave-collection', collection: 'posts' })
    const left = await alice.waitFor((m) => m.type === 'presence-leave')
    assert.equal(left.user.id, 'bob')
    assert.equal(alice.all.filter((m) => m.type === 'presence-join' && m.user.id === 'bob').length, 1)
    assert.deepEqual(ids((await alice.request({ type: 'presence', collection: 'posts' })).members), ['alice'])

    // Asking about a room one is not in, or one without presence.
    assert.equal((await bob2.request({ type: 'presence', collection: 'posts' })).code, 'forbidden')
    await alice.join('pages')
    assert.equal((await alice.request({ type: 'presence', collection: 'pages' })).code, 'bad-message')
  })
})

test('presence works for app rooms: the presence request by `room`, joins and leaves announced', T, async () => {
  const rooms = { 'role:admin': () => true, 'chat:*': () => true }
  await withServer({ presence: ['role:admin', 'chat:*'], rooms }, async (ctx) => {
    const alice = await ctx.connectAs('alice')
    const bob = await ctx.connectAs('bob')
    const carol = await ctx.connectAs('carol')
    assert.equal((await alice.request({ type: 'join', room: 'role:admin' })).type, 'ack')
    assert.equal((await bob.request({ type: 'join', room: 'role:admin' })).type, 'ack')
    const joined = await alice.waitFor((m) => m.type === 'presence-join' && m.user.id === 'bob')
    assert.deepEqual(joined, { type: 'presence-join', room: 'role:admin', user: { id: 'bob', collection: 'users' } })

    const reply = await alice.request({ type: 'presence', room: 'role:admin' })
    assert.equal(reply.type, 'presence')
    assert.equal(reply.room, 'role:admin')
    assert.equal('collection' in reply, false)
    assert.deepEqual(ids(reply.members), ['alice', 'bob'])

    // A pattern covers every room it names; only members may ask.
    assert.equal((await carol.request({ type: 'join', room: 'chat:7' })).type, 'ack')
    assert.deepEqual(ids((await carol.request({ type: 'presence', room: 'chat:7' })).members), ['carol'])
    assert.equal((await carol.request({ type: 'presence', room: 'role:admin' })).code, 'forbidden')
    assert.equal((await carol.request({ type: 'presence', room: 'chat:*' })).code, 'bad-message')

    assert.equal((await bob.request({ type: 'leave', room: 'role:admin' })).type, 'ack')
    const left = await alice.waitFor((m) => m.type === 'presence-leave')
    assert.deepEqual(left, { type: 'presence-leave', room: 'role:admin', user: { id: 'bob', collection: 'users' } })
    assert.deepEqual(ids((await alice.request({ type: 'presence', room: 'role:admin' })).members), ['alice'])

    // The collection form names the same room as `room: "collection:<slug>"`.
    await alice.join('posts')
    const byRoom = await alice.request({ type: 'presence', room: 'collection:posts' })
    assert.equal(byRoom.code, 'bad-message', 'posts has no presence here')
  })
})
