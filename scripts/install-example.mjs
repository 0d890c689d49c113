// Installs this package into examples/next/node_modules/payload-realtime as users get it: `npm
// pack` (only the files of package.json `files`), unpacked. The app's other dependencies are this
// repository's devDependencies, found in the root node_modules as a monorepo's hoisted ones are.
// Used by `npm start` (the demo) and __test__/next.test.mjs. Standard library only.
import { spawnSync } from 'node:child_process'
import { mkdirSync, mkdtempSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'

import { root } from './ensure.mjs'

export const exampleApp = join(root, 'examples', 'next')
export const installedPackage = join(exampleApp, 'node_modules', 'payload-realtime')

/** Packs and unpacks the package into the example app; returns the packed file list. */
export function installIntoExample() {
  const tmp = mkdtempSync(join(tmpdir(), 'payload-realtime-pack-'))
  try {
    const r = spawnSync('npm', ['pack', '--json', '--ignore-scripts', '--pack-destination', tmp, root], {
      cwd: root,
      encoding: 'utf8',
      env: { ...process.env, npm_config_update_notifier: 'false' },
    })
    if (r.status !== 0) throw new Error(`npm pack failed:\n${r.stdout}\n${r.stderr}`)
    const packed = JSON.parse(r.stdout)[0]
    rmSync(installedPackage, { recursive: true, force: true })
    mkdirSync(installedPackage, { recursive: true })
    const x = spawnSync('tar', ['-xzf', join(tmp, packed.filename), '--strip-components=1', '-C', installedPackage])
    if (x.status !== 0) throw new Error(`tar failed: ${x.stderr}`)
    return packed.files.map((f) => f.path)
  } finally {
    rmSync(tmp, { recursive: true, force: true })
  }
}
