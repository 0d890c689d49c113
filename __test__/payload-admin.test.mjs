// The live admin's server side in a real Payload 3: the plugin registers its provider with where
// the browser finds the server, and document locks, which Payload's admin writes with the
// database adapter directly (no hooks), are pushed to every signed-in admin.

import assert from 'node:assert/strict'
import { test } from 'node:test'

import { freePort } from './helpers.mjs'
import { startPayload } from './payload-fixture.mjs'

const T = { timeout: 120_000 }
const LOCKS = 'payload-locked-documents'

test('the plugin registers the admin provider with the server it starts, and admin: false does not', T, async () => {
  const port = await freePort()
  const ctx = await startPayload({ plugin: { port, path: '/' } })
  try {
    const providers = ctx.payload.config.admin.components.providers
    assert.deepEqual(
      providers.filter((p) => p.path === 'payload-realtime/admin#RealtimeAdminProvider'),
      [
        {
          path: 'payload-realtime/admin#RealtimeAdminProvider',
          clientProps: { collections: ['posts'], port, path: '/' },
        },
      ],
    )
  } finally {
    await ctx.close()
  }
  const off = await startPayload({ plugin: { port: await freePort(), admin: false } })
  try {
    const providers = off.payload.config.admin?.components?.providers ?? []
    assert.equal(
      providers.some((p) => String(p.path ?? p).startsWith('payload-realtime')),
      false,
    )
    const reply = await (
      await off.connect((await off.createUser('x@example.com')).token)
    ).request({
      type: 'join-collection',
      collection: LOCKS,
    })
    assert.equal(reply.code, 'unknown-collection', 'without the live admin, locks are not a room')
  } finally {
    await off.close()
  }
})

test('a lock taken the way the admin takes it, and its release, reach the other admins', T, async () => {
  const ctx = await startPayload({ plugin: { port: await freePort() } })
  try {
    const { payload } = ctx
    const a = await ctx.createUser('a@example.com', { role: 'admin' })
    const b = await ctx.createUser('b@example.com', { role: 'admin' })
    const post = await payload.create({ collection: 'posts', data: { title: 'locked soon' } })
    const watcher = await ctx.connect(b.token, { label: 'b' })
    await watcher.join(LOCKS)

    // What @payloadcms/ui's handleFormStateLocking does when A opens the document.
    await payload.db.create({
      collection: LOCKS,
      data: { document: { relationTo: 'posts', value: post.id }, user: { relationTo: 'users', value: a.user.id } },
      returning: false,
    })
    const taken = await watcher.waitFor((m) => m.collection === LOCKS && m.type === 'create', { label: 'the lock' })
    assert.equal(taken.id, post.id)
    assert.deepEqual(taken.doc.document, { relationTo: 'posts', value: post.id })
    assert.deepEqual(taken.user, { id: a.user.id, collection: 'users' })

    // A leaves the document: the admin deletes the lock through the API.
    await payload.delete({ collection: LOCKS, where: { 'document.value': { equals: post.id } }, user: a.user })
    await watcher.waitFor((m) => m.collection === LOCKS && m.type === 'delete', { label: 'the release' })
  } finally {
    await ctx.close()
  }
})
