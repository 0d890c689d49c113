'use strict'
// Document locks, pushed. Payload's admin takes a lock with the database adapter directly
// (`payload.db.create` in handleFormStateLocking: no hooks run), and
// releases it through the REST API, so other admins see a lock only after a refresh
// (payloadcms/payload#8985). The plugin wraps those adapter methods, for the locks collection
// only, and announces each change once it succeeded: `{ type, collection: LOCKS, id, doc, user }`
// with `id` the locked document's (or the global's slug) where it is known, `doc` the lock's
// relation ids, and `user` the lock's owner.

const LOCKS = 'payload-locked-documents'
const WRAPPED = Symbol.for('payload-realtime.locks')

function relationId(v) {
  if (v === null || typeof v !== 'object') return v
  return v.value !== null && typeof v.value === 'object' ? v.value.id : v.value
}

/** The event for a lock written with `data` (create) or changed by `where` (update, delete). */
function lockEvent(type, data) {
  const document = data && data.document
  const owner = data && data.user
  const event = {
    type,
    collection: LOCKS,
    id: relationId(document) ?? (data && data.globalSlug) ?? 'locks',
    doc: {
      document: document ? { relationTo: document.relationTo, value: relationId(document) } : null,
      globalSlug: (data && data.globalSlug) ?? null,
    },
    timestamp: new Date().toISOString(),
  }
  if (owner && owner.relationTo && relationId(owner) !== undefined) {
    event.user = { id: relationId(owner), collection: owner.relationTo }
  }
  return event
}

/**
 * Wraps `db`'s create, deleteOne and deleteMany so that a change of the locks
 * collection calls `emit(event)` after it succeeded. Idempotent; arguments, results and errors
 * are unchanged, and other collections are untouched.
 */
function announceLocks(db, emit) {
  if (!db || typeof db !== 'object' || db[WRAPPED]) return
  Object.defineProperty(db, WRAPPED, { value: true, enumerable: false })
  // Not updateOne: the owner's editor refreshes its lock with it on every form-state request,
  // which changes nobody's view of it.
  const methods = { create: 'create', deleteOne: 'delete', deleteMany: 'delete' }
  for (const [name, type] of Object.entries(methods)) {
    const original = db[name]
    if (typeof original !== 'function') continue
    db[name] = async function (args, ...rest) {
      const result = await original.call(this, args, ...rest)
      if (args && args.collection === LOCKS) {
        try {
          emit(lockEvent(type, type === 'create' ? args.data : result))
        } catch {
          // never fail the adapter's call for an announcement
        }
      }
      return result
    }
  }
}

module.exports = { LOCKS, announceLocks, lockEvent }
