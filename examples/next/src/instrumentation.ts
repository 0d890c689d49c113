// Payload (and with it the plugin's WebSocket server) comes up when the server starts, not on the
// first request that needs it: the realtime port is listening as soon as `next start` is ready.
export async function register() {
  if (process.env.NEXT_RUNTIME === 'nodejs') {
    const { getPayload } = await import('payload')
    const config = (await import('@payload-config')).default
    await getPayload({ config })
  }
}
