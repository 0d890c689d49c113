// Server lifecycle: the manager singleton, HTTP routes, close() (1001, port freed, process exits
// by itself), and starting twice on one port.

import assert from 'node:assert/strict'
import { spawn } from 'node:child_process'
import { test } from 'node:test'
import { fileURLToPath } from 'node:url'

import { getUWebSocketManager, initUWebSocket } from '../index.mjs'
import { SECRET, connect, handshake, httpGet, makeToken, registerWhoami, startServer, wsUrl } from './helpers.mjs'

const T = { timeout: 60_000 }
const REPO = fileURLToPath(new URL('..', import.meta.url))
const HELPERS_URL = new URL('./helpers.mjs', import.meta.url).href

// Must run first in this file (each test file is its own process): nothing has been started yet.
test('getUWebSocketManager() throws a clear Error before any server is started', T, () => {
  assert.throws(
    () => getUWebSocketManager(),
    (err) => err instanceof Error && err.message.length > 0,
  )
})

test('initUWebSocket resolves a listening manager; getUWebSocketManager returns it', T, async () => {
  const manager = await startServer()
  try {
    assert.equal(typeof manager.port, 'number')
    assert.ok(manager.port > 0, `a real port was picked: ${manager.port}`)
    const current = getUWebSocketManager()
    assert.equal(current.port, manager.port)
    for (const fn of [
      'emitEvent',
      'broadcastToRoom',
      'registerCustomHandler',
      'sendToSocket',
      'joinRoom',
      'leaveRoom',
      'getSocketsInRoom',
      'stats',
      'close',
    ]) {
      assert.equal(typeof manager[fn], 'function', `manager.${fn}`)
    }
    // It is listening as soon as the promise resolves.
    const c = await connect(wsUrl(manager), { token: makeToken({ id: 'alice' }) })
    await c.close()
  } finally {
    await manager.close()
  }
})

test('GET /healthz answers 200 JSON; other non-upgrade requests get 404', T, async () => {
  const manager = await startServer()
  try {
    const health = await httpGet(manager.port, '/healthz')
    assert.equal(health.status, 200)
    assert.match(String(health.headers['content-type']), /json/)
    assert.ok(health.json !== undefined, `the body is JSON: ${health.body}`)

    for (const path of ['/', '/nope', '/healthz/extra']) {
      const r = await httpGet(manager.port, path)
      assert.equal(r.status, 404, `GET ${path}: ${r.status} ${r.body}`)
    }
  } finally {
    await manager.close()
  }
})

test('close() sends 1001 to every socket and frees the port for a new server', T, async () => {
  const manager = await startServer()
  const port = manager.port
  const clients = []
  for (const id of ['alice', 'bob', 'carol']) {
    const c = await connect(wsUrl(manager), { token: makeToken({ id }) })
    await c.join('posts')
    clients.push(c)
  }
  await manager.close()
  for (const c of clients) {
    const { code } = await c.waitForClose()
    assert.equal(code, 1001)
  }

  // Nothing listens on the port any more.
  await assert.rejects(
    handshake(`ws://127.0.0.1:${port}/`, { token: makeToken({ id: 'alice' }) }),
    (err) => err.code === 'ECONNREFUSED',
  )

  // The same port can be used again at once.
  const again = await initUWebSocket(port, { host: '127.0.0.1', secret: SECRET })
  try {
    assert.equal(again.port, port)
    registerWhoami(again)
    const c = await connect(wsUrl(again), { token: makeToken({ id: 'dave' }) })
    assert.equal((await c.whoami()).user.id, 'dave')
    await c.close()
  } finally {
    await again.close()
  }
})

test('starting a second server on a port in use rejects with a clear error; the first keeps working', T, async () => {
  const first = await startServer()
  try {
    const port = first.port
    let second
    await assert.rejects(
      (async () => {
        second = await initUWebSocket(port, { host: '127.0.0.1', secret: SECRET })
      })(),
      (err) => {
        assert.ok(err instanceof Error, `an Error, got ${err}`)
        assert.match(err.message, /in use|EADDRINUSE|already/i, `a clear message: ${err.message}`)
        return true
      },
    )
    if (second) await second.close()

    registerWhoami(first)
    const c = await connect(wsUrl(first), { token: makeToken({ id: 'alice' }) })
    assert.equal((await c.whoami()).user.id, 'alice')
    await c.close()
  } finally {
    await first.close()
  }
})

test('invalid options reject with an Error naming the option', T, async () => {
  await assert.rejects(initUWebSocket(0, { host: '127.0.0.1', secret: SECRET, path: 'no-slash' }), (err) => {
    assert.ok(err instanceof Error)
    assert.match(err.message, /path/)
    return true
  })
})

/** Runs an ESM snippet in a child node process; resolves `{ code, signal, stdout, stderr }`. */
function runChild(source, { timeout = 60_000 } = {}) {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, ['--input-type=module', '-e', source], {
      cwd: REPO,
      stdio: ['ignore', 'pipe', 'pipe'],
    })
    let stdout = ''
    let stderr = ''
    child.stdout.on('data', (d) => (stdout += d))
    child.stderr.on('data', (d) => (stderr += d))
    const timer = setTimeout(() => {
      child.kill('SIGKILL')
      reject(
        new Error(
          `the child process did not exit by itself within ${timeout} ms\nstdout: ${stdout}\nstderr: ${stderr}`,
        ),
      )
    }, timeout)
    child.on('exit', (code, signal) => {
      clearTimeout(timer)
      resolve({ code, signal, stdout, stderr })
    })
  })
}

test(
  'a process that used the server (sockets, handlers, authorize) exits by itself after close()',
  { timeout: 120_000 },
  async () => {
    const source = `
    const h = await import(${JSON.stringify(HELPERS_URL)})
    const m = await h.startServer({ authorize: { posts: () => true } })
    h.registerWhoami(m)
    m.registerCustomHandler('double', (_s, msg) => msg.n * 2)
    const c = await h.connect(h.wsUrl(m), { token: h.makeToken({ id: 'alice' }) })
    await c.join('posts')
    await m.emitEvent({ type: 'create', collection: 'posts', id: 1, doc: {} })
    await c.waitFor((x) => x.id === 1 && x.type === 'create')
    const r = await c.request({ type: 'double', n: 21 })
    await m.close()
    const { code } = await c.waitForClose()
    console.log(JSON.stringify({ reply: r.data, code }))
  `
    const r = await runChild(source)
    assert.equal(r.code, 0, `exit code ${r.code} (${r.signal}); stderr: ${r.stderr}`)
    assert.deepEqual(JSON.parse(r.stdout.trim().split('\n').pop()), { reply: 42, code: 1001 })
  },
)

test('a process that starts and closes an idle server exits by itself', T, async () => {
  const source = `
    const { initUWebSocket } = await import(${JSON.stringify(new URL('../index.mjs', import.meta.url).href)})
    const m = await initUWebSocket(0, { host: '127.0.0.1', secret: 's' })
    await m.close()
    console.log('closed')
  `
  const r = await runChild(source)
  assert.equal(r.code, 0, `exit code ${r.code} (${r.signal}); stderr: ${r.stderr}`)
  assert.match(r.stdout, /closed/)
})

test('the CommonJS entry point exposes the same API', T, async () => {
  const source = `
    import { createRequire } from 'node:module'
    const require = createRequire(${JSON.stringify(new URL('../package.json', import.meta.url).href)})
    const cjs = require('./index.js')
    console.log(JSON.stringify(['uWebSocketPlugin', 'initUWebSocket', 'getUWebSocketManager'].map((k) => typeof cjs[k])))
  `
  const r = await runChild(source)
  assert.equal(r.code, 0, r.stderr)
  assert.deepEqual(JSON.parse(r.stdout.trim()), ['function', 'function', 'function'])
})

test('misusing the manager API throws or rejects JS errors; the server keeps working', T, async () => {
  const manager = await startServer()
  try {
    registerWhoami(manager)
    const c = await connect(wsUrl(manager), { token: makeToken({ id: 'alice' }) })
    await c.join('posts')
    const circular = {}
    circular.self = circular
    const misuses = {
      'emitEvent({})': () => manager.emitEvent({}),
      'emitEvent(null)': () => manager.emitEvent(null),
      'emitEvent(bad type)': () => manager.emitEvent({ type: 'explode', collection: 'posts', id: 1 }),
      'emitEvent(no collection)': () => manager.emitEvent({ type: 'create', id: 1 }),
      'emitEvent(bigint doc)': () => manager.emitEvent({ type: 'create', collection: 'posts', id: 1, doc: { n: 1n } }),
      'broadcastToRoom(no room)': () => manager.broadcastToRoom(undefined, { type: 'x' }),
      'broadcastToRoom(circular)': () => manager.broadcastToRoom('collection:posts', circular),
      'sendToSocket(circular)': () => manager.sendToSocket('x', circular),
      'registerCustomHandler(not a function)': () => manager.registerCustomHandler('x', 'nope'),
      'joinRoom(unknown socket)': () => manager.joinRoom('no-such-socket', 'r'),
      'leaveRoom(unknown socket)': () => manager.leaveRoom('no-such-socket', 'r'),
    }
    for (const [name, fn] of Object.entries(misuses)) {
      try {
        await fn()
      } catch (err) {
        assert.ok(err instanceof Error, `${name} threw a non-Error: ${err}`)
      }
    }
    // Nothing bogus reached the client, and real events still flow.
    await manager.emitEvent({ type: 'create', collection: 'posts', id: 'real', doc: {} })
    const first = await c.waitFor(() => true)
    assert.deepEqual([first.type, first.id], ['create', 'real'], `first message: ${JSON.stringify(first)}`)
    await c.close()
  } finally {
    await manager.close()
  }
})

test('close() can be called twice; getUWebSocketManager throws once nothing runs', T, async () => {
  const manager = await startServer()
  await Promise.all([manager.close(), manager.close()])
  await manager.close()
  assert.throws(() => getUWebSocketManager(), Error)
  // The API of a closed manager fails softly: an Error or a no-op, never a crash.
  try {
    await manager.emitEvent({ type: 'create', collection: 'posts', id: 1, doc: {} })
  } catch (err) {
    assert.ok(err instanceof Error)
  }
  try {
    assert.equal(manager.sendToSocket('x', { type: 'y' }), false)
  } catch (err) {
    assert.ok(err instanceof Error)
  }
})
