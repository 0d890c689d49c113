// useLiveQuery in headless Chromium with React 19 (StrictMode), against a real Payload: the page
// logs in through Payload's REST API (the `payload-token` cookie is the viewer's credential for
// the list, the returned token for the socket), then the hook goes loading -> ready, follows
// writes, refreshes after a reconnect without recovery (the rooms keep no history here), and a
// list the viewer may not read goes loading -> error with the HTTP status. Server rendering gives
// 'loading' and fetches nothing. The browser part is skipped when /usr/bin/chromium is missing,
// unless PAYLOAD_REALTIME_REQUIRE_ALL=1.

import assert from 'node:assert/strict'
import { test } from 'node:test'
import { createElement as h } from 'react'
import { renderToString } from 'react-dom/server'
import WebSocket from 'ws'

import { createRealtimeClient, toQueryString } from '../lib/client/index.mjs'
import { RealtimeProvider, useLiveQuery } from '../lib/react/index.mjs'
import { launchBrowser, openPage, REACT_HEAD, startHttpServer } from './browser-support.mjs'
import { PASSWORD, startPayload } from './payload-fixture.mjs'
import { startRest } from './payload-rest.mjs'
import { WAIT } from './helpers.mjs'

test('server rendering: useLiveQuery is loading and fetches nothing', () => {
  const client = createRealtimeClient({ url: 'ws://127.0.0.1:9/', WebSocket, autoConnect: false })
  let fetched = 0
  function List() {
    const { docs, status } = useLiveQuery('posts', {
      fetch: () => {
        fetched++
        throw new Error('no fetch during a server render')
      },
    })
    return h('p', null, `${status}:${docs.length}`)
  }
  assert.equal(renderToString(h(RealtimeProvider, { client }, h(List))), '<p>loading:0</p>')
  assert.equal(fetched, 0)
  assert.deepEqual(client.collections, [])
})

const QUERY = { where: { status: { equals: 'published' } }, sort: 'title', limit: 3 }

const PAGE = `<!doctype html>
<html>
<head><meta charset="utf-8"><title>useLiveQuery</title>${REACT_HEAD}</head>
<body>
<div id="root"></div>
<script type="module">
  import { StrictMode, createElement as h } from 'react'
  import { createRoot } from 'react-dom/client'
  import { RealtimeProvider, useLiveQuery, useRealtimeClient } from '/lib/react/index.mjs'

  const params = new URLSearchParams(location.search)
  const login = await fetch('/api/users/login', {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify({ email: params.get('email'), password: params.get('password') }),
  })
  const { token } = await login.json()

  window.statuses = { posts: [], denied: [] }
  const record = (name, status) => {
    const list = window.statuses[name]
    if (list.at(-1) !== status) list.push(status)
  }

  function Posts() {
    window.client = useRealtimeClient()
    const { docs, status, error } = useLiveQuery('posts', ${JSON.stringify(QUERY)})
    record('posts', status)
    return h('div', null,
      h('p', { id: 'status' }, status),
      h('ul', { id: 'posts' }, docs.map((d) => h('li', { key: d.id }, d.title))),
    )
  }

  function Denied() {
    const { status, error } = useLiveQuery('posts', { credentials: 'omit' })
    record('denied', status)
    return h('p', { id: 'denied' }, status + (error ? ':' + error.status : ''))
  }

  createRoot(document.getElementById('root')).render(
    h(StrictMode, null,
      h(RealtimeProvider, { url: params.get('ws'), getToken: async () => token, reconnect: { initialDelay: 20 } },
        h(Posts), h(Denied))),
  )
</script>
</body>
</html>`

test(
  'in Chromium: useLiveQuery status transitions and a list equal to a fresh query',
  { timeout: 180_000 },
  async (t) => {
    const browser = await launchBrowser(t)
    if (!browser) return
    const ctx = await startPayload()
    const web = await startHttpServer({ '/': PAGE })
    const site = await startRest(ctx, { fallback: web.origin })
    try {
      const admin = await ctx.createUser('admin@example.com', { role: 'admin' })
      for (const [title, status] of [
        ['b', 'published'],
        ['d', 'published'],
        ['c', 'draft'],
        ['f', 'published'],
        ['g', 'published'],
      ]) {
        await ctx.payload.create({ collection: 'posts', data: { title, status, team: 'red' } })
      }
      const fresh = async () => {
        const r = await fetch(site.url(`/api/posts?${toQueryString({ ...QUERY, depth: 0 })}`), {
          headers: { Authorization: `JWT ${admin.token}` },
        })
        return (await r.json()).docs.map((d) => d.title)
      }
      const page = await openPage(browser)
      const waitFor = async (fn, arg) => {
        try {
          await page.waitForFunction(fn, arg, { timeout: WAIT })
        } catch (err) {
          err.message += `\npage: ${await page.content()}\nproblems: ${JSON.stringify(page.problems)}`
          throw err
        }
      }
      const titles = () => page.$$eval('#posts li', (lis) => lis.map((li) => li.textContent))
      const waitForTitles = (list) =>
        waitFor(
          (want) => [...document.querySelectorAll('#posts li')].map((li) => li.textContent).join() === want,
          list.join(),
        )

      const query = new URLSearchParams({ ws: ctx.url(), email: 'admin@example.com', password: PASSWORD })
      await page.goto(`${site.origin}/?${query}`)

      // First load through the cookie, after the socket joined: loading -> ready, once.
      await waitFor(() => document.querySelector('#status')?.textContent === 'ready')
      assert.deepEqual(await titles(), ['b', 'd', 'f'])
      assert.deepEqual(await titles(), await fresh())
      const statuses = () => page.evaluate(() => window.statuses.posts)
      assert.deepEqual(await statuses(), ['loading', 'ready'])
      // A list the viewer may not read (no cookie): the refusal, not retried on every event.
      await waitFor(() => document.querySelector('#denied')?.textContent === 'error:403')
      const denied = () => page.evaluate(() => window.statuses.denied)
      assert.deepEqual(await denied(), ['loading', 'error'])

      // Writes arrive as events: in sort order, out of the where, limit kept.
      await ctx.payload.create({ collection: 'posts', data: { title: 'a', status: 'published', team: 'red' } })
      await waitForTitles(['a', 'b', 'd'])
      assert.deepEqual(await statuses(), ['loading', 'ready'], 'a create applied in place')
      const [b] = (await ctx.payload.find({ collection: 'posts', where: { title: { equals: 'b' } } })).docs
      await ctx.payload.update({ collection: 'posts', id: b.id, data: { status: 'draft' } })
      await waitForTitles(['a', 'd', 'f'])
      await waitFor(() => document.querySelector('#status')?.textContent === 'ready')
      assert.deepEqual(await titles(), await fresh())
      // Leaving a full window with more past it: only the server knows what moves up.
      assert.deepEqual(await statuses(), ['loading', 'ready', 'refreshing', 'ready'])
      assert.deepEqual(await denied(), ['loading', 'error'])

      // Away without history to replay from: the list refetches on the reconnect.
      await page.evaluate(() => window.client.disconnect())
      await ctx.payload.create({ collection: 'posts', data: { title: 'c2', status: 'published', team: 'red' } })
      await page.evaluate(() => window.client.connect())
      await waitForTitles(['a', 'c2', 'd'])
      await waitFor(() => document.querySelector('#status')?.textContent === 'ready')
      assert.deepEqual(await titles(), await fresh())

      assert.deepEqual(await statuses(), ['loading', 'ready', 'refreshing', 'ready', 'refreshing', 'ready'])

      // The reconnect retries the refused one too.
      await waitFor(() => window.statuses.denied.length === 4)
      assert.deepEqual(await denied(), ['loading', 'error', 'loading', 'error'])
      // The browser logs the two refused loads; nothing else may go wrong.
      assert.deepEqual(
        page.problems.filter((p) => !/status of 403 \(Forbidden\)/.test(p)),
        [],
      )
      assert.equal(page.problems.length, 2)
      await page.close()
    } finally {
      await browser.close()
      await site.close()
      await web.close()
      await ctx.close()
    }
  },
)
