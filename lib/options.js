'use strict'
// The server's options: the one table of them (SERVER_OPTION_SPECS), their checks, and what the
// native server is started with. index.d.ts's `ServerOptions` and docs/options.md's table follow
// it; __test__/options.test.mjs checks they agree, and with the native addon's `NativeOptions`.

const net = require('node:net')

const { isPlainObject, collectionRoom } = require('./util.js')

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
 *   or there is none;
 * - `native`: for an `'own'` option, the fields of the native server's options (the addon's
 *   `NativeOptions`, as JS names them) it becomes; `[]` for a function the host keeps. An option
 *   of a common check is the native field of its own name. options.test.mjs checks that these
 *   and the `port` argument are the addon's fields, no more and no fewer.
 * @typedef {{ check: 'string' | 'strings' | 'boolean' | 'integer' | 'own', min?: number, max?: number,
 *   default?: string | number | boolean | string[], unit?: 'ms' | 's' | 'bytes', native?: string[] }} OptionSpec
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
  authorize: { check: 'own', native: ['authorizeCollections'] },
  rooms: { check: 'own', native: ['joinRules'] },
  authorizeTimeout: { check: 'integer', min: 1, default: 5000, unit: 'ms' },
  handlerTimeout: { check: 'integer', min: 1, default: 30000, unit: 'ms' },
  maxMessagesPerSecond: { check: 'integer', default: 100 },
  maxRoomsPerSocket: { check: 'integer', min: 1, default: 1000 },
  maxConnections: { check: 'integer', min: 1 },
  maxConnectionsPerUser: { check: 'integer', default: 32 },
  maxConnectionsPerIp: { check: 'integer', default: 256 },
  trustedProxies: { check: 'own', default: ['loopback'], native: ['trustedProxies'] },
  history: { check: 'own', native: ['history'] },
  presence: { check: 'own', native: ['presence'] },
  presenceExpiry: { check: 'integer', min: 100, default: 15000, unit: 'ms' },
  redis: { check: 'own', native: ['redisUrl', 'redisPrefix'] },
  verifyUser: { check: 'own', native: [] },
  maxVerifying: { check: 'integer', min: 1, default: 64 },
  maxVerifyingPerUser: { check: 'integer', default: 4 },
  verifyTimeout: { check: 'integer', min: 1, default: 5000, unit: 'ms' },
  authTimeout: { check: 'integer', min: 1, default: 10000, unit: 'ms' },
  maxRecoveriesPerMinute: { check: 'integer', default: 10 },
  maxRecoveryEvents: { check: 'integer', min: 1, default: 1000 },
  metrics: { check: 'own', native: ['metricsToken', 'metricsPort', 'metricsHost'] },
  drainTimeout: { check: 'integer', default: 5000, unit: 'ms' },
  logger: { check: 'own', native: [] },
  maxRevokedSessions: { check: 'integer', min: 1, default: 100000 },
  maxTokenLifetime: { check: 'integer', min: 1, default: 7 * 24 * 3600, unit: 's' },
  onConnect: { check: 'own', native: ['onConnect'] },
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
  if (typeof history.size === 'number') return [rule(collectionRoom('*'), history)]
  return Object.entries(history).flatMap(([key, v]) => roomPatterns(key).map((p) => rule(p, v)))
}

/**
 * The rooms a key of the options that apply to rooms names: a room name or `prefix*` (a key
 * with ':' or ending in '*'), or a bare name, which is both a collection's slug (its room
 * `collection:<slug>`) and the app room of that exact name.
 */
function roomPatterns(key) {
  return key.includes(':') || key.endsWith('*') ? [key] : [collectionRoom(key), key]
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
  if (presence === true) return [collectionRoom('*')]
  if (!Array.isArray(presence) || presence.some((p) => typeof p !== 'string' || p === '')) {
    throw new TypeError('payload-realtime: `presence` must be true or an array of collection slugs / room patterns')
  }
  return presence.flatMap(roomPatterns)
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
module.exports = {
  SERVER_OPTION_SPECS,
  SERVER_OPTIONS,
  PLUGIN_OPTIONS,
  nativeOptions,
  nativeShape,
  loggerOption,
  joinRules,
  roomMatches,
}
