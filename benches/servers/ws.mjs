// ws 8 anchor (no token check): rooms as JS Sets, JSON.stringify once per event, ws.send per socket.
import { WebSocketServer } from 'ws'
import { control, emitEach, makeEvent, parseArgs, roomOf } from './common.mjs'

parseArgs()
/** @type {Map<string, Set<import('ws').WebSocket>>} */
const rooms = new Map()
let connections = 0

const wss = new WebSocketServer({
  host: '127.0.0.1',
  port: 0,
  perMessageDeflate: false,
  clientTracking: false,
  maxPayload: 64 * 1024,
})
await new Promise((resolve) => wss.once('listening', resolve))

wss.on('connection', (ws) => {
  connections++
  const joined = []
  ws.on('error', () => {})
  ws.on('message', (data) => {
    let msg
    try {
      msg = JSON.parse(data.toString())
    } catch {
      return
    }
    if (msg.type !== 'join-collection' || typeof msg.collection !== 'string') return
    let set = rooms.get(msg.collection)
    if (!set) rooms.set(msg.collection, (set = new Set()))
    set.add(ws)
    joined.push(msg.collection)
    ws.send(JSON.stringify({ type: 'ack', id: msg.id }))
  })
  ws.on('close', () => {
    connections--
    for (const r of joined) rooms.get(r)?.delete(ws)
  })
})

control({
  port: wss.address().port,
  connections: () => connections,
  async emit(cmd) {
    await emitEach(cmd, (i) => {
      const event = makeEvent(roomOf(cmd, i), i, cmd.size)
      const room = rooms.get(event.collection)
      if (!room) return
      const text = JSON.stringify(event)
      for (const ws of room) ws.send(text)
    })
  },
  quit: () => new Promise((resolve) => wss.close(() => resolve())),
})
