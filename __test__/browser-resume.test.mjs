// The client SDK in headless Chromium coming back at once: the reconnect delay is set far beyond
// the test's own timeout (10 minutes, no jitter), so only the resume path can bring the page
// back in time.
// - Back online: with the browser context offline (Playwright's setOffline), the server restarts;
//   the client waits on its backoff; going online fires the browser's real `online` event and
//   the client reconnects at once, rejoins and gets the next event.
// - Visible again: headless Chromium keeps every page visible (switching or minimizing tabs does
//   not change document.visibilityState there), so the page's visibilityState is overridden and
//   the event dispatched in the page: hidden does nothing, visible reconnects at once, and
//   visible while open checks the connection with a ping at once.
// Skipped when /usr/bin/chromium is missing, unless PAYLOAD_REALTIME_REQUIRE_ALL=1.

import assert from 'node:assert/strict'
import { test } from 'node:test'

import { openPage, withChromium } from './browser-support.mjs'
import { makeToken, waitUntil, WAIT } from './helpers.mjs'

const LONG = 600_000

const PAGE = `<!doctype html>
<html>
<head><meta charset="utf-8"><title>payload-realtime resume</title></head>
<body>
<p id="status">loading</p>
<script type="module">
  import { createRealtimeClient } from '/lib/client/index.mjs'

  const params = new URLSearchParams(location.search)
  window.log = []
  window.events = []
  const client = createRealtimeClient({
    url: params.get('ws'),
    token: params.get('token'),
    reconnect: { initialDelay: ${LONG}, maxDelay: ${LONG} },
    random: () => 1,
  })
  client.on('status', (s) => (document.getElementById('status').textContent = s))
  client.on('reconnecting', (r) => log.push('reconnecting ' + r.delay))
  client.on('resume', (r) => log.push('resume ' + r.reason))
  client.on('error', (e) => log.push('error ' + e.code))
  client.subscribe('posts', (e) => events.push(e.type + ' ' + e.id))
  window.client = client
</script>
</body>
</html>`

const statusIs = (page, status) =>
  page.waitForFunction((s) => document.getElementById('status').textContent === s, status, { timeout: WAIT })

test('Chromium: back online or visible again, the client reconnects at once', { timeout: 120_000 }, async (t) => {
  return withChromium(t, { '/': PAGE }, async (env) => {
    const { browser, web, port } = env
    let { manager } = env
    const context = await browser.newContext()
    const page = await openPage(context)
    const query = new URLSearchParams({ ws: `ws://127.0.0.1:${port}/`, token: makeToken({ id: 'sleeper' }) })
    await page.goto(`${web.origin}/?${query}`)
    await statusIs(page, 'open')
    await waitUntil(() => manager.getSocketsInRoom('collection:posts').length === 1, { label: 'joined' })

    // Offline, the server restarts: the client is left waiting on a 10 minute backoff.
    await context.setOffline(true)
    await manager.close()
    await statusIs(page, 'reconnecting')
    manager = await env.restart()
    assert.deepEqual(await page.evaluate(() => window.log), [`reconnecting ${LONG}`])

    await context.setOffline(false) // the browser's own `online` event
    await statusIs(page, 'open')
    assert.deepEqual(await page.evaluate(() => window.log), [`reconnecting ${LONG}`, 'resume online'])
    await waitUntil(() => manager.getSocketsInRoom('collection:posts').length === 1, { label: 'rejoined' })
    await manager.emitEvent({ type: 'create', collection: 'posts', id: 1 })
    await page.waitForFunction(() => window.events.length === 1, null, { timeout: WAIT })
    assert.deepEqual(await page.evaluate(() => window.events), ['create 1'])

    // The server restarts again; the page is hidden, then visible.
    await manager.close()
    await statusIs(page, 'reconnecting')
    manager = await env.restart()
    const setVisibility = (state) =>
      page.evaluate((s) => {
        Object.defineProperty(document, 'visibilityState', { value: s, configurable: true })
        document.dispatchEvent(new Event('visibilitychange'))
      }, state)
    await setVisibility('hidden')
    assert.equal(await page.evaluate(() => document.getElementById('status').textContent), 'reconnecting')
    await setVisibility('visible')
    await statusIs(page, 'open')
    assert.deepEqual((await page.evaluate(() => window.log)).slice(2), [`reconnecting ${LONG}`, 'resume visible'])
    await waitUntil(() => manager.getSocketsInRoom('collection:posts').length === 1, { label: 'rejoined again' })
    await manager.emitEvent({ type: 'update', collection: 'posts', id: 1 })
    await page.waitForFunction(() => window.events.length === 2, null, { timeout: WAIT })
    assert.deepEqual(await page.evaluate(() => window.events), ['create 1', 'update 1'])
    // Visible again while open: the connection is checked with a ping at once.
    await page.evaluate(() => {
      window.sent = []
      const send = WebSocket.prototype.send
      WebSocket.prototype.send = function (data) {
        window.sent.push(JSON.parse(data).type)
        return send.call(this, data)
      }
    })
    await setVisibility('visible')
    await page.waitForFunction(() => window.sent.includes('ping'), null, { timeout: WAIT })
    assert.equal(await page.evaluate(() => document.getElementById('status').textContent), 'open')
    assert.deepEqual(page.problems, [])

    await page.evaluate(() => window.client.disconnect())
    await waitUntil(() => manager.stats().connections === 0, { label: 'disconnected' })
    await context.close()
  })
})
