// payload-realtime, as an application would run it: initUWebSocket + manager.emitEvent.
// --authorize 1 adds an async rule on collection `posts`: even user numbers may read, after
// awaiting a microtask (--ruleDelayMs N: a timer of N ms); with --rule any, every signed-in user
// may read, answered from the user alone (an async function that awaits nothing).
// --redis URL connects it to other instances through Redis (`redis: { url }`).
import { initUWebSocket } from '../../index.mjs'
import { allowAnyUser, allowUser, control, emitEach, makeEvent, parseArgs, roomOf, ruleWait } from './common.mjs'

const args = parseArgs()
// Every load-generator socket comes from 127.0.0.1, many of them as one user: no per-client limits.
// `maxConnections` defaults to the open-file limit less 1,024 (18,976 here), kept for Payload's own
// descriptors; the idle case holds 19,000 sockets in a process that has nothing else open.
const options = {
  host: '127.0.0.1',
  secret: args.secret ?? 'bench-secret',
  maxConnections: 1_000_000,
  maxConnectionsPerIp: 0,
  maxConnectionsPerUser: 0,
}
if (args.authorize === '1') {
  const wait = ruleWait(args)
  options.authorize = {
    posts:
      args.rule === 'any'
        ? async (user) => allowAnyUser(user)
        : async (user) => {
            await wait()
            return allowUser(user)
          },
  }
}
if (args.workerThreads) options.workerThreads = Number(args.workerThreads)
// Without --redis: alone, even with REDIS_URL in the environment.
options.redis = args.redis ? { url: args.redis } : false
const manager = await initUWebSocket(0, options)

control({
  port: manager.port,
  connections: () => manager.stats().connections,
  stats: () => (args.redis ? { redis: manager.stats().redis } : {}),
  async emit(cmd) {
    await Promise.all(await emitEach(cmd, (i) => manager.emitEvent(makeEvent(roomOf(cmd, i), i, cmd.size))))
  },
  quit: () => manager.close(),
})
