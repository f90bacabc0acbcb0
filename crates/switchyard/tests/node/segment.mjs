// Drives the official Segment Node library (@segment/analytics-node) against a Switchyard server,
// as a customer's backend would, for tests/it/segment_client.rs: identify, track and page for
// known users, then closeAndFlush. Any refused or failed delivery makes the exit status non-zero.
//
// Usage: node segment.mjs BASE_URL WRITE_KEY
// Prints one JSON line on stdout: {"sent":[{"type","messageId"}…],"statuses":[200…]}.
import { Analytics } from '@segment/analytics-node'

const [base, writeKey] = process.argv.slice(2)
if (!base || !writeKey) {
  console.error('usage: node segment.mjs BASE_URL WRITE_KEY')
  process.exit(2)
}

const analytics = new Analytics({
  writeKey,
  host: base,
  path: '/v1/batch',
  // Two events per request: identify + track go as one full batch, page alone at close.
  flushAt: 2,
  flushInterval: 200,
  // A retry would hide a refused first attempt.
  maxRetries: 0,
  httpRequestTimeout: 10_000,
})

const failures = []
const sent = []
const statuses = []
analytics.on('error', (err) => {
  failures.push(`${err.code}: ${err.reason?.message ?? err.reason}`)
})
analytics.on('http_request', (request) => {
  for (const event of JSON.parse(request.body).batch) {
    sent.push({ type: event.type, messageId: event.messageId })
  }
})
analytics.on('http_response', (response) => {
  statuses.push(response.status)
  if (response.status !== 200) {
    failures.push(`HTTP ${response.status} from ${response.url}`)
  }
})

analytics.identify({
  userId: 'user-42',
  traits: { email: 'ana@example.com', plan: 'pro' },
})
analytics.track({
  userId: 'user-42',
  event: 'Order Completed',
  properties: {
    order_id: 'T-1001',
    revenue: 99.5,
    currency: 'EUR',
    products: [{ product_id: 'SKU-1', name: 'Runner', price: 99.5, quantity: 1 }],
  },
  context: { campaign: { source: 'newsletter', medium: 'email' } },
})
analytics.page({
  anonymousId: 'anon-7',
  name: 'Pricing',
  properties: { url: 'https://shop.example.com/pricing', title: 'Pricing' },
})

await analytics.closeAndFlush({ timeout: 20_000 })

if (sent.length !== 3) {
  failures.push(`expected 3 events on the wire, saw ${sent.length}`)
}
console.log(JSON.stringify({ sent, statuses }))
if (failures.length > 0) {
  for (const failure of failures) console.error(failure)
  process.exit(1)
}
