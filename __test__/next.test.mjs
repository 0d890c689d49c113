// payload-realtime in a real Payload 3 app on Next.js (examples/next, Payload's blank template on
// SQLite), with no configuration for it: no `serverExternalPackages`. For each builder, webpack
// and Turbopack: `next build` succeeds, the browser's bundles carry nothing of the addon, the
// WebSocket server answers as soon as `next start` is ready (instrumentation.ts creates Payload
// at boot), `next start` serves the admin and the frontend page (a client component using
// `payload-realtime/react`), a post created through Payload's REST API reaches a WebSocket client
// on the plugin's port exactly once, and the admin's cookie is accepted from the admin's origin
// only.
//
// The Turbopack build also runs the admin and the frontend in headless Chromium (two editors
// side by side: live list, lock icons, the "changed by someone else" warning) and restarts
// `next start` to connect before any HTTP request. `next dev` (Turbopack) reloads the config
// three times and still has one server on the port, and one event per write.
//
// The package is installed as users get it: `npm pack` (the files of package.json `files`),
// unpacked into examples/next/node_modules/payload-realtime. Everything else (next, payload,
// @payloadcms/*, react) is this repository's devDependencies, found in the root node_modules the
// way a monorepo's hoisted dependencies are. examples/next has its own package.json, so the app
// cannot resolve `payload-realtime` to the repository by self-reference.
//
// UPDATE_SCREENSHOTS=1 writes the admin screenshot to docs/admin-live.png (else to a temporary
// directory).

import assert from 'node:assert/strict'
import { spawn } from 'node:child_process'
import { existsSync, mkdtempSync, readdirSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs'
import { createServer } from 'node:net'
import { tmpdir } from 'node:os'
import { dirname, join } from 'node:path'
import { after, before, test } from 'node:test'
import { fileURLToPath } from 'node:url'

import { launchBrowser } from './browser-support.mjs'
import { installIntoExample } from '../scripts/install-example.mjs'
import { connect, freePort, handshake, isEvent, waitUntil } from './helpers.mjs'
import { postJson, startProcess } from './next-support.mjs'

const root = join(dirname(fileURLToPath(import.meta.url)), '..')
const app = join(root, 'examples', 'next')
const installed = join(app, 'node_modules', 'payload-realtime')
const nextBin = join(root, 'node_modules', 'next', 'dist', 'bin', 'next')
const configFile = join(app, 'src', 'payload.config.ts')
const T = { timeout: 600_000 }
/** A generous guard for what a browser waits for (a compile or a refresh under load). */
const UI_WAIT = 60_000

let tmp

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

/** `next start` (or `next <command...>`) in its own process group. */
function startNext(env, command = ['start']) {
  return startProcess([nextBin, ...command, '--port', env.PORT], {
    cwd: app,
    env,
    readyLine: /Ready in/,
    label: `next ${command[0]} ready`,
  })
}

/** The handshake's answer once something listens on `url` (refused connections are retried). */
function firstAnswer(url, opts = {}, output = () => '') {
  return waitUntil(
    async () => {
      try {
        return await handshake(url, { timeout: 5_000, ...opts })
      } catch {
        return false
      }
    },
    { timeout: 120_000, interval: 100, label: `a WebSocket server on ${url}` },
  ).catch((err) => {
    // What the app printed says why (a port taken meanwhile, a failed start).
    err.message += `\n${output()}`
    throw err
  })
}

/** How many sockets listen on TCP `port` (IPv4 and IPv6), from /proc/net. */
function listenersOn(port) {
  let n = 0
  for (const file of ['/proc/net/tcp', '/proc/net/tcp6']) {
    if (!existsSync(file)) continue
    for (const line of readFileSync(file, 'utf8').trim().split('\n').slice(1)) {
      const [, local, , state] = line.trim().split(/\s+/)
      if (state === '0A' && parseInt(local.split(':').pop(), 16) === port) n++
    }
  }
  return n
}

/** Whether `port` can be bound on all interfaces now (false: someone holds it). */
function canBind(port) {
  return new Promise((resolve) => {
    const srv = createServer()
    srv.once('error', () => resolve(false))
    srv.listen(port, '0.0.0.0', () => srv.close(() => resolve(true)))
  })
}

/** The first user, by Payload's first-register, and a second one created by the first. */
async function registerEditors(base) {
  const alice = { email: 'alice@example.com', password: 'alice-password' }
  const bob = { email: 'bob@example.com', password: 'bob-password' }
  const first = await postJson(`${base}/api/users/first-register`, { ...alice, confirmPassword: alice.password })
  assert.equal(first.status, 200, JSON.stringify(first.json))
  assert.equal(typeof first.json.token, 'string')
  const second = await postJson(`${base}/api/users`, bob, { Authorization: `JWT ${first.json.token}` })
  assert.equal(second.status, 201, JSON.stringify(second.json))
  return {
    alice: { ...alice, token: first.json.token, id: first.json.user.id },
    bob: { ...bob, id: second.json.doc.id },
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
  const files = installIntoExample()
  assert.ok(
    files.some((f) => f.endsWith('.node')),
    'the tarball carries the built addon (run npm run build first)',
  )
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
    assert.ok(
      !build.out.includes('payload-realtime listening'),
      `the plugin started its WebSocket server during next build:\n${build.out}`,
    )

    // The browser's bundles: the React entry, the client SDK and the admin provider, nothing of
    // the addon.
    const browserFiles = filesUnder(join(app, '.next', 'static')).filter((f) => f.endsWith('.js'))
    const browserText = browserFiles.map((f) => readFileSync(f, 'utf8'))
    assert.ok(
      browserText.some((text) => text.includes('payload-realtime/client: `url` is required')),
      'the client SDK is in the browser bundle',
    )
    assert.ok(
      browserText.some((text) => text.includes('payload-realtime-admin__status')),
      'the admin provider is in the browser bundle (the import map names it)',
    )
    for (const [i, text] of browserText.entries()) {
      for (const marker of ['loadNative', 'RealtimeServer', 'linux-x64-gnu', 'hintPackageUrl']) {
        assert.ok(!text.includes(marker), `${browserFiles[i]} (browser) contains ${marker}`)
      }
    }

    let server = startNext(env)
    try {
      // instrumentation.ts creates Payload at boot: the realtime server answers before any HTTP
      // request (no credentials yet: its own 401, not a refused connection).
      await server.ready()
      const early = await firstAnswer(`ws://127.0.0.1:${wsPort}/`, {}, server.output)
      assert.equal(early.status, 401, `${early.body}\n${server.output()}`)
      assert.equal(early.json?.error, 'unauthorized')

      const home = await httpStatus(`http://127.0.0.1:${port}/`)
      assert.equal(home.status, 200, `GET / answered ${home.status}:\n${server.output()}`)
      // The client component, rendered on the server (not connected there).
      assert.match(home.body, /realtime: (?:<!-- -->)?closed/)
      const admin = await httpStatus(`http://127.0.0.1:${port}/admin`)
      assert.equal(admin.status, 200, `GET /admin answered ${admin.status}:\n${server.output()}`)
      assert.match(admin.body, /<title>[^<]*Payload/)

      // Two editors, through Payload's REST API (the first one's token signs in the WebSocket).
      const base = `http://localhost:${port}`
      const { alice, bob } = await registerEditors(base)

      const client = await connect(`ws://127.0.0.1:${wsPort}/`, { token: alice.token, label: builder })
      try {
        await client.join('posts')
        const created = await fetch(`${base}/api/posts`, {
          method: 'POST',
          headers: { 'content-type': 'application/json', Authorization: `JWT ${alice.token}` },
          body: JSON.stringify({ title: `from next start (${builder})`, _status: 'published' }),
        })
        const { doc } = await created.json()
        assert.equal(created.status, 201)
        const event = await client.waitFor((m) => isEvent(m) && m.collection === 'posts', { label: 'the create event' })
        // A ping answered after the event: anything sent for the same write would be in by now.
        await client.request({ type: 'ping' })
        assert.equal(event.type, 'create')
        assert.equal(event.collection, 'posts')
        assert.equal(event.id, doc.id)
        assert.equal(event.doc.title, `from next start (${builder})`)
        assert.deepEqual(event.user, { id: alice.id, collection: 'users' })
        assert.equal(client.events().filter((e) => e.collection === 'posts').length, 1, JSON.stringify(client.events()))
      } finally {
        await client.close()
      }

      // The admin's cookie (what a browser sends to every port of the host): accepted from the
      // admin's own origin, refused from any other.
      const cookie = `payload-token=${alice.token}`
      const own = await handshake(`ws://localhost:${wsPort}/`, { cookie, origin: `http://localhost:${port}` })
      assert.equal(own.status, 101, own.body)
      await own.client.join('posts')
      await own.client.close()
      const foreign = await handshake(`ws://localhost:${wsPort}/`, { cookie, origin: 'https://evil.example' })
      assert.equal(foreign.status, 403, foreign.body)
      assert.equal(foreign.json?.error, 'forbidden-origin')

      if (builder !== 'turbopack') return
      // One build is enough for what follows (CI has two cores).
      await t.test('two editors in Chromium: live list, lock icons, "changed by someone else"', (st) =>
        twoEditors(st, { base, wsPort, alice, bob }),
      )
      await t.test('the frontend page in Chromium shows a post created through REST', (st) =>
        frontendPage(st, { base, alice }),
      )
      await t.test('next start again: a WebSocket connects before any HTTP request', async () => {
        await server.stop()
        server = startNext(env)
        await server.ready()
        const client = await firstAnswer(`ws://127.0.0.1:${wsPort}/`, { token: alice.token }, server.output)
        assert.equal(client.status, 101, `${client.body}\n${server.output()}`)
        try {
          const ack = await client.client.join('posts')
          assert.equal(ack.type, 'ack')
        } finally {
          await client.client.close()
        }
      })
    } finally {
      await server.stop()
    }
    assert.ok(statSync(db).size > 0)
  })
}

/** A browser context of its own (own cookies) whose page records what went wrong in it. */
async function editorPage(browser, t) {
  const context = await browser.newContext({ viewport: { width: 1280, height: 800 } })
  const page = await context.newPage()
  page.problems = []
  page.sockets = []
  page.on('pageerror', (err) => page.problems.push(`pageerror: ${err.message}`))
  page.on('console', (msg) => {
    if (msg.type() === 'error') t.diagnostic(`console.error: ${msg.text()}`)
  })
  page.on('websocket', (ws) => page.sockets.push(ws.url()))
  return page
}

/** Signs in through the admin's login form: the browser holds the HttpOnly `payload-token`. */
async function signIn(page, base, { email, password }) {
  await page.goto(`${base}/admin/login`)
  await page.fill('#field-email', email)
  await page.fill('#field-password', password)
  await page.click('button[type=submit]')
  await page.waitForURL(/\/admin\/?$/, { timeout: UI_WAIT })
  const cookies = await page.context().cookies()
  const token = cookies.find((c) => c.name === 'payload-token')
  assert.ok(token && token.httpOnly, 'the admin set an HttpOnly payload-token cookie')
}

const statusBadge = '.payload-realtime-admin__status'

async function twoEditors(t, { base, wsPort, alice, bob }) {
  const browser = await launchBrowser(t)
  if (!browser) return
  try {
    const a = await editorPage(browser, t)
    const b = await editorPage(browser, t)
    await signIn(a, base, alice)
    await signIn(b, base, bob)

    const { doc: post } = (
      await postJson(
        `${base}/api/posts`,
        { title: 'Draft by REST', _status: 'published' },
        { Authorization: `JWT ${alice.token}` },
      )
    ).json

    // B watches the list. Everything below happens in this one document (no reload) and on one
    // socket: the refreshes the provider asks for must not reconnect it.
    await b.goto(`${base}/admin/collections/posts`)
    await b.waitForSelector(`${statusBadge}[data-status="open"]`, { timeout: UI_WAIT })
    assert.match(await b.textContent(statusBadge), /Live/)
    b.sockets.length = 0
    await b.evaluate(() => (window.__sameDocument = true))
    const row = b.locator('tbody tr', { hasText: 'Draft by REST' })
    await row.waitFor({ timeout: UI_WAIT })
    assert.equal(await row.locator('.locked').count(), 0, 'not locked yet')

    // A starts editing it (Payload takes the lock on the first change, not on opening): B's
    // list shows the lock icon.
    await a.goto(`${base}/admin/collections/posts/${post.id}`)
    await a.waitForSelector(`${statusBadge}[data-status="open"]`, { timeout: UI_WAIT })
    await a.fill('#field-title', 'Edited in the admin by Alice')
    await row.locator('.locked').waitFor({ timeout: UI_WAIT })
    assert.match(await row.locator('.locked').first().innerHTML(), /alice@example\.com is editing/)

    // A publishes it: B's list shows the new title and the lock released, and a notice names A.
    await a.click('#action-save')
    const edited = b.locator('tbody tr', { hasText: 'Edited in the admin by Alice' })
    await edited.waitFor({ timeout: UI_WAIT })
    const notice = b.locator('[data-sonner-toast]', { hasText: 'alice@example.com updated Post' })
    await notice.waitFor({ timeout: UI_WAIT })
    assert.match(await notice.textContent(), /alice@example\.com updated Post “Edited in the admin by Alice”/)
    await waitUntil(async () => (await edited.locator('.locked').count()) === 0, {
      timeout: UI_WAIT,
      label: 'the lock icon gone from B',
    })
    const screenshot =
      process.env.UPDATE_SCREENSHOTS === '1' ? join(root, 'docs', 'admin-live.png') : join(tmp, 'admin-live.png')
    await b.screenshot({ path: screenshot, animations: 'disabled' })
    t.diagnostic(`screenshot of B's admin: ${screenshot}`)
    // A is not told of its own change.
    assert.equal(await a.locator('[data-sonner-toast]', { hasText: 'alice@example.com updated' }).count(), 0)

    // B opens the post (a client-side navigation); A changes it through REST with its cookie:
    // B is warned that the open document changed.
    await b.click(`tbody a[href="/admin/collections/posts/${post.id}"]`)
    await b.waitForSelector('#field-title', { timeout: UI_WAIT })
    const patched = await a.evaluate(
      async ({ id }) => {
        const res = await fetch(`/api/posts/${id}`, {
          method: 'PATCH',
          credentials: 'include',
          headers: { 'content-type': 'application/json' },
          body: JSON.stringify({ title: 'Changed by Alice through REST' }),
        })
        return res.status
      },
      { id: post.id },
    )
    assert.equal(patched, 200)
    const warning = b.locator('.payload-realtime-admin__changed')
    await warning.waitFor({ timeout: UI_WAIT })
    assert.match(await warning.textContent(), /alice@example\.com changed this Post after you opened it/)

    // A, still in its edit view, changes the title again: Payload takes the lock, and B (in the
    // edit view, which is never refreshed: that would drop unsaved changes) is told who edits.
    await a.fill('#field-title', 'Alice again')
    await b.locator('[data-sonner-toast]', { hasText: 'alice@example.com is editing this Post' }).waitFor({
      timeout: UI_WAIT,
    })
    assert.equal(await b.locator('#field-title').inputValue(), 'Edited in the admin by Alice', 'B kept its form')

    assert.equal(await b.evaluate(() => window.__sameDocument), true, 'B never reloaded')
    assert.equal(await b.textContent(statusBadge), '● Live')
    assert.deepEqual(b.sockets, [], 'B kept its socket through the refreshes and navigations')
    assert.deepEqual([...a.problems, ...b.problems], [])
  } finally {
    await browser.close()
  }
}

async function frontendPage(t, { base, alice }) {
  const browser = await launchBrowser(t)
  if (!browser) return
  try {
    const page = await editorPage(browser, t)
    await signIn(page, base, alice)
    await page.goto(`${base}/`)
    await page.waitForSelector('p[data-status="open"]', { timeout: UI_WAIT })
    await page.evaluate(() => (window.__sameDocument = true))
    const created = await postJson(
      `${base}/api/posts`,
      { title: 'Live on the frontend', _status: 'published' },
      { Authorization: `JWT ${alice.token}` },
    )
    assert.equal(created.status, 201)
    await page.locator('li', { hasText: 'Live on the frontend' }).waitFor({ timeout: UI_WAIT })
    assert.equal(await page.evaluate(() => window.__sameDocument), true, 'no reload')
    assert.deepEqual(page.problems, [])
  } finally {
    await browser.close()
  }
}

test('next dev --turbopack: three config reloads keep one server, one event per write', T, async (t) => {
  const [port, wsPort] = [await freePort(), await freePort()]
  const env = {
    NEXT_TELEMETRY_DISABLED: '1',
    PAYLOAD_SECRET: 'payload-realtime-next-test-secret',
    DATABASE_URI: `file:${join(tmp, 'dev.db')}`,
    WS_PORT: String(wsPort),
    // Payload finds Next's HMR socket on PORT (it reloads its config when told of changes).
    PORT: String(port),
  }
  const original = readFileSync(configFile, 'utf8')
  const server = startNext(env, ['dev', '--turbopack'])
  let client
  try {
    await server.ready()
    const base = `http://localhost:${port}`
    const { alice } = await registerEditors(base)
    client = await connect(`ws://127.0.0.1:${wsPort}/`, { token: alice.token, label: 'dev' })
    await client.join('posts')

    // Next tells of server changes only for pages it has compiled: compile one that calls
    // getPayload. Then each change of the config reloads Payload's (on its next getPayload),
    // which evaluates the config and the plugin again; Payload logs the import map check.
    const home = await httpStatus(`${base}/`)
    assert.equal(home.status, 200, server.output())
    const reloads = () => (server.output().match(/Generating import map/g) ?? []).length
    const versions = [`${original}\n// payload-realtime test: reload 1\n`, `${original}\n// reload 2\n`, original]
    for (const [i, text] of versions.entries()) {
      const before = reloads()
      writeFileSync(configFile, text)
      await waitUntil(
        async () => {
          await fetch(`${base}/api/posts?limit=1`)
          return reloads() > before
        },
        { timeout: 120_000, interval: 250, label: `Payload's reload ${i + 1}\n${server.output()}` },
      )
    }
    t.diagnostic(`reloads seen: ${reloads()}`)

    assert.equal(client.closeInfo, null, 'the client stayed connected through the reloads')
    const created = await postJson(
      `${base}/api/posts`,
      { title: 'after three reloads', _status: 'published' },
      { Authorization: `JWT ${alice.token}` },
    )
    assert.equal(created.status, 201, JSON.stringify(created.json))
    const event = await client.waitFor((m) => isEvent(m) && m.collection === 'posts', { label: 'the create event' })
    await client.request({ type: 'ping' })
    assert.equal(event.id, created.json.doc.id)
    assert.equal(client.events().filter((e) => e.collection === 'posts').length, 1, JSON.stringify(client.events()))
    if (existsSync('/proc/net/tcp')) assert.equal(listenersOn(wsPort), 1, 'one listener on the WebSocket port')
    assert.equal(await canBind(wsPort), false, 'the WebSocket port is held')
    assert.equal(server.output().split('payload-realtime listening').length - 1, 1, 'started once')
  } finally {
    writeFileSync(configFile, original)
    if (client) await client.close()
    await server.stop()
  }
})
