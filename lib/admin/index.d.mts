// Typings of payload-realtime/admin (the plugin registers the provider; you rarely import it).
import type { ReactNode } from 'react'

export interface RealtimeAdminProviderProps {
  children?: ReactNode
  /** The collections whose changes the admin shows live. */
  collections?: string[]
  /** The realtime server's port on the admin's host (its own port when absent). */
  port?: number
  /** The realtime server's path (default `/`). */
  path?: string
  /** The realtime server's whole URL, instead of `port` and `path`. */
  url?: string
}

export declare function RealtimeAdminProvider(props: RealtimeAdminProviderProps): ReactNode
export default RealtimeAdminProvider

/** The realtime server's URL as a page at `location` reaches it. */
export declare function realtimeUrl(
  props: Pick<RealtimeAdminProviderProps, 'url' | 'port' | 'path'>,
  location?: { protocol: string; hostname: string; host: string },
): string

/** What the admin shows at `pathname`: a collection's list or a document's edit view, or null. */
export declare function adminView(
  pathname: string,
  adminRoute?: string,
): { view: 'list'; slug: string } | { view: 'edit'; slug: string; id: string } | null
