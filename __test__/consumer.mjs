// A fresh project that uses the package as a user does, outside this repository: shared by
// pack.test.mjs (the `npm pack` tarball), payload-versions.test.mjs (the lowest and newest
// Payload 3) and install.test.mjs (npm, pnpm and yarn; ESM and CommonJS).

import { spawn, spawnSync } from 'node:child_process'
import { mkdirSync, readFileSync, writeFileSync } from 'node:fs'
import { dirname, join } from 'node:path'
import { fileURLToPath, pathToFileURL } from 'node:url'

export const root = join(dirname(fileURLToPath(import.meta.url)), '..')

/** The version of a package in this repository's node_modules. */
export const versionOf = (name) =>
  JSON.parse(readFileSync(join(root, 'node_modules', ...name.split('/'), 'package.json'), 'utf8')).version

/** Runs `cmd args` in `cwd`; throws with its output on a non-zero exit, else returns stdout. */
export function sh(cmd, args, cwd, env = {}) {
  const r = spawnSync(cmd, args, {
    cwd,
    encoding: 'utf8',
    env: { ...process.env, npm_config_update_notifier: 'false', ...env },
  })
  if (r.status !== 0) {
    throw new Error(`${cmd} ${args.join(' ')} failed (${r.status ?? r.error}):\n${r.stdout}\n${r.stderr}`)
  }
  return r.stdout
}

export const npm = (args, cwd) => sh('npm', args, cwd)

/**
 * Removes a temp project in a detached `rm -rf` that outlives the test: Payload's node_modules
 * are tens of thousands of files, and deleting a few of them took 15-120 s on a busy machine.
 */
export function removeLater(dir) {
  spawn('rm', ['-rf', dir], { detached: true, stdio: 'ignore' }).unref()
}

/** Runs `node file` in `cwd` and resolves with its stdout (rejects on a non-zero exit). */
export function runNode(file, cwd, env) {
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

/** The last line of a consumer's stdout, which it prints as JSON. */
export const lastJson = (out) => JSON.parse(out.trim().split('\n').pop())

// The client side of the tests: `ws` from this repository, so the consumer needs nothing else.
const wsDir = join(root, 'node_modules', 'ws')

/**
 * The application a user writes: headless Payload on SQLite with our plugin; a logged-in socket
 * joins `posts`, a post is created, and the event it gets is printed as JSON. Needs `payload`,
 * `@payloadcms/db-sqlite` and `graphql` installed beside `payload-realtime`.
 * `esm`: an ES module (Payload's templates are `"type": "module"`), which also checks the CommonJS
 * entry; else a CommonJS script that requires the plugin (Payload itself is ESM: `import()`).
 * Payload 3.0 has no `payload.destroy()`.
 */
export function payloadApp({ esm = true, db = 'app.db' } = {}) {
  const head = esm
    ? `import { createRequire } from 'node:module'
import { buildConfig, getPayload } from 'payload'
import { sqliteAdapter } from '@payloadcms/db-sqlite'
import { uWebSocketPlugin, getUWebSocketManager } from 'payload-realtime'
import WebSocket from ${JSON.stringify(pathToFileURL(join(wsDir, 'wrapper.mjs')).href)}

const require = createRequire(import.meta.url)
const cjs = require('payload-realtime')
if (typeof cjs.uWebSocketPlugin !== 'function') throw new Error('the CommonJS entry lacks uWebSocketPlugin')
`
    : `'use strict'
const { uWebSocketPlugin, getUWebSocketManager } = require('payload-realtime')
const WebSocket = require(${JSON.stringify(join(wsDir, 'index.js'))})

async function main() {
const { buildConfig, getPayload } = await import('payload')
const { sqliteAdapter } = await import('@payloadcms/db-sqlite')
`
  const body = `
const config = buildConfig({
  secret: 'pack-test-secret',
  telemetry: false,
  typescript: { autoGenerate: false },
  logger: { options: { level: 'error' } },
  db: sqliteAdapter({ client: { url: ${JSON.stringify(`file:./${db}`)} } }),
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
if (typeof payload.destroy === 'function') await payload.destroy()
else await manager.close()
console.log(JSON.stringify({ event, userId: user.id, resolved: require.resolve('payload-realtime') }))
`
  return esm ? head + body : `${head}${body}}\n\nmain().catch((err) => {\n  console.error(err)\n  process.exit(1)\n})\n`
}

/** Writes payloadApp() into `dir` (app.mjs, or app.cjs for `esm: false`) and runs it; returns
 * what it printed. */
export async function runPayloadApp(dir, { esm = true, env = {} } = {}) {
  const file = esm ? 'app.mjs' : 'app.cjs'
  writeFileSync(join(dir, file), payloadApp({ esm, db: `${file}.db` }))
  return lastJson(await runNode(file, dir, { DISABLE_PAYLOAD_HMR: 'true', NODE_ENV: 'development', ...env }))
}

/** Makes the fresh ESM project `dir` and installs into it the package `tarball` with `payload` and
 * `@payloadcms/db-sqlite` at `payloadVersion`/`dbVersion` and this repository's graphql (npm's
 * cache first). */
export function installApp(dir, tarball, payloadVersion, dbVersion = payloadVersion) {
  mkdirSync(dir)
  writeFileSync(join(dir, 'package.json'), JSON.stringify({ name: 'app', private: true, type: 'module' }))
  npm(
    [
      'install',
      '--prefer-offline',
      '--no-audit',
      '--no-fund',
      tarball,
      `payload@${payloadVersion}`,
      `@payloadcms/db-sqlite@${dbVersion}`,
      `graphql@${versionOf('graphql')}`,
    ],
    dir,
  )
}

/** The version of `name` installed in the project `dir`. */
export const installedVersion = (dir, name) =>
  JSON.parse(readFileSync(join(dir, 'node_modules', ...name.split('/'), 'package.json'), 'utf8')).version

/** Checks what payloadApp() printed: the create event of the post, by the logged-in user. */
export function checkPayloadEvent(assert, result) {
  assert.equal(result.event.type, 'create')
  assert.equal(result.event.collection, 'posts')
  assert.equal(result.event.doc.title, 'from the tarball')
  assert.deepEqual(result.event.user, { id: result.userId, collection: 'users' })
}
