// A load generator of real browser WebSockets: headless Chromium (Debian's, driven by
// playwright-core), `--conns` sockets spread over `--pages` pages, each a plain
// `new WebSocket('ws://host:port/?token=...')` that joins the room and records every event as the
// page's own `onmessage` sees it. It speaks the same stdin/stdout lines as benches/loadgen
// (`measure <expected> <timeout_ms>`, `stats`, `quit`), so benches/run.mjs drives it like the others.
//
// Latency is emit-to-receive with the page's clock (`performance.timeOrigin + performance.now()`,
// the same wall clock as the emitter's on one machine). CPU is the whole browser's: every process
// under this one (the browser, its renderers, its network service), from /proc.

import { existsSync, readdirSync, readFileSync } from 'node:fs'
import { arg, commandLoop, options, out, result, token } from './common.mjs'

const { host, port, conns, offset, users, room, secret } = options(200)
const pagesWanted = Number(arg('pages', '4'))
const chromiumPath = process.env.PAYLOAD_REALTIME_CHROMIUM || '/usr/bin/chromium'

const nowUs = () => Math.round((performance.timeOrigin + performance.now()) * 1000)
const clockTicks = 100

/** CPU time (µs) of every process under `pid` (not `pid` itself). */
function treeCpuUs(pid) {
  const parent = new Map()
  const cpu = new Map()
  for (const d of readdirSync('/proc')) {
    if (!/^\d+$/.test(d)) continue
    try {
      const s = readFileSync(`/proc/${d}/stat`, 'utf8')
      const f = s.slice(s.lastIndexOf(')') + 2).split(' ')
      parent.set(Number(d), Number(f[1]))
      cpu.set(Number(d), ((Number(f[11]) + Number(f[12])) * 1e6) / clockTicks)
    } catch {}
  }
  let total = 0
  for (const [p] of cpu) {
    for (let q = parent.get(p) ?? 0; q > 1; q = parent.get(q) ?? 0) {
      if (q === pid) {
        total += cpu.get(p)
        break
      }
    }
  }
  return total
}

/** Runs in each page: opens its sockets, joins, and counts events (installed as `window.bench`). */
function pageSetup({ urls, room }) {
  const b = {
    joined: 0,
    failed: 0,
    settled: 0,
    closed: 0,
    armed: false,
    stray: 0,
    lat: [],
    recv: [],
    first: 0,
    last: 0,
    perSocket: new Array(urls.length).fill(0),
  }
  window.bench = b
  const tRe = /"t":([0-9.eE+-]+)/
  urls.forEach((url, i) => {
    const ws = new WebSocket(url)
    let awaiting = true
    ws.onopen = () => ws.send(JSON.stringify({ type: 'join-collection', collection: room, id: 1 }))
    ws.onmessage = (m) => {
      const now = performance.timeOrigin + performance.now()
      if (awaiting) {
        awaiting = false
        if (String(m.data).includes('"ack"')) b.joined++
        else b.failed++
        b.settled++
        return
      }
      if (!b.armed) {
        b.stray++
        return
      }
      if (!b.first) b.first = now
      b.last = now
      b.recv.push(now)
      const t = tRe.exec(m.data)
      if (t) b.lat.push(now - Number(t[1]))
      b.perSocket[i]++
    }
    ws.onclose = () => {
      b.closed++
      if (awaiting) {
        awaiting = false
        b.failed++
        b.settled++
      }
    }
  })
}

if (!existsSync(chromiumPath)) {
  process.stderr.write(`browser: no Chromium at ${chromiumPath}\n`)
  process.exit(2)
}
const { chromium } = await import('playwright-core')
const browser = await chromium.launch({
  executablePath: chromiumPath,
  args: ['--headless', '--no-sandbox', '--disable-gpu', '--no-first-run', '--disable-background-networking'],
})
// Chromium runs as this process's child: its CPU is everything under this process.
const browserPid = process.pid
const pageCount = Math.max(1, Math.min(pagesWanted, conns))
const pages = []
const started = Date.now()
const cpu0 = browserPid ? treeCpuUs(browserPid) : 0
for (let p = 0; p < pageCount; p++) {
  const page = await browser.newPage()
  // Sockets p, p + pages, ... of this generator.
  const urls = []
  for (let i = p; i < conns; i += pageCount)
    urls.push(`ws://${host}:${port}/?token=${token(secret, (i + offset) % users)}`)
  await page.evaluate(pageSetup, { urls, room })
  pages.push({ page, count: urls.length })
}
const sum = async (expr) => (await Promise.all(pages.map((p) => p.page.evaluate(expr)))).reduce((a, b) => a + b, 0)
const deadline = Date.now() + Number(arg('connect-timeout-ms', '120000'))
let settled = 0
while ((settled = await sum('window.bench.settled')) < conns && Date.now() < deadline) {
  await new Promise((r) => setTimeout(r, 50))
}
const joined = await sum('window.bench.joined')
out({
  event: 'ready',
  client: `Chromium ${browser.version()}`,
  conns,
  pages: pageCount,
  handshakes: joined,
  joined,
  join_errors: 0,
  failed: await sum('window.bench.failed'),
  retries: 0,
  timed_out: settled < conns,
  connect_ms: Date.now() - started,
  handshake_secs: (Date.now() - started) / 1000,
  cpu_us: browserPid ? treeCpuUs(browserPid) - cpu0 : 0,
})

await commandLoop({
  stats: async () => ({ closed: await sum('window.bench.closed'), stray: await sum('window.bench.stray') }),
  async measure(expected, timeout) {
    const strayBefore = await sum('(() => { const s = window.bench.stray; window.bench.stray = 0; return s })()')
    const closed0 = await sum('window.bench.closed')
    await Promise.all(
      pages.map((p) =>
        p.page.evaluate(() => {
          const b = window.bench
          Object.assign(b, { lat: [], recv: [], first: 0, last: 0, armed: true })
          b.perSocket.fill(0)
        }),
      ),
    )
    const cpu0 = browserPid ? treeCpuUs(browserPid) : 0
    const armedUs = nowUs()
    out({ event: 'armed', armed_us: armedUs })
    const end = Date.now() + timeout
    let delivered = 0
    while ((delivered = await sum('window.bench.recv.length')) < expected && Date.now() < end) {
      await new Promise((r) => setTimeout(r, 20))
    }
    const got = await Promise.all(
      pages.map((p) =>
        p.page.evaluate(() => {
          const b = window.bench
          b.armed = false
          return { lat: b.lat, recv: b.recv, first: b.first, last: b.last, per: b.perSocket }
        }),
      ),
    )
    const cpu = browserPid ? treeCpuUs(browserPid) - cpu0 : 0
    out(
      result({
        strayBefore,
        expected,
        delivered,
        armedUs,
        first: Math.min(...got.map((g) => g.first || Infinity)),
        last: Math.max(...got.map((g) => g.last)),
        lat: got.flatMap((g) => g.lat).sort((a, b) => a - b),
        recv: got.flatMap((g) => g.recv).sort((a, b) => a - b),
        per: got.flatMap((g) => g.per).filter((c) => c > 0),
        closedDuring: (await sum('window.bench.closed')) - closed0,
        cpuUs: cpu,
      }),
    )
  },
})
await browser.close()
process.exit(0)
