'use client'
// payload-realtime/react: a provider holding one client, and hooks. React is a peer dependency.

import {
  createContext,
  createElement,
  useCallback,
  useContext,
  useEffect,
  useLayoutEffect,
  useRef,
  useState,
  useSyncExternalStore,
} from 'react'

import { createRealtimeClient } from '../client/index.mjs'

const RealtimeContext = createContext(null)

// The handler ref is updated during the commit, so an event arriving after a re-render is
// handled by that render's handler (useEffect would leave a gap until after paint). On the
// server neither runs.
const useCommitEffect = typeof document !== 'undefined' ? useLayoutEffect : useEffect

/**
 * Makes one client available to `useRealtime` and `useRealtimeStatus` below it. Either pass your
 * own `client` (you connect and disconnect it), or the client options (`url`, `token` or
 * `getToken`, `WebSocket`, `reconnect`, ...): the provider then creates the client, connects it
 * when mounted and disconnects it when unmounted. Options are read once; to change them remount
 * the provider (e.g. with a `key`). Nothing connects during server rendering.
 */
export function RealtimeProvider({ client, children, ...options }) {
  const [owned] = useState(() => (client ? null : createRealtimeClient({ ...options, autoConnect: false })))
  const current = client ?? owned
  useEffect(() => {
    if (!owned) return undefined
    owned.connect()
    return () => owned.disconnect()
  }, [owned])
  return createElement(RealtimeContext.Provider, { value: current }, children)
}

/** The client of the nearest `RealtimeProvider` (for `request()` and events). */
export function useRealtimeClient() {
  const client = useContext(RealtimeContext)
  if (!client) throw new Error('payload-realtime/react: wrap this component in a <RealtimeProvider>')
  return client
}

function subscriptionKey(subscription) {
  if (subscription === null || subscription === undefined || subscription === false) return ''
  const list = Array.isArray(subscription) ? subscription : [subscription]
  return list.filter(Boolean).join('\n')
}

/**
 * Calls `handler(event)` for the messages of `subscription` (`'posts'`, `'posts.update'`,
 * `'posts.*'`, an array of these, or null/false for none) while the component is mounted. The
 * latest `handler` is always called, without resubscribing when it changes.
 */
export function useRealtime(subscription, handler) {
  const client = useRealtimeClient()
  const handlerRef = useRef(handler)
  useCommitEffect(() => {
    handlerRef.current = handler
  })
  const key = subscriptionKey(subscription)
  useEffect(() => {
    if (key === '') return undefined
    const offs = key.split('\n').map((s) =>
      client.subscribe(s, (event) => {
        const h = handlerRef.current
        if (typeof h === 'function') return h(event)
        return undefined
      }),
    )
    return () => {
      for (const off of offs) off()
    }
  }, [client, key])
}

/** The connection status: `'connecting' | 'open' | 'reconnecting' | 'closed'`, re-rendering on change. */
export function useRealtimeStatus() {
  const client = useRealtimeClient()
  const subscribe = useCallback((onChange) => client.on('status', onChange), [client])
  const getSnapshot = useCallback(() => client.status, [client])
  return useSyncExternalStore(subscribe, getSnapshot, getSnapshot)
}

export { RealtimeContext }
