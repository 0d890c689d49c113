// `npm run release`: builds the addon for each target, checks each binary, assembles the
// per-platform npm packages (npm/<platform>/ with its .node) and the main package in dist/, and
// checks every one with `npm pack --dry-run`. Publishing is left to the release workflow
// (.github/workflows/release.yml), which runs `npm publish` on each dist/ folder.
//
//   node scripts/release.mjs [--targets a,b] [--profile release|dev] [--skip-build] [--pack]
//
// --targets    Rust target triples (default: the four Linux ones, which build on any Linux x64
//              host; `all` = package.json `napi.targets`). Linux targets build with
//              cargo-zigbuild (`cargo install cargo-zigbuild`, Zig from PyPI's `ziglang` or on
//              PATH); linux-gnu ones against glibc GLIBC_BASELINE (scripts/elf-check.mjs). Other
//              targets build with plain cargo and need their host (macOS, Windows).
// --profile    Cargo profile (default release; dev is quicker for a local check).
// --skip-build Take the binaries already in dist/npm/<platform>/ (the release workflow builds
//              each on its own runner and gathers them here).
// --pack       Also write the tarballs to dist/ (`npm pack`), for a local install test.

import { execFileSync } from 'node:child_process'
import { copyFileSync, cpSync, existsSync, mkdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs'
import { dirname, join } from 'node:path'
import { fileURLToPath } from 'node:url'
import { parseArgs } from 'node:util'
import { GLIBC_BASELINE, glibcAbove, glibcSymbols, machine, neededLibraries } from './elf-check.mjs'

const root = join(dirname(fileURLToPath(import.meta.url)), '..')
const dist = join(root, 'dist')
const pkg = JSON.parse(readFileSync(join(root, 'package.json'), 'utf8'))

/** napi-rs's platform name of a Rust target triple, e.g. `linux-arm64-musl`. */
export function platformOf(triple) {
  const [arch, , os, env] = triple.split('-')
  const cpu = { x86_64: 'x64', aarch64: 'arm64' }[arch]
  if (!cpu) throw new Error(`unsupported target ${triple}`)
  if (os === 'linux') return `linux-${cpu}-${env}`
  if (os === 'darwin') return `darwin-${cpu}`
  if (os === 'windows') return `win32-${cpu}-${env}`
  throw new Error(`unsupported target ${triple}`)
}

/**
 * The main package's `optionalDependencies` as published: every npm/<platform> package of
 * `napi.targets`, pinned to the main version (what `napi prepublish` writes). They are added
 * when the package is assembled, not kept in the repository's package.json: `npm ci` needs every
 * dependency in package-lock.json, and a package not yet on the registry cannot be locked.
 * Throws when a platform package's name or version disagrees with the main package.
 */
export function optionalDependencies() {
  const deps = {}
  for (const triple of pkg.napi.targets) {
    const platform = platformOf(triple)
    const name = `${pkg.name}-${platform}`
    const sub = JSON.parse(readFileSync(join(root, 'npm', platform, 'package.json'), 'utf8'))
    if (sub.name !== name) throw new Error(`npm/${platform}/package.json is named ${sub.name}, not ${name}`)
    if (sub.version !== pkg.version) throw new Error(`${name} is at ${sub.version}, the main package at ${pkg.version}`)
    deps[name] = pkg.version
  }
  return deps
}

/** The file cargo writes for a cdylib on `triple`. */
function cargoOutput(triple, profile) {
  const dir = join(process.env.CARGO_TARGET_DIR || join(root, 'target'), triple, profile === 'dev' ? 'debug' : profile)
  if (triple.includes('-windows-')) return join(dir, 'payload_realtime.dll')
  if (triple.includes('-darwin')) return join(dir, 'libpayload_realtime.dylib')
  return join(dir, 'libpayload_realtime.so')
}

function run(cmd, args, opts = {}) {
  console.log(`$ ${cmd} ${args.join(' ')}`)
  return execFileSync(cmd, args, { cwd: root, stdio: 'inherit', ...opts })
}

function build(triple, profile) {
  const linux = triple.includes('-linux-')
  const env = { ...process.env }
  // musl's Rust targets link statically by default, which a Node addon (a shared object loaded
  // into a dynamically linked node) cannot be.
  if (triple.endsWith('-musl')) env.RUSTFLAGS = `${env.RUSTFLAGS ?? ''} -C target-feature=-crt-static`.trim()
  const target = triple.endsWith('-linux-gnu') ? `${triple}.${GLIBC_BASELINE}` : triple
  run(
    'cargo',
    [linux ? 'zigbuild' : 'build', '-p', 'payload-realtime', '--lib', '--profile', profile, '--target', target],
    {
      env,
    },
  )
  return cargoOutput(triple, profile)
}

/** Fails unless the binary is for the right machine and links only what its platform has. */
export function checkBinary(triple, file) {
  const problems = []
  if (triple.includes('-linux-')) {
    const want = triple.startsWith('aarch64') ? 'AArch64' : 'X86-64'
    if (!machine(file).includes(want)) problems.push(`machine is ${machine(file)}, not ${want}`)
    const needed = neededLibraries(file)
    if (triple.endsWith('-gnu')) {
      const above = glibcAbove(file)
      if (above.length > 0) problems.push(`needs glibc above ${GLIBC_BASELINE}: ${above.join(', ')}`)
    } else {
      // musl's libc is one `libc.so`; glibc's names (libc.so.6, libpthread, ld-linux) or
      // versioned GLIBC symbols would keep it from loading on Alpine.
      const foreign = needed.filter((l) => l !== 'libc.so')
      if (foreign.length > 0) problems.push(`NEEDED beyond musl's libc.so: ${foreign.join(', ')}`)
      if (glibcSymbols(file).length > 0) problems.push('references GLIBC symbol versions')
    }
  }
  if (problems.length > 0) throw new Error(`${file}: ${problems.join('; ')}`)
}

/** `npm pack --dry-run` of `dir`: the file list, checked against `mustHave`/`mustNotHave`. */
function dryRun(dir, { mustHave = [], mustNotHave = () => false } = {}) {
  const out = execFileSync('npm', ['pack', '--dry-run', '--json', '--ignore-scripts'], { cwd: dir, encoding: 'utf8' })
  const [info] = JSON.parse(out)
  const files = info.files.map((f) => f.path)
  for (const f of mustHave) if (!files.includes(f)) throw new Error(`${info.name}: the tarball lacks ${f}`)
  const extra = files.filter(mustNotHave)
  if (extra.length > 0) throw new Error(`${info.name}: the tarball must not have ${extra.join(', ')}`)
  console.log(`ok ${info.name}@${info.version}: ${files.length} files, ${info.size} bytes packed`)
  return info
}

/**
 * Writes the main package as published into `main` (emptied first): the files `npm pack` would
 * take from the repository except any .node (each platform's binary comes from its own package),
 * and a package.json with the platform packages in `optionalDependencies` and no scripts.
 * Checked with `npm pack --dry-run`; returns `main`. The install tests assemble one in a temp dir.
 */
export function assembleMain(main) {
  rmSync(main, { recursive: true, force: true })
  mkdirSync(main, { recursive: true })
  const listed = JSON.parse(
    execFileSync('npm', ['pack', '--dry-run', '--json', '--ignore-scripts'], { cwd: root, encoding: 'utf8' }),
  )[0].files.map((f) => f.path)
  for (const f of listed) {
    if (f.endsWith('.node')) continue
    mkdirSync(dirname(join(main, f)), { recursive: true })
    cpSync(join(root, f), join(main, f))
  }
  const mainPkg = { ...pkg, optionalDependencies: optionalDependencies() }
  delete mainPkg.scripts // prepack would rebuild the addon; the published package needs none
  delete mainPkg.devDependencies
  writeFileSync(join(main, 'package.json'), `${JSON.stringify(mainPkg, null, 2)}\n`)
  dryRun(main, { mustHave: ['package.json', 'index.js', 'lib/native.js'], mustNotHave: (f) => f.endsWith('.node') })
  return main
}

function main() {
  optionalDependencies() // every platform package agrees with the main one, before any build
  const { values } = parseArgs({
    options: {
      targets: { type: 'string' },
      profile: { type: 'string', default: 'release' },
      'skip-build': { type: 'boolean', default: false },
      pack: { type: 'boolean', default: false },
    },
  })
  const targets =
    values.targets === 'all'
      ? pkg.napi.targets
      : values.targets
        ? values.targets.split(',')
        : pkg.napi.targets.filter((t) => t.includes('-linux-'))

  for (const triple of targets) {
    const platform = platformOf(triple)
    const src = join(root, 'npm', platform)
    const out = join(dist, 'npm', platform)
    const node = join(out, `${pkg.name}.${platform}.node`)
    if (!values['skip-build']) {
      const built = build(triple, values.profile)
      mkdirSync(out, { recursive: true })
      copyFileSync(built, node)
    }
    if (!existsSync(node)) throw new Error(`${node} is missing (built on another runner?)`)
    checkBinary(triple, node)
    copyFileSync(join(src, 'package.json'), join(out, 'package.json'))
    copyFileSync(join(src, 'README.md'), join(out, 'README.md'))
    dryRun(out, { mustHave: ['package.json', `${pkg.name}.${platform}.node`] })
    if (values.pack) run('npm', ['pack', '--ignore-scripts', '--pack-destination', dist], { cwd: out })
  }

  const main = assembleMain(join(dist, pkg.name))
  if (values.pack) run('npm', ['pack', '--ignore-scripts', '--pack-destination', dist], { cwd: main })
}

if (process.argv[1] === fileURLToPath(import.meta.url)) main()
