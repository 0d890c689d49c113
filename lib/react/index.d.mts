// Typings of payload-realtime/react.
import type { Context, ReactNode } from 'react'

import type {
  ConnectionStatus,
  MessageOfType,
  RealtimeClient,
  RealtimeClientOptions,
  RealtimeEvent,
  ServerMessage,
} from '../client/index.mjs'

export type RealtimeProviderProps =
  | { client: RealtimeClient; children?: ReactNode }
  | (Omit<RealtimeClientOptions, 'autoConnect'> & { client?: undefined; children?: ReactNode })

/** Holds one client: your own `client`, or one it creates from the options (connected while mounted). */
export declare function RealtimeProvider(props: RealtimeProviderProps): ReactNode

/** The client of the nearest provider; throws outside one. */
export declare function useRealtimeClient(): RealtimeClient

/** `'posts'`, `'posts.update'`, `'posts.*'`, a list of these, or null/false for none. */
export type Subscription = string | readonly string[] | null | undefined | false

/** Calls the latest `handler` for each matching message while mounted. */
export declare function useRealtime<Doc = Record<string, unknown>>(
  subscription: Subscription,
  handler: (event: RealtimeEvent<Doc>) => unknown,
): void

/** The connection status, re-rendering on change. */
export declare function useRealtimeStatus(): ConnectionStatus

export declare const RealtimeContext: Context<RealtimeClient | null>

/** A message type, a list of them, `'*'` for every message, or null/false for none. */
export type MessageTypes = string | readonly string[] | null | undefined | false

/**
 * Calls the latest `handler` for each message of `type` the client receives while mounted
 * (replies to `request()` excepted). One literal type gives that message's own type.
 */
export declare function useRealtimeMessage<Type extends string>(
  type: Type,
  handler: (message: Type extends '*' ? ServerMessage : MessageOfType<Type>) => unknown,
): void
export declare function useRealtimeMessage(types: MessageTypes, handler: (message: ServerMessage) => unknown): void

/** What `usePayloadWebSocket` returns: the original design's hook shape, plus the client. */
export interface PayloadWebSocketState {
  /** The connection is open (authenticated, rooms joined). */
  isConnected: boolean
  /** The last message received (parsed), or null. */
  lastMessage: ServerMessage | null
  /**
   * Sends an object (or a JSON object string); false when not connected. `join-collection` /
   * `subscribe` and `leave-collection` / `unsubscribe` become subscriptions of the client.
   */
  sendMessage: (message: { type: string; [field: string]: unknown } | string) => boolean
  status: ConnectionStatus
  client: RealtimeClient
}

/**
 * The original design's hook: on the provider's client, or outside a provider on a client it
 * creates from `options` (a URL or client options) and connects while mounted.
 */
export declare function usePayloadWebSocket(
  options?: string | Omit<RealtimeClientOptions, 'autoConnect'>,
): PayloadWebSocketState
/**
 * A live Payload query on the provider's client: `{ docs, status, error, refetch }`, kept equal to what
 * a fresh REST query would return. Restarts when the JSON of the options changes.
 */
export declare function useLiveQuery<Doc = Record<string, unknown>>(
  collection: string,
  options?: Omit<import('../client/index.mjs').LiveQueryOptions, 'autoStart'>,
): import('../client/index.mjs').LiveQuerySnapshot<Doc> & { refetch: () => void }
