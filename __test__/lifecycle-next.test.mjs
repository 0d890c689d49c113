// The server's life inside a host like Next.js, without Next itself (the Next app's own tests
// build and run one): Payload's dev reload (the config built again, onInit not run again, this
// package's modules evaluated anew) keeps one server per port whose rules are the latest; no port
// is bound during `next build`; SIGTERM and SIGINT close every socket with 1001 and free the port.

import assert from 'node:assert/strict'
import { spawn } from 'node:child_process'
import { mkdtempSync, rmSync } from 'node:fs'
import { createRequire } from 'node:module'
import net from 'node:net'
import { tmpdir } from 'node:os'
import { dirname, join } from 'node:path'
import { randomBytes, randomUUID } from 'node:crypto'
import { test } from 'node:test'
import { fileURLToPath } from 'node:url'

import { buildConfig, getPayload } from 'payload'
import { sqliteAdapter } from '@payloadcms/db-sqlite'

import { collections, PASSWORD } from './payload-fixture.mjs'
import { SECRET, WAIT, connect, freePort, makeToken, waitUntil, withTimeout } from './helpers.mjs'

const T = { timeout: 120_000 }
const root = join(dirname(fileURLToPath(import.meta.url)), '..')
const require = createRequire(import.meta.url)

/** This package as a fresh evaluation of its modules, as a bundler's reload gives it. */
function freshPackage() {
  for (const key of Object.keys(require.cache)) {
    if (key.startsWith(join(root, 'lib')) || key === join(root, 'index.js')) delete require.cache[key]
  }
  return require(join(root, 'index.js'))
}

async function config({ dir, secret, plugin }) {
  return buildConfig({
    secret,
    telemetry: false,
    typescript: { autoGenerate: false },
    logger: { options: { level: 'error' } },
    db: sqliteAdapter({ client: { url: `file:${join(dir, 'app.db')}` } }),
    collections: collections(),
    plugins: [plugin],
  })
}

test(
  'a dev reload keeps one server per port, with the latest rules; a changed server option restarts it',
  T,
  async () => {
    process.env.DISABLE_PAYLOAD_HMR = 'true'
    const dir = mkdtempSync(join(tmpdir(), 'payload-realtime-reload-'))
    const secret = randomBytes(24).toString('hex')
    const port = await freePort()
    const key = randomUUID()
    const base = { port, host: '127.0.0.1', includeCollections: ['posts'], readAccess: false }
    let pkg = freshPackage()
    const payload = await getPayload({ config: await config({ dir, secret, plugin: pkg.uWebSocketPlugin(base) }), key })
    const clients = []
    try {
      const first = pkg.getUWebSocketManager()
      await payload.create({ collection: 'users', data: { email: 'a@example.com', password: PASSWORD } })
      const { token } = await payload.login({
        collection: 'users',
        data: { email: 'a@example.com', password: PASSWORD },
      })
      const client = await connect(`ws://127.0.0.1:${port}/`, { token, label: 'admin' })
      clients.push(client)
      await client.join('posts')

      /** Payload's own reload: the config built again by a fresh copy of this package. */
      const reload = async (options) => {
        pkg = freshPackage()
        globalThis._payload.get(key).reload = true
        const again = await getPayload({
          config: await config({ dir, secret, plugin: pkg.uWebSocketPlugin(options) }),
          key,
        })
        assert.equal(again, payload, 'Payload reloads the same instance')
      }
      for (let n = 1; n <= 3; n++) {
        // Each reload brings a rule that hides the posts titled with its number.
        await reload({ ...base, authorize: { posts: (user, event) => event.doc.title !== `hidden ${n}` } })
      }
      assert.equal(pkg.getUWebSocketManager(), first, 'the fresh copy finds the running server')
      assert.equal(first.stats().connections, 1, 'the socket stayed connected')

      for (const title of ['hidden 1', 'hidden 3', 'shown'])
        await payload.create({ collection: 'posts', data: { title } })
      const shown = await client.waitFor((m) => m.type === 'create' && m.doc.title === 'shown', { label: 'shown' })
      assert.ok(shown)
      assert.deepEqual(
        client.events('posts').map((e) => e.doc.title),
        ['hidden 1', 'shown'],
        'exactly one event per write, judged by the latest rule',
      )

      // An option the native server holds: a new server on the same port; the old sockets get 1001.
      await reload({ ...base, maxMessagesPerSecond: 50 })
      assert.equal((await client.waitForClose()).code, 1001)
      const restarted = await waitUntil(() => {
        // Between the old server's close and the new one's start there is none (not-started).
        try {
          const m = pkg.getUWebSocketManager()
          return m !== first && m
        } catch {
          return false
        }
      })
      assert.equal(restarted.port, port)
      const again = await connect(`ws://127.0.0.1:${port}/`, { token, label: 'admin-again' })
      clients.push(again)
      await again.join('posts')
      await payload.create({ collection: 'posts', data: { title: 'after restart' } })
      await again.waitFor((m) => m.type === 'create' && m.doc.title === 'after restart', { label: 'the event' })
      assert.equal(again.events('posts').length, 1)
    } finally {
      await Promise.allSettled(clients.map((c) => c.close()))
      await withTimeout(payload.destroy(), WAIT, 'payload.destroy()')
      rmSync(dir, { recursive: true, force: true })
    }
    await assert.rejects(async () => pkg.getUWebSocketManager(), /not started/, 'destroy closed the restarted server')
    // The reloaded copy's defaults went with that Payload (the destroy hook was the first copy's):
    // a server started now is the application's own, with no Payload's verifyUser.
    const own = await pkg.initUWebSocket(0, { host: '127.0.0.1', secret: SECRET, includeCollections: ['posts'] })
    try {
      const standalone = await connect(`ws://127.0.0.1:${own.port}/`, { token: makeToken({ id: 'standalone' }) })
      await standalone.join('posts')
      await standalone.close()
    } finally {
      await own.close()
    }
  },
)

test('next build: onInit binds no port, even one that is taken', T, async () => {
  process.env.DISABLE_PAYLOAD_HMR = 'true'
  const dir = mkdtempSync(join(tmpdir(), 'payload-realtime-build-'))
  // The production server of the previous release holds the port while the next one builds.
  const holder = net.createServer().listen(0, '127.0.0.1')
  await new Promise((r) => holder.once('listening', r))
  const { port } = holder.address()
  process.env.NEXT_PHASE = 'phase-production-build'
  const pkg = freshPackage()
  let payload
  try {
    payload = await getPayload({
      config: await config({
        dir,
        secret: randomBytes(24).toString('hex'),
        plugin: pkg.uWebSocketPlugin({ port, host: '127.0.0.1', includeCollections: ['posts'] }),
      }),
      key: randomUUID(),
    })
    assert.throws(() => pkg.getUWebSocketManager(), /not started/)
    // Writes during the build (seed scripts, static pages) still work, with nobody to tell.
    await payload.create({ collection: 'posts', data: { title: 'built' } })
  } finally {
    delete process.env.NEXT_PHASE
    await payload?.destroy()
    holder.close()
    rmSync(dir, { recursive: true, force: true })
  }
})

/** Runs a child process with a server on a free port; resolves once it listens. */
async function child(script) {
  const proc = spawn(process.execPath, ['--input-type=module', '-e', script], {
    cwd: root,
    env: { ...process.env, SECRET },
    stdio: ['ignore', 'pipe', 'inherit'],
  })
  const exited = new Promise((resolve) => proc.once('exit', (code, signal) => resolve({ code, signal })))
  const port = await withTimeout(
    new Promise((resolve, reject) => {
      let out = ''
      proc.stdout.on('data', (d) => {
        out += d
        const m = /listening (\d+)/.exec(out)
        if (m) resolve(Number(m[1]))
      })
      proc.once('exit', () => reject(new Error(`the child exited before listening: ${out}`)))
    }),
    WAIT,
    'the child server',
  )
  return { proc, port, exited }
}

const serve = (extra = '') => `
  import { initUWebSocket } from './index.mjs'
  const m = await initUWebSocket(0, { host: '127.0.0.1', secret: process.env.SECRET })
  ${extra}
  console.log('listening ' + m.port)
`

for (const signal of ['SIGTERM', 'SIGINT']) {
  test(`${signal}: every socket gets 1001, the port is freed, the process ends by the signal`, T, async () => {
    const { proc, port, exited } = await child(serve())
    const client = await connect(`ws://127.0.0.1:${port}/`, { token: makeToken() })
    proc.kill(signal)
    assert.equal((await client.waitForClose()).code, 1001)
    assert.deepEqual(await withTimeout(exited, WAIT, 'the exit'), { code: null, signal })
    await new Promise((resolve, reject) => {
      const s = net.createServer().once('error', reject)
      s.listen(port, '127.0.0.1', () => s.close(resolve))
    })
  })
}

test("SIGTERM with the host's own handler that exits (as Next's does): sockets still get 1001", T, async () => {
  // Registered before the server starts, like Next's: it runs first and exits at once.
  const { exited, port, proc } = await child(
    serve().replace('const m', "process.on('SIGTERM', () => process.exit(0))\n  const m"),
  )
  const clients = await Promise.all(
    [1, 2, 3].map((i) => connect(`ws://127.0.0.1:${port}/`, { token: makeToken({ id: `u${i}` }) })),
  )
  proc.kill('SIGTERM')
  for (const c of clients) assert.equal((await c.waitForClose()).code, 1001)
  assert.deepEqual(await withTimeout(exited, WAIT, 'the exit'), { code: 0, signal: null })
})
