// Shared set-up for `npm start` and `npm test`: install what is missing, build the addon.
// Uses only Node's standard library, so it runs on a fresh clone before `npm install`.
import { spawnSync } from 'node:child_process'
import { existsSync, readdirSync, statSync } from 'node:fs'
import { dirname, join } from 'node:path'
import { fileURLToPath } from 'node:url'

export const root = join(dirname(fileURLToPath(import.meta.url)), '..')

export function run(cmd, args, opts = {}) {
  console.log(`\n$ ${[cmd, ...args].join(' ')}`)
  const r = spawnSync(cmd, args, { cwd: root, stdio: 'inherit', ...opts })
  if (r.error) throw r.error
  if (r.status !== 0) {
    console.error(`\n${cmd} ${args.join(' ')} failed (exit ${r.status ?? r.signal})`)
    process.exit(r.status ?? 1)
  }
}

/** npm ci when node_modules is missing or older than the lock file. */
export function ensureDependencies() {
  const marker = join(root, 'node_modules', '.package-lock.json')
  const lock = join(root, 'package-lock.json')
  if (!existsSync(marker) || statSync(marker).mtimeMs < statSync(lock).mtimeMs) {
    run('npm', ['ci', '--no-audit', '--no-fund'])
  }
}

function newestMtime(dir) {
  let newest = 0
  for (const entry of readdirSync(dir, { withFileTypes: true })) {
    const p = join(dir, entry.name)
    newest = Math.max(newest, entry.isDirectory() ? newestMtime(p) : statSync(p).mtimeMs)
  }
  return newest
}

/** Builds the addon (release unless `debug`) when a Rust source is newer than it. */
export function ensureAddon({ debug = false } = {}) {
  const addon = readdirSync(root).find((f) => f.endsWith('.node'))
  const sources = Math.max(
    newestMtime(join(root, 'src')),
    newestMtime(join(root, 'crates')),
    statSync(join(root, 'Cargo.toml')).mtimeMs,
    statSync(join(root, 'Cargo.lock')).mtimeMs,
  )
  const built = addon ? statSync(join(root, addon)).mtimeMs : 0
  const wantRelease = !debug
  const stamp = join(root, 'target', wantRelease ? 'release' : 'debug', 'libpayload_realtime.so')
  const stampOk = existsSync(stamp) && statSync(stamp).mtimeMs <= built + 1000
  if (addon && built >= sources && existsSync(join(root, 'binding.js')) && stampOk) return
  const args = ['napi', 'build', '--platform', '--js', 'binding.js', '--dts', 'binding.d.ts']
  if (wantRelease) args.push('--release')
  run('npx', args)
}
