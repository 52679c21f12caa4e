/**
 * What the broker tells an audit sink about each decision. The sink must never block the broker: it
 * takes the record and returns at once (audit-log.ts is the real writer).
 */
import type { ByteString } from '../bytestring.js';
import { errnoName } from '../errno.js';
import type { Peer } from '../policy/policy.js';
import type { Rule } from '../policy/rule.js';

export interface AuditRecord {
  /** wall-clock time of the request, ms since the epoch */
  time: number;
  peer: Peer;
  command: number;
  /** the path as the client sent it (exact bytes), or '' for commands without one */
  path: ByteString;
  /** the second path of a file operation: RENAME's and LINK's destination, SYMLINK's new name */
  path2?: ByteString | undefined;
  flags: number;
  mode: number;
  /** access bits the request needed (a file operation: at path) */
  access: number;
  /** a file operation: access bits needed at path2 */
  access2?: number | undefined;
  allowed: boolean;
  /** the rule that decided, or null */
  rule: Rule | null;
  /** 0 when an fd was sent, else the errno the client got (positive) */
  errno: number;
  /** why, in words */
  reason: string;
  /** microseconds from decode to reply */
  latencyUs: number;
}

export interface AuditSink {
  record(entry: AuditRecord): void;
  /**
   * True while the sink cannot write and its failure setting is fail-closed: the broker then refuses
   * every request with EIO, so that nothing is opened unaudited (see audit-log.ts).
   */
  readonly refusing?: boolean;
}

/**
 * The outcome in one word and an errno: ALLOW (an fd was sent), FAIL ENOENT (allowed, but the open
 * itself failed), DENY EACCES (refused). Allowed-but-failed is not a denial: saying DENY next to
 * "allowed by" reads as a contradiction.
 */
export function verdict(e: Pick<AuditRecord, 'allowed' | 'errno'>): string {
  if (e.errno === 0) return 'ALLOW';
  return `${e.allowed ? 'FAIL' : 'DENY'} ${errnoName(e.errno)}`;
}

/** Several sinks as one: each gets every record; the broker refuses if any must refuse. */
export function teeAudit(sinks: readonly (AuditSink | null | undefined)[]): AuditSink | null {
  const live = sinks.filter((s): s is AuditSink => !!s);
  if (live.length <= 1) return live[0] ?? null;
  return {
    record(entry) {
      for (const s of live) s.record(entry);
    },
    get refusing() {
      return live.some((s) => s.refusing);
    },
  };
}
