// The benchmark report's layout: prose wrapped at 100 characters (tables stay one row a line),
// as __test__/docs.test.mjs checks, whichever script wrote the report (run.mjs, soak.mjs).

import prettier from 'prettier'

/** Prose width of BENCHMARKS.md. */
export const REPORT_WIDTH = 100

/**
 * `markdown` with its prose wrapped at REPORT_WIDTH; no word, figure or table cell changes.
 * @param {string} markdown
 * @returns {Promise<string>}
 */
export function wrapReport(markdown) {
  return prettier.format(markdown, { parser: 'markdown', proseWrap: 'always', printWidth: REPORT_WIDTH })
}
