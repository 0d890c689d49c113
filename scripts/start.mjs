// `npm start`: installs what is missing, builds the addon (release), and runs the Payload demo
// (examples/payload: Payload 3 on SQLite with the plugin, a live page on http://localhost:3000).
// The server without Payload: `node examples/standalone/server.mjs`.
import { ensureAddon, ensureDependencies, run } from './ensure.mjs'

ensureDependencies()
ensureAddon({ debug: process.env.PAYLOAD_REALTIME_DEBUG === '1' })
run('node', ['examples/payload/server.mjs'])
