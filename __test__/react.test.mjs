// payload-realtime/react. On Node, without a DOM: server rendering with react-dom/server (the
// provider and hooks render, nothing connects or subscribes during render, a hook outside the
// provider fails clearly). In headless Chromium, with React 19 from node_modules: the provider
// connects, useRealtime delivers events and always calls the latest handler without
// resubscribing, unmounting leaves the room, useRealtimeStatus follows a server restart, and
// unmounting the provider disconnects; useRealtimeMessage gets the app's own message types once,
// and usePayloadWebSocket (the original design's hook shape) works outside any provider. The
// browser part is skipped when /usr/bin/chromium is missing, unless PAYLOAD_REALTIME_REQUIRE_ALL=1.

import assert from 'node:assert/strict'
import { test } from 'node:test'
import { createElement as h } from 'react'
import { renderToString } from 'react-dom/server'
import WebSocket from 'ws'

import { createRealtimeClient } from '../lib/client/index.mjs'
import {
  RealtimeProvider,
  usePayloadWebSocket,
  useRealtime,
  useRealtimeClient,
  useRealtimeMessage,
  useRealtimeStatus,
} from '../lib/react/index.mjs'
import { openPage, REACT_HEAD, withChromium } from './browser-support.mjs'
import { makeToken, waitUntil, WAIT } from './helpers.mjs'

// ---------------------------------------------------------------------------------------------
// Node: server rendering

/** A WebSocket class that counts constructions (none may happen during a server render). */
function countingWebSocket() {
  const counter = { created: 0 }
  class CountingWebSocket extends WebSocket {
    constructor(...args) {
      super(...args)
      counter.created++
    }
  }
  return { CountingWebSocket, counter }
}

function Status() {
  return h('p', null, `status:${useRealtimeStatus()}`)
}

function Posts() {
  useRealtime('posts', () => {})
  useRealtime(['pages', 'media.update'], () => {})
  useRealtime(null, () => {})
  return h('p', null, 'posts')
}

test('server rendering: provider and hooks render; nothing connects or subscribes', () => {
  const { CountingWebSocket, counter } = countingWebSocket()
  const client = createRealtimeClient({ url: 'ws://127.0.0.1:9/', WebSocket: CountingWebSocket, autoConnect: false })
  const html = renderToString(h(RealtimeProvider, { client }, h(Status), h(Posts)))
  assert.match(html, /status:closed/)
  assert.match(html, /posts/)
  assert.deepEqual(client.collections, [])

  // A provider that owns its client creates it but connects only when mounted in a browser.
  const owned = renderToString(
    h(RealtimeProvider, { url: 'ws://127.0.0.1:9/', token: 't', WebSocket: CountingWebSocket }, h(Status), h(Posts)),
  )
  assert.match(owned, /status:closed/)
  assert.equal(counter.created, 0)
})

test('server rendering: useRealtimeMessage and usePayloadWebSocket render; nothing connects', () => {
  const { CountingWebSocket, counter } = countingWebSocket()
  function Messages() {
    useRealtimeMessage('presence-join', () => {})
    useRealtimeMessage(['a', 'b'], () => {})
    useRealtimeMessage(null, () => {})
    return h('p', null, 'messages')
  }
  function Seed({ options }) {
    const { isConnected, lastMessage, sendMessage } = usePayloadWebSocket(options)
    return h('p', null, `connected:${isConnected} last:${lastMessage} sent:${sendMessage({ type: 'x' })}`)
  }
  const client = createRealtimeClient({ url: 'ws://127.0.0.1:9/', WebSocket: CountingWebSocket, autoConnect: false })
  const inProvider = renderToString(h(RealtimeProvider, { client }, h(Messages), h(Seed)))
  assert.match(inProvider, /messages/)
  assert.match(inProvider, /connected:false last:null sent:false/)
  // Outside a provider, on a client of its own (created, not connected, on the server).
  const alone = renderToString(h(Seed, { options: { url: 'ws://127.0.0.1:9/', WebSocket: CountingWebSocket } }))
  assert.match(alone, /connected:false last:null sent:false/)
  assert.equal(counter.created, 0)
  assert.throws(() => renderToString(h(Seed)), /usePayloadWebSocket needs a <RealtimeProvider> or a `url`/)
  assert.throws(() => renderToString(h(Messages)), /RealtimeProvider/)
})

test('hooks outside a RealtimeProvider throw a clear error', () => {
  function Orphan() {
    useRealtimeClient()
    return null
  }
  assert.throws(() => renderToString(h(Orphan)), /RealtimeProvider/)
  assert.throws(() => renderToString(h(Status)), /RealtimeProvider/)
})

// ---------------------------------------------------------------------------------------------
// Chromium: the hooks mounted for real

const PAGE = `<!doctype html>
<html>
<head><meta charset="utf-8"><title>payload-realtime react</title>${REACT_HEAD}</head>
<body>
<div id="root"></div>
<script type="module">
  import { StrictMode, createElement as h, useState } from 'react'
  import { createRoot } from 'react-dom/client'
  import { RealtimeClient } from '/lib/client/index.mjs'
  import { RealtimeProvider, useRealtime, useRealtimeClient, useRealtimeStatus } from '/lib/react/index.mjs'

  // Counts subscribe() calls (the same module instance as the one lib/react imports).
  window.subscribeCalls = 0
  const subscribe = RealtimeClient.prototype.subscribe
  RealtimeClient.prototype.subscribe = function (...args) {
    window.subscribeCalls++
    return subscribe.apply(this, args)
  }

  const params = new URLSearchParams(location.search)

  function Status() {
    return h('p', { id: 'status' }, useRealtimeStatus())
  }

  function Posts({ label }) {
    const [seen, setSeen] = useState([])
    useRealtime('posts', (e) => setSeen((list) => [...list, label + ':' + e.type + ':' + e.id]))
    return [
      h('p', { id: 'label', key: 'label' }, label),
      h('ul', { id: 'posts', key: 'posts' }, seen.map((text, i) => h('li', { key: i }, text))),
    ]
  }

  function Expose() {
    window.client = useRealtimeClient()
    return null
  }

  function App() {
    const [showPosts, setShowPosts] = useState(true)
    const [label, setLabel] = useState('a')
    window.setShowPosts = setShowPosts
    window.setLabel = setLabel
    return h(
      RealtimeProvider,
      { url: params.get('ws'), getToken: async () => params.get('token'), reconnect: { initialDelay: 50, maxDelay: 500 } },
      h(Status),
      h(Expose),
      showPosts ? h(Posts, { label }) : h('p', { id: 'no-posts' }, 'hidden'),
    )
  }

  const root = createRoot(document.getElementById('root'))
  root.render(h(StrictMode, null, h(App)))
  window.unmountAll = () => root.unmount()
</script>
</body>
</html>`

const textOf = (page, selector) => page.$eval(selector, (el) => el.textContent)
const itemsOf = (page) => page.$$eval('#posts li', (lis) => lis.map((li) => li.textContent))
/** Waits for a condition in the page; a timeout reports what went wrong in the page. */
async function waitInPage(page, fn, arg) {
  try {
    await page.waitForFunction(fn, arg, { timeout: WAIT })
  } catch (err) {
    err.message += `\npage problems: ${JSON.stringify(page.problems)}`
    throw err
  }
}
const waitForText = (page, selector, text) =>
  waitInPage(page, ([s, t]) => document.querySelector(s)?.textContent === t, [selector, text])
const waitForItems = (page, n) =>
  waitInPage(page, (count) => document.querySelectorAll('#posts li').length === count, n)

test(
  'in Chromium: RealtimeProvider, useRealtime and useRealtimeStatus with React 19',
  { timeout: 120_000 },
  async (t) => {
    return withChromium(t, { '/': PAGE }, async (env) => {
      const { browser, web, port } = env
      let { manager } = env
      const inRoom = () => manager.getSocketsInRoom('collection:posts').length
      const page = await openPage(browser)
      const query = new URLSearchParams({ ws: `ws://127.0.0.1:${port}/`, token: makeToken({ id: 'react-user' }) })
      await page.goto(`${web.origin}/?${query}`)

      // StrictMode mounts effects twice: one connection and one room membership must remain.
      await waitForText(page, '#status', 'open')
      await waitUntil(() => inRoom() === 1 && manager.stats().connections === 1, { label: 'one socket in the room' })

      await manager.emitEvent({ type: 'create', collection: 'posts', id: 1 })
      await waitForItems(page, 1)
      assert.deepEqual(await itemsOf(page), ['a:create:1'])

      // A new handler (new closure each render) is used without subscribing again.
      const calls = await page.evaluate(() => window.subscribeCalls)
      await page.evaluate(() => window.setLabel('b'))
      await waitForText(page, '#label', 'b') // committed: the new handler is in place
      await manager.emitEvent({ type: 'update', collection: 'posts', id: 1 })
      await waitForItems(page, 2)
      assert.deepEqual(await itemsOf(page), ['a:create:1', 'b:update:1'])
      assert.equal(await page.evaluate(() => window.subscribeCalls), calls)

      // The status follows the connection through a server restart.
      await manager.close()
      await waitForText(page, '#status', 'reconnecting')
      manager = await env.restart()
      await waitForText(page, '#status', 'open')
      await waitUntil(() => inRoom() === 1, { label: 'the room joined again' })
      await manager.emitEvent({ type: 'delete', collection: 'posts', id: 1 })
      await waitForItems(page, 3)
      assert.equal((await itemsOf(page))[2], 'b:delete:1')

      // Unmounting the component leaves the room; the connection stays.
      await page.evaluate(() => window.setShowPosts(false))
      await waitForText(page, '#no-posts', 'hidden')
      await waitUntil(() => inRoom() === 0, { label: 'the room left on unmount' })
      assert.equal(manager.stats().connections, 1)
      assert.equal(await textOf(page, '#status'), 'open')
      assert.deepEqual(await page.evaluate(() => window.client.collections), [])

      // Unmounting the provider disconnects its client.
      await page.evaluate(() => window.unmountAll())
      await waitUntil(() => manager.stats().connections === 0, { label: 'the provider disconnected' })
      assert.equal(await page.evaluate(() => window.client.status), 'closed')
      assert.deepEqual(page.problems, [])
      await page.close()
    })
  },
)

// ---------------------------------------------------------------------------------------------
// Chromium: useRealtimeMessage, and usePayloadWebSocket for code written against the original
// design's hook (outside any provider, on a client it owns)

const MESSAGES_PAGE = `<!doctype html>
<html>
<head><meta charset="utf-8"><title>payload-realtime react messages</title>${REACT_HEAD}</head>
<body>
<div id="root"></div>
<div id="seed"></div>
<script type="module">
  import { StrictMode, createElement as h, useState } from 'react'
  import { createRoot } from 'react-dom/client'
  import { RealtimeProvider, useRealtime, useRealtimeMessage, usePayloadWebSocket } from '/lib/react/index.mjs'

  const params = new URLSearchParams(location.search)

  function Messages() {
    const [seen, setSeen] = useState([])
    useRealtime('posts', () => {}) // joins the room the broadcasts go to
    useRealtimeMessage('announcement', (m) => setSeen((list) => [...list, 'announcement:' + m.text]))
    useRealtimeMessage(['error'], (m) => setSeen((list) => [...list, 'error:' + m.code]))
    return h('ul', { id: 'messages' }, seen.map((text, i) => h('li', { key: i }, text)))
  }

  function App() {
    return h(RealtimeProvider, { url: params.get('ws'), token: params.get('token') }, h(Messages))
  }

  // As code written against the original design uses it: no provider, a URL.
  function Seed() {
    const { isConnected, lastMessage, sendMessage } = usePayloadWebSocket({
      url: params.get('ws'),
      token: params.get('token'),
    })
    window.seedSend = sendMessage
    return [
      h('p', { id: 'seed-connected', key: 'c' }, String(isConnected)),
      h('p', { id: 'seed-last', key: 'l' }, lastMessage ? lastMessage.type + ' ' + (lastMessage.id ?? '') : 'none'),
    ]
  }

  createRoot(document.getElementById('root')).render(h(StrictMode, null, h(App)))
  const seed = createRoot(document.getElementById('seed'))
  seed.render(h(StrictMode, null, h(Seed)))
  window.unmountSeed = () => seed.unmount()
</script>
</body>
</html>`

test(
  'in Chromium: useRealtimeMessage for any type, usePayloadWebSocket in the seed shape',
  { timeout: 120_000 },
  async (t) => {
    return withChromium(t, { '/': MESSAGES_PAGE }, async (env) => {
      const { browser, web, manager } = env
      const inRoom = () => manager.getSocketsInRoom('collection:posts').length
      const messagesOf = (page) => page.$$eval('#messages li', (lis) => lis.map((li) => li.textContent))
      const page = await openPage(browser)
      const query = new URLSearchParams({ ws: `ws://127.0.0.1:${manager.port}/`, token: makeToken({ id: 'seeded' }) })
      await page.goto(`${web.origin}/?${query}`)

      // Both clients connect (StrictMode's double effects leave one each); only the provider's joined.
      await waitForText(page, '#seed-connected', 'true')
      await waitUntil(() => manager.stats().connections === 2 && inRoom() === 1, {
        label: 'two sockets, one in the room',
      })

      // A room broadcast of the app's own type reaches its hook once; an event does not.
      await manager.emitEvent({ type: 'create', collection: 'posts', id: 1 })
      manager.broadcastToRoom('collection:posts', { type: 'announcement', text: 'hello' })
      await waitInPage(page, () => document.querySelectorAll('#messages li').length === 1)
      assert.deepEqual(await messagesOf(page), ['announcement:hello'])

      // The seed's way to join a collection, then its lastMessage follows the events.
      assert.equal(await page.evaluate(() => window.seedSend({ type: 'join-collection', collection: 'posts' })), true)
      await waitUntil(() => inRoom() === 2, { label: 'the seed hook joined' })
      await manager.emitEvent({ type: 'update', collection: 'posts', id: 7 })
      await waitForText(page, '#seed-last', 'update 7')
      // A raw message with no id: the server's unknown-type error reaches lastMessage; the
      // provider's client never sent it, so its error hook stays quiet.
      assert.equal(await page.evaluate(() => window.seedSend('{"type":"no-such-type"}')), true)
      await waitForText(page, '#seed-last', 'error ')
      assert.deepEqual(await messagesOf(page), ['announcement:hello'])

      // Unmounting the seed component disconnects the client it created.
      await page.evaluate(() => window.unmountSeed())
      await waitUntil(() => manager.stats().connections === 1 && inRoom() === 1, { label: 'the seed client gone' })
      assert.deepEqual(
        page.problems.filter((p) => !/no-such-type|unknown-type/.test(p)),
        [],
      )
      await page.close()
    })
  },
)
