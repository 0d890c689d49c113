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
 * An error with a code. Thrown from a custom handler with a protocol code (e.g. 'forbidden'),
 * its code and message are sent to the client; any other error is sent as 'internal'.
 */
class RealtimeError extends Error {
  constructor(code, message) {
    super(message)
    this.name = 'RealtimeError'
    this.code = code
  }
}

module.exports = { RealtimeError, ERROR_CODES }
