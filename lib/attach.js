'use strict'
// Connections taken over from the application's own HTTP server (Next.js's, Express's): an
// upgrade or an SSE / long-poll request is handed to the Rust server by its file descriptor.

const tls = require('node:tls')

const { RealtimeError, nativeError } = require('./errors.js')
const { isPlainObject } = require('./util.js')

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

/**
 * Takes over a WebSocket upgrade from your own HTTP server (its `'upgrade'` event): the Rust
 * server adopts the connection's file descriptor, checks and answers the handshake exactly as on
 * its own port, and serves the socket; Node's socket is then closed on Node's side only.
 * Returns true once the server has the connection, false when the manager is closed (then the
 * upgrade is answered 503 here). Throws a RealtimeError with code `'cannot-adopt'` for a TLS
 * socket, a socket without a file descriptor (Windows), or one that is not a connected TCP
 * socket; the socket is then left untouched.
 * @param {import('./manager.js').UWebSocketManager} manager
 * @param {import('node:http').IncomingMessage} req
 * @param {import('node:stream').Duplex} socket
 * @param {Buffer} [head] the bytes Node read past the request's headers
 */
function handleUpgrade(manager, req, socket, head) {
  if (!req || typeof req.method !== 'string' || typeof req.url !== 'string' || !Array.isArray(req.rawHeaders)) {
    throw new TypeError("payload-realtime: handleUpgrade takes (req, socket, head) of an HTTP server's 'upgrade' event")
  }
  if (head !== undefined && head !== null && !Buffer.isBuffer(head)) {
    throw new TypeError('payload-realtime: handleUpgrade: head must be a Buffer')
  }
  const fd = adoptableFd(socket)
  if (manager._closing) {
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
    adopted = manager._server.adoptUpgrade(fd, req.method, req.url, req.rawHeaders, early)
  } catch (/** @type {any} */ err) {
    if (err?.code === 'cannot-adopt')
      throw cannotAdopt(String(err.message).replace(/^cannot adopt the connection: /, ''))
    throw nativeError(err)
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
 * Used by attachTo.
 * @param {import('./manager.js').UWebSocketManager} manager
 * @param {import('node:http').IncomingMessage} req
 */
function takeRequest(manager, req) {
  const socket = req.socket
  const fd = adoptableFd(socket)
  if (manager._closing || !manager._server.adoptUpgrade(fd, req.method, req.url, req.rawHeaders, Buffer.alloc(0))) {
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
 * @param {import('./manager.js').UWebSocketManager} manager
 * @param {import('node:http').Server} server
 * @param {{ path?: string }} [options]
 * @returns {() => void}
 */
function attachTo(manager, server, options = {}) {
  if (!server || typeof server.on !== 'function' || typeof server.listeners !== 'function') {
    throw new TypeError('payload-realtime: attachTo takes a Node http.Server')
  }
  if (!isPlainObject(options ?? {})) throw new TypeError('payload-realtime: attachTo options must be an object')
  if (manager._closing) throw new RealtimeError('closed', 'payload-realtime: attachTo: the manager is closed')
  if (server instanceof tls.Server) throw cannotAdopt('the server is an HTTPS server, whose encryption lives in Node')
  if (process.platform === 'win32') throw cannotAdopt('sockets on Windows have no file descriptor to hand over')
  if (typeof server.address === 'function' && typeof server.address() === 'string') {
    throw cannotAdopt('the server listens on a Unix domain socket, not TCP')
  }
  const path = attachPath(options?.path ?? manager._path ?? DEFAULT_ATTACH_PATH, manager._path)
  const attached = manager._attached.get(server)
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
      manager.handleUpgrade(req, socket, head)
    } catch (/** @type {any} */ err) {
      // An exception in an event listener would take the process down.
      manager._logFailure('attachTo', err)
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
  /** @this {any} */
  const takeRequests = function (event, req, res) {
    if (taking && event === 'request' && req?.method === 'GET' && streams.has(targetPath(req.url))) {
      try {
        if (manager._takeRequest(req)) return true
      } catch (/** @type {any} */ err) {
        manager._logFailure('attachTo', err)
        if (!res.headersSent) {
          res.writeHead(500, { 'content-type': 'application/json', connection: 'close' })
          res.end(JSON.stringify({ error: err?.code === 'cannot-adopt' ? 'cannot-adopt' : 'internal' }))
        }
        return true
      }
    }
    return emit.apply(this, /** @type {any} */ (arguments))
  }
  server.emit = takeRequests
  const detach = () => {
    server.removeListener('upgrade', onUpgrade)
    taking = false
    // Wrapped again by someone since: ours stays in their chain, passing everything on.
    if (server.emit === takeRequests) server.emit = emit
    if (manager._attached.get(server)?.detach === detach) manager._attached.delete(server)
  }
  manager._attached.set(server, { path, detach })
  return detach
}

module.exports = { handleUpgrade, takeRequest, attachTo }
