// ESM entry: the same objects as the CommonJS entry (one module instance, one server registry).
import cjs from './index.js'
import native from './lib/native.js'

// Where this package is installed, for the addon's loader when a bundler (Next.js) has moved the
// code: see lib/native.js.
native.hintPackageUrl(import.meta.url)

export const { uWebSocketPlugin, initUWebSocket, getUWebSocketManager, UWebSocketManager, RealtimeError } = cjs
export default cjs
