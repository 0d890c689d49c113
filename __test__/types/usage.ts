// Type-checked by types.test.mjs with `tsc --noEmit` (never run): uses every export of the client
// and React typings, through the package's own export map. A wrong or missing typing fails it.
import {
  backoffDelay,
  CloseCodes,
  createRealtimeClient,
  DEFAULT_LIVENESS,
  DEFAULT_RECONNECT,
  parseSubscription,
  RealtimeClient,
  RealtimeClientError,
  validateMessage,
  type AckMessage,
  type ClientEvents,
  type CloseInfo,
  type ConnectionStatus,
  type CustomMessage,
  type ErrorMessage,
  type GetTokenContext,
  type KnownMessageType,
  type KnownServerMessage,
  type LivenessOptions,
  type MessageOfType,
  type PongMessage,
  type PresenceChangeMessage,
  type PresenceMessage,
  type RealtimeClientOptions,
  type RealtimeEvent,
  type RealtimeUser,
  type ReconnectOptions,
  type RecoveryFailedMessage,
  type RoomPosition,
  type ServerErrorCode,
  type ServerMessage,
} from 'payload-realtime/client'
import createDefault from 'payload-realtime/client'
import {
  RealtimeContext,
  RealtimeProvider,
  usePayloadWebSocket,
  useRealtime,
  useRealtimeClient,
  useRealtimeMessage,
  useRealtimeStatus,
  type MessageTypes,
  type PayloadWebSocketState,
  type RealtimeProviderProps,
  type Subscription,
} from 'payload-realtime/react'
import { createElement, useContext } from 'react'

/** Fails to compile when `T` is not exactly `U`. */
type Equal<T, U> = (<V>() => V extends T ? 1 : 2) extends <V>() => V extends U ? 1 : 2 ? true : false
function expectType<T extends true>(_ok: T): void {}

// ---- options and the client
const liveness: LivenessOptions = { interval: 25_000, timeout: 10_000 }
const reconnect: ReconnectOptions = { ...DEFAULT_RECONNECT, maxAttempts: 10 }
const options: RealtimeClientOptions = {
  url: 'ws://127.0.0.1:3002/',
  getToken: async (ctx: GetTokenContext) => (ctx.reason === 'expired' ? 'fresh' : 'cached'),
  reconnect,
  liveness,
  reconnectOnResume: true,
  requestTimeout: 5000,
  autoConnect: false,
}
const client: RealtimeClient = createRealtimeClient(options)
const other = createDefault({ url: 'ws://127.0.0.1:3002/', liveness: false, reconnect: false })
const third = new RealtimeClient({ url: 'ws://127.0.0.1:3002/', token: 't', tokenInUrl: false, random: Math.random })
expectType<Equal<typeof DEFAULT_LIVENESS.interval, number>>(true)
const status: ConnectionStatus = client.status
const collections: string[] = client.collections
const sent: boolean = client.send({ type: 'typing', collection: 'posts' })
client.connect()
other.disconnect()
third.disconnect()

// ---- subscriptions and events
interface Post {
  id: number
  title: string
}
const off: () => void = client.subscribe<Post>('posts', (event) => {
  const e: RealtimeEvent<Post> = event
  const title: string | undefined = e.doc?.title
  const who: RealtimeUser | undefined = e.user
  ;(void title, who)
})
off()
client.on('status', (s: ConnectionStatus, detail?: CloseInfo) => void (s && detail?.code))
client.on('resume', ({ reason }) => void (reason === 'online' || reason === 'visible'))
client.on('recovery-failed', ({ collection, room, reason }) => void [collection, room, reason])
client.on('error', (err: RealtimeClientError) => void [err.code, err.reply?.code, err.collection, err.closeCode])
client.once('open', () => {})
const listener: ClientEvents['reconnecting'] = ({ attempt, delay, code, reason }) => void [attempt, delay, code, reason]
client.on('reconnecting', listener)

// ---- the discriminated union narrows on `type`
function describe(message: KnownServerMessage): string {
  switch (message.type) {
    case 'create':
    case 'update':
    case 'delete':
      return `${message.collection} ${message.id} ${message.timestamp} ${message.offset ?? ''}`
    case 'ack': {
      const position: RoomPosition | undefined = message.positions?.posts
      return `${message.id} ${position?.epoch} ${message.recovered}`
    }
    case 'pong':
      return `pong ${message.id ?? ''}`
    case 'error': {
      const code: ServerErrorCode = message.code
      return `${code}: ${message.message}`
    }
    case 'presence':
      return message.members.map((m: RealtimeUser) => m.id).join(',')
    case 'presence-join':
    case 'presence-leave':
      return `${message.room} ${message.user.id}`
    case 'recovery-failed':
      return `${message.room} ${message.reason}`
    default: {
      const exhaustive: never = message
      return exhaustive
    }
  }
}
const kinds: KnownMessageType[] = ['create', 'ack', 'pong', 'error', 'presence', 'presence-join', 'recovery-failed']

// With the app's own messages declared, the whole ServerMessage narrows too.
interface OrderCreated {
  type: 'order.created'
  order: { id: string; total: number }
}
function onAny(message: ServerMessage<OrderCreated>): number {
  if (message.type === 'order.created') return message.order.total
  if (message.type === 'ack') return message.recovered ? 1 : 0
  return 0
}
client.on('message', (message: ServerMessage) => {
  if (message.type === 'pong') void message
})

expectType<Equal<MessageOfType<'ack'>, AckMessage>>(true)
expectType<Equal<MessageOfType<'pong'>, PongMessage>>(true)
expectType<Equal<MessageOfType<'error'>, ErrorMessage>>(true)
expectType<Equal<MessageOfType<'presence'>, PresenceMessage>>(true)
expectType<Equal<MessageOfType<'presence-join'>, PresenceChangeMessage>>(true)
expectType<Equal<MessageOfType<'recovery-failed'>, RecoveryFailedMessage>>(true)
expectType<Equal<MessageOfType<'plugin:install-progress'>, CustomMessage<'plugin:install-progress'>>>(true)

// ---- what the typings must refuse (each line fails the check if it compiles)
function refused(message: KnownServerMessage): void {
  if (message.type === 'ack') {
    // @ts-expect-error an ack has no members
    void message.members
  }
  // @ts-expect-error not narrowed yet: only some messages have a collection
  void message.collection.length
}
// @ts-expect-error liveness takes numbers
createRealtimeClient({ url: 'ws://x/', liveness: { interval: '1s' } })
// @ts-expect-error send needs a type
client.send({ collection: 'posts' })
void refused

// ---- requests and helpers
async function requests(): Promise<void> {
  const reply = await client.request('sum', { a: 1, b: 2 }, { timeout: 1000 })
  const presence = await client.request<PresenceMessage>('presence', { collection: 'posts' })
  ;(void reply, presence.members)
  const admins = await client.request<PresenceMessage>('presence', { room: 'role:admin' })
  const adminsCollection: string | undefined = admins.collection
  ;(void admins.room, adminsCollection)
  try {
    await client.request('nope')
  } catch (err) {
    if (err instanceof RealtimeClientError && err.code === 'timeout') return
  }
}
const delay: number = backoffDelay(3, { initialDelay: 100 }, () => 0.5)
const parsed: { collection: string; type: string | null } = parseSubscription('posts.update')
const problem: string | null = validateMessage({ type: 'pong' })
const closeCode: 4001 = CloseCodes.TOKEN_EXPIRED

// ---- React
function Hooks(): null {
  const c: RealtimeClient = useRealtimeClient()
  const s: ConnectionStatus = useRealtimeStatus()
  const subscription: Subscription = ['posts', 'pages.update']
  useRealtime<Post>(subscription, (event) => void event.doc?.title)
  useRealtimeMessage('presence-join', (m) => void m.user.id)
  useRealtimeMessage('recovery-failed', (m) => void m.reason)
  useRealtimeMessage('plugin:install-progress', (m) => {
    const t: 'plugin:install-progress' = m.type
    void t
  })
  useRealtimeMessage('*', (m: ServerMessage) => void m.type)
  const types: MessageTypes = ['presence-join', 'presence-leave']
  useRealtimeMessage(types, (m) => void m.type)
  const ws: PayloadWebSocketState = usePayloadWebSocket()
  const own = usePayloadWebSocket('ws://127.0.0.1:3002/')
  const withOptions = usePayloadWebSocket({ url: 'ws://127.0.0.1:3002/', token: 't' })
  const ok: boolean = ws.isConnected && ws.sendMessage({ type: 'join-collection', collection: 'posts' })
  own.sendMessage('{"type":"ping"}')
  const last: ServerMessage | null = withOptions.lastMessage
  const fromContext: RealtimeClient | null = useContext(RealtimeContext)
  ;(void c, s, ok, last, fromContext, ws.status, ws.client)
  return null
}
const props: RealtimeProviderProps = { url: 'ws://127.0.0.1:3002/', getToken: () => 't', children: null }
const withClient: RealtimeProviderProps = { client }
const tree = createElement(RealtimeProvider, props, createElement(Hooks))
void [status, collections, sent, kinds, onAny, describe, requests, delay, parsed, problem, closeCode, withClient, tree]
