// The package as users install it: `npm pack` gives a tarball with the built addon; installed in
// a fresh project next to `payload` and `@payloadcms/db-sqlite`, a config with
// `plugins: [uWebSocketPlugin({...})]` delivers an event to a logged-in socket.
//
// The install uses npm's cache first (`--prefer-offline`), the same versions of payload,
// @payloadcms/db-sqlite and graphql as this repository's devDependencies.

import assert from 'node:assert/strict'
import { mkdtempSync, readFileSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { dirname, join } from 'node:path'
import { test } from 'node:test'
import { checkPayloadEvent, installApp, npm, root, runPayloadApp, versionOf } from './consumer.mjs'

test('npm pack gives a tarball that works as a Payload plugin in a fresh project', { timeout: 300_000 }, async () => {
  const dir = mkdtempSync(join(tmpdir(), 'payload-realtime-pack-'))
  try {
    const packed = JSON.parse(npm(['pack', '--json', '--ignore-scripts', '--pack-destination', dir, root], root))
    const files = packed[0].files.map((f) => f.path)
    assert.ok(
      files.some((f) => f.endsWith('.node')),
      `the tarball carries the built addon: ${files.join(', ')}`,
    )
    for (const f of ['index.js', 'index.mjs', 'index.d.ts', 'lib/native.js', 'lib/plugin.js', 'lib/manager.js']) {
      assert.ok(files.includes(f), `the tarball has ${f}`)
    }
    // napi-rs's generated binding.js requires the .node file statically, which bundlers (Next.js)
    // cannot build; lib/native.js loads it instead, so binding.js is not shipped.
    assert.ok(!files.includes('binding.js'), 'the tarball has no binding.js')
    assert.ok(!files.some((f) => f.startsWith('__test__/') || f.startsWith('src/') || f.startsWith('target/')))
    // The README's and docs' links to files of the package resolve in the tarball (npm shows
    // the README on its own: a link into a file it lacks is dead there).
    for (const page of files.filter((f) => f === 'README.md' || (f.startsWith('docs/') && f.endsWith('.md')))) {
      const text = readFileSync(join(root, page), 'utf8')
      for (const [, target] of text.matchAll(/\]\(([^)#\s]+)(?:#[^)]*)?\)/g)) {
        if (/^[a-z]+:/.test(target)) continue
        const file = join(dirname(page), target).replace(/\\/g, '/')
        if (file.startsWith('examples/')) continue // the repository's, linked for reading
        assert.ok(
          files.includes(file) || files.some((f) => f.startsWith(`${file}/`)),
          `${page} links ${target}, which the tarball lacks`,
        )
      }
    }

    const project = join(dir, 'app')
    installApp(project, join(dir, packed[0].filename), versionOf('payload'), versionOf('@payloadcms/db-sqlite'))
    const result = await runPayloadApp(project)
    assert.ok(result.resolved.startsWith(join(project, 'node_modules', 'payload-realtime')), result.resolved)
    checkPayloadEvent(assert, result)
  } finally {
    rmSync(dir, { recursive: true, force: true })
  }
})
