// Many instances through a real redis-server (started here on loopback ports): exactly-once
// delivery across two Node processes, authorize on the receiving instance, subscriptions only
// where there are local members, surviving a Redis SIGKILL and restart, and a three-master Redis
// Cluster with sharded pub/sub. Without redis-server these tests skip, except in CI
// (PAYLOAD_REALTIME_REQUIRE_ALL=1), where a missing Redis fails (see redis-helpers.mjs).

import assert from 'node:assert/strict'
import { execFileSync } from 'node:child_process'
import { mkdtempSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { after, test } from 'node:test'

import {
  SECRET,
  connect,
  freePort,
  httpGet,
  isEvent,
  makeToken,
  sleep,
  startServer,
  tcpProxy,
  waitUntil,
} from './helpers.mjs'
import { cleanups, cli, redisCli, runCleanups, skip, startInstance, startRedis } from './redis-helpers.mjs'

const T = { timeout: 180_000, skip }
after(runCleanups)

/** A fresh redis-server and two instances on it, A and B (`onlyB`: options for B alone). */
async function twoInstances(options = {}, onlyB = {}) {
  const redis = await startRedis(await freePort())
  const opts = { ...options, redis: { url: `redis://127.0.0.1:${redis.port}` } }
  const a = await startInstance(opts)
  const b = await startInstance({ ...opts, ...onlyB })
  return { redis, a, b }
}

async function client(instance, userId, label) {
  const c = await connect(`ws://127.0.0.1:${instance.port}/`, { token: makeToken({ id: userId }), label })
  cleanups.push(() => c.close())
  return c
}

/**
 * Subscribers of a room's channel on the Redis at `port`. The channel's name starts with the app's
 * prefix, derived from its secret: it is found by its end.
 */
function numsub(port, room, sharded = false) {
  const names = cli(port, 'PUBSUB', sharded ? 'SHARDCHANNELS' : 'CHANNELS', `*:room:${room}`)
    .split('\n')
    .filter(Boolean)
  let n = 0
  for (const name of names) n += Number(cli(port, 'PUBSUB', sharded ? 'SHARDNUMSUB' : 'NUMSUB', name).split('\n')[1])
  return n
}

const eventsFrom = (c, from) => c.events('posts').filter((e) => e.doc?.from === from)

test('two instances: every socket gets each of 1,000 events exactly once, in order per emitter', T, async () => {
  const { redis, a, b } = await twoInstances({}, { denyUsers: ['mallory'] })
  const onA = [await client(a, 'u1', 'a1'), await client(a, 'u2', 'a2')]
  const onB = [await client(b, 'u1', 'b1'), await client(b, 'u3', 'b2')]
  const mallory = await client(b, 'mallory', 'mallory')
  for (const c of [...onA, ...onB, mallory]) await c.join('posts')
  await waitUntil(() => numsub(redis.port, 'collection:posts') === 2, { label: 'both instances subscribed' })

  await Promise.all([a.call('emit', { n: 500, from: 'A' }), b.call('emit', { n: 500, from: 'B' })])
  for (const c of [...onA, ...onB]) {
    await waitUntil(() => c.events('posts').length >= 1000, { label: `${c.label} to get 1,000 events` })
  }
  // A marker after everything: anything late or duplicated would arrive before it.
  await a.call('broadcast', { room: 'collection:posts', message: { type: 'marker' } })
  for (const c of [...onA, ...onB]) {
    await c.waitFor((m) => m.type === 'marker')
    for (const from of ['A', 'B']) {
      const seqs = eventsFrom(c, from).map((e) => e.doc.seq)
      assert.deepEqual(
        seqs,
        Array.from({ length: 500 }, (_, i) => i),
        `${c.label}: events from ${from} once each, in order`,
      )
    }
  }
  // authorize runs on the instance that holds the socket, for events from either instance.
  await mallory.waitFor((m) => m.type === 'marker')
  assert.equal(mallory.events('posts').length, 0)
  const bStats = await b.call('stats')
  assert.ok(
    bStats.authorizeCalls >= 1000,
    `B asked its authorize rule for both emitters' events (${bStats.authorizeCalls})`,
  )
  const aStats = await a.stats()
  assert.equal(aStats.redis.connected, true)
  assert.ok(aStats.redis.published >= 500)
})

test('an instance with no local member in a room gets no pub/sub traffic for it', T, async () => {
  const { redis, a, b } = await twoInstances()
  const onA = await client(a, 'u1', 'a1')
  const onB = await client(b, 'u2', 'b1')
  await onA.join('posts')
  await waitUntil(() => numsub(redis.port, 'collection:posts') === 1, { label: 'A subscribed' })
  const before = (await b.stats()).redis.received
  await a.call('emit', { n: 100, from: 'A' })
  await waitUntil(() => onA.events('posts').length === 100, { label: 'A-local delivery' })
  await sleep(200)
  assert.equal((await b.stats()).redis.received, before, 'B received nothing for a room it has no member in')
  assert.equal((await b.stats()).redis.subscriptions, 0)

  // B's socket joins: B subscribes; it leaves: B unsubscribes.
  await onB.join('posts')
  await waitUntil(() => numsub(redis.port, 'collection:posts') === 2, { label: 'B subscribed' })
  onB.send({ type: 'leave-collection', collection: 'posts' })
  await waitUntil(() => numsub(redis.port, 'collection:posts') === 1, { label: 'B unsubscribed' })
})

test(
  'a join is acked once its instance hears the room: an event emitted elsewhere right after reaches it',
  T,
  async () => {
    const redis = await startRedis(await freePort())
    // A's subscription takes 2 x 150 ms to be confirmed; B publishes to Redis directly.
    const slow = await tcpProxy(redis.port, { delay: 150 })
    cleanups.push(() => slow.close())
    const a = await startInstance({
      redis: { url: `redis://127.0.0.1:${slow.port}` },
      history: { posts: { size: 100 } },
      allowRooms: ['chat:*'],
    })
    const b = await startInstance({
      redis: { url: `redis://127.0.0.1:${redis.port}` },
      history: { posts: { size: 100 } },
    })
    await waitUntil(async () => (await a.stats()).redis.connected, { label: 'A connected to Redis' })
    const onA = await client(a, 'u1', 'a1')

    // A collection (its history in Redis): the event B emits once the ack is here reaches A.
    const ack = await onA.request({ type: 'join-collection', collection: 'posts' })
    assert.equal(ack.type, 'ack')
    assert.equal(numsub(redis.port, 'collection:posts'), 1, 'subscribed before the ack')
    await b.call('emit', { n: 1, from: 'B' })
    const event = await onA.waitFor(isEvent, { label: "B's event on A" })
    assert.equal(event.doc.from, 'B')
    assert.equal(event.offset, ack.positions.posts.offset + 1, 'the first event after the position the ack gave')

    // A collection without history, and an app room: the same.
    const pages = await onA.request({ type: 'join-collection', collection: 'pages' })
    assert.equal(pages.type, 'ack')
    assert.equal(numsub(redis.port, 'collection:pages'), 1, 'subscribed before the ack')
    await b.call('emit', { n: 1, from: 'B', collection: 'pages' })
    assert.equal(
      (await onA.waitFor((m) => isEvent(m) && m.collection === 'pages', { label: "B's pages event" })).doc.from,
      'B',
    )
    const room = await onA.request({ type: 'join', room: 'chat:1' })
    assert.equal(room.type, 'ack')
    await b.call('publish', { room: 'chat:1', message: { type: 'said', text: 'hi' } })
    assert.equal((await onA.waitFor((m) => m.type === 'said', { label: "B's app event" })).room, 'chat:1')

    // A second member of a room already heard is acked too; once every member left, the room
    // is unsubscribed, and joining it again subscribes again before the ack.
    const other = await client(a, 'u2', 'a2')
    await other.join('posts')
    await b.call('emit', { n: 1, from: 'B', start: 1 })
    assert.equal((await other.waitFor(isEvent, { label: "B's event on the second member" })).doc.seq, 1)
    for (const c of [onA, other]) await c.request({ type: 'leave-collection', collection: 'posts' })
    await waitUntil(() => numsub(redis.port, 'collection:posts') === 0, { label: 'A unsubscribed' })
    await onA.join('posts')
    assert.equal(numsub(redis.port, 'collection:posts'), 1, 'subscribed again before the ack')
    await b.call('emit', { n: 1, from: 'B', start: 2 })
    await onA.waitFor((m) => isEvent(m) && m.doc?.seq === 2, { label: 'the event after joining again' })
  },
)

test('sendToSocket, broadcast with except and logout revocation cross instances', T, async () => {
  const { redis, a, b } = await twoInstances()
  const onB = await client(b, 'u1', 'b1')
  const onB2 = await client(b, 'u2', 'b2')
  const sid = 'session-1'
  const revoked = await connect(`ws://127.0.0.1:${b.port}/`, { token: makeToken({ id: 'u9', sid }), label: 'b9' })
  cleanups.push(() => revoked.close())
  const { socketId } = await onB.whoami()
  await onB.join('posts')
  await onB2.join('posts')
  await waitUntil(() => numsub(redis.port, 'collection:posts') === 1, { label: 'B subscribed' })

  assert.equal((await a.call('send', { socketId, message: { type: 'direct', n: 1 } })).ok, true)
  await onB.waitFor((m) => m.type === 'direct' && m.n === 1)

  await a.call('broadcast', { room: 'collection:posts', message: { type: 'hello' }, except: socketId })
  await onB2.waitFor((m) => m.type === 'hello')
  await a.call('broadcast', { room: 'collection:posts', message: { type: 'after' } })
  await onB.waitFor((m) => m.type === 'after')
  assert.equal(onB.all.filter((m) => m.type === 'hello').length, 0, 'the excepted socket got nothing')

  await a.call('revoke', { collection: 'users', id: 'u9', sid })
  assert.equal((await revoked.waitForClose()).code, 4003)
})

test(
  'Redis killed with SIGKILL: local delivery goes on; after a restart cross-instance delivery resumes without duplicates',
  T,
  async () => {
    const port = await freePort()
    let redis = await startRedis(port)
    const url = `redis://127.0.0.1:${port}`
    const a = await startInstance({ redis: { url } })
    const b = await startInstance({ redis: { url } })
    const onA = await client(a, 'u1', 'a1')
    const onB = await client(b, 'u2', 'b1')
    await onA.join('posts')
    await onB.join('posts')
    await waitUntil(() => numsub(port, 'collection:posts') === 2, { label: 'both subscribed' })

    await a.call('emit', { n: 50, from: 'A', start: 0 })
    await waitUntil(() => eventsFrom(onB, 'A').length === 50, { label: 'B got the first 50' })

    await redis.kill()
    // While Redis is down, A's local socket still gets every event and nothing crashes.
    await a.call('emit', { n: 50, from: 'A', start: 50 })
    await waitUntil(() => eventsFrom(onA, 'A').length === 100, { label: 'A-local delivery during the outage' })
    await waitUntil(async () => (await a.stats()).redis.connected === false, { label: 'A sees Redis down' })
    await waitUntil(async () => (await a.stats()).redis.errors >= 1, { label: 'failed publishes counted' })

    redis = await startRedis(port)
    await waitUntil(() => numsub(port, 'collection:posts') === 2, { label: 'subscriptions restored', timeout: 30_000 })
    await waitUntil(async () => (await a.stats()).redis.connected, { label: 'A reconnected' })
    await a.call('emit', { n: 50, from: 'A', start: 100 })
    await waitUntil(() => eventsFrom(onB, 'A').filter((e) => e.doc.seq >= 100).length === 50, {
      label: 'B gets events again',
    })
    await a.call('broadcast', { room: 'collection:posts', message: { type: 'marker' } })
    await onB.waitFor((m) => m.type === 'marker')
    const seqs = eventsFrom(onB, 'A').map((e) => e.doc.seq)
    assert.equal(new Set(seqs).size, seqs.length, 'no duplicates')
    assert.deepEqual(
      seqs.filter((s) => s < 50 || s >= 100),
      [...Array.from({ length: 50 }, (_, i) => i), ...Array.from({ length: 50 }, (_, i) => 100 + i)],
    )
    assert.equal(onA.isOpen, true)
    assert.equal(onB.isOpen, true)
  },
)

test('a three-master Redis Cluster: delivery across instances through sharded pub/sub', T, async () => {
  const dir = mkdtempSync(join(tmpdir(), 'prt-cluster-'))
  cleanups.push(() => rmSync(dir, { recursive: true, force: true }))
  const ports = [await freePort(), await freePort(), await freePort()]
  for (const p of ports) {
    await startRedis(
      p,
      ['--cluster-enabled', 'yes', '--cluster-config-file', `nodes-${p}.conf`, '--cluster-node-timeout', '2000'],
      dir,
    )
  }
  execFileSync(redisCli, [
    '--cluster',
    'create',
    ...ports.map((p) => `127.0.0.1:${p}`),
    '--cluster-replicas',
    '0',
    '--cluster-yes',
  ])
  await waitUntil(() => ports.every((p) => cli(p, 'CLUSTER', 'INFO').includes('cluster_state:ok')), {
    label: 'the cluster to be ready',
    timeout: 30_000,
  })
  const url = `redis-cluster://127.0.0.1:${ports[0]}`
  const a = await startInstance({ redis: { url } })
  const b = await startInstance({ redis: { url } })
  // Handshakes ask the cluster about revoked sessions: each instance has reached it first.
  for (const i of [a, b]) await waitUntil(async () => (await i.stats()).redis.connected, { label: 'connected' })
  const onA = await client(a, 'u1', 'a1')
  const onB = await client(b, 'u2', 'b1')
  await onA.join('posts')
  await onB.join('posts')
  const shardSubs = () => ports.reduce((n, p) => n + numsub(p, 'collection:posts', true), 0)
  await waitUntil(() => shardSubs() === 2, { label: 'sharded subscriptions on the cluster', timeout: 30_000 })

  await a.call('emit', { n: 100, from: 'A' })
  await b.call('emit', { n: 100, from: 'B' })
  for (const c of [onA, onB]) {
    await waitUntil(() => c.events('posts').length === 200, { label: `${c.label} gets 200 events` })
    for (const from of ['A', 'B']) {
      assert.deepEqual(
        eventsFrom(c, from).map((e) => e.doc.seq),
        Array.from({ length: 100 }, (_, i) => i),
      )
    }
  }
})

test('an instance started before Redis connects once Redis is up, and delivers across instances', T, async () => {
  const port = await freePort()
  const url = `redis://127.0.0.1:${port}`
  const early = await startServer({ includeCollections: ['posts'], redis: { url } })
  cleanups.push(() => early.close())
  assert.equal((await httpGet(early.port, '/readyz')).status, 503, 'not ready without Redis')
  await sleep(1500) // its first attempts fail
  await startRedis(port)
  await waitUntil(async () => (await httpGet(early.port, '/readyz')).status === 200, { label: 'early instance ready' })
  assert.equal(early.stats().redis.connected, true)

  const late = await startServer({ includeCollections: ['posts'], redis: { url } })
  cleanups.push(() => late.close())
  const reader = await connect(`ws://127.0.0.1:${early.port}/`, { token: makeToken({ id: 'r' }) })
  cleanups.push(() => reader.close())
  await reader.join('posts')
  await waitUntil(() => early.stats().redis.subscriptions === 1, { label: 'subscribed to the room' })
  await late.emitEvent({ type: 'create', collection: 'posts', id: 7 })
  assert.equal((await reader.waitFor(isEvent)).id, 7)
})

test('a bad Redis URL fails initUWebSocket with a clear error', async () => {
  const { initUWebSocket } = await import('../index.mjs')
  await assert.rejects(
    initUWebSocket(0, { host: '127.0.0.1', secret: SECRET, redis: { url: 'not a url' } }),
    /redis\.url/,
  )
  await assert.rejects(initUWebSocket(0, { host: '127.0.0.1', redis: { host: 'x' } }), /redis/)
  // The old plugin's production config with REDIS_URL unset runs alone.
  const saved = process.env.REDIS_URL
  delete process.env.REDIS_URL
  try {
    const alone = await initUWebSocket(0, { host: '127.0.0.1', secret: SECRET, redis: { url: process.env.REDIS_URL } })
    assert.equal(alone.stats().redis, undefined)
    await alone.close()
  } finally {
    if (saved !== undefined) process.env.REDIS_URL = saved
  }
})

test(
  'presence across two instances: joins and leaves seen by all; a killed instance leaves within the expiry',
  T,
  async () => {
    const { redis, a, b } = await twoInstances({ presence: true, presenceExpiry: 1500 })
    const u1 = await client(a, 'u1', 'u1@A')
    await u1.join('posts')
    await waitUntil(() => numsub(redis.port, 'collection:posts') === 1, { label: 'A subscribed' })
    const u2 = await client(b, 'u2', 'u2@B')
    await u2.join('posts')
    await u1.waitFor((m) => m.type === 'presence-join' && m.user.id === 'u2')
    const u3 = await client(b, 'u3', 'u3@B')
    await u3.join('posts')
    await u1.waitFor((m) => m.type === 'presence-join' && m.user.id === 'u3')
    await u2.waitFor((m) => m.type === 'presence-join' && m.user.id === 'u3')
    // B learned of u1 (through its sync when it subscribed).
    await waitUntil(
      async () => {
        const r = await u2.request({ type: 'presence', collection: 'posts' })
        return (
          r.members
            .map((m) => m.id)
            .sort()
            .join() === 'u1,u2,u3'
        )
      },
      { label: 'B sees all three' },
    )
    const fromA = await u1.request({ type: 'presence', collection: 'posts' })
    assert.deepEqual(fromA.members.map((m) => m.id).sort(), ['u1', 'u2', 'u3'])

    // u3 leaves: seen on A too.
    u3.send({ type: 'leave-collection', collection: 'posts' })
    await u1.waitFor((m) => m.type === 'presence-leave' && m.user.id === 'u3')

    // B dies: its users leave for A's sockets within the expiry.
    b.child.kill('SIGKILL')
    await b.exited
    await u1.waitFor((m) => m.type === 'presence-leave' && m.user.id === 'u2', { timeout: 15_000 })
    const after = await u1.request({ type: 'presence', collection: 'posts' })
    assert.deepEqual(
      after.members.map((m) => m.id),
      ['u1'],
    )
  },
)

test(
  'recovery across instances: a client drops from A, reconnects to B with since, gets exactly what it missed',
  T,
  async () => {
    const { redis, a, b } = await twoInstances({ history: { size: 500 }, maxMessagesPerSecond: 0 })
    const watcher = await client(b, 'w', 'watcher@B')
    await watcher.join('posts')
    const first = await client(a, 'u', 'u@A')
    const ack = await first.request({ type: 'join-collection', collection: 'posts' })
    const { epoch } = ack.positions.posts
    await waitUntil(() => numsub(redis.port, 'collection:posts') === 2, { label: 'both subscribed' })
    await a.call('emit', { n: 10, from: 'A', start: 0 })
    await waitUntil(() => first.events('posts').length === 10)
    const seen = first.events('posts').map((e) => e.offset)
    assert.deepEqual(
      seen,
      Array.from({ length: 10 }, (_, i) => i + 1),
      'offsets from Redis, 1..10',
    )
    first.ws.terminate()
    await first.waitForClose()

    // 50 events while away, from both instances; offsets are the same everywhere.
    await a.call('emit', { n: 25, from: 'A', start: 10 })
    await b.call('emit', { n: 25, from: 'B', start: 0 })
    await waitUntil(() => watcher.events('posts').length === 60, { label: 'the watcher on B got all 60' })
    assert.deepEqual(
      watcher.events('posts').map((e) => e.offset),
      Array.from({ length: 60 }, (_, i) => i + 1),
    )

    const again = await client(b, 'u', 'u@B')
    const emitting = a.call('emit', { n: 20, from: 'A', start: 35 }) // live events during the recovery
    const reply = await again.request({ type: 'join-collection', collection: 'posts', since: { offset: 10, epoch } })
    assert.equal(reply.recovered, true)
    await emitting
    await waitUntil(() => again.events('posts').length >= 70, { label: 'missed and live events' })
    await a.call('broadcast', { room: 'collection:posts', message: { type: 'marker' } })
    await again.waitFor((m) => m.type === 'marker')
    assert.deepEqual(
      again.events('posts').map((e) => e.offset),
      Array.from({ length: 70 }, (_, i) => i + 11),
      'exactly the 50 missed, then live, no gap, no duplicate',
    )
    assert.ok(again.events('posts').every((e) => e.epoch === epoch))

    // A position from another epoch fails.
    const other = await client(a, 'v', 'v@A')
    const bad = await other.request({
      type: 'join-collection',
      collection: 'posts',
      since: { offset: 3, epoch: 'nope' },
    })
    assert.equal(bad.recovered, false)
    assert.equal((await other.waitFor((m) => m.type === 'recovery-failed')).reason, 'EpochChanged')
  },
)

test(
  'two apps with different secrets on one Redis see nothing of each other; a forged envelope is dropped and counted',
  T,
  async () => {
    const redis = await startRedis(await freePort())
    const url = `redis://127.0.0.1:${redis.port}`
    const [secretA, secretB] = ['app-a-secret-8d1f', 'app-b-secret-3c9e']
    const a1 = await startInstance({ secret: secretA, redis: { url } })
    const a2 = await startInstance({ secret: secretA, redis: { url } })
    const b = await startInstance({ secret: secretB, redis: { url } })
    // The same user id and session in both apps.
    const on = async (instance, secret, label) => {
      const c = await connect(`ws://127.0.0.1:${instance.port}/`, {
        token: makeToken({ id: 'u1', sid: 's1' }, { secret }),
        label,
      })
      cleanups.push(() => c.close())
      await c.join('posts')
      return c
    }
    const onA2 = await on(a2, secretA, 'a2')
    const onB = await on(b, secretB, 'b')
    await waitUntil(() => numsub(redis.port, 'collection:posts') === 2, { label: 'A2 and B subscribed' })

    await a1.call('emit', { n: 5, from: 'A' })
    await waitUntil(() => eventsFrom(onA2, 'A').length === 5, { label: "app A's events on A2" })
    await b.call('emit', { n: 3, from: 'B' })
    await waitUntil(() => eventsFrom(onB, 'B').length === 3, { label: "app B's own events" })
    // Redis delivers in order: B's own echo came after anything of A's could have.
    await waitUntil(async () => (await b.stats()).redis.received === 3, { label: "B's echo" })
    assert.equal((await b.stats()).redis.received, 3, 'B received nothing published by app A')
    assert.equal(eventsFrom(onB, 'A').length, 0)
    assert.equal(eventsFrom(onA2, 'B').length, 0)

    // Logging out users:u1 (session s1) in app A closes it there only.
    await a1.call('revoke', { collection: 'users', id: 'u1', sid: 's1' })
    assert.equal((await onA2.waitForClose()).code, 4003)

    // A forged revocation on every app's control channel, as someone with access to Redis but
    // not the secret would write it: dropped and counted by every instance.
    const controls = cli(redis.port, 'PUBSUB', 'CHANNELS', '*control').split('\n').filter(Boolean)
    assert.equal(controls.length, 2, `one control channel per app: ${controls}`)
    const forged = JSON.stringify({ v: 1, from: 'elsewhere', kind: 'revoke', user: 'users:u1', sid: 's1' })
    for (const name of controls) cli(redis.port, 'PUBLISH', name, forged)
    for (const instance of [a1, a2, b]) {
      await waitUntil(async () => (await instance.stats()).redis.rejected === 1, {
        label: 'the forged envelope counted',
      })
    }
    assert.equal((await onB.whoami()).user.id, 'u1', "B's socket is still open")
    await b.call('emit', { n: 1, start: 3, from: 'B' })
    await waitUntil(() => eventsFrom(onB, 'B').length === 4, { label: 'B still delivers' })
  },
)

test(
  'presence of app rooms across two instances: joins, leaves and the member list; a killed instance leaves',
  T,
  async () => {
    const { redis, a, b } = await twoInstances({
      allowRooms: ['role:*'],
      presence: ['role:*'],
      presenceExpiry: 1500,
    })
    const members = async (c) =>
      (await c.request({ type: 'presence', room: 'role:admin' })).members.map((m) => m.id).sort()
    const u1 = await client(a, 'u1', 'u1@A')
    assert.equal((await u1.request({ type: 'join', room: 'role:admin' })).type, 'ack')
    await waitUntil(() => numsub(redis.port, 'role:admin') === 1, { label: 'A subscribed' })
    const u2 = await client(b, 'u2', 'u2@B')
    assert.equal((await u2.request({ type: 'join', room: 'role:admin' })).type, 'ack')
    const joined = await u1.waitFor((m) => m.type === 'presence-join' && m.user.id === 'u2')
    assert.deepEqual(joined, { type: 'presence-join', room: 'role:admin', user: { id: 'u2', collection: 'users' } })
    const u3 = await client(b, 'u3', 'u3@B')
    assert.equal((await u3.request({ type: 'join', room: 'role:admin' })).type, 'ack')
    await u1.waitFor((m) => m.type === 'presence-join' && m.user.id === 'u3')
    await u2.waitFor((m) => m.type === 'presence-join' && m.user.id === 'u3')
    // Each instance lists the members of both (B learned of u1 when it subscribed).
    await waitUntil(async () => (await members(u2)).join() === 'u1,u2,u3', { label: 'B sees all three' })
    assert.deepEqual(await members(u1), ['u1', 'u2', 'u3'])
    // App events published on A reach B's members with the room.
    await a.call('publish', { room: 'role:admin', message: { type: 'memo', n: 1 } })
    assert.deepEqual(await u3.waitFor((m) => m.type === 'memo'), { type: 'memo', n: 1, room: 'role:admin' })

    // u3 leaves: seen on A, and gone from both lists.
    assert.equal((await u3.request({ type: 'leave', room: 'role:admin' })).type, 'ack')
    await u1.waitFor((m) => m.type === 'presence-leave' && m.user.id === 'u3')
    assert.deepEqual(await members(u1), ['u1', 'u2'])
    assert.deepEqual(await members(u2), ['u1', 'u2'])

    // B dies: its users leave for A's sockets within the expiry.
    b.child.kill('SIGKILL')
    await b.exited
    await u1.waitFor((m) => m.type === 'presence-leave' && m.user.id === 'u2', { timeout: 15_000 })
    assert.deepEqual(await members(u1), ['u1'])
  },
)
