// A real Payload 3 (headless, SQLite) with the payload-realtime plugin, for the payload*.test.mjs
// files: a fresh database file in a temp dir per instance, users who can log in, and helpers to
// connect sockets with their Payload tokens.
//
// Collections:
// - users (auth): `role` ('admin' | 'member'), `team`.
// - posts: `title`, `team`, `status`, `internalNote` (field-level read: admins only).
//   Read access: admins read everything; members read posts of their team (a Where query);
//   anonymous nobody.
// - notes: not in includeCollections (joining it is `unknown-collection`).

import { mkdtempSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { randomBytes, randomUUID } from 'node:crypto'

import { buildConfig, getPayload } from 'payload'
import { sqliteAdapter } from '@payloadcms/db-sqlite'

import { uWebSocketPlugin, getUWebSocketManager } from '../index.mjs'
import { connect, handshake, registerWhoami, WAIT, withTimeout } from './helpers.mjs'

process.env.DISABLE_PAYLOAD_HMR = 'true'
// @payloadcms/drizzle skips the schema push when a schema equal to the previous one was pushed
// in this process; each instance here has a fresh database file and needs its tables.
process.env.PAYLOAD_FORCE_DRIZZLE_PUSH = 'true'

export const PASSWORD = 'correct-horse-battery-staple'

export const isAdmin = (user) => user?.role === 'admin'

export function collections() {
  return [
    {
      slug: 'users',
      auth: true,
      fields: [
        { name: 'role', type: 'select', options: ['admin', 'member'], defaultValue: 'member' },
        { name: 'team', type: 'text' },
      ],
    },
    {
      slug: 'posts',
      access: {
        read: ({ req: { user } }) => {
          if (!user) return false
          if (isAdmin(user)) return true
          return { team: { equals: user.team ?? '__none__' } }
        },
        create: () => true,
        update: () => true,
        delete: () => true,
      },
      hooks: {
        // Runs after afterChange and before the commit: lets a test fail a write late.
        afterOperation: [
          ({ req }) => {
            if (req?.context?.failAfterChange) throw new Error('failing this write on purpose')
          },
        ],
      },
      fields: [
        { name: 'title', type: 'text' },
        { name: 'team', type: 'text' },
        { name: 'status', type: 'select', options: ['draft', 'published'], defaultValue: 'draft' },
        { name: 'internalNote', type: 'text', access: { read: ({ req: { user } }) => isAdmin(user) } },
      ],
    },
    { slug: 'notes', fields: [{ name: 'body', type: 'text' }] },
  ]
}

/**
 * Starts Payload with the plugin. `plugin` are the plugin options (`port: 0`, loopback host and
 * `includeCollections: ['posts']` by default); `transactions: true` turns on SQLite transactions
 * (off by default in @payloadcms/db-sqlite). `secret` and `dbFile` let several instances (processes)
 * share one app. Returns `{ payload, manager, secret, url, ... }`.
 */
export async function startPayload({
  plugin = {},
  transactions = false,
  configure = (c) => c,
  secret = randomBytes(24).toString('hex'),
  dbFile,
} = {}) {
  const dir = mkdtempSync(join(tmpdir(), 'payload-realtime-'))
  const pluginOptions = { port: 0, host: '127.0.0.1', includeCollections: ['posts'], ...plugin }
  const config = await buildConfig(
    configure({
      secret,
      telemetry: false,
      typescript: { autoGenerate: false },
      // No email adapter: Payload would log a warning; nothing here sends email.
      email: undefined,
      logger: { options: { level: 'error' } },
      db: sqliteAdapter({
        client: { url: `file:${dbFile ?? join(dir, 'test.db')}` },
        ...(transactions ? { transactionOptions: {} } : {}),
      }),
      collections: collections(),
      plugins: [uWebSocketPlugin(pluginOptions)],
    }),
  )
  const key = randomUUID()
  const payload = await getPayload({ config, key })
  const manager = pluginOptions.port === undefined || pluginOptions.port === null ? null : getUWebSocketManager()
  const ctx = {
    /** Every event the plugin handed to the manager, with the promise of its delivery. */
    emitted: [],
    /** Records the plugin's emitEvent calls on `manager` (the hooks call it after the commit). */
    watch(manager) {
      const original = manager.emitEvent.bind(manager)
      manager.emitEvent = (event) => {
        const p = original(event)
        ctx.emitted.push({ event, delivered: p.catch(() => {}) })
        return p
      }
    },
    /**
     * A barrier: waits until every event emitted so far has been authorized and queued to its
     * sockets, then sends a marker to room `collection:<slug>` (room broadcasts skip authorize) and
     * waits for it on each client. Whatever those events were going to deliver has arrived then.
     */
    async settle(clients, slug = 'posts') {
      await Promise.all(ctx.emitted.map((e) => e.delivered))
      const marker = `barrier-${++barriers}`
      ctx.manager.broadcastToRoom(`collection:${slug}`, { type: 'barrier', marker })
      await Promise.all(
        clients.map((c) => c.waitFor((m) => m.type === 'barrier' && m.marker === marker, { label: marker })),
      )
    },
    payload,
    /** The key of this instance in Payload's cache (`handleEndpoints({ payloadInstanceCacheKey })`). */
    key,
    manager,
    secret,
    dir,
    clients: [],
    url: (query = '') => `ws://127.0.0.1:${ctx.manager.port}/${query}`,
    /** Creates a user and logs in: `{ user, token, exp }`. */
    async createUser(email, data = {}) {
      await payload.create({ collection: 'users', data: { email, password: PASSWORD, ...data } })
      return ctx.login(email)
    },
    async login(email) {
      const r = await payload.login({ collection: 'users', data: { email, password: PASSWORD } })
      return { user: r.user, token: r.token, exp: r.exp }
    },
    async connect(token, opts = {}) {
      const c = await connect(ctx.url(), { token, ...opts })
      ctx.clients.push(c)
      return c
    },
    handshake(token, opts = {}) {
      return handshake(ctx.url(), { token, ...opts }).then((r) => {
        if (r.client) ctx.clients.push(r.client)
        return r
      })
    },
    async close() {
      await Promise.allSettled(ctx.clients.map((c) => c.close()))
      // payload.destroy closes the server the plugin started, then the database.
      await withTimeout(payload.destroy(), WAIT, 'payload.destroy()')
      rmSync(dir, { recursive: true, force: true })
    },
  }
  if (manager) {
    ctx.watch(manager)
    registerWhoami(manager)
  }
  return ctx
}

let barriers = 0
