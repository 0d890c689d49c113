// A Next.js custom server with payload-realtime on the app's own port: `/realtime` is served by
// the Rust server (it adopts each upgraded connection), every other upgrade (Next's HMR socket in
// dev) goes to Next. docs/next.md shows this file; __test__/next-custom-server.test.mjs runs it.
import http from 'node:http'
import { fileURLToPath } from 'node:url'

import next from 'next'
import { getUWebSocketManager } from 'payload-realtime'

const port = Number(process.env.PORT ?? 3000)
const dev = process.env.NODE_ENV !== 'production'
const app = next({ dev, dir: fileURLToPath(new URL('.', import.meta.url)), port })
// prepare() runs src/instrumentation.ts, which creates Payload: the plugin's server is running.
await app.prepare()
const manager = getUWebSocketManager()

const server = http.createServer(app.getRequestHandler())
manager.attachTo(server, { path: '/realtime' })
const nextUpgrade = app.getUpgradeHandler()
server.on('upgrade', (req, socket, head) => req.url.split('?')[0] !== '/realtime' && nextUpgrade(req, socket, head))
server.listen(port, () => console.log(`> Ready on http://localhost:${port} (sockets on /realtime)`))
