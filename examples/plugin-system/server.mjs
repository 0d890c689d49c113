// A dynamic plugin system's realtime side (no Payload needed to run it): admins connect, get the
// installed plugins as their initial state, and install a plugin with a request; the admin who
// asked sees the install's progress, then every admin is told about the collection it added and
// sees it without a reload. The tests run this file (__test__/plugin-system.test.mjs).
import { initUWebSocket } from '../../index.mjs'

/** Install steps of a plugin, as a real installer would report them. */
const STEPS = ['download', 'verify', 'migrate', 'register']

/**
 * Starts the server. `installer(plugin, step)` does one step of an install (the default does
 * nothing); returns `{ manager, installed }`.
 */
export async function start({ port = 3002, host = '127.0.0.1', secret = process.env.PAYLOAD_SECRET, installer } = {}) {
  const installed = new Map() // plugin name -> the collection it added
  const isAdmin = (user) => user?.role === 'admin'
  const manager = await initUWebSocket(port, {
    host,
    secret,
    // Nobody joins the admins' room by asking unless they are an admin...
    rooms: { 'role:admin': isAdmin },
    // ...and admins are put there as they connect, with the plugins installed so far first.
    onConnect: (socket) => {
      if (!isAdmin(socket.user)) return undefined
      socket.join('role:admin')
      return { initial: { type: 'plugins', installed: [...installed.keys()] } }
    },
  })

  manager.registerCustomHandler('install-plugin', async (socket, msg) => {
    if (!isAdmin(socket.user)) throw Object.assign(new Error('only admins install plugins'), { code: 'forbidden' })
    const plugin = msg.plugin
    if (typeof plugin !== 'string' || !/^[a-z][a-z0-9-]{0,63}$/.test(plugin)) {
      throw Object.assign(new Error('name the plugin in `plugin`'), { code: 'bad-message' })
    }
    // Progress goes to the admin who asked, and only to them.
    for (const [i, step] of STEPS.entries()) {
      await installer?.(plugin, step)
      socket.send({
        type: 'plugin:install-progress',
        plugin,
        step,
        percent: Math.round(((i + 1) / STEPS.length) * 100),
      })
    }
    const collection = `${plugin}-items`
    installed.set(plugin, collection)
    // Every admin, on every instance, in order with the room's other events.
    await manager.publish('role:admin', { type: 'collection-added', plugin, collection, by: socket.user.id })
    return { type: 'plugin-installed', plugin, collection }
  })

  return { manager, installed }
}

if (import.meta.url === `file://${process.argv[1]}`) {
  const { manager } = await start({ port: Number(process.env.PORT ?? 3002) })
  console.log(`plugin-system realtime server on ws://127.0.0.1:${manager.port}/`)
}
