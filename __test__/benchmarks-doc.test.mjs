// BENCHMARKS.md reads as a public report: prose wrapped at 100 characters (tables keep one row a
// line, headings one line), in the layout the bench scripts write it in (benches/markdown.mjs),
// and no references a reader outside the project cannot follow (issue numbers, branches, paths
// of this machine). Commit hashes stay: they name what was measured.

import assert from 'node:assert/strict'
import { readFileSync } from 'node:fs'
import { test } from 'node:test'

import { REPORT_WIDTH, wrapReport } from '../benches/markdown.mjs'

const path = new URL('../BENCHMARKS.md', import.meta.url)
const text = readFileSync(path, 'utf8')

test('BENCHMARKS.md: prose lines are at most 100 characters, tables and headings aside', () => {
  const long = text
    .split('\n')
    .map((line, i) => ({ line, n: i + 1 }))
    .filter(({ line }) => !line.startsWith('|') && !line.startsWith('#') && [...line].length > REPORT_WIDTH)
    .map(({ line, n }) => `${n}: ${line.slice(0, 60)}...`)
  assert.deepEqual(long, [])
})

test('BENCHMARKS.md is laid out as the bench scripts write it', async () => {
  assert.equal(await wrapReport(text), text, 'rewrite it through wrapReport of benches/markdown.mjs')
})

test('BENCHMARKS.md names no issue, branch or local path', () => {
  const internal = [
    /\bissues?\s+#?\d+/i,
    /(^|[\s(])#\d+\b/,
    /\bthis branch\b/i,
    /\bthe issue\b|\bthe issue's\b/i,
    /\/work\/|\/home\/|\/tmp\//,
    /\bcrates\/core\/src\/\w+\.rs\b/,
  ]
  const found = text
    .split('\n')
    .flatMap((line, i) => internal.filter((re) => re.test(line)).map((re) => `${i + 1}: ${re} in ${line.slice(0, 80)}`))
  assert.deepEqual(found, [])
})
