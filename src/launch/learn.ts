/**
 * Learn mode (`openhook run --learn FILE`): every request is allowed, and remembered, so that a
 * policy allowing exactly what the program asked for can be written afterwards (learned-policy.ts).
 *
 * "Allowed" still goes through the resolver, with its usual guarantees (no symlinks followed, no
 * FIFOs or devices opened): what works in learn mode is what will work under the written policy.
 * The resolver never crosses a mount point below a rule's root (RESOLVE_NO_XDEV), so "everything"
 * is one rule per mount point, each covering its own tree; the most specific rule wins, so every
 * path is opened beneath the mount it lives on.
 */
import { readFileSync } from 'node:fs';
import type { AuditRecord, AuditSink } from '../broker/audit.js';
import type { ByteString } from '../bytestring.js';
import { C, native } from '../native.js';
import { ALL_ACCESS } from '../policy/access.js';
import { normalise } from '../policy/path.js';
import { Policy } from '../policy/policy.js';
import type { Rule } from '../policy/rule.js';

/** Records the access each path was asked for. Plug it in as the broker's audit sink. */
export class LearnRecorder implements AuditSink {
  /** normalised path → union of the access bits requested */
  readonly used = new Map<ByteString, number>();
  requests = 0;
  /** trees not to learn (the session's private temporary directory) */
  readonly ignored: ByteString[] = [];

  record(entry: AuditRecord): void {
    // Requests refused for their flags (O_PATH, bad modes) need no rule: no rule could allow them.
    if (entry.access === 0 && !entry.access2) return;
    this.requests++;
    this.#use(entry.path, entry.access);
    // A file operation's second path (a rename's or link's destination, a symlink's new name) needs its own access.
    if (entry.path2 !== undefined) this.#use(entry.path2, entry.access2 ?? 0);
  }

  #use(path: ByteString, access: number): void {
    if (access === 0) return;
    const n = normalise(path);
    if (!n.ok || this.ignored.some((dir) => n.path === dir || n.path.startsWith(`${dir}/`))) return;
    this.used.set(n.path, (this.used.get(n.path) ?? 0) | access);
  }
}

/** Mount points from /proc/self/mountinfo, as byte strings (its octal escapes undone). */
export function mountPoints(mountinfo: ByteString = readFileSync('/proc/self/mountinfo', 'latin1')): ByteString[] {
  const seen = new Set<ByteString>();
  for (const line of mountinfo.split('\n')) {
    const fields = line.split(' ');
    const dash = fields.indexOf('-');
    if (fields.length < 5 || dash < 0) continue;
    // autofs: opening its mount point would trigger the automount.
    if (fields[dash + 1] === 'autofs') continue;
    seen.add(fields[4]!.replace(/\\([0-7]{3})/g, (_, oct: string) => String.fromCharCode(parseInt(oct, 8))));
  }
  return [...seen];
}

const EVERYTHING = ALL_ACCESS;

/** A policy that allows every access (`all`) on every mounted tree that can be opened as a directory. */
export function allowEverythingPolicy(mounts: readonly ByteString[] = mountPoints()): Policy {
  const rules: Rule[] = [];
  for (const path of mounts) {
    const fd = native.open(path, C.O_PATH | C.O_DIRECTORY, 0);
    if (fd < 0) continue; // a file bind-mount, or a mount this process cannot reach
    native.close(fd);
    rules.push({
      effect: 'allow',
      path,
      tree: true,
      glob: false,
      access: EVERYTHING,
      followSymlinks: false,
      denyErrno: 0,
      origin: 'learn mode',
    });
  }
  return new Policy(rules, { source: 'learn mode' });
}
