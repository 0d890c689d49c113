import { withPayload } from '@payloadcms/next/withPayload'

/** @type {import('next').NextConfig} */
const nextConfig = {
  // No serverExternalPackages: payload-realtime is bundled like any other package.
}

export default withPayload(nextConfig, { devBundleServerPackages: false })
