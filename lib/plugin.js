'use strict'
// The Payload plugin: one call per Payload config, which appends the collection hooks
// (payload/hooks.js) and the live admin (payload/admin.js). In onInit it captures the Payload
// instance (never the default export), makes commits and rollbacks observable, and, when `port`
// is set, starts the server with Payload's own checks (payload/server-options.js):
// `verifyUser` (sessions, deleted users) and, unless `readAccess` turns it off for a
// collection, delivery filtered by Payload's read access, and joins refused to users who may
// read nothing of the collection (payload/rules.js).

const managerModule = require('./manager.js')
const { makeFailureLog, logLine } = require('./log.js')
const { installTransactionHooks } = require('./payload/transactions.js')
const { Sessions } = require('./payload/session.js')
const lifecycle = require('./lifecycle.js')
const { LOCKS, announceLocks } = require('./payload/locks.js')
const { checkPluginOptions } = require('./payload/options.js')
const { liveAdminOf, adminWithProvider } = require('./payload/admin.js')
const { makeSender, collectionsWithHooks } = require('./payload/hooks.js')
const { makeServerOptions, pluginDefaultsOf } = require('./payload/server-options.js')

const { initUWebSocket, getUWebSocketManager } = managerModule

/**
 * What the parts of one plugin (one evaluation of one config) share.
 * @typedef {object} PluginContext
 * @property {Record<string, any>} options the plugin options
 * @property {Record<string, any>} config the Payload config as the plugin got it
 * @property {Set<string>} include the collections whose events are sent (with the locks', for the live admin)
 * @property {{ payload: any, manager: any }} state this Payload, and the server the plugin started
 * @property {(what: string, err: unknown) => void} logFailure one line per kind of failure per episode
 * @property {() => any} currentManager our own server while it runs; otherwise the one started with initUWebSocket()
 * @property {import('./payload/session.js').Sessions} sessions
 * @property {boolean} liveAdmin
 */

/**
 * @param {import('../index').PluginOptions & { readAccess?: boolean | Record<string, boolean> }} [options]
 * @returns {(config: any) => any}
 */
function uWebSocketPlugin(options = {}) {
  checkPluginOptions(options)
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
    const fixedPort =
      typeof options.port === 'number' && Number.isInteger(options.port) && options.port > 0 ? options.port : undefined
    const state = (fixedPort && lifecycle.byPort().get(fixedPort)) || { payload: undefined, manager: undefined }

    const knownSlugs = new Set((config.collections ?? []).map((c) => c.slug))
    for (const slug of include) {
      if (!knownSlugs.has(slug)) {
        logLine(
          options.logger || null,
          'warn',
          `includeCollections names "${slug}", which is not a collection of this config`,
        )
      }
    }

    const { liveAdmin, provider: adminProvider } = liveAdminOf(options, include, fixedPort)
    if (liveAdmin) include.add(LOCKS)

    const currentManager = () => {
      if (state.manager) return state.manager
      try {
        return getUWebSocketManager()
      } catch {
        return undefined
      }
    }

    const sessions = new Sessions({ getPayload: () => state.payload, getManager: currentManager, logFailure })

    /** @type {PluginContext} */
    const ctx = { options, config, include, state, logFailure, currentManager, sessions, liveAdmin }
    const send = makeSender(ctx)
    const collections = collectionsWithHooks(ctx, send)
    const serverOptions = makeServerOptions(ctx)

    // `initUWebSocket(port)` called by the application after getPayload(): give it the same
    // options as `port` would, while this Payload runs (set in onInit, dropped on destroy).
    const pluginDefaults = pluginDefaultsOf(serverOptions)
    // A dev reload evaluates the config again while the same Payload runs: the new rules apply.
    if (state.payload) managerModule.setPluginDefaults(pluginDefaults, state.payload)

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
    const admin = adminWithProvider(config, adminProvider)
    return {
      ...config,
      ...(admin ? { admin } : {}),
      collections,
      onInit: async (payload) => {
        state.payload = payload
        managerModule.setPluginDefaults(pluginDefaults, payload)
        installTransactionHooks(payload.db)
        if (liveAdmin) announceLocks(payload.db, send)
        sessions.installLogoutSweep(payload.db)
        if (typeof payload.destroy === 'function') {
          const destroy = payload.destroy
          payload.destroy = async (...args) => {
            managerModule.clearPluginDefaults(payload)
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
