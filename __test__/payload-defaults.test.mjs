// Defaults that never leak: with the plugin's default options (only `includeCollections` and a
// port), each user receives an event only as far as Payload's own read access lets them read
// the document (drafts, field-level access), and a user who may read nothing of a collection is
// refused its room. `readAccess: false` is the documented opt-out.

import assert from 'node:assert/strict'
import { test } from 'node:test'

import { isAdmin, startPayload } from './payload-fixture.mjs'

const T = { timeout: 120_000 }

/**
 * Posts with drafts, read access as a typical site has it: admins read everything, members read
 * published posts only, guests read nothing; `internalNote` is admins-only (field access).
 */
const withDrafts = (config) => ({
  ...config,
  collections: config.collections.map((c) => {
    if (c.slug === 'users') {
      return {
        ...c,
        fields: c.fields.map((f) => (f.name === 'role' ? { ...f, options: ['admin', 'member', 'guest'] } : f)),
      }
    }
    if (c.slug !== 'posts') return c
    return {
      ...c,
      versions: { drafts: true },
      access: {
        ...c.access,
        read: ({ req: { user } }) => {
          if (isAdmin(user)) return true
          if (user?.role === 'member') return { _status: { equals: 'published' } }
          return false
        },
      },
    }
  }),
})

test('default options: drafts, admins-only fields and unreadable collections never reach a reader', T, async () => {
  const ctx = await startPayload({ configure: withDrafts })
  try {
    const { payload } = ctx
    const admin = await ctx.createUser('admin@example.com', { role: 'admin' })
    const member = await ctx.createUser('member@example.com', { role: 'member' })
    const guest = await ctx.createUser('guest@example.com', { role: 'guest' })
    const adminSocket = await ctx.connect(admin.token, { label: 'admin' })
    const memberSocket = await ctx.connect(member.token, { label: 'member' })
    const guestSocket = await ctx.connect(guest.token, { label: 'guest' })
    await adminSocket.join('posts')
    await memberSocket.join('posts')
    const refused = await guestSocket.request({ type: 'join-collection', collection: 'posts' })
    assert.equal(refused.type, 'error', 'a user who may read no post is refused the room')
    assert.equal(refused.code, 'forbidden')
    assert.deepEqual(
      ctx.manager
        .getSocketsInRoom('collection:posts')
        .map((s) => s.user.email)
        .sort(),
      ['admin@example.com', 'member@example.com'],
    )
    const sockets = [adminSocket, memberSocket]

    // A new draft: only the admin hears of it.
    const post = await payload.create({
      collection: 'posts',
      data: { title: 'Draft title', internalNote: 'admins only', _status: 'draft' },
      draft: true,
      user: admin.user,
    })
    await ctx.settle(sockets)
    assert.deepEqual(
      adminSocket.events('posts').map((e) => `${e.type}:${e.doc?.title}`),
      ['create:Draft title'],
    )
    assert.deepEqual(memberSocket.events('posts'), [], 'a member never hears of an unpublished draft')

    // Published: the member receives it, without the admins-only field.
    await payload.update({
      collection: 'posts',
      id: post.id,
      data: { title: 'Live title', _status: 'published' },
      user: admin.user,
    })
    await ctx.settle(sockets)
    const [published] = memberSocket.events('posts')
    assert.equal(published.type, 'update')
    assert.equal(published.doc.title, 'Live title')
    assert.equal(published.doc._status, 'published')
    assert.equal('internalNote' in published.doc, false, 'field-level read access applies')
    assert.equal(adminSocket.events('posts').at(-1).doc.internalNote, 'admins only')

    // A draft of the published post: nobody who reads the published version sees the draft.
    await payload.update({
      collection: 'posts',
      id: post.id,
      data: { title: 'Unannounced rewrite' },
      draft: true,
      user: admin.user,
    })
    await payload.delete({ collection: 'posts', id: post.id, user: admin.user })
    await ctx.settle(sockets)
    const memberEvents = memberSocket.events('posts')
    assert.equal(memberEvents.at(-1).type, 'delete')
    assert.equal(memberEvents.at(-1).doc.title, 'Live title')
    for (const m of memberSocket.all) {
      const raw = JSON.stringify(m)
      assert.ok(!raw.includes('Draft title'), `the first draft reached the member: ${raw}`)
      assert.ok(!raw.includes('Unannounced rewrite'), `the later draft reached the member: ${raw}`)
      assert.ok(!raw.includes('admins only'), `the admins-only field reached the member: ${raw}`)
    }
    assert.deepEqual(guestSocket.events(), [])
  } finally {
    await ctx.close()
  }
})

test('readAccess: false is the opt-out: everyone who may connect receives every event whole', T, async () => {
  for (const readAccess of [false, { posts: false }]) {
    const ctx = await startPayload({ plugin: { readAccess }, configure: withDrafts })
    try {
      const admin = await ctx.createUser('admin@example.com', { role: 'admin' })
      const guest = await ctx.createUser('guest@example.com', { role: 'guest' })
      const guestSocket = await ctx.connect(guest.token, { label: 'guest' })
      await guestSocket.join('posts')
      const post = await ctx.payload.create({
        collection: 'posts',
        data: { title: 'Draft title', internalNote: 'admins only', _status: 'draft' },
        draft: true,
        user: admin.user,
      })
      await ctx.settle([guestSocket])
      const [event] = guestSocket.events('posts')
      assert.equal(event.id, post.id, `readAccess: ${JSON.stringify(readAccess)}`)
      assert.equal(event.doc.internalNote, 'admins only')
    } finally {
      await ctx.close()
    }
  }
})
