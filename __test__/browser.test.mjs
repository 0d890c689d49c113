// The client SDK in a real browser: headless Chromium loads lib/client/index.mjs as an ES module
// from a page served on loopback, connects (the token in its first message, not in the URL),
// shows the events the test emits in the DOM, and after the server restarts on the same port
// receives the next event without a reload.
// Skipped when /usr/bin/chromium is missing, unless PAYLOAD_REALTIME_REQUIRE_ALL=1.

import assert from 'node:assert/strict'
import { test } from 'node:test'

import { openPage, withChromium } from './browser-support.mjs'
import { makeToken, waitUntil, WAIT } from './helpers.mjs'

const PAGE = `<!doctype html>
<html>
<head><meta charset="utf-8"><title>payload-realtime client</title></head>
<body>
<p id="status">loading</p>
<ul id="events"></ul>
<ul id="errors"></ul>
<script type="module">
  import { createRealtimeClient } from '/lib/client/index.mjs'

  const params = new URLSearchParams(location.search)
  const client = createRealtimeClient({
    url: params.get('ws'),
    token: params.get('token'),
    reconnect: { initialDelay: 50, maxDelay: 500 },
  })
  const show = (list, text) => {
    const li = document.createElement('li')
    li.textContent = text
    document.getElementById(list).append(li)
  }
  const status = document.getElementById('status')
  status.textContent = client.status
  client.on('status', (s) => (status.textContent = s))
  client.on('error', (e) => show('errors', e.code + ': ' + e.message))
  client.subscribe('posts', (e) => show('events', e.type + ' ' + e.id + ' ' + (e.doc?.title ?? '')))
  window.loadedAt = Math.random()
  window.client = client
</script>
</body>
</html>`

const eventsIn = (page) => page.$$eval('#events li', (lis) => lis.map((li) => li.textContent))

test(
  'the SDK in Chromium: events reach the DOM, and keep coming after a server restart',
  { timeout: 120_000 },
  async (t) => {
    return withChromium(t, { '/': PAGE }, async (env) => {
      const { browser, web, port } = env
      let { manager } = env
      const page = await openPage(browser)
      const token = makeToken({ id: 'browser-user' })
      const query = new URLSearchParams({ ws: `ws://127.0.0.1:${port}/`, token })
      await page.goto(`${web.origin}/?${query}`)
      await page.waitForFunction(() => document.getElementById('status').textContent === 'open', null, {
        timeout: WAIT,
      })
      await waitUntil(() => manager.getSocketsInRoom('collection:posts').length === 1, { label: 'the page joined' })
      assert.equal(manager.getSocketsInRoom('collection:posts')[0].user.id, 'browser-user')
      const loadedAt = await page.evaluate(() => window.loadedAt)

      await manager.emitEvent({ type: 'create', collection: 'posts', id: 1, doc: { id: 1, title: 'Hello' } })
      await manager.emitEvent({ type: 'update', collection: 'posts', id: 1, doc: { id: 1, title: 'Hello again' } })
      await page.waitForFunction(() => document.querySelectorAll('#events li').length === 2, null, { timeout: WAIT })
      assert.deepEqual(await eventsIn(page), ['create 1 Hello', 'update 1 Hello again'])

      // The server goes away and comes back on the same port.
      await manager.close()
      await page.waitForFunction(() => document.getElementById('status').textContent === 'reconnecting', null, {
        timeout: WAIT,
      })
      manager = await env.restart()
      await page.waitForFunction(() => document.getElementById('status').textContent === 'open', null, {
        timeout: WAIT,
      })
      await waitUntil(() => manager.getSocketsInRoom('collection:posts').length === 1, { label: 'the page rejoined' })
      await manager.emitEvent({ type: 'delete', collection: 'posts', id: 1 })
      await page.waitForFunction(() => document.querySelectorAll('#events li').length === 3, null, { timeout: WAIT })
      assert.deepEqual(await eventsIn(page), ['create 1 Hello', 'update 1 Hello again', 'delete 1 '])

      // Same page (no reload), no errors shown or thrown.
      assert.equal(await page.evaluate(() => window.loadedAt), loadedAt)
      assert.deepEqual(await page.$$eval('#errors li', (lis) => lis.map((li) => li.textContent)), [])
      assert.deepEqual(page.problems, [])

      await page.evaluate(() => window.client.disconnect())
      await waitUntil(() => manager.stats().connections === 0, { label: 'the page disconnected' })
      await page.close()
    })
  },
)
