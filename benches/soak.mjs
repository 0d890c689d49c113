// Churn soak: 2,000 sockets connect, join, receive and drop (half closing cleanly, half cut
// abruptly) in waves for several minutes against a server in its own process. At the end the
// server must be back to its baseline: no connection, no room, no leftover task, and RSS close to
// where it started. Writes a summary to benches/soak.json and into BENCHMARKS.md.
//
//   node benches/soak.mjs            (SOAK_SECONDS=180 SOAK_SOCKETS=2000 SOAK_HISTORY=100 by default)
import assert from 'node:assert/strict'
import { fork } from 'node:child_process'
import { readFileSync, writeFileSync } from 'node:fs'
import { join } from 'node:path'
import { fileURLToPath } from 'node:url'
import WebSocket from 'ws'

import { makeToken, SECRET, sleep } from '../__test__/helpers.mjs'
import { wrapReport } from './markdown.mjs'

const root = join(fileURLToPath(new URL('.', import.meta.url)), '..')
const SECONDS = Number(process.env.SOAK_SECONDS ?? 180)
const SOCKETS = Number(process.env.SOAK_SOCKETS ?? 2000)
const COLLECTIONS = 50
// Events each room keeps for recovery (SOAK_HISTORY=0: no history).
const HISTORY = Number(process.env.SOAK_HISTORY ?? 100)

const server = fork(join(root, '__test__/fixtures/instance.mjs'), [], {
  execArgv: ['--expose-gc'],
  env: {
    ...process.env,
    INSTANCE_OPTIONS: JSON.stringify({
      secret: SECRET,
      ...(HISTORY > 0 ? { history: { size: HISTORY } } : {}),
      presence: ['posts'],
      maxMessagesPerSecond: 0,
      // Every socket comes from 127.0.0.1, many as one user.
      maxConnectionsPerIp: 0,
      maxConnectionsPerUser: 0,
    }),
  },
  stdio: ['ignore', 'inherit', 'inherit', 'ipc'],
})
let seq = 0
const pending = new Map()
const ready = new Promise((resolve) =>
  server.on('message', (m) => {
    if (m.ready) return resolve(m)
    pending.get(m.re)?.(m)
    pending.delete(m.re)
  }),
)
const call = (cmd, args = {}) =>
  new Promise((resolve) => {
    const n = ++seq
    pending.set(n, resolve)
    server.send({ cmd, seq: n, ...args })
  })
const { port } = await ready
const url = `ws://127.0.0.1:${port}/`

function open(i) {
  return new Promise((resolve, reject) => {
    const ws = new WebSocket(`${url}?token=${makeToken({ id: `soak-${i % 500}` })}`, { perMessageDeflate: false })
    ws.received = 0
    ws.on('message', (d) => {
      const m = JSON.parse(d)
      if (m.type === 'update') ws.received++
    })
    ws.once('open', () => {
      ws.send(JSON.stringify({ type: 'join-collection', data: ['posts', `c${i % COLLECTIONS}`] }))
      resolve(ws)
    })
    ws.once('error', reject)
  })
}

async function openMany(n) {
  const out = []
  for (let i = 0; i < n; i += 200) {
    out.push(...(await Promise.all(Array.from({ length: Math.min(200, n - i) }, (_, k) => open(i + k)))))
  }
  return out
}

async function stats() {
  await call('gc')
  const r = await call('stats')
  return { ...r.stats, rss: r.rss, heapUsed: r.heapUsed }
}

// Warm up (allocator, JIT), then take the baseline.
for (const ws of await openMany(200)) ws.terminate()
await sleep(1500)
const baseline = await stats()
console.log('baseline', { rss: baseline.rss, tasks: baseline.tasks, rooms: baseline.rooms })

const started = Date.now()
let waves = 0
let delivered = 0
let peakRss = 0
let peakHeap = 0
while (Date.now() - started < SECONDS * 1000) {
  const sockets = await openMany(SOCKETS)
  await sleep(200) // joins land
  await call('emit', { n: 20, collection: 'posts', from: 'soak' })
  for (let c = 0; c < 5; c++)
    await call('emit', { n: 2, collection: `c${(waves * 5 + c) % COLLECTIONS}`, from: 'soak' })
  await sleep(300)
  const during = await stats()
  peakRss = Math.max(peakRss, during.rss)
  peakHeap = Math.max(peakHeap, during.heapUsed)
  delivered += sockets.reduce((n, ws) => n + ws.received, 0)
  sockets.forEach((ws, i) => (i % 2 ? ws.close(1000) : ws.terminate()))
  waves++
  process.stdout.write(
    `\rwave ${waves}: ${during.connections} sockets, ${during.rooms} rooms, rss ${(during.rss / 2 ** 20).toFixed(1)} MiB `,
  )
}
// Everything gone: wait for the server to notice every drop.
let end
for (let i = 0; i < 100; i++) {
  end = await stats()
  if (end.connections === 0 && end.rooms === 0) break
  await sleep(200)
}
await sleep(1000)
end = await stats()
await call('close')

const summary = {
  date: new Date().toISOString(),
  seconds: SECONDS,
  socketsPerWave: SOCKETS,
  waves,
  connectionsTotal: end.connectionsTotal,
  delivered,
  baseline: {
    rssMiB: +(baseline.rss / 2 ** 20).toFixed(1),
    heapMiB: +(baseline.heapUsed / 2 ** 20).toFixed(1),
    tasks: baseline.tasks,
    rooms: baseline.rooms,
  },
  end: {
    rssMiB: +(end.rss / 2 ** 20).toFixed(1),
    heapMiB: +(end.heapUsed / 2 ** 20).toFixed(1),
    tasks: end.tasks,
    rooms: end.rooms,
    connections: end.connections,
  },
  peakRssMiB: +(peakRss / 2 ** 20).toFixed(1),
  peakHeapMiB: +(peakHeap / 2 ** 20).toFixed(1),
}
console.log('\n', summary)
writeFileSync(join(root, 'benches/soak.json'), JSON.stringify(summary, null, 2) + '\n')

const section = [
  '<!-- soak:start -->',
  '## Churn soak (`node benches/soak.mjs`)',
  '',
  `${summary.waves} waves in ${summary.seconds} s: each wave ${summary.socketsPerWave} sockets connect, join \`posts\` and one of ${COLLECTIONS} other collections, receive 30 events, then drop (half close cleanly, half are cut). ${summary.connectionsTotal} connections in all, ${summary.delivered} events delivered. Measured ${summary.date}.`,
  '',
  '| | baseline | end | peak during |',
  '|---|---|---|---|',
  `| server RSS | ${summary.baseline.rssMiB} MiB | ${summary.end.rssMiB} MiB | ${summary.peakRssMiB} MiB |`,
  `| of which JS heap in use (after a GC) | ${summary.baseline.heapMiB} MiB | ${summary.end.heapMiB} MiB | ${summary.peakHeapMiB} MiB |`,
  `| runtime tasks | ${summary.baseline.tasks} | ${summary.end.tasks} | |`,
  `| rooms | ${summary.baseline.rooms} | ${summary.end.rooms} | |`,
  `| connections | 0 | ${summary.end.connections} | |`,
  '<!-- soak:end -->',
].join('\n')
const mdPath = join(root, 'BENCHMARKS.md')
let md = readFileSync(mdPath, 'utf8')
md = md.includes('<!-- soak:start -->')
  ? md.replace(/<!-- soak:start -->[\s\S]*<!-- soak:end -->/, section)
  : `${md.trimEnd()}\n\n${section}\n`
writeFileSync(mdPath, await wrapReport(md))

assert.equal(summary.end.connections, 0, 'every socket is gone')
assert.equal(summary.end.rooms, 0, 'no room is left')
assert.equal(summary.end.tasks, summary.baseline.tasks, 'no task leaked')
