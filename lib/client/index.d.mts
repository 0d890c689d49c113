// Typings of payload-realtime/client.

export type ConnectionStatus = 'connecting' | 'open' | 'reconnecting' | 'closed'

/** A collection event as the server sends it. */
export interface RealtimeEvent<Doc = Record<string, unknown>> {
  type: 'create' | 'update' | 'delete' | (string & {})
  collection: string
  id: string | number
  doc?: Doc
  user?: { id: string | number; collection: string }
  timestamp?: string
  [field: string]: unknown
}

/** Any message from the server (events, replies, room broadcasts). */
export interface ServerMessage {
  type: string
  id?: string | number
  [field: string]: unknown
}

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
  reply?: ServerMessage
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
  /** Every valid message that is not a reply to a request. */
  message: (message: ServerMessage) => void
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
  /** The collections subscribed to. */
  readonly collections: string[]
  /** `'posts'`, `'posts.*'` (every type) or `'posts.update'`; returns the unsubscribe function. */
  subscribe<Doc = Record<string, unknown>>(
    subscription: string,
    handler: (event: RealtimeEvent<Doc>) => unknown,
  ): () => void
  /** Sends `{ ...data, type, id }`; resolves with the reply, rejects with a `RealtimeClientError`. */
  request<Reply extends ServerMessage = ServerMessage>(
    type: string,
    data?: Record<string, unknown>,
    options?: { timeout?: number },
  ): Promise<Reply>
  on<E extends keyof ClientEvents>(event: E, listener: ClientEvents[E]): () => void
  once<E extends keyof ClientEvents>(event: E, listener: ClientEvents[E]): () => void
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

export default createRealtimeClient
