import config from '@payload-config'
import { getPayload } from 'payload'

import { LivePosts } from './LivePosts'

// Read at request time: the posts, and the WebSocket port the plugin listens on.
export const dynamic = 'force-dynamic'

export default async function HomePage() {
  const payload = await getPayload({ config })
  const { docs } = await payload.find({ collection: 'posts', depth: 0, limit: 20, sort: '-createdAt', draft: true })
  const posts = docs.map((p) => ({ id: p.id, title: String(p.title ?? '') }))
  return (
    <main>
      <h1>Posts</h1>
      <p>
        Sign in at <a href="/admin">/admin</a>; posts you create there appear below as they are saved.
      </p>
      <LivePosts initial={posts} port={Number(process.env.WS_PORT ?? 3002)} />
    </main>
  )
}
