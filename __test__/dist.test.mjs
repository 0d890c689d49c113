// The published layout (napi-rs's): the main package as scripts/release.mjs assembles it names
// every per-platform package of npm/ in `optionalDependencies` at its own version, the loader says which package it looked for on
// a platform with none, and the Linux binaries load where they claim to: no glibc symbol
// version above the baseline, musl ones linked against musl's libc only; and the assembled main
// package (without a binary) and this platform's package install together and serve.
//
// The binaries checked are those `npm run release` (scripts/release.mjs) left in dist/npm/; CI
// builds the x64 glibc one there (.ci/run). With PAYLOAD_REALTIME_REQUIRE_ALL=1 a missing
// linux-x64-gnu binary fails instead of skipping.

import assert from 'node:assert/strict'
import { spawnSync } from 'node:child_process'
import { existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs'
import { createRequire } from 'node:module'
import { tmpdir } from 'node:os'
import { dirname, join } from 'node:path'
import { test } from 'node:test'
import { fileURLToPath } from 'node:url'
import { GLIBC_BASELINE, compareVersions, glibcAbove, glibcSymbols } from '../scripts/elf-check.mjs'
import { checkBinary, optionalDependencies, platformOf } from '../scripts/release.mjs'

const root = join(dirname(fileURLToPath(import.meta.url)), '..')
const read = (f) => JSON.parse(readFileSync(join(root, f), 'utf8'))
const pkg = read('package.json')
const { SUPPORTED } = createRequire(import.meta.url)('../lib/native.js')
const requireAll = process.env.PAYLOAD_REALTIME_REQUIRE_ALL === '1'

test('every platform package is an optional dependency at the main package version', () => {
  const platforms = readdirSync(join(root, 'npm')).sort()
  assert.deepEqual(platforms, pkg.napi.targets.map(platformOf).sort(), 'npm/ matches napi.targets')
  assert.deepEqual(platforms, [...SUPPORTED].sort(), 'npm/ matches the loader list')
  // What the published package.json carries (scripts/release.mjs writes it into dist/).
  const deps = optionalDependencies()
  assert.deepEqual(
    Object.keys(deps).sort(),
    platforms.map((p) => `${pkg.name}-${p}`),
    'optionalDependencies names every npm/ package and nothing else',
  )
  for (const p of platforms) {
    const sub = read(`npm/${p}/package.json`)
    const name = `${pkg.name}-${p}`
    assert.equal(sub.name, name)
    assert.equal(sub.version, pkg.version, `${name} is at the main version`)
    assert.equal(deps[name], pkg.version, `optionalDependencies pins ${name} exactly`)
    assert.equal(sub.main, `${pkg.name}.${p}.node`)
    assert.deepEqual(sub.files, [sub.main])
    assert.deepEqual(sub.engines, pkg.engines)
    assert.equal(sub.license, pkg.license)
    const [os, cpu, abi] = p.split('-')
    assert.deepEqual(sub.os, [os])
    assert.deepEqual(sub.cpu, [cpu])
    if (os === 'linux') assert.deepEqual(sub.libc, [abi === 'gnu' ? 'glibc' : 'musl'])
    else assert.equal(sub.libc, undefined)
  }
  // Not in the repository's package.json: `npm ci` would need them in package-lock.json, which
  // cannot lock a package that is not on the registry yet.
  assert.equal(pkg.optionalDependencies, undefined)
})

/** Loads the package with `process.platform`/`arch` replaced; returns the child's output. */
function loadAs(platform, arch) {
  const preload = `Object.defineProperty(process, 'platform', { value: ${JSON.stringify(platform)} }); Object.defineProperty(process, 'arch', { value: ${JSON.stringify(arch)} })`
  const r = spawnSync(
    process.execPath,
    ['-e', `${preload}; require(${JSON.stringify(join(root, 'lib', 'native.js'))}).loadNative()`],
    { encoding: 'utf8', env: { ...process.env, NAPI_RS_NATIVE_LIBRARY_PATH: '' } },
  )
  return { status: r.status, out: r.stdout + r.stderr }
}

test('on a platform without a binary, one error names it and the package looked for', () => {
  for (const [platform, arch, name] of [
    [
      'linux',
      's390x',
      `linux-s390x-${existsSync('/usr/bin/ldd') && readFileSync('/usr/bin/ldd', 'utf8').includes('musl') ? 'musl' : 'gnu'}`,
    ],
    ['freebsd', 'x64', 'freebsd-x64'],
    ['win32', 'arm64', 'win32-arm64-msvc'],
  ]) {
    const r = loadAs(platform, arch)
    assert.notEqual(r.status, 0, r.out)
    const errors = r.out.match(/payload-realtime: .*/g)
    assert.equal(errors.length, 1, r.out)
    assert.match(errors[0], new RegExp(`no native addon for this platform \\(${name}\\)`))
    assert.match(errors[0], new RegExp(`the package payload-realtime-${name} does not exist`))
    assert.match(errors[0], /published for linux-x64-gnu, .*win32-x64-msvc/)
  }
})

test(
  'the glibc version check reads real binaries and can fail',
  { skip: process.platform !== 'linux' && 'Linux only' },
  () => {
    assert.equal(compareVersions('2.17', '2.2.5'), 1)
    assert.equal(compareVersions('2.2.5', '2.17'), -1)
    assert.equal(compareVersions('2.17', '2.17'), 0)
    // The host-toolchain build (`npm run build`), else a system binary: both link glibc with
    // symbols past its first x86-64/aarch64 versions (2.2.5/2.17), which the check must report.
    const host = join(
      root,
      `payload-realtime.${createRequire(import.meta.url)('../lib/native.js').platformName()}.node`,
    )
    const file = existsSync(host) ? host : '/usr/bin/ls'
    if (glibcSymbols(file).length === 0) return // a musl host: nothing versioned to read
    assert.ok(glibcAbove(file, '2.0').length > 0, `${file} needs some glibc above 2.0`)
    assert.deepEqual(glibcAbove(file, '99.0'), [])
  },
)

const built = (p) => join(root, 'dist', 'npm', p, `${pkg.name}.${p}.node`)

for (const triple of pkg.napi.targets.filter((t) => t.includes('-linux-'))) {
  const p = platformOf(triple)
  const file = built(p)
  const mandatory = requireAll && p === 'linux-x64-gnu'
  test(
    `dist ${p}: ${triple.endsWith('-gnu') ? `no GLIBC symbol version above ${GLIBC_BASELINE}` : "NEEDED is musl's libc.so only"}`,
    { skip: !mandatory && !existsSync(file) && `no ${file} (npm run release)` },
    () => {
      assert.ok(existsSync(file), `${file} is built (node scripts/release.mjs --targets ${triple} --profile dev)`)
      checkBinary(triple, file)
      if (triple.endsWith('-gnu')) assert.ok(glibcSymbols(file).length > 0, 'the binary links glibc')
    },
  )
}

// The packages as published: the main one (no .node in it) and this platform's, installed
// together by npm into a fresh project, load and serve through both entries.
const here = createRequire(import.meta.url)('../lib/native.js').platformName()
const assembled = existsSync(built(here)) && existsSync(join(root, 'dist', pkg.name, 'package.json'))
test(
  `the assembled main and ${here} packages install together and serve`,
  {
    skip: !assembled && !(requireAll && here === 'linux-x64-gnu') && 'no dist/ packages (npm run release)',
    timeout: 300_000,
  },
  () => {
    const dir = mkdtempSync(join(tmpdir(), 'payload-realtime-dist-'))
    try {
      const npm = (args, cwd) => {
        const r = spawnSync('npm', args, {
          cwd,
          encoding: 'utf8',
          env: { ...process.env, npm_config_update_notifier: 'false' },
        })
        assert.equal(r.status, 0, `npm ${args.join(' ')}: ${r.stdout}${r.stderr}`)
        return r.stdout
      }
      const tarballs = [join(root, 'dist', pkg.name), join(root, 'dist', 'npm', here)].map((p) => {
        const [info] = JSON.parse(npm(['pack', '--json', '--ignore-scripts', '--pack-destination', dir], p))
        return { path: join(dir, info.filename), files: info.files.map((f) => f.path) }
      })
      assert.ok(!tarballs[0].files.some((f) => f.endsWith('.node')), 'the main package carries no binary')
      assert.ok(tarballs[1].files.includes(`${pkg.name}.${here}.node`))
      const published = JSON.parse(readFileSync(join(root, 'dist', pkg.name, 'package.json'), 'utf8'))
      assert.deepEqual(published.optionalDependencies, optionalDependencies())
      const app = join(dir, 'app')
      mkdirSync(app)
      writeFileSync(join(app, 'package.json'), JSON.stringify({ name: 'app', private: true, type: 'module' }))
      npm(['install', '--offline', '--no-audit', '--no-fund', ...tarballs.map((t) => t.path)], app)
      for (const [flag, code] of [
        [
          '--input-type=module',
          `const m = await import('payload-realtime'); const s = await m.initUWebSocket(0, { secret: 's', host: '127.0.0.1' }); console.log('port', s.port); await s.close()`,
        ],
        [
          '--input-type=commonjs',
          `require('payload-realtime').initUWebSocket(0, { secret: 's', host: '127.0.0.1' }).then(async (s) => { console.log('port', s.port); await s.close() })`,
        ],
      ]) {
        const r = spawnSync(process.execPath, [flag, '-e', code], {
          cwd: app,
          encoding: 'utf8',
          env: { ...process.env, NAPI_RS_NATIVE_LIBRARY_PATH: '' },
        })
        assert.equal(r.status, 0, r.stdout + r.stderr)
        assert.match(r.stdout, /^port \d+$/m)
      }
    } finally {
      rmSync(dir, { recursive: true, force: true })
    }
  },
)
