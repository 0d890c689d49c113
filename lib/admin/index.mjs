'use client'
// payload-realtime/admin: the live admin panel. The plugin registers `RealtimeAdminProvider` in
// `admin.components.providers` (resolved through Payload's import map), so it wraps the whole
// admin. It connects with the admin's own session (the `payload-token` cookie, which the browser
// sends to the realtime server's host), joins the included collections and the document locks,
// and for changes made by someone else: shows a short notice naming the editor, refreshes the
// list view of that collection, warns in the edit view of a document changed or deleted since it
// was opened, and refreshes the lock icons. The connection state shows in a corner.

import { createElement, useEffect, useMemo, useRef, useState } from 'react'
import { toast, useAuth, useConfig } from '@payloadcms/ui'
import { usePathname, useRouter } from 'next/navigation'

import { createRealtimeClient } from '../client/index.mjs'

/** Payload's collection of document locks. */
const LOCKS = 'payload-locked-documents'

const LABELS = { open: 'Live', connecting: 'Connecting…', reconnecting: 'Reconnecting…', closed: 'Offline' }
const VERBS = { create: 'created', update: 'updated', delete: 'deleted' }

/** The realtime server's URL as this page reaches it. */
export function realtimeUrl({ url, port, path = '/' }, location = globalThis.location) {
  if (url) return url
  const scheme = location.protocol === 'https:' ? 'wss:' : 'ws:'
  const host = port
    ? `${location.hostname.includes(':') ? `[${location.hostname}]` : location.hostname}:${port}`
    : location.host
  return `${scheme}//${host}${path}`
}

/**
 * What the admin shows of a path: `{ view: 'list' | 'edit', slug, id? }` under the admin route, or
 * null elsewhere.
 */
export function adminView(pathname, adminRoute = '/admin') {
  const base = `${adminRoute.replace(/\/$/, '')}/collections/`
  if (!pathname || !pathname.startsWith(base)) return null
  const [slug, id] = pathname.slice(base.length).split('/')
  if (!slug) return null
  if (!id) return { view: 'list', slug }
  return id === 'create' ? null : { view: 'edit', slug, id: decodeURIComponent(id) }
}

/** Names users the way the admin does: the auth collection's `useAsTitle`, read with the viewer's access. */
function userNamer(config) {
  const names = new Map()
  const api = `${config.serverURL ?? ''}${config.routes?.api ?? '/api'}`
  return (user) => {
    if (!user) return Promise.resolve('Someone')
    const key = `${user.collection}:${user.id}`
    if (!names.has(key)) {
      const collection = config.collections.find((c) => c.slug === user.collection)
      const field = collection?.admin?.useAsTitle ?? 'id'
      names.set(
        key,
        fetch(`${api}/${user.collection}/${encodeURIComponent(user.id)}?depth=0`, { credentials: 'include' })
          .then((r) => (r.ok ? r.json() : null))
          .then((doc) => {
            const name = doc?.[field]
            return name !== undefined && name !== null && name !== '' ? String(name) : 'Another user'
          })
          .catch(() => 'Another user'),
      )
    }
    return names.get(key)
  }
}

function titleOf(collection, event) {
  const field = collection?.admin?.useAsTitle
  const title = field && event.doc ? event.doc[field] : undefined
  return title !== undefined && title !== null && title !== '' ? `“${title}”` : `#${event.id}`
}

function labelOf(collection) {
  const label = collection?.labels?.singular ?? collection?.slug ?? 'document'
  return typeof label === 'string' ? label : (label.en ?? Object.values(label)[0] ?? collection.slug)
}

const badgeStyle = {
  position: 'fixed',
  left: 12,
  bottom: 12,
  zIndex: 30,
  padding: '2px 8px',
  borderRadius: 10,
  fontSize: 12,
  lineHeight: '18px',
  background: 'var(--theme-elevation-100, #eee)',
  color: 'var(--theme-elevation-800, #333)',
  pointerEvents: 'none',
}

const bannerStyle = {
  position: 'fixed',
  top: 12,
  left: '50%',
  transform: 'translateX(-50%)',
  zIndex: 40,
  maxWidth: 560,
  padding: '10px 16px',
  borderRadius: 4,
  background: 'var(--theme-warning-100, #fff3cd)',
  color: 'var(--theme-warning-800, #664d03)',
  border: '1px solid var(--theme-warning-400, #ffda6a)',
  boxShadow: '0 2px 8px rgba(0,0,0,.15)',
}

/**
 * The live admin. `clientProps` from the plugin: `collections` (the included slugs), `port` and
 * `path` of the realtime server (or a whole `url`).
 */
export function RealtimeAdminProvider({ children, collections = [], port, path, url }) {
  const { config } = useConfig()
  const { user } = useAuth()
  const router = useRouter()
  const pathname = usePathname()
  const [status, setStatus] = useState('connecting')
  const [warning, setWarning] = useState(null)

  // What the handlers below read of the latest render.
  const latest = useRef({})
  latest.current = { view: adminView(pathname, config.routes?.admin), user, router }
  const name = useMemo(() => userNamer(config), [config])

  // A warning belongs to the document it was raised in.
  const warnedFor = warning && `${warning.slug}:${warning.id}`
  const view = latest.current.view
  const here = view?.view === 'edit' ? `${view.slug}:${view.id}` : null
  useEffect(() => {
    if (warnedFor && warnedFor !== here) setWarning(null)
  }, [warnedFor, here])

  const signedIn = Boolean(user)
  useEffect(() => {
    if (!signedIn) return undefined
    const client = createRealtimeClient({ url: realtimeUrl({ url, port, path }) })
    const offStatus = client.on('status', setStatus)
    // A collection this user may not read is refused (forbidden): nothing to show of it.
    const offError = client.on('error', (err) => {
      if (err?.code !== 'forbidden') console.warn('[payload-realtime/admin]', err?.message ?? err)
    })
    const bySlug = new Map(config.collections.map((c) => [c.slug, c]))
    const byMe = (event) => {
      const me = latest.current.user
      return Boolean(
        me && event.user && event.user.collection === me.collection && String(event.user.id) === String(me.id),
      )
    }
    const onEvent = (event) => {
      if (byMe(event)) return
      const { view, router } = latest.current
      const collection = bySlug.get(event.collection)
      if (view?.slug === event.collection && view.view === 'list') router.refresh()
      const verb = VERBS[event.type] ?? event.type
      name(event.user).then((who) => {
        const what = `${labelOf(collection)} ${titleOf(collection, event)}`
        toast.info(`${who} ${verb} ${what}`)
        const now = latest.current.view
        if (now?.view === 'edit' && now.slug === event.collection && now.id === String(event.id)) {
          setWarning({
            slug: event.collection,
            id: String(event.id),
            text:
              event.type === 'delete'
                ? `${who} deleted this ${labelOf(collection)} after you opened it.`
                : `${who} changed this ${labelOf(collection)} after you opened it: saving now overwrites their change. Reload to see it.`,
          })
        }
      })
    }
    // A lock taken or released: the lock icons and the edit view's lock come from the server.
    const onLock = (event) => {
      if (byMe(event)) return
      const { view, router } = latest.current
      if (view) router.refresh()
    }
    const offs = [...collections.map((slug) => client.subscribe(slug, onEvent)), client.subscribe(LOCKS, onLock)]
    return () => {
      for (const off of offs) off()
      offStatus()
      offError()
      client.disconnect()
    }
  }, [signedIn, url, port, path, collections.join(','), config, name])

  return createElement(
    'div',
    { className: 'payload-realtime-admin', style: { display: 'contents' } },
    children,
    signedIn &&
      createElement(
        'div',
        { className: 'payload-realtime-admin__status', 'data-status': status, role: 'status', style: badgeStyle },
        `● ${LABELS[status] ?? status}`,
      ),
    warning &&
      warnedFor === here &&
      createElement(
        'div',
        { className: 'payload-realtime-admin__changed', role: 'alert', style: bannerStyle },
        warning.text,
        ' ',
        createElement(
          'button',
          { type: 'button', onClick: () => window.location.reload(), style: { marginLeft: 8 } },
          'Reload',
        ),
        createElement(
          'button',
          { type: 'button', onClick: () => setWarning(null), style: { marginLeft: 8 } },
          'Dismiss',
        ),
      ),
  )
}

export default RealtimeAdminProvider
