// The authorize side of the manager (lib/authorize.js) on its own, as the core drives it: JSON
// crossings of several events over lists of users, rules that answer at once, later, never, or
// fail; and the join check, one burst of joins at a time. What goes wrong denies only the users or the event it concerns, and is logged; nothing
// outlives an answer (no timer left running).

import assert from 'node:assert/strict'
import { createRequire } from 'node:module'
import { test } from 'node:test'

const require = createRequire(import.meta.url)
const { createAuthorizer, createJoinCheck, decision } = require('../lib/authorize.js')

/** An authorizer over `rules` (collection -> rule) whose failures are recorded in `failures`. */
function authorizer(rules, { timeout = 5000 } = {}) {
  const failures = []
  const a = createAuthorizer({
    getRule: (collection) => rules[collection],
    timeout,
    logFailure: (what, err) => failures.push(`${what}: ${err instanceof Error ? err.message : String(err)}`),
  })
  return { ...a, failures }
}

/** A crossing as the core writes it: users once, lists defined by index, one request per event. */
function crossing(users, requests, { define = [[1, users.map((_, i) => i)]], forget = [] } = {}) {
  return JSON.stringify({ users, define, forget, requests })
}

const alice = { id: 'alice', collection: 'users' }
const bob = { id: 'bob', collection: 'users' }
const carol = { id: 'carol', collection: 'users' }

/** The timers this process has pending (Node's own count of active `Timeout`s). */
const timers = () => process.getActiveResourcesInfo().filter((r) => r === 'Timeout').length

/** A promise and the functions that settle it. */
function deferred() {
  let resolve, reject
  const promise = new Promise((res, rej) => ((resolve = res), (reject = rej)))
  return { promise, resolve, reject }
}

test('a rule is asked once per user; all alike answer as one word, mixed answers per user', async () => {
  const asked = []
  const { authorizeBatch, failures } = authorizer({
    posts: (user, event) => {
      asked.push(`${user.id}:${event.id}`)
      if (event.id === 1) return true
      if (event.id === 2) return false
      return user.id === 'alice' ? true : user.id === 'bob' ? { doc: { id: 3, title: 'for bob' } } : false
    },
  })
  const answer = await authorizeBatch(
    crossing(
      [alice, bob, carol],
      [1, 2, 3].map((id) => ({ collection: 'posts', event: { id }, list: 1 })),
    ),
  )
  assert.deepEqual(JSON.parse(answer), [true, false, [true, { doc: { id: 3, title: 'for bob' } }, false]])
  assert.deepEqual(asked.sort(), [
    'alice:1',
    'alice:2',
    'alice:3',
    'bob:1',
    'bob:2',
    'bob:3',
    'carol:1',
    'carol:2',
    'carol:3',
  ])
  assert.deepEqual(failures, [])
})

test('only `true` and `{ doc: object }` allow: truthy values and a doc that is not an object deny', () => {
  assert.equal(decision(true), true)
  assert.deepEqual(decision({ doc: { id: 1 } }), { doc: { id: 1 } })
  for (const v of [1, 'yes', {}, { doc: 'text' }, { doc: [1] }, { doc: null }, { allow: true }, null, undefined]) {
    assert.equal(decision(v), false, `${JSON.stringify(v)} denies`)
  }
})

test('a collection without a rule denies everyone, and no rule is called', async () => {
  const { authorizeBatch } = authorizer({ posts: () => assert.fail('the posts rule is not asked about notes') })
  const answer = await authorizeBatch(crossing([alice], [{ collection: 'notes', event: { id: 1 }, list: 1 }]))
  assert.deepEqual(JSON.parse(answer), [false])
})

test('a rule that throws or rejects denies that user only, and is logged', async () => {
  const { authorizeBatch, failures } = authorizer({
    posts: async (user) => {
      if (user.id === 'bob') throw new Error('bob breaks the rule')
      return true
    },
    notes: (user) => {
      if (user.id === 'alice') throw new Error('alice breaks it at once')
      return true
    },
  })
  const answer = await authorizeBatch(
    crossing(
      [alice, bob, carol],
      [
        { collection: 'posts', event: { id: 1 }, list: 1 },
        { collection: 'notes', event: { id: 2 }, list: 1 },
      ],
    ),
  )
  assert.deepEqual(JSON.parse(answer), [
    [true, false, true],
    [false, true, true],
  ])
  assert.deepEqual(failures.sort(), [
    'authorize for "notes": alice breaks it at once',
    'authorize for "posts": bob breaks the rule',
  ])
})

test('at the timeout the answers given count, the users not answered are denied, no timer stays', async () => {
  const never = new Promise(() => {})
  const late = deferred()
  const { authorizeBatch, failures } = authorizer(
    {
      posts: (user) => {
        if (user.id === 'alice') return true
        if (user.id === 'bob') return Promise.resolve({ doc: { id: 1, for: 'bob' } })
        return never
      },
      notes: () => late.promise,
    },
    { timeout: 50 },
  )
  const before = timers()
  const answer = await authorizeBatch(
    crossing(
      [alice, bob, carol],
      [
        { collection: 'posts', event: { id: 1 }, list: 1 },
        { collection: 'notes', event: { id: 2 }, list: 1 },
      ],
    ),
  )
  assert.deepEqual(JSON.parse(answer), [[true, { doc: { id: 1, for: 'bob' } }, false], false])
  assert.deepEqual(failures.sort(), [
    'authorize for "notes": authorize for "notes" took longer than 50 ms',
    'authorize for "posts": authorize for "posts" took longer than 50 ms',
  ])
  // An answer after the timeout changes nothing and logs nothing more.
  late.resolve(true)
  await new Promise((r) => setImmediate(r))
  assert.equal(failures.length, 2)
  assert.equal(timers(), before, 'the timers of both events are gone')
})

test('an event answered in time leaves no timer behind', async () => {
  const { authorizeBatch } = authorizer({ posts: async () => true }, { timeout: 60_000 })
  const before = timers()
  const answer = await authorizeBatch(crossing([alice, bob], [{ collection: 'posts', event: { id: 1 }, list: 1 }]))
  assert.equal(answer, '[true]')
  assert.equal(timers(), before)
})

test("the users' rules, and the next events' rules, run while a rule waits", async () => {
  // Each call waits until every (user, event) pair has been asked: answered in time only if
  // the rules run concurrently, across users and across the events of one crossing.
  const everyone = deferred()
  let calls = 0
  const { authorizeBatch, failures } = authorizer(
    {
      posts: async (user, event) => {
        if (++calls === 6) everyone.resolve()
        await everyone.promise
        return event.id === 2 || user.id !== 'carol'
      },
    },
    { timeout: 10_000 },
  )
  const answer = await authorizeBatch(
    crossing(
      [alice, bob, carol],
      [1, 2].map((id) => ({ collection: 'posts', event: { id }, list: 1 })),
    ),
  )
  assert.deepEqual(JSON.parse(answer), [[true, true, false], true])
  assert.deepEqual(failures, [])
})

test('lists of users: defined once, named again in later crossings, forgotten when told', async () => {
  const seen = []
  const { authorizeBatch, failures, lists } = authorizer({
    posts: (user, event) => {
      seen.push(`${event.id}:${user.id}`)
      return true
    },
  })
  await authorizeBatch(
    crossing([alice, bob, carol], [{ collection: 'posts', event: { id: 1 }, list: 7 }], {
      define: [
        [7, [0, 2]],
        [8, [1]],
      ],
    }),
  )
  // The next crossing writes no users: the lists are named by id.
  const answer = await authorizeBatch(
    crossing(
      [],
      [
        { collection: 'posts', event: { id: 2 }, list: 8 },
        { collection: 'posts', event: { id: 3 }, list: 7 },
      ],
      { define: [] },
    ),
  )
  assert.equal(answer, '[true,true]')
  assert.deepEqual(seen, ['1:alice', '1:carol', '2:bob', '3:alice', '3:carol'])
  // `forget` comes first in a crossing: the lists no question of it (or later) names.
  assert.equal(
    await authorizeBatch(
      crossing([], [{ collection: 'posts', event: { id: 4 }, list: 8 }], { define: [], forget: [7] }),
    ),
    '[true]',
  )
  assert.deepEqual([...lists.keys()], [8], 'list 7 is forgotten')
  assert.deepEqual(failures, [])
  // A list the core never defined (or forgot): its users are denied, and it is logged.
  const unknown = await authorizeBatch(
    crossing([], [{ collection: 'posts', event: { id: 4 }, list: 7 }], { define: [] }),
  )
  assert.equal(unknown, '[false]')
  assert.deepEqual(failures, ['authorize for "posts": unknown list of users 7'])
})

test('a { doc } JSON cannot carry denies its own event only', async () => {
  const { authorizeBatch, failures } = authorizer({
    posts: (user, event) => (event.id === 1 && user.id === 'alice' ? { doc: { big: 10n } } : { doc: { id: event.id } }),
  })
  const answer = await authorizeBatch(
    crossing(
      [alice, bob],
      [1, 2].map((id) => ({ collection: 'posts', event: { id }, list: 1 })),
    ),
  )
  assert.deepEqual(JSON.parse(answer), [
    [false, false],
    [{ doc: { id: 2 } }, { doc: { id: 2 } }],
  ])
  assert.equal(failures.length, 1)
  assert.match(failures[0], /^authorize for "posts": .*BigInt/)
})

test('the rule is looked up per event: a rule swapped in applies to the next crossing', async () => {
  const rules = { posts: () => false }
  const { authorizeBatch } = authorizer(rules)
  const ask = () => authorizeBatch(crossing([alice], [{ collection: 'posts', event: { id: 1 }, list: 1 }]))
  assert.equal(await ask(), '[false]')
  rules.posts = () => true
  assert.equal(await ask(), '[true]')
})

/** A join check over `rules` (room -> its rules) whose failures are recorded in `failures`. */
function joinCheck(rules, { timeout = 5000 } = {}) {
  const failures = []
  const check = createJoinCheck({
    getRules: (room) => rules[room] ?? [],
    timeout,
    logFailure: (what, err) => failures.push(`${what}: ${err instanceof Error ? err.message : String(err)}`),
  })
  return { check, failures }
}

test('a join needs every rule of the room to answer true; a room without a rule is refused', async () => {
  const { check, failures } = joinCheck({
    'chat:a': [() => true, async (user) => user.id === 'alice'],
    'chat:b': [(user, room) => room === 'chat:b' && user.id !== 'carol'],
    'chat:c': [() => 'yes'],
  })
  const answers = await check([
    { user: alice, rooms: ['chat:a', 'chat:b', 'chat:c', 'chat:none'] },
    { user: bob, rooms: ['chat:a', 'chat:b'] },
    { user: carol, rooms: ['chat:b'] },
  ])
  assert.deepEqual(answers, [[true, true, false, false], [false, true], [false]])
  assert.deepEqual(failures, [])
})

test('a join rule that throws, rejects or answers too late refuses that room only, and is logged', async () => {
  const { check, failures } = joinCheck(
    {
      thrown: [
        () => {
          throw new Error('no')
        },
      ],
      rejected: [async () => Promise.reject(new Error('not today'))],
      late: [() => new Promise(() => {})],
      open: [() => true],
    },
    { timeout: 50 },
  )
  const before = timers()
  assert.deepEqual(await check([{ user: alice, rooms: ['thrown', 'rejected', 'late', 'open'] }]), [
    [false, false, false, true],
  ])
  assert.deepEqual(failures.sort(), [
    'the join rule of "late": the join rule of "late" took longer than 50 ms',
    'the join rule of "rejected": not today',
    'the join rule of "thrown": no',
  ])
  assert.equal(timers(), before, 'no timer outlives the answers')
})
