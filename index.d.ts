// Typings of payload-realtime's public API (the contract in docs/protocol.md and docs/options.md).

import type { IncomingMessage, Server as HttpServer } from 'node:http'
import type { Duplex } from 'node:stream'

/** A Payload config, as far as the plugin needs to know it. */
export interface PayloadConfigLike {
  secret?: string
  collections?: Array<{ slug: string; hooks?: Record<string, unknown[]>; [key: string]: unknown }>
  onInit?: (payload: any) => unknown
  [key: string]: unknown
}

export type EventType = 'create' | 'update' | 'delete'

/** A collection event, as emitted and as clients receive it. */
export interface RealtimeEvent<Doc = Record<string, unknown>> {
  type: EventType
  collection: string
  id: string | number
  doc?: Doc
  /** The editor, as `{ id, collection }` only: never an email. */
  user?: { id: string | number; collection: string }
  /** ISO 8601; set by the server when missing. */
  timestamp?: string
  /** In rooms with history: the event's number in its room (grows by one per event). */
  offset?: number
  /** In rooms with history: names the history; a new epoch means earlier offsets are gone. */
  epoch?: string
}

/** The user a socket authenticated as: the token's claims, or `null` for anonymous sockets. */
export type SocketUser = { id: string | number; collection?: string; email?: string; [claim: string]: unknown } | null

export interface SocketInfo {
  id: string
  user: SocketUser
  /** Sends a message to this socket; `false` if it is gone. */
  send(message: unknown): boolean
}

/**
 * `true` lets this user receive the event; `{ doc }` lets them receive it with that document in
 * place of the event's (e.g. with field-level access applied); anything else, a throw or a
 * timeout denies.
 */
export type AuthorizeDecision = boolean | { doc: Record<string, unknown> }
export type AuthorizeRule = (user: SocketUser, event: RealtimeEvent) => AuthorizeDecision | Promise<AuthorizeDecision>

export type JoinRule = (user: SocketUser, room: string) => boolean | Promise<boolean>

export interface HistoryPolicy {
  /** Most events kept per room. */
  size: number
  /** Events older than this many seconds are dropped (default: kept until `size` pushes them out). */
  ttlSeconds?: number
  /**
   * Most bytes of events kept per room (default 1 MiB, at least 1024): the oldest go first, and an
   * event larger than this alone is not kept (a recovery over it gets `recovery-failed`).
   */
  maxBytes?: number
}

export interface ServerOptions {
  /** Default `0.0.0.0`. */
  host?: string
  /** Only upgrades on this path are accepted; default: any path. */
  path?: string
  /** The string given to Payload's `buildConfig({ secret })`; the server derives Payload's signing key from it. */
  secret?: string
  /** Origins allowed to connect, e.g. `['https://admin.example.com']`. */
  allowedOrigins?: string[]
  /** Let clients without a token in, with `user: null`. Default false. */
  allowAnonymous?: boolean
  /** Largest inbound message in bytes (default 65536); more closes with 1009. */
  maxPayloadLength?: number
  /**
   * Outbound bytes that may wait for a client that takes nothing (its TCP send buffer full)
   * before it is closed with 4008 (default 1 MiB). The server's own backlog (a burst bigger than
   * this, emitted at once) does not count: delivery waits for the writers instead.
   */
  maxBackpressure?: number
  /**
   * Bytes of emitted events that may wait for the server's writers (events emitted faster than
   * the sockets are written, for long) before `emitEvent` rejects more (default 128 MiB): what
   * bounds memory when the application outruns the server. `stats().backlogBytes` shows it.
   */
  maxBacklog?: number
  /** Seconds of silence before a socket is closed (default 120; pings are automatic; 0 disables). */
  idleTimeout?: number
  /** Threads that read and write the sockets (default: the CPU cores minus one, at least 1, at most 16); one more thread queues each event for its sockets. */
  workerThreads?: number
  /** Collections clients may join; when set, others get `unknown-collection`. */
  includeCollections?: string[]
  /**
   * Rules deciding who receives each event, keyed by collection slug (its events) or by room name
   * or `prefix*` pattern (app events `publish`ed there; a bare name is both a slug and the room of
   * that name; the most specific key applies: the exact name, else the longest prefix).
   */
  authorize?: Record<string, AuthorizeRule>
  /**
   * Who may join which room: `{ [slug or room pattern]: (user, room) => boolean | Promise<boolean> }`
   * (`'posts'` names `collection:posts`; `'chat:*'` every room starting with `chat:`). Every rule
   * that names a room must answer `true`; anything else, a throw or `authorizeTimeout` refuses
   * the join with `forbidden`. Collection rooms no rule names are joined at once; a client's
   * `{ type: 'join', room }` of any other room needs a rule (none: `forbidden`).
   */
  rooms?: Record<string, JoinRule>
  /** Milliseconds an authorize or join rule may take before that user is denied (default 5000). */
  authorizeTimeout?: number
  /** Milliseconds a custom handler may take before the client gets `internal` (default 30000). */
  handlerTimeout?: number
  /**
   * Messages (pings included) per second one client may send (default 100; 0 = no limit). Past
   * it messages are dropped unread with one `rate-limited` error; a client that sends another
   * second's worth without slowing down is closed with 4029.
   */
  maxMessagesPerSecond?: number
  /** Rooms one socket may be in (default 1000). */
  maxRoomsPerSocket?: number
  /**
   * Sockets the server holds at once; past it a handshake is refused with 503
   * `{ error: 'too-many-connections' }` (default: the process's descriptor limit minus 1024 left
   * to Payload, at least half of it).
   */
  maxConnections?: number
  /** Sockets one user may hold at once; past it 429 `{ error: 'too-many-connections' }` (default 32; 0 = no limit). */
  maxConnectionsPerUser?: number
  /** Sockets one client address may hold at once; past it 429 `{ error: 'too-many-connections' }` (default 256; 0 = no limit). */
  maxConnectionsPerIp?: number
  /**
   * Proxies (IP addresses, or `'loopback'` for every loopback address) whose `Forwarded` (or,
   * without it, `X-Forwarded-For`) names the client's address, for `maxConnectionsPerIp`; from
   * anyone else these headers are ignored. Default `['loopback']`: a proxy on the same machine.
   */
  trustedProxies?: string[]
  /**
   * Keep recent events so clients can recover what they missed (`since` on join): for every
   * collection (`{ size, ttlSeconds }`) or per collection slug / room pattern
   * (`{ posts: { size: 100 }, 'chat:*': { size: 50, ttlSeconds: 300 } }`). Off by default.
   */
  history?: HistoryPolicy | Record<string, HistoryPolicy>
  /**
   * Presence (opt-in): `true` for every collection, or a list of slugs / room patterns. Clients
   * ask `{ type: 'presence', collection }` (or `room` for an app room) and members get `presence-join` / `presence-leave`.
   */
  presence?: boolean | string[]
  /** Milliseconds another instance's members count without a refresh (default 15000). */
  presenceExpiry?: number
  /**
   * Several instances through Redis: `redis://`, `rediss://` (TLS), or `redis-cluster://` (sharded
   * pub/sub). Falls back to the `REDIS_URL` environment variable; `false` disables even then.
   * `prefix` starts every channel and key of this app (default: derived from the secret, so apps
   * and environments with different secrets never meet on one Redis).
   */
  redis?: { url?: string; prefix?: string } | false
  /**
   * Confirms a user after the token's signature and expiry were checked (the plugin sets this to
   * Payload's own `auth`, which checks sessions). `null` or a throw refuses the connection; an
   * object becomes the socket's `user`.
   */
  verifyUser?: ((token: string, claims: Record<string, unknown>) => Promise<object | null> | object | null) | false
  /**
   * `verifyUser` calls (each a database read) in flight at once, for handshakes and
   * `{ type: 'auth' }` refreshes together (default 64). Past it a handshake gets 503
   * `{ error: 'too-many-verifications' }` with `Retry-After: 1`, a refresh `rate-limited` (the
   * socket keeps its session), a `?auth=message` socket close 1013.
   */
  maxVerifying?: number
  /** `verifyUser` calls in flight for one user; past it 429 `{ error: 'too-many-verifications' }` (default 4; 0 = no limit). */
  maxVerifyingPerUser?: number
  /**
   * Milliseconds one `verifyUser` may take (default 5000); no answer in time refuses (401, or
   * `forbidden` for a refresh) and frees its place under `maxVerifying`.
   */
  verifyTimeout?: number
  /**
   * Milliseconds a socket opened with `?auth=message` has to send `{ type: 'auth', token }` as
   * its first message (default 10000); otherwise it is closed with 4004.
   */
  authTimeout?: number
  /**
   * Recoveries (joins with `since`) one socket may make of one room per minute (default 10; 0 = no
   * limit). Past it the join goes on live, with `recovered: false` and `recovery-failed`
   * (`reason: "Limited"`): the client refetches.
   */
  maxRecoveriesPerMinute?: number
  /**
   * Most events one recovery replays (default 1000). More missed: the join goes on live with
   * `recovered: false` and `recovery-failed` (`reason: "TooManyEvents"`): the client refetches.
   */
  maxRecoveryEvents?: number
  /**
   * Prometheus `GET /metrics` (text format), off by default: `{ token }` (at least 16
   * characters) serves it on the server's port to `Authorization: Bearer <token>` (401
   * otherwise); `{ port, host }` on a listener of its own (host default `127.0.0.1`, port 0
   * picks one: `manager.metricsPort`). See docs/operations.md.
   */
  metrics?: { token: string } | { port: number; host?: string } | false
  /**
   * Milliseconds `close()` (and SIGTERM) gives sockets to go after their 1001 before the rest are
   * cut. Default 5000.
   */
  drainTimeout?: number
  /**
   * Where the server's log lines go: `{ info, warn, error }` (the plugin defaults to Payload's
   * logger), or `false` for stderr. Lines are redacted, one per kind per episode, and queued
   * (at most 1024 waiting; more are dropped and counted).
   */
  logger?:
    { info(msg: string): void; warn(msg: string): void; error(msg: string): void; debug?(msg: string): void } | false
  /**
   * Revoked sessions each instance remembers (default 100000); past it the one that expires
   * first is forgotten (`stats().sessions.evicted`). With Redis they are also kept there.
   */
  maxRevokedSessions?: number
  /**
   * Seconds: the longest a token can live (default 7 days; the plugin sets the longest
   * `auth.tokenExpiration` of its auth collections). Revocations are kept this long at most.
   */
  maxTokenLifetime?: number
  /**
   * Runs for every new socket once it is authenticated. `socket.join(room)` (or `rooms` in the
   * answer) joins it to rooms without a rule (role rooms); `initial` (a message or a list) is sent
   * first, before any event: the socket's own joins wait for it. A throw, a bad answer or
   * `handlerTimeout` is logged and leaves the socket as it is.
   */
  onConnect?: (
    socket: SocketInfo & { join(room: string): void },
  ) => OnConnectAnswer | void | Promise<OnConnectAnswer | void>
}

/** What `onConnect` may answer. */
export interface OnConnectAnswer {
  rooms?: string[]
  initial?: object | object[]
}

export interface PluginOptions extends ServerOptions {
  /** `false` leaves the config untouched. */
  enabled?: boolean
  /** When set, the server starts in Payload's `onInit` on this port. */
  port?: number
  /**
   * On by default: each event goes only to users whose Payload `read` access allows the
   * document, with the document as they would read it (published version, field-level access
   * applied), and a user whose read access allows nothing of a collection is refused its room
   * (`forbidden`). `false` turns it off for every collection, `{ posts: false }` for one: then
   * everyone who may connect receives that collection's events whole.
   */
  readAccess?: boolean | Record<string, boolean>
  /**
   * The live admin (on by default when `port` is set): Payload's admin shows other editors'
   * changes and document locks as they happen. `false` turns it off; `{ url }` or `{ port, path }`
   * says where the browser finds a server the application starts or attaches itself.
   */
  admin?: boolean | { url?: string; port?: number; path?: string }
  shouldEmit?: (event: RealtimeEvent) => boolean
  transformEvent?: (event: RealtimeEvent) => RealtimeEvent | null | undefined
}

export interface RealtimeStats {
  connections: number
  connectionsTotal: number
  /** Of `connections`: Server-Sent Events streams open and long polls waiting now. */
  streams: number
  handshakesRefused: number
  /** Handshakes refused with 503 for `maxConnections` (also in `handshakesRefused`). */
  refusedMaxConnections: number
  /** Handshakes refused with 429 for `maxConnectionsPerUser` (also in `handshakesRefused`). */
  refusedPerUser: number
  /** Handshakes refused with 429 for `maxConnectionsPerIp` (also in `handshakesRefused`). */
  refusedPerIp: number
  rooms: number
  messagesIn: number
  messagesOut: number
  dropped: number
  slowConsumers: number
  /** Sockets closed with 4029: they kept sending past `maxMessagesPerSecond`. */
  rateLimited: number
  events: number
  authorizeDenied: number
  authorizeErrors: number
  handlerErrors: number
  /**
   * Times delivery waited for the server's own writers before queuing more: events were emitted
   * faster than the sockets could be written, so `emitEvent` answered later instead of clients
   * being closed as slow consumers for the server's backlog.
   */
  backlogWaits: number
  /** Bytes of emitted events waiting for the server's writers now (at most `maxBacklog`). */
  backlogBytes: number
  /**
   * Bytes handed to sockets by reference rather than copied (Linux `splice`: a large buffer that
   * many sockets send, such as a burst of events to a big room), since the process started.
   */
  splicedBytes: number
  /** Tasks alive on the server's runtime (one per socket plus a few): a leak would show here. */
  tasks: number
  /**
   * Bytes held by the process's native heap (glibc's `mallinfo2`; Node's own native allocations
   * included, its JS heap not), or `undefined` on other allocators and on glibc older than 2.33.
   * Beside RSS it separates memory in use from memory freed but not yet given back.
   */
  heapBytes?: number
  /** With Redis: the broker's state and counters. */
  redis?: {
    connected: boolean
    published: number
    received: number
    errors: number
    subscriptions: number
    rejected: number
    /** Times the connection was established again after a loss. */
    reconnects: number
  }
  /** `verifyUser` calls in flight now (handshakes and refreshes). */
  verifying: number
  /** Handshakes and refreshes turned away at `maxVerifying` / `maxVerifyingPerUser`. */
  refusedVerifying: number
  /** Sockets opened with `?auth=message` that have not sent their token yet. */
  pendingAuth: number
  /** Sockets closed with 4004: no `auth` message within `authTimeout`, another message first, or a refused token. */
  authFailures: number
  /** Joins with `since` that went on live without a replay, for `maxRecoveriesPerMinute`. */
  recoveriesLimited: number
  /** Joins with `since` that went on live without a replay, for `maxRecoveryEvents`. */
  recoveriesTooLong: number
  /** Events refused at once (`emitEvent` rejects) because the queue into the server was at `maxBacklog`. */
  ingestFull: number
  /**
   * Sockets closed with 4008 because messages the server cannot hold back (from Redis, broadcasts)
   * brought the backlog to `maxBacklog` while delivery waited for them.
   */
  backlogEvictions: number
  /**
   * Messages from Redis and broadcasts dropped at twice `maxBacklog`; their rooms' members were sent
   * `recovery-failed` (`reason: "Dropped"`).
   */
  backlogDropped: number
  /** Bytes of events dropped from room histories for their `maxBytes`. */
  historyEvictedBytes: number
  /** Bytes of WebSocket frames read from clients. */
  bytesIn: number
  /** Bytes of the frames `messagesOut` counts. */
  bytesOut: number
  /** Calls of the authorize callback (one per event and room). */
  authorizeCalls: number
  /** Log lines dropped because the logger's queue (1024 lines) was full. */
  logLinesDropped: number
  /**
   * Revoked sessions: held by this instance now, waiting to be written to Redis, forgotten to
   * stay within `maxRevokedSessions`, and checks Redis could not answer (each refused).
   */
  sessions: { revoked: number; pending: number; evicted: number; checkFailures: number }
}

export declare class UWebSocketManager {
  /** The port the server listens on (useful with port 0). */
  readonly port: number
  /** The port of `/metrics`'s own listener (`metrics: { port }`), else `null`. */
  readonly metricsPort: number | null
  /** This server's id, the prefix of its socket ids. */
  readonly instanceId: string
  /** Sends to room `collection:<slug>`, through that collection's authorize rule. */
  emitEvent(event: RealtimeEvent): Promise<void>
  broadcastToRoom(room: string, message: object, opts?: { except?: string }): void
  /**
   * An application event for `room`, on the path of collection events: through the authorize
   * rule whose key names the room, numbered and recoverable when the room has history, to every
   * instance, in order with the room's other events. The client gets `{ ...message, room }` (and
   * `offset`, `epoch` with history). `except`: a socket (id or object) or a user `{ collection, id }`.
   * Resolves with the number of sockets it was queued to here.
   */
  publish(
    room: string,
    message: { type: string; [key: string]: unknown },
    opts?: { except?: string | SocketInfo | { collection: string; id: string | number } },
  ): Promise<number>
  /** The handler's return value (when not undefined) is the reply, with the request's `id`. */
  registerCustomHandler(type: string, handler: (socket: SocketInfo, msg: any) => unknown): void
  /** `socket`: a socket id, or the socket a custom handler was given. `false` if it is gone. */
  sendToSocket(socket: string | SocketInfo, message: object): boolean
  joinRoom(socketId: string, room: string): boolean
  leaveRoom(socketId: string, room: string): boolean
  getSocketsInRoom(room: string): Array<{ id: string; user: SocketUser }>
  /** Sends to every socket connected, on every instance; returns how many sockets here got it. */
  broadcast(message: object): number
  /**
   * This instance's sockets in connection order, `limit` (default 100, at most 1000) per page;
   * pass `next` as `after` for the next page.
   */
  listSockets(options?: { limit?: number; after?: string }): {
    sockets: Array<{ id: string; user: SocketUser; rooms: string[] }>
    next?: string
  }
  /** Closes with 4003 the sockets of a user's session (every session without `sid`); returns how many. */
  revokeSession(session: {
    collection: string
    id: string | number
    sid?: string
    exp?: number
    remember?: boolean
  }): number
  /** A user changed (`doc`) or was deleted (`null`), on every instance. */
  updateUser(user: { collection: string; id: string | number; doc: object | null }): number
  stats(): RealtimeStats
  /**
   * Takes over a WebSocket upgrade from your own HTTP server (its `'upgrade'` event): the server
   * adopts the connection's file descriptor, checks and answers the handshake exactly as on its
   * own port (token, Origin rules, `verifyUser`, `path`, the same refusals), and serves the socket;
   * Node's socket is then closed on Node's side only. Call it from the listener itself, or at
   * least before anything else reads from or writes to the socket.
   * Returns true once the server has the connection; false when the manager is closed (the
   * upgrade is then answered 503). Throws a `RealtimeError` with code `'cannot-adopt'`, leaving
   * the socket untouched, for a TLS socket, a socket without a file descriptor (Windows), or one
   * that is not a connected TCP socket (a Unix domain socket): serve WebSockets on their own
   * port there, or route the path to that port from a reverse proxy.
   */
  handleUpgrade(req: IncomingMessage, socket: Duplex, head?: Buffer): boolean
  /**
   * Adds one `'upgrade'` listener to `server` that hands the upgrades whose path is `path` to
   * `handleUpgrade`. `path` defaults to the manager's `path` option, else `'/realtime'`; it must
   * equal the `path` option when that is set, and may not be under `/_next/`. Every other upgrade
   * (Next.js's HMR socket, another WebSocket server) is left to the server's other `'upgrade'`
   * listeners, or answered 404 when there are none. Throws `'cannot-adopt'` for an HTTPS server.
   * Returns a function that removes the listener; `close()` removes it too.
   */
  attachTo(server: HttpServer, options?: { path?: string }): () => void
  /** Sends 1001 to every socket and frees the port. */
  close(options?: { grace?: number }): Promise<void>
}

/** A Payload plugin: `plugins: [uWebSocketPlugin({ includeCollections: ['posts'], port: 3002 })]`. */
export declare function uWebSocketPlugin(options?: PluginOptions): <C extends PayloadConfigLike>(config: C) => C

/** Starts the server; resolves once it listens. Rejects if the port is taken. */
export declare function initUWebSocket(port?: number, options?: ServerOptions): Promise<UWebSocketManager>

/** The running manager; throws if none was started. */
export declare function getUWebSocketManager(): UWebSocketManager

/**
 * The `code` of a `RealtimeError` the manager throws or rejects with: `'closed'` (the server is
 * closing or closed), `'server-behind'` (`maxBacklog` reached), `'invalid-input'` (an event or a
 * call the core refuses), `'invalid-option'` and `'cannot-listen'` (the server did not start),
 * `'cannot-adopt'` (`handleUpgrade`, `attachTo`), `'not-started'` (`getUWebSocketManager`),
 * `'internal'`.
 */
export type RealtimeErrorCode =
  | 'invalid-option'
  | 'cannot-listen'
  | 'invalid-input'
  | 'closed'
  | 'server-behind'
  | 'cannot-adopt'
  | 'internal'
  | 'not-started'

/**
 * An error with a code: one of `RealtimeErrorCode` from the manager; thrown by a custom handler
 * with a protocol error code (`'forbidden'`, ...), sent to the client.
 */
export declare class RealtimeError extends Error {
  constructor(code: string, message: string)
  code: RealtimeErrorCode | (string & {})
}

// The type names of payload-uwebsocket-plugin, for code written against it. Its handlers took
// `user: any` and `doc?: any`; these keep that, so its code compiles unchanged where it is typed
// with them (`const options: UWebSocketPluginOptions = { ... }`).
export type RealtimeEventPayload = RealtimeEvent<any>
export type CollectionAuthorizationHandler = (
  user: any,
  event: RealtimeEventPayload,
) => AuthorizeDecision | Promise<AuthorizeDecision>
export type UWebSocketPluginOptions = Omit<PluginOptions, 'authorize'> & {
  authorize?: { [collectionSlug: string]: CollectionAuthorizationHandler }
}
export type AuthenticatedWebSocket = SocketInfo
export interface WebSocketUserData {
  user?: SocketUser
  id?: string
}
export interface WebSocketMessage {
  type: string
  data?: any
  [key: string]: unknown
}

declare const _default: {
  uWebSocketPlugin: typeof uWebSocketPlugin
  initUWebSocket: typeof initUWebSocket
  getUWebSocketManager: typeof getUWebSocketManager
  UWebSocketManager: typeof UWebSocketManager
  RealtimeError: typeof RealtimeError
}
export default _default
