'use strict'
// The manager: starts the Rust server and turns the contract's JS API into native calls.
// JS callbacks (authorize rules, custom handlers) are called from here, in batches the Rust core
// sends: one crossing per event for authorize, one per burst of messages for handlers.

const tls = require('node:tls')
const net = require('node:net')

const { loadNative } = require('./native.js')
const { RealtimeError, ERROR_CODES } = require('./errors.js')
const lifecycle = require('./lifecycle.js')
const { isPlainObject, userKey, jsonCopy, withTimeout } = require('./util.js')
const { createAuthorizer, createJoinCheck } = require('./authorize.js')

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

function optionalNumber(options, name, { min = 0, max = 2 ** 32 - 1 } = {}) {
  const v = options[name]
  if (v === undefined || v === null) return undefined
  if (typeof v !== 'number' || !Number.isInteger(v) || v < min || v > max) {
    throw new TypeError(
      `payload-realtime: option \`${name}\` must be an integer from ${min} to ${max}, got ${String(v)}`,
    )
  }
  return v
}

function optionalStrings(options, name) {
  const v = options[name]
  if (v === undefined || v === null) return undefined
  if (!Array.isArray(v) || v.some((s) => typeof s !== 'string')) {
    throw new TypeError(`payload-realtime: option \`${name}\` must be an array of strings`)
  }
  return v
}

function optionalString(options, name) {
  const v = options[name]
  if (v === undefined || v === null) return undefined
  if (typeof v !== 'string') throw new TypeError(`payload-realtime: option \`${name}\` must be a string`)
  return v
}

/**
 * How the JS side checks one server option, and its documented default:
 * - `check`: `'string'`, `'strings'` (an array of them), `'boolean'`, `'integer'` (from `min`,
 *   default 0, to `max`, default 2^32 - 1), or `'own'` (a shape of its own, checked by its
 *   function below);
 * - `default`: the value the server uses when the option is absent, as docs/options.md's options
 *   table and index.d.ts state it (a test checks all three agree), in `unit` (`'ms'`, `'s'`,
 *   `'bytes'`; none: a count); absent where it is computed (CPU cores, the open-file limit)
 *   or there is none.
 * @typedef {{ check: 'string' | 'strings' | 'boolean' | 'integer' | 'own', min?: number, max?: number,
 *   default?: string | number | boolean | string[], unit?: 'ms' | 's' | 'bytes' }} OptionSpec
 */

/**
 * The options of the server (`initUWebSocket(port, options)`), which the plugin also takes and
 * hands on, in one table: index.d.ts's `ServerOptions` declares the same names and docs/options.md's
 * options table has a row for each, with the same defaults (options.test.mjs checks them).
 * A new option goes at the end.
 * @type {Record<string, OptionSpec>}
 */
const SERVER_OPTION_SPECS = {
  host: { check: 'string', default: '0.0.0.0' },
  path: { check: 'string' },
  secret: { check: 'string' },
  allowedOrigins: { check: 'strings' },
  allowAnonymous: { check: 'boolean', default: false },
  maxPayloadLength: { check: 'integer', min: 16, default: 64 * 1024, unit: 'bytes' },
  maxBackpressure: { check: 'integer', min: 1024, default: 1024 * 1024, unit: 'bytes' },
  maxBacklog: { check: 'integer', min: 1024, default: 128 * 1024 * 1024, unit: 'bytes' },
  idleTimeout: { check: 'integer', default: 120, unit: 's' },
  workerThreads: { check: 'integer', min: 1, max: 256 },
  includeCollections: { check: 'strings' },
  authorize: { check: 'own' },
  rooms: { check: 'own' },
  authorizeTimeout: { check: 'integer', min: 1, default: 5000, unit: 'ms' },
  handlerTimeout: { check: 'integer', min: 1, default: 30000, unit: 'ms' },
  maxMessagesPerSecond: { check: 'integer', default: 100 },
  maxRoomsPerSocket: { check: 'integer', min: 1, default: 1000 },
  maxConnections: { check: 'integer', min: 1 },
  maxConnectionsPerUser: { check: 'integer', default: 32 },
  maxConnectionsPerIp: { check: 'integer', default: 256 },
  trustedProxies: { check: 'own', default: ['loopback'] },
  history: { check: 'own' },
  presence: { check: 'own' },
  presenceExpiry: { check: 'integer', min: 100, default: 15000, unit: 'ms' },
  redis: { check: 'own' },
  verifyUser: { check: 'own' },
  maxVerifying: { check: 'integer', min: 1, default: 64 },
  maxVerifyingPerUser: { check: 'integer', default: 4 },
  verifyTimeout: { check: 'integer', min: 1, default: 5000, unit: 'ms' },
  authTimeout: { check: 'integer', min: 1, default: 10000, unit: 'ms' },
  maxRecoveriesPerMinute: { check: 'integer', default: 10 },
  maxRecoveryEvents: { check: 'integer', min: 1, default: 1000 },
  metrics: { check: 'own' },
  drainTimeout: { check: 'integer', default: 5000, unit: 'ms' },
  logger: { check: 'own' },
  maxRevokedSessions: { check: 'integer', min: 1, default: 100000 },
  maxTokenLifetime: { check: 'integer', min: 1, default: 7 * 24 * 3600, unit: 's' },
  onConnect: { check: 'own' },
}

/** The names of the server options, in the table's order. */
const SERVER_OPTIONS = Object.keys(SERVER_OPTION_SPECS)

/**
 * The options of the table with a check of a common kind, checked as the table says: the value
 * the native server takes for each (undefined when absent).
 * @param {Record<string, any>} options
 * @returns {Record<string, any>}
 */
function tableOptions(options) {
  /** @type {Record<string, any>} */
  const out = {}
  for (const [name, spec] of Object.entries(SERVER_OPTION_SPECS)) {
    if (spec.check === 'string') out[name] = optionalString(options, name)
    else if (spec.check === 'strings') out[name] = optionalStrings(options, name)
    else if (spec.check === 'integer') out[name] = optionalNumber(options, name, spec)
    else if (spec.check === 'boolean') out[name] = options[name] === undefined ? undefined : Boolean(options[name])
  }
  return out
}

/** Options only the plugin reads (index.d.ts `PluginOptions`); the server ignores them. */
const PLUGIN_OPTIONS = ['enabled', 'port', 'readAccess', 'shouldEmit', 'transformEvent', 'admin']

const KNOWN_OPTIONS = new Set([...SERVER_OPTIONS, ...PLUGIN_OPTIONS])

/**
 * Checks the options and builds what the native server takes.
 * @param {number} port
 * @param {Record<string, any>} options
 * @returns {Record<string, any>}
 */
function nativeOptions(port, options) {
  if (!isPlainObject(options)) throw new TypeError('payload-realtime: options must be an object')
  // A misspelt option (say `allowedOrigin`) would otherwise be a default silently kept.
  const unknown = Object.keys(options).filter((k) => !KNOWN_OPTIONS.has(k))
  if (unknown.length > 0) {
    throw new TypeError(
      `payload-realtime: unknown option${unknown.length > 1 ? 's' : ''} ${unknown.map((k) => `\`${k}\``).join(', ')}`,
    )
  }
  if (typeof port !== 'number' || !Number.isInteger(port) || port < 0 || port > 65535) {
    throw new TypeError(`payload-realtime: port must be an integer from 0 to 65535, got ${String(port)}`)
  }
  const authorize = options.authorize ?? {}
  if (!isPlainObject(authorize) || Object.values(authorize).some((f) => typeof f !== 'function')) {
    throw new TypeError(
      'payload-realtime: `authorize` must map collection slugs or room patterns to functions (user, event) => boolean',
    )
  }
  const redis = options.redis
  if (
    redis !== undefined &&
    redis !== null &&
    redis !== false &&
    !(
      isPlainObject(redis) &&
      Object.keys(redis).every((k) => k === 'url' || k === 'prefix') &&
      (redis.url === undefined || typeof redis.url === 'string') &&
      (redis.prefix === undefined || (typeof redis.prefix === 'string' && redis.prefix !== ''))
    )
  ) {
    throw new TypeError('payload-realtime: `redis` must be { url?: string, prefix?: string } (or false)')
  }
  return {
    ...tableOptions(options),
    port,
    joinRules: [...new Set(joinRules(options.rooms).map(([pattern]) => pattern))],
    history: historyRules(options.history),
    presence: presenceRooms(options.presence),
    authorizeCollections: Object.keys(authorize),
    trustedProxies: trustedProxies(options.trustedProxies),
    // `redis: { url }`, with REDIS_URL as the fallback; `redis: false` runs alone even then.
    redisUrl: redis === false ? undefined : (redis?.url ?? (process.env.REDIS_URL || undefined)),
    redisPrefix: redis === false ? undefined : redis?.prefix,
    ...metricsOption(options.metrics),
    onConnect: onConnectOption(options.onConnect),
  }
}

/** `onConnect`: a function, or absent. Tells the native server whether to call it. */
function onConnectOption(onConnect) {
  if (onConnect === undefined || onConnect === null) return undefined
  if (typeof onConnect !== 'function') {
    throw new TypeError('payload-realtime: `onConnect` must be a function (socket) => { rooms?, initial? } | void')
  }
  return true
}

/** Most sockets one `listSockets` page holds. */
const MAX_SOCKETS_PAGE = 1000

/** Shortest `metrics.token` (the same bound as the server's). */
const MIN_METRICS_TOKEN = 16

/**
 * `metrics`: `{ token }` (GET /metrics on the server's port with `Authorization: Bearer <token>`)
 * or `{ port, host? }` (a listener of its own, on loopback by default); off when absent.
 */
function metricsOption(metrics) {
  if (metrics === undefined || metrics === null || metrics === false) return {}
  const shape = 'payload-realtime: `metrics` must be { token } (at least 16 characters) or { port, host? }'
  if (!isPlainObject(metrics)) throw new TypeError(shape)
  const keys = Object.keys(metrics)
  if (keys.includes('token')) {
    const { token } = metrics
    if (
      keys.length !== 1 ||
      typeof token !== 'string' ||
      token.length < MIN_METRICS_TOKEN ||
      /[^\x21-\x7e]/.test(token)
    ) {
      throw new TypeError(`${shape}; the token is printable ASCII without spaces`)
    }
    return { metricsToken: token }
  }
  const { port, host = '127.0.0.1' } = metrics
  if (
    keys.some((k) => k !== 'port' && k !== 'host') ||
    !Number.isInteger(port) ||
    port < 0 ||
    port > 65535 ||
    typeof host !== 'string' ||
    host === ''
  ) {
    throw new TypeError(shape)
  }
  return { metricsPort: port, metricsHost: host }
}

/**
 * `logger`: an object with `info`, `warn` and `error` methods (Payload's pino logger), or
 * `false` / absent for stderr. Returns the logger or `null`.
 */
function loggerOption(logger) {
  if (logger === undefined || logger === null || logger === false) return null
  if (typeof logger !== 'object' || ['info', 'warn', 'error'].some((m) => typeof logger[m] !== 'function')) {
    throw new TypeError('payload-realtime: `logger` must have info, warn and error methods (or be false for stderr)')
  }
  return logger
}

/** `trustedProxies`: IP addresses and `'loopback'` (a hostname would be resolved by no one). */
function trustedProxies(list) {
  if (list === undefined || list === null) return undefined
  if (!Array.isArray(list) || list.some((ip) => typeof ip !== 'string' || (ip !== 'loopback' && net.isIP(ip) === 0))) {
    throw new TypeError("payload-realtime: `trustedProxies` must be an array of IP addresses (or 'loopback')")
  }
  return list
}

/**
 * `history`: `{ size, ttlSeconds, maxBytes }` for every collection, or `{ [slug or room pattern]: { size, ttlSeconds, maxBytes } }`
 * (a key with ':' or '*' is a room name or prefix pattern, any other key a collection slug).
 */
function historyRules(history) {
  if (history === undefined || history === null || history === false) return undefined
  const rule = (pattern, v) => {
    if (!isPlainObject(v) || !Number.isInteger(v.size) || v.size < 1 || v.size > 1_000_000) {
      throw new TypeError(`payload-realtime: history for "${pattern}" needs { size: 1..1000000, ttlSeconds? }`)
    }
    if (v.ttlSeconds !== undefined && !(Number.isInteger(v.ttlSeconds) && v.ttlSeconds >= 0)) {
      throw new TypeError(`payload-realtime: history ttlSeconds for "${pattern}" must be a whole number of seconds`)
    }
    if (v.maxBytes !== undefined && !(Number.isInteger(v.maxBytes) && v.maxBytes >= 1024 && v.maxBytes <= 0xffffffff)) {
      throw new TypeError(`payload-realtime: history maxBytes for "${pattern}" must be a whole number from 1024`)
    }
    return { pattern, size: v.size, ttlSeconds: v.ttlSeconds, maxBytes: v.maxBytes }
  }
  if (!isPlainObject(history)) throw new TypeError('payload-realtime: `history` must be an object')
  if (typeof history.size === 'number') return [rule('collection:*', history)]
  return Object.entries(history).flatMap(([key, v]) => roomPatterns(key).map((p) => rule(p, v)))
}

/**
 * The rooms a key of the options that apply to rooms names: a room name or `prefix*` (a key
 * with ':' or ending in '*'), or a bare name, which is both a collection's slug (its room
 * `collection:<slug>`) and the app room of that exact name.
 */
function roomPatterns(key) {
  return key.includes(':') || key.endsWith('*') ? [key] : [`collection:${key}`, key]
}

/**
 * `rooms`: `{ [slug or room pattern]: (user, room) => boolean | Promise<boolean> }`, who may join
 * which rooms; here a list of `[room pattern, rule]`.
 */
function joinRules(rooms) {
  if (rooms === undefined || rooms === null) return []
  if (!isPlainObject(rooms) || Object.values(rooms).some((f) => typeof f !== 'function')) {
    throw new TypeError(
      'payload-realtime: `rooms` must map collection slugs or room patterns to functions (user, room) => boolean',
    )
  }
  // A list, not an object: a bare `posts` and an explicit `collection:posts` both name the
  // collection's room, and each of their rules must allow the join.
  return Object.entries(rooms).flatMap(([key, rule]) => roomPatterns(key).map((p) => [p, rule]))
}

/** Whether `room` is named by `pattern` (a room name, or a prefix ending in `*`). */
function roomMatches(pattern, room) {
  return pattern.endsWith('*') ? room.startsWith(pattern.slice(0, -1)) : pattern === room
}

/** `presence`: `true` (every collection) or a list of collection slugs / room patterns. */
function presenceRooms(presence) {
  if (presence === undefined || presence === null || presence === false) return undefined
  if (presence === true) return ['collection:*']
  if (!Array.isArray(presence) || presence.some((p) => typeof p !== 'string' || p === '')) {
    throw new TypeError('payload-realtime: `presence` must be true or an array of collection slugs / room patterns')
  }
  return presence.flatMap(roomPatterns)
}

/** Occurrences of one kind of failure less than this apart are one episode: one line. */
const EPISODE_GAP_MS = 60_000
/** A long episode is logged again this often, with what it held back. */
const EPISODE_REMINDER_MS = 600_000

/**
 * Logs failures by kind (`key`): one line per episode (the server's rule, see
 * crates/core/src/log.rs), redacted, never document data. `logger` is `{ error }` or null
 * for stderr.
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

/** JSON text of a value, or a clear error for what JSON cannot carry. */
function toJson(value, what) {
  let json
  try {
    json = JSON.stringify(value)
  } catch (err) {
    throw new TypeError(`payload-realtime: ${what} cannot be serialized to JSON: ${err.message}`)
  }
  if (json === undefined) throw new TypeError(`payload-realtime: ${what} cannot be serialized to JSON`)
  return json
}

/** Where `attachTo` takes upgrades when neither its `path` nor the manager's is given. */
const DEFAULT_ATTACH_PATH = '/realtime'

/** Marks the `'upgrade'` listeners `attachTo` adds, with the path each one takes. */
const ATTACHED_PATH = Symbol('payload-realtime attachTo path')

/** What to do where a connection cannot be adopted: said by every `cannot-adopt` error. */
const ADOPT_ALTERNATIVES =
  'Serve WebSockets on their own port instead (initUWebSocket(port)), or have your reverse proxy ' +
  '(which may terminate TLS) forward this path to that port.'

/** The error for a connection the server cannot take over; `reason` says why. */
function cannotAdopt(reason) {
  return new RealtimeError(
    'cannot-adopt',
    `payload-realtime: cannot adopt the connection: ${reason}. ${ADOPT_ALTERNATIVES}`,
  )
}

/**
 * The descriptor of a plain TCP socket of Node's HTTP server, or a `cannot-adopt` error. The native
 * side checks the rest (a connected TCP socket, not a Unix domain one).
 */
function adoptableFd(socket) {
  if (socket instanceof tls.TLSSocket || socket?.encrypted) {
    throw cannotAdopt('it is a TLS connection, whose encryption lives in Node')
  }
  if (!socket || socket.destroyed || !socket._handle) throw cannotAdopt('the socket is closed')
  const fd = socket._handle.fd
  if (typeof fd !== 'number' || fd < 0) {
    throw cannotAdopt(
      process.platform === 'win32'
        ? 'sockets on Windows have no file descriptor to hand over'
        : 'the socket has no file descriptor (it is not a TCP socket)',
    )
  }
  // Written by someone before: closing Node's side would drop those bytes.
  if (socket.writableLength > 0) throw cannotAdopt('Node still has bytes to write on it')
  return fd
}

/** The path of a request target (`/realtime?token=...`, or the absolute form a proxy may send). */
function targetPath(url) {
  if (typeof url !== 'string') return ''
  let target = url
  const scheme = target.startsWith('/') ? -1 : target.indexOf('://')
  if (scheme > 0) {
    const slash = target.indexOf('/', scheme + 3)
    target = slash < 0 ? '/' : target.slice(slash)
  }
  const end = target.search(/[?#]/)
  return end < 0 ? target : target.slice(0, end)
}

/** Checks `attachTo`'s path: a plain URL path, never Next.js's own, and the manager's `path` if set. */
function attachPath(path, own) {
  if (typeof path !== 'string' || !path.startsWith('/') || /[?#\s]/.test(path)) {
    throw new TypeError(`payload-realtime: attachTo's path must be a URL path such as '/realtime', got ${String(path)}`)
  }
  if (path === '/_next' || path.startsWith('/_next/')) {
    throw new TypeError(`payload-realtime: attachTo's path ${path} belongs to Next.js (its dev server's HMR socket)`)
  }
  if (own !== undefined && path !== own) {
    throw new TypeError(
      `payload-realtime: attachTo's path ${path} differs from the manager's \`path\` option ${own}, which every upgrade must match`,
    )
  }
  return path
}

/**
 * `{ except }` of `publish`: a socket id, a socket object (`{ id }`, as handlers are given), or
 * a user `{ collection, id }` (every socket of that user). Returns `{ socket, user }` (a user
 * key `<collection>:<id>`, as the core groups sockets).
 */
function exceptOption(opts, what) {
  if (opts === undefined || opts === null) return {}
  if (!isPlainObject(opts)) throw new TypeError(`payload-realtime: ${what} options must be an object`)
  const except = opts.except
  if (except === undefined || except === null) return {}
  if (typeof except === 'string' && except !== '') return { socket: except }
  if (isPlainObject(except) && typeof except.collection === 'string' && except.collection !== '') {
    if (typeof except.id === 'string' || typeof except.id === 'number') {
      return { user: userKey(except.collection, except.id) }
    }
  }
  if (isPlainObject(except) && typeof except.id === 'string' && typeof except.send === 'function') {
    return { socket: except.id }
  }
  throw new TypeError(`payload-realtime: ${what}: \`except\` is a socket id, a socket, or a user { collection, id }`)
}

/**
 * Answers an upgrade through Node's socket and closes it (a connection not taken over). The HTTP
 * server removed its own error listener once the request asked for an upgrade: one is added, or a
 * client that resets would crash the process.
 */
function answerUpgrade(socket, status, reason, body) {
  socket.on('error', () => {})
  if (socket.destroyed) return
  const text = JSON.stringify(body)
  socket.end(
    `HTTP/1.1 ${status} ${reason}\r\ncontent-type: application/json\r\ncache-control: no-store\r\n` +
      `content-length: ${Buffer.byteLength(text)}\r\nconnection: close\r\n\r\n${text}`,
    () => socket.destroy(),
  )
}

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

    const { authorizeBatch } = createAuthorizer({
      getRule: (collection) => this._rules[collection],
      timeout: authorizeTimeout,
      logFailure,
    })

    // `onConnect` for a new socket (type '': no client can send it). Rooms named by
    // `socket.join()` or the answer are joined after the initial messages are sent. A throw,
    // rejection, timeout or bad answer is logged and leaves the socket as it is.
    const connected = async (call) => {
      const rooms = []
      const socket = {
        id: call.socketId,
        user: call.user,
        send: (message) => this.sendToSocket(call.socketId, message),
        join: (room) => {
          if (typeof room !== 'string' || room === '')
            throw new TypeError('payload-realtime: socket.join takes a room name')
          rooms.push(room)
        },
      }
      try {
        const answer = await withTimeout(
          Promise.resolve().then(() => this._onConnect(socket)),
          handlerTimeout,
          'onConnect',
        )
        let initial = []
        if (answer !== undefined && answer !== null) {
          const shape = 'onConnect returns nothing or { rooms?: string[], initial?: message | message[] }'
          if (!isPlainObject(answer)) throw new TypeError(shape)
          if (answer.rooms !== undefined) {
            if (!Array.isArray(answer.rooms) || answer.rooms.some((r) => typeof r !== 'string' || r === '')) {
              throw new TypeError(shape)
            }
            rooms.push(...answer.rooms)
          }
          if (answer.initial !== undefined) initial = Array.isArray(answer.initial) ? answer.initial : [answer.initial]
          if (initial.some((m) => !isPlainObject(m))) throw new TypeError(shape)
        }
        if (rooms.length === 0 && initial.length === 0) return { ok: true }
        return { ok: true, reply: { initial: JSON.parse(toJson(initial, 'the initial state')), rooms } }
      } catch (err) {
        logFailure('onConnect', err)
        return { ok: true }
      }
    }

    // One call per burst of custom messages.
    const handle = async (calls) =>
      Promise.all(
        calls.map(async (call) => {
          if (call.type === '' && this._onConnect) return connected(call)
          const handler = this._handlers.get(call.type)
          if (!handler) return { ok: false, code: 'unknown-type', message: `no handler for type "${call.type}"` }
          const socket = {
            id: call.socketId,
            user: call.user,
            send: (message) => this.sendToSocket(call.socketId, message),
          }
          try {
            const reply = await withTimeout(
              Promise.resolve().then(() => handler(socket, call.message)),
              handlerTimeout,
              `handler for "${call.type}"`,
            )
            if (reply === undefined) return { ok: true }
            return { ok: true, reply: JSON.parse(toJson(reply, `the reply of handler "${call.type}"`)) }
          } catch (err) {
            const code = err && typeof err.code === 'string' && ERROR_CODES.has(err.code) ? err.code : 'internal'
            if (code === 'internal') {
              logFailure(`handler for "${call.type}"`, err)
              return { ok: false, code, message: `handler for "${call.type}" failed` }
            }
            return { ok: false, code, message: String(err.message ?? code) }
          }
        }),
      )

    // Plugin mode: Payload confirms the user once per connection (sessions, disabled users).
    const verifyUser =
      typeof options.verifyUser === 'function'
        ? async (token, claims) => {
            try {
              const user = await this._verifyUser(token, claims)
              return isPlainObject(user) ? JSON.parse(toJson(user, 'the verified user')) : null
            } catch (err) {
              logFailure('verifyUser', err)
              return null
            }
          }
        : null

    const mayJoin = createJoinCheck({
      getRules: (room) => this._roomRules.filter(([pattern]) => roomMatches(pattern, room)).map(([, rule]) => rule),
      timeout: authorizeTimeout,
      logFailure,
    })
    // The server's lines, already redacted and one per episode; its queue bounds them.
    const log = this._logger ? (level, line) => logLine(this._logger, level, line) : null
    this._server = native.initUWebSocket(opts, authorizeBatch, handle, () => {}, verifyUser, mayJoin, log)
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
    this._server.setHostRules(opts.includeCollections ?? null, opts.authorizeCollections, opts.joinRules)
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
    if (!req || typeof req.method !== 'string' || typeof req.url !== 'string' || !Array.isArray(req.rawHeaders)) {
      throw new TypeError(
        "payload-realtime: handleUpgrade takes (req, socket, head) of an HTTP server's 'upgrade' event",
      )
    }
    if (head !== undefined && head !== null && !Buffer.isBuffer(head)) {
      throw new TypeError('payload-realtime: handleUpgrade: head must be a Buffer')
    }
    const fd = adoptableFd(socket)
    if (this._closing) {
      answerUpgrade(socket, 503, 'Service Unavailable', { error: 'shutting-down' })
      return false
    }
    // Called on a later turn than the event's, Node may have read on: those bytes follow `head`.
    let early = head ?? Buffer.alloc(0)
    if (socket.readableLength > 0) {
      const more = socket.read()
      if (more) early = Buffer.concat([early, more])
    }
    let adopted
    try {
      adopted = this._server.adoptUpgrade(fd, req.method, req.url, req.rawHeaders, early)
    } catch (err) {
      if (err?.code === 'cannot-adopt')
        throw cannotAdopt(String(err.message).replace(/^cannot adopt the connection: /, ''))
      throw err
    }
    if (!adopted) {
      answerUpgrade(socket, 503, 'Service Unavailable', { error: 'shutting-down' })
      return false
    }
    // The server holds a descriptor of its own now. Destroying closes Node's only, which never
    // shuts the connection down, and Node read nothing since `early` was taken: no turn of its
    // event loop separates that from here.
    socket.on('error', () => {})
    socket.destroy()
    return true
  }

  /**
   * Hands an SSE or long-poll request (`GET <path>/sse`, `<path>/poll`) that Node's HTTP server
   * read over to the Rust server, which answers it as on its own port. False when the manager
   * is closed (answered 503 here).
   * @internal used by attachTo
   */
  _takeRequest(req) {
    const socket = req.socket
    const fd = adoptableFd(socket)
    if (this._closing || !this._server.adoptUpgrade(fd, req.method, req.url, req.rawHeaders, Buffer.alloc(0))) {
      answerUpgrade(socket, 503, 'Service Unavailable', { error: 'shutting-down' })
      return true
    }
    socket.on('error', () => {})
    socket.destroy()
    return true
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
    if (!server || typeof server.on !== 'function' || typeof server.listeners !== 'function') {
      throw new TypeError('payload-realtime: attachTo takes a Node http.Server')
    }
    if (!isPlainObject(options ?? {})) throw new TypeError('payload-realtime: attachTo options must be an object')
    if (this._closing) throw new RealtimeError('closed', 'payload-realtime: attachTo: the manager is closed')
    if (server instanceof tls.Server) throw cannotAdopt('the server is an HTTPS server, whose encryption lives in Node')
    if (process.platform === 'win32') throw cannotAdopt('sockets on Windows have no file descriptor to hand over')
    if (typeof server.address === 'function' && typeof server.address() === 'string') {
      throw cannotAdopt('the server listens on a Unix domain socket, not TCP')
    }
    const path = attachPath(options?.path ?? this._path ?? DEFAULT_ATTACH_PATH, this._path)
    const attached = this._attached.get(server)
    if (attached) {
      if (attached.path === path) return attached.detach
      throw new TypeError(`payload-realtime: this manager is already attached to that server, on ${attached.path}`)
    }
    const onUpgrade = (req, socket, head) => {
      const requested = targetPath(req.url)
      if (requested !== path) {
        // Another listener's to answer. With none but ours, nobody would, and the client would
        // wait: the last of ours answers 404 then, unless one of ours takes that path.
        const listeners = server.listeners('upgrade')
        const ours = listeners.filter((l) => l[ATTACHED_PATH] !== undefined)
        if (
          ours.length === listeners.length &&
          ours[ours.length - 1] === onUpgrade &&
          !ours.some((l) => l[ATTACHED_PATH] === requested)
        ) {
          answerUpgrade(socket, 404, 'Not Found', { error: 'not-found' })
        }
        return
      }
      try {
        this.handleUpgrade(req, socket, head)
      } catch (err) {
        // An exception in an event listener would take the process down.
        this._logFailure('attachTo', err)
        answerUpgrade(socket, 500, 'Internal Server Error', {
          error: err?.code === 'cannot-adopt' ? 'cannot-adopt' : 'internal',
          reason: 'the realtime server cannot take this connection over',
        })
      }
    }
    onUpgrade[ATTACHED_PATH] = path
    server.on('upgrade', onUpgrade)
    // `<path>/sse` and `<path>/poll` are plain requests: taken before the server's own request
    // handler (Next.js's) sees them, by the same hand-over as an upgrade.
    const streams = new Set(['/sse', '/poll'].map((leaf) => `${path.replace(/\/+$/, '')}${leaf}`))
    const emit = server.emit
    let taking = true
    const takeRequests = function (event, req, res) {
      if (taking && event === 'request' && req?.method === 'GET' && streams.has(targetPath(req.url))) {
        try {
          if (manager._takeRequest(req)) return true
        } catch (err) {
          manager._logFailure('attachTo', err)
          if (!res.headersSent) {
            res.writeHead(500, { 'content-type': 'application/json', connection: 'close' })
            res.end(JSON.stringify({ error: err?.code === 'cannot-adopt' ? 'cannot-adopt' : 'internal' }))
          }
          return true
        }
      }
      return emit.apply(this, arguments)
    }
    const manager = this
    server.emit = takeRequests
    const detach = () => {
      server.removeListener('upgrade', onUpgrade)
      taking = false
      // Wrapped again by someone since: ours stays in their chain, passing everything on.
      if (server.emit === takeRequests) server.emit = emit
      if (this._attached.get(server)?.detach === detach) this._attached.delete(server)
    }
    this._attached.set(server, { path, detach })
    return detach
  }

  /** Sends a collection event to room `collection:<slug>`, applying its authorize rule. */
  async emitEvent(event) {
    if (!isPlainObject(event)) throw new TypeError('payload-realtime: emitEvent takes an event object')
    const json = toJson(event, 'the event')
    if (this._closing) throw new RealtimeError('closed', 'payload-realtime: the realtime server is closed')
    // Events emitted in the same tick cross into Rust together (one call, one promise), in order.
    return new Promise((resolve, reject) => {
      if (!this._batch) {
        this._batch = []
        queueMicrotask(() => this._flushEvents())
      }
      this._batch.push({ json, resolve, reject })
    })
  }

  _flushEvents() {
    const batch = this._batch
    if (!batch) return // flushed early by a publish
    this._batch = null
    // The core refuses a single event with its own code (`{ code, message }`); the whole call fails
    // only when the server went away under it (closed in the same tick), which is 'closed' too.
    const failed = (err) => {
      const refusal = new RealtimeError(this._closing ? 'closed' : 'internal', String(err?.message ?? err))
      for (const e of batch) e.reject(refusal)
    }
    let results
    try {
      results = this._server.emitEvents(`[${batch.map((e) => e.json).join(',')}]`)
    } catch (err) {
      failed(err)
      return
    }
    results.then(
      (answers) =>
        batch.forEach((e, i) =>
          typeof answers[i] === 'number'
            ? e.resolve()
            : e.reject(new RealtimeError(answers[i]?.code ?? 'internal', answers[i]?.message ?? 'not emitted')),
        ),
      failed,
    )
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
    if (typeof room !== 'string' || room === '')
      throw new TypeError('payload-realtime: publish: room must be a non-empty string')
    if (!isPlainObject(message) || typeof message.type !== 'string' || message.type === '') {
      throw new TypeError('payload-realtime: publish takes a message object with a string `type`')
    }
    const { socket, user } = exceptOption(opts, 'publish')
    const json = toJson(message, 'the message')
    if (this._closing)
      return Promise.reject(new RealtimeError('closed', 'payload-realtime: the realtime server is closed'))
    // Events emitted earlier in this tick go first: one queue into the core keeps the order.
    this._flushEvents()
    let answer
    try {
      answer = this._server.publish(room, json, socket, user)
    } catch (err) {
      return Promise.reject(new RealtimeError(this._closing ? 'closed' : 'internal', String(err?.message ?? err)))
    }
    return answer.then(
      ([n]) => {
        if (typeof n === 'number') return n
        throw new RealtimeError(n?.code ?? 'internal', n?.message ?? 'not published')
      },
      (err) => {
        throw new RealtimeError(this._closing ? 'closed' : 'internal', String(err?.message ?? err))
      },
    )
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
    this._server.broadcastToRoom(room, toJson(message, 'the message'), except)
  }

  /** Handles client messages of `type`: the return value (or resolved value) is the reply. */
  registerCustomHandler(type, handler) {
    if (typeof type !== 'string' || type === '')
      throw new TypeError('payload-realtime: type must be a non-empty string')
    if (typeof handler !== 'function') throw new TypeError('payload-realtime: handler must be a function')
    this._server.registerCustomHandler(type)
    this._handlers.set(type, handler)
  }

  /** `socket` is a socket id, or the socket object a handler was given (as the old plugin took). */
  sendToSocket(socket, message) {
    const id = isPlainObject(socket) && socket.id !== undefined ? socket.id : socket
    return this._server.sendToSocket(String(id), toJson(message, 'the message'))
  }

  joinRoom(socketId, room) {
    return this._server.joinRoom(String(socketId), String(room))
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
 * What a running native server cannot change: its options but the port (0 picks anew) and the
 * host's rules (`setHostRules`), and whether it calls `verifyUser`.
 */
function nativeShape(opts, options) {
  return JSON.stringify({
    ...opts,
    port: undefined,
    includeCollections: undefined,
    authorizeCollections: undefined,
    joinRules: undefined,
    verifyUser: typeof options.verifyUser === 'function',
  })
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
  nativeOptions,
  setPluginDefaults,
  clearPluginDefaults,
  SERVER_OPTIONS,
  SERVER_OPTION_SPECS,
  PLUGIN_OPTIONS,
  makeFailureLog,
  logLine,
}
