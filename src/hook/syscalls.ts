/**
 * The trapped syscalls: number → handler, per architecture. The launch helper's filter
 * (native/launch.c, trapped[]) sends exactly these; adding a syscall is one line there and one
 * entry here (its number, its name, and a handler that turns the call's arguments into an answer).
 */
import { arch } from 'node:os';
import type { HookCall, Handler } from './open.js';
import { openFamily } from './open.js';
import * as fileops from './fileops.js';
import { socketCall } from './sockets.js';

export interface SyscallEntry {
  name: string;
  handler: Handler;
}

/** AUDIT_ARCH_* values the filter admits (any other arch was killed by the filter). */
export const AUDIT_ARCH = arch() === 'arm64' ? 0xc00000b7 : 0xc000003e;

/** Syscall numbers of the trapped calls on this architecture (x86_64, or aarch64 without the legacy calls). */
const NUMBERS: Record<string, Record<string, number>> = {
  x64: {
    open: 2,
    creat: 85,
    openat: 257,
    openat2: 437,
    mkdir: 83,
    mkdirat: 258,
    unlink: 87,
    unlinkat: 263,
    rmdir: 84,
    rename: 82,
    renameat: 264,
    renameat2: 316,
    link: 86,
    linkat: 265,
    symlink: 88,
    symlinkat: 266,
    chmod: 90,
    fchmodat: 268,
    fchmodat2: 452,
    chown: 92,
    lchown: 94,
    fchownat: 260,
    utime: 132,
    utimes: 235,
    futimesat: 261,
    utimensat: 280,
    truncate: 76,
    access: 21,
    faccessat: 269,
    faccessat2: 439,
    mknod: 133,
    mknodat: 259,
  },
  arm64: {
    openat: 56,
    openat2: 437,
    mkdirat: 34,
    unlinkat: 35,
    renameat2: 276,
    linkat: 37,
    symlinkat: 36,
    fchmodat: 53,
    fchmodat2: 452,
    fchownat: 54,
    utimensat: 88,
    truncate: 45,
    faccessat: 48,
    faccessat2: 439,
    mknodat: 33,
  },
};
/** connect and bind (trapped unless --allow-unix-sockets: launch.c, trapped_sockets[]). */
const SOCKET_NUMBERS: Record<string, Record<string, number>> = {
  x64: { connect: 42, bind: 49 },
  arm64: { connect: 203, bind: 200 },
};

export function syscallTable(): Map<number, SyscallEntry> {
  const table = new Map<number, SyscallEntry>();
  const numbers = { ...NUMBERS[arch()], ...SOCKET_NUMBERS[arch()] };
  const add = (name: string, handler: Handler): void => {
    const nr = numbers[name];
    if (nr !== undefined) table.set(nr, { name, handler });
  };
  // open(path, flags, mode); creat(path, mode) = open(path, O_CREAT|O_WRONLY|O_TRUNC, mode);
  // openat(dirfd, path, flags, mode); openat2(dirfd, path, how, size).
  add('open', (call: HookCall) => openFamily(call, 'open'));
  add('creat', (call: HookCall) => openFamily(call, 'creat'));
  add('openat', (call: HookCall) => openFamily(call, 'openat'));
  add('openat2', (call: HookCall) => openFamily(call, 'openat2'));
  // The other file operations (fileops.ts): each becomes a FileOperation the broker decides and performs.
  add('mkdir', (call: HookCall) => fileops.mkdir(call, false));
  add('mkdirat', (call: HookCall) => fileops.mkdir(call, true));
  add('unlink', (call: HookCall) => fileops.unlink(call, 'unlink'));
  add('unlinkat', (call: HookCall) => fileops.unlink(call, 'unlinkat'));
  add('rmdir', (call: HookCall) => fileops.unlink(call, 'rmdir'));
  add('rename', (call: HookCall) => fileops.rename(call, 'rename'));
  add('renameat', (call: HookCall) => fileops.rename(call, 'renameat'));
  add('renameat2', (call: HookCall) => fileops.rename(call, 'renameat2'));
  add('link', (call: HookCall) => fileops.link(call, false));
  add('linkat', (call: HookCall) => fileops.link(call, true));
  add('symlink', (call: HookCall) => fileops.symlink(call, false));
  add('symlinkat', (call: HookCall) => fileops.symlink(call, true));
  add('chmod', (call: HookCall) => fileops.chmod(call, 'chmod'));
  add('fchmodat', (call: HookCall) => fileops.chmod(call, 'fchmodat'));
  add('fchmodat2', (call: HookCall) => fileops.chmod(call, 'fchmodat2'));
  add('chown', (call: HookCall) => fileops.chown(call, 'chown'));
  add('lchown', (call: HookCall) => fileops.chown(call, 'lchown'));
  add('fchownat', (call: HookCall) => fileops.chown(call, 'fchownat'));
  add('utime', (call: HookCall) => fileops.utimes(call, 'utime'));
  add('utimes', (call: HookCall) => fileops.utimes(call, 'utimes'));
  add('futimesat', (call: HookCall) => fileops.utimes(call, 'futimesat'));
  add('utimensat', (call: HookCall) => fileops.utimes(call, 'utimensat'));
  add('truncate', (call: HookCall) => fileops.truncate(call));
  add('access', (call: HookCall) => fileops.access(call, 'access'));
  add('faccessat', (call: HookCall) => fileops.access(call, 'faccessat'));
  add('faccessat2', (call: HookCall) => fileops.access(call, 'faccessat2'));
  add('mknod', (call: HookCall) => fileops.mknod(call, false));
  add('mknodat', (call: HookCall) => fileops.mknod(call, true));

  // connect(fd, addr, addrlen); bind(fd, addr, addrlen)
  add('connect', (call: HookCall) => socketCall(call, 'connect'));
  add('bind', (call: HookCall) => socketCall(call, 'bind'));
  return table;
}
