// Payload (and with it the plugin's WebSocket server) comes up when the server starts, not on the
// first request that needs it: the realtime port is listening as soon as `next start` is ready.
export async function register() {
  if (process.env.NEXT_RUNTIME === 'nodejs') {
    const { getPayload } = await import('payload')
    const config = (await import('@payload-config')).default
    const payload = await getPayload({ config })
    if (process.env.PAYLOAD_REALTIME_DEMO === '1') await seedDemo(payload)
  }
}

/** `npm start` in the repository: two editors to sign in as, in two browser windows. */
async function seedDemo(payload: Awaited<ReturnType<typeof import('payload').getPayload>>) {
  const password = 'realtime-demo'
  for (const email of ['alice@example.com', 'bob@example.com']) {
    const found = await payload.find({ collection: 'users', where: { email: { equals: email } }, limit: 1 })
    if (found.totalDocs === 0) await payload.create({ collection: 'users', data: { email, password } })
  }
  const port = process.env.PORT ?? '3000'
  console.log(
    `\npayload-realtime demo: open http://localhost:${port}/admin in two windows (one private),\n` +
      `sign in as alice@example.com and bob@example.com (password "${password}"), and edit posts:\n` +
      `the other window shows it live. The live page: http://localhost:${port}/\n`,
  )
}
