'use client'
// payload-realtime/react: useLiveQuery, a live Payload query on the provider's client.

import { useEffect, useMemo, useRef, useSyncExternalStore } from 'react'

import { LiveQuery } from '../client/live-query.mjs'
import { useRealtimeClient } from './index.mjs'

const SERVER_SNAPSHOT = Object.freeze({ docs: Object.freeze([]), status: 'loading', error: null })

/**
 * `{ docs, status, error, refetch }` of `liveQuery(client, collection, options)` on the
 * provider's client, re-rendering on change. The query restarts when `collection` or the JSON of `where`, `sort`,
 * `limit`, `depth`, `apiUrl`, `serverURL`, `credentials`, `debounce` or `maxPendingEvents` changes; the latest
 * `headers` and `fetch` are used without restarting. During server rendering the status is
 * `'loading'` and nothing is fetched.
 */
export function useLiveQuery(collection, options = {}) {
  const client = useRealtimeClient()
  const latest = useRef(options)
  latest.current = options
  const { where, sort, limit, depth, apiUrl, serverURL, credentials, debounce, maxPendingEvents } = options
  const key = JSON.stringify([
    collection,
    where,
    sort,
    limit,
    depth,
    apiUrl,
    serverURL,
    credentials,
    debounce,
    maxPendingEvents,
  ])
  const store = useMemo(() => {
    const o = JSON.parse(key)
    const config = {
      where: o[1] ?? undefined,
      sort: o[2] ?? undefined,
      limit: o[3] ?? undefined,
      depth: o[4] ?? undefined,
      apiUrl: o[5] ?? undefined,
      serverURL: o[6] ?? undefined,
      credentials: o[7] ?? undefined,
      debounce: o[8] ?? undefined,
      maxPendingEvents: o[9] ?? undefined,
      headers: () => {
        const h = latest.current.headers
        return typeof h === 'function' ? h() : h
      },
      fetch: (...args) => (latest.current.fetch ?? globalThis.fetch)(...args),
    }
    for (const k of Object.keys(config)) if (config[k] === undefined) delete config[k]
    return new LiveQuery(client, collection, { ...config, autoStart: false })
  }, [client, key]) // eslint-disable-line react-hooks/exhaustive-deps
  useEffect(() => {
    store.start()
    return () => store.close()
  }, [store])
  const snapshot = useSyncExternalStore(store.subscribe, store.getSnapshot, () => SERVER_SNAPSHOT)
  return useMemo(() => ({ ...snapshot, refetch: store.refetch }), [snapshot, store])
}
