'use strict'
// The Payload plugin. For each collection in `includeCollections` it appends afterChange and
// afterDelete hooks that send `{ type, collection, id, doc, timestamp, user: { id, collection } }`
// to room `collection:<slug>` once the write is committed (never an uncommitted or rolled-back
// write; hooks never wait on sockets or authorize). On every auth collection it appends an
// afterLogout hook that closes the sockets of the ended sessions (4003). In onInit it captures the
// Payload instance (never the default export), makes commits and rollbacks observable, and, when
// `port` is set, starts the server with Payload's own checks: `verifyUser` (sessions, deleted users)
// and, unless `readAccess` turns it off for a collection, delivery filtered by Payload's read
// access, and joins refused to users who may read nothing of the collection.

const managerModule = require('./manager.js')
const { afterCommit, installTransactionHooks, setFailureLog } = require('./payload/transactions.js')
const { readAccessDecision, mayReadCollection, withoutAuthInternals } = require('./payload/access.js')
const { Sessions } = require('./payload/session.js')
const lifecycle = require('./lifecycle.js')
const { LOCKS, announceLocks } = require('./payload/locks.js')
const { isPlainObject, jsonCopy } = require('./util.js')

const { initUWebSocket, getUWebSocketManager, makeFailureLog } = managerModule

/** Server options the plugin builds itself; the others are handed on as they are. */
const BUILT_BY_PLUGIN = new Set(['secret', 'includeCollections', 'authorize', 'rooms', 'verifyUser'])
const SERVER_OPTION_KEYS = managerModule.SERVER_OPTIONS.filter((k) => !BUILT_BY_PLUGIN.has(k))

/** The admin provider, as Payload's import map names it. */
const ADMIN_PROVIDER = 'payload-realtime/admin#RealtimeAdminProvider'

/** Marks server options built by a plugin, so they are not completed twice. */
const BUILT = Symbol.for('payload-realtime.plugin-options')

function checkOptions(options) {
  if (!isPlainObject(options)) throw new TypeError('payload-realtime: uWebSocketPlugin(options) takes an object')
  const { includeCollections, readAccess, authorize, rooms, shouldEmit, transformEvent, verifyUser } = options
  if (
    includeCollections !== undefined &&
    (!Array.isArray(includeCollections) || includeCollections.some((s) => typeof s !== 'string'))
  ) {
    throw new TypeError('payload-realtime: `includeCollections` must be an array of collection slugs')
  }
  if (
    readAccess !== undefined &&
    typeof readAccess !== 'boolean' &&
    !(isPlainObject(readAccess) && Object.values(readAccess).every((v) => typeof v === 'boolean'))
  ) {
    throw new TypeError('payload-realtime: `readAccess` must be true, false, or { [slug]: boolean }')
  }
  if (
    authorize !== undefined &&
    (!isPlainObject(authorize) || Object.values(authorize).some((f) => typeof f !== 'function'))
  ) {
    throw new TypeError('payload-realtime: `authorize` must map collection slugs to functions (user, event) => boolean')
  }
  if (rooms !== undefined && (!isPlainObject(rooms) || Object.values(rooms).some((f) => typeof f !== 'function'))) {
    throw new TypeError(
      'payload-realtime: `rooms` must map collection slugs or room patterns to functions (user, room) => boolean',
    )
  }
  for (const [name, fn] of Object.entries({ shouldEmit, transformEvent })) {
    if (fn !== undefined && typeof fn !== 'function') {
      throw new TypeError(`payload-realtime: \`${name}\` must be a function`)
    }
  }
  if (options.admin !== undefined && typeof options.admin !== 'boolean' && !isPlainObject(options.admin)) {
    throw new TypeError('payload-realtime: `admin` must be true, false, or { url?, port?, path? }')
  }
  if (verifyUser !== undefined && verifyUser !== false && typeof verifyUser !== 'function') {
    throw new TypeError('payload-realtime: `verifyUser` must be a function (token, claims) => user | null, or false')
  }
}

/** The editor, named by id and collection only (never the email). */
function editorOf(req) {
  const user = req && req.user
  if (!user || user.id === undefined || user.id === null) return undefined
  return user.collection ? { id: user.id, collection: user.collection } : { id: user.id }
}

/** A join rule that allows only when both rules allow. */
function bothJoinRules(first, second) {
  if (!first) return second
  if (!second) return first
  return async (user, room) => (await first(user, room)) === true && (await second(user, room)) === true
}

/** A rule that allows only when both rules allow (the second one's `{ doc }` answer wins). */
function bothRules(first, second) {
  if (!first) return second
  if (!second) return first
  return async (user, event) => {
    const a = await first(user, event)
    if (!(a === true || isDocAnswer(a))) return false
    const b = await second(user, event)
    if (b === true) return a
    return isDocAnswer(b) ? b : false
  }
}

function isDocAnswer(v) {
  return isPlainObject(v) && 'doc' in v
}

/**
 * @param {import('../index').PluginOptions & { readAccess?: boolean | Record<string, boolean> }} [options]
 * @returns {(config: object) => object}
 */
function uWebSocketPlugin(options = {}) {
  checkOptions(options)
  return (config) => {
    if (options.enabled === false) return config
    const include = new Set(options.includeCollections ?? [])
    // Payload's logger once Payload is up (unless the app chose its own, or `false` for stderr).
    const logFailure = makeFailureLog(() =>
      options.logger === false ? null : (options.logger ?? state.payload?.logger ?? null),
    )
    // A server this plugin started on a fixed port earlier in this process (Next.js evaluates the
    // config again on every dev reload, but runs onInit once): its state is taken over, so the
    // hooks below reach that server and it asks the rules below.
    const fixedPort = Number.isInteger(options.port) && options.port > 0 ? options.port : undefined
    const state = (fixedPort && lifecycle.byPort().get(fixedPort)) || { payload: undefined, manager: undefined }

    const knownSlugs = new Set((config.collections ?? []).map((c) => c.slug))
    for (const slug of include) {
      if (!knownSlugs.has(slug)) {
        managerModule.logLine(
          options.logger || null,
          'warn',
          `includeCollections names "${slug}", which is not a collection of this config`,
        )
      }
    }

    // The live admin (on by default) needs to know where the browser finds the server: the
    // plugin's fixed `port`, or `admin: { url }` / `{ port, path }` for a server the
    // application starts or attaches itself. It also follows the document locks.
    const adminOptions = isPlainObject(options.admin) ? options.admin : {}
    const adminPort = adminOptions.port ?? fixedPort
    const liveAdmin = options.admin !== false && (adminOptions.url !== undefined || adminPort !== undefined)
    const adminProvider = liveAdmin && {
      path: ADMIN_PROVIDER,
      clientProps: JSON.parse(
        JSON.stringify({
          collections: [...include],
          port: adminPort,
          path: adminOptions.path ?? options.path,
          url: adminOptions.url,
        }),
      ),
    }
    if (liveAdmin) include.add(LOCKS)

    /** Our own server while it runs; otherwise the one started with initUWebSocket(). */
    const currentManager = () => {
      if (state.manager) return state.manager
      try {
        return getUWebSocketManager()
      } catch {
        return undefined
      }
    }

    const sessions = new Sessions({ getPayload: () => state.payload, getManager: currentManager, logFailure })

    // On by default: only `readAccess: false`, or `{ [slug]: false }`, delivers a collection's
    // events to everyone who may connect, whole.
    const readAccessFor = (slug) =>
      slug !== LOCKS &&
      options.readAccess !== false &&
      !(isPlainObject(options.readAccess) && options.readAccess[slug] === false)
    // Locks name a document and its editor by id, which every signed-in user may read
    // (Payload's own access for them). Keyed by the collection's room: an app room of that
    // name is the app's.
    const signedIn = (user) => user !== null && user !== undefined
    const lockRules = liveAdmin ? { [`collection:${LOCKS}`]: signedIn } : {}

    const isAuthSlug = new Set((config.collections ?? []).filter((c) => c.auth).map((c) => c.slug))

    const send = (event) => {
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

    const emitFrom = (slug) => (type, doc, id, req) => {
      if (!state.payload && req && req.payload) state.payload = req.payload
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
      afterCommit(req, () => send(event), { what: `the "${slug}" event` })
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

    // The longest a token of this config lives (Payload's default `tokenExpiration` is 7200 s):
    // how long revocations are kept. Without auth collections, the server's default.
    const lifetimes = (config.collections ?? [])
      .filter((c) => c.auth)
      .map((c) => (isPlainObject(c.auth) && Number.isInteger(c.auth.tokenExpiration) ? c.auth.tokenExpiration : 7200))
      .filter((s) => s > 0)
    const longestTokenLifetime = lifetimes.length > 0 ? Math.max(...lifetimes) : undefined

    const collections = (config.collections ?? []).map((collection) => {
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
            if (doc && doc.id !== undefined) afterCommit(req, () => users.changed(slug, doc), { what: 'user tracking' })
          },
        ]
        hooks.afterDelete = [
          ...(hooks.afterDelete ?? []),
          ({ doc, id, req }) => {
            const userId = id ?? (doc && doc.id)
            if (userId !== undefined) afterCommit(req, () => users.deleted(slug, userId), { what: 'user tracking' })
          },
        ]
      }
      return { ...collection, hooks }
    })

    /**
     * A reader's own copy of the document (read access applied), shaped by `transformEvent`
     * as the event was: `{ doc }`, or false when the transform skips it or drops the doc.
     */
    const reshaped = (slug, event, doc) => {
      if (!options.transformEvent) return { doc }
      try {
        const shaped = options.transformEvent({ ...event, doc })
        return shaped && isPlainObject(shaped.doc) ? { doc: jsonCopy(shaped.doc) } : false
      } catch (err) {
        logFailure(`transformEvent for "${slug}"`, err)
        return false
      }
    }

    /**
     * The authorize rules: the user's, and Payload's read access where `readAccess` asks for it.
     * Read access is keyed by the collection's room (`collection:<slug>`), which the server
     * prefers to a bare `<slug>` key, so an app room named like a collection never gets it; a
     * user's bare `<slug>` rule still judges both, as documented.
     */
    const buildAuthorize = (...ruleMaps) => {
      const keys = new Set(ruleMaps.flatMap((m) => Object.keys(m ?? {})))
      const rules = {}
      for (const key of keys) {
        let rule
        for (const m of ruleMaps) rule = bothRules(rule, m && m[key])
        if (rule) rules[key] = rule
      }
      for (const slug of include) {
        if (!readAccessFor(slug)) continue
        const room = `collection:${slug}`
        rules[room] = bothRules(bothRules(rules[slug], rules[room]), async (user, event) => {
          const answer = await readAccessDecision(state.payload, slug, event, user)
          return isDocAnswer(answer) ? reshaped(slug, event, answer.doc) : answer
        })
      }
      return rules
    }

    /**
     * The join rules: the user's, and (where read access applies) Payload's collection read
     * access, so a user who may read nothing of a collection is refused its room.
     */
    const buildRooms = (...ruleMaps) => {
      const rules = {}
      for (const m of ruleMaps) {
        for (const [key, rule] of Object.entries(m ?? {})) rules[key] = bothJoinRules(rules[key], rule)
      }
      // Keyed by the collection's room only: an app room named like a collection is the app's
      // and needs a `rooms` rule of its own.
      for (const slug of include) {
        if (!readAccessFor(slug)) continue
        const room = `collection:${slug}`
        rules[room] = bothJoinRules(rules[room], (user) => mayReadCollection(state.payload, slug, user))
      }
      return rules
    }

    /** Server options: ours, completed by what `initUWebSocket(port, extra)` was given. */
    const serverOptions = (extra = {}) => {
      const out = {}
      for (const key of SERVER_OPTION_KEYS) if (options[key] !== undefined) out[key] = options[key]
      out.secret = options.secret ?? state.payload?.config?.secret ?? config.secret
      // Payload's own logger (pino) unless the app chose one, or `false` for stderr.
      if (options.logger === undefined && state.payload?.logger) out.logger = state.payload.logger
      // The admin's own origin may connect without being listed.
      if (liveAdmin && Array.isArray(options.allowedOrigins) && config.serverURL) {
        try {
          out.allowedOrigins = [...new Set([...options.allowedOrigins, new URL(config.serverURL).origin])]
        } catch {
          // not a URL: Payload reports it
        }
      }
      if (out.maxTokenLifetime === undefined) out.maxTokenLifetime = longestTokenLifetime
      out.includeCollections = [...include]
      if (options.verifyUser !== false) out.verifyUser = options.verifyUser ?? sessions.verifyUser
      for (const [key, value] of Object.entries(extra)) {
        if (value !== undefined && key !== 'authorize' && key !== 'rooms') out[key] = value
      }
      out.authorize = buildAuthorize(options.authorize, extra.authorize, lockRules)
      out.rooms = buildRooms(options.rooms, extra.rooms, lockRules)
      Object.defineProperty(out, BUILT, { value: true, enumerable: false })
      return out
    }

    // `initUWebSocket(port)` called by the application after getPayload(): give it the same
    // options as `port` would, while this Payload runs (set in onInit, dropped on destroy).
    const pluginDefaults = (extra = {}) => (extra && extra[BUILT] ? extra : serverOptions(extra))
    // A dev reload evaluates the config again while the same Payload runs: the new rules apply.
    if (state.payload) managerModule.setPluginDefaults(pluginDefaults)

    /** Starts the server, or takes over the one a previous evaluation of the config started. */
    const startServer = async (payload) => {
      const running = state.manager && !state.manager._closing ? state.manager : undefined
      if (running && running._reconfigure(serverOptions())) return
      state.manager = undefined
      // An option the native server holds changed (dev reload): a new server on the same port;
      // clients reconnect.
      if (running) await running.close()
      state.manager = await initUWebSocket(options.port, serverOptions())
      if (fixedPort) lifecycle.byPort().set(fixedPort, state)
      const host = options.host ?? '0.0.0.0'
      payload?.logger?.info?.(`payload-realtime listening on ws://${host}:${state.manager.port}${options.path ?? '/'}`)
    }
    if (state.manager) {
      startServer(state.payload).catch((err) => logFailure('restarting the server after a reload', err))
    }

    const userOnInit = config.onInit
    const admin = adminProvider
      ? {
          ...config.admin,
          components: {
            ...config.admin?.components,
            providers: [...(config.admin?.components?.providers ?? []), adminProvider],
          },
        }
      : config.admin
    return {
      ...config,
      ...(admin ? { admin } : {}),
      collections,
      onInit: async (payload) => {
        state.payload = payload
        managerModule.setPluginDefaults(pluginDefaults)
        installTransactionHooks(payload.db)
        setFailureLog(logFailure)
        if (liveAdmin) announceLocks(payload.db, send)
        sessions.installLogoutSweep(payload.db)
        if (typeof payload.destroy === 'function') {
          const destroy = payload.destroy
          payload.destroy = async (...args) => {
            managerModule.clearPluginDefaults(pluginDefaults)
            const manager = state.manager
            state.manager = undefined
            if (manager) await manager.close()
            return destroy.apply(payload, args)
          }
        }
        if (userOnInit) await userOnInit(payload)
        if (options.port === undefined || options.port === null) return
        if (process.env.NEXT_PHASE === 'phase-production-build') {
          // `next build` runs onInit for pages that call getPayload(); the app's server, not
          // the build, serves sockets (and may hold the port while the next release builds).
          payload.logger?.info?.('payload-realtime: not listening during `next build`')
          return
        }
        await startServer(payload)
      },
    }
  }
}

module.exports = { uWebSocketPlugin }
