// Sessions across instances, with real Payload 3 processes and a real redis-server: a logout made
// while Redis restarts still holds on another instance, a user revoked as a whole is refused by
// an instance started afterwards, an instance closes an open revoked socket once Redis is back,
// and a user demoted on one instance stops receiving, on another, what it may no longer read.
//
// Instance B of the revocation tests is a server without Payload (same secret, same Redis): it
// has no `verifyUser`, so only the stored revocations can refuse a logged-out token there.

import assert from 'node:assert/strict'
import { randomBytes } from 'node:crypto'
import { mkdtempSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { after, test } from 'node:test'

import { connect, freePort, handshake, sleep, waitUntil } from './helpers.mjs'
import { cleanups, runCleanups, skip, startChild, startInstance, startRedis } from './redis-helpers.mjs'

const T = { timeout: 240_000, skip }
after(runCleanups)

/** One app: a secret, a SQLite file and a Redis its instances share. */
async function app() {
  const redis = await startRedis(await freePort())
  const dir = mkdtempSync(join(tmpdir(), 'prt-sessions-'))
  cleanups.push(() => rmSync(dir, { recursive: true, force: true }))
  return {
    redis,
    secret: randomBytes(24).toString('hex'),
    dbFile: join(dir, 'app.db'),
    url: `redis://127.0.0.1:${redis.port}`,
  }
}

function payloadInstance({ secret, dbFile, url }) {
  return startChild('payload-instance.mjs', { PAYLOAD_INSTANCE: JSON.stringify({ secret, dbFile, redisUrl: url }) })
}

function plainInstance({ secret, url }) {
  return startInstance({ secret, redis: { url } })
}

async function call(instance, cmd, args) {
  const r = await instance.call(cmd, args)
  assert.equal(r.error, undefined, `${cmd}: ${r.error}`)
  return r
}

async function tryHandshake(instance, token) {
  const r = await handshake(`ws://127.0.0.1:${instance.port}/`, { token })
  if (r.client) cleanups.push(() => r.client.close())
  return r
}

async function socket(instance, token, label) {
  const c = await connect(`ws://127.0.0.1:${instance.port}/`, { token, label })
  cleanups.push(() => c.close())
  return c
}

test('a logout on A while Redis restarts is refused on B afterwards, and B closes its open socket', T, async () => {
  const shared = await app()
  const a = await payloadInstance(shared)
  const b = await plainInstance(shared)
  await call(a, 'createUser', { email: 'alice@example.com' })
  const laptop = await call(a, 'login', { email: 'alice@example.com' })
  const phone = await call(a, 'login', { email: 'alice@example.com' })
  const open = await socket(b, laptop.token, 'laptop on B')
  assert.equal((await open.request({ type: 'ping' })).type, 'pong')

  // Redis goes away; the logout is made on A meanwhile. Its announcement cannot reach B.
  await shared.redis.kill()
  await waitUntil(async () => (await a.stats()).redis.connected === false, { label: 'A sees Redis down' })
  await call(a, 'logout', { token: laptop.token })
  assert.ok((await a.stats()).sessions.pending >= 1, 'the revocation waits for Redis')
  assert.equal((await open.request({ type: 'ping' })).type, 'pong', 'B has not heard of it yet')
  // Fail closed: B cannot ask the store, so it accepts no session at all.
  const down = await tryHandshake(b, phone.token)
  assert.equal(down.status, 503)
  assert.equal(down.json?.error, 'unavailable')
  assert.ok((await b.stats()).sessions.checkFailures >= 1)

  // Redis is back on the same port, empty: A writes its pending revocation again, and B closes
  // the open socket of the logged-out session (its check after the reconnect, or A's announcement).
  shared.redis = await startRedis(shared.redis.port)
  await waitUntil(async () => (await a.stats()).sessions.pending === 0, { label: "A's pending revocation written" })
  assert.equal((await open.waitForClose()).code, 4003)

  const refused = await tryHandshake(b, laptop.token)
  assert.equal(refused.status, 401)
  assert.deepEqual(refused.json, { error: 'unauthorized', reason: 'session revoked' })
  // A newly started instance has heard nothing: it finds the revocation in Redis.
  const c = await plainInstance(shared)
  assert.equal((await tryHandshake(c, laptop.token)).status, 401)
  // The user's other session is not affected.
  assert.equal((await tryHandshake(b, phone.token)).status, 101)
  assert.equal((await tryHandshake(c, phone.token)).status, 101)
})

test('a user revoked as a whole on A is refused by an instance that started afterwards', T, async () => {
  const shared = await app()
  const a = await payloadInstance(shared)
  const b = await plainInstance(shared)
  await call(a, 'createUser', { email: 'bob@example.com' })
  const one = await call(a, 'login', { email: 'bob@example.com' })
  const two = await call(a, 'login', { email: 'bob@example.com' })
  const onB = await socket(b, two.token, 'bob on B')

  await call(a, 'logout', { token: one.token, allSessions: true })
  const revokedAt = Math.floor(Date.now() / 1000)
  assert.equal((await onB.waitForClose()).code, 4003, 'B closes the open socket (announced over Redis)')
  await waitUntil(async () => (await a.stats()).sessions.pending === 0, { label: 'written to Redis' })

  // C never heard the announcement: only the store can tell it.
  const c = await plainInstance(shared)
  for (const t of [one.token, two.token]) {
    const r = await tryHandshake(c, t)
    assert.equal(r.status, 401)
    assert.equal(r.json?.reason, 'session revoked')
  }
  // A token issued after the revocation is accepted (a token of its very second may be either
  // side of it: an instance without Payload's verifyUser refuses it).
  while (Math.floor(Date.now() / 1000) <= revokedAt) await sleep(50)
  const again = await call(a, 'login', { email: 'bob@example.com' })
  assert.equal((await tryHandshake(c, again.token)).status, 101)
})

test('a user demoted on A stops receiving on B what it may no longer read; others still get it', T, async () => {
  const shared = await app()
  const a = await payloadInstance(shared)
  const b = await payloadInstance(shared)
  await call(a, 'createUser', { email: 'boss@example.com', data: { role: 'admin', team: 'red' } })
  await call(a, 'createUser', { email: 'carol@example.com', data: { role: 'admin', team: 'red' } })
  const boss = await call(a, 'login', { email: 'boss@example.com' })
  const carol = await call(a, 'login', { email: 'carol@example.com' })
  const bossOnB = await socket(b, boss.token, 'boss on B')
  const carolOnB = await socket(b, carol.token, 'carol on B')
  for (const c of [bossOnB, carolOnB]) await c.join('posts')

  let barrier = 0
  const settle = async () => {
    const marker = `barrier-${++barrier}`
    await call(b, 'barrier', { room: 'collection:posts', message: { type: 'barrier', marker } })
    for (const c of [bossOnB, carolOnB]) await c.waitFor((m) => m.type === 'barrier' && m.marker === marker)
  }
  const blue = (c) =>
    c
      .events('posts')
      .filter((m) => m.doc?.team === 'blue')
      .map((m) => m.doc.title)

  // As an admin, carol reads another team's posts.
  await call(b, 'createPost', { data: { title: 'before', team: 'blue' } })
  await settle()
  assert.deepEqual(blue(carolOnB), ['before'])

  // Demoted on A: B hears of it over Redis and judges carol's read access as she is now.
  await call(a, 'updateUser', { id: carol.id, data: { role: 'member' } })
  await waitUntil(
    async () => {
      const { sockets } = await call(b, 'sockets', { room: 'collection:posts' })
      return sockets.some((s) => s.user?.email === 'carol@example.com' && s.user.role === 'member')
    },
    { label: "B to see carol's new role" },
  )
  await call(b, 'createPost', { data: { title: 'after', team: 'blue' } })
  await settle()
  assert.deepEqual(blue(carolOnB), ['before'], 'carol no longer receives blue posts')
  assert.deepEqual(blue(bossOnB), ['before', 'after'], 'the admin still does')
  assert.equal(carolOnB.isOpen, true)
})
