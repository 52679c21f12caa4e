/**
 * What the broker does with one decoded request: the path from frame to reply, readable end to end.
 *
 *   decode (connection) -> validate flags -> normalise path -> policy.decide -> resolver.open
 *     -> reply (+fd) -> audit
 */
import { fromBytes } from '../bytestring.js';
import type { Policy, Peer } from '../policy/policy.js';
import { normalise } from '../policy/path.js';
import { Command, Feature } from '../protocol/constants.js';
import type { Request } from '../protocol/frames.js';
import { accessFor, flagsError } from './flags.js';
import type { AuditSink } from './audit.js';
import { Resolver } from './resolver.js';

export const FEATURES = Feature.TAGGED_OPEN | Feature.CONNECT;

/** The outcome of an open request: an fd to send (result 0) or a negative errno. */
export interface OpenOutcome {
  result: number;
  fd: number;
}

export interface ServiceContext {
  policy: Policy;
  resolver: Resolver;
  audit: AuditSink | null;
}

const outcome: OpenOutcome = { result: 0, fd: -1 };

/**
 * Decides and performs one open. The returned object is reused by the next call: read it at once.
 * The caller owns outcome.fd and must close it after sending.
 */
export function serveOpen(ctx: ServiceContext, peer: Peer, req: Request): OpenOutcome {
  const started = ctx.audit ? performance.now() : 0;
  const raw = fromBytes(req.buf, req.nameOffset, req.nameOffset + req.nameLength);
  let errno = 0;
  let reason = '';
  let access = 0;
  let decision = null;
  outcome.fd = -1;

  const badFlags = flagsError(req.flags);
  const norm = normalise(raw);
  if (badFlags) {
    errno = badFlags;
    reason = 'flags refused';
  } else if (ctx.audit?.refusing) {
    errno = 5; // EIO: the audit log cannot be written, and it is fail-closed
    reason = 'the audit log cannot be written (fail-closed)';
  } else if (!norm.ok) {
    errno = norm.errno === 'EINVAL' ? 22 : norm.errno === 'ENAMETOOLONG' ? 36 : ctx.policy.denyErrno;
    reason = norm.reason;
  } else {
    access = accessFor(req.flags);
    decision = ctx.policy.decide(peer, norm.path, access);
    if (!decision.allowed) {
      errno = decision.errno;
    } else {
      const fd = ctx.resolver.open(decision.rootFd, decision.rest, req.flags, req.mode, decision.open);
      ctx.policy.release(decision); // the root may close now, if a reload retired it
      if (fd < 0) errno = -fd;
      else outcome.fd = fd;
    }
    reason = decision.reason;
  }
  outcome.result = -errno;

  if (ctx.audit) {
    ctx.audit.record({
      time: Date.now(),
      peer,
      command: req.command,
      path: raw,
      flags: req.flags,
      mode: req.mode,
      access,
      allowed: decision?.allowed ?? false,
      rule: decision?.rule ?? null,
      errno,
      reason,
      latencyUs: Math.round((performance.now() - started) * 1000),
    });
  }
  return outcome;
}

export function isOpenCommand(command: number): boolean {
  return command === Command.QEMU_OPEN || command === Command.OPEN_TAGGED;
}

