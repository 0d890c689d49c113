// Support for the tests that run in a real browser: Debian's Chromium driven headless by
// playwright-core (never a downloaded browser), and a loopback HTTP server that serves the SDK
// from lib/ as ES modules plus React from node_modules.
//
// React 19 ships CommonJS only, so the server wraps react, react-dom and scheduler in a tiny
// CommonJS loader (one classic script) and serves ES-module shims for 'react' and
// 'react-dom/client' that an import map points the bare specifiers to. No bundler involved.

import { existsSync, readFileSync } from 'node:fs'
import http from 'node:http'
import { createRequire } from 'node:module'
import path from 'node:path'
import { fileURLToPath } from 'node:url'

export const CHROMIUM = process.env.PAYLOAD_REALTIME_CHROMIUM || '/usr/bin/chromium'
export const REQUIRE_ALL = process.env.PAYLOAD_REALTIME_REQUIRE_ALL === '1'
export const REPO = fileURLToPath(new URL('..', import.meta.url))

import { initUWebSocket } from '../index.mjs'
import { SECRET, sleep } from './helpers.mjs'

const require = createRequire(import.meta.url)

/** The server the browser pages talk to: events of collection `posts`, on `port` (0: any). */
export const startServer = (port = 0) =>
  initUWebSocket(port, { host: '127.0.0.1', secret: SECRET, includeCollections: ['posts'] })

/** Starts the server again on the port it had (retried while the old socket lets go of it). */
export async function restartOn(port) {
  for (let i = 0; ; i++) {
    try {
      return await startServer(port)
    } catch (err) {
      if (i >= 50) throw err
      await sleep(100)
    }
  }
}

/**
 * Launches headless Chromium, or returns null after marking the test skipped when there is none
 * (a failure instead when PAYLOAD_REALTIME_REQUIRE_ALL=1, as in CI).
 */
export async function launchBrowser(t) {
  if (!existsSync(CHROMIUM)) {
    if (REQUIRE_ALL) throw new Error(`${CHROMIUM} is missing; it is required when PAYLOAD_REALTIME_REQUIRE_ALL=1`)
    t.skip(`no browser at ${CHROMIUM}`)
    return null
  }
  const { chromium } = await import('playwright-core')
  return chromium.launch({
    executablePath: CHROMIUM,
    args: [
      '--headless',
      '--no-sandbox',
      '--disable-gpu',
      '--disable-quic',
      '--no-first-run',
      '--disable-background-networking',
      '--disable-component-update',
      '--disable-sync',
    ],
  })
}

/**
 * Opens a page that records uncaught errors and console errors (`page.problems`), but for the
 * browser's own log of refused WebSocket connections (expected while the server restarts).
 */
export async function openPage(browser) {
  const page = await browser.newPage()
  page.problems = []
  page.on('pageerror', (err) => page.problems.push(`pageerror: ${err.message}`))
  page.on('console', (msg) => {
    if (msg.type() !== 'error') return
    if (/^WebSocket connection to .* failed/.test(msg.text())) return
    page.problems.push(`console.error: ${msg.text()}`)
  })
  return page
}

const MIME = { '.mjs': 'text/javascript', '.js': 'text/javascript', '.html': 'text/html', '.map': 'application/json' }

/**
 * Serves `pages` (path -> HTML string), the files under lib/ at /lib/..., and React at /vendor/...
 * on 127.0.0.1. Resolves `{ port, origin, close() }`.
 */
export async function startHttpServer(pages = {}) {
  let vendor = null
  const server = http.createServer((req, res) => {
    const url = new URL(req.url, 'http://localhost')
    const send = (status, type, body) => {
      res.writeHead(status, { 'content-type': `${type}; charset=utf-8`, 'cache-control': 'no-store' })
      res.end(body)
    }
    try {
      if (Object.hasOwn(pages, url.pathname)) return send(200, 'text/html', pages[url.pathname])
      if (url.pathname.startsWith('/lib/')) {
        const file = path.join(REPO, path.normalize(url.pathname))
        if (!file.startsWith(path.join(REPO, 'lib') + path.sep) || !existsSync(file)) return send(404, 'text/plain', '')
        return send(200, MIME[path.extname(file)] ?? 'application/octet-stream', readFileSync(file))
      }
      if (url.pathname.startsWith('/vendor/')) {
        vendor ??= buildReactVendor()
        const body = vendor[url.pathname.slice('/vendor/'.length)]
        if (body === undefined) return send(404, 'text/plain', '')
        return send(200, 'text/javascript', body)
      }
      if (url.pathname === '/favicon.ico') return send(204, 'text/plain', '')
      return send(404, 'text/plain', 'not found')
    } catch (err) {
      return send(500, 'text/plain', String(err))
    }
  })
  await new Promise((resolve, reject) => {
    server.once('error', reject)
    server.listen(0, '127.0.0.1', resolve)
  })
  const { port } = server.address()
  return {
    port,
    origin: `http://127.0.0.1:${port}`,
    close() {
      server.closeAllConnections()
      return new Promise((r) => server.close(r))
    },
  }
}

/** The import map and scripts a page needs before it can `import ... from 'react'`. */
export const REACT_HEAD = `
<script type="importmap">
  { "imports": { "react": "/vendor/react.mjs", "react-dom/client": "/vendor/react-dom-client.mjs" } }
</script>
<script src="/vendor/cjs.js"></script>`

// Module name -> [package, file in the package] (the packages' `exports` hide cjs/, so files are
// found from each package's main entry, which sits at its root).
const VENDOR_MODULES = {
  react: ['react', 'cjs/react.development.js'],
  'react-dom': ['react-dom', 'cjs/react-dom.development.js'],
  'react-dom/client': ['react-dom', 'cjs/react-dom-client.development.js'],
  scheduler: ['scheduler', 'cjs/scheduler.development.js'],
}

function buildReactVendor() {
  let cjs = '(function () {\nvar process = { env: { NODE_ENV: "development" } };\nvar defs = {}, cache = {};\n'
  for (const [name, [pkg, file]] of Object.entries(VENDOR_MODULES)) {
    const source = readFileSync(path.join(path.dirname(require.resolve(pkg)), file), 'utf8')
    cjs += `defs[${JSON.stringify(name)}] = function (module, exports, require) {\n${source}\n};\n`
  }
  cjs += `function req(name) {
  if (cache[name]) return cache[name].exports;
  if (!defs[name]) throw new Error("vendor: no module " + name);
  var module = { exports: {} };
  cache[name] = module;
  defs[name](module, module.exports, req);
  return module.exports;
}
window.__vendorRequire = req;
})();\n`
  const shim = (name) => {
    const keys = Object.keys(require(name)).filter((k) => /^[A-Za-z_$][\w$]*$/.test(k) && k !== 'default')
    return (
      `const m = window.__vendorRequire(${JSON.stringify(name)});\nexport default m;\n` +
      `export const { ${keys.join(', ')} } = m;\n`
    )
  }
  return { 'cjs.js': cjs, 'react.mjs': shim('react'), 'react-dom-client.mjs': shim('react-dom/client') }
}

/**
 * Runs `body(env)` with headless Chromium (`env.browser`), a page server over `pages`
 * (`env.web`) and the WebSocket server (`env.manager` on `env.port`; after closing it,
 * `env.restart()` starts it again on that port), and closes all three however `body` ends.
 * Returns at once, the test skipped, when there is no browser (see `launchBrowser`).
 * @param {import('node:test').TestContext} t
 * @param {Record<string, string>} pages
 * @param {(env: { browser: any, web: any, manager: any, port: number, restart: () => Promise<any> }) => Promise<void>} body
 */
export async function withChromium(t, pages, body) {
  const browser = await launchBrowser(t)
  if (!browser) return
  const env = {
    browser,
    web: null,
    manager: null,
    port: 0,
    restart: async () => (env.manager = await restartOn(env.port)),
  }
  try {
    env.manager = await startServer()
    env.port = env.manager.port
    env.web = await startHttpServer(pages)
    await body(env)
  } finally {
    await browser.close()
    await env.web?.close()
    await env.manager?.close()
  }
}
