// Every option is defined once (lib/options.js SERVER_OPTION_SPECS and PLUGIN_OPTIONS) and the
// rest follows or is checked here: the typings declare the same names, docs/options.md's table lists
// every server option, the defaults the table, docs/options.md and the typings state are one and the
// validator accepts them, a misspelt option is an error, and the plugin hands every server option
// on (history, presence and presenceExpiry were once dropped on the way). The native addon's
// `#[napi(object)] NativeOptions` (read from the Rust source, found wherever it moves) has exactly
// the fields the table's options become, of the types the table checks.

import assert from 'node:assert/strict'
import { readdirSync, readFileSync } from 'node:fs'
import { dirname, join } from 'node:path'
import { test } from 'node:test'
import { fileURLToPath } from 'node:url'
import { createRequire } from 'node:module'

import { markdownTable } from './doc-tables.mjs'
import { startServer } from './helpers.mjs'
import { startPayload } from './payload-fixture.mjs'

const root = join(dirname(fileURLToPath(import.meta.url)), '..')
const { SERVER_OPTIONS, SERVER_OPTION_SPECS, PLUGIN_OPTIONS, nativeOptions } = createRequire(import.meta.url)(
  '../lib/options.js',
)

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

/** The rows of the option table (the first table under the title of docs/options.md). */
const optionRows = () => markdownTable(readFileSync(join(root, 'docs/options.md'), 'utf8'), '# Options')

test("docs/options.md's option table has a row for every server option", () => {
  const rows = new Set(optionRows().map(([name]) => name.replace(/`/g, '')))
  const missing = SERVER_OPTIONS.filter((o) => !rows.has(o))
  assert.deepEqual(missing, [], `docs/options.md's option table lacks ${missing.join(', ')}`)
})

/** Units a default is written in, as a factor to milliseconds or bytes. */
const UNITS = { ms: 1, s: 1000, day: 86_400_000, days: 86_400_000, KiB: 1024, MiB: 1024 * 1024 }
const BASE = { ms: 1, s: 1000, bytes: 1, undefined: 1 }

/**
 * A default as the docs write it (`64 KiB`, `120 s`, `5000`, `7 days`, `false`, `` `0.0.0.0` ``,
 * `` `['loopback']` ``), in milliseconds or bytes for a number (one without a unit is in the
 * option's `unit`); null when it is no fixed value ("none", "any", "CPU cores − 1", "(plugin: ...)").
 */
function parseDefault(text, unit) {
  const t = text
    .replace(/^\(plugin[^)]*\)\s*/, '')
    .replace(/\s*\([^)]*\)$/, '')
    .trim()
  const n = /^`?(\d[\d_]*)`?(?:\s*(ms|s|days?|KiB|MiB))?$/.exec(t)
  if (n) return Number(n[1].replace(/_/g, '')) * (n[2] ? UNITS[n[2]] : BASE[unit])
  if (/^`?(true|false)`?$/.test(t)) return t.replace(/`/g, '') === 'true'
  // An environment variable (`REDIS_URL`) names where the value comes from, not a value.
  if (/^`[A-Z][A-Z_]*`$/.test(t)) return null
  const literal = /^`([^`]+)`$/.exec(t)
  if (literal) return literal[1].startsWith('[') ? JSON.parse(literal[1].replace(/'/g, '"')) : literal[1]
  return null
}

/** The default an option of the table states, as `parseDefault` reads the docs' (null: none). */
function tableDefault(spec) {
  if (spec.default === undefined) return null
  return typeof spec.default === 'number' ? spec.default * BASE[spec.unit] : spec.default
}

/** The default index.d.ts's doc comment of each `ServerOptions` member states, if any. */
function declaredDefaults() {
  const dts = readFileSync(join(root, 'index.d.ts'), 'utf8')
  const start = dts.indexOf('export interface ServerOptions ')
  const body = dts.slice(start, dts.indexOf('\n}', start))
  const out = new Map()
  for (const m of body.matchAll(/\/\*\*([\s\S]*?)\*\/\s*\n {2}(\w+)\??:/g)) {
    const doc = m[1].replace(/\n\s*\*\s?/g, ' ')
    // "(default 120; ...", "Default false.", "(default: the CPU cores ...": the first one that
    // opens a sentence or a parenthesis ("host default" is another value's).
    const d = /(?:^|\(|\.\s)\s*[Dd]efault:?\s+(`[^`]*`|[^;,:)]*?)(?:[;,:)]|\.\s|\.?\s*$)/.exec(doc.trim())
    out.set(m[2], d ? parseDefault(d[1].trim(), SERVER_OPTION_SPECS[m[2]]?.unit) : null)
  }
  return out
}

/** The second cell (the default) of each server option's row in docs/options.md's option table. */
function readmeDefaults() {
  return new Map(optionRows().map(([name, dflt]) => [name.replace(/`/g, ''), dflt]))
}

test('docs/options.md, the typings and the option table state the same default for every server option', () => {
  const readme = readmeDefaults()
  const declaredDefault = declaredDefaults()
  const stated = SERVER_OPTIONS.filter((o) => SERVER_OPTION_SPECS[o].default !== undefined)
  assert.ok(stated.length >= 20, `defaults in the table: ${stated.join(', ')}`)
  for (const option of SERVER_OPTIONS) {
    const expected = tableDefault(SERVER_OPTION_SPECS[option])
    assert.ok(readme.has(option), `docs/options.md's option table has ${option}`)
    assert.deepEqual(
      parseDefault(readme.get(option), SERVER_OPTION_SPECS[option].unit),
      expected,
      `${option}: docs/options.md says "${readme.get(option)}"`,
    )
    assert.ok(declaredDefault.has(option), `index.d.ts documents ${option}`)
    assert.deepEqual(declaredDefault.get(option), expected, `${option}: the default index.d.ts states`)
  }
})

test("the validator accepts every option's default, and refuses values under an integer option's minimum", () => {
  for (const [option, spec] of Object.entries(SERVER_OPTION_SPECS)) {
    if (spec.default !== undefined) {
      assert.doesNotThrow(() => nativeOptions(0, { [option]: spec.default }), `${option}: ${spec.default}`)
    }
    if (spec.check === 'integer') {
      assert.throws(() => nativeOptions(0, { [option]: (spec.min ?? 0) - 1 }), new RegExp(`\`${option}\``))
      assert.throws(() => nativeOptions(0, { [option]: 1.5 }), new RegExp(`\`${option}\``))
    }
  }
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

/** The .rs files under `dir` (build output and dependencies aside), wherever they were moved. */
function rustFiles(dir) {
  return readdirSync(dir, { withFileTypes: true }).flatMap((e) => {
    if (e.isDirectory()) return ['target', 'node_modules', '.git'].includes(e.name) ? [] : rustFiles(join(dir, e.name))
    return e.name.endsWith('.rs') ? [join(dir, e.name)] : []
  })
}

/**
 * The fields of the addon's `#[napi(object)] NativeOptions` (what `initUWebSocket` of the native
 * module takes), with napi-rs's names for JS (snake_case to camelCase) and their Rust types.
 */
function addonOptionFields() {
  const found = []
  for (const file of [...rustFiles(join(root, 'src')), ...rustFiles(join(root, 'crates'))]) {
    const m = /#\[napi\(object\)\]\s*pub struct NativeOptions\s*\{([\s\S]*?)\n\}/.exec(readFileSync(file, 'utf8'))
    if (m) found.push(m[1])
  }
  assert.equal(found.length, 1, 'one #[napi(object)] struct NativeOptions in the Rust sources')
  const camel = (s) => s.replace(/_([a-z0-9])/g, (_, c) => c.toUpperCase())
  return new Map([...found[0].matchAll(/^\s*pub (\w+): ([^\n]+),$/gm)].map(([, name, type]) => [camel(name), type]))
}

/** A value of each `'own'` option the validator takes (metrics twice: both of its shapes). */
const OWN_SAMPLES = {
  authorize: [{ posts: () => true }],
  rooms: [{ 'room:*': () => true }],
  trustedProxies: [['127.0.0.1']],
  history: [{ size: 5 }],
  presence: [true],
  redis: [{ url: 'redis://127.0.0.1:6379', prefix: 'app' }],
  verifyUser: [async () => null],
  metrics: [{ token: 'a-metrics-token-of-16+' }, { port: 0, host: '127.0.0.1' }],
  logger: [{ info() {}, warn() {}, error() {} }],
  onConnect: [() => {}],
}

test("the option table and the native addon's NativeOptions name the same fields, of matching types", () => {
  const fields = addonOptionFields()
  const RUST_TYPE = {
    string: 'Option<String>',
    strings: 'Option<Vec<String>>',
    boolean: 'Option<bool>',
    integer: 'Option<u32>',
  }
  const expected = new Set(['port'])
  // What each option becomes, as nativeOptions() builds it: the fields a value changes.
  const baseline = nativeOptions(0, { redis: false })
  for (const [name, spec] of Object.entries(SERVER_OPTION_SPECS)) {
    if (spec.check !== 'own') {
      assert.equal(spec.native, undefined, `${name}: an option of a common check is the native field of its name`)
      assert.equal(
        fields.get(name),
        RUST_TYPE[spec.check],
        `${name}: NativeOptions.${name} is ${RUST_TYPE[spec.check]}`,
      )
      expected.add(name)
      continue
    }
    assert.ok(Array.isArray(spec.native), `${name}: an 'own' option says which native fields it becomes`)
    assert.ok(OWN_SAMPLES[name], `${name}: the test has a sample value`)
    const changed = new Set()
    for (const value of OWN_SAMPLES[name]) {
      const out = nativeOptions(0, { redis: false, [name]: value })
      for (const [k, v] of Object.entries(out)) {
        if (JSON.stringify(v) !== JSON.stringify(baseline[k])) changed.add(k)
      }
    }
    assert.deepEqual([...changed].sort(), [...spec.native].sort(), `${name}: the native fields nativeOptions() sets`)
    for (const f of spec.native) expected.add(f)
  }
  assert.deepEqual([...fields.keys()].sort(), [...expected].sort(), 'NativeOptions fields vs the option table')
})
