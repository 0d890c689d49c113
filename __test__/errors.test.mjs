// A refused emitEvent has one stable `code`, whether it was emitted alone or with others in the
// same tick, and whatever stage refused it: 'closed' once the server is closing, also for events
// emitted in the same tick as close() (they were 'GenericFailure'). 'server-behind' past
// maxBacklog is checked on every refused event by fanout.test.mjs; a lone event takes the same
// path (a batch of one). The protocol's error codes are one list: lib/errors.js's ERROR_CODES,
// the core's ErrorCode, docs/protocol.md and the client's typings name the same codes. So are the
// codes of the RealtimeErrors a host gets: lib/errors.js's HOST_ERROR_CODES, what lib/ throws,
// the core's Error::code, the addon's own codes and index.d.ts's RealtimeErrorCode; a server that
// cannot start, or a call the core refuses, carries the core's code ('cannot-listen',
// 'invalid-option', 'invalid-input'; it was napi's 'GenericFailure' / 'InvalidArg').

import assert from 'node:assert/strict'
import { readdirSync, readFileSync } from 'node:fs'
import { createRequire } from 'node:module'
import { join } from 'node:path'
import { test } from 'node:test'
import { fileURLToPath } from 'node:url'

import { initUWebSocket, RealtimeError } from '../index.mjs'
import { SECRET, startServer } from './helpers.mjs'

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

/** Every string literal passed as the code of a `new RealtimeError(...)` in the server's JS. */
function jsThrownCodes(dir = join(root, 'lib')) {
  return readdirSync(dir, { withFileTypes: true }).flatMap((e) => {
    if (e.isDirectory()) return ['client', 'react', 'admin'].includes(e.name) ? [] : jsThrownCodes(join(dir, e.name))
    if (!e.name.endsWith('.js')) return []
    const text = readFileSync(join(dir, e.name), 'utf8')
    return [...text.matchAll(/new RealtimeError\(\s*([^,]+),/g)].flatMap((m) =>
      [...m[1].matchAll(/'([a-z-]+)'/g)].map((c) => c[1]),
    )
  })
}

test("the host's error codes: lib/errors.js, what lib/ throws, the core, the addon and index.d.ts agree", () => {
  const { HOST_ERROR_CODES, NATIVE_MESSAGES } = createRequire(import.meta.url)('../lib/errors.js')
  const host = [...HOST_ERROR_CODES].sort()
  // The core's `Error::code` (not the protocol's `ErrorCode`), and the addon's codes of its own.
  const core = new Set()
  const coreText = rustFiles(join(root, 'crates/core/src'))
    .map((f) => readFileSync(f, 'utf8'))
    .join('\n')
  for (const m of coreText.matchAll(/\bError::\w+(?:\([^)]*\)|\s*\{[^}]*\})?\s*=>\s*"([a-z-]+)"/g)) core.add(m[1])
  assert.ok(core.has('server-behind') && core.has('closed'), `the core's codes found: ${[...core]}`)
  const addon = new Set()
  for (const file of rustFiles(join(root, 'src'))) {
    for (const m of readFileSync(file, 'utf8').matchAll(/=>\s*Some\("([a-z-]+)"\)/g)) addon.add(m[1])
  }
  const js = new Set(jsThrownCodes())
  for (const [from, codes] of [
    ['the core', core],
    ['the addon', addon],
    ['lib/', js],
  ]) {
    const unlisted = [...codes].filter((c) => !HOST_ERROR_CODES.has(c))
    assert.deepEqual(unlisted, [], `codes of ${from} missing from HOST_ERROR_CODES`)
  }
  const reached = new Set([...core, ...addon, ...js])
  assert.deepEqual(
    host.filter((c) => !reached.has(c)),
    [],
    'HOST_ERROR_CODES names only codes something gives',
  )
  const dts = readFileSync(join(root, 'index.d.ts'), 'utf8')
  const union = dts.slice(
    dts.indexOf('export type RealtimeErrorCode'),
    dts.indexOf('export declare class RealtimeError'),
  )
  assert.deepEqual([...union.matchAll(/\| '([a-z-]+)'/g)].map((m) => m[1]).sort(), host, 'index.d.ts RealtimeErrorCode')
  // The openings by which the core's errors are told apart are the core's messages.
  for (const [opening, code] of NATIVE_MESSAGES) {
    assert.ok(HOST_ERROR_CODES.has(code), code)
    assert.ok(coreText.includes(`"${opening}`), `the core writes "${opening}..."`)
  }
})

test("a server that cannot start rejects with the core's code, not napi's status", T, async () => {
  const manager = await startServer({})
  try {
    await assert.rejects(initUWebSocket(manager.port, { host: '127.0.0.1', secret: SECRET }), (err) => {
      assert.equal(err.code, 'cannot-listen', `${err.code}: ${err.message}`)
      assert.ok(err instanceof RealtimeError)
      assert.match(err.message, /in use/)
      return true
    })
  } finally {
    await manager.close()
  }
  await assert.rejects(startServer({ includeCollections: ['not a slug!'] }), (err) => {
    assert.equal(err.code, 'invalid-option', `${err.code}: ${err.message}`)
    assert.ok(err instanceof RealtimeError)
    return true
  })
})

test("a call the core refuses throws the core's code, not napi's status", T, async () => {
  const manager = await startServer({})
  try {
    assert.throws(
      () => manager.registerCustomHandler('ping', () => {}),
      (err) => err instanceof RealtimeError && err.code === 'invalid-input' && /built-in/.test(err.message),
    )
  } finally {
    await manager.close()
  }
})
