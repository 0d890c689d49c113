// A standalone server (no Payload): prints a token and emits a `posts` event every 3 seconds.
// Connect with the printed command and watch the events arrive.
import { createHash, createHmac, randomBytes } from 'node:crypto'
import { initUWebSocket } from '../../index.mjs'

const port = Number(process.env.PORT ?? 3002)
const secret = process.env.PAYLOAD_SECRET ?? randomBytes(16).toString('hex')

/** Signs a token the way Payload does: HS256 with sha256(secret) hex, first 32 characters. */
function payloadToken(claims) {
  const key = createHash('sha256').update(secret).digest('hex').slice(0, 32)
  const b64 = (o) => Buffer.from(JSON.stringify(o)).toString('base64url')
  const body = `${b64({ alg: 'HS256', typ: 'JWT' })}.${b64(claims)}`
  return `${body}.${createHmac('sha256', key).update(body).digest('base64url')}`
}

const manager = await initUWebSocket(port, { host: '127.0.0.1', secret, includeCollections: ['posts'] })
const token = payloadToken({
  id: 1,
  collection: 'users',
  email: 'demo@example.com',
  exp: Math.floor(Date.now() / 1000) + 3600,
})

console.log(`payload-realtime listening on ws://127.0.0.1:${manager.port}/`)
console.log(`\nA token for user 1 (valid one hour):\n${token}\n`)
console.log('Try it from another terminal:')
console.log(
  `  node -e "const W=require('ws');const s=new W('ws://127.0.0.1:${manager.port}/?auth=message');` +
    `s.on('open',()=>{s.send(JSON.stringify({type:'auth',token:'${token}'}));` +
    `s.send(JSON.stringify({type:'join-collection',collection:'posts',id:1}))});` +
    `s.on('message',m=>console.log(String(m)))"`,
)
console.log('\nEmitting a posts event every 3 seconds. Ctrl-C to stop.')

let n = 0
const timer = setInterval(() => {
  n += 1
  manager
    .emitEvent({
      type: n % 3 === 1 ? 'create' : 'update',
      collection: 'posts',
      id: 1 + (n % 5),
      doc: { title: `Post #${n}` },
    })
    .catch((err) => console.error(err))
  const s = manager.stats()
  process.stdout.write(`\r${n} events emitted, ${s.connections} socket(s) connected, ${s.messagesOut} messages sent `)
}, 3000)

for (const signal of ['SIGINT', 'SIGTERM']) {
  process.on(signal, async () => {
    clearInterval(timer)
    await manager.close()
    console.log('\nclosed')
    process.exit(0)
  })
}
