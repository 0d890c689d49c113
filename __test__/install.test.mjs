// The package as published, installed by each package manager into a fresh Payload project:
// npm, pnpm 10 (its default blocks install scripts: the package must need none), Yarn classic
// (1.x) and Yarn 4 (with `nodeLinker: node-modules`, see MANAGERS). In each project an ES module
// (the project is `"type": "module"`, as Payload's templates are) and a CommonJS script start
// Payload with the plugin and receive an event over a WebSocket (consumer.mjs's payloadApp()).
//
// "As published": the main package without a binary (scripts/release.mjs's assembleMain) and one
// package per platform, served by a small registry in this process at the versions of
// package.json; every other package is redirected to the real registry. Package managers resolve
// the optionalDependencies of every platform (Yarn locks all of them), so each platform package is
// served; only this machine's carries the binary (dist/npm/<platform>/ from `npm run release`,
// else the addon built in the repository), the others are skipped by their `os`/`cpu`/`libc`.
//
// pnpm and Yarn come from the npm registry (`npx -y pnpm@10`, `yarn@1`, `@yarnpkg/cli-dist@4`);
// Payload's dependencies are downloaded once into each tool's own cache. Without a registry the
// test skips, unless PAYLOAD_REALTIME_REQUIRE_ALL=1 (CI).

import assert from 'node:assert/strict'
import { spawn } from 'node:child_process'
import { createHash } from 'node:crypto'
import { copyFileSync, existsSync, mkdirSync, mkdtempSync, readFileSync, writeFileSync } from 'node:fs'
import { createServer } from 'node:http'
import { createRequire } from 'node:module'
import { homedir, tmpdir } from 'node:os'
import { join } from 'node:path'
import { after, before, test } from 'node:test'
import { assembleMain, platformOf } from '../scripts/release.mjs'
import { checkPayloadEvent, removeLater, npm, root, runPayloadApp, versionOf } from './consumer.mjs'

const requireAll = process.env.PAYLOAD_REALTIME_REQUIRE_ALL === '1'
const pkg = JSON.parse(readFileSync(join(root, 'package.json'), 'utf8'))
const here = createRequire(import.meta.url)('../lib/native.js').platformName()
const upstream = npm(['config', 'get', 'registry'], root).trim().replace(/\/?$/, '/')

const MANAGERS = {
  npm: { cmd: ['npm', 'install', '--no-audit', '--no-fund', '--prefer-offline'] },
  pnpm: { cmd: ['npx', '-y', 'pnpm@10', 'install'] },
  // Yarn classic enforces every dependency's `engines`: Payload 3.90 pulls strip-json-comments 5,
  // which says Node >= 22 (npm and pnpm only warn); on Node 20 it needs --ignore-engines.
  'yarn classic': {
    cmd: ['npx', '-y', 'yarn@1', 'install', '--non-interactive', '--no-progress'],
    node20: ['--ignore-engines'],
  },
  // With node_modules: under Plug'n'Play (Yarn 4's default) Payload 3.90 itself fails to start
  // (@payloadcms/drizzle requires drizzle-kit, which it does not declare).
  // --no-immutable: with CI set (as in .ci/run) Yarn 4 refuses to write a lockfile, and this
  // fresh project's lockfile is empty.
  'yarn 4': { cmd: ['npx', '-y', '@yarnpkg/cli-dist@4', 'install', '--no-immutable'], berry: true },
}

async function reachable() {
  try {
    const res = await fetch(`${upstream}-/package/payload/dist-tags`, { signal: AbortSignal.timeout(20_000) })
    return res.ok || new Error(`HTTP ${res.status}`)
  } catch (err) {
    return err
  }
}

/** Runs `cmd` without blocking this process (the registry answers from it). */
function shAsync([cmd, ...args], cwd, env = {}) {
  return new Promise((resolve, reject) => {
    const child = spawn(cmd, args, { cwd, env: { ...process.env, npm_config_update_notifier: 'false', ...env } })
    let out = ''
    child.stdout.on('data', (d) => (out += d))
    child.stderr.on('data', (d) => (out += d))
    child.on('error', reject)
    child.on('close', (code) =>
      code === 0 ? resolve(out) : reject(new Error(`${cmd} ${args.join(' ')} exited with ${code}:\n${out}`)),
    )
  })
}

/**
 * An npm registry for the packages in `tarballs` (name -> { file, manifest }); any other request
 * is redirected to the real registry. Resolves with its base URL.
 */
function startRegistry(tarballs) {
  const server = createServer((req, res) => {
    const path = decodeURIComponent(req.url.split('?')[0]).slice(1)
    const base = `http://127.0.0.1:${server.address().port}/`
    const file = path.startsWith('-/tarballs/') && Object.values(tarballs).find((t) => t.name === path.slice(11))
    if (file) {
      res.writeHead(200, { 'content-type': 'application/octet-stream' })
      res.end(file.bytes)
      return
    }
    const own = tarballs[path]
    if (!own) {
      res.writeHead(302, { location: `${upstream}${req.url.slice(1)}` })
      res.end()
      return
    }
    const version = {
      ...own.manifest,
      _id: `${own.manifest.name}@${own.manifest.version}`,
      dist: {
        tarball: `${base}-/tarballs/${own.name}`,
        integrity: `sha512-${createHash('sha512').update(own.bytes).digest('base64')}`,
        shasum: createHash('sha1').update(own.bytes).digest('hex'),
      },
    }
    res.writeHead(200, { 'content-type': 'application/json' })
    res.end(
      JSON.stringify({
        name: own.manifest.name,
        'dist-tags': { latest: own.manifest.version },
        versions: { [own.manifest.version]: version },
      }),
    )
  })
  return new Promise((resolve) =>
    server.listen(0, '127.0.0.1', () => resolve({ server, url: `http://127.0.0.1:${server.address().port}/` })),
  )
}

/** Packs `dir` into `dest`; returns { name, bytes, manifest } of the tarball. */
function pack(dir, dest) {
  const [info] = JSON.parse(npm(['pack', '--json', '--ignore-scripts', '--pack-destination', dest], dir))
  const manifest = JSON.parse(readFileSync(join(dir, 'package.json'), 'utf8'))
  return { name: info.filename, bytes: readFileSync(join(dest, info.filename)), manifest, files: info.files }
}

const online = await reachable()
const skip = online !== true && !requireAll && `no registry at ${upstream}: ${online.message}`
let dir
let registry

before(async () => {
  if (online !== true) return
  dir = mkdtempSync(join(tmpdir(), 'payload-realtime-install-'))
  const tarballs = {}
  const main = assembleMain(join(dir, 'src', pkg.name))
  tarballs[pkg.name] = pack(main, dir)
  const dist = join(root, 'dist', 'npm', here, `${pkg.name}.${here}.node`)
  for (const triple of pkg.napi.targets) {
    const platform = platformOf(triple)
    const out = join(dir, 'src', platform)
    mkdirSync(out, { recursive: true })
    for (const f of ['package.json', 'README.md']) copyFileSync(join(root, 'npm', platform, f), join(out, f))
    if (platform === here) {
      const binary = existsSync(dist) ? dist : join(root, `${pkg.name}.${here}.node`)
      copyFileSync(binary, join(out, `${pkg.name}.${here}.node`))
    }
    const t = pack(out, dir)
    tarballs[t.manifest.name] = t
  }
  assert.ok(!tarballs[pkg.name].files.some((f) => f.path.endsWith('.node')), 'the main package has no binary')
  // pnpm 10 runs no dependency's install scripts unless allowed: none may be needed.
  for (const { manifest } of Object.values(tarballs)) {
    for (const hook of ['preinstall', 'install', 'postinstall']) {
      assert.equal(manifest.scripts?.[hook], undefined, `${manifest.name} has no ${hook} script`)
    }
  }
  assert.ok(
    tarballs[`${pkg.name}-${here}`].files.some((f) => f.path.endsWith('.node')),
    `${pkg.name}-${here} has the binary`,
  )
  registry = await startRegistry(tarballs)
})

after(() => {
  registry?.server.closeAllConnections()
  registry?.server.close()
  if (dir) removeLater(dir)
})

for (const [label, manager] of Object.entries(MANAGERS)) {
  test(
    `${label} installs the published packages; ESM and CommonJS apps get an event`,
    { skip, timeout: 600_000 },
    async () => {
      if (online !== true) throw online
      const project = join(dir, label.replace(/\W+/g, '-'))
      mkdirSync(project)
      const version = versionOf('payload')
      writeFileSync(
        join(project, 'package.json'),
        JSON.stringify({
          name: 'app',
          private: true,
          type: 'module',
          dependencies: {
            [pkg.name]: pkg.version,
            payload: version,
            '@payloadcms/db-sqlite': versionOf('@payloadcms/db-sqlite'),
            graphql: versionOf('graphql'),
          },
        }),
      )
      // Each tool's own way to name the registry; Yarn 4 refuses plain http without a whitelist.
      writeFileSync(join(project, '.npmrc'), `registry=${registry.url}\n`)
      if (manager.berry) {
        writeFileSync(
          join(project, '.yarnrc.yml'),
          [
            `npmRegistryServer: "${registry.url}"`,
            'unsafeHttpWhitelist: ["127.0.0.1"]',
            // Yarn 4 holds back releases younger than a day; these were just packed.
            'npmMinimalAgeGate: 0',
            'enableTelemetry: false',
            'nodeLinker: node-modules',
            // Its metadata cache would keep a previous run's tarball URLs (another port): this
            // run's own global folder, and the shared package cache, so Payload downloads once.
            `globalFolder: "${join(dir, 'yarn-global')}"`,
            'enableGlobalCache: false',
            `cacheFolder: "${join(homedir(), '.yarn', 'berry', 'cache')}"`,
            '',
          ].join('\n'),
        )
        writeFileSync(join(project, 'yarn.lock'), '') // a project of its own, not a workspace of a parent
      } else if (label.startsWith('yarn')) {
        writeFileSync(join(project, '.yarnrc'), `registry "${registry.url}"\n`)
      }
      const flags = Number(process.versions.node.split('.')[0]) < 22 ? (manager.node20 ?? []) : []
      await shAsync([...manager.cmd, ...flags], project, { npm_config_registry: registry.url })

      for (const esm of [true, false]) {
        const result = await runPayloadApp(project, { esm })
        checkPayloadEvent(assert, result)
        // The project's own copy (pnpm's is under node_modules/.pnpm/, linked from node_modules/).
        assert.ok(result.resolved.startsWith(join(project, 'node_modules')), result.resolved)
        assert.ok(result.resolved.endsWith(join(pkg.name, 'index.js')), result.resolved)
      }
    },
  )
}
