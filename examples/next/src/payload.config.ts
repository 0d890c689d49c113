import { sqliteAdapter } from '@payloadcms/db-sqlite'
import path from 'path'
import { buildConfig } from 'payload'
import { uWebSocketPlugin } from 'payload-realtime'
import { fileURLToPath } from 'url'

import { Posts } from './collections/Posts'
import { Users } from './collections/Users'
import { migrations } from './migrations'

const filename = fileURLToPath(import.meta.url)
const dirname = path.dirname(filename)

export default buildConfig({
  admin: {
    user: Users.slug,
    // No Gravatar: the admin makes no request to another site.
    avatar: 'default',
    importMap: { baseDir: path.resolve(dirname) },
  },
  collections: [Users, Posts],
  secret: process.env.PAYLOAD_SECRET || 'payload-realtime-example-secret',
  telemetry: false,
  typescript: { autoGenerate: false, outputFile: path.resolve(dirname, 'payload-types.ts') },
  // `next dev` pushes the schema; `next start` (production) runs the migrations in src/migrations.
  db: sqliteAdapter({
    client: { url: process.env.DATABASE_URI || 'file:./payload.db' },
    prodMigrations: migrations,
  }),
  plugins: [
    uWebSocketPlugin({
      includeCollections: ['posts'],
      port: Number(process.env.WS_PORT ?? 3002),
      // WS_HOST=127.0.0.1 keeps the plugin's own port on loopback (server.mjs serves /realtime).
      host: process.env.WS_HOST,
    }),
  ],
})
