// Operations (docs/operations.md): Prometheus /metrics read by a real text-format parser,
// /healthz and /readyz, the drain of close(), and the logger (one line per episode, no secrets).

import assert from 'node:assert/strict'
import { execFileSync, spawn } from 'node:child_process'
import { readFileSync, rmSync, writeFileSync } from 'node:fs'
import { randomBytes } from 'node:crypto'
import http from 'node:http'
import net from 'node:net'
import { tmpdir } from 'node:os'
import { dirname, join } from 'node:path'
import { after, test } from 'node:test'
import { fileURLToPath } from 'node:url'

import parsePrometheusTextFormat from 'parse-prometheus-text-format'

import {
  SECRET,
  connect,
  freePort,
  handshake,
  httpGet,
  makeToken,
  parseFrames,
  startServer,
  waitUntil,
  wsUrl,
} from './helpers.mjs'

const T = { timeout: 120_000 }
const root = join(dirname(fileURLToPath(import.meta.url)), '..')
const TOKEN = 'metrics-token-0123456789'
const cleanups = []
after(async () => {
  for (const c of cleanups.reverse()) await c()
})

/** The families of a scrape, by name. */
function parseMetrics(text) {
  return new Map(parsePrometheusTextFormat(text).map((f) => [f.name, f]))
}

/** A metric's value (the sample with `labels`, or the only one). */
function value(families, name, labels = {}) {
  const family = families.get(name)
  assert.ok(family, `${name} is exported`)
  const sample = family.metrics.find((m) => Object.entries(labels).every(([k, v]) => m.labels?.[k] === v))
  return sample === undefined ? 0 : Number(sample.value)
}

async function scrape(port, path = '/metrics', headers = { Authorization: `Bearer ${TOKEN}` }) {
  const r = await httpGet(port, path, headers)
  assert.equal(r.status, 200, r.body)
  assert.match(String(r.headers['content-type']), /^text\/plain; version=0\.0\.4/)
  return parseMetrics(r.body)
}

test('/metrics with a token: refused without it, counters move with real traffic', T, async () => {
  const manager = await startServer({
    metrics: { token: TOKEN },
    authorize: { posts: () => true },
    includeCollections: ['posts'],
  })
  try {
    for (const headers of [{}, { Authorization: 'Bearer wrong-token-0123456789' }, { Authorization: TOKEN }]) {
      const r = await httpGet(manager.port, '/metrics', headers)
      assert.equal(r.status, 401, JSON.stringify(headers))
      assert.equal(r.json.error, 'unauthorized')
      assert.ok(!r.body.includes('payload_realtime'), 'no metric reaches a caller without the token')
    }
    const before = await scrape(manager.port)
    assert.equal(value(before, 'payload_realtime_connections'), 0)

    const client = await connect(wsUrl(manager), { token: makeToken({ id: 'alice' }) })
    await client.join('posts')
    await manager.emitEvent({ type: 'update', collection: 'posts', id: 1, doc: { title: 'hello' } })
    await client.waitFor((m) => m.type === 'update')
    const refused = await handshake(wsUrl(manager), { token: 'not-a-token' })
    assert.equal(refused.status, 401)

    const now = await scrape(manager.port)
    assert.equal(value(now, 'payload_realtime_connections'), 1)
    assert.equal(value(now, 'payload_realtime_rooms'), 1)
    assert.equal(value(now, 'payload_realtime_events_total'), 1)
    assert.equal(value(now, 'payload_realtime_authorize_calls_total'), 1)
    for (const name of [
      'payload_realtime_connections_accepted_total',
      'payload_realtime_messages_in_total',
      'payload_realtime_messages_out_total',
      'payload_realtime_bytes_in_total',
      'payload_realtime_bytes_out_total',
    ]) {
      assert.ok(value(now, name) > value(before, name), `${name} moved: ${value(before, name)} -> ${value(now, name)}`)
    }
    assert.equal(value(now, 'payload_realtime_handshakes_refused_total', { reason: 'unauthorized' }), 1)
    const latency = now.get('payload_realtime_authorize_duration_seconds')
    assert.equal(latency.type, 'HISTOGRAM')
    assert.equal(Number(latency.metrics[0].count), 1)
    assert.equal(Number(latency.metrics[0].buckets['+Inf']), 1)
    // What stats() says is what /metrics says.
    const stats = manager.stats()
    assert.equal(stats.bytesIn, value(now, 'payload_realtime_bytes_in_total'))
    assert.equal(stats.authorizeCalls, 1)
    await client.close()
  } finally {
    await manager.close()
  }
})

test('/metrics on a listener of its own, and nowhere when off', T, async () => {
  const manager = await startServer({ metrics: { port: 0 } })
  try {
    assert.equal(typeof manager.metricsPort, 'number')
    assert.notEqual(manager.metricsPort, manager.port)
    const families = await scrape(manager.metricsPort, '/metrics', {})
    assert.equal(value(families, 'payload_realtime_connections'), 0)
    // Not on the clients' port, with or without a token.
    assert.equal((await httpGet(manager.port, '/metrics', { Authorization: `Bearer ${TOKEN}` })).status, 404)
    assert.equal((await httpGet(manager.metricsPort, '/readyz')).status, 200)
  } finally {
    await manager.close()
  }
  const off = await startServer()
  try {
    assert.equal(off.metricsPort, null)
    assert.equal((await httpGet(off.port, '/metrics')).status, 404)
  } finally {
    await off.close()
  }
  await assert.rejects(startServer({ metrics: { token: 'short' } }), /metrics/)
  await assert.rejects(startServer({ metrics: { token: TOKEN, port: 1 } }), /metrics/)
})

test("docs/operations.md's metric table is what /metrics exports", T, async () => {
  const manager = await startServer({ metrics: { port: 0 } })
  let families
  try {
    families = await scrape(manager.metricsPort, '/metrics', {})
  } finally {
    await manager.close()
  }
  const doc = readFileSync(join(root, 'docs', 'operations.md'), 'utf8')
  const rows = [...doc.matchAll(/^\| `(payload_realtime_\w+)` \| (\w+) \| (.+) \|$/gm)].map(([, name, type, help]) => ({
    name,
    type,
    help,
  }))
  const exported = [...families.values()].map((f) => ({ name: f.name, type: f.type.toLowerCase(), help: f.help }))
  assert.deepEqual(rows, exported)
})

test('/healthz and /readyz answer a status only, at the root and under path', T, async () => {
  const manager = await startServer({ path: '/realtime' })
  try {
    for (const path of ['/healthz', '/realtime/healthz', '/readyz', '/realtime/readyz']) {
      const r = await httpGet(manager.port, path)
      assert.equal(r.status, 200, `${path}: ${r.body}`)
      assert.deepEqual(r.json, { status: 'ok' }, `${path} shows no counts`)
    }
    // The path itself still takes upgrades only.
    assert.equal((await httpGet(manager.port, '/realtime')).status, 426)
  } finally {
    await manager.close()
  }
})

/**
 * A client that upgrades by hand and then never answers: it reads, keeps its side open when the
 * server shuts its own down (`allowHalfOpen`), and sends no close frame back.
 */
function silentClient(port, token) {
  return new Promise((resolve, reject) => {
    const socket = net.connect({ port, host: '127.0.0.1', allowHalfOpen: true })
    let bytes = Buffer.alloc(0)
    const ended = new Promise((r) => socket.once('end', r))
    socket.on('error', () => {})
    socket.on('data', (chunk) => {
      bytes = Buffer.concat([bytes, chunk])
      const head = bytes.indexOf('\r\n\r\n')
      if (head >= 0 && !socket.upgraded) {
        socket.upgraded = true
        assert.match(bytes.subarray(0, head).toString(), /^HTTP\/1\.1 101/)
        resolve({ socket, ended, received: () => bytes.subarray(head + 4) })
      }
    })
    socket.once('close', () => reject(new Error('closed before the upgrade')))
    socket.write(
      [
        'GET / HTTP/1.1',
        `Host: 127.0.0.1:${port}`,
        'Upgrade: websocket',
        'Connection: Upgrade',
        `Sec-WebSocket-Key: ${randomBytes(16).toString('base64')}`,
        'Sec-WebSocket-Version: 13',
        `Authorization: JWT ${token}`,
      ].join('\r\n') + '\r\n\r\n',
    )
  })
}

test('a drain: 1001 with the reason, 503 to upgrades and readyz until the last socket goes', T, async () => {
  // A handshake still asking verifyUser when the drain starts (here on the app's own port,
  // where it counts among the sockets) holds the drain open until it is answered.
  let release
  let asked
  const askedOnce = new Promise((r) => (asked = r))
  const manager = await startServer({
    metrics: { port: 0 },
    verifyUser: (token, claims) => {
      if (claims.id !== 'held') return { id: claims.id }
      asked()
      return new Promise((r) => (release = () => r({ id: claims.id })))
    },
  })
  const app = http.createServer((req, res) => res.end())
  manager.attachTo(app, { path: '/realtime' })
  await new Promise((r) => app.listen(0, '127.0.0.1', r))
  cleanups.push(() => new Promise((r) => app.close(r)))

  const client = await connect(wsUrl(manager), { token: makeToken({ id: 'alice' }) })
  const held = handshake(`ws://127.0.0.1:${app.address().port}/realtime`, { token: makeToken({ id: 'held' }) })
  await askedOnce
  let closed = false
  const closing = manager.close({ grace: 600_000 }).then(() => (closed = true))

  const info = await client.waitForClose()
  assert.deepEqual(info, { code: 1001, reason: 'server shutting down, reconnect elsewhere' })
  for (const port of [manager.port, manager.metricsPort]) {
    const ready = await httpGet(port, '/readyz')
    assert.equal(ready.status, 503)
    assert.deepEqual(ready.json, { status: 'draining' })
  }
  assert.deepEqual((await httpGet(manager.port, '/healthz')).json, { status: 'ok' })
  const late = await handshake(wsUrl(manager), { token: makeToken({ id: 'carol' }) })
  assert.equal(late.status, 503)
  assert.deepEqual(late.json, { error: 'shutting-down' })
  assert.equal(closed, false, 'the drain waits for the handshake under way')

  // Answered now, it is turned away too (it would only be told to go), and the drain ends.
  release()
  const turned = await held
  assert.equal(turned.status, 503)
  assert.deepEqual(turned.json, { error: 'shutting-down' })
  await closing
  await assert.rejects(httpGet(manager.port, '/healthz'), /ECONNREFUSED/, 'the port is freed')
})

test('a drain cuts the sockets still open when its grace ends', T, async () => {
  const { lines, logger } = recorder()
  const manager = await startServer({ drainTimeout: 100, logger })
  const silent = await silentClient(manager.port, makeToken({ id: 'bob' }))
  await manager.close()
  await silent.ended
  silent.socket.destroy()
  const [frame] = parseFrames(silent.received())
  assert.equal(frame.opcode, 0x8, 'told first')
  assert.equal(frame.payload.readUInt16BE(0), 1001)
  assert.equal(frame.payload.subarray(2).toString(), 'server shutting down, reconnect elsewhere')
  // The server's own wait for a close answer is longer (2 s): this was the drain's cut.
  await waitUntil(() => lines.some((l) => /1 socket\(s\) had not closed/.test(l.line)), { label: 'the cut logged' })

  await assert.rejects(startServer({ drainTimeout: -1 }), /drainTimeout/)
  const m = await startServer()
  await assert.rejects(m.close({ grace: 1.5 }), /grace/)
  await m.close()
})

/** A logger that records every line. */
function recorder() {
  const lines = []
  const at = (level) => (line) => lines.push({ level, line })
  return { lines, logger: { info: at('info'), warn: at('warn'), error: at('error'), debug: at('debug') } }
}

test('the logger gets one line per episode, never a token', T, async () => {
  const { lines, logger } = recorder()
  const token = makeToken({ id: 'alice' })
  const manager = await startServer({
    logger,
    verifyUser: (t) => {
      throw new Error(`session lookup failed for ${t}`)
    },
  })
  try {
    for (let i = 0; i < 5; i++) {
      const r = await handshake(wsUrl(manager), { token })
      assert.equal(r.status, 401)
    }
    await waitUntil(() => lines.length > 0, { label: 'a log line' })
    const about = lines.filter((l) => l.line.includes('verifyUser'))
    assert.equal(about.length, 1, JSON.stringify(lines))
    assert.equal(about[0].level, 'error')
    assert.match(about[0].line, /session lookup failed for \[redacted\]/)
    for (const { line } of lines) assert.ok(!line.includes(token.split('.')[2]), `no token in ${line}`)
  } finally {
    await manager.close()
  }
})

const redisServer = (() => {
  try {
    return execFileSync('sh', ['-c', 'command -v redis-server']).toString().trim() || null
  } catch {
    return null
  }
})()

test(
  'readyz and metrics follow Redis; its failures are logged once, its password never',
  { ...T, skip: redisServer ? false : 'redis-server is not installed' },
  async () => {
    const port = await freePort()
    const password = 'redis-pass-9f2c71'
    const startRedis = async () => {
      const proc = spawn(
        redisServer,
        ['--port', String(port), '--bind', '127.0.0.1', '--save', '', '--appendonly', 'no', '--requirepass', password],
        { stdio: 'ignore', cwd: tmpdir() },
      )
      const exited = new Promise((resolve) => proc.once('exit', resolve))
      cleanups.push(async () => {
        if (proc.exitCode === null && proc.signalCode === null) {
          proc.kill('SIGKILL')
          await exited
        }
      })
      return { kill: async () => (proc.kill('SIGKILL'), await exited) }
    }
    let redis = await startRedis()
    const { lines, logger } = recorder()
    const manager = await startServer({
      logger,
      metrics: { port: 0 },
      includeCollections: ['posts'],
      redis: { url: `redis://:${password}@127.0.0.1:${port}` },
    })
    try {
      await waitUntil(async () => (await httpGet(manager.port, '/readyz')).status === 200, { label: 'ready' })
      assert.equal(value(await scrape(manager.metricsPort, '/metrics', {}), 'payload_realtime_redis_connected'), 1)

      await redis.kill()
      await waitUntil(async () => (await httpGet(manager.port, '/readyz')).status === 503, { label: 'not ready' })
      assert.deepEqual((await httpGet(manager.port, '/readyz')).json, { status: 'redis-disconnected' })
      assert.equal(value(await scrape(manager.metricsPort, '/metrics', {}), 'payload_realtime_redis_connected'), 0)
      // Events go on locally while Redis is away; each failed publish is not a line.
      for (let burst = 1; burst <= 3; burst++) {
        await manager.emitEvent({ type: 'update', collection: 'posts', id: burst })
        await waitUntil(() => manager.stats().redis.errors >= burst, { label: `publish ${burst} failed` })
      }

      redis = await startRedis()
      await waitUntil(async () => (await httpGet(manager.port, '/readyz')).status === 200, { label: 'ready again' })
      const families = await scrape(manager.metricsPort, '/metrics', {})
      assert.ok(value(families, 'payload_realtime_redis_reconnects_total') >= 1)
      assert.ok(value(families, 'payload_realtime_redis_errors_total') >= 3)

      const publish = lines.filter((l) => /publish failed/.test(l.line))
      assert.equal(publish.length, 1, JSON.stringify(lines, null, 1))
      for (const { line } of lines) assert.ok(!line.includes(password), `no password in ${line}`)
    } finally {
      await manager.close()
    }
  },
)

test("docs/operations.md's code blocks: the JS runs, the configs say what the server needs", T, async () => {
  const doc = readFileSync(join(root, 'docs', 'operations.md'), 'utf8')
  const blocks = [...doc.matchAll(/(?:<!-- config: (\w+) -->\n)?```(\w+)\n([\s\S]*?)```/g)].map(
    ([, config, lang, code]) => ({ config, lang, code }),
  )
  assert.deepEqual(
    blocks.map((b) => b.config ?? b.lang),
    ['js', 'nginx', 'caddy', 'kubernetes'],
    'every block is run (js) or checked (a marked config)',
  )
  // The JS, as written, on free ports (its 3002 and 9464 may be taken here); the package resolves
  // to this repository through its own name.
  const file = join(root, `.operations-doc-${process.pid}.mjs`)
  const code = blocks[0].code.replace('initUWebSocket(3002,', 'initUWebSocket(0,').replace('port: 9464', 'port: 0')
  assert.notEqual(code, blocks[0].code)
  writeFileSync(file, `${code}\nexport { manager }\n`)
  process.env.PAYLOAD_SECRET ??= SECRET
  try {
    const { manager } = await import(file)
    try {
      assert.equal((await httpGet(manager.port, '/readyz')).status, 200)
      assert.equal((await httpGet(manager.metricsPort, '/metrics')).status, 200)
    } finally {
      await manager.close()
    }
  } finally {
    rmSync(file, { force: true })
  }
  const [, nginx, caddy, kube] = blocks
  for (const line of ['proxy_http_version 1.1', 'Upgrade $http_upgrade', 'Connection "upgrade"', 'X-Forwarded-For']) {
    assert.ok(nginx.code.includes(line), `nginx: ${line}`)
  }
  assert.match(caddy.code, /reverse_proxy 127\.0\.0\.1:3002/)
  // Longer than the default drain, with probes on the server's routes.
  const grace = Number(/terminationGracePeriodSeconds: (\d+)/.exec(kube.code)[1])
  assert.ok(grace * 1000 > 5000 + 5000, 'the pod outlives the preStop pause and the drain')
  for (const path of ['/readyz', '/healthz']) assert.ok(kube.code.includes(`path: ${path}`))
})

test('SIGTERM drains: readyz 503 while a socket stays, 1001 with the reason, then the process ends', T, async () => {
  // The child starts a server and waits; lib/lifecycle.js closes it on SIGTERM and then lets
  // the signal end the process. A handshake held in `verifyUser` keeps the drain open.
  const source = `
    const h = await import(${JSON.stringify(new URL('./helpers.mjs', import.meta.url).href)})
    const http = await import('node:http')
    let release
    const m = await h.startServer({
      verifyUser: (token, claims) =>
        claims.id === 'held' ? new Promise((r) => { release = () => r({ id: 'held' }); console.log('held') }) : { id: claims.id },
    })
    const app = http.createServer()
    m.attachTo(app, { path: '/realtime' })
    await new Promise((r) => app.listen(0, '127.0.0.1', r))
    process.stdin.on('data', () => release())
    console.log(JSON.stringify({ port: m.port, app: app.address().port }))
  `
  const child = spawn(process.execPath, ['--input-type=module', '-e', source], {
    cwd: root,
    stdio: ['pipe', 'pipe', 'pipe'],
  })
  cleanups.push(() => child.exitCode === null && child.signalCode === null && child.kill('SIGKILL'))
  let out = ''
  const exited = new Promise((r) => child.once('exit', (code, signal) => r({ code, signal })))
  child.stderr.on('data', (d) => (out += d))
  const ports = await new Promise((resolve) =>
    child.stdout.on('data', (d) => {
      out += d
      const line = out.split('\n').find((l) => l.startsWith('{'))
      if (line) resolve(JSON.parse(line))
    }),
  )
  const client = await connect(`ws://127.0.0.1:${ports.port}/`, { token: makeToken({ id: 'alice' }) })
  const held = handshake(`ws://127.0.0.1:${ports.app}/realtime`, { token: makeToken({ id: 'held' }) })
  await waitUntil(() => out.includes('held'), { label: 'the handshake to be held' })

  child.kill('SIGTERM')
  assert.deepEqual(await client.waitForClose(), { code: 1001, reason: 'server shutting down, reconnect elsewhere' })
  const ready = await httpGet(ports.port, '/readyz')
  assert.deepEqual([ready.status, ready.json], [503, { status: 'draining' }])
  child.stdin.write('release\n')
  assert.equal((await held).status, 503)
  const { signal } = await exited
  assert.equal(signal, 'SIGTERM', `the signal ends the process once drained: ${out}`)
})

test("the plugin logs through Payload's own logger unless told otherwise", { timeout: 120_000 }, async () => {
  const { startPayload } = await import('./payload-fixture.mjs')
  const ctx = await startPayload()
  try {
    assert.equal(ctx.manager._logger, ctx.payload.logger)
  } finally {
    await ctx.close()
  }
  const own = recorder()
  const ctx2 = await startPayload({ plugin: { logger: own.logger } })
  try {
    assert.equal(ctx2.manager._logger, own.logger)
  } finally {
    await ctx2.close()
  }
})
