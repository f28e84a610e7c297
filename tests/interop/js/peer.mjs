#!/usr/bin/env node
// js-libp2p 3.x peer for the Rust interop tests.
//
//   node peer.mjs listen [--topic T]... [--dht] [--dht-protocol P] [--security noise|tls]
//   node peer.mjs dial <multiaddr-with-/p2p/> [--upload N] [--download N] [--security noise|tls]
//
// stdout: one JSON object per line (the protocol the Rust tests read).
// stderr: free-form logs.
//
// TCP + noise + yamux (js-libp2p defaults left untouched; `--security tls`
// puts @libp2p/tls, Node's TLS 1.3, in noise's place), identify, ping and
// the libp2p perf protocol (/perf/1.0.0, implemented here over raw streams:
// @libp2p/perf is not available for libp2p 3 from the registry we use).
//
// With `--topic T` (repeatable), the listener also runs gossipsub
// (@libp2p/gossipsub at its defaults: StrictSign, flood publish, no
// publishing to zero peers, no delivery to self) subscribed to each T, and
// reports
//   {"event":"subscription-change","peer_id":..,"topic":..,"subscribed":bool}
//     for every topic a remote peer (un)subscribes,
//   {"event":"message","topic":..,"data":<UTF-8 text>,"from":..,"seqno":..}
//     for every message on a subscribed topic,
// and takes {"cmd":"publish","id":..,"topic":..,"data":<text>} on stdin,
// answered by {"event":"published","id":..,"recipients":[peer ids]} or
// {"event":"error","id":..,"message":..} (also when no peer received it).
//
// With `--dht`, the listener also runs @libp2p/kad-dht in server mode on
// our overlay's protocol (/blackhole/kad/1.0.0 unless `--dht-protocol P`),
// addresses passed on as they are (loopback included), records under the
// /bh/ namespace accepted as they are. Commands (each with an "id", answered
// by one event with that id, or {"event":"error","id":..,"message":..}):
//   {"cmd":"dht-put","key":K,"value":V}     -> {"event":"dht-put","stored_at":[peer ids]}
//   {"cmd":"dht-get","key":K}               -> {"event":"dht-value","value":V,"from":peer,
//                                               "record_from":[peers that answered with it]}
//   {"cmd":"dht-provide","key_hex":H}       -> {"event":"dht-provided","sent_to":[peer ids]}
//   {"cmd":"dht-find-providers","key_hex":H}-> {"event":"dht-providers","providers":[{peer_id,addrs,from}]}
//   {"cmd":"dht-find-peer","peer_id":P}     -> {"event":"dht-peer","peer_id":P,"addrs":[..],"from":peer}
//   {"cmd":"dht-closest","key":K}           -> {"event":"dht-closest","peers":[{peer_id,addrs}]}
//   {"cmd":"dht-table"}                     -> {"event":"dht-table","peers":[peer ids]}
// Record keys K are UTF-8 text (our node's API keys are the text's bytes)
// or "key_hex"; values V are UTF-8 text. Provider keys are multihashes
// (js kad-dht keys provider records by CID, and puts the CID's multihash
// bytes in ADD_PROVIDER/GET_PROVIDERS): a sha2-256 one, 0x12 0x20 + 32
// bytes, since js decodes incoming provider keys as CIDv0.

import { createInterface } from 'node:readline'
import { noise } from '@chainsafe/libp2p-noise'
import { gossipsub } from '@libp2p/gossipsub'
import { identify } from '@libp2p/identify'
import { kadDHT, passthroughMapper } from '@libp2p/kad-dht'
import { peerIdFromString } from '@libp2p/peer-id'
import { ping } from '@libp2p/ping'
import { tcp } from '@libp2p/tcp'
import { tls } from '@libp2p/tls'
import { yamux } from '@libp2p/yamux'
import { multiaddr } from '@multiformats/multiaddr'
import { createLibp2p } from 'libp2p'
import { version as LIBP2P_VERSION } from 'libp2p/version'
import { CID } from 'multiformats/cid'
import * as Digest from 'multiformats/hashes/digest'

const AGENT = `blackhole-interop-js/1.0 js-libp2p/${LIBP2P_VERSION}`
const PERF_PROTOCOL = '/perf/1.0.0'
const CHUNK = 64 * 1024
const ZEROS = new Uint8Array(CHUNK)
const NET_TIMEOUT_MS = 20_000 // dial, ping, identify
const PERF_TIMEOUT_MS = 120_000 // one whole perf run
const STOP_TIMEOUT_MS = 5_000
const DHT_TIMEOUT_MS = 60_000 // one DHT operation
const DHT_PROTOCOL = '/blackhole/kad/1.0.0'
const DHT_NAMESPACE = 'bh' // record keys /bh/...
const RAW_CODEC = 0x55

process.stdout.on('error', () => {}) // parent went away: nothing left to tell

function emit (obj) {
  process.stdout.write(JSON.stringify(obj) + '\n')
}

function log (...args) {
  console.error('[peer.mjs]', ...args)
}

function errMessage (err) {
  if (err == null) return 'unknown error'
  const name = err.name != null && err.name !== 'Error' ? `${err.name}: ` : ''
  return `${name}${err.message ?? String(err)}`
}

function withTimeout (promise, ms, what) {
  let timer
  const timeout = new Promise((_resolve, reject) => {
    timer = setTimeout(() => reject(new Error(`${what} timed out after ${ms} ms`)), ms)
  })
  return Promise.race([promise, timeout]).finally(() => clearTimeout(timer))
}

// ---------------------------------------------------------------- streams ---

// Calls onData for every chunk received until the remote closes its write side
// (EOF). Rejects if the stream is reset/aborted/closed before EOF or on signal.
function readUntilEnd (stream, onData, signal) {
  return new Promise((resolve, reject) => {
    const cleanup = () => {
      stream.removeEventListener('message', onMessage)
      stream.removeEventListener('end', onEnd)
      stream.removeEventListener('close', onClose)
      signal.removeEventListener('abort', onAbort)
    }
    const onMessage = (evt) => {
      try {
        onData(evt.data)
      } catch (err) {
        cleanup()
        reject(err)
      }
    }
    const onEnd = () => { cleanup(); resolve() }
    const onClose = (evt) => {
      cleanup()
      reject(evt.error ?? new Error('stream closed before the remote closed its write side'))
    }
    const onAbort = () => { cleanup(); reject(signal.reason ?? new Error('aborted')) }

    if (signal.aborted) { onAbort(); return }
    if (stream.readableEnded) { resolve(); return }
    stream.addEventListener('message', onMessage)
    stream.addEventListener('end', onEnd)
    stream.addEventListener('close', onClose)
    signal.addEventListener('abort', onAbort)
  })
}

// Writes `total` zero bytes in CHUNK-sized pieces, honouring backpressure.
async function writeZeros (stream, total, signal) {
  let remaining = total
  while (remaining > 0) {
    signal.throwIfAborted()
    const n = Math.min(CHUNK, remaining)
    const ok = stream.send(n === CHUNK ? ZEROS : ZEROS.subarray(0, n))
    remaining -= n
    if (!ok) await stream.onDrain({ signal })
  }
}

// ------------------------------------------------------------------- perf ---

// Server side: read the u64 BE byte count, read (and discard) until EOF, then
// write that many bytes and close.
async function perfServe (stream, connection) {
  const signal = AbortSignal.timeout(PERF_TIMEOUT_MS)
  const header = new Uint8Array(8)
  let headerLen = 0
  let received = 0
  try {
    await readUntilEnd(stream, (data) => {
      received += data.byteLength
      if (headerLen < 8) {
        const take = Math.min(8 - headerLen, data.byteLength)
        header.set(data.subarray(0, take), headerLen)
        headerLen += take
      }
    }, signal)
    if (headerLen < 8) throw new Error(`perf request too short (${headerLen} bytes)`)
    const toSend = Number(new DataView(header.buffer).getBigUint64(0, false))
    log(`perf server: ${connection.remotePeer} uploaded ${received - 8} bytes, sending ${toSend}`)
    await writeZeros(stream, toSend, signal)
    await stream.close({ signal })
  } catch (err) {
    log('perf server error:', errMessage(err))
    stream.abort(err instanceof Error ? err : new Error(String(err)))
  }
}

// Client side: one stream, upload `upload` bytes, download `download` bytes.
async function perfRun (connection, upload, download) {
  const signal = AbortSignal.timeout(PERF_TIMEOUT_MS)
  const stream = await connection.newStream(PERF_PROTOCOL, { signal, runOnLimitedConnection: true })
  try {
    let received = 0
    const readDone = readUntilEnd(stream, (data) => { received += data.byteLength }, signal)
    readDone.catch(() => {}) // awaited below; avoid an unhandled rejection meanwhile

    const start = performance.now()
    const header = new Uint8Array(8)
    new DataView(header.buffer).setBigUint64(0, BigInt(download), false)
    stream.send(header)
    await writeZeros(stream, upload, signal)
    await stream.close({ signal }) // closes our write side only (half-close)
    const uploaded = performance.now()
    await readDone
    const done = performance.now()

    if (received !== download) {
      throw new Error(`expected to download ${download} bytes, got ${received}`)
    }
    return {
      event: 'perf',
      upload_bytes: upload,
      download_bytes: received,
      upload_seconds: (uploaded - start) / 1000,
      download_seconds: (done - uploaded) / 1000
    }
  } catch (err) {
    stream.abort(err instanceof Error ? err : new Error(String(err)))
    throw err
  }
}

// ------------------------------------------------------------------- node ---

async function startNode ({ listen, topics = [], dht = null }) {
  const services = {
    identify: identify({ timeout: NET_TIMEOUT_MS }),
    ping: ping({ timeout: NET_TIMEOUT_MS })
  }
  if (dht != null) {
    services.dht = kadDHT({
      protocol: dht.protocol,
      clientMode: false, // loopback: nothing would confirm we are dialable
      // the default mapper drops private (loopback) addresses from what we
      // tell other peers, and our peers only have loopback addresses
      peerInfoMapper: passthroughMapper,
      validators: { [DHT_NAMESPACE]: async () => {} },
      selectors: { [DHT_NAMESPACE]: () => 0 }
    })
  }
  if (topics.length > 0) {
    services.pubsub = gossipsub({
      emitSelf: false,
      globalSignaturePolicy: 'StrictSign',
      allowPublishToZeroTopicPeers: false,
      // Every peer of a loopback test network shares 127.0.0.1. By default
      // gossipsub's IP colocation penalty (-5 per squared peer beyond 10)
      // graylists all of them once 15 are connected: in a 200-node
      // test-net, where our nodes' DHTs connect to this peer, it ignored
      // every message of our node in the gossipsub check. Our nodes exempt
      // loopback the same way (pubsub.score.ip_colocation_whitelist).
      scoreParams: { IPColocationFactorWhitelist: new Set(['127.0.0.1', '::1']) }
    })
  }
  const node = await createLibp2p({
    addresses: { listen: listen ? ['/ip4/127.0.0.1/tcp/0'] : [] },
    transports: [tcp()],
    connectionEncrypters: [SECURITY === 'tls' ? tls() : noise()],
    streamMuxers: [yamux()], // defaults on purpose: the Rust side must cope with them
    nodeInfo: { userAgent: AGENT },
    // The connection monitor pings every connection and, by default, aborts it
    // when a ping times out; a long transfer through a slow (debug-build) peer
    // must not be killed by that, so only measure.
    connectionMonitor: { abortConnectionOnPingFailure: false },
    // js-libp2p refuses more than 5 inbound connections a second from one
    // host, and every peer of a loopback test network is the same host
    // (test-net's nodes, DHT queries and lookups dialing in at once):
    // loopback is on the allow list, which skips that limit.
    connectionManager: { allow: ['/ip4/127.0.0.0/ipcidr/8'] },
    services
  })

  // agent versions learnt from identify, and whoever waits for them
  const agents = new Map()
  const agentWaiters = new Map()
  node.addEventListener('peer:identify', (evt) => {
    const id = evt.detail.peerId.toString()
    const agent = evt.detail.agentVersion ?? ''
    agents.set(id, agent)
    for (const resolve of agentWaiters.get(id) ?? []) resolve(agent)
    agentWaiters.delete(id)
  })
  node.addEventListener('peer:connect', (evt) => {
    emit({ event: 'connected', peer_id: evt.detail.toString() })
  })
  node.addEventListener('peer:disconnect', (evt) => {
    emit({ event: 'disconnected', peer_id: evt.detail.toString() })
  })

  node.waitForAgent = async (peerId) => {
    const id = peerId.toString()
    if (agents.has(id)) return agents.get(id)
    const waiting = new Promise((resolve) => {
      if (!agentWaiters.has(id)) agentWaiters.set(id, [])
      agentWaiters.get(id).push(resolve)
    })
    // identify may have finished on an earlier connection to the same peer
    try {
      const peer = await node.peerStore.get(peerId)
      const known = peer.metadata.get('AgentVersion')
      if (known != null) return new TextDecoder().decode(known)
    } catch {}
    return withTimeout(waiting, NET_TIMEOUT_MS, 'identify')
  }

  if (node.services.pubsub != null) watchPubsub(node.services.pubsub, topics)

  await node.handle(PERF_PROTOCOL, (stream, connection) => {
    void perfServe(stream, connection)
  }, {
    maxInboundStreams: 64,
    maxOutboundStreams: 64,
    runOnLimitedConnection: true
  })

  return node
}

// -------------------------------------------------------------- gossipsub ---

const utf8 = new TextDecoder()

function watchPubsub (pubsub, topics) {
  pubsub.addEventListener('subscription-change', (evt) => {
    const peerId = evt.detail.peerId.toString()
    for (const { topic, subscribe } of evt.detail.subscriptions) {
      emit({ event: 'subscription-change', peer_id: peerId, topic, subscribed: subscribe })
    }
  })
  pubsub.addEventListener('message', (evt) => {
    const msg = evt.detail
    emit({
      event: 'message',
      topic: msg.topic,
      data: utf8.decode(msg.data),
      from: msg.type === 'signed' ? msg.from.toString() : null,
      seqno: msg.type === 'signed' ? msg.sequenceNumber.toString() : null
    })
  })
  for (const topic of topics) pubsub.subscribe(topic)
}

// publishes text on a topic; throws unless at least one peer was sent it
async function publish (node, topic, data) {
  const pubsub = node.services.pubsub
  if (pubsub == null) throw new Error('gossipsub is off (start with --topic)')
  if (typeof topic !== 'string' || typeof data !== 'string') {
    throw new Error('publish needs a string topic and a string data')
  }
  const { recipients } = await pubsub.publish(topic, new TextEncoder().encode(data))
  if (recipients.length === 0) throw new Error('PublishError.NoRecipients')
  return recipients.map((p) => p.toString())
}

// dial, ping, identify, perf; emits events, throws on the first failure
async function dialPingPerf (node, addr, upload, download) {
  if (!Number.isSafeInteger(upload) || upload < 0) throw new Error(`bad upload size: ${upload}`)
  if (!Number.isSafeInteger(download) || download < 0) throw new Error(`bad download size: ${download}`)
  const ma = multiaddr(addr)

  const connection = await node.dial(ma, { signal: AbortSignal.timeout(NET_TIMEOUT_MS) })
  const peerId = connection.remotePeer
  log(`dialled ${peerId} via ${connection.remoteAddr}`)

  const rtt = await node.services.ping.ping(peerId, { signal: AbortSignal.timeout(NET_TIMEOUT_MS) })
  emit({ event: 'ping', peer_id: peerId.toString(), rtt_ms: rtt })

  const agent = await node.waitForAgent(peerId)
  emit({ event: 'identify', peer_id: peerId.toString(), agent })

  emit(await perfRun(connection, upload, download))
}

// -------------------------------------------------------------------- DHT ---

const utf8Encoder = new TextEncoder()

function hexToBytes (hex) {
  if (typeof hex !== 'string' || hex.length % 2 !== 0 || !/^[0-9a-fA-F]*$/.test(hex)) {
    throw new Error(`not hex: ${JSON.stringify(hex)}`)
  }
  const out = new Uint8Array(hex.length / 2)
  for (let i = 0; i < out.length; i++) out[i] = parseInt(hex.slice(2 * i, 2 * i + 2), 16)
  return out
}

function bytesToHex (bytes) {
  return Array.from(bytes, (b) => b.toString(16).padStart(2, '0')).join('')
}

// a command's key: "key" (UTF-8 text) or "key_hex"
function commandKey (cmd) {
  if (typeof cmd.key === 'string' && cmd.key !== '') return utf8Encoder.encode(cmd.key)
  if (typeof cmd.key_hex === 'string' && cmd.key_hex !== '') return hexToBytes(cmd.key_hex)
  throw new Error('needs a non-empty "key" or "key_hex"')
}

// a provider key (multihash bytes) as the CID js kad-dht wants; its
// multihash bytes are exactly the key
function providerCid (cmd) {
  const bytes = commandKey(cmd)
  if (bytes[0] !== 0x12 || bytes[1] !== 0x20 || bytes.length !== 34) {
    throw new Error('a provider key must be a sha2-256 multihash (0x12 0x20 + 32 bytes)')
  }
  return CID.createV1(RAW_CODEC, Digest.decode(bytes))
}

function dhtOf (node) {
  const dht = node.services.dht
  if (dht == null) throw new Error('the DHT is off (start with --dht)')
  return dht
}

function peerInfoJson (info) {
  return { peer_id: info.id.toString(), addrs: info.multiaddrs.map((ma) => ma.toString()) }
}

async function dhtCommand (node, cmd, signal) {
  const dht = dhtOf(node)
  const self = node.peerId.toString()
  switch (cmd.cmd) {
    case 'dht-put': {
      if (typeof cmd.value !== 'string') throw new Error('dht-put needs a string "value"')
      const key = commandKey(cmd)
      const value = utf8Encoder.encode(cmd.value)
      const stored = new Set()
      const failed = new Map()
      for await (const e of dht.put(key, value, { signal })) {
        if (e.name === 'PEER_RESPONSE' && e.messageName === 'PUT_VALUE') {
          stored.add(e.from.toString())
        } else if (e.name === 'QUERY_ERROR') {
          failed.set(e.from.toString(), errMessage(e.error))
        }
      }
      // a peer that answered with another value is in both: not stored
      for (const p of failed.keys()) stored.delete(p)
      if (stored.size === 0) {
        throw new Error(`dht-put: stored at no peer (${JSON.stringify(Object.fromEntries(failed))})`)
      }
      return { event: 'dht-put', key_hex: bytesToHex(key), stored_at: [...stored] }
    }
    case 'dht-get': {
      const key = commandKey(cmd)
      let found = null
      const recordFrom = new Set()
      for await (const e of dht.get(key, { signal })) {
        if (e.name === 'PEER_RESPONSE' && e.record != null) {
          recordFrom.add(e.from.toString())
        } else if (e.name === 'VALUE') {
          found = e
        }
      }
      if (found == null) throw new Error(`NotFoundError: no record for ${bytesToHex(key)}`)
      return {
        event: 'dht-value',
        key_hex: bytesToHex(key),
        value: new TextDecoder().decode(found.value),
        from: found.from.toString(),
        local: found.from.toString() === self,
        record_from: [...recordFrom].filter((p) => p !== self)
      }
    }
    case 'dht-provide': {
      const cid = providerCid(cmd)
      const sent = new Set()
      for await (const e of dht.provide(cid, { signal })) {
        if (e.name === 'PEER_RESPONSE' && e.messageName === 'ADD_PROVIDER') sent.add(e.from.toString())
      }
      if (sent.size === 0) throw new Error('dht-provide: the provider record reached no peer')
      return { event: 'dht-provided', key_hex: bytesToHex(cid.multihash.bytes), cid: cid.toString(), sent_to: [...sent] }
    }
    case 'dht-find-providers': {
      const cid = providerCid(cmd)
      const providers = new Map()
      for await (const e of dht.findProviders(cid, { signal })) {
        if (e.name !== 'PROVIDER') continue
        for (const info of e.providers) {
          const id = info.id.toString()
          const p = providers.get(id) ?? { ...peerInfoJson(info), from: [] }
          const from = e.from.toString()
          if (!p.from.includes(from)) p.from.push(from)
          providers.set(id, p)
        }
      }
      return { event: 'dht-providers', key_hex: bytesToHex(cid.multihash.bytes), providers: [...providers.values()] }
    }
    case 'dht-find-peer': {
      const target = peerIdFromString(String(cmd.peer_id))
      // the network, not what we already know
      for await (const e of dht.findPeer(target, { signal, useCache: false })) {
        if (e.name === 'FINAL_PEER' && e.peer.id.equals(target)) {
          return { event: 'dht-peer', ...peerInfoJson(e.peer), from: e.from.toString() }
        }
      }
      throw new Error(`NotFoundError: peer ${target} not found`)
    }
    case 'dht-closest': {
      const key = commandKey(cmd)
      const peers = new Map()
      for await (const e of dht.getClosestPeers(key, { signal })) {
        if (e.name === 'FINAL_PEER') peers.set(e.peer.id.toString(), peerInfoJson(e.peer))
      }
      return { event: 'dht-closest', key_hex: bytesToHex(key), peers: [...peers.values()] }
    }
    case 'dht-table': {
      const peers = [...dht.routingTable.kb.toIterable()].map((c) => c.peerId.toString())
      return { event: 'dht-table', peers }
    }
    default:
      throw new Error(`unknown command: ${JSON.stringify(cmd.cmd)}`)
  }
}

async function stopNode (node) {
  try {
    await withTimeout(node.stop(), STOP_TIMEOUT_MS, 'node.stop()')
  } catch (err) {
    log('stop failed:', errMessage(err))
  }
}

// -------------------------------------------------------------------- CLI ---

function parseDialArgs (args) {
  const opts = { addr: undefined, upload: 0, download: 0 }
  for (let i = 0; i < args.length; i++) {
    const a = args[i]
    if (a === '--upload' || a === '--download') {
      const v = Number(args[++i])
      if (!Number.isSafeInteger(v) || v < 0) throw new Error(`${a} needs a non-negative integer`)
      opts[a.slice(2)] = v
    } else if (opts.addr == null && !a.startsWith('--')) {
      opts.addr = a
    } else {
      throw new Error(`unexpected argument: ${a}`)
    }
  }
  if (opts.addr == null) throw new Error('missing multiaddr')
  return opts
}

async function runDial (args) {
  // hard stop in case something hangs past the per-operation timeouts
  const guard = setTimeout(() => {
    emit({ event: 'error', message: 'overall deadline exceeded' })
    process.exit(3)
  }, 3 * NET_TIMEOUT_MS + PERF_TIMEOUT_MS + 2 * STOP_TIMEOUT_MS)
  guard.unref()

  let node
  let code = 0
  try {
    const { addr, upload, download } = parseDialArgs(args)
    node = await startNode({ listen: false })
    log(`dialer ${node.peerId} (${AGENT})`)
    await dialPingPerf(node, addr, upload, download)
  } catch (err) {
    emit({ event: 'error', message: errMessage(err) })
    code = 1
  }
  if (node != null) await stopNode(node)
  process.exit(code)
}

function parseListenArgs (args) {
  const opts = { topics: [], dht: null }
  for (let i = 0; i < args.length; i++) {
    const a = args[i]
    if (a === '--topic' && i + 1 < args.length) {
      opts.topics.push(args[++i])
    } else if (a === '--dht') {
      opts.dht ??= { protocol: DHT_PROTOCOL }
    } else if (a === '--dht-protocol' && i + 1 < args.length) {
      opts.dht = { protocol: args[++i] }
    } else {
      throw new Error(`unexpected argument: ${a}`)
    }
  }
  return opts
}

async function runListen (args) {
  const { topics, dht } = parseListenArgs(args)
  const node = await startNode({ listen: true, topics, dht })
  const addrs = node.getMultiaddrs().map((ma) => ma.toString())
  emit({ event: 'listening', peer_id: node.peerId.toString(), addrs, agent: AGENT })
  log(`listening as ${node.peerId} on ${addrs.join(', ')}`)

  let stopping = false
  const shutdown = async (why) => {
    if (stopping) return
    stopping = true
    log(`shutting down (${why})`)
    await stopNode(node)
    process.exit(0)
  }
  process.on('SIGTERM', () => { void shutdown('SIGTERM') })
  process.on('SIGINT', () => { void shutdown('SIGINT') })

  // commands run one after another so their events do not interleave
  let queue = Promise.resolve()
  const rl = createInterface({ input: process.stdin, crlfDelay: Infinity })
  rl.on('line', (line) => {
    if (line.trim() === '') return
    queue = queue.then(async () => {
      let cmd
      try {
        cmd = JSON.parse(line)
      } catch (err) {
        emit({ event: 'error', message: `bad command line: ${errMessage(err)}` })
        return
      }
      if (cmd?.cmd === 'publish') {
        const id = cmd.id ?? null
        try {
          const recipients = await withTimeout(
            publish(node, cmd.topic, cmd.data), NET_TIMEOUT_MS, 'publish')
          emit({ event: 'published', id, topic: cmd.topic, recipients })
        } catch (err) {
          emit({ event: 'error', id, message: errMessage(err) })
        }
        return
      }
      if (typeof cmd?.cmd === 'string' && cmd.cmd.startsWith('dht-')) {
        const id = cmd.id ?? null
        try {
          const signal = AbortSignal.timeout(DHT_TIMEOUT_MS)
          const { event, ...result } = await withTimeout(
            dhtCommand(node, cmd, signal), DHT_TIMEOUT_MS + 1_000, cmd.cmd)
          emit({ event, id, ...result })
        } catch (err) {
          emit({ event: 'error', id, message: errMessage(err) })
        }
        return
      }
      if (cmd?.cmd !== 'dial_ping_perf') {
        emit({ event: 'error', message: `unknown command: ${JSON.stringify(cmd?.cmd)}` })
        return
      }
      try {
        await withTimeout(
          dialPingPerf(node, String(cmd.addr), Number(cmd.upload ?? 0), Number(cmd.download ?? 0)),
          3 * NET_TIMEOUT_MS + PERF_TIMEOUT_MS, 'dial_ping_perf')
      } catch (err) {
        emit({ event: 'error', message: errMessage(err) })
      }
    })
  })
  // stdin closed: finish what was asked, then leave
  rl.on('close', () => { void queue.then(() => shutdown('stdin closed')) })
}

const [mode, ...rest] = process.argv.slice(2)
// `--security noise|tls`, taken out before the mode's own arguments
const securityAt = rest.indexOf('--security')
const SECURITY = securityAt < 0 ? 'noise' : rest.splice(securityAt, 2)[1]
if (SECURITY !== 'noise' && SECURITY !== 'tls') {
  console.error(`--security must be noise or tls, not ${SECURITY}`)
  process.exit(2)
}
if (mode === 'listen') {
  runListen(rest).catch((err) => {
    emit({ event: 'error', message: errMessage(err) })
    process.exit(1)
  })
} else if (mode === 'dial') {
  void runDial(rest)
} else {
  console.error('usage: node peer.mjs listen [--topic T]... [--dht] [--dht-protocol P]\n       node peer.mjs dial <multiaddr> [--upload N] [--download N]')
  process.exit(2)
}
