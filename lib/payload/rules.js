'use strict'
// The rules the plugin gives the server: the application's own `authorize` and `rooms` maps
// (from the plugin options and from `initUWebSocket(port, extra)`), combined with Payload's read
// access where `readAccess` asks for it, and the live admin's rule for document locks.

const { readAccessDecision, mayReadCollection } = require('./access.js')
const { LOCKS } = require('./locks.js')
const { isPlainObject, jsonCopy, collectionRoom } = require('../util.js')

/** @typedef {import('../plugin.js').PluginContext} PluginContext */
/** @typedef {(user: any, event: any) => unknown} Rule */
/** @typedef {(user: any, room: string) => unknown} JoinRule */

/**
 * A join rule that allows only when both rules allow.
 * @param {JoinRule | undefined} first
 * @param {JoinRule | undefined} second
 * @returns {JoinRule | undefined}
 */
function bothJoinRules(first, second) {
  if (!first) return second
  if (!second) return first
  return async (user, room) => (await first(user, room)) === true && (await second(user, room)) === true
}

/**
 * A rule that allows only when both rules allow (the second one's `{ doc }` answer wins).
 * @param {Rule | undefined} first
 * @param {Rule | undefined} second
 * @returns {Rule | undefined}
 */
function bothRules(first, second) {
  if (!first) return second
  if (!second) return first
  return async (user, event) => {
    const a = await first(user, event)
    if (!(a === true || isDocAnswer(a))) return false
    const b = await second(user, event)
    if (b === true) return a
    return isDocAnswer(b) ? b : false
  }
}

/**
 * @param {unknown} v
 * @returns {v is { doc: any }}
 */
function isDocAnswer(v) {
  return isPlainObject(v) && 'doc' in v
}

/**
 * Whether Payload's read access filters a collection's events: on by default; only
 * `readAccess: false`, or `{ [slug]: false }`, delivers them to everyone who may connect, whole.
 * @param {any} options the plugin options
 * @param {string} slug
 */
function readAccessFor(options, slug) {
  return (
    slug !== LOCKS &&
    options.readAccess !== false &&
    !(isPlainObject(options.readAccess) && options.readAccess[slug] === false)
  )
}

/**
 * The rule of the live admin's document locks. Locks name a document and its editor by id,
 * which every signed-in user may read (Payload's own access for them). Keyed by the
 * collection's room: an app room of that name is the app's.
 * @param {boolean} liveAdmin
 * @returns {Record<string, Rule>}
 */
function lockRules(liveAdmin) {
  const signedIn = (user) => user !== null && user !== undefined
  return liveAdmin ? { [collectionRoom(LOCKS)]: signedIn } : {}
}

/**
 * A reader's own copy of the document (read access applied), shaped by `transformEvent`
 * as the event was: `{ doc }`, or false when the transform skips it or drops the doc.
 * @param {PluginContext} ctx
 * @param {string} slug
 * @param {any} event
 * @param {object} doc
 */
function reshaped({ options, logFailure }, slug, event, doc) {
  if (!options.transformEvent) return { doc }
  try {
    const shaped = options.transformEvent({ ...event, doc })
    return shaped && isPlainObject(shaped.doc) ? { doc: jsonCopy(shaped.doc) } : false
  } catch (err) {
    logFailure(`transformEvent for "${slug}"`, err)
    return false
  }
}

/**
 * The authorize rules: the user's, and Payload's read access where `readAccess` asks for it.
 * Read access is keyed by the collection's room (`collection:<slug>`), which the server
 * prefers to a bare `<slug>` key, so an app room named like a collection never gets it; a
 * user's bare `<slug>` rule still judges both, as documented.
 * @param {PluginContext} ctx
 * @param {...(Record<string, Rule> | undefined)} ruleMaps
 */
function buildAuthorize(ctx, ...ruleMaps) {
  const { options, include, state } = ctx
  const keys = new Set(ruleMaps.flatMap((m) => Object.keys(m ?? {})))
  /** @type {Record<string, Rule>} */
  const rules = {}
  for (const key of keys) {
    let rule
    for (const m of ruleMaps) rule = bothRules(rule, m && m[key])
    if (rule) rules[key] = rule
  }
  for (const slug of include) {
    if (!readAccessFor(options, slug)) continue
    const room = collectionRoom(slug)
    rules[room] = /** @type {Rule} */ (
      bothRules(bothRules(rules[slug], rules[room]), async (user, event) => {
        const answer = await readAccessDecision(state.payload, slug, event, user)
        return isDocAnswer(answer) ? reshaped(ctx, slug, event, answer.doc) : answer
      })
    )
  }
  return rules
}

/**
 * The join rules: the user's, and (where read access applies) Payload's collection read
 * access, so a user who may read nothing of a collection is refused its room.
 * @param {PluginContext} ctx
 * @param {...(Record<string, JoinRule> | undefined)} ruleMaps
 */
function buildRooms({ options, include, state }, ...ruleMaps) {
  /** @type {Record<string, JoinRule>} */
  const rules = {}
  for (const m of ruleMaps) {
    for (const [key, rule] of Object.entries(m ?? {}))
      rules[key] = /** @type {JoinRule} */ (bothJoinRules(rules[key], rule))
  }
  // Keyed by the collection's room only: an app room named like a collection is the app's
  // and needs a `rooms` rule of its own.
  for (const slug of include) {
    if (!readAccessFor(options, slug)) continue
    const room = collectionRoom(slug)
    rules[room] = /** @type {JoinRule} */ (
      bothJoinRules(rules[room], (user) => mayReadCollection(state.payload, slug, user))
    )
  }
  return rules
}

module.exports = { buildAuthorize, buildRooms, lockRules }
