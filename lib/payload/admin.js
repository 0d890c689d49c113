'use strict'
// The live admin (on by default): a provider in Payload's admin that follows the collections'
// events and the document locks. It needs to know where the browser finds the server: the
// plugin's fixed `port`, or `admin: { url }` / `{ port, path }` for a server the application
// starts or attaches itself.

const { isPlainObject, jsonCopy } = require('../util.js')

/** The admin provider, as Payload's import map names it. */
const ADMIN_PROVIDER = 'payload-realtime/admin#RealtimeAdminProvider'

/**
 * Whether the live admin is on, and the provider to add to Payload's admin when it is.
 * @param {any} options the plugin options
 * @param {Set<string>} include the collections whose events are sent
 * @param {number | undefined} fixedPort
 * @returns {{ liveAdmin: boolean, provider: { path: string, clientProps: object } | null }}
 */
function liveAdminOf(options, include, fixedPort) {
  const adminOptions = isPlainObject(options.admin) ? options.admin : {}
  const adminPort = adminOptions.port ?? fixedPort
  const liveAdmin = options.admin !== false && (adminOptions.url !== undefined || adminPort !== undefined)
  if (!liveAdmin) return { liveAdmin, provider: null }
  return {
    liveAdmin,
    provider: {
      path: ADMIN_PROVIDER,
      clientProps: jsonCopy({
        collections: [...include],
        port: adminPort,
        path: adminOptions.path ?? options.path,
        url: adminOptions.url,
      }),
    },
  }
}

/**
 * The config's `admin` with `provider` appended to its providers (as it was without one).
 * @param {any} config
 * @param {object | null} provider
 */
function adminWithProvider(config, provider) {
  if (!provider) return config.admin
  return {
    ...config.admin,
    components: {
      ...config.admin?.components,
      providers: [...(config.admin?.components?.providers ?? []), provider],
    },
  }
}

module.exports = { liveAdminOf, adminWithProvider }
