// Shared helpers for the JS test suite: Payload-style tokens, a `ws` client that records every
// message, handshake probes, raw HTTP and raw WebSocket access, and server set-up/tear-down.
//
// No timing thresholds live here: every timeout is a generous guard against a hang, never an
// assertion about speed.

import { createHash, createHmac, randomBytes, randomUUID } from 'node:crypto'
import http from 'node:http'
import net from 'node:net'
import WebSocket from 'ws'

import { initUWebSocket } from '../index.mjs'

/** The Payload secret every test server is started with (as given to Payload's `buildConfig`). */
export const SECRET = 'payload-realtime-test-secret-4f7c1e'

/** Generous guard for a single wait; a hang fails the test instead of blocking the run. */
export const WAIT = 20_000

// ---------------------------------------------------------------------------------------------
// Tokens

/** Payload's signing key: sha256(secret) as hex, first 32 characters (used as UTF-8 bytes). */
export function payloadKey(secret = SECRET) {
  return createHash('sha256').update(secret).digest('hex').slice(0, 32)
}

/** Signs an HS256 JWT over `claims` with `key` (string or Buffer). */
export function signJwt(claims, key, header = { alg: 'HS256', typ: 'JWT' }) {
  const h = Buffer.from(JSON.stringify(header)).toString('base64url')
  const p = Buffer.from(JSON.stringify(claims)).toString('base64url')
  const sig = createHmac('sha256', key).update(`${h}.${p}`).digest('base64url')
  return `${h}.${p}.${sig}`
}

/**
 * A token as Payload 3 mints it: claims `{ id, collection, email, sid, iat, exp }`, HS256 with the
 * key derived from `secret`. `claims` overrides any of them; `expiresIn` is in seconds (negative
 * for an already expired token); `key` replaces the derived key (to forge bad tokens).
 */
export function makeToken(claims = {}, { secret = SECRET, key, expiresIn = 7200 } = {}) {
  const now = Math.floor(Date.now() / 1000)
  const id = claims.id ?? 'user-1'
  const body = {
    id,
    collection: 'users',
    email: `${id}@example.com`,
    sid: randomUUID(),
    iat: now,
    exp: now + expiresIn,
    ...claims,
  }
  return signJwt(body, key ?? payloadKey(secret), { alg: 'HS256', authVersion: 1, typ: 'JWT' })
}

// ---------------------------------------------------------------------------------------------
// Small utilities

export const sleep = (ms) => new Promise((r) => setTimeout(r, ms))

/** A loopback port nothing listens on now (for servers that need a fixed port). */
export function freePort() {
  return new Promise((resolve, reject) => {
    const srv = net.createServer()
    srv.on('error', reject)
    srv.listen(0, '127.0.0.1', () => {
      const { port } = srv.address()
      srv.close(() => resolve(port))
    })
  })
}

/**
 * A loopback TCP proxy to `port` (connect to its `port`). `delay`: every chunk is held that many
 * ms in each direction (a far server, a slow Redis). `freeze()` stops forwarding on every
 * connection made so far, in both directions, without closing or resetting anything: bytes are
 * read and dropped, as on a path that went dead. Connections made later forward normally.
 */
export async function tcpProxy(port, { delay = 0 } = {}) {
  const links = []
  const later = (fn) => (delay > 0 ? setTimeout(fn, delay) : fn())
  const server = net.createServer((down) => {
    if (proxy.blocked) return down.destroy()
    const up = net.connect(port, '127.0.0.1')
    const link = { down, up, frozen: false }
    links.push(link)
    down.on('data', (b) => link.frozen || later(() => up.write(b)))
    up.on('data', (b) => link.frozen || later(() => down.write(b)))
    const end = () => {
      if (link.frozen) return // a dead path does not carry a FIN or RST either
      later(() => {
        down.destroy()
        up.destroy()
      })
    }
    down.on('close', end)
    up.on('close', end)
    down.on('error', () => {})
    up.on('error', () => {})
  })
  await new Promise((resolve) => server.listen(0, '127.0.0.1', resolve))
  const proxy = {
    port: server.address().port,
    links,
    /** While true, new connections are closed at once (the server is out of reach). */
    blocked: false,
    freeze() {
      for (const link of links) link.frozen = true
    },
    /** Resets every connection made so far, as a network drop does. */
    cut() {
      for (const { down, up } of links) {
        down.destroy()
        up.destroy()
      }
    },
    close() {
      proxy.cut()
      return new Promise((r) => server.close(r))
    },
  }
  return proxy
}

/** Rejects with a clear message when `promise` has not settled after `ms` (a hang guard). */
export function withTimeout(promise, ms, label) {
  let timer
  const guard = new Promise((_, reject) => {
    timer = setTimeout(() => reject(new Error(`timed out after ${ms} ms waiting for ${label}`)), ms)
  })
  return Promise.race([promise, guard]).finally(() => clearTimeout(timer))
}

/** Polls `fn` (sync or async) until it returns a truthy value; the timeout is only a hang guard. */
export async function waitUntil(fn, { timeout = WAIT, interval = 20, label = 'a condition' } = {}) {
  const deadline = Date.now() + timeout
  for (;;) {
    const v = await fn()
    if (v) return v
    if (Date.now() > deadline) throw new Error(`timed out after ${timeout} ms waiting for ${label}`)
    await sleep(interval)
  }
}

const EVENT_TYPES = new Set(['create', 'update', 'delete'])

/** Whether a server message is a collection event. */
export const isEvent = (m) => m != null && EVENT_TYPES.has(m.type) && typeof m.collection === 'string'

// ---------------------------------------------------------------------------------------------
// Client

let requestCounter = 0

/** A connected `ws` client that records every message it receives, in order. */
export class Client {
  constructor(ws, label = 'client') {
    this.ws = ws
    this.label = label
    /** Every message received, parsed (binary or non-JSON frames as `{ __raw, __binary }`). */
    this.all = []
    /** Messages not yet taken by `waitFor`. */
    this.inbox = []
    this.waiters = []
    this.closeInfo = null
    this.closed = new Promise((resolve) => {
      ws.on('close', (code, reason) => {
        this.closeInfo = { code, reason: reason.toString() }
        for (const w of this.waiters) w.reject(new Error(`${this.label} closed (${code}) while waiting for ${w.label}`))
        this.waiters = []
        resolve(this.closeInfo)
      })
    })
    ws.on('error', (err) => {
      this.lastError = err
    })
    ws.on('message', (data, isBinary) => {
      let msg
      try {
        msg = isBinary ? { __binary: true, __raw: data } : JSON.parse(data.toString())
      } catch {
        msg = { __raw: data.toString() }
      }
      this.all.push(msg)
      this.inbox.push(msg)
      this._check()
    })
  }

  _check() {
    for (let i = 0; i < this.waiters.length; i++) {
      const w = this.waiters[i]
      const idx = this.inbox.findIndex(w.pred)
      if (idx >= 0) {
        const [msg] = this.inbox.splice(idx, 1)
        this.waiters.splice(i, 1)
        i--
        w.resolve(msg)
      }
    }
  }

  get isOpen() {
    return this.ws.readyState === WebSocket.OPEN
  }

  /** Sends an object as JSON, or a string/Buffer as it is. */
  send(msg, opts) {
    this.ws.send(typeof msg === 'string' || Buffer.isBuffer(msg) ? msg : JSON.stringify(msg), opts)
  }

  /** Takes the first received (or next arriving) message matching `pred` out of the inbox. */
  waitFor(pred, { timeout = WAIT, label = 'a matching message' } = {}) {
    const idx = this.inbox.findIndex(pred)
    if (idx >= 0) return Promise.resolve(this.inbox.splice(idx, 1)[0])
    if (this.closeInfo)
      return Promise.reject(new Error(`${this.label} is closed (${this.closeInfo.code}); wanted ${label}`))
    let waiter
    const p = new Promise((resolve, reject) => {
      waiter = { pred, resolve, reject, label }
      this.waiters.push(waiter)
    })
    return withTimeout(p, timeout, `${label} on ${this.label}`).finally(() => {
      this.waiters = this.waiters.filter((w) => w !== waiter)
    })
  }

  /** Sends `msg` with a fresh request id (unless it has one) and waits for the reply with that id. */
  async request(msg, opts = {}) {
    const id = msg.id ?? `req-${++requestCounter}`
    this.send({ ...msg, id })
    return this.waitFor((m) => m.id === id && !isEvent(m), {
      label: `the reply to ${JSON.stringify(msg.type)} (${id})`,
      ...opts,
    })
  }

  /** Joins a collection and expects an ack. */
  async join(collection) {
    const reply = await this.request({ type: 'join-collection', collection })
    if (reply.type !== 'ack') throw new Error(`join ${collection} failed: ${JSON.stringify(reply)}`)
    return reply
  }

  /** Asks the server who this socket is (needs the `whoami` handler from `registerWhoami`). */
  async whoami() {
    const reply = await this.request({ type: 'whoami' })
    if (typeof reply.socketId !== 'string') throw new Error(`whoami failed: ${JSON.stringify(reply)}`)
    this.socketId = reply.socketId
    this.user = reply.user
    return reply
  }

  /** Collection events received so far, in order (optionally of one collection). */
  events(collection) {
    return this.all.filter((m) => isEvent(m) && (collection === undefined || m.collection === collection))
  }

  waitForClose({ timeout = WAIT } = {}) {
    return withTimeout(this.closed, timeout, `${this.label} to close`)
  }

  /** Closes normally (1000) and waits for the close; terminates if that takes too long. */
  async close() {
    if (this.closeInfo) return this.closeInfo
    if (this.ws.readyState === WebSocket.OPEN) {
      this.ws.close(1000)
      try {
        return await withTimeout(this.closed, 5000, 'close')
      } catch {
        this.ws.terminate()
      }
    } else {
      this.ws.terminate()
    }
    return withTimeout(this.closed, 5000, 'terminate')
  }
}

/** The URL of a manager's server. */
export function wsUrl(manager, path = '/', query = '') {
  return `ws://127.0.0.1:${manager.port}${path}${query}`
}

/** Builds `ws` options from a credential description. */
function wsOptions({ token, scheme = 'JWT', query, cookie, origin, headers = {}, ...rest } = {}) {
  const h = { ...headers }
  if (token != null) h.Authorization = `${scheme} ${token}`
  if (cookie != null) h.Cookie = cookie
  if (origin != null) h.Origin = origin
  return { headers: h, perMessageDeflate: false, ...rest }
}

/**
 * Reads an HTTP response in full, then calls `done({ status, headers, body, json })` (`json`:
 * the body parsed, or undefined when it is not JSON).
 */
function readResponse(res, done) {
  const chunks = []
  res.on('data', (c) => chunks.push(c))
  res.on('end', () => {
    const body = Buffer.concat(chunks).toString()
    let json
    try {
      json = JSON.parse(body)
    } catch {
      json = undefined
    }
    done({ status: res.statusCode, headers: res.headers, body, json })
  })
}

/**
 * Attempts a handshake. Resolves `{ status: 101, client }` when the upgrade succeeds, or
 * `{ status, body, json, headers }` for a refused handshake (HTTP status and body read in full).
 */
export function handshake(url, opts = {}) {
  const { timeout = WAIT, label = 'client', ...cred } = opts
  return withTimeout(
    new Promise((resolve, reject) => {
      const ws = new WebSocket(url, wsOptions(cred))
      let settled = false
      ws.on('error', (err) => {
        if (!settled) {
          settled = true
          reject(err)
        }
      })
      ws.once('unexpected-response', (req, res) =>
        readResponse(res, (r) => {
          settled = true
          ws.terminate()
          resolve(r)
        }),
      )
      ws.once('open', () => {
        settled = true
        resolve({ status: 101, client: new Client(ws, label) })
      })
    }),
    timeout,
    `the handshake with ${url}`,
  )
}

/** Connects and returns a `Client`; throws (with status and body) if the handshake is refused. */
export async function connect(url, opts = {}) {
  const r = await handshake(url, opts)
  if (r.status !== 101) {
    const err = new Error(`handshake refused: HTTP ${r.status} ${r.body}`)
    err.status = r.status
    err.body = r.body
    throw err
  }
  return r.client
}

// ---------------------------------------------------------------------------------------------
// Raw HTTP and raw WebSocket

/** A plain HTTP GET (no keep-alive), resolving `{ status, headers, body, json }`. */
export function httpGet(port, path, headers = {}) {
  return withTimeout(
    new Promise((resolve, reject) => {
      const req = http.get({ host: '127.0.0.1', port, path, headers, agent: false }, (res) => {
        readResponse(res, resolve)
        res.on('error', reject)
      })
      req.on('error', reject)
    }),
    WAIT,
    `GET ${path}`,
  )
}

/**
 * Opens a plain TCP socket, performs the WebSocket upgrade by hand and resolves once the 101
 * response has been read: `{ socket, status, head, received, ended, isEnded }` where `received()`
 * returns every byte after the HTTP response so far and `ended` resolves when the stream ends.
 */
export function rawUpgrade(port, { path = '/', headers = {} } = {}) {
  return withTimeout(
    new Promise((resolve, reject) => {
      const socket = net.connect(port, '127.0.0.1')
      let buf = Buffer.alloc(0)
      let headerDone = false
      let after = Buffer.alloc(0)
      let endResolve
      let isEnded = false
      const ended = new Promise((r) => (endResolve = r))
      const onEnd = () => {
        isEnded = true
        endResolve()
      }
      socket.on('error', () => {})
      socket.on('close', onEnd)
      socket.on('end', onEnd)
      socket.on('data', (chunk) => {
        if (headerDone) {
          after = Buffer.concat([after, chunk])
          return
        }
        buf = Buffer.concat([buf, chunk])
        const i = buf.indexOf('\r\n\r\n')
        if (i < 0) return
        headerDone = true
        const head = buf.subarray(0, i).toString()
        after = buf.subarray(i + 4)
        const status = Number(head.split(' ')[1])
        resolve({ socket, status, head, received: () => after, ended, isEnded: () => isEnded })
      })
      socket.on('connect', () => {
        const key = randomBytes(16).toString('base64')
        const lines = [
          `GET ${path} HTTP/1.1`,
          `Host: 127.0.0.1:${port}`,
          'Upgrade: websocket',
          'Connection: Upgrade',
          `Sec-WebSocket-Key: ${key}`,
          'Sec-WebSocket-Version: 13',
          ...Object.entries(headers).map(([k, v]) => `${k}: ${v}`),
        ]
        socket.write(lines.join('\r\n') + '\r\n\r\n')
      })
      socket.on('close', () => reject(new Error('connection closed before the upgrade response')))
    }),
    WAIT,
    'a raw upgrade',
  )
}

/** Encodes one frame (FIN set). `mask` false gives the unmasked frame a server must refuse. */
export function encodeFrame(opcode, payload, { mask = true } = {}) {
  payload = Buffer.from(payload)
  const len = payload.length
  let header
  if (len < 126) {
    header = Buffer.from([0x80 | opcode, (mask ? 0x80 : 0) | len])
  } else if (len <= 0xffff) {
    header = Buffer.alloc(4)
    header[0] = 0x80 | opcode
    header[1] = (mask ? 0x80 : 0) | 126
    header.writeUInt16BE(len, 2)
  } else {
    header = Buffer.alloc(10)
    header[0] = 0x80 | opcode
    header[1] = (mask ? 0x80 : 0) | 127
    header.writeBigUInt64BE(BigInt(len), 2)
  }
  if (!mask) return Buffer.concat([header, payload])
  const key = randomBytes(4)
  const masked = Buffer.alloc(len)
  for (let i = 0; i < len; i++) masked[i] = payload[i] ^ key[i & 3]
  return Buffer.concat([header, key, masked])
}

/** Parses the server's (unmasked) frames from a byte buffer: `[{ opcode, payload }]`. */
export function parseFrames(buf) {
  const frames = []
  let off = 0
  while (off + 2 <= buf.length) {
    const opcode = buf[off] & 0x0f
    const masked = (buf[off + 1] & 0x80) !== 0
    let len = buf[off + 1] & 0x7f
    let p = off + 2
    if (len === 126) {
      if (p + 2 > buf.length) break
      len = buf.readUInt16BE(p)
      p += 2
    } else if (len === 127) {
      if (p + 8 > buf.length) break
      len = Number(buf.readBigUInt64BE(p))
      p += 8
    }
    if (masked) p += 4
    if (p + len > buf.length) break
    frames.push({ opcode, payload: buf.subarray(p, p + len) })
    off = p + len
  }
  return frames
}

/** The close code of the first close frame in `buf`, or undefined. */
export function closeCodeIn(buf) {
  const f = parseFrames(buf).find((fr) => fr.opcode === 0x8)
  if (!f) return undefined
  return f.payload.length >= 2 ? f.payload.readUInt16BE(0) : 1005
}

// ---------------------------------------------------------------------------------------------
// Server set-up

/** Starts a server on a free loopback port with the test secret (options override). */
export function startServer(options = {}) {
  return initUWebSocket(0, { host: '127.0.0.1', secret: SECRET, ...options })
}

/** Registers `whoami`, replying `{ socketId, user }` so tests can learn a socket's id. */
export function registerWhoami(manager) {
  manager.registerCustomHandler('whoami', (socket) => ({ socketId: socket.id, user: socket.user }))
}

/**
 * Runs `fn(ctx)` against a fresh server and always tears everything down afterwards.
 * `ctx = { manager, url, connect(opts), connectAs(userId, opts) }`; clients opened through `ctx`
 * are closed before the server.
 */
export async function withServer(options, fn) {
  const manager = await startServer(options)
  registerWhoami(manager)
  const clients = []
  const ctx = {
    manager,
    url: (path, query) => wsUrl(manager, path, query),
    track(client) {
      clients.push(client)
      return client
    },
    async connect(opts = {}) {
      const { path, query, ...rest } = opts
      const c = await connect(wsUrl(manager, path, query), rest)
      clients.push(c)
      return c
    },
    async handshake(opts = {}) {
      const { path, query, ...rest } = opts
      const r = await handshake(wsUrl(manager, path, query), rest)
      if (r.client) clients.push(r.client)
      return r
    },
    connectAs(userId, opts = {}) {
      return ctx.connect({ token: makeToken({ id: userId }), label: userId, ...opts })
    },
  }
  try {
    return await fn(ctx)
  } finally {
    await Promise.allSettled(clients.map((c) => c.close()))
    await manager.close()
  }
}

/** Opens `n` clients with bounded concurrency (a large burst of SYNs can overflow the backlog). */
export async function connectMany(ctx, n, makeOpts, { concurrency = 50 } = {}) {
  const out = new Array(n)
  let next = 0
  async function worker() {
    while (next < n) {
      const i = next++
      out[i] = await ctx.connect(makeOpts(i))
    }
  }
  await Promise.all(Array.from({ length: Math.min(concurrency, n) }, worker))
  return out
}

/** A `ws` WebSocket that records every message the client sends. */
export function recordingWebSocket() {
  const sent = []
  class RecordingWebSocket extends WebSocket {
    send(data, ...rest) {
      sent.push(JSON.parse(data))
      return super.send(data, ...rest)
    }
  }
  return { RecordingWebSocket, sent }
}
