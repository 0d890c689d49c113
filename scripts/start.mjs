// `npm start`: installs what is missing, builds the addon (release), and runs the demo.
import { ensureAddon, ensureDependencies, run } from './ensure.mjs'

ensureDependencies()
ensureAddon({ debug: process.env.PAYLOAD_REALTIME_DEBUG === '1' })
run('node', ['examples/standalone/server.mjs'])
