// The server side's JavaScript (lib/, checked with checkJs by tsconfig.lib.json) against the
// hand-written typings in index.d.ts: each export as written must be usable as declared.
import type * as declared from '../../index.js'
import * as manager from '../../lib/manager.js'
import * as plugin from '../../lib/plugin.js'
import * as errors from '../../lib/errors.js'

export const instance: declared.UWebSocketManager = {} as InstanceType<typeof manager.UWebSocketManager>
export const initUWebSocket: typeof declared.initUWebSocket = manager.initUWebSocket
export const getUWebSocketManager: typeof declared.getUWebSocketManager = manager.getUWebSocketManager
export const uWebSocketPlugin: typeof declared.uWebSocketPlugin = plugin.uWebSocketPlugin
export const RealtimeError: typeof declared.RealtimeError = errors.RealtimeError
