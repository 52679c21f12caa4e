/**
 * The syscall hook's part of the addon (native/notify.c), typed. Every call returns a result or
 * -errno; ids and addresses travel as two u32 halves, so the request path allocates no BigInt.
 */
import { native } from '../native.js';

export interface NotifyBinding {
  /** the listener fd the launch helper sent over socket, -EAGAIN before it arrives, -EPIPE if it never will */
  receiveListener(socket: number): number;
  /** synchronous wake-ups between target and broker (Linux 6.6); 0 or -errno (older kernels: -EINVAL) */
  notifySyncWakeUp(listener: number): number;
  /** 0 with one notification in out (NOTIFICATION_WORDS words), -EAGAIN, -EPIPE (no target left), -ENOENT */
  notifyRecv(listener: number, out: Uint32Array): number;
  /** answers with val, or with errno (positive) when errno is not 0; or lets the kernel run the call */
  notifyRespond(listener: number, idLo: number, idHi: number, val: number, errno: number, continueCall: boolean): number;
  /** installs fd in the target at its lowest free number and answers the call with it (ADDFD_FLAG_SEND) */
  notifyAddFd(listener: number, idLo: number, idHi: number, fd: number, cloexec: boolean): number;
  /** 0 while the call still waits, else -ENOENT */
  notifyIdValid(listener: number, idLo: number, idHi: number): number;
  /** the NUL-terminated string at addr into buf: its length, -ENAMETOOLONG, -EFAULT or -ESRCH */
  readString(pid: number, addrLo: number, addrHi: number, buf: Buffer): number;
  /** exactly len bytes at addr into buf: len, or -errno */
  readMemory(pid: number, addrLo: number, addrHi: number, buf: Buffer, len: number): number;
  /** a close-on-exec copy of fd as thread tid (of process tgid) holds it (pidfd_getfd), or -errno */
  fetchFd(tid: number, tgid: number, fd: number): number;
}

export const notify = native as unknown as NotifyBinding;

/** Words notifyRecv fills: id (2), pid, flags, nr, arch, instruction pointer (2), 6 args (2 each). */
export const NOTIFICATION_WORDS = 20;
