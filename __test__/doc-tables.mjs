// Reading the tables of the project's Markdown, for the tests that check them against the code.

import assert from 'node:assert/strict'

/**
 * The rows (cells trimmed) of the first table after the line `heading` in `text`.
 * @param {string} text
 * @param {string} heading e.g. '# Options' (docs/options.md)
 * @returns {string[][]}
 */
export function markdownTable(text, heading) {
  // A heading on the first line (a page's title) has no newline before it.
  const start = `\n${text}`.indexOf(`\n${heading}\n`)
  assert.ok(start >= 0, `the document has "${heading}"`)
  const lines = text.slice(start).split('\n')
  const first = lines.findIndex((l) => l.startsWith('|'))
  const rows = []
  for (const line of lines.slice(first + 2)) {
    if (!line.startsWith('|')) break
    rows.push(
      line
        .slice(1, -1)
        .split(/(?<!\\)\|/)
        .map((c) => c.trim()),
    )
  }
  assert.ok(rows.length > 0, `a table follows "${heading}"`)
  return rows
}
