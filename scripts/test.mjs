// `npm test`: installs what is missing, builds the addon, then runs the Rust tests, the JS tests
// and the WebSocket conformance suite (Autobahn, cases 1-10).
//
// PAYLOAD_REALTIME_REQUIRE_ALL=1 (set by .ci/run) makes optional parts mandatory: a missing
// Python 2.7 for Autobahn fails instead of skipping.
// PAYLOAD_REALTIME_DEBUG=1 builds the addon in debug (faster to iterate).
// PAYLOAD_REALTIME_NODE_VERSIONS=22,24 (set by .ci/run) also runs NODE_SUBSET on each of those
// Node majors, with the official binaries of the npm registry's `node` package (`npx -p node@22`):
// the same addon (N-API is one ABI across Node versions) loaded and used by core and Payload tests.
import { existsSync } from 'node:fs'
import { execSync } from 'node:child_process'
import { ensureAddon, ensureDependencies, root, run } from './ensure.mjs'

const requireAll = process.env.PAYLOAD_REALTIME_REQUIRE_ALL === '1'

ensureDependencies()
ensureAddon({ debug: process.env.PAYLOAD_REALTIME_DEBUG === '1' })
run('cargo', ['test', '--workspace'])
// --test-force-exit: a test file's process ends once its tests are done. libsql (under
// @payloadcms/db-sqlite) can keep a file's process alive after Payload's `destroy()` until a
// garbage collection closes what a dev reload left (seen once in CI: lifecycle-next.test.mjs
// passed every test and never exited). The server's own exits are tested in child processes.
const TEST = ['--test', '--test-concurrency=1', '--test-force-exit']
run('node', [...TEST, '__test__/'])

/** The tests run on every other Node major too: the addon's load and API, the wire protocol,
 * auth, SSE, lifecycle, app events, the client and the Payload plugin (about 1 min per version). */
const NODE_SUBSET = ['native', 'protocol', 'auth', 'sse', 'lifecycle', 'app-events', 'client', 'payload'].map(
  (name) => `__test__/${name}.test.mjs`,
)

for (const major of (process.env.PAYLOAD_REALTIME_NODE_VERSIONS ?? '').split(',').filter(Boolean)) {
  const npx = ['-y', '-p', `node@${major}`, 'node']
  run('npx', [...npx, '-e', 'console.log(`Node ${process.version}, N-API ${process.versions.napi}`)'])
  run('npx', [...npx, ...TEST, ...NODE_SUBSET])
}

function hasPython27() {
  try {
    const pyenvRoot = execSync('pyenv root', { cwd: root, stdio: ['ignore', 'pipe', 'ignore'] })
      .toString()
      .trim()
    return existsSync(`${pyenvRoot}/versions/2.7.18/bin/python2.7`)
  } catch {
    return Boolean(process.env.AUTOBAHN_PYTHON27 && existsSync(process.env.AUTOBAHN_PYTHON27))
  }
}

if (hasPython27()) {
  run('bash', ['scripts/autobahn.sh'], { env: { ...process.env, AUTOBAHN_PROFILE: 'debug' } })
} else if (requireAll) {
  console.error('Autobahn needs CPython 2.7 (pyenv 2.7.18 or AUTOBAHN_PYTHON27); it is required here.')
  process.exit(1)
} else {
  console.warn('\nSkipping Autobahn: no CPython 2.7 found (pyenv 2.7.18 or AUTOBAHN_PYTHON27).')
}
