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

const RealtimeContext = createContext(/** @type {import('../client/index.mjs').RealtimeClient | null} */ (null))

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
  const [owned] = useState(() =>
    client ? null : createRealtimeClient(/** @type {any} */ ({ ...options, autoConnect: false })),
  )
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

function typeKey(type) {
  if (type === null || type === undefined || type === false) return ''
  const list = Array.isArray(type) ? type : [type]
  return list.filter((t) => typeof t === 'string' && t !== '').join('\n')
}

/**
 * Calls `handler(message)` for every message of type `type` (any type: `'presence-join'`,
 * `'recovery-failed'`, `'error'`, a room broadcast's or an app event's own type; a list of
 * types; `'*'` for every message; null/false for none) the client receives while the component
 * is mounted. Replies to `request()` go to their promise, not here. The latest `handler` is
 * called, without listening again when it changes.
 */
export function useRealtimeMessage(type, handler) {
  const client = useRealtimeClient()
  const handlerRef = useRef(handler)
  useCommitEffect(() => {
    handlerRef.current = handler
  })
  const key = typeKey(type)
  useEffect(() => {
    if (key === '') return undefined
    const types = new Set(key.split('\n'))
    const all = types.has('*')
    return client.on('message', (message) => {
      if (!all && !types.has(message.type)) return undefined
      const h = handlerRef.current
      return typeof h === 'function' ? h(message) : undefined
    })
  }, [client, key])
}

/**
 * For code written against the `usePayloadWebSocket` hook of the original design: `{
 * isConnected, lastMessage, sendMessage }` on top of the provider's client (or, outside a
 * provider, of a client it creates from `options`, `url` or `{ url, token, ... }`, connected
 * while mounted). `lastMessage` is the last message received (parsed), `sendMessage(message)`
 * sends an object (or a JSON string) and returns whether it went out. A
 * `join-collection`/`subscribe` message sent this way becomes a subscription of the client, so
 * the room is joined again after a reconnect; `leave-collection`/`unsubscribe` ends it.
 */
export function usePayloadWebSocket(options) {
  const provided = useContext(RealtimeContext)
  const [owned] = useState(() => {
    if (provided) return null
    const opts = typeof options === 'string' ? { url: options } : options
    if (!opts || typeof opts !== 'object') {
      throw new Error('payload-realtime/react: usePayloadWebSocket needs a <RealtimeProvider> or a `url`')
    }
    return createRealtimeClient({ ...opts, autoConnect: false })
  })
  const client = /** @type {import('../client/index.mjs').RealtimeClient} */ (provided ?? owned)
  useEffect(() => {
    if (!owned) return undefined
    owned.connect()
    return () => owned.disconnect()
  }, [owned])

  const subscribe = useCallback((onChange) => client.on('status', onChange), [client])
  const getSnapshot = useCallback(() => client.status, [client])
  const status = useSyncExternalStore(subscribe, getSnapshot, getSnapshot)

  const [lastMessage, setLastMessage] = useState(
    /** @type {import('../client/index.mjs').ServerMessage | null} */ (null),
  )
  useEffect(() => client.on('message', (message) => setLastMessage(message)), [client])

  // Rooms joined through sendMessage, by collection: the client's own subscriptions, so they
  // survive reconnects; left when the component unmounts.
  const joined = useRef(new Map())
  useEffect(() => {
    const rooms = joined.current
    return () => {
      for (const off of rooms.values()) off()
      rooms.clear()
    }
  }, [client])

  const sendMessage = useCallback(
    (message) => {
      let msg = message
      if (typeof msg === 'string') {
        try {
          msg = JSON.parse(msg)
        } catch {
          throw new TypeError('payload-realtime/react: sendMessage takes an object or a JSON object string')
        }
      }
      const rooms = joined.current
      const names = roomNames(msg)
      if (names && (msg.type === 'join-collection' || msg.type === 'subscribe')) {
        for (const name of names) if (!rooms.has(name)) rooms.set(name, client.subscribe(name, noop))
        return true
      }
      if (names && (msg.type === 'leave-collection' || msg.type === 'unsubscribe')) {
        for (const name of names) {
          rooms.get(name)?.()
          rooms.delete(name)
        }
        return true
      }
      return client.send(msg)
    },
    [client],
  )

  return { isConnected: status === 'open', lastMessage, sendMessage, status, client }
}

const noop = () => {}

/** The collections a join or leave message names (`collection`, or `data`: a name or a list). */
function roomNames(msg) {
  if (msg === null || typeof msg !== 'object') return null
  const raw = msg.collection ?? msg.data
  const list = Array.isArray(raw) ? raw : [raw]
  return list.length > 0 && list.every((c) => typeof c === 'string' && c !== '') ? list : null
}

export { RealtimeContext }

export { useLiveQuery } from './live-query.mjs'
