// WebSockets on the app's own HTTP port: one `http.Server` serves the app's pages and hands the
// upgrades of `/realtime` to payload-realtime, whose Rust server takes the connection over. The
// docs/next.md's "On the app's own port" shows this file; the tests run it.
import http from 'node:http'
import { fileURLToPath } from 'node:url'

import { initUWebSocket } from 'payload-realtime'

/**
 * Starts the app's server on `port` with the realtime sockets at `/realtime`; `handler` answers
 * every other request (a Next.js app: `app.getRequestHandler()`).
 */
export async function start({ port = 3000, host = '127.0.0.1', secret = process.env.PAYLOAD_SECRET, handler } = {}) {
  // The realtime server's own port stays on loopback, picked by the system: clients use the app's.
  const manager = await initUWebSocket(0, { host: '127.0.0.1', secret, includeCollections: ['posts'] })
  const server = http.createServer(handler ?? ((req, res) => res.end('hello from the app\n')))
  // Takes upgrades of /realtime only; Next.js's HMR socket and any other upgrade are left alone.
  manager.attachTo(server, { path: '/realtime' })
  await new Promise((resolve) => server.listen(port, host, resolve))
  return { server, manager }
}

if (process.argv[1] === fileURLToPath(import.meta.url)) {
  const { server, manager } = await start({ port: Number(process.env.PORT ?? 3000) })
  const { port } = server.address()
  console.log(`the app on http://127.0.0.1:${port}/, its sockets on ws://127.0.0.1:${port}/realtime?auth=message`)
  setInterval(() => manager.emitEvent({ type: 'update', collection: 'posts', id: 1, doc: { at: Date.now() } }), 3000)
}
