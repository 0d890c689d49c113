// `npm start`: installs what is missing, builds the addon (release), installs the package into
// the Next.js demo (examples/next: Payload 3's admin on SQLite with the plugin and the live admin,
// plus a live page) and runs it with `next dev` on http://localhost:3000 (PORT), the WebSocket
// server on 3002 (WS_PORT). Two editors are seeded and their logins printed.
// The headless demo without Next: `node examples/payload/server.mjs`.
import { join } from 'node:path'

import { ensureAddon, ensureDependencies, root, run } from './ensure.mjs'
import { exampleApp, installIntoExample } from './install-example.mjs'

ensureDependencies()
ensureAddon({ debug: process.env.PAYLOAD_REALTIME_DEBUG === '1' })
installIntoExample()
const port = process.env.PORT ?? '3000'
run(
  process.execPath,
  [join(root, 'node_modules', 'next', 'dist', 'bin', 'next'), 'dev', '--turbopack', '--port', port],
  {
    cwd: exampleApp,
    env: {
      ...process.env,
      PORT: port,
      WS_PORT: process.env.WS_PORT ?? '3002',
      PAYLOAD_REALTIME_DEMO: '1',
      NEXT_TELEMETRY_DISABLED: '1',
    },
  },
)
