// payload-realtime as a drop-in for payload-uwebsocket-plugin: each usage example of that
// plugin's README, in the same calls and message shapes, with only the package name changed,
// against a real Payload 3 (SQLite) and real WebSocket clients:
// - "Add Plugin to Payload Config" (enabled, includeCollections, redis from REDIS_URL or
//   undefined, an async authorize rule), then "Initialize WebSocket Server":
//   `await initUWebSocket(3002)` after Payload is up, with no options;
// - "Client Usage": `ws://host:port?token=<token>`, `join-collection` / `leave-collection`
//   messages without ids, update and delete events (a delete's `doc.id`);
// - "Custom Message Handlers": `manager.sendToSocket(ws, {...})` with the socket the handler got;
// - "Broadcasting to Custom Rooms": `broadcastToRoom('room:custom-id', ...)` to a client that
//   joined that room through a custom message ("Custom Room Flow");
// - "Development vs Production": both configs, the production one with REDIS_URL unset;
// - its type names (UWebSocketPluginOptions, ...): `tsc --noEmit` over a file that uses them.

import assert from 'node:assert/strict'
import { execFile } from 'node:child_process'
import { dirname, join } from 'node:path'
import { after, test } from 'node:test'
import { fileURLToPath } from 'node:url'

import { getUWebSocketManager, initUWebSocket, uWebSocketPlugin } from 'payload-realtime'

import { SECRET, connect, freePort, makeToken, registerWhoami, waitUntil } from './helpers.mjs'
import { startPayload } from './payload-fixture.mjs'

const T = { timeout: 180_000 }
const root = join(dirname(fileURLToPath(import.meta.url)), '..')
const cleanups = []
after(async () => {
  for (const c of cleanups.reverse()) await c()
})

const withMedia = (config) => ({
  ...config,
  collections: [...config.collections, { slug: 'media', fields: [{ name: 'alt', type: 'text' }] }],
})

/**
 * Payload with the plugin configured as the old README does (no `port`: the application starts
 * the server), then `initUWebSocket(port)` with nothing else, as its server file does.
 */
async function startOldWay(pluginOptions) {
  const ctx = await startPayload({
    plugin: { port: undefined, host: undefined, ...pluginOptions },
    configure: withMedia,
  })
  cleanups.push(() => ctx.close())
  assert.equal(ctx.manager, null, 'no server until the application starts it')
  const port = await freePort()
  const manager = await initUWebSocket(port)
  cleanups.push(() => manager.close())
  assert.equal(getUWebSocketManager(), manager)
  assert.equal(manager.port, port)
  ctx.manager = manager
  ctx.watch(manager)
  registerWhoami(manager) // the tests' way to learn a socket's id
  return { ctx, manager, port }
}

/** A client the old README's way: the token in the query, no path before it. */
async function oldClient(ctx, port, token) {
  const client = await connect(`ws://127.0.0.1:${port}?token=${token}`)
  ctx.clients.push(client)
  return client
}

const inRoom = (manager, room, client) => manager.getSocketsInRoom(room).some((s) => s.id === client.socketId)

test("the old README's plugin config, initUWebSocket(3002) after Payload, and its client", T, async () => {
  delete process.env.REDIS_URL
  const { ctx, manager, port } = await startOldWay({
    enabled: true,
    includeCollections: ['posts', 'users', 'media'],
    redis: process.env.REDIS_URL ? { url: process.env.REDIS_URL } : undefined,
    authorize: {
      posts: async (user, event) => {
        return event.doc.status === 'published' || event.doc.author === user.id
      },
    },
  })
  const { token } = await ctx.createUser('reader@example.com', { role: 'admin' })
  const client = await oldClient(ctx, port, token)
  await client.whoami()

  client.send(JSON.stringify({ type: 'join-collection', collection: 'posts' }))
  await waitUntil(() => inRoom(manager, 'collection:posts', client), { label: 'the join' })

  const draft = await ctx.payload.create({ collection: 'posts', data: { title: 'draft', status: 'draft' } })
  const post = await ctx.payload.create({ collection: 'posts', data: { title: 'hello', status: 'published' } })
  await ctx.payload.update({ collection: 'posts', id: post.id, data: { title: 'hello again' } })
  const update = await client.waitFor((m) => m.type === 'update' && m.id === post.id)
  assert.equal(update.collection, 'posts')
  assert.equal(update.doc.title, 'hello again')
  await ctx.payload.delete({ collection: 'posts', id: post.id })
  const deleted = await client.waitFor((m) => m.type === 'delete')
  assert.equal(deleted.doc.id, post.id, "a delete's doc.id names the deleted document")
  await ctx.settle([client])
  assert.ok(!client.events('posts').some((e) => e.id === draft.id), 'the authorize rule kept the draft back')

  const seen = client.all.length
  client.send(JSON.stringify({ type: 'leave-collection', collection: 'posts' }))
  await waitUntil(() => !inRoom(manager, 'collection:posts', client), { label: 'the leave' })
  const later = await ctx.payload.create({ collection: 'posts', data: { title: 'later', status: 'published' } })
  await Promise.all(ctx.emitted.map((e) => e.delivered))
  assert.equal(manager.sendToSocket(client.socketId, { type: 'marker' }), true)
  await client.waitFor((m) => m.type === 'marker')
  // (SQLite may give `later` the id of the deleted post: only what came after the leave counts.)
  assert.ok(
    !client.all.slice(seen).some((m) => m.collection === 'posts' && m.id === later.id),
    'nothing after leave-collection',
  )
})

test('custom handler answers with manager.sendToSocket(ws, ...); broadcastToRoom to a custom room', T, async () => {
  const { ctx, port } = await startOldWay({ enabled: true, includeCollections: ['posts', 'users'] })
  const { token } = await ctx.createUser('custom@example.com')
  const client = await oldClient(ctx, port, token)
  const other = await oldClient(ctx, port, (await ctx.createUser('other@example.com')).token)

  // "After initializing the WebSocket server"
  const manager = getUWebSocketManager()
  const received = []
  manager.registerCustomHandler('custom-action', async (ws, data) => {
    received.push(data)
    manager.sendToSocket(ws, {
      type: 'custom-response',
      data: { success: true },
    })
  })
  client.send(JSON.stringify({ type: 'custom-action', value: 42 }))
  const response = await client.waitFor((m) => m.type === 'custom-response')
  assert.deepEqual(response, { type: 'custom-response', data: { success: true } })
  assert.equal(received[0].value, 42)

  // "Custom Room Flow": a custom message puts the user in the room; the server broadcasts to it.
  manager.registerCustomHandler('join-room', (ws, data) => {
    manager.joinRoom(ws.id, data.room)
  })
  await client.whoami()
  client.send(JSON.stringify({ type: 'join-room', room: 'room:custom-id' }))
  await waitUntil(() => inRoom(manager, 'room:custom-id', client), { label: 'the custom room join' })
  manager.broadcastToRoom('room:custom-id', {
    type: 'notification',
    message: 'Hello everyone!',
  })
  const note = await client.waitFor((m) => m.type === 'notification')
  assert.deepEqual(note, { type: 'notification', message: 'Hello everyone!' })
  assert.equal(manager.sendToSocket((await other.whoami()).socketId, { type: 'marker' }), true)
  await other.waitFor((m) => m.type === 'marker')
  assert.ok(!other.all.some((m) => m.type === 'notification'), 'only the room gets it')
})

test('the production config with REDIS_URL unset starts (alone), as does the development one', T, async () => {
  delete process.env.REDIS_URL
  assert.doesNotThrow(() =>
    uWebSocketPlugin({ enabled: true, includeCollections: ['posts', 'users'], redis: { url: process.env.REDIS_URL } }),
  )
  for (const options of [
    { enabled: true, includeCollections: ['posts', 'users'], redis: { url: process.env.REDIS_URL } },
    { enabled: true, includeCollections: ['posts', 'users'] },
  ]) {
    const { ctx, manager, port } = await startOldWay(options)
    assert.equal(manager.stats().redis ?? null, null, 'no Redis: one instance')
    const client = await oldClient(ctx, port, (await ctx.createUser(`p${port}@example.com`, { role: 'admin' })).token)
    await client.join('posts')
    const post = await ctx.payload.create({ collection: 'posts', data: { title: 'prod' } })
    await client.waitFor((m) => m.type === 'create' && m.id === post.id)
  }
})

test("once that Payload is destroyed, a server started later in the process is the application's own", T, async () => {
  // The Payloads of the tests above are gone first: while one still runs, its defaults apply.
  for (const cleanup of cleanups.splice(0).reverse()) await cleanup()
  const ctx = await startPayload({ plugin: { port: undefined, host: undefined }, configure: withMedia })
  await ctx.close()
  // With the plugin's defaults still in force, this server would ask the destroyed Payload's
  // verifyUser (user 'standalone' is in no database) and use its secret instead of ours.
  const manager = await initUWebSocket(0, { host: '127.0.0.1', secret: SECRET, includeCollections: ['posts'] })
  cleanups.push(() => manager.close())
  const client = await connect(`ws://127.0.0.1:${manager.port}/?token=${makeToken({ id: 'standalone' })}`)
  cleanups.push(() => client.close())
  await client.join('posts')
  await manager.emitEvent({ type: 'create', collection: 'posts', id: 1, doc: { title: 'mine' } })
  await client.waitFor((m) => m.type === 'create' && m.id === 1)
})

test("its type names: tsc --noEmit over the old README's usage", T, async () => {
  const tsc = join(root, 'node_modules', 'typescript', 'bin', 'tsc')
  const args = [
    tsc,
    '--noEmit',
    '--strict',
    '--module',
    'nodenext',
    '--moduleResolution',
    'nodenext',
    '--target',
    'es2022',
    '--types',
    'node',
    join(root, '__test__', 'fixtures', 'dropin', 'usage.ts'),
  ]
  const { code, out } = await new Promise((resolve) =>
    execFile(process.execPath, args, { cwd: root }, (err, stdout, stderr) =>
      resolve({ code: err ? err.code : 0, out: stdout + stderr }),
    ),
  )
  assert.equal(code, 0, out)
})
