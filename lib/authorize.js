'use strict'
// The answers to the core's authorize questions: for each event, which of the users in its room
// may receive it (`createAuthorizer`), and which users may join which rooms (`createJoinCheck`). The core asks in crossings of several events (`authorizeBatch`, JSON text) and
// names the users by lists it defines once and reuses; each event's rule runs once per user,
// all of them concurrently, and whatever goes wrong (a throw, a rejection, the timeout, an
// answer JSON cannot carry) denies only the users or the event it concerns.

const { isPlainObject, withTimeout } = require('./util.js')

/**
 * A rule's answer as it crosses back: `true`, `{ doc }` (deliver this document), or `false`.
 * @param {unknown} allowed
 * @returns {true | false | { doc: object }}
 */
function decision(allowed) {
  if (allowed === true) return true
  // `{ doc }`: deliver, with the document as this user may read it.
  if (isPlainObject(allowed) && isPlainObject(allowed.doc)) return { doc: allowed.doc }
  return false
}

/**
 * @typedef {true | false | { doc: object }} Decision
 * @typedef {(user: any, event: any) => unknown} Rule
 * @typedef {object} AuthorizerOptions
 * @property {(collection: string) => Rule | undefined} getRule the rule for a collection or room
 *   (looked up per event, so rules swapped by a reload apply to the next event)
 * @property {number} timeout ms an event's rules may take; the users not answered by then are denied
 * @property {(what: string, err: unknown) => void} logFailure
 */

/**
 * Makes the authorize side of one server: `authorize` for one event, `authorizeBatch` for a
 * crossing. The lists of users the core defined are held here until it forgets them.
 * @param {AuthorizerOptions} options
 */
function createAuthorizer({ getRule, timeout, logFailure }) {
  // One call per event with every distinct user in the room; each rule runs concurrently and
  // a throw, rejection or timeout denies that user only. One timer per event, and no promise
  // for a rule that answers synchronously.
  /**
   * @param {string} collection
   * @param {unknown} event
   * @param {unknown[]} users
   * @returns {Decision[] | Promise<Decision[]>}
   */
  const authorize = (collection, event, users) => {
    const rule = getRule(collection)
    if (!rule || users.length === 0) return users.map(() => false)
    const what = `authorize for "${collection}"`
    const results = users.map((user) => {
      try {
        return rule(user, event)
      } catch (err) {
        logFailure(what, err)
        return false
      }
    })
    return new Promise((resolve) => {
      let done = false
      /** @param {Decision[]} answers */
      const finish = (answers) => {
        if (done) return
        done = true
        clearTimeout(timer)
        resolve(answers)
      }
      // Each user on its own: after a rejection (it denies that user only) or at the timeout
      // (the answers so far count, the rest are denied).
      /** @type {Decision[] | null} */
      let answers = null
      const oneByOne = () => {
        if (answers) return
        const own = (answers = /** @type {Decision[]} */ (users.map(() => false)))
        let pending = results.length
        const settled = () => --pending === 0 && finish(own)
        results.forEach((result, i) =>
          Promise.resolve(result).then(
            (allowed) => {
              if (done) return
              own[i] = decision(allowed)
              settled()
            },
            (err) => {
              if (done) return
              logFailure(what, err)
              settled()
            },
          ),
        )
      }
      const timer = setTimeout(() => {
        logFailure(what, new Error(`${what} took longer than ${timeout} ms`))
        oneByOne()
        // The rules that have answered report in the reactions just queued; then it ends.
        setImmediate(() => finish(/** @type {Decision[]} */ (answers)))
      }, timeout)
      // Usually every rule answers: one Promise.all for the list, where a reaction per user
      // cost more than the rules (100 events to 1,000 users: 30-48 ms against 20-37 ms).
      Promise.all(results).then((values) => finish(values.map(decision)), oneByOne)
    })
  }

  // Questions of several events come in one crossing, as JSON text: `{ users, define, forget,
  // requests }`. Lists of users are kept here by id: `define` gives new ones (as indices into
  // `users`, each user written once per crossing), `forget` the ids no question will name again,
  // and each request names its list, so a room's users cross once, not with every event (the
  // core decides when: see its `crossing` module). Each request is answered on its own; the
  // answers go back as JSON text too, `true` or `false` for a request whose users all got the
  // same plain answer.
  /** @type {Map<number, unknown[]>} */
  const lists = new Map()
  /**
   * @param {string} json
   * @returns {Promise<string>}
   */
  const authorizeBatch = async (json) => {
    /** @type {{ users: unknown[], define: [number, number[]][], forget: number[], requests: { collection: string, event: unknown, list: number }[] }} */
    const { users, define, forget, requests } = JSON.parse(json)
    for (const id of forget) lists.delete(id)
    for (const [id, which] of define)
      lists.set(
        id,
        which.map((i) => users[i]),
      )
    // One event's rules at a time, each followed by a microtask turn: the rules that answer at
    // once settle before the next event's are called, so their promises die young. Calling
    // them all first kept every promise alive together, and the young-generation collector
    // copying them took more time than the rules (100 events to 1,000 users: 17-43 ms against
    // 9-11 ms alone, and most of the JS thread's time in the server). A rule that waits on
    // something still runs concurrently with the next events' rules.
    /** @type {(Decision[] | Promise<Decision[]> | null)[]} */
    const pending = []
    for (const { collection, event, list } of requests) {
      const asked = lists.get(list)
      // Never missing (a list is named alone only once a crossing that defined it was
      // answered); if it were, its users are denied.
      if (asked === undefined) logFailure(`authorize for "${collection}"`, new Error(`unknown list of users ${list}`))
      pending.push(asked === undefined ? null : authorize(collection, event, asked))
      await null
    }
    const answers = await Promise.all(pending)
    // A `{ doc }` that cannot be written as JSON (a cycle, a BigInt) denies its event only.
    const parts = answers.map((answer, i) => {
      if (answer === null || answer.every((a) => a === false)) return 'false'
      if (answer.every((a) => a === true)) return 'true'
      try {
        return JSON.stringify(answer)
      } catch (err) {
        logFailure(`authorize for "${requests[i].collection}"`, err)
        return JSON.stringify(answer.map(() => false))
      }
    })
    return `[${parts.join(',')}]`
  }

  return { authorize, authorizeBatch, lists }
}

/**
 * Makes the join check of one server: for each question `{ user, rooms }` of a burst of joins,
 * whether that user may join each room. Every rule that names the room must answer `true`
 * within `timeout` ms; none, a throw, a rejection or the timeout refuses (and is logged).
 * @param {{ getRules: (room: string) => ((user: any, room: string) => unknown)[], timeout: number,
 *   logFailure: (what: string, err: unknown) => void }} options
 * @returns {(questions: { user: any, rooms: string[] }[]) => Promise<boolean[][]>}
 */
function createJoinCheck({ getRules, timeout, logFailure }) {
  return async (questions) =>
    Promise.all(
      questions.map(({ user, rooms }) =>
        Promise.all(
          rooms.map(async (room) => {
            const rules = getRules(room)
            try {
              const answers = await withTimeout(
                Promise.all(rules.map((rule) => rule(user, room))),
                timeout,
                `the join rule of "${room}"`,
              )
              return rules.length > 0 && answers.every((a) => a === true)
            } catch (err) {
              logFailure(`the join rule of "${room}"`, err)
              return false
            }
          }),
        ),
      ),
    )
}

module.exports = { createAuthorizer, createJoinCheck, decision }
