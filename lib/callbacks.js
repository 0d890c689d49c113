'use strict'
// What the native server calls back into for the host's code, besides the authorize rules
// (authorize.js): custom message handlers and `onConnect` (one crossing per burst of messages),
// and `verifyUser` (once per connection).

const { ERROR_CODES } = require('./errors.js')
const { isPlainObject, toJson, withTimeout } = require('./util.js')

/**
 * The `handle` and `verifyUser` callbacks of the native server. They read the manager's current
 * handlers and rules at each call (a dev reload swaps them in place).
 * @param {import('./manager.js').UWebSocketManager} manager
 * @param {Record<string, any>} options the server's options
 * @param {{ handlerTimeout: number, logFailure: (key: string, err: unknown) => void }} limits
 */
function hostCallbacks(manager, options, { handlerTimeout, logFailure }) {
  // `onConnect` for a new socket (type '': no client can send it). Rooms named by
  // `socket.join()` or the answer are joined after the initial messages are sent. A throw,
  // rejection, timeout or bad answer is logged and leaves the socket as it is.
  const connected = async (call) => {
    const rooms = []
    const socket = {
      id: call.socketId,
      user: call.user,
      send: (message) => manager.sendToSocket(call.socketId, message),
      join: (room) => {
        if (typeof room !== 'string' || room === '')
          throw new TypeError('payload-realtime: socket.join takes a room name')
        rooms.push(room)
      },
    }
    try {
      const answer = await withTimeout(
        Promise.resolve().then(() => manager._onConnect(socket)),
        handlerTimeout,
        'onConnect',
      )
      let initial = []
      if (answer !== undefined && answer !== null) {
        const shape = 'onConnect returns nothing or { rooms?: string[], initial?: message | message[] }'
        if (!isPlainObject(answer)) throw new TypeError(shape)
        if (answer.rooms !== undefined) {
          if (!Array.isArray(answer.rooms) || answer.rooms.some((r) => typeof r !== 'string' || r === '')) {
            throw new TypeError(shape)
          }
          rooms.push(...answer.rooms)
        }
        if (answer.initial !== undefined) initial = Array.isArray(answer.initial) ? answer.initial : [answer.initial]
        if (initial.some((m) => !isPlainObject(m))) throw new TypeError(shape)
      }
      if (rooms.length === 0 && initial.length === 0) return { ok: true }
      return { ok: true, reply: { initial: JSON.parse(toJson(initial, 'the initial state')), rooms } }
    } catch (/** @type {any} */ err) {
      logFailure('onConnect', err)
      return { ok: true }
    }
  }

  // One call per burst of custom messages.
  const handle = async (calls) =>
    Promise.all(
      calls.map(async (call) => {
        if (call.type === '' && manager._onConnect) return connected(call)
        const handler = manager._handlers.get(call.type)
        if (!handler) return { ok: false, code: 'unknown-type', message: `no handler for type "${call.type}"` }
        const socket = {
          id: call.socketId,
          user: call.user,
          send: (message) => manager.sendToSocket(call.socketId, message),
        }
        try {
          const reply = await withTimeout(
            Promise.resolve().then(() => handler(socket, call.message)),
            handlerTimeout,
            `handler for "${call.type}"`,
          )
          if (reply === undefined) return { ok: true }
          return { ok: true, reply: JSON.parse(toJson(reply, `the reply of handler "${call.type}"`)) }
        } catch (/** @type {any} */ err) {
          const code = err && typeof err.code === 'string' && ERROR_CODES.has(err.code) ? err.code : 'internal'
          if (code === 'internal') {
            logFailure(`handler for "${call.type}"`, err)
            return { ok: false, code, message: `handler for "${call.type}" failed` }
          }
          return { ok: false, code, message: String(err.message ?? code) }
        }
      }),
    )

  // Plugin mode: Payload confirms the user once per connection (sessions, disabled users).
  const verifyUser =
    typeof options.verifyUser === 'function'
      ? async (token, claims) => {
          try {
            const user = await manager._verifyUser(token, claims)
            return isPlainObject(user) ? JSON.parse(toJson(user, 'the verified user')) : null
          } catch (/** @type {any} */ err) {
            logFailure('verifyUser', err)
            return null
          }
        }
      : null

  return { handle, verifyUser }
}

module.exports = { hostCallbacks }
