/**
 * Prometheus' scrape endpoint: `GET /metrics` over HTTP, on a UNIX socket, on a loopback address, or
 * on a listening socket systemd passed (FileDescriptorName=metrics). Nothing else is served, and
 * never on a non-loopback address: the counters say how busy the broker is and how often it says no.
 */
import { createServer, type Server } from 'node:http';
import { isIPv4, isIPv6 } from 'node:net';
import { C, native } from '../native.js';
import { PROMETHEUS_CONTENT_TYPE, prometheusText } from './prometheus.js';
import type { StatusReport } from './metrics.js';

export type MetricsAddress = { kind: 'unix'; path: string } | { kind: 'tcp'; host: string; port: number } | { kind: 'fd'; fd: number };

export class MetricsAddressError extends Error {
  override name = 'MetricsAddressError';
  readonly code = 'ERR_OPENHOOK_METRICS_ADDRESS';
}

/** 'unix:/run/openhook/metrics.sock', '127.0.0.1:9464' or '[::1]:9464'. */
export function parseMetricsAddress(text: string): MetricsAddress {
  if (text.startsWith('unix:')) {
    const path = text.slice(5);
    if (!path.startsWith('/')) throw new MetricsAddressError(`metrics socket path must be absolute: '${text}'`);
    return { kind: 'unix', path };
  }
  const m = /^(?:\[([0-9a-fA-F:.]+)\]|([0-9.]+)):(\d{1,5})$/.exec(text);
  if (!m) throw new MetricsAddressError(`metrics address must be unix:PATH, 127.0.0.1:PORT or [::1]:PORT: '${text}'`);
  const host = (m[1] ?? m[2])!;
  const port = Number(m[3]);
  if (port > 65535) throw new MetricsAddressError(`port out of range: '${text}'`);
  const loopback = (isIPv4(host) && host.startsWith('127.')) || (isIPv6(host) && /^(0*:)*:?0*1$/.test(host));
  if (!loopback) throw new MetricsAddressError(`metrics are served on loopback addresses only (127.0.0.0/8, ::1), not '${host}'`);
  return { kind: 'tcp', host, port };
}

export class MetricsServer {
  readonly #server: Server;
  #unlink: (() => void) | null = null;
  /** where it listens, for people */
  description = '';

  private constructor(report: () => StatusReport) {
    this.#server = createServer((req, res) => {
      const path = (req.url ?? '/').split('?')[0];
      if (path !== '/metrics') {
        res.writeHead(404, { 'content-type': 'text/plain' }).end('openhook serves /metrics only\n');
        return;
      }
      if (req.method !== 'GET' && req.method !== 'HEAD') {
        res.writeHead(405, { allow: 'GET, HEAD' }).end();
        return;
      }
      const body = prometheusText(report());
      res.writeHead(200, { 'content-type': PROMETHEUS_CONTENT_TYPE, 'content-length': Buffer.byteLength(body) });
      res.end(req.method === 'HEAD' ? undefined : body);
    });
    // A scraper is one or two peers asking every few seconds: keep idle and slow ones from piling up.
    this.#server.maxConnections = 16;
    this.#server.headersTimeout = 5000;
    this.#server.requestTimeout = 10000;
    this.#server.keepAliveTimeout = 5000;
  }

  static async listen(address: MetricsAddress, report: () => StatusReport): Promise<MetricsServer> {
    const ms = new MetricsServer(report);
    const server = ms.#server;
    const listening = new Promise<void>((resolve, reject) => {
      server.once('listening', resolve);
      server.once('error', reject);
    });
    if (address.kind === 'unix') {
      // Bound by the native layer: mode 0600 from the start, and nothing but a stale socket replaced.
      const bound = native.listenUnix(Buffer.from(address.path), C.SOCK_STREAM, 0o600, 64);
      ms.#unlink = () => native.unlinkSocket(Buffer.from(address.path), bound.identity);
      server.listen({ fd: bound.fd });
      ms.description = `unix:${address.path}`;
    } else if (address.kind === 'tcp') {
      server.listen(address.port, address.host);
    } else {
      const info = native.socketInfo(address.fd);
      if (info.type !== C.SOCK_STREAM || !info.listening)
        throw new MetricsAddressError(`fd ${address.fd} is not a listening stream socket`);
      server.listen({ fd: address.fd });
      ms.description = `fd ${address.fd}`;
    }
    try {
      await listening;
    } catch (err) {
      ms.#unlink?.();
      throw err;
    }
    if (address.kind === 'tcp') {
      const a = server.address();
      if (a && typeof a === 'object') ms.description = a.family === 'IPv6' ? `[${a.address}]:${a.port}` : `${a.address}:${a.port}`;
    }
    server.unref();
    return ms;
  }

  /** Stops listening, ends idle keep-alive connections, and removes a socket file it made. */
  async close(): Promise<void> {
    const closed = new Promise<void>((resolve) => this.#server.close(() => resolve()));
    this.#server.closeAllConnections();
    await closed;
    this.#unlink?.();
    this.#unlink = null;
  }
}
