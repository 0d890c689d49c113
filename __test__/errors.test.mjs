// A refused emitEvent has one stable `code`, whether it was emitted alone or with others in the
// same tick, and whatever stage refused it: 'closed' once the server is closing, also for events
// emitted in the same tick as close() (they were 'GenericFailure'). 'server-behind' past
// maxBacklog is checked on every refused event by fanout.test.mjs; a lone event takes the same
// path (a batch of one).

import assert from 'node:assert/strict'
import { test } from 'node:test'

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
