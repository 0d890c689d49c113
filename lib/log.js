'use strict'
// The host's log lines: redacted, one per episode of a kind of failure (the server's rule too).

const { loadNative } = require('./native.js')

/** Occurrences of one kind of failure less than this apart are one episode: one line. */
const EPISODE_GAP_MS = 60_000
/** A long episode is logged again this often, with what it held back. */
const EPISODE_REMINDER_MS = 600_000

/**
 * Logs failures by kind (`key`): one line per episode (the server's rule, in the core's `log`
 * module), redacted, never document data. `logger` is `{ error }` or null for stderr.
 */
function makeFailureLog(getLogger = () => null) {
  const episodes = new Map()
  return (key, err) => {
    const now = Date.now()
    const e = episodes.get(key)
    if (e && now - e.seen < EPISODE_GAP_MS && now - e.logged < EPISODE_REMINDER_MS) {
      e.seen = now
      e.held += 1
      return
    }
    episodes.set(key, { seen: now, logged: now, held: 0 })
    const msg = err instanceof Error ? err.message : String(err)
    const more = e?.held ? ` (${e.held} more like this were not logged)` : ''
    logLine(getLogger(), 'error', `${key} failed: ${msg}${more}`)
  }
}

/** Writes one line to `logger` (or stderr), with secrets removed. */
function logLine(logger, level, text) {
  let line = text
  try {
    line = loadNative().redactLogText(text)
  } catch {
    // no addon: nothing logs a token before it loads
  }
  if (!logger) {
    console.error(`[payload-realtime] ${level}: ${line}`)
    return
  }
  try {
    const write = typeof logger[level] === 'function' ? logger[level] : level === 'debug' ? null : logger.error
    write?.call(logger, `payload-realtime: ${line}`)
  } catch {
    // A logger that throws must not take the server down.
  }
}

module.exports = { makeFailureLog, logLine }
