// `npm start`: a real Payload 3 app (headless, SQLite) with payload-realtime. It seeds two users,
// prints their credentials and tokens, serves a page on http://localhost:3000 that shows the
// events each user receives live, and writes a document every few seconds.
process.env.DISABLE_PAYLOAD_HMR = 'true'
// Each start uses a fresh database (below): let Payload push its schema without asking.
process.env.PAYLOAD_FORCE_DRIZZLE_PUSH = 'true'

import { mkdirSync, readFileSync, rmSync } from 'node:fs'
import http from 'node:http'
import { dirname } from 'node:path'

const { default: configPromise, dbFile, httpPort, wsPort } = await import('./payload.config.mjs')
const { getPayload } = await import('payload')
const { getUWebSocketManager } = await import('../../index.mjs')

// A fresh database on every start (under examples/payload/data/, gitignored).
mkdirSync(dirname(dbFile), { recursive: true })
for (const suffix of ['', '-journal', '-wal', '-shm']) rmSync(dbFile + suffix, { force: true })

const payload = await getPayload({ config: configPromise })
const manager = getUWebSocketManager()

const PASSWORD = 'demo-password'
const people = [
  { email: 'admin@example.com', role: 'admin' },
  { email: 'reader@example.com', role: 'reader' },
]
const sessions = {}
for (const p of people) {
  await payload.create({ collection: 'users', data: { email: p.email, password: PASSWORD, role: p.role } })
  const { token, user, exp } = await payload.login({
    collection: 'users',
    data: { email: p.email, password: PASSWORD },
  })
  sessions[p.role] = { email: p.email, token, user, exp }
}

const page = readFileSync(new URL('./index.html', import.meta.url), 'utf8')
const server = http.createServer((req, res) => {
  if (req.url === '/' || req.url === '/index.html') {
    const config = {
      wsUrl: `ws://localhost:${manager.port}/`,
      tokens: { admin: sessions.admin.token, reader: sessions.reader.token },
    }
    res.writeHead(200, { 'content-type': 'text/html; charset=utf-8', 'cache-control': 'no-store' })
    res.end(page.replace('/*CONFIG*/ null', JSON.stringify(config)))
    return
  }
  res.writeHead(404, { 'content-type': 'text/plain' })
  res.end('not found')
})
await new Promise((resolve, reject) => {
  server.once('error', reject)
  server.listen(httpPort, '127.0.0.1', resolve)
})

console.log(`
payload-realtime demo: Payload 3 (SQLite, ${dbFile})

  Page with live events:  http://localhost:${httpPort}/
  WebSocket server:       ws://127.0.0.1:${manager.port}/

  Users (password "${PASSWORD}"):
    ${sessions.admin.email}   role admin:  reads every post, with the editor's note
    ${sessions.reader.email}  role reader: reads published posts only, never the note

  A token for the admin (valid until ${new Date(sessions.admin.exp * 1000).toLocaleTimeString()}):
${sessions.admin.token}

  From another terminal:
    node -e "const W=require('ws');const s=new W('ws://127.0.0.1:${manager.port}/?auth=message');s.on('open',()=>{s.send(JSON.stringify({type:'auth',token:process.argv[1]}));s.send(JSON.stringify({type:'join-collection',data:['posts','comments'],id:1}))});s.on('message',m=>console.log(String(m)))" ${sessions.admin.token}

Writing a document every 3 seconds. Ctrl-C to stop.
`)

// The demo's writes: drafts and published posts, updates, comments, deletes; as the admin.
let n = 0
const live = []
async function tick() {
  n += 1
  const as = { user: sessions.admin.user }
  const step = n % 5
  if (step === 1 || live.length === 0) {
    const status = n % 2 ? 'published' : 'draft'
    const post = await payload.create({
      collection: 'posts',
      data: { title: `Post #${n}`, status, editorNote: `internal note ${n}` },
      ...as,
    })
    live.push(post.id)
  } else if (step === 2) {
    const id = live[live.length - 1]
    await payload.update({
      collection: 'posts',
      id,
      data: { title: `Post (edited at ${n})`, status: 'published' },
      ...as,
    })
  } else if (step === 3 || step === 4) {
    await payload.create({ collection: 'comments', data: { post: live[live.length - 1], text: `Comment ${n}` }, ...as })
  } else if (live.length > 3) {
    await payload.delete({ collection: 'posts', id: live.shift(), ...as })
  }
  const s = manager.stats()
  process.stdout.write(`\r${n} writes, ${s.connections} socket(s) connected, ${s.messagesOut} messages sent `)
}
const timer = setInterval(() => tick().catch((err) => console.error(`\nwrite failed: ${err.message}`)), 3000)

let stopping = false
for (const signal of ['SIGINT', 'SIGTERM']) {
  process.on(signal, async () => {
    if (stopping) return
    stopping = true
    clearInterval(timer)
    server.close()
    server.closeAllConnections?.()
    await payload.destroy() // closes the WebSocket server the plugin started, then the database
    console.log('\nstopped')
    process.exit(0)
  })
}
