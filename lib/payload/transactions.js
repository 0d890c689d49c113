'use strict'
// Runs work only once a write is final. Payload's hooks run inside the write's transaction, before
// the commit: an event sent from a hook could announce a write that is then rolled back. So the
// plugin queues each event under the request's transaction id and sends it when the database
// adapter's commitTransaction(id) succeeds, or drops it on rollbackTransaction / killTransaction.
// With no transaction (SQLite's default) the write is already final and the work runs at once.

const STATE = Symbol.for('payload-realtime.transactions')

/**
 * @param {unknown} v
 * @returns {v is PromiseLike<unknown>}
 */
function isThenable(v) {
  return (
    v !== null &&
    (typeof v === 'object' || typeof v === 'function') &&
    typeof (/** @type {any} */ (v).then) === 'function'
  )
}

/**
 * Where failures of queued work are logged when the caller names no log of its own (the
 * plugin's parts pass theirs: one line per episode, their Payload's logger).
 * @param {string} what
 * @param {unknown} err
 */
function logToStderr(what, err) {
  console.error(`[payload-realtime] ${what} failed: ${err instanceof Error ? err.message : String(err)}`)
}

/**
 * Runs `fn`, logging a throw or a rejection.
 * @param {() => unknown} fn
 * @param {string} what
 * @param {(what: string, err: unknown) => void} logFailure
 */
function runSafely(fn, what, logFailure) {
  try {
    const r = fn()
    if (isThenable(r)) r.then(undefined, (err) => logFailure(what, err))
  } catch (err) {
    logFailure(what, err)
  }
}

/**
 * Wraps the adapter's commitTransaction / rollbackTransaction (and killTransaction where an adapter
 * has one) so that queued work follows the transaction's fate. Idempotent; the wrapped methods
 * behave exactly as before (same arguments, result and errors).
 * @returns {{ pending: Map<unknown, Array<{ onCommit: () => unknown, onRollback?: () => unknown, what: string, logFailure: (what: string, err: unknown) => void }>> } | undefined}
 */
function installTransactionHooks(db) {
  if (!db || typeof db !== 'object') return undefined
  if (db[STATE]) return db[STATE]
  const state = { pending: new Map() }
  Object.defineProperty(db, STATE, { value: state, enumerable: false })

  const settle = (key, committed) => {
    const list = state.pending.get(key)
    if (!list) return
    state.pending.delete(key)
    for (const item of list) {
      if (committed) runSafely(item.onCommit, item.what, item.logFailure)
      else if (item.onRollback) runSafely(item.onRollback, `${item.what} (rollback)`, item.logFailure)
    }
  }

  if (typeof db.commitTransaction === 'function') {
    const original = db.commitTransaction
    db.commitTransaction = async function commitTransaction(id, ...rest) {
      let result
      try {
        result = await original.call(this, id, ...rest)
      } catch (err) {
        // Not committed: whatever the adapter does next, never announce this write.
        settle(await resolveKey(id), false)
        throw err
      }
      settle(await resolveKey(id), true)
      return result
    }
  }
  for (const name of ['rollbackTransaction', 'killTransaction']) {
    if (typeof db[name] !== 'function') continue
    const original = db[name]
    db[name] = async function (id, ...rest) {
      try {
        return await original.call(this, id, ...rest)
      } finally {
        settle(await resolveKey(id), false)
      }
    }
  }
  return state
}

async function resolveKey(id) {
  try {
    return isThenable(id) ? await id : id
  } catch {
    return undefined
  }
}

/**
 * Runs `onCommit` once the write behind `req` is final: at once without a transaction, after the
 * commit with one. `onRollback` runs instead if the transaction is rolled back. Never throws and
 * never makes the caller wait. A failure of either is logged with `logFailure`.
 * @param {any} req
 * @param {() => unknown} onCommit
 * @param {{ onRollback?: () => unknown, what?: string, logFailure?: (what: string, err: unknown) => void }} [options]
 */
function afterCommit(req, onCommit, { onRollback, what = 'after-commit work', logFailure = logToStderr } = {}) {
  const tid = req ? req.transactionID : undefined
  if (!tid) return runSafely(onCommit, what, logFailure)
  const db = req.payload && req.payload.db
  const state = installTransactionHooks(db)
  if (!state) return runSafely(onCommit, what, logFailure)
  const enqueue = (key) => {
    // A Promise that resolved to nothing: the adapter has no transactions (SQLite's default).
    if (key === null || key === undefined || key === false) return runSafely(onCommit, what, logFailure)
    let list = state.pending.get(key)
    if (!list) state.pending.set(key, (list = []))
    list.push({ onCommit, onRollback, what, logFailure })
  }
  if (isThenable(tid)) {
    // initTransaction leaves the Promise on req while (or when) no id was produced.
    Promise.resolve(tid).then(enqueue, () => {
      if (onRollback) runSafely(onRollback, `${what} (rollback)`, logFailure)
    })
  } else {
    enqueue(tid)
  }
}

module.exports = { afterCommit, installTransactionHooks }
