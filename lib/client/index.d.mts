// Typings of payload-realtime/client.

export type ConnectionStatus = 'connecting' | 'open' | 'reconnecting' | 'closed'

/** The editor of a change, as events and presence name users: never an email. */
export interface RealtimeUser {
  id: string | number
  collection: string
}

/** A room's position in its history, as `ack` replies to joins carry it. */
export interface RoomPosition {
  offset: number
  epoch: string
}

/** A collection event as the server sends it. */
export interface RealtimeEvent<Doc = Record<string, unknown>> {
  type: 'create' | 'update' | 'delete'
  collection: string
  id: string | number
  doc?: Doc | null
  user?: RealtimeUser
  timestamp: string
  /** Position in the room's history (with the `history` server option). */
  offset?: number
  epoch?: string
}

/** The success reply to a request with an `id` (joins add the rooms' positions). */
export interface AckMessage {
  type: 'ack'
  id: string | number
  /** Joins: each joined collection's position, when it keeps history. */
  positions?: Record<string, RoomPosition>
  /** Joins with `since`: whether the missed events were replayed. */
  recovered?: boolean
}

/** The reply to `{ type: 'ping' }`. */
export interface PongMessage {
  type: 'pong'
  id?: string | number
}

/** The server's error codes (see the contract). */
export type ServerErrorCode =
  | 'bad-json'
  | 'bad-message'
  | 'unknown-type'
  | 'unknown-collection'
  | 'forbidden'
  | 'rate-limited'
  | 'too-large'
  | 'internal'
  | (string & {})

/** A refused request (with its `id`), or a problem with a message that had none. */
export interface ErrorMessage {
  type: 'error'
  code: ServerErrorCode
  message: string
  id?: string | number
}

/**
 * The reply to a `presence` request (`{ type: 'presence', collection }` or `{ type: 'presence', room }`):
 * who is in the room (distinct users).
 */
export interface PresenceMessage {
  type: 'presence'
  id?: string | number
  room: string
  /** Only for a collection's room. */
  collection?: string
  members: RealtimeUser[]
}

/** Someone entered (`presence-join`) or left (`presence-leave`) a room with presence. */
export interface PresenceChangeMessage {
  type: 'presence-join' | 'presence-leave'
  room: string
  /** Only for a collection's room. */
  collection?: string
  user: RealtimeUser
}

/** Missed events could not be replayed: refetch (`reason`: see the `recovery-failed` event). */
export interface RecoveryFailedMessage {
  type: 'recovery-failed'
  room: string
  collection?: string
  reason: string
}

/**
 * Every message of the protocol itself, discriminated by `type`: `switch (message.type)`
 * narrows it.
 */
export type KnownServerMessage =
  | RealtimeEvent
  | AckMessage
  | PongMessage
  | ErrorMessage
  | PresenceMessage
  | PresenceChangeMessage
  | RecoveryFailedMessage

/** The `type` of a protocol message. */
export type KnownMessageType = KnownServerMessage['type']

/**
 * A message of the application's own: a room broadcast, a custom handler's reply, an app event.
 * Declare yours as `{ type: 'order.created'; ... }` and pass them to `ServerMessage<...>`.
 */
export interface CustomMessage<Type extends string = string> {
  type: Type
  id?: string | number
  [field: string]: unknown
}

/**
 * Any message from the server. With your own messages as `Custom` (a union of interfaces with
 * literal `type`s), the whole union narrows on `type`; with the default `CustomMessage` (any
 * `type`), narrow `KnownServerMessage` or use `MessageOfType`.
 */
export type ServerMessage<Custom extends { type: string } = CustomMessage> = KnownServerMessage | Custom

/** The message of type `Type`: the protocol's own, or a `CustomMessage<Type>`. */
export type MessageOfType<Type extends string> = [KnownOfType<KnownServerMessage, Type>] extends [never]
  ? CustomMessage<Type>
  : KnownOfType<KnownServerMessage, Type>

/** The members of `M` whose `type` admits `Type`. */
type KnownOfType<M, Type extends string> = M extends { type: infer T } ? (Type extends T ? M : never) : never

export interface ReconnectOptions {
  /** Ceiling of the first delay, ms (default 500). */
  initialDelay?: number
  /** Largest delay, ms (default 30000). */
  maxDelay?: number
  /** Growth of the ceiling per attempt (default 2). */
  factor?: number
  /** Give up after this many consecutive failed attempts (default Infinity). */
  maxAttempts?: number
  /** A connection open this long (ms) resets the attempt count (default 5000). */
  stableAfter?: number
}

export interface LivenessOptions {
  /** With nothing received for this long (ms), send a `ping` (default 25000). */
  interval?: number
  /** With still nothing received this long (ms) after the ping, reconnect (default 10000). */
  timeout?: number
}

export interface GetTokenContext {
  /** `'expired'` after a 4001 or 4004 close: return a fresh token, not a cached one. */
  reason: 'connect' | 'reconnect' | 'expired'
  /** Failed attempts since the last stable connection. */
  attempt: number
}

export interface RealtimeClientOptions {
  /** `ws://host:port/` (or `wss://`; `http(s)://` is converted). */
  url: string
  /** Sent in the first message after the upgrade (`?auth=message`), never in the URL. */
  token?: string | null
  /** Called before every connection attempt; may be async. Overrides `token`. */
  getToken?: (ctx: GetTokenContext) => string | null | undefined | Promise<string | null | undefined>
  /** A WebSocket implementation (e.g. `ws` on Node 20); default `globalThis.WebSocket`. */
  WebSocket?: unknown
  /** `false` disables reconnecting. */
  reconnect?: boolean | ReconnectOptions
  /** Default timeout of `request()`, ms (default 10000). */
  requestTimeout?: number
  /** Connect in the constructor (default true). */
  autoConnect?: boolean
  /** Random source in [0, 1) for the backoff jitter (tests). */
  random?: () => number
  /**
   * Send the token as `?token=` instead of in the first message (default false). The weakest
   * option: proxies, load balancers and APM tools log URLs, token included. Only for servers
   * that predate first-message auth.
   */
  tokenInUrl?: boolean
  /**
   * Notice a dead connection (no data, no pong) and replace it; `false` disables. Defaults:
   * `DEFAULT_LIVENESS`.
   */
  liveness?: false | LivenessOptions
  /**
   * In browsers: when back `online` or the page becomes visible again, retry at once instead of
   * waiting out the backoff, or check an open connection with a ping (default true).
   */
  reconnectOnResume?: boolean
  /**
   * How to connect: a WebSocket, then Server-Sent Events (`GET <path>/sse`) when a WebSocket
   * handshake cannot be made (default `['websocket', 'sse']`). Over SSE, requests other than
   * joins, leaves and pings reject with the code `transport-unsupported`.
   */
  transports?: Array<'websocket' | 'sse'>
  /** The fetch the SSE transport uses (default `globalThis.fetch`). */
  fetch?: typeof fetch
}

/**
 * Codes: the server's error codes (`unknown-collection`, `forbidden`, `unknown-type`, ...) and the
 * client's own: `timeout`, `connection-lost`, `disconnected`, `bad-message`, `handler-error`,
 * `listener-error`, `token-error`, `token-expired`, `unauthorized`, `session-revoked`, `reconnect-failed`,
 * `connect-failed`, `send-failed`.
 */
export declare class RealtimeClientError extends Error {
  constructor(code: string, message: string, details?: Record<string, unknown>)
  code: string
  /** The server's reply, for server errors. */
  reply?: ErrorMessage
  /** The collection concerned (join errors, handler errors). */
  collection?: string
  /** The close code that stopped the client (`session-revoked`, `token-expired`). */
  closeCode?: number
  cause?: unknown
}

export interface CloseInfo {
  code: number
  reason: string
  wasClean?: boolean
}

export interface ClientEvents {
  status: (status: ConnectionStatus, detail?: CloseInfo) => void
  open: () => void
  close: (info: CloseInfo) => void
  reconnecting: (info: { attempt: number; delay: number; code: number; reason: string }) => void
  error: (error: RealtimeClientError) => void
  /** Every valid message that is not a reply to a request (unsolicited errors included). */
  message: (message: ServerMessage) => void
  /** A retry made at once, skipping the backoff delay: back `online`, or the page `visible`. */
  resume: (info: { reason: 'online' | 'visible' }) => void
  /** The transport changed: `'sse'` after a WebSocket handshake failed, back to `'websocket'` when SSE failed too. */
  transport: (info: { transport: 'websocket' | 'sse'; code: number }) => void
  /**
   * Events missed while away could not be replayed (the room keeps no history, the history was
   * trimmed, or the server restarted; `reason` `"Limited"` or `"TooManyEvents"` past the server's
   * recovery bounds), or the server dropped messages for the room while overloaded (`"Dropped"`):
   * refetch what the app shows from that collection. `collection` is absent for a room that is not
   * a collection's.
   */
  'recovery-failed': (info: { collection?: string; room: string; reason: string }) => void
}

export declare class RealtimeClient {
  constructor(options: RealtimeClientOptions)
  readonly status: ConnectionStatus
  /** What the client connects with: `'sse'` after falling back from a blocked WebSocket. */
  readonly transport: 'websocket' | 'sse'
  /** The collections subscribed to. */
  readonly collections: string[]
  /**
   * `'posts'`, `'posts.*'` (every type) or `'posts.update'`; returns the unsubscribe function.
   * App rooms the same way: `'role:admin.plugin-installed'`, or `'order.created'` (room `order`
   * when the server has no collection `order`). A name the server refuses as both is reported
   * once as an `error` event (code `unknown-collection` for a bare name).
   */
  subscribe<Doc = Record<string, unknown>>(
    subscription: string,
    handler: (event: RealtimeEvent<Doc>) => unknown,
  ): () => void
  /** Sends `{ ...data, type, id }`; resolves with the reply, rejects with a `RealtimeClientError`. */
  request<Reply extends { type: string } = ServerMessage>(
    type: string,
    data?: Record<string, unknown>,
    options?: { timeout?: number },
  ): Promise<Reply>
  on<E extends keyof ClientEvents>(event: E, listener: ClientEvents[E]): () => void
  once<E extends keyof ClientEvents>(event: E, listener: ClientEvents[E]): () => void
  /**
   * Sends `message` as it is, with no reply awaited; false (nothing queued) when not open.
   * Throws a TypeError unless it is an object with a string `type`.
   */
  send(message: { type: string; [field: string]: unknown }): boolean
  connect(): void
  /** Closes with 1000 and stops reconnecting; subscriptions are kept for a later `connect()`. */
  disconnect(): void
}

export declare function createRealtimeClient(options: RealtimeClientOptions): RealtimeClient

/** Full jitter: uniform in [0, min(maxDelay, initialDelay * factor^attempt)). */
export declare function backoffDelay(attempt: number, options?: ReconnectOptions, random?: () => number): number

export declare function parseSubscription(subscription: string): { collection: string; type: string | null }

/** `null` when the message is usable, else what is wrong with it. */
export declare function validateMessage(message: unknown): string | null

export declare const CloseCodes: {
  readonly NORMAL: 1000
  readonly GOING_AWAY: 1001
  readonly PROTOCOL_ERROR: 1002
  readonly INVALID_PAYLOAD: 1007
  readonly MESSAGE_TOO_BIG: 1009
  readonly INTERNAL_ERROR: 1011
  readonly TRY_AGAIN_LATER: 1013
  readonly TOKEN_EXPIRED: 4001
  readonly SESSION_REVOKED: 4003
  readonly UNAUTHORIZED: 4004
  readonly SLOW_CONSUMER: 4008
  readonly RATE_LIMITED: 4029
}

export declare const DEFAULT_RECONNECT: Required<ReconnectOptions>

export declare const DEFAULT_LIVENESS: Required<LivenessOptions>

export default createRealtimeClient

/** A Payload `Where` query (the subset `liveQuery` evaluates locally; anything else refetches). */
export type Where = { [field: string]: unknown; and?: Where[]; or?: Where[] }

export type LiveQueryStatus = 'loading' | 'ready' | 'refreshing' | 'error' | 'closed'

export interface LiveQuerySnapshot<Doc = Record<string, unknown>> {
  /** The list as a fresh query would return it (frozen; a new array on every change). */
  docs: readonly Doc[]
  /** `'loading'` until the first load, `'refreshing'` while reloading with `docs` shown. */
  status: LiveQueryStatus
  /** Code `query-failed` (with the HTTP `status`) or the server's join error, when `status` is `'error'`. */
  error: RealtimeClientError | null
}

export interface LiveQueryOptions {
  where?: Where
  /** `'-title'`, `'-title,createdAt'` or `['-title', 'createdAt']`; default Payload's `-createdAt`. */
  sort?: string | readonly string[]
  /** Payload's page size (default: Payload's, 10); 0 for every match. */
  limit?: number
  /** Default 0: relationships as ids, as events carry them (deeper refetches on each relevant event). */
  depth?: number
  /** The REST API's base (default `'/api'`). */
  apiUrl?: string
  /** Payload's `serverURL`: the API is `<serverURL>/api`. */
  serverURL?: string
  /** `fetch`'s `credentials` (default `'include'`: the viewer's `payload-token` cookie). */
  credentials?: 'include' | 'same-origin' | 'omit'
  /** Extra request headers, e.g. `{ Authorization: 'JWT ' + token }`; a function is called per load. */
  headers?: Record<string, string> | (() => Record<string, string> | Promise<Record<string, string>>)
  /** Default `globalThis.fetch`. */
  fetch?: typeof fetch
  /** Refetches asked for within this many ms become one (default 50). */
  debounce?: number
  /** Events kept while a load runs, to apply to its result (default 1000); past it, it loads again. */
  maxPendingEvents?: number
  /** Default true; `false` to call `start()` yourself. */
  autoStart?: boolean
}

export declare class LiveQuery<Doc = Record<string, unknown>> {
  constructor(client: RealtimeClient, collection: string, options?: LiveQueryOptions)
  readonly client: RealtimeClient
  readonly collection: string
  getSnapshot(): LiveQuerySnapshot<Doc>
  subscribe(listener: () => void): () => void
  /** Resolves once nothing is loading or scheduled. */
  settled(): Promise<LiveQuerySnapshot<Doc>>
  /** Loads again now (also the way out of `'error'`); bound, so it can be passed around. */
  refetch: () => void
  start(): void
  close(): void
}

/** A live query: a store giving `{ docs, status, error }`, kept equal to a fresh REST query. */
export declare function liveQuery<Doc = Record<string, unknown>>(
  client: RealtimeClient,
  collection: string,
  options?: LiveQueryOptions,
): LiveQuery<Doc>

export declare const LIVE_QUERY_DEFAULTS: {
  readonly debounce: 50
  readonly apiUrl: '/api'
  readonly credentials: 'include'
  readonly depth: 0
  readonly maxPendingEvents: 1000
}

/** `true`, `false`, or `undefined` when `doc` cannot tell (then a live query refetches). */
export declare function matchWhere(where: Where | null | undefined, doc: Record<string, unknown>): boolean | undefined

/** Payload's order of two documents for `sort`; `undefined` when a sort field is absent. */
export declare function makeComparator(
  sort?: string | readonly string[],
): (a: Record<string, unknown>, b: Record<string, unknown>) => number | undefined

/** Payload's `qs` bracket query string: `where[title][equals]=a&limit=3`. */
export declare function toQueryString(params: Record<string, unknown>): string
