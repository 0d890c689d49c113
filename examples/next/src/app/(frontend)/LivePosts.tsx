'use client'

import { RealtimeProvider, useRealtime, useRealtimeStatus } from 'payload-realtime/react'
import { useState } from 'react'

type Post = { id: number | string; title: string }

function Posts({ initial }: { initial: Post[] }) {
  const [posts, setPosts] = useState(initial)
  const status = useRealtimeStatus()
  useRealtime('posts', (event) => {
    const doc = event.doc as { title?: string } | undefined
    setPosts((list) => {
      const rest = list.filter((p) => p.id !== event.id)
      if (event.type === 'delete') return rest
      return [{ id: event.id as number | string, title: String(doc?.title ?? '') }, ...rest]
    })
  })
  return (
    <>
      <p data-status={status}>realtime: {status}</p>
      <ul>
        {posts.map((p) => (
          <li key={p.id}>{p.title}</li>
        ))}
      </ul>
    </>
  )
}

/**
 * Connects with the admin's `payload-token` cookie (same host, the plugin's port). Nothing connects
 * during server rendering; the URL there is only a placeholder.
 */
export function LivePosts({ initial, port }: { initial: Post[]; port: number }) {
  const host = typeof window === 'undefined' ? 'localhost' : window.location.hostname
  const url = `ws://${host}:${port}/`
  return (
    <RealtimeProvider url={url}>
      <Posts initial={initial} />
    </RealtimeProvider>
  )
}
