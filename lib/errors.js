'use strict'

/** Error codes of the wire protocol (`{ type: 'error', code }`). */
const ERROR_CODES = new Set([
  'bad-json',
  'bad-message',
  'unknown-type',
  'unknown-collection',
  'forbidden',
  'rate-limited',
  'too-large',
  'internal',
])

/**
 * Codes of the `RealtimeError`s the manager throws or rejects with (index.d.ts
 * `RealtimeErrorCode`): the core's (its `Error::code`, for a refused event, a port it cannot
 * listen on, ...) and `not-started`, the JS layer's own. errors.test.mjs checks the list against
 * the core, the addon and the typings.
 */
const HOST_ERROR_CODES = new Set([
  'invalid-option',
  'cannot-listen',
  'invalid-input',
  'closed',
  'server-behind',
  'cannot-adopt',
  'internal',
  'not-started',
])

/**
 * An error with a code. Thrown from a custom handler with a protocol code (e.g. 'forbidden'),
 * its code and message are sent to the client; any other error is sent as 'internal'.
 */
class RealtimeError extends Error {
  /**
   * @param {string} code
   * @param {string} message
   */
  constructor(code, message) {
    super(message)
    this.name = 'RealtimeError'
    this.code = code
  }
}

/**
 * The addon gives a call's error napi's status as its code ('InvalidArg' for an option or input
 * the core refuses, else 'GenericFailure'; 'cannot-adopt' is its own); the core's message says
 * which of its errors it was, by these openings (its `Display`; errors.test.mjs checks the core
 * still writes them).
 */
const NATIVE_MESSAGES = [
  ['invalid option: ', 'invalid-option'],
  ['cannot listen on ', 'cannot-listen'],
  ['the realtime server is closed', 'closed'],
  ['the realtime server is behind', 'server-behind'],
  ['cannot adopt the connection: ', 'cannot-adopt'],
  ['internal error: ', 'internal'],
]

/**
 * The error a native call threw, as a RealtimeError with the core's code; anything else (a
 * TypeError of napi's own) as it is.
 * @param {any} err
 * @returns {Error}
 */
function nativeError(err) {
  if (err instanceof RealtimeError) return err
  const message = String(err?.message ?? err)
  const known = NATIVE_MESSAGES.find(([opening]) => message.startsWith(opening))
  if (known) return new RealtimeError(known[1], message)
  if (err?.code === 'InvalidArg') return new RealtimeError('invalid-input', message)
  if (err?.code === 'GenericFailure') return new RealtimeError('internal', message)
  return err
}

module.exports = { RealtimeError, ERROR_CODES, HOST_ERROR_CODES, NATIVE_MESSAGES, nativeError }
