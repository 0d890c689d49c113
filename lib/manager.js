'use strict'
// The manager: starts the Rust server and turns the contract's JS API into native calls.
// JS callbacks (authorize rules, custom handlers) are called from here, in batches the Rust core
// sends: one crossing per event for authorize, one per burst of messages for handlers.
// Its parts: options.js (the options table and checks), callbacks.js and authorize.js (what the
// native server calls back into), events.js (emitEvent, publish), attach.js (connections taken
// over from the application's HTTP server), log.js.

const { loadNative } = require('./native.js')
const { RealtimeError, nativeError } = require('./errors.js')
const lifecycle = require('./lifecycle.js')
const { isPlainObject, jsonCopy, toJson } = require('./util.js')
const { createAuthorizer, createJoinCheck } = require('./authorize.js')
const { hostCallbacks } = require('./callbacks.js')
const {
  SERVER_OPTION_SPECS,
  nativeOptions,
  nativeShape,
  loggerOption,
  joinRules,
  roomMatches,
} = require('./options.js')
const { makeFailureLog, logLine } = require('./log.js')
const attach = require('./attach.js')
const events = require('./events.js')

/**
 * Set by each Payload plugin while its Payload runs (from `onInit` to `payload.destroy()`), under
 * that Payload: fills in what the plugin knows (secret, verifyUser, includeCollections,
 * authorize and read-access rules) when the user calls `initUWebSocket(port)` themselves after
 * `getPayload()`. With several Payloads in one process the one initialised last applies; once it
 * is destroyed, the one before it again. With none left, a server started later in the process
 * is the application's own. Kept for the process (lifecycle.js), not for this copy of the module.
 * @type {() => Map<object, (options: object) => object>}
 */
const pluginDefaults = lifecycle.pluginDefaults

/**
 * Sets the defaults of the Payload `owner` (a dev reload of its config replaces them in place).
 * @param {(options: object) => object} fn
 * @param {object} [owner] the Payload (by default `fn` itself)
 */
function setPluginDefaults(fn, owner = fn) {
  if (typeof fn === 'function') pluginDefaults().set(owner, fn)
}

/**
 * Forgets the defaults of `owner` (those of the other Payloads are kept).
 * @param {object} owner
 */
function clearPluginDefaults(owner) {
  pluginDefaults().delete(owner)
}

/** The defaults of the Payload initialised last that still runs, or null. */
function currentPluginDefaults() {
  let last = null
  for (const fn of pluginDefaults().values()) last = fn
  return last
}

const DEFAULT_PORT = 3002

/** Most sockets one `listSockets` page holds. */
const MAX_SOCKETS_PAGE = 1000

class UWebSocketManager {
  /** @internal use initUWebSocket() */
  constructor(port, options) {
    const native = loadNative()
    const opts = nativeOptions(port, options)
    this._setRules(options)
    const authorizeTimeout = opts.authorizeTimeout ?? SERVER_OPTION_SPECS.authorizeTimeout.default
    const handlerTimeout = opts.handlerTimeout ?? SERVER_OPTION_SPECS.handlerTimeout.default
    this._logger = loggerOption(options.logger)
    const logFailure = makeFailureLog(() => this._logger)
    /** @type {Map<string, Function>} */
    this._handlers = new Map()
    /** @type {{ json: string, resolve: (value?: any) => void, reject: (err: Error) => void }[] | null} emitted this tick (events.js) */
    this._batch = null

    const { authorizeBatch } = createAuthorizer({
      getRule: (collection) => this._rules[collection],
      timeout: authorizeTimeout,
      logFailure,
    })

    const { handle, verifyUser } = hostCallbacks(this, options, { handlerTimeout, logFailure })

    const mayJoin = createJoinCheck({
      getRules: (room) =>
        /** @type {[string, (user: any, room: string) => unknown][]} */ (this._roomRules)
          .filter(([pattern]) => roomMatches(pattern, room))
          .map(([, rule]) => rule),
      timeout: authorizeTimeout,
      logFailure,
    })
    // The server's lines, already redacted and one per episode; its queue bounds them.
    const log = this._logger ? (level, line) => logLine(this._logger, level, line) : null
    try {
      this._server = native.initUWebSocket(opts, authorizeBatch, handle, () => {}, verifyUser, mayJoin, log)
    } catch (err) {
      throw nativeError(err)
    }
    this.port = this._server.port
    /** The port of `/metrics`'s own listener (`metrics: { port }`), else null. */
    this.metricsPort = this._server.metricsPort ?? null
    this.instanceId = this._server.instanceId
    this._closing = null
    /** What the native server was started with: options that differ from it need a new server. */
    this._nativeShape = nativeShape(opts, options)
    this._path = opts.path
    this._logFailure = logFailure
    /** @type {Map<object, { path: string, detach: () => void }>} servers `attachTo` listens on */
    this._attached = new Map()
  }

  /** The JS rules the native server calls back into; replaced by `_reconfigure`. */
  _setRules(options) {
    this._rules = { ...(options.authorize ?? {}) }
    this._roomRules = joinRules(options.rooms)
    this._verifyUser = options.verifyUser
    this._onConnect = options.onConnect
  }

  /**
   * Takes new options (the plugin's, evaluated again by a dev reload) without dropping a socket:
   * the rules and `verifyUser` are swapped in place. Returns false, changing nothing, when an
   * option the native server was started with differs: that needs a new server.
   */
  _reconfigure(options) {
    const opts = nativeOptions(this.port, options)
    if (nativeShape(opts, options) !== this._nativeShape) return false
    try {
      this._server.setHostRules(opts.includeCollections ?? null, opts.authorizeCollections, opts.joinRules)
    } catch (err) {
      throw nativeError(err)
    }
    this._setRules(options)
    return true
  }

  /**
   * Takes over a WebSocket upgrade from your own HTTP server (its `'upgrade'` event): the Rust
   * server adopts the connection's file descriptor, checks and answers the handshake exactly as on
   * its own port, and serves the socket; Node's socket is then closed on Node's side only.
   * Returns true once the server has the connection, false when the manager is closed (then the
   * upgrade is answered 503 here). Throws a RealtimeError with code `'cannot-adopt'` for a TLS
   * socket, a socket without a file descriptor (Windows), or one that is not a connected TCP
   * socket; the socket is then left untouched.
   * @param {import('node:http').IncomingMessage} req
   * @param {import('node:stream').Duplex} socket
   * @param {Buffer} [head] the bytes Node read past the request's headers
   */
  handleUpgrade(req, socket, head) {
    return attach.handleUpgrade(this, req, socket, head)
  }

  /**
   * Hands an SSE or long-poll request (`GET <path>/sse`, `<path>/poll`) that Node's HTTP server
   * read over to the Rust server, which answers it as on its own port. False when the manager
   * is closed (answered 503 here).
   * @internal used by attachTo
   */
  _takeRequest(req) {
    return attach.takeRequest(this, req)
  }

  /**
   * Listens for upgrades on your HTTP server and takes those whose path is `path` (default: the
   * manager's `path` option, else '/realtime'); every other upgrade, such as Next.js's HMR socket,
   * is left to the server's other `'upgrade'` listeners, or answered 404 when there is none.
   * Returns a function that detaches the listener; `close()` detaches it too.
   * @param {import('node:http').Server} server
   * @param {{ path?: string }} [options]
   * @returns {() => void}
   */
  attachTo(server, options = {}) {
    return attach.attachTo(this, server, options)
  }

  /** Sends a collection event to room `collection:<slug>`, applying its authorize rule. */
  emitEvent(event) {
    return events.emitEvent(this, event)
  }

  _flushEvents() {
    events.flushEvents(this)
  }

  /**
   * Publishes an application event to `room` on the path of collection events: written once,
   * numbered when the room has history (`offset`, `epoch`: recoverable), through the authorize
   * rule whose key names the room, to every instance, in order with the events emitted before
   * it. `message` is an object with a string `type`; the server adds `room`. `opts.except` is a
   * socket (id or object) or a user (`{ collection, id }`) that does not get it. Resolves with
   * the number of local sockets it was queued to.
   * @returns {Promise<number>}
   */
  publish(room, message, opts = {}) {
    return events.publish(this, room, message, opts)
  }

  /**
   * Sends `message` to every socket connected, on every instance (through Redis when
   * configured). Returns how many sockets of this instance it was queued to.
   */
  broadcast(message) {
    if (!isPlainObject(message)) throw new TypeError('payload-realtime: broadcast takes a message object')
    return this._server.broadcast(toJson(message, 'the message'))
  }

  /**
   * This instance's sockets, for admin tools: `{ sockets: [{ id, user, rooms }], next? }`, in
   * connection order, at most `limit` (default 100, at most 1000) per page; pass `next` as
   * `after` for the next page.
   * @param {{ limit?: number, after?: string }} [options]
   */
  listSockets(options = {}) {
    if (!isPlainObject(options ?? {})) throw new TypeError('payload-realtime: listSockets options must be an object')
    const { limit = 100, after } = options ?? {}
    if (!Number.isInteger(limit) || limit < 1 || limit > MAX_SOCKETS_PAGE) {
      throw new TypeError(`payload-realtime: listSockets limit is a whole number from 1 to ${MAX_SOCKETS_PAGE}`)
    }
    if (after !== undefined && typeof after !== 'string') {
      throw new TypeError("payload-realtime: listSockets after is a socket id (the previous page's next)")
    }
    const page = this._server.listSockets(after, limit)
    return page.next === undefined ? { sockets: page.sockets } : page
  }

  /** Sends `message` to every socket in `room` (but `opts.except`, a socket id). */
  broadcastToRoom(room, message, opts = {}) {
    if (typeof room !== 'string' || room === '')
      throw new TypeError('payload-realtime: room must be a non-empty string')
    const except = opts && typeof opts.except === 'string' ? opts.except : undefined
    try {
      this._server.broadcastToRoom(room, toJson(message, 'the message'), except)
    } catch (err) {
      throw nativeError(err)
    }
  }

  /** Handles client messages of `type`: the return value (or resolved value) is the reply. */
  registerCustomHandler(type, handler) {
    if (typeof type !== 'string' || type === '')
      throw new TypeError('payload-realtime: type must be a non-empty string')
    if (typeof handler !== 'function') throw new TypeError('payload-realtime: handler must be a function')
    try {
      this._server.registerCustomHandler(type)
    } catch (err) {
      throw nativeError(err)
    }
    this._handlers.set(type, handler)
  }

  /** `socket` is a socket id, or the socket object a handler was given (as the old plugin took). */
  sendToSocket(socket, message) {
    const id = isPlainObject(socket) && socket.id !== undefined ? socket.id : socket
    return this._server.sendToSocket(String(id), toJson(message, 'the message'))
  }

  joinRoom(socketId, room) {
    try {
      return this._server.joinRoom(String(socketId), String(room))
    } catch (err) {
      throw nativeError(err)
    }
  }

  leaveRoom(socketId, room) {
    return this._server.leaveRoom(String(socketId), String(room))
  }

  /** @returns {{ id: string, user: object | null }[]} */
  getSocketsInRoom(room) {
    return this._server.getSocketsInRoom(String(room))
  }

  /**
   * Closes with 4003 the sockets of a user's session (logout), on every instance. Without `sid`,
   * every session of that user issued so far. The revocation is remembered (in Redis too, when
   * configured) until `exp` (the token's expiry, seconds since the epoch; at most
   * `maxTokenLifetime`), so the session is refused at any instance's handshake. Returns how many
   * sockets were closed here. `remember: false` closes the sockets without remembering the
   * revocation (for a logout that may still be rolled back; call again once it is committed).
   * @param {{ collection: string, id: string | number, sid?: string, exp?: number, remember?: boolean }} session
   * @returns {number}
   */
  revokeSession({ collection, id, sid, exp, remember = true } = /** @type {any} */ ({})) {
    if (typeof collection !== 'string' || (typeof id !== 'string' && typeof id !== 'number')) {
      throw new TypeError('payload-realtime: revokeSession takes { collection, id, sid?, exp? }')
    }
    if (exp !== undefined && !(typeof exp === 'number' && Number.isFinite(exp) && exp > 0)) {
      throw new TypeError('payload-realtime: revokeSession `exp` must be seconds since the epoch')
    }
    // `remember: false` only closes the sockets (a logout not committed yet; see session.js).
    return this._server.revokeSession(
      collection,
      String(id),
      typeof sid === 'string' ? sid : undefined,
      exp,
      remember !== false,
    )
  }

  /**
   * A user changed: every instance's sockets of that user show `doc` to rules, read access,
   * presence and handlers from now on. `doc: null` means the user was deleted: its sockets are
   * closed (4003) everywhere and its sessions revoked. Returns how many of its sockets are here.
   * @param {{ collection: string, id: string | number, doc: object | null }} user
   * @returns {number}
   */
  updateUser({ collection, id, doc } = /** @type {any} */ ({})) {
    if (typeof collection !== 'string' || (typeof id !== 'string' && typeof id !== 'number')) {
      throw new TypeError('payload-realtime: updateUser takes { collection, id, doc }')
    }
    if (doc !== null && !isPlainObject(doc)) {
      throw new TypeError('payload-realtime: updateUser `doc` must be the user document, or null when deleted')
    }
    return this._server.updateUser(collection, String(id), doc === null ? null : jsonCopy(doc))
  }

  stats() {
    return this._server.stats()
  }

  /**
   * Drains and closes: new upgrades get 503, `/readyz` answers 503, every socket is sent 1001
   * ("server shutting down, reconnect elsewhere") and has `grace` ms (default: `drainTimeout`,
   * 5000) to go before the rest are cut; then the port is freed. Safe to call twice.
   * @param {{ grace?: number }} [options]
   * @returns {Promise<void>}
   */
  close(options = {}) {
    if (!this._closing) {
      const grace = options?.grace
      if (grace !== undefined && !(Number.isInteger(grace) && grace >= 0 && grace <= 2 ** 32 - 1)) {
        return Promise.reject(new TypeError('payload-realtime: close({ grace }) takes whole milliseconds'))
      }
      lifecycle.closing(this)
      for (const { detach } of [...this._attached.values()]) detach()
      this._closing = this._server.close(grace)
    }
    return this._closing
  }

  /** `close()` for a process that is exiting: waits here, at most `ms`, for the close frames. */
  _closeNow(ms) {
    if (this._closing) return
    lifecycle.closing(this)
    for (const { detach } of [...this._attached.values()]) detach()
    this._closing = Promise.resolve()
    this._server.closeSync(ms)
  }
}

/**
 * Starts the WebSocket server; resolves once it listens.
 * @param {number} [port=3002] 0 picks a free port (read it from `manager.port`)
 * @param {object} [options]
 */
async function initUWebSocket(port = DEFAULT_PORT, options = {}) {
  const defaults = currentPluginDefaults()
  if (defaults) options = defaults(options)
  const manager = new UWebSocketManager(port, options)
  lifecycle.started(manager)
  return manager
}

/** The most recently started manager that is still open. */
function getUWebSocketManager() {
  const last = lifecycle.latest()
  if (!last) {
    throw new RealtimeError(
      'not-started',
      'payload-realtime: the WebSocket server is not started; call initUWebSocket() or set `port` in uWebSocketPlugin options',
    )
  }
  return last
}

module.exports = {
  UWebSocketManager,
  initUWebSocket,
  getUWebSocketManager,
  setPluginDefaults,
  clearPluginDefaults,
}
