'use strict'
// Loads the compiled Rust addon: `payload-realtime.<platform>.node` in the package's directory
// (a build from this repository, or a package that carries it), else the per-platform package
// `payload-realtime-<platform>` (npm/<platform>/) resolved from there.
//
// Next.js bundles server code with webpack or Turbopack, and both fail the build on a `.node`
// file reached by a static `require` (napi-rs's generated binding.js does that). So the addon is
// loaded through a `require` made at run time by `createRequire`, with a path computed at run
// time: neither bundler follows it, and Node's own module cache loads the file once per process.
// The path cannot come from `__dirname` alone: in a bundle it is the chunk's directory (webpack)
// or a placeholder such as `/ROOT/node_modules/payload-realtime/lib` (Turbopack). The package's
// directory is therefore looked for, in order: beside this file (plain Node); where the ESM
// entry's `import.meta.url` says it is (both bundlers keep the installed path there); and where
// `payload-realtime` resolves from the working directory (the application's).

const fs = require('node:fs')
const { createRequire } = require('node:module')
const path = require('node:path')

const PACKAGE = 'payload-realtime'

/** The napi-rs platform names this package is built for (package.json `napi.targets`, npm/). */
const SUPPORTED = [
  'linux-x64-gnu',
  'linux-arm64-gnu',
  'linux-x64-musl',
  'linux-arm64-musl',
  'darwin-x64',
  'darwin-arm64',
  'win32-x64-msvc',
]

let native
/** Directories (or files) named by the ESM entry, see `hintPackageUrl`. */
const hints = []

function isMusl() {
  try {
    return fs.readFileSync('/usr/bin/ldd', 'utf8').includes('musl')
  } catch {
    // no ldd: ask Node which C library it runs on
  }
  const report = typeof process.report?.getReport === 'function' ? process.report.getReport() : null
  // `getReport()` is typed as a bare object; its header names the C library.
  return Boolean(report && !(/** @type {any} */ (report).header?.glibcVersionRuntime))
}

/** This process's platform in napi-rs's naming, e.g. `linux-x64-gnu`. */
function platformName() {
  const { platform, arch } = process
  if (platform === 'linux') return `linux-${arch}-${isMusl() ? 'musl' : 'gnu'}`
  if (platform === 'win32') return `win32-${arch}-msvc`
  return `${platform}-${arch}`
}

function isPackageDir(dir) {
  try {
    return JSON.parse(fs.readFileSync(path.join(dir, 'package.json'), 'utf8')).name === PACKAGE
  } catch {
    return false
  }
}

/** The directories that may be this package's, real ones only, each once. */
function packageDirs() {
  const candidates = [path.join(__dirname, '..'), ...hints]
  try {
    const fromCwd = createRequire(path.join(process.cwd(), 'package.json'))
    candidates.push(path.dirname(fromCwd.resolve(`${PACKAGE}/package.json`)))
  } catch {
    // not resolvable from the working directory
  }
  const dirs = []
  for (const dir of candidates) {
    if (typeof dir !== 'string' || dirs.includes(dir)) continue
    if (isPackageDir(dir)) dirs.push(dir)
  }
  return dirs
}

/** Loads the addon of this platform, or throws one error that says what was looked for. */
function loadAddon() {
  const override = process.env.NAPI_RS_NATIVE_LIBRARY_PATH
  if (override) return createRequire(path.join(process.cwd(), 'package.json'))(path.resolve(override))

  const name = platformName()
  const file = `${PACKAGE}.${name}.node`
  const platformPackage = `${PACKAGE}-${name}`
  if (!SUPPORTED.includes(name)) {
    throw new Error(
      `payload-realtime: there is no native addon for this platform (${name}): the package ` +
        `${platformPackage} does not exist; binaries are published for ${SUPPORTED.join(', ')}.`,
    )
  }
  const dirs = packageDirs()
  const failures = []
  for (const dir of dirs) {
    const req = createRequire(path.join(dir, 'package.json'))
    const local = path.join(dir, file)
    if (fs.existsSync(local)) {
      try {
        return req(local)
      } catch (/** @type {any} */ err) {
        failures.push(`${local}: ${err.message}`)
        continue
      }
    }
    let resolved
    try {
      resolved = req.resolve(platformPackage)
    } catch {
      continue
    }
    try {
      return req(resolved)
    } catch (/** @type {any} */ err) {
      failures.push(`${resolved}: ${err.message}`)
    }
  }
  const where = dirs.length > 0 ? dirs.join(', ') : 'the package directory (not found)'
  throw new Error(
    `payload-realtime: the native addon for ${name} could not be loaded: ` +
      (failures.length > 0
        ? failures.join('; ')
        : `neither ${file} in ${where} nor the package ${platformPackage} was found`) +
      '. In a clone of the repository run `npm run build`; in a project, reinstall payload-realtime ' +
      `so that npm installs ${platformPackage}.`,
  )
}

function loadNative() {
  if (!native) native = loadAddon()
  return native
}

/**
 * Called by the ESM entry with its `import.meta.url`: in a bundle, webpack writes the installed
 * file's URL there at build time and Turbopack computes it at run time, while `__dirname` is of
 * no use. A URL that is not this package's is ignored.
 */
function hintPackageUrl(url) {
  try {
    hints.push(path.dirname(require('node:url').fileURLToPath(url)))
  } catch {
    // not a file: URL
  }
}

module.exports = { loadNative, hintPackageUrl, platformName, SUPPORTED }
