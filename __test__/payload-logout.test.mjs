// Logout ends live sessions in a real Payload 3: logoutOperation (the Local API has no
// payload.logout) closes that session's sockets with 4003 and only those; logging out of all
// sessions closes them all; a logged-out token can neither reconnect nor be used to refresh.
// Run with SQLite's default (no transactions) and with transactions on (revocation follows the
// commit).

import assert from 'node:assert/strict'
import { test } from 'node:test'

import { createLocalReq, logoutOperation } from 'payload'

import { startPayload } from './payload-fixture.mjs'

const T = { timeout: 120_000 }

/** Logs out the session behind `token` the way Payload's REST logout does. */
async function logout(payload, token, { allSessions = false } = {}) {
  const headers = new Headers({ Authorization: `JWT ${token}` })
  const { user } = await payload.auth({ headers })
  assert.ok(user, 'the token is valid before the logout')
  const req = await createLocalReq({ user, req: { headers } }, payload)
  return logoutOperation({ collection: payload.collections.users, req, allSessions })
}

async function stillOpen(client) {
  const reply = await client.request({ type: 'ping' })
  return client.isOpen && reply.type === 'pong'
}

for (const transactions of [false, true]) {
  const mode = transactions ? 'with transactions' : 'without transactions'

  test(`logging out closes that session's sockets with 4003, and only those (${mode})`, T, async () => {
    const ctx = await startPayload({ transactions })
    try {
      await ctx.createUser('alice@example.com', { team: 'red' })
      await ctx.createUser('bob@example.com', { team: 'red' })
      const laptop = await ctx.login('alice@example.com')
      const phone = await ctx.login('alice@example.com')
      const bob = await ctx.login('bob@example.com')

      const laptop1 = await ctx.connect(laptop.token, { label: 'laptop-1' })
      const laptop2 = await ctx.connect(laptop.token, { label: 'laptop-2' })
      const phone1 = await ctx.connect(phone.token, { label: 'phone' })
      const bob1 = await ctx.connect(bob.token, { label: 'bob' })
      await laptop1.join('posts')

      await logout(ctx.payload, laptop.token)
      assert.equal((await laptop1.waitForClose()).code, 4003)
      assert.equal((await laptop2.waitForClose()).code, 4003)
      assert.ok(await stillOpen(phone1), "alice's other session stays connected")
      assert.ok(await stillOpen(bob1), "bob's socket stays connected")

      const again = await ctx.handshake(laptop.token)
      assert.equal(again.status, 401, 'the logged-out token cannot reconnect')
      assert.equal(again.json?.reason, 'session revoked', 'refused by the remembered revocation')

      // A refresh over an open socket with a logged-out token is refused; with a live one, acked.
      const refused = await phone1.request({ type: 'auth', token: laptop.token })
      assert.equal(refused.type, 'error')
      assert.equal(refused.code, 'forbidden')
      const fresh = await ctx.login('alice@example.com')
      const acked = await phone1.request({ type: 'auth', token: fresh.token })
      assert.equal(acked.type, 'ack')
      assert.ok(await stillOpen(phone1))
    } finally {
      await ctx.close()
    }
  })

  test(`logging out of all sessions closes every socket of that user (${mode})`, T, async () => {
    const ctx = await startPayload({ transactions })
    try {
      await ctx.createUser('alice@example.com')
      await ctx.createUser('bob@example.com')
      const a = await ctx.login('alice@example.com')
      const b = await ctx.login('alice@example.com')
      const bob = await ctx.login('bob@example.com')
      const sa = await ctx.connect(a.token, { label: 'alice-a' })
      const sb = await ctx.connect(b.token, { label: 'alice-b' })
      const sbob = await ctx.connect(bob.token, { label: 'bob' })

      await logout(ctx.payload, a.token, { allSessions: true })
      assert.equal((await sa.waitForClose()).code, 4003)
      assert.equal((await sb.waitForClose()).code, 4003)
      assert.ok(await stillOpen(sbob))
      for (const token of [a.token, b.token]) {
        assert.equal((await ctx.handshake(token)).status, 401)
      }
      const back = await ctx.login('alice@example.com')
      assert.equal((await ctx.handshake(back.token)).status, 101, 'a new login connects again')
    } finally {
      await ctx.close()
    }
  })
}

test('a logout that is rolled back closes the socket but does not lock the session out', T, async () => {
  const ctx = await startPayload({ transactions: true })
  try {
    await ctx.createUser('alice@example.com')
    const a = await ctx.login('alice@example.com')
    const socket = await ctx.connect(a.token)
    const { payload } = ctx
    const headers = new Headers({ Authorization: `JWT ${a.token}` })
    const { user } = await payload.auth({ headers })
    const tx = await payload.db.beginTransaction()
    const req = await createLocalReq({ user, req: { headers, transactionID: tx } }, payload)
    await logoutOperation({ collection: payload.collections.users, req })
    assert.equal((await socket.waitForClose()).code, 4003, 'closed at once: never a live socket after a logout')
    await payload.db.rollbackTransaction(tx)
    const again = await ctx.handshake(a.token)
    assert.equal(again.status, 101, 'the session survived the rolled-back logout, so it may reconnect')
  } finally {
    await ctx.close()
  }
})
