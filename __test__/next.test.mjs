// payload-realtime in a real Payload 3 app on Next.js (examples/next, Payload's blank template on
// SQLite), with no configuration for it: no `serverExternalPackages`. For each builder, webpack
// and Turbopack: `next build` succeeds, the browser's bundles carry nothing of the addon,
// `next start` serves the admin and the frontend page (a client component using
// `payload-realtime/react`), and a post created through Payload's REST API reaches a WebSocket
// client on the plugin's port exactly once.
//
// The package is installed as users get it: `npm pack` (the files of package.json `files`),
// unpacked into examples/next/node_modules/payload-realtime. Everything else (next, payload,
// @payloadcms/*, react) is this repository's devDependencies, found in the root node_modules the
// way a monorepo's hoisted dependencies are. examples/next has its own package.json, so the app
// cannot resolve `payload-realtime` to the repository by self-reference.

import assert from 'node:assert/strict'
import { spawn, spawnSync } from 'node:child_process'
import { existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, statSync } from 'node:fs'
import { createServer } from 'node:net'
import { tmpdir } from 'node:os'
import { dirname, join } from 'node:path'
import { after, before, test } from 'node:test'
import { fileURLToPath } from 'node:url'

import { connect, isEvent, waitUntil } from './helpers.mjs'

const root = join(dirname(fileURLToPath(import.meta.url)), '..')
const app = join(root, 'examples', 'next')
const installed = join(app, 'node_modules', 'payload-realtime')
const nextBin = join(root, 'node_modules', 'next', 'dist', 'bin', 'next')
const T = { timeout: 600_000 }

let tmp

function freePort() {
  return new Promise((resolve, reject) => {
    const srv = createServer()
    srv.on('error', reject)
    srv.listen(0, '127.0.0.1', () => {
      const { port } = srv.address()
      srv.close(() => resolve(port))
    })
  })
}

/** Runs a command to its end, resolving `{ code, out }` (stdout and stderr together). */
function run(cmd, args, { cwd, env }) {
  return new Promise((resolve, reject) => {
    const child = spawn(cmd, args, { cwd, env: { ...process.env, ...env } })
    let out = ''
    child.stdout.on('data', (d) => (out += d))
    child.stderr.on('data', (d) => (out += d))
    child.on('error', reject)
    child.on('close', (code, signal) => resolve({ code: code ?? signal, out }))
  })
}

/** `next start` in its own process group, so that stopping it stops whatever it started. */
function startNext(env) {
  const child = spawn(process.execPath, [nextBin, 'start', '--port', env.PORT], {
    cwd: app,
    env: { ...process.env, ...env },
    detached: true,
  })
  let out = ''
  child.stdout.on('data', (d) => (out += d))
  child.stderr.on('data', (d) => (out += d))
  const exited = new Promise((resolve) => child.on('close', (code, signal) => resolve(code ?? signal)))
  return {
    output: () => out,
    exited,
    async stop() {
      try {
        process.kill(-child.pid, 'SIGTERM')
      } catch {
        return
      }
      const timer = setTimeout(() => {
        try {
          process.kill(-child.pid, 'SIGKILL')
        } catch {
          // already gone
        }
      }, 10_000)
      await exited
      clearTimeout(timer)
    },
  }
}

async function httpStatus(url) {
  const res = await fetch(url, { redirect: 'manual' })
  const body = await res.text()
  return { status: res.status, body }
}

/** Every file under `dir` (recursively). */
function filesUnder(dir) {
  const out = []
  for (const entry of readdirSync(dir, { withFileTypes: true })) {
    const p = join(dir, entry.name)
    if (entry.isDirectory()) out.push(...filesUnder(p))
    else out.push(p)
  }
  return out
}

before(async () => {
  assert.ok(existsSync(nextBin), 'next is installed (a devDependency): run npm ci')
  tmp = mkdtempSync(join(tmpdir(), 'payload-realtime-next-'))
  const r = spawnSync('npm', ['pack', '--json', '--ignore-scripts', '--pack-destination', tmp, root], {
    cwd: root,
    encoding: 'utf8',
    env: { ...process.env, npm_config_update_notifier: 'false' },
  })
  assert.equal(r.status, 0, `npm pack failed:\n${r.stdout}\n${r.stderr}`)
  const packed = JSON.parse(r.stdout)[0]
  assert.ok(
    packed.files.some((f) => f.path.endsWith('.node')),
    'the tarball carries the built addon (run npm run build first)',
  )
  rmSync(installed, { recursive: true, force: true })
  mkdirSync(installed, { recursive: true })
  const x = spawnSync('tar', ['-xzf', join(tmp, packed.filename), '--strip-components=1', '-C', installed])
  assert.equal(x.status, 0, `tar failed: ${x.stderr}`)
})

after(() => {
  rmSync(join(app, '.next'), { recursive: true, force: true })
  rmSync(installed, { recursive: true, force: true })
  if (tmp) rmSync(tmp, { recursive: true, force: true })
})

for (const builder of ['webpack', 'turbopack']) {
  test(`next build --${builder} and next start, with no serverExternalPackages`, T, async (t) => {
    rmSync(join(app, '.next'), { recursive: true, force: true })
    const [port, wsPort] = [await freePort(), await freePort()]
    const db = join(tmp, `${builder}.db`)
    const env = {
      NEXT_TELEMETRY_DISABLED: '1',
      PAYLOAD_SECRET: 'payload-realtime-next-test-secret',
      DATABASE_URI: `file:${db}`,
      WS_PORT: String(wsPort),
      PORT: String(port),
    }

    const started = Date.now()
    const build = await run(process.execPath, [nextBin, 'build', `--${builder}`], { cwd: app, env })
    t.diagnostic(`next build --${builder}: ${((Date.now() - started) / 1000).toFixed(1)} s`)
    assert.equal(build.code, 0, `next build --${builder} failed:\n${build.out}`)
    if (build.out.includes('payload-realtime listening')) {
      t.diagnostic('the plugin started its WebSocket server during next build')
    }

    // The browser's bundles: the React entry and the client SDK, nothing of the addon.
    const browserFiles = filesUnder(join(app, '.next', 'static')).filter((f) => f.endsWith('.js'))
    assert.ok(
      browserFiles.some((f) => readFileSync(f, 'utf8').includes('payload-realtime/client: `url` is required')),
      'the client SDK is in the browser bundle',
    )
    for (const f of browserFiles) {
      const text = readFileSync(f, 'utf8')
      for (const marker of ['loadNative', 'RealtimeServer', 'linux-x64-gnu', 'hintPackageUrl']) {
        assert.ok(!text.includes(marker), `${f} (browser) contains ${marker}`)
      }
    }

    const server = startNext(env)
    try {
      await waitUntil(
        async () => {
          try {
            await fetch(`http://127.0.0.1:${port}/favicon.ico`)
            return true
          } catch {
            return false
          }
        },
        { timeout: 60_000, interval: 200, label: `next start on port ${port}` },
      )

      const home = await httpStatus(`http://127.0.0.1:${port}/`)
      assert.equal(home.status, 200, `GET / answered ${home.status}:\n${server.output()}`)
      // The client component, rendered on the server (not connected there).
      assert.match(home.body, /realtime: (?:<!-- -->)?closed/)
      const admin = await httpStatus(`http://127.0.0.1:${port}/admin`)
      assert.equal(admin.status, 200, `GET /admin answered ${admin.status}:\n${server.output()}`)
      assert.match(admin.body, /<title>[^<]*Payload/)

      // The first user, through Payload's REST API (its token signs in the WebSocket too).
      const credentials = { email: 'dev@example.com', password: 'secret-password' }
      const reg = await fetch(`http://127.0.0.1:${port}/api/users/first-register`, {
        method: 'POST',
        headers: { 'content-type': 'application/json' },
        body: JSON.stringify({ ...credentials, confirmPassword: credentials.password }),
      })
      const registered = await reg.json()
      assert.equal(reg.status, 200, JSON.stringify(registered))
      assert.equal(typeof registered.token, 'string')

      // The server was started by the plugin's onInit when Payload first came up (the GET above).
      const client = await connect(`ws://127.0.0.1:${wsPort}/`, { token: registered.token, label: builder })
      try {
        await client.join('posts')
        const created = await fetch(`http://127.0.0.1:${port}/api/posts`, {
          method: 'POST',
          headers: { 'content-type': 'application/json', Authorization: `JWT ${registered.token}` },
          body: JSON.stringify({ title: `from next start (${builder})`, _status: 'published' }),
        })
        const { doc } = await created.json()
        assert.equal(created.status, 201)
        const event = await client.waitFor((m) => isEvent(m), { label: 'the create event' })
        // A ping answered after the event: anything sent for the same write would be in by now.
        await client.request({ type: 'ping' })
        assert.equal(event.type, 'create')
        assert.equal(event.collection, 'posts')
        assert.equal(event.id, doc.id)
        assert.equal(event.doc.title, `from next start (${builder})`)
        assert.deepEqual(event.user, { id: registered.user.id, collection: 'users' })
        assert.equal(client.events().length, 1, JSON.stringify(client.events()))
      } finally {
        await client.close()
      }
    } finally {
      await server.stop()
    }
    assert.ok(statSync(db).size > 0)
  })
}
