// The worked example in examples/plugin-system/: real server, real SDK clients over `ws`.
// Installing a plugin streams its progress to the admin who asked, then every admin is told
// about the new collection; an editor gets none of it and may not install.

import assert from 'node:assert/strict'
import { test } from 'node:test'
import WebSocket from 'ws'

import { createRealtimeClient } from '../lib/client/index.mjs'
import { SECRET, makeToken, waitUntil } from './helpers.mjs'
import { start } from '../examples/plugin-system/server.mjs'

const T = { timeout: 60_000 }

function client(port, id, role) {
  const c = createRealtimeClient({
    url: `ws://127.0.0.1:${port}/`,
    token: makeToken({ id, role }),
    WebSocket,
    reconnect: false,
  })
  c.received = []
  c.on('message', (m) => c.received.push(m))
  c.errors = []
  c.on('error', (e) => c.errors.push(e))
  return c
}

test('plugin system: progress to the admin who asked, the new collection to every admin', T, async () => {
  const { manager } = await start({ port: 0, secret: SECRET })
  const clients = []
  try {
    await manager.publish('role:admin', { type: 'nobody-yet' })
    const alice = client(manager.port, 'alice', 'admin')
    const bob = client(manager.port, 'bob', 'admin')
    const eve = client(manager.port, 'eve', 'editor')
    clients.push(alice, bob, eve)
    const added = { alice: [], bob: [], eve: [] }
    alice.subscribe('role:admin.collection-added', (m) => added.alice.push(m))
    bob.subscribe('role:admin.collection-added', (m) => added.bob.push(m))
    eve.subscribe('role:admin.collection-added', (m) => added.eve.push(m))
    await waitUntil(() => manager.getSocketsInRoom('role:admin').length === 2, { label: 'both admins in the room' })
    // The initial state is the first message each admin got.
    await waitUntil(() => alice.received.length > 0 && bob.received.length > 0)
    assert.deepEqual(alice.received[0], { type: 'plugins', installed: [] })
    assert.deepEqual(bob.received[0], { type: 'plugins', installed: [] })
    // The editor's join of the admins' room is refused: reported once.
    await waitUntil(() => eve.errors.length === 1, { label: "the editor's refusal" })
    assert.equal(eve.errors[0].code, 'forbidden')

    const reply = await alice.request('install-plugin', { plugin: 'seo' })
    assert.deepEqual(
      { type: reply.type, plugin: reply.plugin, collection: reply.collection },
      { type: 'plugin-installed', plugin: 'seo', collection: 'seo-items' },
    )
    const progress = (c) => c.received.filter((m) => m.type === 'plugin:install-progress')
    assert.deepEqual(
      progress(alice).map((m) => [m.step, m.percent]),
      [
        ['download', 25],
        ['verify', 50],
        ['migrate', 75],
        ['register', 100],
      ],
    )
    await waitUntil(() => added.alice.length === 1 && added.bob.length === 1, { label: 'every admin told' })
    const announced = {
      type: 'collection-added',
      plugin: 'seo',
      collection: 'seo-items',
      by: 'alice',
      room: 'role:admin',
    }
    assert.deepEqual(added.bob, [announced])
    assert.deepEqual(added.alice, [announced])
    assert.deepEqual(progress(bob), [], 'progress only to the admin who asked')

    await assert.rejects(eve.request('install-plugin', { plugin: 'spam' }), { code: 'forbidden' })
    await assert.rejects(alice.request('install-plugin', { plugin: '../x' }), { code: 'bad-message' })
    // A marker to every socket: the editor got nothing of the admins' before it.
    manager.broadcast({ type: 'marker' })
    await waitUntil(() => eve.received.some((m) => m.type === 'marker'))
    assert.deepEqual(added.eve, [])
    assert.deepEqual(progress(eve), [])
    assert.ok(!eve.received.some((m) => m.type === 'plugins' || m.type === 'collection-added'))

    // An admin who connects later starts from the installed plugins.
    const carol = client(manager.port, 'carol', 'admin')
    clients.push(carol)
    await waitUntil(() => carol.received.length > 0)
    assert.deepEqual(carol.received[0], { type: 'plugins', installed: ['seo'] })
  } finally {
    for (const c of clients) c.disconnect()
    await manager.close()
  }
})
