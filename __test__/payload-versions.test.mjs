// The plugin against the oldest and the newest Payload 3 it claims: `peerDependencies.payload`
// names the lowest minor (3.0), the registry says which is newest. Each is installed with the
// `npm pack` tarball into its own fresh project (this repository's node_modules stay as they are)
// and runs consumer.mjs's payloadApp(): Payload starts with the plugin through getPayload(), a
// logged-in WebSocket client joins `posts`, a post is created and its event arrives.
//
// LOWEST is the first 3.0 release the registry has `@payloadcms/db-sqlite` for (payload 3.0.0 and
// 3.0.1 have none). The newest needs the registry; without it the test skips, unless
// PAYLOAD_REALTIME_REQUIRE_ALL=1 (CI). Installs use npm's cache first (`--prefer-offline`).

import assert from 'node:assert/strict'
import { mkdtempSync, readFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { after, before, test } from 'node:test'
import { checkPayloadEvent, installApp, installedVersion, npm, removeLater, root, runPayloadApp } from './consumer.mjs'

const LOWEST = '3.0.2'
const requireAll = process.env.PAYLOAD_REALTIME_REQUIRE_ALL === '1'
const pkg = JSON.parse(readFileSync(join(root, 'package.json'), 'utf8'))

/**
 * The newest Payload 3 with a SQLite adapter: the adapter's `latest` tag (Payload releases its
 * packages together; `npm view` would fetch payload's whole packument, tens of MB of canaries).
 * An Error when the registry cannot be reached or `latest` has left major 3.
 */
async function newest() {
  try {
    const registry = npm(['config', 'get', 'registry'], root).trim().replace(/\/?$/, '/')
    const res = await fetch(`${registry}-/package/@payloadcms%2fdb-sqlite/dist-tags`, {
      signal: AbortSignal.timeout(20_000),
    })
    if (!res.ok) throw new Error(`dist-tags: HTTP ${res.status}`)
    const { latest } = await res.json()
    if (!latest.startsWith('3.')) throw new Error(`@payloadcms/db-sqlite latest is ${latest}: pick a 3.x tag`)
    return latest
  } catch (err) {
    return err
  }
}

test('peerDependencies claims Payload 3 from the minor LOWEST is in', () => {
  const [major, minor] = LOWEST.split('.')
  // `^3` and `^3.0.x` both start at 3.0; a raised floor must move LOWEST with it.
  assert.match(pkg.peerDependencies.payload, new RegExp(`^\\^${major}(\\.${minor}(\\.\\d+)?)?$`))
})

const latest = await newest()
let dir
let tarball
before(() => {
  dir = mkdtempSync(join(tmpdir(), 'payload-realtime-versions-'))
  const [packed] = JSON.parse(npm(['pack', '--json', '--ignore-scripts', '--pack-destination', dir, root], root))
  tarball = join(dir, packed.filename)
})
after(() => removeLater(dir))

for (const [label, version] of [
  ['the lowest claimed', LOWEST],
  ['the newest', latest],
]) {
  const offline = version instanceof Error
  test(
    `the plugin works with ${label} Payload 3 (${offline ? 'registry unreachable' : version})`,
    {
      skip: offline && !requireAll && `no registry: ${String(version.message).split('\n')[0]}`,
      timeout: 300_000,
    },
    async () => {
      if (offline) throw version
      const project = join(dir, `payload-${version}`)
      installApp(project, tarball, version)
      assert.equal(installedVersion(project, 'payload'), version)
      assert.equal(installedVersion(project, '@payloadcms/db-sqlite'), version)
      checkPayloadEvent(assert, await runPayloadApp(project))
    },
  )
}
