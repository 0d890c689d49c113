// payload-realtime/client: a dependency-free client for browsers and Node.
//
// One WebSocket, a set of rooms (one per subscribed collection) and a table of pending requests.
// The rooms are the state of truth: whenever a socket opens, every room is joined on it, so
// subscriptions made while offline and rooms held before a reconnect are (re)joined the same way.
// Nothing here throws into user code: failures are `error` events (see `RealtimeClientError`).

import { SseTransport } from './sse.mjs'

const EVENT_TYPES = new Set(['create', 'update', 'delete'])

/** Close codes with a meaning for the client (see the contract). */
export const CloseCodes = Object.freeze({
  NORMAL: 1000,
  /** The server is draining or the socket was idle: reconnect (elsewhere). */
  GOING_AWAY: 1001,
  PROTOCOL_ERROR: 1002,
  INVALID_PAYLOAD: 1007,
  MESSAGE_TOO_BIG: 1009,
  INTERNAL_ERROR: 1011,
  /** A limit was full when the token came: retry with backoff. */
  TRY_AGAIN_LATER: 1013,
  TOKEN_EXPIRED: 4001,
  SESSION_REVOKED: 4003,
  /** The first-message token was missing, late or refused: ask `getToken` for a fresh one. */
  UNAUTHORIZED: 4004,
  SLOW_CONSUMER: 4008,
  /** Kept sending past the rate limit after `rate-limited`. */
  RATE_LIMITED: 4029,
})

/** The reconnect defaults: delays in milliseconds. */
export const DEFAULT_RECONNECT = Object.freeze({
  initialDelay: 500,
  maxDelay: 30_000,
  factor: 2,
  maxAttempts: Infinity,
  stableAfter: 5_000,
})

/** Offsets remembered per room to drop duplicates after a recovery. */
const SEEN_OFFSETS = 4096

const DEFAULT_REQUEST_TIMEOUT = 10_000

/**
 * The liveness defaults, in ms: after `interval` with nothing received the client sends a
 * `{ type: 'ping' }`; if nothing at all arrives within `timeout` after it, the connection is
 * taken for dead (a server that vanished without a close, a NAT that forgot the flow, a laptop
 * that slept) and replaced. Well under the server's `idleTimeout` (120 s), so the pings also
 * keep a quiet connection from being closed as idle.
 */
export const DEFAULT_LIVENESS = Object.freeze({
  interval: 25_000,
  timeout: 10_000,
})

/** An error reported by the client or the server; `code` tells which. */
export class RealtimeClientError extends Error {
  constructor(code, message, details) {
    super(message)
    this.name = 'RealtimeClientError'
    this.code = code
    if (details) {
      for (const [k, v] of Object.entries(details)) {
        if (v !== undefined && k !== 'message' && k !== 'code') this[k] = v
      }
    }
  }
}

/**
 * The delay before reconnect attempt `attempt` (0 for the first one): "full jitter", a uniform
 * random delay from 0 up to min(maxDelay, initialDelay * factor^attempt).
 */
export function backoffDelay(attempt, options = {}, random = Math.random) {
  const { initialDelay, maxDelay, factor } = { ...DEFAULT_RECONNECT, ...options }
  const n = Math.max(0, Math.floor(Number(attempt) || 0))
  const ceiling = Math.min(maxDelay, initialDelay * Math.pow(factor, n))
  const r = Math.min(Math.max(Number(random()) || 0, 0), 1)
  return Math.floor(r * (Number.isFinite(ceiling) ? ceiling : maxDelay))
}

/**
 * Parses a subscription: `'posts'` and `'posts.*'` (every message of collection `posts`) or
 * `'posts.update'` (only `update` messages). The part after the last dot is the type. The same
 * names app rooms (`publish`): `'order.created'` is type `created` of room `order`, and
 * `'role:admin.plugin-installed'` of room `role:admin` (see `subscribe`).
 */
export function parseSubscription(subscription) {
  if (typeof subscription !== 'string' || subscription.trim() === '') {
    throw new TypeError('payload-realtime/client: a subscription is a string like "posts" or "posts.update"')
  }
  const s = subscription.trim()
  const dot = s.lastIndexOf('.')
  if (dot <= 0 || dot === s.length - 1) return { collection: s, type: null }
  const type = s.slice(dot + 1)
  return { collection: s.slice(0, dot), type: type === '*' ? null : type }
}

const isObject = (v) => v !== null && typeof v === 'object' && !Array.isArray(v)
const isId = (v) => typeof v === 'string' || (typeof v === 'number' && Number.isFinite(v))

/**
 * Checks a parsed server message. Returns an error string, or null when it is usable.
 * Collection events must carry `collection` and `id`; replies their `id`; errors a `code`.
 */
export function validateMessage(msg) {
  if (!isObject(msg)) return 'not a JSON object'
  if (typeof msg.type !== 'string' || msg.type === '') return 'no "type"'
  if (EVENT_TYPES.has(msg.type) && 'collection' in msg) {
    if (typeof msg.collection !== 'string' || msg.collection === '') return 'an event without a valid "collection"'
    if (!isId(msg.id)) return 'an event without a valid "id"'
    if (msg.doc !== undefined && msg.doc !== null && !isObject(msg.doc)) return 'an event whose "doc" is not an object'
    if (msg.timestamp !== undefined && typeof msg.timestamp !== 'string')
      return 'an event whose "timestamp" is not a string'
  } else if ('collection' in msg && typeof msg.collection !== 'string') {
    return 'a "collection" that is not a string'
  }
  if (msg.type === 'ack' && !isId(msg.id)) return 'an ack without an "id"'
  if (msg.type === 'error' && typeof msg.code !== 'string') return 'an error without a "code"'
  if ('id' in msg && msg.id !== null && !isId(msg.id)) return 'an "id" that is neither a string nor a number'
  return null
}

const hasToken = (token) => token !== undefined && token !== null && token !== ''

/**
 * The URL to connect to with `token`: `?token=` only with `tokenInUrl`; otherwise `?auth=message`
 * (the token goes in the first message, never in a URL that proxies and APM tools log).
 */
function connectUrl(url, token, tokenInUrl) {
  if (!hasToken(token)) return url
  const u = new URL(url)
  if (tokenInUrl) u.searchParams.set('token', String(token))
  else u.searchParams.set('auth', 'message')
  return u.toString()
}

function transportsOption(transports) {
  if (transports === undefined) return ['websocket', 'sse']
  const ok =
    Array.isArray(transports) && transports.length > 0 && transports.every((t) => t === 'websocket' || t === 'sse')
  if (!ok) {
    throw new TypeError("payload-realtime/client: `transports` is a non-empty list of 'websocket' and 'sse'")
  }
  return [...new Set(transports)]
}

function normalizeUrl(url) {
  if (typeof url !== 'string' || url === '') throw new TypeError('payload-realtime/client: `url` is required')
  const u = new URL(url, typeof location !== 'undefined' ? location.href : undefined)
  if (u.protocol === 'http:') u.protocol = 'ws:'
  else if (u.protocol === 'https:') u.protocol = 'wss:'
  if (u.protocol !== 'ws:' && u.protocol !== 'wss:') {
    throw new TypeError(`payload-realtime/client: \`url\` must be ws://, wss://, http:// or https://, got ${url}`)
  }
  return u.toString()
}

function livenessOptions(liveness) {
  if (liveness === false) return null
  if (liveness !== undefined && liveness !== true && !isObject(liveness)) {
    throw new TypeError('payload-realtime/client: `liveness` must be false or { interval, timeout }')
  }
  const o = { ...DEFAULT_LIVENESS, ...(isObject(liveness) ? liveness : {}) }
  for (const k of ['interval', 'timeout']) {
    if (typeof o[k] !== 'number' || !(o[k] > 0) || !Number.isFinite(o[k])) {
      throw new TypeError(`payload-realtime/client: liveness.${k} must be a finite number > 0`)
    }
  }
  return o
}

function reconnectOptions(reconnect) {
  if (reconnect === false) return null
  const o = { ...DEFAULT_RECONNECT, ...(isObject(reconnect) ? reconnect : {}) }
  for (const k of ['initialDelay', 'maxDelay', 'factor', 'stableAfter']) {
    if (typeof o[k] !== 'number' || !(o[k] >= 0) || !Number.isFinite(o[k])) {
      throw new TypeError(`payload-realtime/client: reconnect.${k} must be a finite number >= 0`)
    }
  }
  if (!(o.maxAttempts >= 0)) throw new TypeError('payload-realtime/client: reconnect.maxAttempts must be >= 0')
  return o
}

/**
 * Creates a client. Options:
 * - `url`: `ws://host:port/` (http/https are turned into ws/wss)
 * - `token` or `getToken(ctx)` (sync or async, called before every connection attempt with
 *   `{ reason: 'connect' | 'reconnect' | 'expired', attempt }`; return a cached token unless
 *   `reason` is `'expired'`, as after a 4001 or 4004 close). The token is sent in the first
 *   message (`?auth=message`), never in the URL
 * - `tokenInUrl`: send the token as `?token=` instead (the weakest option: proxies, load
 *   balancers and APM tools log URLs); for servers older than first-message auth
 * - `WebSocket`: a WebSocket implementation (e.g. `ws` on Node 20); default `globalThis.WebSocket`
 * - `reconnect`: `false`, or `{ initialDelay, maxDelay, factor, maxAttempts, stableAfter }`
 * - `requestTimeout`: default timeout of `request()` in ms (10000)
 * - `autoConnect`: connect right away (default true); otherwise call `connect()`
 * - `liveness`: `false`, or `{ interval, timeout }` (see `DEFAULT_LIVENESS`)
 * - `reconnectOnResume`: reconnect at once, skipping the backoff delay, when the browser comes
 *   back online or the page becomes visible again (default true; only where `window` exists)
 * - `transports`: `['websocket', 'sse']` (default): a WebSocket, and Server-Sent Events when a
 *   WebSocket handshake cannot be made (blocked by a proxy); `['sse']` or `['websocket']` for one
 * - `fetch`: the fetch implementation the SSE transport uses (default `globalThis.fetch`)
 */
export function createRealtimeClient(options) {
  return new RealtimeClient(options)
}

export class RealtimeClient {
  constructor(options = {}) {
    if (!isObject(options)) throw new TypeError('payload-realtime/client: options must be an object')
    this._url = normalizeUrl(options.url)
    if (options.getToken !== undefined && typeof options.getToken !== 'function') {
      throw new TypeError('payload-realtime/client: `getToken` must be a function')
    }
    this._token = options.token ?? null
    this._getToken = options.getToken ?? null
    this._tokenInUrl = options.tokenInUrl === true
    this._WebSocket = options.WebSocket ?? null
    this._transports = transportsOption(options.transports)
    this._fetch = options.fetch ?? null
    /** @type {'websocket' | 'sse'} the transport of the next connection attempts */
    this._transport = this._transports[0]
    this._reconnect = reconnectOptions(options.reconnect)
    this._requestTimeout = options.requestTimeout ?? DEFAULT_REQUEST_TIMEOUT
    this._random = typeof options.random === 'function' ? options.random : Math.random
    this._liveness = livenessOptions(options.liveness)
    this._reconnectOnResume = options.reconnectOnResume !== false
    this._livenessTimer = null
    this._received = 0 // messages received on the current socket (liveness)
    this._quietSince = 0 // when the current socket last received something (or was created)
    this._probe = null // { received, at }: the ping in flight, with the count when it was sent
    this._resumeListeners = null

    /** @type {'connecting' | 'open' | 'reconnecting' | 'closed'} */
    this._status = 'closed'
    /** @type {Map<string, Set<Function>>} */
    this._listeners = new Map()
    /**
     * One entry per subscribed collection: `{ collection, handlers: Set<{ type, fn }>, joined,
     * offset, epoch }`. `offset` / `epoch` are the room's position (from the join ack, then from
     * every event): sent as `since` when the room is joined again after a reconnect, so the
     * server replays what was missed; events at or before it are duplicates and are dropped.
     * @type {Map<string, { collection: string, handlers: Set<{ type: string | null, fn: Function }>, joined: boolean, app?: boolean, offset?: number, epoch?: string }>}
     */
    this._rooms = new Map()
    /** Requests by id: `{ resolve, reject, timer, message, sent, internal }`. */
    this._pending = new Map()
    this._nextId = 1
    this._ws = null
    this._wanted = false // connect() called and disconnect() not since
    /** @type {Set<string> | undefined} subscriptions already reported as never matching */
    this._warned = undefined
    this._generation = 0 // bumps on every connection attempt and on disconnect()
    this._attempt = 0 // failed attempts since the last stable connection
    this._retryTimer = null
    this._stableTimer = null
    this._tokenExpired = false
    this._everOpened = false

    if (options.autoConnect !== false) this.connect()
  }

  /** `'connecting' | 'open' | 'reconnecting' | 'closed'` */
  get status() {
    return this._status
  }

  /** `'websocket'` or `'sse'`: what the client connects with (SSE after a WebSocket fallback). */
  get transport() {
    return this._transport
  }

  /** The collections this client is subscribed to. */
  get collections() {
    return [...this._rooms.keys()]
  }

  // -------------------------------------------------------------------------------------------
  // Events: status, open, close, reconnecting, error, message

  /** Adds a listener; returns a function that removes it. */
  on(event, listener) {
    if (typeof listener !== 'function') throw new TypeError('payload-realtime/client: a listener must be a function')
    let set = this._listeners.get(event)
    if (!set) this._listeners.set(event, (set = new Set()))
    const entry = (...args) => listener(...args)
    set.add(entry)
    return () => set.delete(entry)
  }

  /** Like `on`, for one call. */
  once(event, listener) {
    const off = this.on(event, (...args) => {
      off()
      listener(...args)
    })
    return off
  }

  _emit(event, ...args) {
    const set = this._listeners.get(event)
    if (!set || set.size === 0) {
      if (event === 'error') this._unhandledError(args[0])
      return
    }
    for (const listener of [...set]) {
      try {
        const r = listener(...args)
        if (r && typeof r.then === 'function') r.then(undefined, (err) => this._listenerFailed(event, err))
      } catch (err) {
        this._listenerFailed(event, err)
      }
    }
  }

  _listenerFailed(event, err) {
    if (event === 'error') {
      // An error listener failed: reporting it as an error event again could loop.
      this._unhandledError(err)
      return
    }
    this._error('listener-error', `a "${event}" listener threw: ${errorMessage(err)}`, { cause: err, event })
  }

  _unhandledError(err) {
    if (typeof console !== 'undefined' && console.error) console.error('[payload-realtime/client]', err)
  }

  _error(code, message, details) {
    this._emit('error', new RealtimeClientError(code, message, details))
  }

  _setStatus(status, detail) {
    if (this._status === status) return
    this._status = status
    this._emit('status', status, detail)
  }

  // -------------------------------------------------------------------------------------------
  // Subscriptions

  /**
   * Calls `handler(message)` for every message of a collection: `'posts'` or `'posts.*'` (all
   * types) or `'posts.update'` (one type). Returns the function that unsubscribes. The room is
   * joined for the first handler of a collection and left after the last one.
   *
   * App events (`manager.publish(room, ...)`) are subscribed to the same way, by room and type:
   * a name with ':' (`'role:admin'`, `'orders:42.shipped'`) is an app room, joined with
   * `{ type: 'join', room }`; a bare name (`'order.created'`) is a collection, and an app room
   * when the server says it is no collection (`unknown-collection`). A name that is neither
   * (the server refuses both) can never match: it is reported once, as an `error` event
   * (`unknown-collection` for a bare name, else the server's code), not at every reconnect.
   */
  subscribe(subscription, handler) {
    const { collection, type } = parseSubscription(subscription)
    if (typeof handler !== 'function') throw new TypeError('payload-realtime/client: a handler must be a function')
    const existing = this._rooms.get(collection)
    const isNew = !existing
    const room = existing ?? { collection, handlers: new Set(), joined: false, app: collection.includes(':') }
    if (isNew) this._rooms.set(collection, room)
    // The same handler for the same subscription is one entry: called once per message, and
    // removed by either of the functions returned.
    let entry = null
    for (const e of room.handlers) if (e.type === type && e.fn === handler) entry = e
    if (!entry) {
      entry = { type, fn: handler }
      room.handlers.add(entry)
    }
    if (isNew && this._isOpen()) this._join(room)

    let active = true
    return () => {
      if (!active) return
      active = false
      room.handlers.delete(entry)
      if (room.handlers.size === 0 && this._rooms.get(collection) === room) {
        this._rooms.delete(collection)
        if (this._isOpen()) this._leave(room)
      }
    }
  }

  /** The message that joins `room`, with `since` when the room's position is known. */
  _joinMessage(room, id) {
    const msg = room.app
      ? { type: 'join', room: room.collection, id }
      : { type: 'join-collection', collection: room.collection, id }
    if (typeof room.epoch === 'string' && Number.isInteger(room.offset)) {
      msg.since = { offset: room.offset, epoch: room.epoch }
    }
    return msg
  }

  _join(room) {
    const ws = this._ws
    const id = this._newId()
    this._internalRequest(this._joinMessage(room, id), (reply) => {
      if (this._ws !== ws || this._rooms.get(room.collection) !== room) return
      if (reply.type === 'error' && reply.code === 'unknown-collection' && !room.app) {
        // No such collection: an app room of that name, then.
        room.app = true
        this._join(room)
      } else if (reply.type === 'error' && room.app && (reply.code === 'forbidden' || reply.code === 'bad-message')) {
        room.joined = false
        // A bare name was no collection either: still reported as `unknown-collection`.
        this._warnOnce(
          room.collection,
          room.collection.includes(':') ? reply.code : 'unknown-collection',
          `"${room.collection}" is neither a collection nor a room this client may join (${reply.code}): its subscriptions get no message`,
          reply,
        )
      } else if (reply.type === 'error') {
        room.joined = false
        this._error(reply.code, `could not join "${room.collection}": ${reply.message ?? reply.code}`, {
          collection: room.collection,
          reply,
        })
      } else {
        room.joined = true
        // The room's position at the join; after a successful recovery the replayed events
        // move it on, so only adopt it when there was none or recovery was not possible.
        const position = reply.positions?.[room.collection]
        if (position && (room.epoch === undefined || reply.recovered === false)) {
          if (position.epoch !== room.epoch) room.seen = new Set()
          room.offset = position.offset
          room.epoch = position.epoch
        }
      }
    })
  }

  /** Reports a subscription that can never match, once per name for this client. */
  _warnOnce(name, code, message, reply) {
    this._warned ??= new Set()
    if (this._warned.has(name)) return
    this._warned.add(name)
    this._error(code, message, { collection: name, reply })
  }

  _leave(room) {
    room.joined = false
    const id = this._newId()
    const message = room.app
      ? { type: 'leave', room: room.collection, id }
      : { type: 'leave-collection', collection: room.collection, id }
    this._internalRequest(message, (reply) => {
      if (reply.type === 'error') {
        this._error(reply.code, `could not leave "${room.collection}": ${reply.message ?? reply.code}`, {
          collection: room.collection,
          reply,
        })
      }
    })
  }

  /** Sends a message whose reply only matters to the client itself (joins, leaves). */
  _internalRequest(message, onReply) {
    this._pending.set(message.id, { internal: true, onReply, sent: true, message })
    this._sendNow(message)
  }

  // -------------------------------------------------------------------------------------------
  // Requests

  /**
   * Sends `{ ...data, type, id }` and resolves with the reply carrying that `id`; rejects with a
   * `RealtimeClientError` (the server's `code` and `message`) on an `error` reply, on timeout
   * (`code: 'timeout'`), if the connection drops before the reply (`'connection-lost'`) or on
   * `disconnect()` (`'disconnected'`). Requests made while offline are sent once connected.
   */
  request(type, data = {}, options = {}) {
    if (typeof type !== 'string' || type === '') {
      return Promise.reject(new TypeError('payload-realtime/client: request type must be a non-empty string'))
    }
    if (data !== undefined && data !== null && !isObject(data)) {
      return Promise.reject(new TypeError('payload-realtime/client: request data must be an object'))
    }
    if (!this._wanted) {
      return Promise.reject(
        new RealtimeClientError('disconnected', `cannot send "${type}": the client is not connected`, { type }),
      )
    }
    const id = this._newId()
    const message = { ...(data ?? {}), type, id }
    const timeout = options.timeout ?? this._requestTimeout
    return new Promise((resolve, reject) => {
      const pending = {
        internal: false,
        resolve,
        reject,
        message,
        sent: false,
        timer: /** @type {ReturnType<typeof setTimeout> | null} */ (null),
      }
      if (timeout > 0 && Number.isFinite(timeout)) {
        pending.timer = setTimeout(() => {
          this._pending.delete(id)
          reject(new RealtimeClientError('timeout', `no reply to "${type}" within ${timeout} ms`, { type }))
        }, timeout)
      }
      this._pending.set(id, pending)
      if (this._isOpen()) {
        pending.sent = true
        this._sendNow(message)
      }
    })
  }

  /**
   * Sends `message` (an object with a string `type`) as it is, without waiting for a reply.
   * Returns true if it was sent, false if the connection is not open (nothing is queued: use
   * `request()` for messages that must arrive, `subscribe()` for rooms).
   */
  send(message) {
    if (!isObject(message) || typeof message.type !== 'string' || message.type === '') {
      throw new TypeError('payload-realtime/client: send() takes an object with a string `type`')
    }
    if (!this._isOpen()) return false
    return this._sendNow(message)
  }

  _newId() {
    return `rt:${this._nextId++}`
  }

  _settle(pending, reply) {
    if (pending.timer) clearTimeout(pending.timer)
    if (pending.internal) {
      pending.onReply(reply)
    } else if (reply.type === 'error') {
      pending.reject(
        new RealtimeClientError(reply.code, reply.message ?? reply.code, { type: pending.message.type, reply }),
      )
    } else {
      pending.resolve(reply)
    }
  }

  /** Rejects requests already sent on a socket that is gone (their replies cannot come). */
  _failSent(code, message) {
    for (const [id, p] of this._pending) {
      if (!p.sent) continue
      this._pending.delete(id)
      if (p.internal) continue
      if (p.timer) clearTimeout(p.timer)
      p.reject(new RealtimeClientError(code, message, { type: p.message.type }))
    }
  }

  _failAll(code, message) {
    for (const [id, p] of this._pending) {
      this._pending.delete(id)
      if (p.internal) continue
      if (p.timer) clearTimeout(p.timer)
      p.reject(new RealtimeClientError(code, message, { type: p.message.type }))
    }
  }

  // -------------------------------------------------------------------------------------------
  // Connection

  _isOpen() {
    return this._status === 'open' && this._ws !== null
  }

  _sendNow(message) {
    try {
      this._ws.send(JSON.stringify(message))
      return true
    } catch (err) {
      this._error('send-failed', `could not send "${message.type}": ${errorMessage(err)}`, { cause: err })
      return false
    }
  }

  /** Connects (again, after `disconnect()`); does nothing if already connecting or open. */
  connect() {
    if (this._wanted) return
    const WS = this._WebSocket ?? globalThis.WebSocket
    if (typeof WS !== 'function' && this._sseAvailable()) {
      this._transport = 'sse'
    } else if (typeof WS !== 'function') {
      throw new TypeError(
        'payload-realtime/client: no WebSocket implementation; pass `WebSocket` (e.g. from the `ws` package on Node 20)',
      )
    }
    this._WebSocket = WS
    this._wanted = true
    this._attempt = 0
    this._listenForResume()
    this._open('connect')
  }

  /** Closes the connection (1000) and stops reconnecting; subscriptions are kept for `connect()`. */
  disconnect() {
    const wasActive = this._wanted || this._ws !== null
    this._wanted = false
    this._generation++
    this._clearTimers()
    this._failAll('disconnected', 'the client was disconnected')
    for (const room of this._rooms.values()) room.joined = false
    const ws = this._ws
    this._ws = null
    if (ws) closeQuietly(ws, 1000, 'client disconnect')
    if (wasActive) {
      this._setStatus('closed', { code: 1000, reason: 'client disconnect' })
      this._emit('close', { code: 1000, reason: 'client disconnect', wasClean: true })
    }
  }

  _clearTimers() {
    if (this._retryTimer) clearTimeout(this._retryTimer)
    if (this._stableTimer) clearTimeout(this._stableTimer)
    if (this._livenessTimer) clearTimeout(this._livenessTimer)
    this._retryTimer = null
    this._stableTimer = null
    this._livenessTimer = null
    this._unlistenForResume()
  }

  // -------------------------------------------------------------------------------------------
  // Liveness: a connection can die without a close (server host gone, NAT timeout, sleep); only
  // traffic proves it alive. Any message counts; when there is none for `interval`, a ping asks
  // for one, and `timeout` later with still nothing the socket is dropped and replaced.

  _watch(ws) {
    if (!this._liveness) return
    this._received = 0
    this._quietSince = Date.now()
    this._probe = null
    this._armLiveness(ws, this._liveness.interval)
  }

  _armLiveness(ws, delay) {
    if (this._livenessTimer) clearTimeout(this._livenessTimer)
    this._livenessTimer = setTimeout(
      () => {
        this._livenessTimer = null
        this._checkLiveness(ws)
      },
      Math.max(0, delay),
    )
  }

  _checkLiveness(ws) {
    if (this._ws !== ws || !this._liveness) return
    const { interval, timeout } = this._liveness
    const now = Date.now()
    if (this._probe) {
      if (this._received > this._probe.received) {
        this._probe = null // answered (by the pong or anything else)
      } else {
        const waited = now - this._probe.at
        if (waited >= timeout) return this._dead(ws, `no reply to a ping within ${timeout} ms`)
        return this._armLiveness(ws, timeout - waited)
      }
    }
    const quiet = now - this._quietSince
    if (!this._isOpen()) {
      // Still handshaking or authenticating (no ping may go before the auth ack).
      if (quiet >= interval + timeout) return this._dead(ws, `not open within ${interval + timeout} ms`)
      return this._armLiveness(ws, interval + timeout - quiet)
    }
    if (quiet < interval) return this._armLiveness(ws, interval - quiet)
    this._ping(ws)
  }

  /** Sends a ping now (its pong is consumed here) and expects traffic within `timeout`. */
  _ping(ws) {
    this._probe = { received: this._received, at: Date.now() }
    const id = this._newId()
    this._pending.set(id, { internal: true, sent: true, message: { type: 'ping', id }, onReply: () => {} })
    this._sendNow({ type: 'ping', id })
    this._armLiveness(ws, this._liveness.timeout)
  }

  /** Drops a socket found dead: no close handshake can complete on it, so none is awaited. */
  _dead(ws, why) {
    if (this._ws !== ws) return
    this._ws = null
    terminate(ws)
    this._onClose({ code: 1006, reason: `liveness: ${why}`, wasClean: false })
  }

  // -------------------------------------------------------------------------------------------
  // Resume: back online, or the page visible again (a phone unlocked, a laptop woken, a tab
  // returned to), is when a connection is most likely needed and most likely dead.

  _listenForResume() {
    if (!this._reconnectOnResume || this._resumeListeners) return
    const win = typeof window !== 'undefined' ? window : null
    const doc = typeof document !== 'undefined' ? document : null
    if (!win || typeof win.addEventListener !== 'function') return
    const onOnline = () => this._resume('online')
    const onVisible = () => {
      if (doc && doc.visibilityState === 'visible') this._resume('visible')
    }
    win.addEventListener('online', onOnline)
    doc?.addEventListener?.('visibilitychange', onVisible)
    this._resumeListeners = () => {
      win.removeEventListener('online', onOnline)
      doc?.removeEventListener?.('visibilitychange', onVisible)
    }
  }

  _unlistenForResume() {
    if (!this._resumeListeners) return
    this._resumeListeners()
    this._resumeListeners = null
  }

  /**
   * Waiting for a retry: retry now, from the first backoff step. Open: check the connection
   * with a ping at once rather than after `interval` (it may have died while asleep).
   */
  _resume(why) {
    if (!this._wanted) return
    if (this._retryTimer) {
      clearTimeout(this._retryTimer)
      this._retryTimer = null
      this._attempt = 0
      this._emit('resume', { reason: why })
      this._open('reconnect')
    } else if (this._isOpen() && this._liveness && !this._probe) {
      this._ping(this._ws)
    }
  }

  async _open(reason) {
    const generation = ++this._generation
    this._setStatus(reason === 'connect' ? 'connecting' : 'reconnecting')

    let token = this._token
    if (this._getToken) {
      const why = this._tokenExpired ? 'expired' : reason
      try {
        token = await this._getToken({ reason: why, attempt: this._attempt })
      } catch (err) {
        if (generation !== this._generation) return
        this._error('token-error', `getToken failed: ${errorMessage(err)}`, { cause: err })
        this._scheduleReconnect({ code: 0, reason: 'getToken failed' })
        return
      }
      if (generation !== this._generation) return
      this._tokenExpired = false
    }

    const sse = this._transport === 'sse'
    const inMessage = hasToken(token) && !this._tokenInUrl && !sse
    let ws
    let opened = false
    try {
      ws = sse
        ? new SseTransport({
            url: this._url,
            token,
            fetch: this._fetch ?? undefined,
            // A stream not answered within the liveness timeout is as dead as a silent socket.
            openTimeout: this._liveness?.timeout,
          })
        : new this._WebSocket(connectUrl(this._url, token, this._tokenInUrl))
    } catch (err) {
      this._error('connect-failed', `could not open a WebSocket: ${errorMessage(err)}`, { cause: err })
      this._scheduleReconnect({ code: 0, reason: 'WebSocket constructor failed' })
      return
    }
    this._ws = ws
    this._watch(ws)
    let closed = false
    ws.onopen = () => {
      opened = true
      if (this._ws !== ws) return
      if (!inMessage) return this._onOpen()
      // First-message auth: the socket is ours once the server acks the token (a refusal
      // closes it with 4004 or 1013 instead).
      const id = this._newId()
      this._pending.set(id, {
        internal: true,
        sent: true,
        message: { type: 'auth', id },
        onReply: (reply) => {
          if (this._ws === ws && reply.type === 'ack') this._onOpen()
        },
      })
      this._sendNow({ type: 'auth', token: String(token), id })
    }
    ws.onmessage = (event) => {
      if (this._ws !== ws) return
      this._received++
      this._quietSince = Date.now()
      if (this._probe) {
        // The ping is answered (by its pong or anything else): next check after `interval`.
        this._probe = null
        this._armLiveness(ws, this._liveness.interval)
      }
      this._onMessage(event.data)
    }
    ws.onerror = () => {
      // Browsers give no detail here; the close event that follows says what happened.
    }
    ws.onclose = (event) => {
      if (closed) return
      closed = true
      if (this._ws !== ws) return
      this._ws = null
      if (!sse && !opened && this._transports.includes('sse') && this._sseAvailable()) {
        // The WebSocket handshake could not be made (a proxy that refuses upgrades, a network
        // that blocks them): Server-Sent Events from the next attempt on.
        this._transport = 'sse'
        this._emit('transport', { transport: 'sse', code: event?.code ?? 1006 })
      } else if (sse && !ws.streamed && this._transports.includes('websocket')) {
        // No stream either (the server is down, or refused it): the WebSocket again next time.
        this._transport = 'websocket'
        this._emit('transport', { transport: 'websocket', code: event?.code ?? 1006 })
      }
      this._onClose({ code: event?.code ?? 1006, reason: event?.reason ?? '', wasClean: Boolean(event?.wasClean) })
    }
  }

  _sseAvailable() {
    return this._transports.includes('sse') && typeof (this._fetch ?? globalThis.fetch) === 'function'
  }

  _onOpen() {
    this._everOpened = true
    this._setStatus('open')
    this._emit('open')
    if (this._stableTimer) clearTimeout(this._stableTimer)
    if (this._reconnect) {
      this._stableTimer = setTimeout(() => {
        this._stableTimer = null
        this._attempt = 0
      }, this._reconnect.stableAfter)
    }
    // Every room, then every request queued while offline, in that order.
    for (const room of this._rooms.values()) {
      room.joined = false
      if (this._isOpen()) this._join(room)
    }
    for (const p of [...this._pending.values()]) {
      if (p.sent || !this._isOpen()) continue
      p.sent = true
      this._sendNow(p.message)
    }
  }

  _onClose(info) {
    if (this._stableTimer) clearTimeout(this._stableTimer)
    if (this._livenessTimer) clearTimeout(this._livenessTimer)
    this._stableTimer = null
    this._livenessTimer = null
    this._probe = null
    for (const room of this._rooms.values()) room.joined = false
    this._failSent('connection-lost', `the connection closed (${info.code}) before the reply`)
    this._emit('close', info)
    if (!this._wanted) return

    if (info.code === CloseCodes.SESSION_REVOKED) {
      this._stop(info, 'session-revoked', 'the session was revoked (4003); not reconnecting')
      return
    }
    if (info.code === CloseCodes.TOKEN_EXPIRED) {
      if (!this._getToken) {
        this._stop(info, 'token-expired', 'the token expired (4001) and there is no getToken to renew it')
        return
      }
      this._tokenExpired = true
    }
    if (info.code === CloseCodes.UNAUTHORIZED) {
      // The same token would be refused again: only a fresh one from getToken can help.
      if (!this._getToken) {
        this._stop(info, 'unauthorized', 'the token was refused (4004) and there is no getToken to renew it')
        return
      }
      this._tokenExpired = true
    }
    this._scheduleReconnect(info)
  }

  _stop(info, code, message) {
    this._wanted = false
    this._generation++
    this._clearTimers()
    this._failAll(code ?? 'connection-lost', message ?? `the connection closed (${info.code})`)
    this._setStatus('closed', info)
    if (code) this._error(code, message, { closeCode: info.code })
  }

  _scheduleReconnect(info) {
    if (!this._wanted) return
    const r = this._reconnect
    if (!r) {
      this._stop(info, null)
      return
    }
    if (this._attempt >= r.maxAttempts) {
      this._stop(info, 'reconnect-failed', `gave up after ${this._attempt} reconnect attempts`)
      return
    }
    const attempt = this._attempt++
    const delay = backoffDelay(attempt, r, this._random)
    this._setStatus('reconnecting', info)
    this._emit('reconnecting', { attempt: attempt + 1, delay, code: info.code, reason: info.reason })
    const generation = this._generation
    this._retryTimer = setTimeout(() => {
      this._retryTimer = null
      if (generation !== this._generation || !this._wanted) return
      this._open('reconnect')
    }, delay)
  }

  // -------------------------------------------------------------------------------------------
  // Incoming messages

  _onMessage(data) {
    if (typeof data !== 'string') {
      this._error('bad-message', 'the server sent a binary frame; only JSON text is expected', { data })
      return
    }
    let msg
    try {
      msg = JSON.parse(data)
    } catch {
      this._error('bad-message', 'the server sent a message that is not JSON', { data })
      return
    }
    const problem = validateMessage(msg)
    if (problem) {
      this._error('bad-message', `the server sent a malformed message: ${problem}`, { data })
      return
    }

    const isEvent = EVENT_TYPES.has(msg.type) && typeof msg.collection === 'string'
    if (!isEvent && msg.id !== undefined && this._pending.has(msg.id)) {
      const pending = this._pending.get(msg.id)
      this._pending.delete(msg.id)
      this._settle(pending, msg)
      return
    }
    if (msg.type === 'error') {
      // Not a reply to anything pending: also a `message`, for listeners of any type.
      this._emit('message', msg)
      this._error(msg.code, msg.message ?? msg.code, { reply: msg })
      return
    }

    this._emit('message', msg)
    if (msg.type === 'recovery-failed') {
      // What was missed while away cannot be replayed: the app should refetch. Not an event, so
      // not for the collection's event handlers.
      this._emit('recovery-failed', { collection: msg.collection, room: msg.room, reason: msg.reason })
      return
    }
    // Collection events by their collection; anything naming its room (app events, presence) by
    // the room, whatever its own fields say (an app event may well carry a `collection`).
    if (isEvent) this._dispatch(msg, this._rooms.get(msg.collection))
    else if (typeof msg.room === 'string') this._dispatch(msg, this._appRoom(msg.room))
    else if (typeof msg.collection === 'string') this._dispatch(msg, this._rooms.get(msg.collection))
  }

  /** The subscription an app event of `room` goes to (one in a collection's room: that collection's). */
  _appRoom(name) {
    const room = this._rooms.get(name)
    if (room?.app) return room
    const collection = name.startsWith('collection:') ? this._rooms.get(name.slice('collection:'.length)) : undefined
    return collection && !collection.app ? collection : undefined
  }

  _dispatch(msg, room) {
    if (!room) return
    if (Number.isInteger(msg.offset) && typeof msg.epoch === 'string') {
      // Each event once: a replayed event the client already has is dropped. Offsets are
      // remembered as a set (the last few thousand), not as a maximum: with several emitting
      // instances, a lower offset can arrive after a higher one and is still new.
      if (msg.epoch !== room.epoch) {
        room.epoch = msg.epoch
        room.seen = new Set()
        room.offset = 0
      }
      room.seen ??= new Set()
      if (room.seen.has(msg.offset)) return
      room.seen.add(msg.offset)
      if (room.seen.size > SEEN_OFFSETS) room.seen.delete(room.seen.values().next().value)
      if (!(msg.offset <= room.offset)) room.offset = msg.offset
    }
    for (const entry of [...room.handlers]) {
      // 'posts' and 'posts.*' get every message naming the collection (events, broadcasts,
      // presence-join/leave); 'posts.<type>' exactly that type.
      if (entry.type !== null && entry.type !== msg.type) continue
      if (!room.handlers.has(entry)) continue // unsubscribed by an earlier handler
      try {
        const r = entry.fn(msg)
        if (r && typeof r.then === 'function') {
          r.then(undefined, (err) => this._handlerFailed(msg, err))
        }
      } catch (err) {
        this._handlerFailed(msg, err)
      }
    }
  }

  _handlerFailed(msg, err) {
    this._error('handler-error', `a handler for "${msg.collection ?? msg.room}" threw: ${errorMessage(err)}`, {
      cause: err,
      collection: msg.collection ?? msg.room,
      event: msg,
    })
  }
}

function errorMessage(err) {
  return err instanceof Error ? err.message : String(err)
}

/** Closes at once, without the closing handshake a dead peer cannot answer. */
function terminate(ws) {
  if (typeof ws.terminate === 'function') {
    // `ws` (Node): destroys the TCP socket; its close() would wait 30 s for the peer.
    ws.onopen = null
    ws.onmessage = null
    ws.onclose = null
    ws.onerror = () => {}
    try {
      ws.terminate()
    } catch {
      // already gone
    }
    return
  }
  closeQuietly(ws, 4000, 'liveness timeout')
}

function closeQuietly(ws, code, reason) {
  try {
    ws.onopen = null
    ws.onmessage = null
    ws.onclose = null
    ws.onerror = () => {}
    ws.close(code, reason)
  } catch {
    // already closed or closing
  }
}

export default createRealtimeClient

export { liveQuery, LiveQuery, LIVE_QUERY_DEFAULTS, matchWhere, makeComparator, toQueryString } from './live-query.mjs'
