'use strict'
// The collection hooks the plugin appends. For each collection in `includeCollections`:
// afterChange and afterDelete send `{ type, collection, id, doc, timestamp, user: { id,
// collection } }` to room `collection:<slug>` once the write is committed (never an uncommitted
// or rolled-back write; hooks never wait on sockets or authorize). On every auth collection:
// afterLogout closes the sockets of the ended sessions (4003), and a committed change or delete
// of a user is shared with the server, so rules judge the user as it is now.

const { afterCommit } = require('./transactions.js')
const { withoutAuthInternals } = require('./access.js')
const { jsonCopy } = require('../util.js')

/** @typedef {import('../plugin.js').PluginContext} PluginContext */

/**
 * The editor, named by id and collection only (never the email).
 * @param {any} req
 */
function editorOf(req) {
  const user = req && req.user
  if (!user || user.id === undefined || user.id === null) return undefined
  return user.collection ? { id: user.id, collection: user.collection } : { id: user.id }
}

/**
 * Hands an event to the server that runs (ours, else the application's); never throws, and
 * logs a refusal.
 * @param {PluginContext} ctx
 * @returns {(event: { collection: string } & Record<string, unknown>) => void}
 */
function makeSender({ currentManager, logFailure }) {
  return (event) => {
    const manager = currentManager()
    if (!manager) return // no server (yet): nobody to tell
    let sending
    try {
      sending = manager.emitEvent(event)
    } catch (err) {
      logFailure(`emitting a "${event.collection}" event`, err)
      return
    }
    Promise.resolve(sending).catch((err) => logFailure(`emitting a "${event.collection}" event`, err))
  }
}

/**
 * The config's collections with the plugin's hooks appended.
 * @param {PluginContext} ctx
 * @param {ReturnType<typeof makeSender>} send
 */
function collectionsWithHooks(ctx, send) {
  const { options, config, include, state, logFailure, currentManager, sessions } = ctx
  /** @type {any[]} */
  const all = config.collections ?? []
  const isAuthSlug = new Set(all.filter((c) => c.auth).map((c) => c.slug))

  /** @param {string} slug */
  const emitFrom = (slug) => (type, doc, id, req) => {
    if (!state.payload && req && req.payload) state.payload = req.payload
    /** @type {any} */
    let event = {
      type,
      collection: slug,
      id,
      doc: isAuthSlug.has(slug) ? withoutAuthInternals(doc) : doc,
      timestamp: new Date().toISOString(),
    }
    const user = editorOf(req)
    if (user) event.user = user
    try {
      if (options.shouldEmit && !options.shouldEmit(event)) return
      if (options.transformEvent) event = options.transformEvent(event)
      if (!event) return
      // Later hooks may still change the doc before the commit: send it as it is now.
      event = jsonCopy(event)
    } catch (err) {
      logFailure(`shouldEmit/transformEvent for "${slug}"`, err)
      return
    }
    afterCommit(req, () => send(event), { what: `the "${slug}" event`, logFailure })
  }

  /**
   * Users changed or deleted (after the commit): every instance's sockets of that user show the
   * new document to rules, read access and presence (`manager.updateUser`, over Redis when
   * configured); a deleted user's sockets are closed (4003) everywhere.
   */
  const users = {
    changed(slug, doc) {
      const manager = currentManager()
      if (!manager || typeof manager.updateUser !== 'function') return
      try {
        const current = jsonCopy({ ...withoutAuthInternals(doc), collection: slug })
        manager.updateUser({ collection: slug, id: doc.id, doc: current })
      } catch (err) {
        logFailure(`sharing a change of a "${slug}" user`, err)
      }
    },
    deleted(slug, id) {
      sessions.revokeUser(slug, id)
    },
  }

  return all.map((collection) => {
    const wantsEvents = include.has(collection.slug)
    if (!wantsEvents && !collection.auth) return collection
    const hooks = { ...(collection.hooks ?? {}) }
    if (wantsEvents) {
      const emit = emitFrom(collection.slug)
      hooks.afterChange = [
        ...(hooks.afterChange ?? []),
        ({ doc, operation, req }) => {
          if (operation === 'create' || operation === 'update') emit(operation, doc, doc && doc.id, req)
        },
      ]
      hooks.afterDelete = [
        ...(hooks.afterDelete ?? []),
        ({ doc, id, req }) => {
          emit('delete', doc, id ?? (doc && doc.id), req)
        },
      ]
    }
    if (collection.auth) {
      const slug = collection.slug
      hooks.afterLogout = [...(hooks.afterLogout ?? []), sessions.afterLogout]
      // Rules must judge the user as it is now, on every instance: a committed change replaces
      // the sockets' user document (manager.updateUser), a deleted user's sockets are closed.
      hooks.afterChange = [
        ...(hooks.afterChange ?? []),
        ({ doc, req }) => {
          if (doc && doc.id !== undefined)
            afterCommit(req, () => users.changed(slug, doc), { what: 'user tracking', logFailure })
        },
      ]
      hooks.afterDelete = [
        ...(hooks.afterDelete ?? []),
        ({ doc, id, req }) => {
          const userId = id ?? (doc && doc.id)
          if (userId !== undefined)
            afterCommit(req, () => users.deleted(slug, userId), { what: 'user tracking', logFailure })
        },
      ]
    }
    return { ...collection, hooks }
  })
}

module.exports = { makeSender, collectionsWithHooks }
