// Every option is defined once (lib/manager.js SERVER_OPTIONS and PLUGIN_OPTIONS) and the rest
// follows or is checked here: the typings declare the same names, the README's table lists every
// server option, a misspelt option is an error, and the plugin hands every server option on
// (history, presence and presenceExpiry were once dropped on the way).

import assert from 'node:assert/strict'
import { readFileSync } from 'node:fs'
import { dirname, join } from 'node:path'
import { test } from 'node:test'
import { fileURLToPath } from 'node:url'
import { createRequire } from 'node:module'

import { startServer } from './helpers.mjs'
import { startPayload } from './payload-fixture.mjs'

const root = join(dirname(fileURLToPath(import.meta.url)), '..')
const { SERVER_OPTIONS, PLUGIN_OPTIONS } = createRequire(import.meta.url)('../lib/manager.js')

/** The property names an interface of index.d.ts declares itself. */
function declared(name) {
  const dts = readFileSync(join(root, 'index.d.ts'), 'utf8')
  const start = dts.indexOf(`export interface ${name} `)
  assert.ok(start >= 0, `index.d.ts declares ${name}`)
  const body = dts.slice(dts.indexOf('{', start) + 1, dts.indexOf('\n}', start))
  return [...body.matchAll(/^ {2}(\w+)\??:/gm)].map((m) => m[1]).sort()
}

test('the typings declare exactly the options the server and the plugin read', () => {
  assert.deepEqual(declared('ServerOptions'), [...SERVER_OPTIONS].sort())
  assert.deepEqual(declared('PluginOptions'), [...PLUGIN_OPTIONS].sort())
})

test("the README's option table has a row for every server option", () => {
  const readme = readFileSync(join(root, 'README.md'), 'utf8')
  const rows = new Set([...readme.matchAll(/^\| `(\w+)` \|/gm)].map((m) => m[1]))
  const missing = SERVER_OPTIONS.filter((o) => !rows.has(o))
  assert.deepEqual(missing, [], `README.md's option table lacks ${missing.join(', ')}`)
})

test('a misspelt option is an error that names it', async () => {
  await assert.rejects(startServer({ allowedOrigin: ['https://app.example'] }), /unknown option `allowedOrigin`/)
  // The plugin's own options may come along (initUWebSocket(port, pluginOptions)).
  const m = await startServer({ enabled: true, readAccess: false })
  await m.close()
})

test('the plugin hands history, presence and presenceExpiry on to the server', { timeout: 120_000 }, async () => {
  const ctx = await startPayload({ plugin: { history: { size: 5 }, presence: true, presenceExpiry: 1000 } })
  try {
    const { token } = await ctx.createUser('a@example.com', { role: 'admin' })
    const client = await ctx.connect(token)
    const ack = await client.request({ type: 'join-collection', collection: 'posts' })
    assert.equal(ack.type, 'ack')
    assert.ok(ack.positions?.posts, `history: the ack carries the room's position: ${JSON.stringify(ack)}`)
    const presence = await client.request({ type: 'presence', collection: 'posts' })
    assert.equal(presence.type, 'presence', JSON.stringify(presence))
    assert.equal(presence.members.length, 1)
  } finally {
    await ctx.close()
  }
})
