// The SSE transport of payload-realtime/client: an object shaped like the WebSocket the client
// drives (onopen, onmessage, onclose, send, close), over `GET <path>/sse?rooms=...` read with
// `fetch` (so the token goes in the Authorization header, never in a URL, and cookies work with
// `credentials: 'include'`).
//
// An SSE stream names its rooms when it opens: collections in `rooms=`, app rooms each in a
// `room=`. The client's joins (`join-collection`, and `join` for app rooms) are gathered (those
// sent as the transport opens go in one stream) and answered from the stream's own join acks
// (`sse` for the collections, `sse:<room>` for each app room); a join or
// leave later opens a new stream with the new set of rooms, from the positions reached
// (`Last-Event-ID`), so nothing is missed. `ping` is answered here (the server's heartbeats
// keep the stream and its proxies alive; a broken stream ends the fetch). Anything else that
// needs a socket (custom handlers, presence, `auth`) is answered with the error
// `transport-unsupported`.

/** The error code of a request that needs a WebSocket, made while connected over SSE. */
export const TRANSPORT_UNSUPPORTED = 'transport-unsupported'

const COLLECTION = 'collection:'

/** The room a collection's events go to. */
const collectionRoom = (slug) => `${COLLECTION}${slug}`

/**
 * The SSE endpoint for the client's WebSocket URL: same host and path, `/sse` appended, with
 * `rooms` (room names: `collection:<slug>` for a collection's) as `rooms=` and `room=`.
 */
export function sseUrl(wsUrl, rooms, lastEventId) {
  const u = new URL(wsUrl)
  u.protocol = u.protocol === 'wss:' ? 'https:' : 'http:'
  u.pathname = `${u.pathname.replace(/\/+$/, '')}/sse`
  u.searchParams.delete('auth')
  u.searchParams.delete('token')
  const collections = rooms.filter((r) => r.startsWith(COLLECTION)).map((r) => r.slice(COLLECTION.length))
  if (collections.length > 0) u.searchParams.set('rooms', collections.join(','))
  for (const r of rooms) if (!r.startsWith(COLLECTION)) u.searchParams.append('room', r)
  if (lastEventId) u.searchParams.set('lastEventId', lastEventId)
  return u.toString()
}

/** A room's key in an event id: a collection's slug, or `@` and the app room encoded. */
const idKey = (room) => (room.startsWith(COLLECTION) ? room.slice(COLLECTION.length) : `@${encodeURIComponent(room)}`)

/** Rooms the stream follows without the client asking (`onConnect`'s) whose position is kept. */
const MAX_OTHER_ROOMS = 100

/** Parses SSE text as it arrives; `onMessage({ event, id, data })` for each message. */
export function sseParser(onMessage) {
  let buf = ''
  return (chunk) => {
    buf += chunk
    let at
    while ((at = buf.search(/\r?\n\r?\n/)) >= 0) {
      const block = buf.slice(0, at)
      buf = buf.slice(at).replace(/^\r?\n\r?\n/, '')
      let event = 'message'
      let id
      const data = []
      for (const line of block.split(/\r?\n/)) {
        if (line === '' || line.startsWith(':')) continue
        const colon = line.indexOf(':')
        const field = colon < 0 ? line : line.slice(0, colon)
        const value = colon < 0 ? '' : line.slice(colon + 1).replace(/^ /, '')
        if (field === 'event') event = value
        else if (field === 'id') id = value
        else if (field === 'data') data.push(value)
      }
      if (data.length > 0) onMessage({ event, id, data: data.join('\n') })
    }
  }
}

/**
 * How long a stream's request may wait for its response head (ms). Without it a request that
 * never gets one leaves the transport open with no stream: Node's fetch waits forever when the
 * peer closes the connection before answering (a proxy or load balancer with no server behind
 * it), and a local `ping` answer keeps the client's liveness check from noticing.
 */
export const DEFAULT_SSE_OPEN_TIMEOUT = 10_000

export class SseTransport {
  /**
   * `url`: the client's WebSocket URL; `token`: sent as `Authorization: JWT <token>` (none:
   * the cookie); `fetch`: a fetch implementation (default `globalThis.fetch`); `openTimeout`:
   * ms a stream's request may wait for its response (default `DEFAULT_SSE_OPEN_TIMEOUT`).
   */
  constructor({ url, token, fetch, openTimeout }) {
    this._url = url
    this._token = token
    this._fetch = fetch ?? globalThis.fetch
    this._openTimeout = openTimeout ?? DEFAULT_SSE_OPEN_TIMEOUT
    this.readyState = 0
    /** A stream was answered (200): the transport works, whatever ends it later. */
    this.streamed = false
    this.onopen = null
    this.onmessage = null
    this.onclose = null
    this.onerror = null
    /** Joined rooms by room name, and where each stands (`{ epoch, offset }`, from the stream). */
    this._rooms = new Map()
    /** Where the stream stands in rooms the server joined for it (`onConnect`'s). */
    this._others = new Map()
    this._lastEventId = null
    this._joins = [] // { id, rooms, app, recovering } waiting for the stream's acks
    this._reopen = null
    this._abort = null
    this._streamId = 0
    // Open at once: the client then sends its joins, which decide the stream's rooms.
    queueMicrotask(() => {
      if (this.readyState !== 0) return
      this.readyState = 1
      this.onopen?.()
    })
  }

  send(text) {
    if (this.readyState !== 1) return
    const msg = JSON.parse(text)
    const reply = (m) => queueMicrotask(() => this.readyState === 1 && this.onmessage?.({ data: JSON.stringify(m) }))
    switch (msg.type) {
      case 'ping':
        return reply({ type: 'pong', id: msg.id })
      case 'join-collection':
      case 'subscribe':
      case 'join': {
        const app = msg.type === 'join'
        const names = app ? [msg.room] : [].concat(msg.collection ?? msg.data ?? [])
        const rooms = names.map((n) => (app ? n : collectionRoom(n)))
        for (let i = 0; i < rooms.length; i++) {
          const since = msg.since?.epoch !== undefined ? msg.since : msg.since?.[names[i]]
          const r = rooms[i]
          if (since && !this._rooms.get(r)) this._rooms.set(r, { epoch: since.epoch, offset: since.offset })
          else if (!this._rooms.has(r)) this._rooms.set(r, null)
          this._others.delete(r)
        }
        this._joins.push({ id: msg.id, rooms, app, recovering: rooms.some((r) => this._rooms.get(r)) })
        return this._restart()
      }
      case 'leave-collection':
      case 'unsubscribe':
      case 'leave': {
        const rooms =
          msg.type === 'leave' ? [msg.room] : [].concat(msg.collection ?? msg.data ?? []).map(collectionRoom)
        for (const r of rooms) this._rooms.delete(r)
        if (msg.id !== undefined) reply({ type: 'ack', id: msg.id })
        return this._restart()
      }
      default:
        if (msg.id !== undefined) {
          reply({
            type: 'error',
            code: TRANSPORT_UNSUPPORTED,
            message: `"${msg.type}" needs a WebSocket; this client is connected over Server-Sent Events`,
            id: msg.id,
          })
        }
    }
  }

  close(code = 1000, reason = '') {
    this._end({ code, reason, wasClean: true }, false)
  }

  /** Opens a stream for the rooms now wanted, once the joins sent together are in. */
  _restart() {
    if (this._reopen) return
    this._reopen = Promise.resolve().then(() => {
      this._reopen = null
      if (this.readyState !== 1) return
      // The stream being replaced ends quietly (its reads see another stream id).
      this._streamId++
      this._abort?.abort()
      if (this._rooms.size === 0) return
      this._stream()
    })
  }

  _lastId() {
    const known = [...this._rooms].filter(([, p]) => p)
    const others = [...this._others]
    if (known.length + others.length === 0) return null
    if (this._rooms.size === 1 && others.length === 0) return `${known[0][1].epoch}:${known[0][1].offset}`
    return [...known, ...others].map(([r, p]) => `${idKey(r)}/${p.epoch}:${p.offset}`).join(',')
  }

  async _stream() {
    const id = ++this._streamId
    const abort = new AbortController()
    this._abort = abort
    const rooms = [...this._rooms.keys()]
    const headers = { accept: 'text/event-stream' }
    if (this._token !== undefined && this._token !== null && this._token !== '') {
      headers.authorization = `JWT ${this._token}`
    }
    let res
    let timedOut = false
    const timer = setTimeout(() => {
      timedOut = true
      abort.abort()
    }, this._openTimeout)
    try {
      res = await this._fetch(sseUrl(this._url, rooms, this._lastId()), {
        headers,
        credentials: 'include',
        cache: 'no-store',
        signal: abort.signal,
      })
    } catch (/** @type {any} */ err) {
      if (id !== this._streamId) return
      if (timedOut) this._fail(1006, `SSE request not answered within ${this._openTimeout} ms`)
      else if (!abort.signal.aborted) this._fail(1006, `SSE request failed: ${err?.message ?? err}`)
      return
    } finally {
      clearTimeout(timer)
    }
    if (id !== this._streamId) return abort.abort()
    if (!res.ok || !res.body) {
      let body = ''
      try {
        body = await res.text()
      } catch {}
      // As a refused WebSocket handshake: the client retries with its backoff (4004 for 401,
      // which takes a fresh token from getToken).
      if (res.status === 404 && this._unknown(body)) return this._restart()
      return this._fail(res.status === 401 ? 4004 : 1006, `SSE refused (${res.status}) ${body}`.trim())
    }
    this.streamed = true
    const parse = sseParser((m) => this._onSse(m, id))
    const reader = res.body.pipeThrough(new TextDecoderStream()).getReader()
    try {
      for (;;) {
        const { done, value } = await reader.read()
        if (done || id !== this._streamId) break
        parse(value)
      }
    } catch {
      // aborted or broken: below
    }
    if (id === this._streamId && this.readyState === 1) this._fail(1006, 'the SSE stream ended')
  }

  _onSse({ event, id, data }, stream) {
    if (stream !== this._streamId || this.readyState !== 1) return
    let msg
    try {
      msg = JSON.parse(data)
    } catch {
      return this.onmessage?.({ data })
    }
    if (id) this._lastEventId = id
    const room =
      typeof msg.room === 'string'
        ? msg.room
        : typeof msg.collection === 'string'
          ? collectionRoom(msg.collection)
          : null
    if (room && msg.type !== 'ack' && Number.isInteger(msg.offset) && typeof msg.epoch === 'string') {
      const p = { epoch: msg.epoch, offset: msg.offset }
      if (this._rooms.has(room)) this._rooms.set(room, p)
      else if (this._others.has(room) || this._others.size < MAX_OTHER_ROOMS) this._others.set(room, p)
    }
    if (event === 'close') return this._end({ code: msg.code, reason: msg.reason ?? '', wasClean: true }, true)
    const forRoom = typeof msg.id === 'string' && msg.id.startsWith('sse:') ? msg.id.slice(4) : null
    if (event === 'ack' && (msg.id === 'sse' || forRoom !== null)) {
      for (const [k, p] of Object.entries(msg.positions ?? {})) {
        const r = forRoom !== null ? k : collectionRoom(k)
        if (this._rooms.has(r) && (!this._rooms.get(r) || msg.recovered === false)) this._rooms.set(r, p)
      }
      // Each join waiting gets its own ack, as over a socket.
      for (const join of this._answered(forRoom)) {
        if (join.id === undefined) continue
        const ack = { type: 'ack', id: join.id, positions: msg.positions }
        if (msg.recovered !== undefined && join.recovering) ack.recovered = msg.recovered
        this.onmessage?.({ data: JSON.stringify(ack) })
      }
      return
    }
    if (msg.type === 'error' && (msg.id === 'sse' || forRoom !== null)) {
      // A refused app room is not asked for again by the next stream (as a refused join).
      if (forRoom !== null) this._rooms.delete(forRoom)
      for (const join of this._answered(forRoom)) {
        if (join.id !== undefined) this.onmessage?.({ data: JSON.stringify({ ...msg, id: join.id }) })
      }
      return
    }
    this.onmessage?.({ data })
  }

  /**
   * A stream refused for naming a collection the server does not serve: the joins that named
   * it get `unknown-collection`, as over a socket (the client then tries an app room of that
   * name), and the other rooms open again. Whether the refusal was that.
   */
  _unknown(body) {
    let refusal
    try {
      refusal = JSON.parse(body)
    } catch {
      return false
    }
    if (refusal?.error !== 'unknown-collection' || typeof refusal.reason !== 'string') return false
    const named = refusal.reason
      .replace(/^[^:]*:\s*/, '')
      .split(/,\s*/)
      .map(collectionRoom)
    const unknown = named.filter((r) => this._rooms.has(r))
    if (unknown.length === 0) return false
    for (const r of unknown) this._rooms.delete(r)
    const refused = this._joins.filter((j) => !j.app && j.rooms.some((r) => unknown.includes(r)))
    this._joins = this._joins.filter((j) => !refused.includes(j))
    for (const join of refused) {
      if (join.id === undefined) continue
      const error = { type: 'error', code: 'unknown-collection', message: refusal.reason, id: join.id }
      queueMicrotask(() => this.readyState === 1 && this.onmessage?.({ data: JSON.stringify(error) }))
    }
    return true
  }

  /** The joins the stream's reply answers: the collections' (`room` null), or an app room's. */
  _answered(room) {
    const answered = this._joins.filter((j) => (room === null ? !j.app : j.app && j.rooms[0] === room))
    this._joins = this._joins.filter((j) => !answered.includes(j))
    return answered
  }

  _fail(code, reason) {
    this._end({ code, reason, wasClean: false }, true)
  }

  _end(info, notify) {
    if (this.readyState === 3) return
    this.readyState = 3
    this._streamId++
    this._abort?.abort()
    if (notify) this.onclose?.(info)
  }
}
