// Every fenced code block of README.md and docs/*.md is run here, or checked, as written, and
// every relative link and #anchor between them resolves.
//
// Each block carries a marker on the line above its fence that says how:
// - `<!-- run: KIND -->`: run by the runner KIND below (a plugin config inside a real Payload, a
//   server script, a client snippet in a child process against a running server, a React
//   snippet rendered with react-dom/server, npm commands checked against package.json);
// - `<!-- excerpt: PATH -->`: an excerpt of a file a test runs: every line is in that file;
// - `<!-- config: NAME -->`: a proxy or orchestrator config that cannot run here: checked for
//   what the server needs (the convention of __test__/operations.test.mjs).
// A block without a marker, or with an unknown one, fails the first test.
//
// Blocks run unchanged but for fixed ports (3002, 9464), which become free ones, and example
// URLs, which point at the test's server. Names a snippet uses but does not define (`token`,
// `Posts`, `refresh`, ...) are given by a prelude, only when the block does not define them.

import assert from 'node:assert/strict'
import { execFile } from 'node:child_process'
import { existsSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs'
import { createRequire } from 'node:module'
import { tmpdir } from 'node:os'
import { dirname, join } from 'node:path'
import { after, before, test } from 'node:test'
import { fileURLToPath, pathToFileURL } from 'node:url'
import { randomUUID } from 'node:crypto'

import { transform } from 'esbuild'
import { renderToString } from 'react-dom/server'

import { SECRET, WAIT, connect, freePort, makeToken, registerWhoami, startServer, withTimeout } from './helpers.mjs'

const root = join(dirname(fileURLToPath(import.meta.url)), '..')
const require = createRequire(import.meta.url)
const T = { timeout: 180_000 }

const DOCS = ['README.md', ...readdirSync(join(root, 'docs')).flatMap((f) => (f.endsWith('.md') ? [`docs/${f}`] : []))]

/** The fenced blocks of a Markdown file, with the marker on the line above each. */
function blocksOf(file) {
  const lines = readFileSync(join(root, file), 'utf8').split('\n')
  const blocks = []
  for (let i = 0; i < lines.length; i++) {
    const open = /^(\s*)```(\w*)\s*$/.exec(lines[i])
    if (!open) continue
    const indent = open[1].length
    const end = lines.findIndex((l, j) => j > i && /^\s*```\s*$/.test(l))
    assert.ok(end > i, `${file}:${i + 1}: the block is closed`)
    const marker = /^\s*<!-- (run|excerpt|config): ([\w./-]+) -->\s*$/.exec(lines[i - 1] ?? '')
    blocks.push({
      file,
      line: i + 1,
      lang: open[2],
      kind: marker?.[1],
      arg: marker?.[2],
      code: lines
        .slice(i + 1, end)
        .map((l) => l.slice(Math.min(indent, l.length - l.trimStart().length)))
        .join('\n'),
    })
    i = end
  }
  return blocks
}

const ALL = DOCS.flatMap(blocksOf)
const where = (b) => `${b.file}:${b.line}`
const cleanups = []
after(async () => {
  for (const c of cleanups.reverse()) await c()
})

// ---------------------------------------------------------------------------------------------
// Preludes: the names a snippet takes from its surroundings.

/** Whether `code` defines `name` itself (a declaration or an import). */
function defines(code, name) {
  const n = name.replace(/\$/g, '\\$')
  return (
    new RegExp(`\\b(const|let|var|function|class)\\s+${n}\\b`).test(code) ||
    new RegExp(`import\\s+(${n}\\b|(\\w+\\s*,\\s*)?\\{[^}]*\\b${n}\\b[^}]*\\})\\s*from`).test(code) ||
    new RegExp(`const\\s*\\{[^}]*\\b${n}\\b[^}]*\\}\\s*=`).test(code)
  )
}

/** The prelude's lines for the names `code` uses but does not define. */
function prelude(code, provides, always = []) {
  return Object.entries(provides)
    .filter(([name]) => (always.includes(name) || new RegExp(`\\b${name}\\b`).test(code)) && !defines(code, name))
    .map(([, line]) => line)
    .join('\n')
}

/** Fixed ports become `to` (a free one, or 0). */
const freePorts = (code, to) => code.replace(/\b(3002|9464)\b/g, String(to))

/** Writes `code` to a module beside the package (so `payload-realtime` resolves to it) and imports it. */
async function importModule(code) {
  const file = join(root, `.doc-block-${process.pid}-${randomUUID()}.mjs`)
  writeFileSync(file, code)
  try {
    return await import(pathToFileURL(file).href)
  } finally {
    rmSync(file, { force: true })
  }
}

const fixture = pathToFileURL(join(root, '__test__', 'payload-fixture.mjs')).href

// ---------------------------------------------------------------------------------------------
// Runners

/** `npm <script>` names a script of package.json; `npm install <name>` names this package. */
function runNpm(block) {
  const pkg = JSON.parse(readFileSync(join(root, 'package.json'), 'utf8'))
  const commands = block.code
    .split('\n')
    .map((l) => l.replace(/#.*$/, '').trim())
    .filter(Boolean)
  assert.ok(commands.length > 0)
  for (const c of commands) {
    const install = /^npm install (\S+)$/.exec(c)
    const script = /^npm (?:run )?(\S+)$/.exec(c)
    if (install) assert.equal(install[1], pkg.name, `${where(block)}: ${c}`)
    else if (script) assert.ok(pkg.scripts[script[1]], `${where(block)}: package.json has script "${script[1]}"`)
    else assert.fail(`${where(block)}: not an npm command this test knows: ${c}`)
  }
}

/**
 * A Payload config (`export default buildConfig(...)` with the plugin): built as written, given a
 * SQLite database when it names none, started with getPayload(); a signed-in user's socket joins
 * `posts` and receives the create of a published post. A `// ...` line in it stands for the rest
 * of the app's config: the secret and the fixture's collections go there.
 */
async function runPluginConfig(block) {
  const port = await freePort()
  let code = freePorts(block.code, port)
  const elided = /^(\s*)\/\/ \.\.\.\s*$/m
  const rest = elided.test(code)
    ? `const __elided = { secret: process.env.PAYLOAD_SECRET, collections: __collections() }`
    : ''
  code = code.replace(elided, '$1...__elided,')
  const provided = prelude(`${rest}\n${code}`, {
    buildConfig: `import { buildConfig } from 'payload'`,
    __collections: `import { collections as __collections } from ${JSON.stringify(fixture)}`,
    Users: `import { collections as __cUsers } from ${JSON.stringify(fixture)}\nconst Users = __cUsers()[0]`,
    Posts: `import { collections as __cPosts } from ${JSON.stringify(fixture)}\nconst Posts = __cPosts()[1]`,
    Comments: `const Comments = { slug: 'comments', fields: [{ name: 'body', type: 'text' }] }`,
  })
  await startAndCheck(block, port, code, async () => (await importModule(`${provided}\n${rest}\n${code}`)).default)
}

/**
 * A call of the plugin (`uWebSocketPlugin({ ... })`): the plugin of the fixture's config, checked
 * like a config.
 */
async function runPluginCall(block) {
  const port = await freePort()
  const code = freePorts(block.code, port)
  const provided = prelude(code, { uWebSocketPlugin: `import { uWebSocketPlugin } from 'payload-realtime'` })
  await startAndCheck(block, port, code, async () => {
    const { plugin } = await importModule(`${provided}\nconst plugin = ${code.trim()}\nexport { plugin }\n`)
    const { buildConfig } = await import('payload')
    const { collections } = await import('./payload-fixture.mjs')
    return buildConfig({ secret: process.env.PAYLOAD_SECRET, collections: collections(), plugins: [plugin] })
  })
}

/** Starts the config `load()` gives with Payload and checks that a post's event arrives. */
async function startAndCheck(block, port, code, load) {
  const dir = mkdtempSync(join(tmpdir(), 'payload-realtime-docs-'))
  const cwd = process.cwd()
  process.env.PAYLOAD_SECRET = SECRET
  // A relative SQLite file (`file:./app.db`) lands in the temp dir.
  process.chdir(dir)
  let payload
  try {
    const config = await load()
    config.db ??= (await import('@payloadcms/db-sqlite')).sqliteAdapter({
      client: { url: `file:${join(dir, 'test.db')}` },
    })
    for (const slug of ['users', 'posts']) {
      assert.ok(
        config.collections.some((c) => c.slug === slug),
        `${where(block)}: a ${slug} collection to test with`,
      )
    }
    config.telemetry = false
    config.typescript = { ...config.typescript, autoGenerate: false }
    const { getPayload } = await import('payload')
    payload = await getPayload({ config, key: randomUUID() })
    const { getUWebSocketManager } = await import('payload-realtime')
    assert.equal(getUWebSocketManager().port, port, `${where(block)}: listening on the port it names`)
    const email = `docs-${randomUUID()}@example.com`
    await payload.create({ collection: 'users', data: { email, password: 'pw-0123456789', role: 'admin' } })
    const { token } = await payload.login({ collection: 'users', data: { email, password: 'pw-0123456789' } })
    const origin = /allowedOrigins: \['([^']+)'/.exec(code)?.[1]
    const client = await connect(`ws://127.0.0.1:${port}/`, { token, origin })
    try {
      await client.join('posts')
      const post = await payload.create({ collection: 'posts', data: { title: 'from the docs', status: 'published' } })
      const event = await client.waitFor((m) => m.type === 'create' && m.id === post.id, { label: where(block) })
      assert.equal(event.doc.title, 'from the docs')
    } finally {
      await client.close()
    }
  } finally {
    process.chdir(cwd)
    await payload?.destroy()
    rmSync(dir, { recursive: true, force: true })
  }
}

/** A script that starts a server (`const manager = await initUWebSocket(...)`): it listens. */
async function runServerScript(block) {
  process.env.PAYLOAD_SECRET = SECRET
  const code = freePorts(block.code, 0)
  const { manager } = await importModule(`${code}\nexport { manager }\n`)
  try {
    assert.ok(manager.port > 0, `${where(block)}: listening`)
    assert.equal(manager.stats().connections, 0)
  } finally {
    await manager.close()
  }
}

/** A headless Payload script (`getPayload({ config })`, `payload.destroy()`), with the plugin. */
async function runPayloadScript(block) {
  const dir = mkdtempSync(join(tmpdir(), 'payload-realtime-docs-'))
  process.env.PAYLOAD_SECRET = SECRET
  const provided = prelude(block.code, {
    getPayload: `import { getPayload } from 'payload'`,
    config: [
      `import { buildConfig as __buildConfig } from 'payload'`,
      `import { sqliteAdapter as __sqlite } from '@payloadcms/db-sqlite'`,
      `import { uWebSocketPlugin as __plugin } from 'payload-realtime'`,
      `import { collections as __collections } from ${JSON.stringify(fixture)}`,
      `const config = await __buildConfig({ secret: process.env.PAYLOAD_SECRET, telemetry: false,`,
      `  typescript: { autoGenerate: false }, collections: __collections(),`,
      `  db: __sqlite({ client: { url: ${JSON.stringify(`file:${join(dir, 'test.db')}`)} } }),`,
      `  plugins: [__plugin({ includeCollections: ['posts'], port: 0, host: '127.0.0.1' })] })`,
    ].join('\n'),
  })
  try {
    // The script ends with payload.destroy(), which closes the server the plugin started.
    const { payload, started } = await importModule(
      `${provided}\nconst __m = await import('payload-realtime')\nlet started\n` +
        `const __origInit = config.onInit\nconfig.onInit = async (p) => { await __origInit(p); started = __m.getUWebSocketManager() }\n` +
        `${block.code}\nexport { payload, started }\n`,
    )
    assert.ok(payload, `${where(block)}: Payload started`)
    assert.ok(started && started.port > 0, `${where(block)}: the plugin's server was listening`)
    await assert.rejects(fetch(`http://127.0.0.1:${started.port}/healthz`), `${where(block)}: destroy() closed it`)
  } finally {
    rmSync(dir, { recursive: true, force: true })
  }
}

/** The server client snippets talk to: posts and orders, presence, history, two handlers. */
let clientServer
async function serverForClients() {
  if (clientServer) return clientServer
  const manager = await startServer({
    includeCollections: ['posts', 'orders'],
    presence: true,
    history: { posts: { size: 100 } },
  })
  registerWhoami(manager)
  manager.registerCustomHandler('sum', (socket, msg) => ({ sum: msg.a + msg.b }))
  cleanups.push(() => manager.close())
  clientServer = manager
  return manager
}

/**
 * A client snippet, in a child process (a browser's globals: `WebSocket`; its own clients keep
 * reconnecting until the process ends). Any `client` it has (its own or the prelude's) must
 * open; a raw `ws` must get the ack of its join. Every awaited request in it must succeed.
 */
async function runClient(block) {
  const manager = await serverForClients()
  const url = `ws://127.0.0.1:${manager.port}/`
  const code = block.code.replace(/wss?:\/\/(realtime\.example\.com|127\.0\.0\.1:3002|localhost:3002)\//g, url)
  assert.ok(!/3002|example\.com/.test(code), `${where(block)}: every URL points at the test's server`)
  const token = makeToken({ id: 'docs-reader' })
  const provided = prelude(
    code,
    {
      createRealtimeClient: `import { createRealtimeClient } from 'payload-realtime/client'`,
      url: `const url = ${JSON.stringify(url)}`,
      token: `const token = ${JSON.stringify(token)}`,
      getToken: `const getToken = async () => token`,
      cachedToken: `let cachedToken = token`,
      client: `import { createRealtimeClient as __create } from 'payload-realtime/client'\nconst client = __create({ url, token })`,
      refresh: `const refresh = () => {}`,
      refetch: `const refetch = () => {}`,
      refetchList: `const refetchList = () => {}`,
      processOrder: `const processOrder = () => {}`,
      addMember: `const addMember = () => {}`,
      removeMember: `const removeMember = () => {}`,
    },
    ['url', 'token'],
  )
  // `client` needs `url` and `token`, and `token` comes before `getToken` and `cachedToken`.
  const epilogue = `
    if (typeof client !== 'undefined' && client.status !== 'closed') {
      await new Promise((resolve) => (client.status === 'open' ? resolve() : client.on('status', (s) => s === 'open' && resolve())))
      await client.request('ping', {}).catch(() => {})
    }
    if (typeof ws !== 'undefined') {
      await new Promise((resolve, reject) => ws.addEventListener('message', ({ data }) => {
        const m = JSON.parse(data)
        if (m.type === 'ack' && m.id === 1) resolve()
        if (m.type === 'error') reject(new Error(JSON.stringify(m)))
      }))
    }
    console.log('DOC-BLOCK-OK')
    process.exit(0)
  `
  const file = join(root, `.doc-client-${process.pid}-${randomUUID()}.mjs`)
  const ordered = ['url', 'token', 'getToken', 'cachedToken', 'createRealtimeClient', 'client']
  const lines = provided.split('\n')
  lines.sort((a, b) => rank(a) - rank(b))
  function rank(line) {
    const i = ordered.findIndex((n) => new RegExp(`^(const|let|import)\\b[^=]*\\b${n}\\b`).test(line))
    return i < 0 ? ordered.length : i
  }
  writeFileSync(
    file,
    `globalThis.WebSocket ??= (await import('ws')).default\n${lines.join('\n')}\n${code}\n${epilogue}`,
  )
  try {
    const {
      stdout,
      stderr,
      code: exit,
    } = await new Promise((resolve) =>
      execFile(process.execPath, [file], { cwd: root, timeout: WAIT }, (err, stdout, stderr) =>
        resolve({ stdout, stderr, code: err ? (err.code ?? err.signal) : 0 }),
      ),
    )
    assert.equal(exit, 0, `${where(block)}: ${stderr}`)
    assert.match(stdout, /DOC-BLOCK-OK/, `${where(block)}: ${stdout}\n${stderr}`)
    assert.doesNotMatch(stderr, /RealtimeClientError|Error:/, `${where(block)}: ${stderr}`)
  } finally {
    if (!process.env.DOCS_TEST_KEEP) rmSync(file, { force: true })
  }
}

/**
 * A live-query script: run as written in a child process against a real Payload (the fixture's,
 * with its REST API served by payload-rest.mjs on the block's :3000 and the plugin's server on
 * its :3002), with `PAYLOAD_TOKEN` an admin's token. It must print `ready` with the published post
 * the test wrote, then the post the test publishes while it runs (the live part).
 */
async function runLiveQuery(block) {
  const { startPayload } = await import(fixture)
  const { startRest } = await import(pathToFileURL(join(root, '__test__', 'payload-rest.mjs')).href)
  const ctx = await startPayload({})
  const rest = await startRest(ctx)
  const file = join(root, `.doc-client-${process.pid}-${randomUUID()}.mjs`)
  let child
  try {
    const { token } = await ctx.createUser('docs-admin@example.com', { role: 'admin' })
    await ctx.payload.create({ collection: 'posts', data: { title: 'first', status: 'published' } })
    const code = block.code
      .replace(/http:\/\/127\.0\.0\.1:3000/g, rest.origin)
      .replace(/ws:\/\/127\.0\.0\.1:3002\//g, ctx.url())
    assert.ok(!/127\.0\.0\.1:(3000|3002)/.test(code), `${where(block)}: every URL points at the test's servers`)
    writeFileSync(file, code)
    const { spawn } = await import('node:child_process')
    child = spawn(process.execPath, [file], { cwd: root, env: { ...process.env, PAYLOAD_TOKEN: token } })
    let out = ''
    child.stdout.on('data', (d) => (out += d))
    child.stderr.on('data', (d) => (out += d))
    const seen = (re) =>
      withTimeout(
        new Promise((resolve) => {
          const check = () => (re.test(out) ? resolve() : setTimeout(check, 20))
          check()
        }),
        WAIT,
        `${where(block)}: ${re} in its output:\n${out}`,
      )
    await seen(/^ready \[ 'first' \]/m)
    await ctx.payload.create({ collection: 'posts', data: { title: 'second', status: 'published' } })
    await ctx.payload.create({ collection: 'posts', data: { title: 'a draft', status: 'draft' } })
    await seen(/^ready \[ 'first', 'second' \]/m)
    assert.doesNotMatch(out, /a draft|Error/, out)
  } finally {
    child?.kill('SIGINT')
    rmSync(file, { force: true })
    await rest.close()
    await ctx.close()
  }
}

/**
 * A React snippet: compiled as JSX, rendered with react-dom/server the way react.test.mjs does
 * (nothing connects during a server render). The element it writes (`<RealtimeProvider ...>`)
 * or its exported `App` is what is rendered.
 */
async function runReact(block) {
  const source = block.code.replace(/^</m, 'globalThis.__docElement = <')
  const provided = prelude(source, {
    url: `const url = 'ws://127.0.0.1:9/'`,
    getToken: `const getToken = async () => 'token'`,
    useState: `import { useState } from 'react'`,
    setPosts: `const setPosts = () => {}`,
    apply: `const apply = (list) => list`,
    List: `const List = ({ items }) => <ul>{items.map((i) => <li key={i.id}>{i.id}</li>)}</ul>`,
    Spinner: `const Spinner = () => null`,
  })
  // A block that only defines a component (`function Progress() {...}`) renders it in a provider.
  const components = [...source.matchAll(/^function ([A-Z]\w*)\(/gm)].map((m) => m[1])
  const last = components.at(-1)
  const exposed = last ? `\nglobalThis.__docComponent = ${last}` : ''
  const { code } = await transform(`${provided}\n${source}${exposed}`, {
    loader: 'jsx',
    jsx: 'automatic',
    format: 'esm',
  })
  globalThis.__docElement = undefined
  globalThis.__docComponent = undefined
  const mod = await importModule(code)
  const { createElement } = await import('react')
  const { RealtimeProvider } = await import('payload-realtime/react')
  const element =
    globalThis.__docElement ??
    (mod.App && { type: mod.App, props: {} }) ??
    (globalThis.__docComponent &&
      createElement(RealtimeProvider, { url: 'ws://127.0.0.1:9/' }, createElement(globalThis.__docComponent)))
  assert.ok(element, `${where(block)}: an element, an App or a component to render`)
  const html = renderToString(element.$$typeof ? element : createElement(element.type, element.props))
  assert.equal(typeof html, 'string')
  if (/useRealtimeStatus/.test(block.code) && /<span>\{status\}/.test(block.code)) assert.match(html, /closed/)
}

/** A TypeScript block, checked by `tsc --noEmit` with the settings of __test__/types (strict). */
async function runTypes(block) {
  const dir = mkdtempSync(join(root, '__test__', 'types', '.doc-'))
  try {
    writeFileSync(join(dir, 'block.ts'), `${block.code}\nexport {}\n`)
    const base = JSON.parse(readFileSync(join(root, '__test__', 'types', 'tsconfig.json'), 'utf8'))
    writeFileSync(join(dir, 'tsconfig.json'), JSON.stringify({ ...base, files: ['block.ts'] }))
    const tsc = createRequire(import.meta.url).resolve('typescript/bin/tsc')
    const out = await new Promise((resolve) =>
      execFile(process.execPath, [tsc, '--noEmit', '-p', dir], (error, stdout, stderr) =>
        resolve({ code: error ? (error.code ?? 1) : 0, text: stdout + stderr }),
      ),
    )
    assert.equal(out.code, 0, `${where(block)}: tsc failed:\n${out.text}`)
  } finally {
    rmSync(dir, { recursive: true, force: true })
  }
}

/** An event as JSON: the contract's fields only, an ISO timestamp, an editor by id and collection. */
function runEventJson(block) {
  const event = JSON.parse(block.code)
  assert.deepEqual(
    Object.keys(event).filter((k) => !['type', 'collection', 'id', 'doc', 'user', 'timestamp'].includes(k)),
    [],
  )
  assert.ok(['create', 'update', 'delete'].includes(event.type))
  assert.equal(new Date(event.timestamp).toISOString(), event.timestamp)
  assert.deepEqual(Object.keys(event.user).sort(), ['collection', 'id'])
}

/** Every line of the block is in `path`, a file a test imports or runs. */
function checkExcerpt(block) {
  const text = readFileSync(join(root, block.arg), 'utf8')
  for (const line of block.code.split('\n').map((l) => l.trim())) {
    // A first comment may name the file (`// src/instrumentation.ts`).
    if (line === '' || line === '// ...' || (line.startsWith('// ') && block.arg.endsWith(line.slice(3)))) continue
    assert.ok(text.includes(line), `${where(block)}: ${block.arg} has: ${line}`)
  }
  const tests = readdirSync(join(root, '__test__')).filter((f) => f.endsWith('.test.mjs'))
  const name = block.arg.replace(/^examples\/(next\/src\/)?/, '')
  assert.ok(
    tests.some((f) => readFileSync(join(root, '__test__', f), 'utf8').includes(name)),
    `${where(block)}: a test runs ${block.arg}`,
  )
}

/** Configs that cannot run here: what the realtime server needs of each. */
const CONFIGS = {
  nginx: (c) =>
    ['proxy_http_version 1.1', 'Upgrade $http_upgrade', 'Connection "upgrade"', 'X-Forwarded-For'].every((l) =>
      c.includes(l),
    ),
  caddy: (c) => /reverse_proxy 127\.0\.0\.1:3002/.test(c),
  kubernetes: (c) =>
    c.includes('path: /readyz') && c.includes('path: /healthz') && /terminationGracePeriodSeconds/.test(c),
}

// Started before any plugin is built: a plugin built in this process hands its options (its
// Payload's verifyUser) to every later initUWebSocket() call, as the drop-in's
// `initUWebSocket(3002)` after getPayload() needs.
before(() => serverForClients())

const RUNNERS = {
  npm: runNpm,
  plugin: runPluginConfig,
  'plugin-call': runPluginCall,
  server: runServerScript,
  'payload-script': runPayloadScript,
  client: runClient,
  'live-query': runLiveQuery,
  react: runReact,
  types: runTypes,
  'event-json': runEventJson,
}

// ---------------------------------------------------------------------------------------------

test('every code block of README.md and docs/*.md has a runner or a checked marker', () => {
  assert.ok(ALL.length >= 20, `found ${ALL.length} blocks`)
  const unmarked = ALL.filter(
    (b) =>
      !(b.kind === 'run' && RUNNERS[b.arg]) &&
      !(b.kind === 'config' && CONFIGS[b.arg]) &&
      !(b.kind === 'excerpt' && b.arg),
  )
  assert.deepEqual(
    unmarked.map(where),
    [],
    'each block needs <!-- run: KIND --> (a runner here), <!-- excerpt: FILE --> or <!-- config: NAME --> above it',
  )
})

/** A Markdown file's text without its fenced blocks and code spans (they hold no links). */
function prose(file) {
  return readFileSync(join(root, file), 'utf8')
    .replace(/^\s*```[\s\S]*?^\s*```\s*$/gm, '')
    .replace(/`[^`\n]*`/g, '')
}

/** The anchors GitHub and npm give a file's headings: lower case, punctuation dropped, `-` for spaces, `-1` for a repeat. */
function anchorsOf(file) {
  const seen = new Map()
  const text = readFileSync(join(root, file), 'utf8').replace(/^\s*```[\s\S]*?^\s*```\s*$/gm, '')
  return new Set(
    [...text.matchAll(/^#{1,6} +(.+?) *#* *$/gm)].map(([, heading]) => {
      const slug = heading
        .toLowerCase()
        .replace(/[^\p{L}\p{N} _-]/gu, '')
        .replace(/ /g, '-')
      const n = seen.get(slug) ?? 0
      seen.set(slug, n + 1)
      return n ? `${slug}-${n}` : slug
    }),
  )
}

test('every relative link and #anchor of README.md and docs/*.md resolves', () => {
  const broken = []
  let checked = 0
  for (const file of DOCS) {
    for (const [, href] of prose(file).matchAll(/\]\(([^)\s]+)\)/g)) {
      if (/^[a-z][a-z+.-]*:/i.test(href)) continue // https:, mailto:
      const [path, hash] = href.split('#')
      const target = path ? join(dirname(file), path) : file
      checked++
      if (!existsSync(join(root, target))) broken.push(`${file}: ${href} (no ${target})`)
      else if (hash !== undefined && !target.endsWith('.md'))
        broken.push(`${file}: ${href} (an anchor into a file that is not Markdown)`)
      else if (hash !== undefined && !anchorsOf(target).has(hash))
        broken.push(`${file}: ${href} (no heading #${hash} in ${target})`)
    }
  }
  assert.ok(checked >= 40, `links found: ${checked}`)
  assert.deepEqual(broken, [])
})

for (const block of ALL) {
  const what = block.kind === 'run' ? block.arg : `${block.kind} ${block.arg}`
  test(`${where(block)} (${block.lang}): ${what}`, T, async () => {
    if (block.kind === 'run') return withTimeout(Promise.resolve(RUNNERS[block.arg](block)), 150_000, where(block))
    if (block.kind === 'excerpt') return checkExcerpt(block)
    assert.ok(CONFIGS[block.arg](block.code), `${where(block)}: the ${block.arg} config has what the server needs`)
  })
}
