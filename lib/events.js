'use strict'
// Events into the core: collection events (`emitEvent`, batched per tick) and application events
// (`publish`), in one order.

const { RealtimeError } = require('./errors.js')
const { isPlainObject, userKey, toJson } = require('./util.js')

/**
 * `{ except }` of `publish`: a socket id, a socket object (`{ id }`, as handlers are given), or
 * a user `{ collection, id }` (every socket of that user). Returns `{ socket, user }` (a user
 * key `<collection>:<id>`, as the core groups sockets).
 */
function exceptOption(opts, what) {
  if (opts === undefined || opts === null) return {}
  if (!isPlainObject(opts)) throw new TypeError(`payload-realtime: ${what} options must be an object`)
  const except = opts.except
  if (except === undefined || except === null) return {}
  if (typeof except === 'string' && except !== '') return { socket: except }
  if (isPlainObject(except) && typeof except.collection === 'string' && except.collection !== '') {
    if (typeof except.id === 'string' || typeof except.id === 'number') {
      return { user: userKey(except.collection, except.id) }
    }
  }
  if (isPlainObject(except) && typeof except.id === 'string' && typeof except.send === 'function') {
    return { socket: except.id }
  }
  throw new TypeError(`payload-realtime: ${what}: \`except\` is a socket id, a socket, or a user { collection, id }`)
}

/**
 * Sends a collection event to room `collection:<slug>`, applying its authorize rule.
 * @param {import('./manager.js').UWebSocketManager} manager
 * @param {object} event
 */
async function emitEvent(manager, event) {
  if (!isPlainObject(event)) throw new TypeError('payload-realtime: emitEvent takes an event object')
  const json = toJson(event, 'the event')
  if (manager._closing) throw new RealtimeError('closed', 'payload-realtime: the realtime server is closed')
  // Events emitted in the same tick cross into Rust together (one call, one promise), in order.
  return new Promise((resolve, reject) => {
    if (!manager._batch) {
      manager._batch = []
      queueMicrotask(() => manager._flushEvents())
    }
    manager._batch.push({ json, resolve, reject })
  })
}

/**
 * Hands the events emitted this tick to the core, in one call.
 * @param {import('./manager.js').UWebSocketManager} manager
 */
function flushEvents(manager) {
  const batch = manager._batch
  if (!batch) return // flushed early by a publish
  manager._batch = null
  // The core refuses a single event with its own code (`{ code, message }`); the whole call fails
  // only when the server went away under it (closed in the same tick), which is 'closed' too.
  const failed = (err) => {
    const refusal = new RealtimeError(manager._closing ? 'closed' : 'internal', String(err?.message ?? err))
    for (const e of batch) e.reject(refusal)
  }
  let results
  try {
    results = manager._server.emitEvents(`[${batch.map((e) => e.json).join(',')}]`)
  } catch (/** @type {any} */ err) {
    failed(err)
    return
  }
  results.then(
    (answers) =>
      batch.forEach((e, i) =>
        typeof answers[i] === 'number'
          ? e.resolve()
          : e.reject(new RealtimeError(answers[i]?.code ?? 'internal', answers[i]?.message ?? 'not emitted')),
      ),
    failed,
  )
}

/**
 * Publishes an application event to `room` on the path of collection events: written once,
 * numbered when the room has history (`offset`, `epoch`: recoverable), through the authorize
 * rule whose key names the room, to every instance, in order with the events emitted before
 * it. `message` is an object with a string `type`; the server adds `room`. `opts.except` is a
 * socket (id or object) or a user (`{ collection, id }`) that does not get it. Resolves with
 * the number of local sockets it was queued to.
 * @param {import('./manager.js').UWebSocketManager} manager
 * @param {string} room
 * @param {any} message
 * @param {any} [opts]
 * @returns {Promise<number>}
 */
function publish(manager, room, message, opts = {}) {
  if (typeof room !== 'string' || room === '')
    throw new TypeError('payload-realtime: publish: room must be a non-empty string')
  if (!isPlainObject(message) || typeof message.type !== 'string' || message.type === '') {
    throw new TypeError('payload-realtime: publish takes a message object with a string `type`')
  }
  const { socket, user } = exceptOption(opts, 'publish')
  const json = toJson(message, 'the message')
  if (manager._closing)
    return Promise.reject(new RealtimeError('closed', 'payload-realtime: the realtime server is closed'))
  // Events emitted earlier in this tick go first: one queue into the core keeps the order.
  flushEvents(manager)
  let answer
  try {
    answer = manager._server.publish(room, json, socket, user)
  } catch (/** @type {any} */ err) {
    return Promise.reject(new RealtimeError(manager._closing ? 'closed' : 'internal', String(err?.message ?? err)))
  }
  return answer.then(
    ([n]) => {
      if (typeof n === 'number') return n
      throw new RealtimeError(n?.code ?? 'internal', n?.message ?? 'not published')
    },
    (err) => {
      throw new RealtimeError(manager._closing ? 'closed' : 'internal', String(err?.message ?? err))
    },
  )
}

module.exports = { emitEvent, flushEvents, publish }
