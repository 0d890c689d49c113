// Access-aware delivery in a real Payload 3: with `readAccess`, each user receives an event only
// if Payload's own read access lets them read the document, and the `doc` they receive is the
// document as they would read it through the Local API (field-level access applied). Combined
// with an `authorize` rule: both must allow.

import assert from 'node:assert/strict'
import { test } from 'node:test'

import { startPayload } from './payload-fixture.mjs'

const T = { timeout: 120_000 }

/** What `user` reads of post `id` through the Local API (null when Payload refuses). */
async function localRead(payload, id, user) {
  try {
    return await payload.findByID({ collection: 'posts', id, user, overrideAccess: false, depth: 0 })
  } catch {
    return null
  }
}

test('each user receives exactly what Payload lets them read (read access, field access, authorize)', T, async () => {
  const ctx = await startPayload({
    plugin: {
      readAccess: { posts: true },
      // An application rule on top of read access: muted users receive no posts events.
      authorize: { posts: (user) => user?.muted !== true },
    },
    configure: (config) => ({
      ...config,
      collections: config.collections.map((c) =>
        c.slug === 'users' ? { ...c, fields: [...c.fields, { name: 'muted', type: 'checkbox' }] } : c,
      ),
    }),
  })
  try {
    const { payload } = ctx
    const admin = await ctx.createUser('admin@example.com', { role: 'admin', team: 'red' })
    const alice = await ctx.createUser('alice@example.com', { role: 'member', team: 'red' })
    const bob = await ctx.createUser('bob@example.com', { role: 'member', team: 'blue' })
    const carol = await ctx.createUser('carol@example.com', { role: 'member', team: 'blue', muted: true })
    const people = { admin, alice, bob, carol }
    const sockets = {}
    for (const [name, who] of Object.entries(people)) {
      sockets[name] = await ctx.connect(who.token, { label: name })
      await sockets[name].join('posts')
    }
    // alice has a second socket: one evaluation per user, delivered to both sockets.
    const alice2 = await ctx.connect(alice.token, { label: 'alice-2' })
    await alice2.join('posts')
    const all = [...Object.values(sockets), alice2]

    /** Checks that each socket received exactly `expected[name]` (a doc or nothing) for step `type`. */
    async function expectStep(type, id, expected) {
      await ctx.settle(all)
      for (const [name, socket] of [...Object.entries(sockets), ['alice', alice2]]) {
        const got = socket.events('posts').filter((e) => e.type === type && e.id === id)
        if (expected[name] === undefined) {
          assert.equal(got.length, 0, `${name} must not receive ${type} of ${id}: ${JSON.stringify(got)}`)
        } else {
          assert.equal(got.length, 1, `${name} receives ${type} of ${id} once`)
          assert.deepEqual(got[0].doc, expected[name], `${name}'s doc for ${type} of ${id}`)
          assert.deepEqual(got[0].user, { id: admin.user.id, collection: 'users' })
        }
      }
    }

    const readAs = async (id, names) => {
      const out = {}
      for (const name of names) {
        const doc = await localRead(payload, id, people[name].user)
        if (doc) out[name] = doc
      }
      return out
    }

    // A red post with an internal note: the admin reads all of it, alice (red) reads it without
    // the note, bob (blue) reads nothing, carol is muted by the authorize rule.
    const red = await payload.create({
      collection: 'posts',
      data: { title: 'Red news', team: 'red', internalNote: 'admins only' },
      user: admin.user,
    })
    const redReads = await readAs(red.id, ['admin', 'alice', 'bob', 'carol'])
    assert.equal(redReads.admin.internalNote, 'admins only')
    assert.equal(redReads.alice.internalNote, undefined, 'field-level read access hides the note from alice')
    assert.equal(redReads.bob, undefined, "the Where query keeps bob out of the red team's post")
    await expectStep('create', red.id, { admin: redReads.admin, alice: redReads.alice })

    // A blue post: bob reads it; carol could read it too but authorize mutes her.
    const blue = await payload.create({
      collection: 'posts',
      data: { title: 'Blue news', team: 'blue', internalNote: 'secret' },
      user: admin.user,
    })
    const blueReads = await readAs(blue.id, ['admin', 'alice', 'bob', 'carol'])
    assert.ok(blueReads.carol, 'Payload alone would let carol read it')
    await expectStep('create', blue.id, { admin: blueReads.admin, bob: blueReads.bob })

    // Moving the red post to the blue team: now bob may read it and alice may not.
    await payload.update({ collection: 'posts', id: red.id, data: { team: 'blue', title: 'Moved' }, user: admin.user })
    const movedReads = await readAs(red.id, ['admin', 'alice', 'bob'])
    assert.equal(movedReads.alice, undefined)
    await expectStep('update', red.id, { admin: movedReads.admin, bob: movedReads.bob })

    // Deleting the blue post: the document is gone; access is evaluated on the deleted doc.
    await payload.delete({ collection: 'posts', id: blue.id, user: admin.user })
    await expectStep('delete', blue.id, { admin: blueReads.admin, bob: blueReads.bob })

    // Nothing else reached anyone: alice saw only the red create, bob never saw the note.
    assert.deepEqual(
      sockets.alice.events('posts').map((e) => `${e.type}:${e.id}`),
      [`create:${red.id}`],
    )
    assert.deepEqual(
      alice2.events('posts').map((e) => `${e.type}:${e.id}`),
      [`create:${red.id}`],
    )
    for (const e of sockets.bob.events('posts')) assert.equal(e.doc.internalNote, undefined)
    assert.deepEqual(sockets.carol.events('posts'), [])
  } finally {
    await ctx.close()
  }
})

test('readAccess: true covers every included collection; anonymous sockets get only public documents', T, async () => {
  const ctx = await startPayload({
    plugin: { readAccess: true, allowAnonymous: true, includeCollections: ['posts', 'notes'] },
    configure: (config) => ({
      ...config,
      collections: config.collections.map((c) =>
        c.slug === 'notes'
          ? {
              ...c,
              access: { read: ({ req: { user } }) => (user ? true : { public: { equals: true } }) },
              fields: [...c.fields, { name: 'public', type: 'checkbox' }],
            }
          : c,
      ),
    }),
  })
  try {
    const { payload } = ctx
    const member = await ctx.createUser('m@example.com', { role: 'member', team: 'red' })
    const anon = await ctx.connect(undefined, { label: 'anonymous' })
    const who = await anon.whoami()
    assert.equal(who.user, null)
    const memberSocket = await ctx.connect(member.token, { label: 'member' })
    for (const c of [anon, memberSocket]) await c.join('notes')
    await memberSocket.join('posts')
    // Posts' read access lets anonymous users read nothing: the room is refused, not silent.
    const refused = await anon.request({ type: 'join-collection', collection: 'posts' })
    assert.equal(refused.type, 'error')
    assert.equal(refused.code, 'forbidden')
    const hidden = await payload.create({ collection: 'notes', data: { body: 'internal', public: false } })
    const shown = await payload.create({ collection: 'notes', data: { body: 'hello world', public: true } })
    const post = await payload.create({ collection: 'posts', data: { title: 'members only', team: 'red' } })
    await payload.delete({ collection: 'notes', id: shown.id })
    await payload.delete({ collection: 'notes', id: hidden.id })
    await ctx.settle([anon, memberSocket], 'notes')
    await ctx.settle([memberSocket], 'posts')
    assert.deepEqual(
      anon.events().map((e) => `${e.type}:${e.collection}:${e.id}`),
      [`create:notes:${shown.id}`, `delete:notes:${shown.id}`],
    )
    // Order is guaranteed within a collection's room, not across rooms (posts go through
    // read access, notes do not, so a posts event may arrive after later notes events).
    assert.deepEqual(
      memberSocket.events('notes').map((e) => `${e.type}:${e.collection}:${e.id}`),
      [
        `create:notes:${hidden.id}`,
        `create:notes:${shown.id}`,
        `delete:notes:${shown.id}`,
        `delete:notes:${hidden.id}`,
      ],
    )
    assert.deepEqual(
      memberSocket.events('posts').map((e) => `${e.type}:${e.collection}:${e.id}`),
      [`create:posts:${post.id}`],
    )
    assert.equal(memberSocket.events().length, 5)
  } finally {
    await ctx.close()
  }
})

test(
  "rules judge the user as they are now: a role change applies at once, a deleted user's sockets close",
  T,
  async () => {
    const ctx = await startPayload({ plugin: { readAccess: { posts: true } } })
    try {
      const { payload } = ctx
      const editor = await ctx.createUser('editor@example.com', { role: 'admin', team: 'red' })
      const member = await ctx.createUser('member@example.com', { role: 'member', team: 'red' })
      const socket = await ctx.connect(member.token, { label: 'member' })
      await socket.join('posts')

      const first = await payload.create({
        collection: 'posts',
        data: { title: 'one', team: 'red', internalNote: 'n1' },
        user: editor.user,
      })
      await ctx.settle([socket])
      assert.equal(socket.events('posts')[0].doc.internalNote, undefined, 'a member does not read the note')

      // Promoted while connected: the next event is judged with the new role.
      await payload.update({ collection: 'users', id: member.user.id, data: { role: 'admin' } })
      await payload.update({ collection: 'posts', id: first.id, data: { title: 'two' }, user: editor.user })
      await ctx.settle([socket])
      assert.equal(socket.events('posts')[1].doc.internalNote, 'n1', 'now an admin: the note is readable')

      // Deleted while connected: the sockets close (4003) and receive nothing more.
      await payload.delete({ collection: 'users', id: member.user.id })
      assert.equal((await socket.waitForClose()).code, 4003)
      assert.equal((await ctx.handshake(member.token)).status, 401)
    } finally {
      await ctx.close()
    }
  },
)

test('read access keys the collection room only: an app room named like a collection is the app’s', T, async () => {
  // Without a `rooms` rule of its own, the app room `posts` is refused, although read access
  // lets the member into the collection's room.
  const bare = await startPayload({ plugin: { readAccess: { posts: true } } })
  try {
    const member = await bare.createUser('m@example.com', { role: 'member', team: 'red' })
    const socket = await bare.connect(member.token, { label: 'member' })
    await socket.join('posts')
    const refused = await socket.request({ type: 'join', room: 'posts' })
    assert.deepEqual([refused.type, refused.code], ['error', 'forbidden'])
  } finally {
    await bare.close()
  }

  // With one, the app room's events are the app's: Payload's read access (which would ask for
  // a document these events do not have) does not judge them; the user's bare rule still
  // judges both rooms, as documented.
  const ctx = await startPayload({
    plugin: {
      readAccess: { posts: true },
      rooms: { posts: (user) => Boolean(user) },
      authorize: { posts: (user, event) => event.type !== 'secret' },
    },
  })
  try {
    const member = await ctx.createUser('m2@example.com', { role: 'member', team: 'red' })
    const socket = await ctx.connect(member.token, { label: 'member' })
    await socket.join('posts')
    assert.equal((await socket.request({ type: 'join', room: 'posts' })).type, 'ack')
    await ctx.manager.publish('posts', { type: 'secret' })
    await ctx.manager.publish('posts', { type: 'notice', text: 'hello' })
    const notice = await socket.waitFor((m) => m.type === 'notice')
    assert.deepEqual(notice, { type: 'notice', text: 'hello', room: 'posts' })
    assert.equal(socket.all.filter((m) => m.type === 'secret').length, 0)
    // The collection's room still follows read access: another team's post never arrives.
    const hidden = await ctx.payload.create({ collection: 'posts', data: { title: 'blue', team: 'blue' } })
    const shown = await ctx.payload.create({ collection: 'posts', data: { title: 'red', team: 'red' } })
    await ctx.settle([socket], 'posts')
    assert.deepEqual(
      socket.events('posts').map((e) => e.id),
      [shown.id],
    )
    assert.notEqual(hidden.id, shown.id)
  } finally {
    await ctx.close()
  }
})
