// The package as users install it: `npm pack` gives a tarball with the built addon; installed in
// a fresh project next to `payload` and `@payloadcms/db-sqlite`, a config with
// `plugins: [uWebSocketPlugin({...})]` delivers an event to a logged-in socket.
//
// The install uses npm's cache first (`--prefer-offline`), the same versions of payload,
// @payloadcms/db-sqlite and graphql as this repository's devDependencies.

import assert from 'node:assert/strict'
import { spawn, spawnSync } from 'node:child_process'
import { mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { dirname, join } from 'node:path'
import { test } from 'node:test'
import { fileURLToPath, pathToFileURL } from 'node:url'

const root = join(dirname(fileURLToPath(import.meta.url)), '..')
const versionOf = (name) =>
  JSON.parse(readFileSync(join(root, 'node_modules', ...name.split('/'), 'package.json'), 'utf8')).version

function npm(args, cwd) {
  const r = spawnSync('npm', args, {
    cwd,
    encoding: 'utf8',
    env: { ...process.env, npm_config_update_notifier: 'false' },
  })
  if (r.status !== 0) throw new Error(`npm ${args.join(' ')} failed (${r.status}):\n${r.stdout}\n${r.stderr}`)
  return r.stdout
}

/** Runs `node file` in `cwd` and resolves with its stdout (rejects on a non-zero exit). */
function runNode(file, cwd, env) {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [file], { cwd, env: { ...process.env, ...env } })
    let out = ''
    let err = ''
    child.stdout.on('data', (d) => (out += d))
    child.stderr.on('data', (d) => (err += d))
    child.on('error', reject)
    child.on('close', (code, signal) => {
      if (code === 0) resolve(out)
      else reject(new Error(`node ${file} exited with ${code ?? signal}\n${out}\n${err}`))
    })
  })
}

// The application a user writes: plain Node ESM, headless Payload on SQLite, our plugin.
const APP = (wsModule) => `
import { createRequire } from 'node:module'
import { buildConfig, getPayload } from 'payload'
import { sqliteAdapter } from '@payloadcms/db-sqlite'
import { uWebSocketPlugin, getUWebSocketManager } from 'payload-realtime'
import WebSocket from ${JSON.stringify(wsModule)}

const require = createRequire(import.meta.url)
const cjs = require('payload-realtime')
if (typeof cjs.uWebSocketPlugin !== 'function') throw new Error('the CommonJS entry lacks uWebSocketPlugin')

const config = buildConfig({
  secret: 'pack-test-secret',
  telemetry: false,
  typescript: { autoGenerate: false },
  logger: { options: { level: 'error' } },
  db: sqliteAdapter({ client: { url: 'file:./app.db' } }),
  collections: [
    { slug: 'users', auth: true, fields: [] },
    { slug: 'posts', fields: [{ name: 'title', type: 'text' }] },
  ],
  plugins: [uWebSocketPlugin({ includeCollections: ['posts'], port: 0, host: '127.0.0.1' })],
})
const payload = await getPayload({ config })
const manager = getUWebSocketManager()
await payload.create({ collection: 'users', data: { email: 'dev@example.com', password: 'secret-password' } })
const { token, user } = await payload.login({ collection: 'users', data: { email: 'dev@example.com', password: 'secret-password' } })

const ws = new WebSocket('ws://127.0.0.1:' + manager.port + '/', { headers: { Authorization: 'JWT ' + token } })
const event = await new Promise((resolve, reject) => {
  const guard = setTimeout(() => reject(new Error('no event within 30 s')), 30000)
  ws.on('error', reject)
  ws.on('open', () => ws.send(JSON.stringify({ type: 'join-collection', collection: 'posts', id: 'join' })))
  ws.on('message', async (data) => {
    const msg = JSON.parse(String(data))
    if (msg.type === 'ack' && msg.id === 'join') {
      await payload.create({ collection: 'posts', data: { title: 'from the tarball' }, user })
    } else if (msg.type === 'create') {
      clearTimeout(guard)
      resolve(msg)
    }
  })
})
ws.close()
await payload.destroy()
console.log(JSON.stringify({ event, userId: user.id, resolved: require.resolve('payload-realtime') }))
`

test('npm pack gives a tarball that works as a Payload plugin in a fresh project', { timeout: 300_000 }, async () => {
  const dir = mkdtempSync(join(tmpdir(), 'payload-realtime-pack-'))
  try {
    const packed = JSON.parse(npm(['pack', '--json', '--ignore-scripts', '--pack-destination', dir, root], root))
    const files = packed[0].files.map((f) => f.path)
    assert.ok(
      files.some((f) => f.endsWith('.node')),
      `the tarball carries the built addon: ${files.join(', ')}`,
    )
    for (const f of ['index.js', 'index.mjs', 'index.d.ts', 'lib/native.js', 'lib/plugin.js', 'lib/manager.js']) {
      assert.ok(files.includes(f), `the tarball has ${f}`)
    }
    // napi-rs's generated binding.js requires the .node file statically, which bundlers (Next.js)
    // cannot build; lib/native.js loads it instead, so binding.js is not shipped.
    assert.ok(!files.includes('binding.js'), 'the tarball has no binding.js')
    assert.ok(!files.some((f) => f.startsWith('__test__/') || f.startsWith('src/') || f.startsWith('target/')))
    // The README's and docs' links to files of the package resolve in the tarball (npm shows
    // the README on its own: a link into a file it lacks is dead there).
    for (const page of files.filter((f) => f === 'README.md' || (f.startsWith('docs/') && f.endsWith('.md')))) {
      const text = readFileSync(join(root, page), 'utf8')
      for (const [, target] of text.matchAll(/\]\(([^)#\s]+)(?:#[^)]*)?\)/g)) {
        if (/^[a-z]+:/.test(target)) continue
        const file = join(dirname(page), target).replace(/\\/g, '/')
        if (file.startsWith('examples/')) continue // the repository's, linked for reading
        assert.ok(
          files.includes(file) || files.some((f) => f.startsWith(`${file}/`)),
          `${page} links ${target}, which the tarball lacks`,
        )
      }
    }

    const project = join(dir, 'app')
    mkdirSync(project)
    writeFileSync(join(project, 'package.json'), JSON.stringify({ name: 'app', private: true, type: 'module' }))
    npm(
      [
        'install',
        '--prefer-offline',
        '--no-audit',
        '--no-fund',
        join(dir, packed[0].filename),
        `payload@${versionOf('payload')}`,
        `@payloadcms/db-sqlite@${versionOf('@payloadcms/db-sqlite')}`,
        `graphql@${versionOf('graphql')}`,
      ],
      project,
    )
    // The client side of the test only: `ws` from this repository.
    writeFileSync(join(project, 'app.mjs'), APP(pathToFileURL(join(root, 'node_modules', 'ws', 'wrapper.mjs')).href))
    const out = await runNode('app.mjs', project, { DISABLE_PAYLOAD_HMR: 'true', NODE_ENV: 'development' })
    const result = JSON.parse(out.trim().split('\n').pop())
    assert.ok(result.resolved.startsWith(join(project, 'node_modules', 'payload-realtime')), result.resolved)
    assert.equal(result.event.type, 'create')
    assert.equal(result.event.collection, 'posts')
    assert.equal(result.event.doc.title, 'from the tarball')
    assert.deepEqual(result.event.user, { id: result.userId, collection: 'users' })
  } finally {
    rmSync(dir, { recursive: true, force: true })
  }
})
