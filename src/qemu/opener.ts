/**
 * Who opens image files for the fd-set helper. Either the broker's own request path, run in this
 * process (the same flag checks, policy decision, resolver and audit as for a hooked program), or a
 * broker reached over its socket with the client library. Either way the policy decides, and the
 * orchestrator never opens an image by path itself.
 */
import type { AuditSink } from '../broker/audit.js';
import type { Broker } from '../broker/broker.js';
import { Metrics } from '../broker/metrics.js';
import { serveOpen, type ServiceContext } from '../broker/service.js';
import { fromText } from '../bytestring.js';
import type { OpenHookClient } from '../client/client.js';
import { systemError } from '../native.js';
import { Policy, type Peer } from '../policy/policy.js';
import { Command } from '../protocol/constants.js';
import { Resolver } from '../resolver/resolver.js';

export interface ImageOpener {
  /**
   * Opens path with open(2) flags (and a create mode). Resolves to an fd the caller owns, or rejects
   * with a Node-style SystemError carrying the policy's errno (code 'EACCES', ...).
   */
  open(path: string, flags: number, mode?: number): Promise<number>;
}

export interface PolicyOpenerOptions {
  resolver?: Resolver;
  /** receives a record per open, as the broker's audit does */
  audit?: AuditSink | null;
  /** the session name policy sections match on (as `openhook run` gives its child) */
  session?: string;
}

/** Opens through the broker's request path in this process, under a policy or a running broker's current policy. */
export class PolicyOpener implements ImageOpener {
  #source: Policy | Broker;
  #resolver: Resolver;
  /** the resolver was made here (not given), so close() closes it */
  #ownResolver: boolean;
  #audit: AuditSink | null;
  /** counters of opens made here without a broker (a broker's own are in its context) */
  #metrics = new Metrics();
  #peer: Peer;

  constructor(source: Policy | Broker, options: PolicyOpenerOptions = {}) {
    this.#source = source;
    this.#ownResolver = options.resolver === undefined;
    this.#resolver = options.resolver ?? new Resolver();
    this.#audit = options.audit ?? null;
    this.#peer = {
      pid: process.pid,
      uid: process.getuid?.() ?? -1,
      gid: process.getgid?.() ?? -1,
      groups: null,
      ...(options.session !== undefined ? { session: options.session } : {}),
    };
  }

  async open(path: string, flags: number, mode = 0o600): Promise<number> {
    const req = { command: Command.QEMU_OPEN, path: fromText(path), flags: flags >>> 0, mode };
    // An open that may block (network or FUSE filesystem, FIFO) runs on the resolver's thread pool.
    const fd = await serveOpen(this.#context(), this.#peer, req, null);
    if (fd < 0) throw systemError(fd, 'open', path);
    return fd;
  }

  /**
   * Closes what this opener made: its resolver's thread pool and the root directory fds it keeps
   * open (the policy opens none). A resolver given in the options stays open.
   */
  close(): void {
    if (this.#ownResolver) this.#resolver.close();
  }

  #context(): ServiceContext {
    if (this.#source instanceof Policy)
      return { policy: this.#source, resolver: this.#resolver, audit: this.#audit, metrics: this.#metrics };
    // A broker's context follows its policy reloads; an audit given here wins over the broker's.
    const ctx = this.#source.context();
    return this.#audit ? { ...ctx, audit: this.#audit } : ctx;
  }
}

/** Opens by asking a broker over its socket (`openhook serve`), with the client library. */
export class BrokerOpener implements ImageOpener {
  #client: OpenHookClient;

  constructor(client: OpenHookClient) {
    this.#client = client;
  }

  open(path: string, flags: number, mode = 0o600): Promise<number> {
    return this.#client.open(path, flags, mode);
  }
}
