import { RealtimeAdminProvider as RealtimeAdminProvider_a5d349227c8494923cb2e6a2a2b831a5 } from 'payload-realtime/admin'
import { CollectionCards as CollectionCards_f9c02e79a4aed9a3924487c0cd4cafb1 } from '@payloadcms/next/rsc'

/** @type import('payload').ImportMap */
export const importMap = {
  "payload-realtime/admin#RealtimeAdminProvider": RealtimeAdminProvider_a5d349227c8494923cb2e6a2a2b831a5,
  "@payloadcms/next/rsc#CollectionCards": CollectionCards_f9c02e79a4aed9a3924487c0cd4cafb1
}
