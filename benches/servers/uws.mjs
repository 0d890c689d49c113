// uWebSockets.js anchors (no token check: any handshake is accepted).
// --mode plugin   the old plugin's way: rooms as JS Sets, JSON.stringify + ws.send per socket
//                 (with --authorize 1: `for (const ws of room) if (await authorize(...)) ws.send(...)`;
//                 --ruleDelayMs N: the rule waits N ms first)
// --mode publish  ws.subscribe(room) on join, app.publish(room, JSON.stringify(event)) per event
import { createRequire } from 'node:module'
import { allowUser, control, emitEach, makeEvent, parseArgs, roomOf, ruleWait, unverifiedClaims } from './common.mjs'

const require = createRequire(import.meta.url)
const uWS = require('@trufflesuite/uws-js-unofficial')
if (!String(uWS.App).includes('[native code]')) {
  console.error('uws: @trufflesuite/uws-js-unofficial fell back to its JS implementation on this Node')
  process.exit(2)
}

const args = parseArgs()
const mode = args.mode ?? 'plugin'
const withAuthorize = args.authorize === '1'
const wait = ruleWait(args)
const authorize = async (user) => {
  await wait()
  return allowUser(user)
}
/** @type {Map<string, Set<any>>} */
const rooms = new Map()
let connections = 0
const decoder = new TextDecoder()

const behavior = {
  compression: uWS.DISABLED,
  maxPayloadLength: 64 * 1024,
  maxBackpressure: 1024 * 1024,
  idleTimeout: 120,
  open: () => connections++,
  message(ws, message) {
    let msg
    try {
      msg = JSON.parse(decoder.decode(message))
    } catch {
      return
    }
    if (msg.type !== 'join-collection' || typeof msg.collection !== 'string') return
    if (mode === 'publish') ws.subscribe(msg.collection)
    else {
      let set = rooms.get(msg.collection)
      if (!set) rooms.set(msg.collection, (set = new Set()))
      set.add(ws)
      ;(ws.getUserData().rooms ??= []).push(msg.collection)
    }
    ws.send(JSON.stringify({ type: 'ack', id: msg.id }))
  },
  close(ws) {
    connections--
    const data = ws.getUserData()
    data.closed = true
    for (const r of data.rooms ?? []) rooms.get(r)?.delete(ws)
  },
}
if (withAuthorize) {
  // Reads the user from the token without checking it (the anchors check no tokens).
  behavior.upgrade = (res, req, context) => {
    const token = new URLSearchParams(req.getQuery() ?? '').get('token')
    res.upgrade(
      { user: unverifiedClaims(token) },
      req.getHeader('sec-websocket-key'),
      req.getHeader('sec-websocket-protocol'),
      req.getHeader('sec-websocket-extensions'),
      context,
    )
  }
}

const app = uWS.App().ws('/*', behavior)
const listenSocket = await new Promise((resolve, reject) =>
  app.listen('127.0.0.1', 0, (s) => (s ? resolve(s) : reject(new Error('uws: listen failed')))),
)

async function emitOld(cmd) {
  const jobs = await emitEach(cmd, (i) => {
    const event = makeEvent(roomOf(cmd, i), i, cmd.size)
    const room = rooms.get(event.collection)
    if (!room) return
    if (!withAuthorize) {
      for (const ws of room) ws.send(JSON.stringify(event))
      return
    }
    // As the old plugin: once per socket, in sequence, awaited.
    return (async () => {
      for (const ws of room) {
        if (await authorize(ws.getUserData().user, event)) {
          if (!ws.getUserData().closed) ws.send(JSON.stringify(event))
        }
      }
    })()
  })
  await Promise.all(jobs)
}

async function emitPublish(cmd) {
  await emitEach(cmd, (i) => {
    const event = makeEvent(roomOf(cmd, i), i, cmd.size)
    app.publish(event.collection, JSON.stringify(event))
  })
}

control({
  port: uWS.us_socket_local_port(listenSocket),
  connections: () => connections,
  emit: mode === 'publish' ? emitPublish : emitOld,
  quit: async () => uWS.us_listen_socket_close(listenSocket),
})
