// The demo's Payload config: plain Node ESM, headless (no Next.js), SQLite in ./data/.
import { fileURLToPath } from 'node:url'
import { buildConfig } from 'payload'
import { sqliteAdapter } from '@payloadcms/db-sqlite'
import { uWebSocketPlugin } from '../../index.mjs'

export const dbFile = fileURLToPath(new URL('./data/demo.db', import.meta.url))
export const wsPort = Number(process.env.WS_PORT ?? 3002)
export const httpPort = Number(process.env.PORT ?? 3000)

const isAdmin = (user) => user?.role === 'admin'

export default buildConfig({
  // A demo secret; a real app reads it from the environment.
  secret: process.env.PAYLOAD_SECRET ?? 'payload-realtime-demo-secret',
  telemetry: false,
  typescript: { autoGenerate: false },
  db: sqliteAdapter({ client: { url: `file:${dbFile}` } }),
  collections: [
    {
      slug: 'users',
      auth: true,
      fields: [{ name: 'role', type: 'select', options: ['admin', 'reader'], defaultValue: 'reader' }],
    },
    {
      slug: 'posts',
      access: {
        // Admins read every post; readers only published ones (a Where query).
        read: ({ req: { user } }) => (isAdmin(user) ? true : { status: { equals: 'published' } }),
      },
      fields: [
        { name: 'title', type: 'text', required: true },
        { name: 'status', type: 'select', options: ['draft', 'published'], defaultValue: 'draft' },
        // Field-level access: only admins ever see the editor's note.
        { name: 'editorNote', type: 'text', access: { read: ({ req: { user } }) => isAdmin(user) } },
      ],
    },
    {
      slug: 'comments',
      access: { read: ({ req: { user } }) => Boolean(user) },
      fields: [
        { name: 'post', type: 'relationship', relationTo: 'posts' },
        { name: 'text', type: 'text' },
      ],
    },
  ],
  plugins: [
    uWebSocketPlugin({
      includeCollections: ['posts', 'comments'],
      port: wsPort,
      host: '127.0.0.1',
      // The demo page on localhost:PORT opens the socket.
      allowedOrigins: [`http://localhost:${httpPort}`, `http://127.0.0.1:${httpPort}`],
      // By default each user receives only what Payload's read access lets them read.
    }),
  ],
})
