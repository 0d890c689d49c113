// A refused emitEvent has one stable `code`, whether it was emitted alone or with others in the
// same tick, and whatever stage refused it: 'closed' once the server is closing, also for events
// emitted in the same tick as close() (they were 'GenericFailure'). 'server-behind' past
// maxBacklog is checked on every refused event by fanout.test.mjs; a lone event takes the same
// path (a batch of one). The protocol's error codes are one list: lib/errors.js's ERROR_CODES,
// the core's ErrorCode, docs/protocol.md and the client's typings name the same codes.

import assert from 'node:assert/strict'
import { readdirSync, readFileSync } from 'node:fs'
import { createRequire } from 'node:module'
import { join } from 'node:path'
import { test } from 'node:test'
import { fileURLToPath } from 'node:url'

import { startServer } from './helpers.mjs'

const T = { timeout: 60_000 }

test("emitEvent after close(), or in the same tick, rejects with code 'closed'", T, async () => {
  const manager = await startServer({ includeCollections: ['posts'] })
  const alone = manager.emitEvent({ type: 'update', collection: 'posts', id: 1 })
  const batched = [2, 3].map((id) => manager.emitEvent({ type: 'update', collection: 'posts', id }))
  const closing = manager.close()
  for (const p of [alone, ...batched]) {
    await assert.rejects(p, (err) => err.code === 'closed' && /closed/.test(err.message), 'emitted before close()')
  }
  await closing
  await assert.rejects(manager.emitEvent({ type: 'update', collection: 'posts', id: 4 }), { code: 'closed' })
})

const root = fileURLToPath(new URL('..', import.meta.url))

/** The .rs files under `dir`. */
function rustFiles(dir) {
  return readdirSync(dir, { withFileTypes: true }).flatMap((e) =>
    e.isDirectory() ? rustFiles(join(dir, e.name)) : e.name.endsWith('.rs') ? [join(dir, e.name)] : [],
  )
}

test("the protocol's error codes: lib/errors.js, the core, docs/protocol.md and the client's typings agree", () => {
  const { ERROR_CODES } = createRequire(import.meta.url)('../lib/errors.js')
  const js = [...ERROR_CODES].sort()
  const core = new Set()
  for (const file of rustFiles(join(root, 'crates/core/src'))) {
    for (const m of readFileSync(file, 'utf8').matchAll(/ErrorCode::\w+ => "([a-z-]+)"/g)) core.add(m[1])
  }
  assert.deepEqual([...core].sort(), js, "the core's ErrorCode names")
  const protocol = readFileSync(join(root, 'docs/protocol.md'), 'utf8')
  const errors = /- errors: `\{ "type": "error", "code"[^`]*` with `code` one of ([^;]+);/.exec(protocol)
  assert.ok(errors, 'docs/protocol.md lists the error codes')
  assert.deepEqual([...errors[1].matchAll(/`([a-z-]+)`/g)].map((m) => m[1]).sort(), js, 'docs/protocol.md')
  const dts = readFileSync(join(root, 'lib/client/index.d.mts'), 'utf8')
  const union = dts.slice(dts.indexOf('export type ServerErrorCode'), dts.indexOf('(string & {})'))
  assert.deepEqual([...union.matchAll(/\| '([a-z-]+)'/g)].map((m) => m[1]).sort(), js, 'lib/client/index.d.mts')
})
