// The security page (docs/security.md) is checked against the code it describes: its close-code table
// against `close_code` in crates/core/src/protocol/mod.rs and the SDK's `CloseCodes`, its table of
// refused handshakes against every `error` the server answers with, and its table of limits
// against the options (every `max*` and `*Timeout` option has a row, with the same default as
// the option table).

import assert from 'node:assert/strict'
import { readFileSync, readdirSync } from 'node:fs'
import { dirname, join } from 'node:path'
import { test } from 'node:test'
import { fileURLToPath } from 'node:url'
import { createRequire } from 'node:module'

import { CloseCodes } from '../lib/client/index.mjs'
import { markdownTable } from './doc-tables.mjs'

const root = join(dirname(fileURLToPath(import.meta.url)), '..')
const { SERVER_OPTIONS } = createRequire(import.meta.url)('../lib/options.js')
const security = readFileSync(join(root, 'docs/security.md'), 'utf8')
const optionsPage = readFileSync(join(root, 'docs/options.md'), 'utf8')

/** The rows (cells trimmed) of the first table after `heading` in docs/security.md. */
const table = (heading) => markdownTable(security, heading)

/** Rust source without its test modules. */
function rust(file) {
  const text = readFileSync(file, 'utf8')
  const tests = text.indexOf('#[cfg(test)]')
  return tests >= 0 ? text.slice(0, tests) : text
}

function rustFiles(dir) {
  return readdirSync(dir, { withFileTypes: true }).flatMap((e) =>
    e.isDirectory() ? rustFiles(join(dir, e.name)) : e.name.endsWith('.rs') ? [join(dir, e.name)] : [],
  )
}

test('the close-code table lists exactly the codes of protocol/mod.rs and the SDK, by the same names', () => {
  const protocol = rust(join(root, 'crates/core/src/protocol/mod.rs'))
  const start = protocol.search(/pub(\(crate\))? mod close_code/)
  const mod = protocol.slice(start, protocol.indexOf('\n}\n', start))
  const server = Object.fromEntries(
    [...mod.matchAll(/pub(?:\(crate\))? const (\w+): u16 = (\d+);/g)].map((m) => [m[1], Number(m[2])]),
  )
  assert.ok(Object.keys(server).length >= 10, 'close codes found in protocol/mod.rs')
  const documented = Object.fromEntries(
    table('## Close codes').map(([code, name]) => [name.replace(/`/g, ''), Number(code)]),
  )
  assert.deepEqual(documented, server)
  assert.deepEqual({ ...CloseCodes }, server)
  const dts = readFileSync(join(root, 'lib/client/index.d.mts'), 'utf8')
  const declared = dts.slice(dts.indexOf('export declare const CloseCodes'))
  const typed = Object.fromEntries(
    [...declared.slice(0, declared.indexOf('\n}')).matchAll(/readonly (\w+): (\d+)/g)].map((m) => [m[1], Number(m[2])]),
  )
  assert.deepEqual(typed, server)
})

test('the refused-handshake table lists every error the server answers a handshake with', () => {
  const errors = new Set()
  for (const file of rustFiles(join(root, 'crates/core/src'))) {
    const code = rust(file)
    for (const m of code.matchAll(/"error\\?"\s*:\s*\\?"([a-z-]+)\\?"/g)) errors.add(m[1])
    for (const m of code.matchAll(/\berror:\s*"([a-z-]+)"/g)) errors.add(m[1])
    for (const m of code.matchAll(/\brefused\("([a-z-]+)"\)/g)) errors.add(m[1])
  }
  assert.ok(errors.has('too-many-connections') && errors.has('forbidden-origin'), [...errors].join(', '))
  const documented = new Set(table('## Refused handshakes').map((row) => row[1].replace(/`/g, '')))
  assert.deepEqual([...documented].sort(), [...errors].sort())
})

test('the limits table has every max* and *Timeout option, with the default of the option table', () => {
  const limits = new Map(table('## Limits').map(([name, dflt]) => [name, dflt]))
  const options = new Map(markdownTable(optionsPage, '# Options').map(([name, dflt]) => [name, dflt]))
  const bounded = SERVER_OPTIONS.filter((o) => /^max|Timeout$/.test(o))
  assert.ok(bounded.length >= 15, bounded.join(', '))
  for (const option of [...bounded, 'history']) {
    const row = `\`${option}\``
    assert.ok(limits.has(row), `the limits table has ${option}`)
    const a = limits.get(row)
    const b = options.get(row)
    assert.ok(b !== undefined, `the option table has ${option}`)
    assert.ok(a.startsWith(b) || b.startsWith(a), `${option}: the limits table says ${a}, the option table ${b}`)
  }
})
