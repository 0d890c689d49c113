'use client'
// payload-realtime/admin: the live admin panel. The plugin registers `RealtimeAdminProvider` in
// `admin.components.providers` (resolved through Payload's import map), so it wraps the whole
// admin. It connects with the admin's own session (the `payload-token` cookie, which the browser
// sends to the realtime server's host), joins the included collections and the document locks,
// and for changes made by someone else: shows a short notice naming the editor, refreshes the
// list view of that collection, warns in the edit view of a document changed or deleted since it
// was opened, and refreshes list views when a lock is taken or released (the lock icons). The
// connection state shows in a corner.
//
// Never `router.refresh()` in an edit view: Payload's form replaces its state with the refreshed
// `initialState`, which would throw away the editor's unsaved changes. There the provider warns.

import { createElement, useEffect, useRef, useState } from 'react'
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
  // The trash view lists documents too.
  if (!id || id === 'trash') return { view: 'list', slug }
  return id === 'create' ? null : { view: 'edit', slug, id: decodeURIComponent(id) }
}

/**
 * A user's key, `<collection>:<id>`, as the server groups a user's sockets (lib/util.js's
 * `userKey`; this module runs in the browser, which cannot load that CommonJS file).
 */
function userKey(collection, id) {
  return `${collection}:${id}`
}

/**
 * Names users the way the admin does: the auth collection's `useAsTitle`, read with the viewer's
 * access. `getConfig()` returns the admin's current client config.
 */
function userNamer(getConfig) {
  const names = new Map()
  return (user) => {
    if (!user) return Promise.resolve('Someone')
    const key = userKey(user.collection, user.id)
    if (!names.has(key)) {
      const config = getConfig()
      const api = `${config.serverURL ?? ''}${config.routes?.api ?? '/api'}`
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

  // What the handlers below read of the latest render. The config, the user and the router are
  // new objects after every `router.refresh()` and token refresh: the connection must not
  // depend on their identity (it would reconnect on each event it refreshes for).
  const latest = useRef({})
  latest.current = { view: adminView(pathname, config.routes?.admin), user, router, config }
  const namer = useRef(null)
  namer.current ??= userNamer(() => latest.current.config)

  // A warning belongs to the document it was raised in.
  const warnedFor = warning && `${warning.slug}:${warning.id}`
  const view = latest.current.view
  const here = view?.view === 'edit' ? `${view.slug}:${view.id}` : null
  useEffect(() => {
    if (warnedFor && warnedFor !== here) setWarning(null)
  }, [warnedFor, here])

  // Connect once per signed-in user (a different user has a different cookie).
  const connectAs = user ? userKey(user.collection ?? config.admin?.user, user.id) : null
  const slugs = collections.join(',')
  useEffect(() => {
    if (!connectAs) return undefined
    const client = createRealtimeClient({
      url: realtimeUrl({ url, port, path }),
      // The browser sends the admin's cookie with every attempt: after the socket's token
      // expired (4001), reconnect with the cookie the admin has refreshed since.
      getToken: () => null,
    })
    const offStatus = client.on('status', setStatus)
    // A collection this user may not read is refused (forbidden): nothing to show of it.
    const offError = client.on('error', (err) => {
      if (err?.code !== 'forbidden') console.warn('[payload-realtime/admin]', err?.message ?? err)
    })
    const collectionOf = (slug) => latest.current.config.collections.find((c) => c.slug === slug)
    const byMe = (event) => {
      const me = latest.current.user
      if (!me || !event.user) return false
      const mine = me.collection ?? latest.current.config.admin?.user
      return event.user.collection === mine && String(event.user.id) === String(me.id)
    }
    // Events come in bursts (a save is an update and a lock released): one refresh for a burst.
    let refreshTimer = null
    const refresh = () => {
      if (refreshTimer) return
      refreshTimer = setTimeout(() => {
        refreshTimer = null
        latest.current.router.refresh()
      }, 50)
    }
    const onEvent = (event) => {
      if (byMe(event)) return
      const { view } = latest.current
      const collection = collectionOf(event.collection)
      if (view?.view === 'list' && view.slug === event.collection) refresh()
      const verb = VERBS[event.type] ?? event.type
      namer.current(event.user).then((who) => {
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
    // A lock taken or released. List views show lock icons: refresh the one of that collection
    // (a release by query names no document: any list). In the edit view of the locked
    // document, say who took it (a refresh would discard unsaved changes).
    const onLock = (event) => {
      if (byMe(event)) return
      const { view } = latest.current
      const locked = event.doc?.document
      if (view?.view === 'list' && (!locked || locked.relationTo === view.slug)) refresh()
      if (
        event.type === 'create' &&
        view?.view === 'edit' &&
        locked?.relationTo === view.slug &&
        String(locked.value) === view.id
      ) {
        const collection = collectionOf(view.slug)
        namer.current(event.user).then((who) => toast.info(`${who} is editing this ${labelOf(collection)}`))
      }
    }
    const rooms = slugs ? slugs.split(',') : []
    const offs = [...rooms.map((slug) => client.subscribe(slug, onEvent)), client.subscribe(LOCKS, onLock)]
    return () => {
      if (refreshTimer) clearTimeout(refreshTimer)
      for (const off of offs) off()
      offStatus()
      offError()
      client.disconnect()
    }
  }, [connectAs, url, port, path, slugs])

  const signedIn = Boolean(user)
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
