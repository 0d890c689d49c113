'use strict'
// The server options the plugin builds: its own options handed on, completed with what it knows
// from Payload (the secret, its logger, the longest token lifetime, the collections, Payload's
// `verifyUser` and read access) and with what `initUWebSocket(port, extra)` was given.

const { SERVER_OPTIONS } = require('../options.js')
const { buildAuthorize, buildRooms, lockRules } = require('./rules.js')
const { isPlainObject } = require('../util.js')

/** Server options the plugin builds itself; the others are handed on as they are. */
const BUILT_BY_PLUGIN = new Set(['secret', 'includeCollections', 'authorize', 'rooms', 'verifyUser'])
const SERVER_OPTION_KEYS = SERVER_OPTIONS.filter((k) => !BUILT_BY_PLUGIN.has(k))

/** Marks server options built by a plugin, so they are not completed twice. */
const BUILT = Symbol.for('payload-realtime.plugin-options')

/**
 * The longest a token of this config lives (Payload's default `tokenExpiration` is 7200 s): how
 * long revocations are kept. Without auth collections, undefined (the server's default).
 * @param {any} config
 * @returns {number | undefined}
 */
function longestTokenLifetime(config) {
  /** @type {number[]} */
  const lifetimes = (config.collections ?? [])
    .filter((c) => c.auth)
    .map((c) => (isPlainObject(c.auth) && Number.isInteger(c.auth.tokenExpiration) ? c.auth.tokenExpiration : 7200))
    .filter((s) => s > 0)
  return lifetimes.length > 0 ? Math.max(...lifetimes) : undefined
}

/**
 * The function that builds the server options: ours, completed by what
 * `initUWebSocket(port, extra)` was given.
 * @param {import('../plugin.js').PluginContext} ctx
 * @returns {(extra?: Record<string, any>) => Record<string, any>}
 */
function makeServerOptions(ctx) {
  const { options, config, include, state, sessions, liveAdmin } = ctx
  const maxTokenLifetime = longestTokenLifetime(config)
  const locks = lockRules(liveAdmin)
  return (extra = {}) => {
    /** @type {Record<string, any>} */
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
    if (out.maxTokenLifetime === undefined) out.maxTokenLifetime = maxTokenLifetime
    out.includeCollections = [...include]
    if (options.verifyUser !== false) out.verifyUser = options.verifyUser ?? sessions.verifyUser
    for (const [key, value] of Object.entries(extra)) {
      if (value !== undefined && key !== 'authorize' && key !== 'rooms') out[key] = value
    }
    out.authorize = buildAuthorize(ctx, options.authorize, extra.authorize, locks)
    out.rooms = buildRooms(ctx, options.rooms, extra.rooms, locks)
    Object.defineProperty(out, BUILT, { value: true, enumerable: false })
    return out
  }
}

/**
 * Options a plugin built already are taken as they are; any other options are completed.
 * @param {(extra?: Record<string, any>) => Record<string, any>} serverOptions
 * @returns {(extra?: any) => Record<string, any>}
 */
function pluginDefaultsOf(serverOptions) {
  return (extra = {}) => (extra && extra[BUILT] ? extra : serverOptions(extra))
}

module.exports = { makeServerOptions, pluginDefaultsOf }
