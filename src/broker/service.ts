/**
 * What the broker does with one open request, readable end to end:
 *
 *   validate (flags, audit state, name) -> decide (policy) -> perform (resolver) -> account
 *     (metrics, audit)
 *
 * The request is a domain value, not a wire frame: the connection decodes frames into it, and the
 * QEMU opener (and the syscall hook) call serveOpen directly. An open that may block (a network or
 * FUSE filesystem, an allowed FIFO) takes the same path, but the resolver runs it on a thread pool
 * and serveOpen returns a promise of the result.
 */
import type { ByteString } from '../bytestring.js';
import { E } from '../errno.js';
import { C } from '../native.js';
import type { Decision, Policy, Peer } from '../policy/policy.js';
import { normalise } from '../policy/path.js';
import { Feature } from '../protocol/constants.js';
import type { OpenCancel, Resolver } from '../resolver/resolver.js';
import type { OpenResult } from '../resolver/result.js';
import { accessFor, flagsError } from './flags.js';
import type { AuditSink } from './audit.js';
import { Denial, type Metrics } from './metrics.js';

export const FEATURES = Feature.TAGGED_OPEN | Feature.CONNECT | Feature.FILE_OPS;

const { O_CREAT, O_DIRECTORY } = C;

export interface ServiceContext {
  policy: Policy;
  resolver: Resolver;
  audit: AuditSink | null;
  metrics: Metrics;
}

/** One open, as a client asked for it. */
export interface OpenRequest {
  /** the protocol command it came as (QEMU_OPEN, OPEN_TAGGED), for the audit log */
  command: number;
  /** the name, as the client gave it (absolute; normalised here) */
  path: ByteString;
  /** open(2) flags, as the client gave them */
  flags: number;
  /** create mode */
  mode: number;
}

/** A request refused before any rule is consulted. */
interface Invalid {
  errno: number;
  reason: string;
  denial: number;
}

/**
 * Decides and performs one open. Returns an fd to send, or -errno; or, when the open runs on the
 * thread pool, a promise of one. The caller owns the fd and must close it after sending.
 */
export function serveOpen(ctx: ServiceContext, peer: Peer, req: OpenRequest, cancel: OpenCancel | null): number | Promise<number> {
  const started = performance.now();
  const valid = validate(ctx, req);
  if (typeof valid !== 'string') return account(ctx, peer, req, started, 0, null, valid.denial, failedWith(valid.errno, valid.reason));
  const access = accessFor(req.flags);
  const decision = ctx.policy.decide(peer, valid, access);
  if (!decision.allowed) {
    const denial = decision.rule === null ? Denial.NO_RULE : decision.rule.effect === 'deny' ? Denial.DENY_RULE : Denial.ACCESS;
    return account(ctx, peer, req, started, access, decision, denial, failedWith(decision.errno, decision.reason));
  }
  const done = perform(ctx, req, decision, cancel);
  if (!(done instanceof Promise)) return account(ctx, peer, req, started, access, decision, -1, done);
  const metrics = ctx.metrics;
  metrics.slowOpens++;
  // The request object may be reused by its caller before the open is done: keep what the audit needs.
  const { command, path, flags, mode } = req;
  return done.then((result) => {
    metrics.slowDone++;
    return account(ctx, peer, { command, path, flags, mode }, started, access, decision, -1, result);
  });
}

/** The refusal of a request before any rule, or its normalised path. */
function validate(ctx: ServiceContext, req: OpenRequest): Invalid | ByteString {
  const raw = req.path;
  let badFlags = flagsError(req.flags);
  // A trailing '/' names a directory, as in open(2): O_CREAT is then EISDIR (and a file ENOTDIR, see perform).
  if (!badFlags && req.flags & O_CREAT && endsWithSlash(raw)) badFlags = E.EISDIR;
  if (badFlags) return { errno: badFlags, reason: 'flags refused', denial: Denial.FLAGS };
  if (ctx.audit?.refusing) return { errno: E.EIO, reason: 'the audit log cannot be written (fail-closed)', denial: Denial.AUDIT };
  const norm = normalise(raw);
  if (norm.ok) return norm.path;
  const errno = norm.errno === 'EINVAL' ? E.EINVAL : norm.errno === 'ENAMETOOLONG' ? E.ENAMETOOLONG : ctx.policy.denyErrno;
  return { errno, reason: norm.reason, denial: Denial.PATH };
}

/** Opens what the policy allowed, beneath its root. */
function perform(ctx: ServiceContext, req: OpenRequest, decision: Decision, cancel: OpenCancel | null): OpenResult | Promise<OpenResult> {
  const flags = endsWithSlash(req.path) ? req.flags | O_DIRECTORY : req.flags;
  return ctx.resolver.openBeneath(decision.root, decision.rest, flags, req.mode, decision.open, cancel);
}

/** Counts the result and writes its audit record; returns it as the wire says it (fd or -errno). */
function account(
  ctx: ServiceContext,
  peer: Peer,
  req: OpenRequest,
  started: number,
  access: number,
  decision: Decision | null,
  denial: number,
  result: OpenResult,
): number {
  const elapsedMs = performance.now() - started;
  const errno = typeof result === 'number' ? 0 : result.errno;
  ctx.metrics.recordOpen(denial, errno, elapsedMs);
  if (ctx.audit) {
    const reason = typeof result !== 'number' && result.reason ? result.reason : (decision?.reason ?? '');
    ctx.audit.record({
      time: Date.now(),
      peer,
      command: req.command,
      path: req.path,
      flags: req.flags,
      mode: req.mode,
      access,
      allowed: decision?.allowed ?? false,
      rule: decision?.rule ?? null,
      errno,
      reason,
      latencyUs: Math.round(elapsedMs * 1000),
    });
  }
  return typeof result === 'number' ? result : -errno;
}

/** A refusal decided here, as a result (its reason is the audit record's). */
function failedWith(errno: number, reason: string): OpenResult {
  return { errno, reason };
}

function endsWithSlash(path: ByteString): boolean {
  return path.length > 1 && path.charCodeAt(path.length - 1) === 0x2f;
}
