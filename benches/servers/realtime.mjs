// payload-realtime, as an application would run it: initUWebSocket + manager.emitEvent.
// --authorize 1 adds an async rule on collection `posts` (even user numbers may read).
import { initUWebSocket } from '../../index.mjs'
import { allowUser, control, makeEvent, parseArgs, roomOf } from './common.mjs'

const args = parseArgs()
const options = { host: '127.0.0.1', secret: args.secret ?? 'bench-secret' }
if (args.authorize === '1') {
  options.authorize = {
    posts: async (user) => {
      await null
      return allowUser(user)
    },
  }
}
if (args.workerThreads) options.workerThreads = Number(args.workerThreads)
const manager = await initUWebSocket(0, options)

control({
  port: manager.port,
  connections: () => manager.stats().connections,
  async emit(cmd) {
    const pending = []
    for (let i = 0; i < cmd.count; i++) pending.push(manager.emitEvent(makeEvent(roomOf(cmd, i), i, cmd.size)))
    await Promise.all(pending)
  },
  quit: () => manager.close(),
})
