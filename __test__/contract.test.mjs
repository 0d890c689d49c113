// One contract, however many places need it. `where` is matched in two places that cannot share a
// module: the server (lib/payload/where.js, CommonJS, deciding read access for deleted documents,
// where anything it cannot evaluate denies) and the client (lib/client/live-query.mjs, ES module
// loaded by browsers as is, where anything it cannot tell refetches). Node 20.9, which the package
// supports, cannot require() an ES module, and a browser cannot load a CommonJS one. So both run
// here over one table: where both answer, they must answer the same (each may not answer where the
// other does). The user key `<collection>:<id>` and a collection's room `collection:<slug>` are
// built by one function each on the server side (lib/util.js), and the browser side's admin has
// its own copy of the first, named the same.

import assert from 'node:assert/strict'
import { readdirSync, readFileSync } from 'node:fs'
import { createRequire } from 'node:module'
import { join, relative } from 'node:path'
import { test } from 'node:test'
import { fileURLToPath } from 'node:url'

import { matchWhere } from '../lib/client/index.mjs'

const require = createRequire(import.meta.url)
const { whereAnswer, matchesWhere } = require('../lib/payload/where.js')
const root = fileURLToPath(new URL('..', import.meta.url))

const DOC = {
  id: 7,
  title: 'Hello World',
  rank: 4,
  zero: 0,
  flag: true,
  off: false,
  none: null,
  empty: '',
  word: 'null',
  group: { inner: 'x' },
  tags: ['a', 'b'],
  rel: { relationTo: 'users', value: 3 },
  when: '2024-01-02T00:00:00.000Z',
}

const u = undefined
/** `[where, the server's answer, the client's answer]` on DOC. */
const CASES = [
  [{}, true, true],
  [{ title: { equals: 'Hello World' } }, true, true],
  [{ title: { equals: 'hello world' } }, false, false],
  [{ title: { not_equals: 'x' } }, true, true],
  [{ rank: { equals: '4' } }, true, true],
  // A number field is queried by number: Payload reads '4.0' as 4 (the server once said false).
  [{ rank: { equals: '4.0' } }, true, true],
  [{ rank: { not_equals: 4 } }, false, false],
  [{ title: { equals: 4 } }, false, false],
  [{ flag: { equals: 'true' } }, true, true],
  [{ off: { equals: 'false' } }, true, true],
  [{ none: { equals: null } }, true, true],
  [{ none: { not_equals: null } }, false, false],
  [{ none: { not_equals: 'x' } }, true, true],
  // 'null' is null for a relationship or date field, text for a text field: the client cannot
  // tell (it once said true); the server denies.
  [{ none: { equals: 'null' } }, false, u],
  [{ word: { equals: 'null' } }, true, u],
  [{ title: { equals: 'null' } }, false, false],
  [{ none: { exists: false } }, true, true],
  [{ title: { exists: 'true' } }, true, true],
  [{ title: { in: 'x,Hello World' } }, true, true],
  [{ rank: { in: [1, 4] } }, true, true],
  [{ rank: { not_in: '4' } }, false, false],
  [{ none: { in: ['a'] } }, false, false],
  [{ 'group.inner': { equals: 'x' } }, true, true],
  [{ id: { equals: '7' } }, true, true],
  [{ when: { equals: new Date('2024-01-02T00:00:00.000Z') } }, true, true],
  [{ and: [] }, true, true],
  [{ or: [] }, true, true],
  [{ and: [{ rank: { equals: 4 } }, { title: { equals: 'no' } }] }, false, false],
  [{ or: [{ rank: { equals: 5 } }, { title: { equals: 'Hello World' } }] }, true, true],
  [{ rank: { equals: 4 }, title: { equals: 'no' } }, false, false],
  // Answered by one side only.
  [{ missing: { equals: 'x' } }, false, u],
  [{ title: { in: [] } }, false, u],
  [{ tags: { equals: 'a' } }, true, u],
  [{ rel: { equals: 3 } }, true, u],
  [{ rank: { greater_than: 3 } }, u, true],
  [{ title: { like: 'hello' } }, u, true],
  [{ title: { near: '1,2' } }, u, u],
  [{ title: 'Hello World' }, u, u],
  [{ and: {} }, u, u],
]

test('the server and the client answer each where of the table as it says', () => {
  for (const [where, server, client] of CASES) {
    const w = JSON.stringify(where)
    assert.equal(whereAnswer(where, DOC), server, `server: ${w}`)
    assert.equal(matchesWhere(where, DOC), server === true, `server, deny by default: ${w}`)
    assert.equal(matchWhere(where, DOC), client, `client: ${w}`)
  }
})

test('over every field, operator and value of a grid, where both answer they agree', () => {
  const fields = [...Object.keys(DOC).filter((k) => k !== 'group'), 'group.inner', 'missing']
  const operators = ['equals', 'not_equals', 'in', 'not_in', 'exists']
  const values = [
    ...['Hello World', 'x', '', '4', '4.0', ' 4', '0', '7', 'true', 'false', 'null', '1,4', 'x,Hello World'],
    ...[4, 0, 5, 7, true, false, null],
    ...[[4, 5], ['x', 'Hello World'], [], [null], ['a']],
    new Date('2024-01-02T00:00:00.000Z'),
    '2024-01-02T00:00:00.000Z',
  ]
  const differ = []
  let both = 0
  for (const field of fields) {
    for (const op of operators) {
      for (const value of values) {
        for (const where of [
          { [field]: { [op]: value } },
          { or: [{ [field]: { [op]: value } }, { rank: { equals: 5 } }] },
        ]) {
          const server = whereAnswer(where, DOC)
          const client = matchWhere(where, DOC)
          if (server === undefined || client === undefined) continue
          both += 1
          if (server !== client) differ.push(`${JSON.stringify(where)}: server ${server}, client ${client}`)
        }
      }
    }
  }
  assert.ok(both > 1000, `both answered ${both} wheres`)
  assert.deepEqual(differ, [])
})

/** The .js and .mjs files under lib/. */
function libFiles(dir = join(root, 'lib')) {
  return readdirSync(dir, { withFileTypes: true }).flatMap((e) =>
    e.isDirectory() ? libFiles(join(dir, e.name)) : /\.m?js$/.test(e.name) ? [join(dir, e.name)] : [],
  )
}

test("the user key and a collection's room are built by one function each", () => {
  const userKeys = []
  const rooms = []
  for (const file of libFiles()) {
    const name = relative(root, file)
    for (const line of readFileSync(file, 'utf8').split('\n')) {
      // `${collection}:${id}`, `${user.collection}:${user.id}`, collection + ':' + id
      if (/\$\{[\w.?]*collection[^}]*\}:\$\{[\w.?]*\bid\}|collection\s*\+\s*':'/.test(line)) userKeys.push(name)
      if (/[`'"]collection:(\$\{|['"`]\s*\+)/.test(line)) rooms.push(name)
    }
  }
  assert.deepEqual(userKeys.sort(), ['lib/admin/index.mjs', 'lib/util.js'], 'where `<collection>:<id>` is built')
  assert.deepEqual(rooms, ['lib/client/live-query.mjs', 'lib/util.js'], 'where `collection:<slug>` is built')
  const { userKey, collectionRoom } = require('../lib/util.js')
  assert.equal(userKey('users', 7), 'users:7')
  assert.equal(collectionRoom('posts'), 'collection:posts')
})
