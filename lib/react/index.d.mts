// Typings of payload-realtime/react.
import type { Context, ReactNode } from 'react'

import type { ConnectionStatus, RealtimeClient, RealtimeClientOptions, RealtimeEvent } from '../client/index.mjs'

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
