/**
 * What a confined program may read of /proc and /sys (docs/run.md lists it):
 *
 *   - its own entries: /proc/self, /proc/thread-self and /proc/<its pid>, answered for the calling
 *     process (never the broker's): opened beneath the program's own /proc/PID directory, which is
 *     opened first and then proven to be the caller's with NOTIF_ID_VALID (pid reuse);
 *   - a read-only allow-list of facts about the machine: CPU and memory, load, the kernel version,
 *     the CPU and NUMA topology in /sys, and the limits of the program's own cgroup.
 *
 * Everything beneath /proc/<pid> is opened with RESOLVE_NO_SYMLINKS (which includes magic links),
 * so a walk through /proc/self/root, /proc/self/cwd, /proc/self/exe or /proc/self/fd/N is refused:
 * it would reach past what the policy allows. Other processes' entries are refused.
 */
import { readFileSync } from 'node:fs';
import type { ByteString } from '../bytestring.js';
import { E } from '../errno.js';
import { C, native } from '../native.js';

export type ProcPath =
  /** beneath the calling thread's own process (or thread) directory; rest is relative ('.' for the directory) */
  | { kind: 'own'; thread: boolean; pid: number | null; rest: ByteString }
  /** on the machine-facts allow-list: opened beneath the mount's root; rest relative to it */
  | { kind: 'fact'; mount: '/proc' | '/sys' | '/sys/fs/cgroup'; rest: ByteString }
  /** the program's cgroup files: checked against its cgroup when opened */
  | { kind: 'cgroup'; rest: ByteString }
  | { kind: 'refused' };

/** Facts about the machine in /proc, exact paths. */
const PROC_FACTS = new Set([
  'cpuinfo',
  'meminfo',
  'stat',
  'loadavg',
  'uptime',
  'version',
  'filesystems',
  'cgroups',
  'swaps',
  'sys/kernel/osrelease',
  'sys/kernel/ostype',
  'sys/kernel/pid_max',
  'sys/kernel/cap_last_cap',
  'sys/kernel/ngroups_max',
  'sys/kernel/threads-max',
  'sys/vm/overcommit_memory',
  'sys/fs/nr_open',
  'sys/net/core/somaxconn',
]);

/** Facts in /sys (relative to /sys): CPU and NUMA topology. */
const SYS_FACTS = [
  /^devices\/system\/cpu(?:\/(?:online|possible|present|offline|kernel_max))?$/,
  /^devices\/system\/cpu\/cpu\d+(?:\/online|\/topology(?:\/[a-z_]+)?|\/cache(?:\/index\d+(?:\/[a-z_]+)?)?)?$/,
  /^devices\/system\/node(?:\/(?:online|possible|has_cpu|has_memory|has_normal_memory))?$/,
  /^devices\/system\/node\/node\d+(?:\/(?:meminfo|cpulist|cpumap|distance))?$/,
];

/** Files of the program's own cgroup (v2) that runtimes read for their limits. */
const CGROUP_FILES = new Set([
  'cgroup.controllers',
  'cgroup.type',
  'memory.max',
  'memory.high',
  'memory.low',
  'memory.min',
  'memory.current',
  'memory.swap.max',
  'cpu.max',
  'cpu.weight',
  'cpuset.cpus.effective',
  'cpuset.mems.effective',
  'pids.max',
  'pids.current',
]);

/** Classifies a collapsed absolute path beneath /proc or /sys; null for any other path. */
export function procPath(path: ByteString): ProcPath | null {
  if (path.startsWith('/proc')) {
    if (path.length > 5 && path.charCodeAt(5) !== 0x2f) return null;
    const rel = path.slice(6).replace(/\/$/, '');
    const slash = rel.indexOf('/');
    const first = slash < 0 ? rel : rel.slice(0, slash);
    const rest = slash < 0 ? '.' : rel.slice(slash + 1);
    if (first === 'self') return { kind: 'own', thread: false, pid: null, rest };
    if (first === 'thread-self') return { kind: 'own', thread: true, pid: null, rest };
    if (/^[1-9]\d{0,9}$/.test(first)) return { kind: 'own', thread: false, pid: Number(first), rest };
    if (PROC_FACTS.has(rel)) return { kind: 'fact', mount: '/proc', rest: rel };
    return { kind: 'refused' };
  }
  if (path.startsWith('/sys')) {
    if (path.length > 4 && path.charCodeAt(4) !== 0x2f) return null;
    const rel = path.slice(5).replace(/\/$/, '');
    if (rel.startsWith('fs/cgroup/')) return { kind: 'cgroup', rest: rel.slice('fs/cgroup/'.length) };
    for (const re of SYS_FACTS) if (re.test(rel)) return { kind: 'fact', mount: '/sys', rest: rel };
    return { kind: 'refused' };
  }
  return null;
}

/** The process a thread belongs to (Tgid in /proc/TID/status), or -1 if it is gone. */
export function processOf(tid: number): number {
  try {
    const status = readFileSync(`/proc/${tid}/status`, 'latin1');
    const m = /\nTgid:\s*(\d+)/.exec(status);
    return m ? Number(m[1]) : -1;
  } catch {
    return -1;
  }
}

/** The program's cgroup (v2) path, relative to /sys/fs/cgroup, or null. */
export function cgroupOf(pid: number): ByteString | null {
  try {
    const m = /^0::\/(.*)$/m.exec(readFileSync(`/proc/${pid}/cgroup`, 'latin1'));
    return m ? m[1]! : null;
  } catch {
    return null;
  }
}

/** Whether rest (relative to /sys/fs/cgroup) is a limits file of cgroup (or the cgroup's directory itself). */
export function ownCgroupFile(rest: ByteString, cgroup: ByteString): boolean {
  if (cgroup === '') return CGROUP_FILES.has(rest);
  if (!rest.startsWith(`${cgroup}/`)) return false;
  return CGROUP_FILES.has(rest.slice(cgroup.length + 1));
}

/** Only plain reads: no write, create, truncate, O_PATH or O_TMPFILE beneath /proc and /sys. */
export function readOnlyFlags(flags: number): boolean {
  return (
    (flags & C.O_ACCMODE) === C.O_RDONLY &&
    (flags & (C.O_CREAT | C.O_TRUNC | C.O_PATH | C.O_APPEND)) === 0 &&
    (flags & C.O_TMPFILE) !== C.O_TMPFILE
  );
}

const RESOLVE = C.RESOLVE_BENEATH | C.RESOLVE_NO_SYMLINKS | C.RESOLVE_NO_MAGICLINKS | C.RESOLVE_NO_XDEV;
const mountFds = new Map<string, number>();
const stat = new Float64Array(9);

function mountFd(path: string): number {
  let fd = mountFds.get(path);
  if (fd === undefined) {
    fd = native.open(path, C.O_PATH | C.O_DIRECTORY | C.O_CLOEXEC, 0);
    if (fd >= 0) mountFds.set(path, fd);
  }
  return fd;
}

/**
 * Opens rest beneath dirFd for reading: no links followed (magic or not), no other mount, and
 * only regular files and directories kept. Returns an fd or -errno (a link walk is EACCES).
 */
export function openBeneath(dirFd: number, rest: ByteString, flags: number): number {
  const fd = native.openat2(dirFd, rest, (flags & ~C.O_CLOEXEC) | C.O_CLOEXEC | C.O_NOCTTY, 0, RESOLVE);
  if (fd < 0) return fd === -E.ELOOP || fd === -E.EXDEV ? -E.EACCES : fd;
  const type = native.fstat(fd, stat) < 0 ? 0 : stat[0]! & C.S_IFMT;
  if (type !== C.S_IFREG && type !== C.S_IFDIR) {
    native.close(fd);
    return -E.EACCES;
  }
  return fd;
}

/** Opens a machine fact. */
export function openFact(mount: '/proc' | '/sys' | '/sys/fs/cgroup', rest: ByteString, flags: number): number {
  const root = mountFd(mount);
  if (root < 0) return root;
  return openBeneath(root, rest, flags);
}
