// Socket.IO 4 anchor (no token check), the usual choice for several Node instances behind one
// Redis: `@socket.io/redis-adapter` with the `redis` client (pub/sub). WebSocket transport only.
// A socket joins a room with the event `join` (room name, ack); events go out as
// `io.to(room).emit('event', event)`: one encode per event, one send per socket; with the adapter
// the event is also published to Redis, and every other instance sends it to its own members.
// --redis URL enables the adapter.
import { createServer } from 'node:http'
import { createAdapter } from '@socket.io/redis-adapter'
import { createClient } from 'redis'
import { Server } from 'socket.io'
import { control, emitEach, makeEvent, parseArgs, roomOf } from './common.mjs'

// The adapter's own requests to Redis can time out under a burst and reject with nobody
// listening; log them and keep serving (missing events show in the "delivered" column).
process.on('unhandledRejection', (err) => console.error('socket.io anchor: unhandled rejection:', err?.message ?? err))

const args = parseArgs()
const http = createServer()
const io = new Server(http, {
  serveClient: false,
  transports: ['websocket'],
  perMessageDeflate: false,
  httpCompression: false,
  maxHttpBufferSize: 64 * 1024,
})
const clients = []
if (args.redis) {
  const pub = createClient({ url: args.redis })
  const sub = pub.duplicate()
  pub.on('error', (err) => console.error('redis pub:', err.message))
  sub.on('error', (err) => console.error('redis sub:', err.message))
  await Promise.all([pub.connect(), sub.connect()])
  clients.push(pub, sub)
  io.adapter(createAdapter(pub, sub))
}

io.on('connection', (socket) => {
  socket.on('join', (room, ack) => {
    if (typeof room === 'string') socket.join(room)
    if (typeof ack === 'function') ack({ type: 'ack' })
  })
})
await new Promise((resolve) => http.listen(0, '127.0.0.1', resolve))

control({
  port: http.address().port,
  connections: () => io.engine.clientsCount,
  emit: (cmd) =>
    emitEach(cmd, (i) => {
      const event = makeEvent(roomOf(cmd, i), i, cmd.size)
      io.to(event.collection).emit('event', event)
    }),
  async quit() {
    await io.close()
    for (const c of clients) c.destroy()
  },
})
