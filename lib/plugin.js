'use strict'
// The Payload plugin: adds afterChange/afterDelete hooks to the chosen collections and starts
// the server in onInit when `port` is set. Hooks never wait on sockets or authorize.

const { initUWebSocket, getUWebSocketManager } = require('./manager.js')

const SERVER_OPTION_KEYS = [
  'host',
  'path',
  'secret',
  'allowedOrigins',
  'allowAnonymous',
  'maxPayloadLength',
  'maxBackpressure',
  'idleTimeout',
  'workerThreads',
  'includeCollections',
  'authorize',
  'authorizeTimeout',
  'handlerTimeout',
  'maxMessagesPerSecond',
  'maxRoomsPerSocket',
  'redis',
]

function currentManager() {
  try {
    return getUWebSocketManager()
  } catch {
    return undefined
  }
}

/** The editor, named by id and collection only (never the email). */
function editorOf(req) {
  const user = req && req.user
  if (!user || user.id === undefined) return undefined
  return { id: user.id, collection: user.collection ?? req.user.collection }
}

function makeEmitter(options, slug) {
  return (type, doc, id, req) => {
    const manager = currentManager()
    if (!manager) return
    let event = { type, collection: slug, id, doc, user: editorOf(req), timestamp: new Date().toISOString() }
    try {
      if (options.shouldEmit && !options.shouldEmit(event)) return
      if (options.transformEvent) event = options.transformEvent(event)
      if (!event) return
    } catch (err) {
      console.error(`[payload-realtime] shouldEmit/transformEvent failed for "${slug}": ${err.message}`)
      return
    }
    manager.emitEvent(event).catch((err) => {
      console.error(`[payload-realtime] emitting a "${slug}" event failed: ${err.message}`)
    })
  }
}

/**
 * @param {object} options see README: includeCollections, authorize, shouldEmit, transformEvent, port, ...
 * @returns {(config: object) => object}
 */
function uWebSocketPlugin(options = {}) {
  return (config) => {
    if (options.enabled === false) return config
    const include = new Set(options.includeCollections ?? [])
    const collections = (config.collections ?? []).map((collection) => {
      if (!include.has(collection.slug)) return collection
      const emit = makeEmitter(options, collection.slug)
      const hooks = collection.hooks ?? {}
      return {
        ...collection,
        hooks: {
          ...hooks,
          afterChange: [
            ...(hooks.afterChange ?? []),
            ({ doc, operation, req }) => {
              emit(operation, doc, doc.id, req)
            },
          ],
          afterDelete: [
            ...(hooks.afterDelete ?? []),
            ({ doc, id, req }) => {
              emit('delete', doc, id ?? doc?.id, req)
            },
          ],
        },
      }
    })
    const userOnInit = config.onInit
    return {
      ...config,
      collections,
      onInit: async (payload) => {
        if (userOnInit) await userOnInit(payload)
        if (options.port !== undefined && options.port !== null) {
          const serverOptions = { secret: config.secret }
          for (const key of SERVER_OPTION_KEYS) if (options[key] !== undefined) serverOptions[key] = options[key]
          await initUWebSocket(options.port, serverOptions)
        }
      },
    }
  }
}

module.exports = { uWebSocketPlugin }
