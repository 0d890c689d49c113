// payload-realtime/client: live queries. A list loaded through Payload's REST API and kept equal
// to what the same query would return now, by applying the collection's events as they come.
//
// The rule everywhere: an event is applied in place only when the result is certain (the `where`
// and the sort could be evaluated on the event's document); anything else refetches (debounced).
// A refetch is never wrong, only slower, so every doubt becomes one.

import { RealtimeClientError } from './index.mjs'

/** The defaults of `liveQuery` options (milliseconds). */
export const LIVE_QUERY_DEFAULTS = Object.freeze({
  /** Refetches asked for within this window become one. */
  debounce: 50,
  /** The REST API's base, as Payload serves it on the page's origin. */
  apiUrl: '/api',
  /** Sent with the REST request: the viewer's cookie (`payload-token`) on the same site. */
  credentials: 'include',
  /** Relationships as ids, as the events carry them. */
  depth: 0,
  /** Events kept while a load is under way, to apply to its result; past it, it loads again. */
  maxPendingEvents: 1000,
})

const OPERATORS = new Set([
  'equals',
  'not_equals',
  'in',
  'not_in',
  'exists',
  'greater_than',
  'greater_than_equal',
  'less_than',
  'less_than_equal',
  'like',
  'contains',
])

const isPlainObject = (v) =>
  v !== null && typeof v === 'object' && !Array.isArray(v) && Object.getPrototypeOf(v) === Object.prototype

/** A value that cannot be compared here (arrays, objects): its result is unknown. */
const isScalar = (v) => v === null || typeof v === 'string' || typeof v === 'number' || typeof v === 'boolean'

// ---------------------------------------------------------------------------------------------
// Query strings, as Payload's REST API reads them (qs bracket syntax)

/**
 * `{ where: { title: { equals: 'a' } }, limit: 3 }` -> `where[title][equals]=a&limit=3`, the
 * bracket syntax of `qs` that Payload parses (arrays with indices, Dates as ISO strings).
 */
export function toQueryString(params) {
  const parts = []
  const add = (key, value) => {
    if (value === undefined) return
    if (value instanceof Date) value = value.toISOString()
    if (Array.isArray(value)) {
      value.forEach((v, i) => add(`${key}[${i}]`, v))
    } else if (value !== null && typeof value === 'object') {
      for (const [k, v] of Object.entries(value)) add(`${key}[${k}]`, v)
    } else {
      parts.push(`${encodeURIComponent(key)}=${encodeURIComponent(value === null ? 'null' : String(value))}`)
    }
  }
  for (const [k, v] of Object.entries(params)) add(k, v)
  return parts.join('&')
}

// ---------------------------------------------------------------------------------------------
// Where, evaluated on one document: true, false, or undefined (cannot tell here)

/** The value at a dotted `path`, or `undefined` when it is absent or behind a non-object. */
function valueAt(doc, path) {
  let v = doc
  for (const part of path.split('.')) {
    if (!isPlainObject(v) || !Object.hasOwn(v, part)) return undefined
    v = v[part]
  }
  return v
}

/** `want` coerced to the type of the document's value (query strings carry only strings). */
function coerce(have, want) {
  if (want instanceof Date) want = want.toISOString()
  if (typeof have === 'number' && typeof want === 'string' && want.trim() !== '' && Number.isFinite(Number(want)))
    return Number(want)
  if (typeof have === 'boolean' && (want === 'true' || want === 'false')) return want === 'true'
  if (typeof have === 'string' && typeof want === 'number') return String(want)
  return want
}

function same(have, want) {
  want = coerce(have, want)
  if (!isScalar(want)) return undefined
  return have === want
}

function order(have, want) {
  want = coerce(have, want)
  if (!isScalar(want) || want === null || typeof have !== typeof want) return undefined
  return have < want ? -1 : have > want ? 1 : 0
}

function listOf(want) {
  if (Array.isArray(want)) return want
  if (typeof want === 'string') return want.split(',')
  return undefined
}

/** A `like` / `contains` pattern that SQL and Mongo read the same way as a plain substring. */
const plainPattern = (s) => typeof s === 'string' && !/[%_\\[\]*.?+^$(){}|]/.test(s) && /^[\x20-\x7e]*$/.test(s)

function testOperator(op, have, want) {
  if (!isScalar(have)) return undefined // hasMany values, groups, populated relationships
  switch (op) {
    case 'equals':
      if (want === null) return have === null
      // 'null' is null for a relationship or date field, the text itself for a text field.
      if (want === 'null') return have === null || have === 'null' ? undefined : false
      return have === null ? false : same(have, want)
    case 'not_equals':
      if (want === null) return have !== null
      if (want === 'null') return have === null || have === 'null' ? undefined : true
      if (have === null) return true // Payload: `IS NULL OR <>`
      return negate(same(have, want))
    case 'in':
    case 'not_in': {
      const list = listOf(want)
      if (!list || list.length === 0 || list.some((w) => w === null || w === 'null')) return undefined
      if (have === null) return op === 'in' ? false : undefined // NOT IN differs between adapters
      let found = false
      for (const w of list) {
        const r = same(have, w)
        if (r === undefined) return undefined
        if (r) found = true
      }
      return op === 'in' ? found : !found
    }
    case 'exists': {
      if (want !== true && want !== false && want !== 'true' && want !== 'false') return undefined
      return (want === true || want === 'true') === (have !== null)
    }
    case 'greater_than':
    case 'greater_than_equal':
    case 'less_than':
    case 'less_than_equal': {
      if (have === null) return false
      const c = order(have, want)
      if (c === undefined) return undefined
      if (op === 'greater_than') return c > 0
      if (op === 'greater_than_equal') return c >= 0
      if (op === 'less_than') return c < 0
      return c <= 0
    }
    case 'like':
    case 'contains': {
      if (have === null) return false
      if (typeof have === 'number') return op === 'like' ? same(have, want) : undefined
      if (typeof have !== 'string' || !plainPattern(want) || !/^[\x20-\x7e]*$/.test(have)) return undefined
      const text = have.toLowerCase()
      // `like`: every word somewhere; `contains`: the whole string somewhere (case-insensitive).
      const words = op === 'like' ? want.toLowerCase().split(' ') : [want.toLowerCase()]
      return words.every((w) => text.includes(w))
    }
    default:
      return undefined
  }
}

const negate = (r) => (r === undefined ? undefined : !r)

/** Three-valued AND: false wins, then unknown. */
function all(results) {
  let unknown = false
  for (const r of results) {
    if (r === false) return false
    if (r === undefined) unknown = true
  }
  return unknown ? undefined : true
}

/** Three-valued OR: true wins, then unknown. */
function any(results) {
  let unknown = false
  for (const r of results) {
    if (r === true) return true
    if (r === undefined) unknown = true
  }
  return unknown ? undefined : false
}

/**
 * Whether `doc` matches the Payload `where`: `true`, `false`, or `undefined` when it cannot be
 * told here (an operator not evaluated locally, a field absent from the document, a value that
 * is an array or object). Supported: equals, not_equals, in, not_in, exists, greater_than(_equal),
 * less_than(_equal), like, contains, and/or, dotted paths into groups.
 */
export function matchWhere(where, doc) {
  if (where === undefined || where === null) return true
  if (!isPlainObject(where)) return undefined
  const results = []
  for (const [key, value] of Object.entries(where)) {
    if (key === 'and' || key === 'or') {
      if (!Array.isArray(value)) return undefined
      const branches = value.map((w) => matchWhere(w, doc))
      results.push(value.length === 0 ? true : key === 'and' ? all(branches) : any(branches))
      continue
    }
    if (!isPlainObject(value)) {
      results.push(undefined)
      continue
    }
    const have = key === 'id' && doc && doc.id !== undefined ? doc.id : valueAt(doc, key)
    for (const [op, want] of Object.entries(value)) {
      if (!OPERATORS.has(op) || have === undefined) results.push(undefined)
      else results.push(testOperator(op, have, want))
    }
  }
  return all(results)
}

// ---------------------------------------------------------------------------------------------
// Sort

/** `'-title'`, `'-title,createdAt'` or `['-title', 'createdAt']` -> `[{ path, desc }]`. */
export function parseSort(sort) {
  if (sort === undefined || sort === null || sort === '') return []
  const list = Array.isArray(sort) ? sort : String(sort).split(',')
  return list
    .map((s) => String(s).trim())
    .filter(Boolean)
    .map((s) => (s.startsWith('-') ? { path: s.slice(1), desc: true } : { path: s, desc: false }))
}

/** SQL order of two scalars: null first (SQLite, MongoDB), numbers by value, strings by code unit. */
function compareValues(a, b) {
  if (a === b) return 0
  if (a === null) return -1
  if (b === null) return 1
  if (typeof a !== typeof b) return undefined
  return a < b ? -1 : a > b ? 1 : 0
}

/**
 * A comparator of documents in the order Payload returns them: the given sort, then Payload's
 * own fallback (`-createdAt`, or `-id` without timestamps), then `-id` for ties. Returns
 * `undefined` when a sort field is absent from either document or not a scalar.
 */
export function makeComparator(sort) {
  /** @type {{ path: string, desc: boolean, fallback?: boolean }[]} */
  const keys = parseSort(sort)
  if (keys.length === 0) keys.push({ path: 'createdAt', desc: true })
  if (!keys.some((k) => k.path === 'createdAt')) keys.push({ path: 'createdAt', desc: true, fallback: true })
  keys.push({ path: 'id', desc: true, fallback: true })
  return (a, b) => {
    for (const k of keys) {
      const va = k.path === 'id' ? a.id : valueAt(a, k.path)
      const vb = k.path === 'id' ? b.id : valueAt(b, k.path)
      if (va === undefined || vb === undefined) {
        if (k.fallback && va === undefined && vb === undefined) continue // no timestamps
        return undefined
      }
      if (!isScalar(va) || !isScalar(vb)) return undefined
      const c = compareValues(va, vb)
      if (c === undefined) return undefined
      if (c !== 0) return k.desc ? -c : c
    }
    return 0
  }
}

// ---------------------------------------------------------------------------------------------
// The store

const INITIAL = Object.freeze({ docs: Object.freeze([]), status: 'loading', error: null })

function apiBase(options) {
  if (options.apiUrl !== undefined) return String(options.apiUrl).replace(/\/+$/, '')
  if (options.serverURL !== undefined) return `${String(options.serverURL).replace(/\/+$/, '')}/api`
  return LIVE_QUERY_DEFAULTS.apiUrl
}

/**
 * A live query on `collection` over `client`'s connection. Options:
 * - `where`, `sort`, `limit`, `depth` (default 0): as Payload's REST API takes them
 * - `apiUrl` (default `'/api'`) or `serverURL` (then `<serverURL>/api`)
 * - `credentials` (default `'include'`: the viewer's `payload-token` cookie), `headers` (an object,
 *   or a function returning one, maybe async, e.g. `{ Authorization: 'JWT ' + token }`)
 * - `fetch` (default `globalThis.fetch`), `debounce` (ms, default 50), `maxPendingEvents`
 *   (default 1000: events kept while a load runs; past it, it loads again)
 * - `autoStart` (default true): `false` to call `start()` yourself
 * Returns a store: `subscribe(listener)`, `getSnapshot()` -> `{ docs, status, error }`,
 * `refetch()`, `close()` and `start()` (again after `close()`).
 */
export function liveQuery(client, collection, options = {}) {
  return new LiveQuery(client, collection, options)
}

export class LiveQuery {
  constructor(client, collection, options = {}) {
    if (!client || typeof client.subscribe !== 'function' || typeof client.on !== 'function') {
      throw new TypeError('payload-realtime/client: liveQuery needs a RealtimeClient')
    }
    if (typeof collection !== 'string' || !/^[A-Za-z0-9_-]+$/.test(collection)) {
      throw new TypeError('payload-realtime/client: liveQuery needs a collection slug like "posts"')
    }
    if (!isPlainObject(options)) throw new TypeError('payload-realtime/client: liveQuery options must be an object')
    const {
      where,
      sort,
      limit,
      depth = LIVE_QUERY_DEFAULTS.depth,
      debounce = LIVE_QUERY_DEFAULTS.debounce,
      maxPendingEvents = LIVE_QUERY_DEFAULTS.maxPendingEvents,
    } = options
    if (where !== undefined && where !== null && !isPlainObject(where)) {
      throw new TypeError('payload-realtime/client: `where` must be a Payload Where object')
    }
    if (limit !== undefined && !(Number.isInteger(limit) && limit >= 0)) {
      throw new TypeError('payload-realtime/client: `limit` must be an integer >= 0')
    }
    if (!(Number.isInteger(depth) && depth >= 0)) {
      throw new TypeError('payload-realtime/client: `depth` must be an integer >= 0')
    }
    if (!(Number.isInteger(maxPendingEvents) && maxPendingEvents >= 0)) {
      throw new TypeError('payload-realtime/client: `maxPendingEvents` must be an integer >= 0')
    }
    if (!(typeof debounce === 'number' && debounce >= 0 && Number.isFinite(debounce))) {
      throw new TypeError('payload-realtime/client: `debounce` must be a finite number >= 0')
    }
    const fetchFn = options.fetch ?? globalThis.fetch
    if (typeof fetchFn !== 'function') {
      throw new TypeError('payload-realtime/client: no fetch implementation; pass `fetch`')
    }
    if (options.headers !== undefined && typeof options.headers !== 'function' && !isPlainObject(options.headers)) {
      throw new TypeError('payload-realtime/client: `headers` must be an object or a function')
    }
    this.client = client
    this.collection = collection
    this._where = where ?? undefined
    this._sort = sort
    this._limit = limit
    this._depth = depth
    this._debounce = debounce
    this._maxPendingEvents = maxPendingEvents
    this._fetch = fetchFn
    this._headers = options.headers
    this._credentials = options.credentials ?? LIVE_QUERY_DEFAULTS.credentials
    this._url = `${apiBase(options)}/${collection}`
    this._compare = makeComparator(sort)

    this._listeners = new Set()
    this._snapshot = INITIAL
    this._running = false
    if (options.autoStart !== false) this.start()
  }

  /** The current `{ docs, status, error }`; the same object until something changes. */
  getSnapshot = () => this._snapshot

  /** Calls `listener()` after every change; returns the function that stops it. */
  subscribe = (listener) => {
    if (typeof listener !== 'function') throw new TypeError('payload-realtime/client: a listener must be a function')
    const entry = () => listener()
    this._listeners.add(entry)
    return () => this._listeners.delete(entry)
  }

  /** Starts (again, after `close()`): loads and follows the collection's events. */
  start() {
    if (this._running) return
    this._running = true
    this._generation = (this._generation ?? 0) + 1
    /** The list as the last fetch gave it, with every event since applied. */
    this._docs = []
    /** Whether documents past `limit` may match (then a removal needs a refetch). */
    this._hasMore = false
    /** `true` once a fetch succeeded; until then (or after a failure) events trigger refetches. */
    this._synced = false
    /** The last fetch began after the room was joined on the current connection. */
    this._joined = false
    this._recoverable = false
    /** @type {{ events: any[], waiting?: boolean } | null} while a fetch runs */
    this._inFlight = null
    this._again = false
    this._timer = null
    this._setSnapshot({ docs: this._snapshot.docs, status: 'loading', error: null })

    const client = this.client
    this._offs = [
      client.subscribe(this.collection, (msg) => this._onEvent(msg)),
      client.on('recovery-failed', (info) => {
        if (info?.collection === this.collection || info?.room === `collection:${this.collection}`) {
          this._scheduleRefetch()
        }
      }),
      client.on('close', () => {
        // Missed events come back by recovery only when the room had a position (history on)
        // and the list was in step with the room on the connection that closed.
        const room = client._rooms?.get?.(this.collection)
        const recoverable = Boolean(room && typeof room.epoch === 'string' && Number.isInteger(room.offset))
        this._recoverable = recoverable && this._synced && this._joined
        this._joined = false
      }),
      client.on('open', () => {
        if (this._inFlight?.waiting) return // that load joins and reads after this open
        if (this._recoverable) {
          // The client rejoins with `since`: the missed events are replayed, or `recovery-failed`
          // follows (and refetches). Either way the list stays in step with the room.
          this._joined = true
          return
        }
        this._scheduleRefetch(0)
      }),
    ]
    // On the next turn: a provider connecting its client in the same commit is then
    // `connecting`, and the first load waits for that socket instead of loading twice.
    this._scheduleRefetch(0)
  }

  /** Stops following events and fetching; `start()` begins again. */
  close() {
    if (!this._running) return
    this._running = false
    this._generation++
    for (const off of /** @type {(() => void)[]} */ (this._offs)) off()
    this._offs = []
    if (this._timer) clearTimeout(this._timer)
    this._timer = null
    if (this._stopWaiting) this._stopWaiting()
    if (this._abort) this._abort.abort()
    this._abort = null
    this._inFlight = null
    this._setSnapshot({ docs: this._snapshot.docs, status: 'closed', error: null })
  }

  /**
   * Resolves with the snapshot once nothing is loading or scheduled: every event received so far
   * is in `docs` (or the last load failed: status `'error'`).
   */
  settled() {
    return new Promise((resolve) => {
      const check = () => {
        if (this._running && (this._timer || this._inFlight)) return false
        off()
        resolve(this._snapshot)
        return true
      }
      const off = this.subscribe(check)
      check()
    })
  }

  /** Loads the list again now (also the way out of `'error'`). */
  refetch = () => {
    if (!this._running) return
    this._scheduleRefetch(0)
  }

  _setSnapshot(next) {
    const cur = this._snapshot
    if (cur.docs === next.docs && cur.status === next.status && cur.error === next.error) return
    this._snapshot = Object.freeze(next)
    for (const l of [...this._listeners]) {
      try {
        l()
      } catch (/** @type {any} */ err) {
        if (typeof console !== 'undefined' && console.error)
          console.error('[payload-realtime/client] liveQuery listener', err)
      }
    }
  }

  _publish() {
    if (!this._running || this._inFlight) return
    this._setSnapshot({ docs: Object.freeze([...this._docs]), status: 'ready', error: null })
  }

  _scheduleRefetch(delay = this._debounce) {
    if (!this._running) return
    if (this._inFlight) {
      this._again = true
      return
    }
    if (this._timer) {
      if (delay > 0) return // already coming
      clearTimeout(this._timer)
    }
    this._timer = setTimeout(() => {
      this._timer = null
      this._load()
    }, delay)
  }

  /** `GET <api>/<collection>?where=...`; events arriving meanwhile are applied after it. */
  async _load() {
    if (!this._running) return
    if (this._timer) clearTimeout(this._timer)
    this._timer = null
    const generation = this._generation
    const flight = { events: [] }
    this._inFlight = flight
    this._again = false
    if (this._snapshot.status !== 'loading') {
      this._setSnapshot({ docs: this._snapshot.docs, status: this._synced ? 'refreshing' : 'loading', error: null })
    }
    const abort = typeof AbortController === 'function' ? new AbortController() : null
    this._abort = abort
    let body
    try {
      this._joined = await this._join(flight)
      if (generation !== this._generation) return
      body = await this._request(abort?.signal)
    } catch (/** @type {any} */ err) {
      if (generation !== this._generation) return
      this._inFlight = null
      this._abort = null
      this._synced = false
      this._refused = err?.status >= 400 && err.status < 500 && err.status !== 408 && err.status !== 429
      const error =
        err instanceof RealtimeClientError
          ? err
          : new RealtimeClientError('query-failed', `could not load "${this.collection}": ${err?.message ?? err}`, {
              cause: err,
              collection: this.collection,
            })
      if (this._again) this._scheduleRefetch()
      this._setSnapshot({ docs: this._snapshot.docs, status: 'error', error })
      return
    }
    if (generation !== this._generation) return
    this._abort = null
    this._inFlight = null
    this._docs = body.docs
    this._window = body.limit
    this._hasMore = Boolean(body.hasNextPage)
    this._synced = true
    this._refused = false
    for (const msg of flight.events) this._apply(msg)
    if (this._again) this._scheduleRefetch()
    this._publish()
  }

  /**
   * Makes sure the socket is in the collection's room before the list is read, so no event
   * falls between the two: the client's own join may still be on its way, and this one's ack
   * comes once the socket is in. `false` when offline (the next `open` refetches).
   */
  async _join(flight) {
    if (this.client.status === 'connecting') {
      // A connection attempt under way: load once it is open (or has failed) rather than twice.
      flight.waiting = true
      await /** @type {Promise<void>} */ (
        new Promise((resolve) => {
          const off = this.client.on('status', () => {
            off()
            resolve()
          })
          this._stopWaiting = () => {
            off()
            resolve()
          }
        })
      )
      flight.waiting = false
      this._stopWaiting = null
    }
    if (this.client.status !== 'open') return false
    try {
      await this.client.request('join-collection', { collection: this.collection })
      return this.client.status === 'open'
    } catch (/** @type {any} */ err) {
      if (err?.reply) throw err // refused by the server: forbidden, unknown-collection
      return false // the connection went meanwhile
    }
  }

  async _request(signal) {
    const params = { depth: this._depth }
    if (this._where !== undefined) params.where = this._where
    if (this._sort !== undefined) params.sort = Array.isArray(this._sort) ? this._sort.join(',') : this._sort
    if (this._limit !== undefined) params.limit = this._limit
    const headers = { Accept: 'application/json' }
    const extra = typeof this._headers === 'function' ? await this._headers() : this._headers
    if (extra !== undefined && extra !== null) Object.assign(headers, extra)
    const fetchFn = this._fetch // called unbound: browsers' fetch refuses another `this`
    const res = await fetchFn(`${this._url}?${toQueryString(params)}`, {
      method: 'GET',
      headers,
      credentials: this._credentials,
      signal,
    })
    let body = null
    try {
      body = await res.json()
    } catch {
      // not JSON: reported below
    }
    if (!res.ok) {
      const detail = body?.errors?.[0]?.message ?? body?.message ?? res.statusText
      throw new RealtimeClientError('query-failed', `GET ${this.collection} failed (${res.status}): ${detail}`, {
        status: res.status,
        collection: this.collection,
      })
    }
    if (!isPlainObject(body) || !Array.isArray(body.docs)) {
      throw new RealtimeClientError('query-failed', `GET ${this.collection}: the reply has no "docs" list`, {
        status: res.status,
        collection: this.collection,
      })
    }
    return body
  }

  _onEvent(msg) {
    if (msg.type !== 'create' && msg.type !== 'update' && msg.type !== 'delete') return
    if (!this._running) return
    if (this._inFlight) {
      // Kept for the load's result, up to a bound; past it the load is simply done again.
      if (this._inFlight.events.length < this._maxPendingEvents) this._inFlight.events.push(msg)
      else this._again = true
      return
    }
    if (!this._synced) {
      // A refusal (401, 403, 404, ...) would come again: only `refetch()` or a reconnect retries.
      if (!this._refused) this._scheduleRefetch()
      return
    }
    if (this._apply(msg)) this._publish()
  }

  /**
   * Applies one event to `_docs` when the outcome is certain, and says whether the list changed;
   * otherwise asks for a refetch (the list keeps its last certain state until then).
   */
  _apply(msg) {
    const docs = this._docs
    const index = docs.findIndex((d) => sameId(d.id, msg.id))
    const refetch = () => {
      this._scheduleRefetch()
      return false
    }
    const remove = () => {
      if (index < 0) return false
      this._docs = docs.filter((_, i) => i !== index)
      // Something past the window moves up into it: only the server knows which.
      if (this._hasMore) this._scheduleRefetch()
      return true
    }
    if (msg.type === 'delete') return remove()

    const doc = isPlainObject(msg.doc) ? { ...msg.doc, id: msg.doc.id ?? msg.id } : null
    if (!doc) return refetch()
    const matches = matchWhere(this._where, doc)
    if (matches === undefined) return refetch()
    if (matches === false) return remove()

    // The event's document is at depth 0; a deeper list needs the server's copy.
    if (this._depth > 0) return refetch()

    const rest = index >= 0 ? docs.filter((_, i) => i !== index) : docs.slice()
    let at = rest.length
    for (let i = 0; i < rest.length; i++) {
      const c = this._compare(doc, rest[i])
      if (c === undefined) return refetch()
      if (c < 0) {
        at = i
        break
      }
    }
    const limit = this._window > 0 ? this._window : Infinity
    if (at === rest.length) {
      if (this._hasMore) {
        // It sorts after the last one shown, and more exist: which come first is unknown when it
        // was shown before; a new one simply stays outside the window.
        if (index < 0) return false
        this._docs = rest
        this._scheduleRefetch()
        return true
      }
      if (rest.length >= limit) {
        this._hasMore = true
        return false
      }
    }
    rest.splice(at, 0, doc)
    if (rest.length > limit) {
      rest.length = limit
      this._hasMore = true
    }
    this._docs = rest
    return true
  }
}

const sameId = (a, b) =>
  a === b || (a !== undefined && a !== null && b !== undefined && b !== null && String(a) === String(b))
