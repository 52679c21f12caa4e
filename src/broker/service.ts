/**
 * What the broker does with one decoded request: the path from frame to reply, readable end to end.
 *
 *   decode (connection) -> validate flags -> normalise path -> policy.decide -> resolver.open
 *     -> reply (+fd) -> audit
 *
 * An open that may block (a network or FUSE filesystem, an allowed FIFO) takes the same path, but
 * the resolver runs it on a thread pool and serveOpen returns a promise of the result.
 */
import { fromBytes, type ByteString } from '../bytestring.js';
import { C } from '../native.js';
import type { Decision, Policy, Peer } from '../policy/policy.js';
import { normalise } from '../policy/path.js';
import { Command, Feature } from '../protocol/constants.js';
import type { Request } from '../protocol/frames.js';
import { accessFor, flagsError } from './flags.js';
import type { AuditSink } from './audit.js';
import { Denial, type Metrics } from './metrics.js';
import type { OpenCancel, Resolver } from './resolver.js';

export const FEATURES = Feature.TAGGED_OPEN | Feature.CONNECT | Feature.FILE_OPS;

const { O_CREAT, O_DIRECTORY } = C;
const EISDIR = 21;

export interface ServiceContext {
  policy: Policy;
  resolver: Resolver;
  audit: AuditSink | null;
  metrics: Metrics;
}

/**
 * Decides and performs one open. Returns an fd to send, or -errno; or, when the open runs on the
 * thread pool, a promise of one. The caller owns the fd and must close it after sending.
 */
export function serveOpen(ctx: ServiceContext, peer: Peer, req: Request, cancel: OpenCancel | null): number | Promise<number> {
  const started = performance.now();
  const raw = fromBytes(req.buf, req.nameOffset, req.nameOffset + req.nameLength);
  let errno = 0;
  let reason = '';
  let access = 0;
  let decision: Decision | null = null;
  let denial: number = Denial.PATH;
  let fd = -1;

  let flags = req.flags;
  let badFlags = flagsError(flags);
  const norm = normalise(raw);
  if (!badFlags && raw.length > 1 && raw.charCodeAt(raw.length - 1) === 0x2f) {
    // A trailing '/' names a directory, as in open(2): a file is then ENOTDIR, and O_CREAT is EISDIR.
    if (flags & O_CREAT) badFlags = EISDIR;
    else flags |= O_DIRECTORY;
  }
  if (badFlags) {
    errno = badFlags;
    reason = 'flags refused';
    denial = Denial.FLAGS;
  } else if (ctx.audit?.refusing) {
    errno = 5; // EIO: the audit log cannot be written, and it is fail-closed
    reason = 'the audit log cannot be written (fail-closed)';
    denial = Denial.AUDIT;
  } else if (!norm.ok) {
    errno = norm.errno === 'EINVAL' ? 22 : norm.errno === 'ENAMETOOLONG' ? 36 : ctx.policy.denyErrno;
    reason = norm.reason;
  } else {
    access = accessFor(req.flags);
    decision = ctx.policy.decide(peer, norm.path, access);
    reason = decision.reason;
    if (!decision.allowed) {
      errno = decision.errno;
      denial = decision.rule === null ? Denial.NO_RULE : decision.rule.effect === 'deny' ? Denial.DENY_RULE : Denial.ACCESS;
    } else {
      denial = -1;
      const options = decision.open;
      const resolver = ctx.resolver;
      if (resolver.offloads(decision.rule!, decision.rootFd, options)) {
        // The decision stays pinned (its root open, its verify hook valid) until the slow open is done.
        const policy = ctx.policy, pinned = decision, metrics = ctx.metrics;
        const why = { refusal: '' };
        metrics.slowOpens++;
        const slow = resolver.openSlow(decision.rootFd, decision.rest, flags, req.mode, options, cancel, why)
          .finally(() => policy.release(pinned))
          .then((fd) => (metrics.slowDone++, metrics.recordOpen(-1, fd < 0 ? -fd : 0, performance.now() - started), fd));
        return ctx.audit ? audited(ctx, peer, req, raw, access, decision, why, started, slow) : slow;
      }
      fd = resolver.open(decision.rootFd, decision.rest, flags, req.mode, options);
      ctx.policy.release(decision); // the root may close now, if a reload retired it
      if (fd < 0) {
        errno = -fd;
        if (resolver.refusal) reason = resolver.refusal;
      }
    }
  }
  const elapsedMs = performance.now() - started;
  ctx.metrics.recordOpen(denial, errno, elapsedMs);
  if (ctx.audit) record(ctx.audit, peer, req.command, raw, req.flags, req.mode, access, decision, errno, reason, elapsedMs);
  return fd < 0 ? -errno : fd;
}

/** A slow open's audit record, written when its result is known. */
async function audited(ctx: ServiceContext, peer: Peer, req: Request, raw: ByteString, access: number, decision: Decision, why: { refusal: string }, started: number, slow: Promise<number>): Promise<number> {
  const { command, flags, mode } = req; // req is reused by the next request: copy now
  const result = await slow;
  record(ctx.audit!, peer, command, raw, flags, mode, access, decision, result < 0 ? -result : 0, why.refusal || decision.reason, performance.now() - started);
  return result;
}

function record(audit: AuditSink, peer: Peer, command: number, path: ByteString, flags: number, mode: number, access: number, decision: Decision | null, errno: number, reason: string, elapsedMs: number): void {
  audit.record({
    time: Date.now(),
    peer,
    command,
    path,
    flags,
    mode,
    access,
    allowed: decision?.allowed ?? false,
    rule: decision?.rule ?? null,
    errno,
    reason,
    latencyUs: Math.round(elapsedMs * 1000),
  });
}

export function isOpenCommand(command: number): boolean {
  return command === Command.QEMU_OPEN || command === Command.OPEN_TAGGED;
}
