// Where lib/native.js finds the addon, in a copy of the package laid out as npm installs it:
// the per-platform package `payload-realtime-<platform>` beside it when the package has no .node
// of its own, and one clear error naming the platform and that package when there is neither.
// Each case runs in a child process, from another working directory, through the ESM and the
// CommonJS entry.

import assert from 'node:assert/strict'
import { spawnSync } from 'node:child_process'
import { cpSync, mkdirSync, mkdtempSync, readdirSync, rmSync, symlinkSync, writeFileSync } from 'node:fs'
import { createRequire } from 'node:module'
import { tmpdir } from 'node:os'
import { dirname, join } from 'node:path'
import { after, before, test } from 'node:test'
import { fileURLToPath } from 'node:url'

const root = join(dirname(fileURLToPath(import.meta.url)), '..')
const { platformName } = createRequire(import.meta.url)('../lib/native.js')
const platform = platformName()
const addon = readdirSync(root).find((f) => f === `payload-realtime.${platform}.node`)

let dir

/** A project with payload-realtime in node_modules: its JS files only, no addon. */
function project(name) {
  const p = join(dir, name)
  const pkg = join(p, 'node_modules', 'payload-realtime')
  mkdirSync(pkg, { recursive: true })
  for (const f of ['package.json', 'index.js', 'index.mjs', 'lib'])
    cpSync(join(root, f), join(pkg, f), { recursive: true })
  writeFileSync(join(p, 'package.json'), JSON.stringify({ name, private: true }))
  return p
}

/** Loads the addon through `entry` ('esm' or 'cjs') in `cwd`; resolves the child's outcome. */
function load(cwd, entry) {
  const code =
    entry === 'esm'
      ? `const m = await import('payload-realtime'); const s = await m.initUWebSocket(0, { secret: 's', host: '127.0.0.1' }); console.log('port', s.port); await s.close()`
      : `const m = require('payload-realtime'); m.initUWebSocket(0, { secret: 's', host: '127.0.0.1' }).then(async (s) => { console.log('port', s.port); await s.close() })`
  const r = spawnSync(
    process.execPath,
    [entry === 'esm' ? '--input-type=module' : '--input-type=commonjs', '-e', code],
    {
      cwd,
      encoding: 'utf8',
      env: { ...process.env, NAPI_RS_NATIVE_LIBRARY_PATH: '' },
    },
  )
  return { status: r.status, out: r.stdout + r.stderr }
}

before(() => {
  dir = mkdtempSync(join(tmpdir(), 'payload-realtime-native-'))
})

after(() => rmSync(dir, { recursive: true, force: true }))

test(
  'the addon is loaded from the per-platform package beside payload-realtime',
  { skip: !addon && 'no addon built' },
  () => {
    const p = project('with-platform-package')
    const pkg = join(p, 'node_modules', `payload-realtime-${platform}`)
    mkdirSync(pkg)
    const file = `payload-realtime.${platform}.node`
    writeFileSync(join(pkg, 'package.json'), JSON.stringify({ name: `payload-realtime-${platform}`, main: file }))
    symlinkSync(join(root, file), join(pkg, file))
    for (const entry of ['esm', 'cjs']) {
      const r = load(p, entry)
      assert.equal(r.status, 0, r.out)
      assert.match(r.out, /^port \d+$/m)
    }
  },
)

test('without an addon, one error names the platform and the package looked for', () => {
  const p = project('without-addon')
  for (const entry of ['esm', 'cjs']) {
    const r = load(p, entry)
    assert.notEqual(r.status, 0)
    assert.match(r.out, new RegExp(`the native addon for ${platform} could not be loaded`))
    assert.match(r.out, new RegExp(`payload-realtime\\.${platform}\\.node`))
    assert.match(r.out, new RegExp(`reinstall payload-realtime so that npm installs payload-realtime-${platform}`))
  }
})
