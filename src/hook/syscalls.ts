/**
 * The trapped syscalls: number → handler, per architecture. The launch helper's filter
 * (native/launch.c, trapped[]) sends exactly these; adding a syscall is one line there and one
 * entry here (its number, its name, and a handler that turns the call's arguments into an answer).
 */
import { arch } from 'node:os';
import type { HookCall, Handler } from './open.js';
import { openFamily } from './open.js';
import { socketCall } from './sockets.js';

export interface SyscallEntry {
  name: string;
  handler: Handler;
}

/** AUDIT_ARCH_* values the filter admits (any other arch was killed by the filter). */
export const AUDIT_ARCH = arch() === 'arm64' ? 0xc00000b7 : 0xc000003e;

/** Syscall numbers of the trapped calls on this architecture (x86_64, or aarch64 without the legacy calls). */
const NUMBERS: Record<string, Record<string, number>> = {
  x64: { open: 2, creat: 85, openat: 257, openat2: 437 },
  arm64: { openat: 56, openat2: 437 },
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
  // connect(fd, addr, addrlen); bind(fd, addr, addrlen)
  add('connect', (call: HookCall) => socketCall(call, 'connect'));
  add('bind', (call: HookCall) => socketCall(call, 'bind'));
  return table;
}
