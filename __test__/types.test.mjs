// The typings of payload-realtime/client and payload-realtime/react, checked by TypeScript:
// `tsc --noEmit` over __test__/types/usage.ts, which imports every export through the package's
// own export map, narrows the server-message union on `type`, and holds `@ts-expect-error` lines
// for what the typings must refuse. Any type error (or an expected error that does not happen)
// fails the test with tsc's output. The JavaScript is checked too, with `strict` but for
// noImplicitAny (parameters without a JSDoc type stay `any`): the server side's (checkJs
// over lib/*.js and lib/payload/*.js), with its exports against index.d.ts, and the client's and
// React's (lib/client/*.mjs, lib/react/*.mjs), whose imports of each other are checked against
// their .d.mts typings, and export at run time the values those typings declare. lib/admin/ is
// not: it needs Next.js's and Payload's UI typings.

import assert from 'node:assert/strict'
import { spawnSync } from 'node:child_process'
import { createRequire } from 'node:module'
import { test } from 'node:test'
import { fileURLToPath } from 'node:url'

const require = createRequire(import.meta.url)
const project = fileURLToPath(new URL('./types/tsconfig.json', import.meta.url))

test('tsc --noEmit: every client and React typing in use, the message union narrowing', { timeout: 120_000 }, () => {
  const tsc = require.resolve('typescript/bin/tsc')
  const run = spawnSync(process.execPath, [tsc, '--noEmit', '-p', project], { encoding: 'utf8' })
  assert.equal(run.error, undefined)
  assert.equal(run.status, 0, `tsc failed:\n${run.stdout}${run.stderr}`)
})

test(
  'tsc --noEmit with checkJs: lib/ type-checks, and its exports are usable as index.d.ts declares',
  { timeout: 120_000 },
  () => {
    const tsc = require.resolve('typescript/bin/tsc')
    const lib = fileURLToPath(new URL('./types/tsconfig.lib.json', import.meta.url))
    const run = spawnSync(process.execPath, [tsc, '--noEmit', '-p', lib], { encoding: 'utf8' })
    assert.equal(run.error, undefined)
    assert.equal(run.status, 0, `tsc failed:\n${run.stdout}${run.stderr}`)
  },
)

test(
  'tsc --noEmit with checkJs: lib/client and lib/react type-check, against the typings they import',
  { timeout: 120_000 },
  () => {
    const tsc = require.resolve('typescript/bin/tsc')
    const client = fileURLToPath(new URL('./types/tsconfig.client.json', import.meta.url))
    const run = spawnSync(process.execPath, [tsc, '--noEmit', '-p', client], { encoding: 'utf8' })
    assert.equal(run.error, undefined)
    assert.equal(run.status, 0, `tsc failed:\n${run.stdout}${run.stderr}`)
  },
)

test('payload-realtime/client and /react export at run time exactly the values their typings declare', async () => {
  const ts = require('typescript')
  for (const entry of ['client', 'react']) {
    const dts = fileURLToPath(new URL(`../lib/${entry}/index.d.mts`, import.meta.url))
    const program = ts.createProgram([dts], {
      module: ts.ModuleKind.NodeNext,
      moduleResolution: ts.ModuleResolutionKind.NodeNext,
      target: ts.ScriptTarget.ES2022,
      noEmit: true,
      skipLibCheck: true,
      lib: ['lib.es2022.d.ts', 'lib.dom.d.ts'],
    })
    const checker = program.getTypeChecker()
    const declared = checker
      .getExportsOfModule(checker.getSymbolAtLocation(program.getSourceFile(dts)))
      .filter((s) => (s.flags & ts.SymbolFlags.Alias ? checker.getAliasedSymbol(s) : s).flags & ts.SymbolFlags.Value)
      .map((s) => s.name)
      .sort()
    const exported = Object.keys(await import(`../lib/${entry}/index.mjs`)).sort()
    assert.ok(declared.length > 5, `${entry}: values declared: ${declared}`)
    assert.deepEqual(exported, declared, `lib/${entry}/index.mjs vs its index.d.mts`)
  }
})
