// Sessions: `verifyUser` (the host confirms each connection), `revokeSession` (logout closes a
// session's sockets with 4003), `{ type: 'auth', token }` (a fresh token keeps a socket past the
// old token's expiry), and authorize rules answering `{ doc }` (a per-user document).

import assert from 'node:assert/strict'
import { test } from 'node:test'

import { isEvent, makeToken, sleep, startServer, withServer } from './helpers.mjs'

const T = { timeout: 60_000 }

test('verifyUser confirms each connection; its user object is what the server sees', T, async () => {
  const calls = []
  const verifyUser = async (token, claims) => {
    calls.push({ token, claims })
    if (claims.id === 'banned') return null
    if (claims.id === 'broken') throw new Error('database down')
    return { id: claims.id, collection: 'users', role: claims.id === 'admin' ? 'admin' : 'reader' }
  }
  await withServer({ verifyUser }, async (ctx) => {
    const token = makeToken({ id: 'admin', sid: 's1' })
    const admin = await ctx.connect({ token, label: 'admin' })
    await admin.whoami()
    assert.deepEqual(admin.user, { id: 'admin', collection: 'users', role: 'admin' })
    assert.equal(calls.length, 1)
    assert.equal(calls[0].token, token)
    assert.equal(calls[0].claims.sid, 's1')

    for (const id of ['banned', 'broken']) {
      const r = await ctx.handshake({ token: makeToken({ id }) })
      assert.equal(r.status, 401, id)
      assert.equal(r.json.error, 'unauthorized', id)
    }
    // A bad signature never reaches verifyUser.
    const before = calls.length
    const forged = await ctx.handshake({ token: makeToken({ id: 'admin' }, { secret: 'another-secret' }) })
    assert.equal(forged.status, 401)
    assert.equal(calls.length, before)

    // Authorize rules see the verified user, not the raw claims.
    await admin.join('posts')
    assert.deepEqual(ctx.manager.getSocketsInRoom('collection:posts')[0].user.role, 'admin')
  })
})

test('revokeSession closes that session with 4003, other sessions and users stay', T, async () => {
  await withServer({}, async (ctx) => {
    const a1 = await ctx.connect({ token: makeToken({ id: 'a', sid: 'one' }), label: 'a1' })
    const a1b = await ctx.connect({ token: makeToken({ id: 'a', sid: 'one' }), label: 'a1b' })
    const a2 = await ctx.connect({ token: makeToken({ id: 'a', sid: 'two' }), label: 'a2' })
    const b = await ctx.connect({ token: makeToken({ id: 'b', sid: 'one' }), label: 'b' })
    for (const c of [a1, a1b, a2, b]) await c.join('posts')

    assert.equal(ctx.manager.revokeSession({ collection: 'users', id: 'a', sid: 'one' }), 2)
    assert.equal((await a1.waitForClose()).code, 4003)
    assert.equal((await a1b.waitForClose()).code, 4003)
    await ctx.manager.emitEvent({ type: 'create', collection: 'posts', id: 1 })
    await a2.waitFor(isEvent)
    await b.waitFor(isEvent)

    // Without a sid: every session of the user.
    assert.equal(ctx.manager.revokeSession({ collection: 'users', id: 'a' }), 1)
    assert.equal((await a2.waitForClose()).code, 4003)
    assert.equal(b.isOpen, true)
    assert.equal(ctx.manager.revokeSession({ collection: 'users', id: 'nobody' }), 0)
    assert.throws(() => ctx.manager.revokeSession({ id: 1 }), TypeError)
  })
})

test('a fresh token sent with { type: "auth" } keeps the socket open past the old expiry', T, async () => {
  await withServer({}, async (ctx) => {
    const now = Math.floor(Date.now() / 1000)
    const short = makeToken({ id: 'u', exp: now + 2, sid: 's' })
    const c = await ctx.connect({ token: short, label: 'refreshing' })
    const other = await ctx.connect({ token: makeToken({ id: 'v', exp: now + 2 }), label: 'expiring' })

    const fresh = makeToken({ id: 'u', sid: 's2' }, { expiresIn: 3600 })
    assert.equal((await c.request({ type: 'auth', token: fresh })).type, 'ack')
    // Wrong user, bad token, missing token: refused, socket kept.
    const wrongUser = await c.request({ type: 'auth', token: makeToken({ id: 'someone-else' }) })
    assert.equal(wrongUser.code, 'forbidden')
    const bad = await c.request({ type: 'auth', token: 'garbage' })
    assert.equal(bad.code, 'forbidden')
    const missing = await c.request({ type: 'auth' })
    assert.equal(missing.code, 'bad-message')

    // The socket that did not refresh is closed with 4001; the refreshed one is still served.
    assert.equal((await other.waitForClose()).code, 4001)
    while (Math.floor(Date.now() / 1000) <= now + 2) await sleep(100)
    assert.equal((await c.request({ type: 'ping' })).type, 'pong')
    assert.equal(c.isOpen, true)
    // The new session id counts for revocation.
    assert.equal(ctx.manager.revokeSession({ collection: 'users', id: 'u', sid: 's' }), 0)
    assert.equal(ctx.manager.revokeSession({ collection: 'users', id: 'u', sid: 's2' }), 1)
    assert.equal((await c.waitForClose()).code, 4003)
  })
})

test('an authorize rule may answer { doc }: that user gets the event with its own document', T, async () => {
  const authorize = {
    posts: (user, event) => {
      if (user.id === 'editor') return true
      if (user.id === 'reader') return { doc: { id: event.doc.id, title: event.doc.title } }
      return false
    },
  }
  await withServer({ authorize }, async (ctx) => {
    const editor = await ctx.connectAs('editor')
    const reader = await ctx.connectAs('reader')
    const reader2 = await ctx.connectAs('reader')
    const guest = await ctx.connectAs('guest')
    for (const c of [editor, reader, reader2, guest]) await c.join('posts')
    await ctx.manager.emitEvent({
      type: 'update',
      collection: 'posts',
      id: 7,
      doc: { id: 7, title: 'T', internalNotes: 'secret' },
    })
    assert.equal((await editor.waitFor(isEvent)).doc.internalNotes, 'secret')
    for (const r of [reader, reader2]) {
      const e = await r.waitFor(isEvent)
      assert.deepEqual(e.doc, { id: 7, title: 'T' })
      assert.equal(e.type, 'update')
      assert.equal(e.id, 7)
    }
    assert.equal((await guest.request({ type: 'ping' })).type, 'pong')
    assert.deepEqual(guest.events(), [])
  })
})

test(
  'revoked sessions are refused at the handshake, within maxRevokedSessions (oldest-expiring forgotten)',
  T,
  async () => {
    await withServer({ maxRevokedSessions: 2 }, async (ctx) => {
      const now = Math.floor(Date.now() / 1000)
      // Three sessions, revoked in turn; the one whose token expires first is forgotten.
      const tokens = [300, 100, 200].map((life, i) => makeToken({ id: 'a', sid: `s${i}`, exp: now + life }))
      for (const [i, life] of [300, 100, 200].entries()) {
        ctx.manager.revokeSession({ collection: 'users', id: 'a', sid: `s${i}`, exp: now + life })
      }
      const { sessions } = ctx.manager.stats()
      assert.deepEqual(sessions, { revoked: 2, pending: 0, evicted: 1, checkFailures: 0 })
      for (const i of [0, 2]) {
        const r = await ctx.handshake({ token: tokens[i] })
        assert.equal(r.status, 401, `s${i}`)
        assert.deepEqual(r.json, { error: 'unauthorized', reason: 'session revoked' })
      }
      // s1 expired first, so it was the one forgotten (without Redis or verifyUser nobody else knows).
      assert.equal((await ctx.handshake({ token: tokens[1] })).status, 101)
      // Another session of the user is not affected.
      assert.equal((await ctx.handshake({ token: makeToken({ id: 'a', sid: 'other' }) })).status, 101)
    })
  },
)

test(
  'a user revoked as a whole: tokens issued before are refused, later ones and refreshes are checked',
  T,
  async () => {
    await withServer({}, async (ctx) => {
      const now = Math.floor(Date.now() / 1000)
      const before = makeToken({ id: 'u', sid: 'old', iat: now - 10 })
      const open = await ctx.connect({ token: makeToken({ id: 'u', sid: 'x', iat: now - 10 }), label: 'open' })
      assert.equal(ctx.manager.revokeSession({ collection: 'users', id: 'u' }), 1)
      assert.equal((await open.waitForClose()).code, 4003)
      assert.equal((await ctx.handshake({ token: before })).status, 401)
      // Sent as the first message instead of in the request: refused the same way.
      const first = await ctx.connect({ query: '?auth=message', label: 'first message' })
      first.send({ type: 'auth', token: before })
      assert.deepEqual(await first.waitForClose(), { code: 4004, reason: 'session revoked' })
      const later = makeToken({ id: 'u', sid: 'new', iat: now + 2 })
      const c = await ctx.connect({ token: later, label: 'later' })
      // A refresh with a revoked token is refused; the socket stays.
      const refused = await c.request({ type: 'auth', token: before })
      assert.equal(refused.code, 'forbidden')
      assert.match(refused.message, /revoked/)
      assert.equal((await c.request({ type: 'ping' })).type, 'pong')
    })
  },
)

test('maxRevokedSessions and maxTokenLifetime are checked', T, async () => {
  await assert.rejects(startServer({ maxRevokedSessions: 0 }), /maxRevokedSessions/)
  await assert.rejects(startServer({ maxTokenLifetime: 0 }), /maxTokenLifetime/)
  await assert.rejects(startServer({ maxTokenLifetime: 1.5 }), /maxTokenLifetime/)
})

test('updateUser: rules see the new document at once; a deleted user is closed and refused', T, async () => {
  const verifyUser = async (token, claims) => ({ id: claims.id, collection: 'users', role: 'editor' })
  const authorize = { posts: (user) => user?.role === 'editor' }
  await withServer({ verifyUser, authorize }, async (ctx) => {
    // Issued a while ago: a token of the very second of a user-wide revocation is left to verifyUser.
    const token = makeToken({ id: 'u', sid: 's', iat: Math.floor(Date.now() / 1000) - 5 })
    const u = await ctx.connect({ token, label: 'u' })
    const other = await ctx.connect({ token: makeToken({ id: 'w' }), label: 'w' })
    for (const c of [u, other]) await c.join('posts')
    await ctx.manager.emitEvent({ type: 'create', collection: 'posts', id: 1 })
    await u.waitFor(isEvent)

    assert.equal(ctx.manager.updateUser({ collection: 'users', id: 'u', doc: { id: 'u', role: 'viewer' } }), 1)
    const users = Object.fromEntries(ctx.manager.getSocketsInRoom('collection:posts').map((s) => [s.user.id, s.user]))
    assert.deepEqual(users.u, { id: 'u', role: 'viewer' })
    await ctx.manager.emitEvent({ type: 'create', collection: 'posts', id: 2 })
    await other.waitFor((m) => isEvent(m) && m.id === 2)
    ctx.manager.broadcastToRoom('collection:posts', { type: 'marker' })
    await u.waitFor((m) => m.type === 'marker')
    assert.deepEqual(
      u.events('posts').map((e) => e.id),
      [1],
      'the demoted user no longer passes the rule',
    )

    assert.equal(ctx.manager.updateUser({ collection: 'users', id: 'u', doc: null }), 1)
    assert.equal((await u.waitForClose()).code, 4003)
    assert.equal((await ctx.handshake({ token })).status, 401, 'its tokens are refused')
    assert.equal(other.isOpen, true)
    assert.throws(() => ctx.manager.updateUser({ collection: 'users', id: 'u', doc: 'nope' }), TypeError)
    assert.throws(() => ctx.manager.updateUser({ id: 'u', doc: null }), TypeError)
  })
})
