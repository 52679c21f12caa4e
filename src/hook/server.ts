/**
 * Serves a seccomp listener on the event loop: each notification is read, answered by the handler
 * of its syscall (syscalls.ts), and the answer given to the kernel: an fd installed in the program
 * (ADDFD with SEND: the syscall returns it), an errno, or CONTINUE.
 *
 * The listener is watched by the native poller: readable once per pending notification, and hung
 * up when the last program that shares the filter has exited. A wake-up answers a bounded batch, so
 * that a busy program cannot starve the broker's sockets; the poll is level-triggered, so the rest
 * come at the next turn of the loop.
 *
 * Receiving stays on the event loop. A thread that received each notification at once (so that a
 * busy loop would not widen the window in which a signal gives EINTR) was tried and removed: on
 * a test machine it changed the EINTR rate per trapped open by a few percent at most and made each
 * open about 1.7x slower (docs/security.md, "Signals").
 */
import { E, errnoName } from '../errno.js';
import { C, native, PollMode, type NativePoller } from '../native.js';
import type { Broker } from '../broker/broker.js';
import type { ServiceContext } from '../broker/service.js';
import type { Peer } from '../policy/policy.js';
import type { Continuation } from './continuation.js';
import { notify } from './native.js';
import { Notification } from './notification.js';
import { CONTINUE, DONE, GONE, type HookCall, type HookHost, type HookStats } from './open.js';
import { AUDIT_ARCH, syscallTable, type SyscallEntry } from './syscalls.js';

/** Notifications answered per wake-up at most. */
const BATCH = 64;

export interface HookServerOptions {
  /** the seccomp listener fd; the server owns it and closes it */
  listener: number;
  broker: Broker;
  /** who the policy sees: the launched program's credentials and session */
  peer: Peer;
  continuation: Continuation;
  /** called once when no program is left on the listener (or the server is closed) */
  onClose?: () => void;
  /** where faults go */
  log?: (message: string) => void;
}

export class HookServer implements HookHost {
  readonly listener: number;
  readonly peer: Peer;
  readonly continuation: Continuation;
  readonly stats: HookStats = {
    notifications: 0,
    installed: 0,
    continued: 0,
    refused: 0,
    gone: 0,
    installFailed: 0,
    proc: 0,
    performed: 0,
  };
  readonly #broker: Broker;
  readonly #poller: NativePoller;
  readonly #table: Map<number, SyscallEntry>;
  readonly #n = new Notification();
  readonly #call: HookCall;
  readonly #onClose: (() => void) | undefined;
  readonly #log: (message: string) => void;
  /** slow opens under way: the listener closes only when they are done */
  #pending = 0;
  #hungUp = false;
  #closed = false;

  constructor(options: HookServerOptions) {
    this.listener = options.listener;
    this.peer = options.peer;
    this.continuation = options.continuation;
    this.#broker = options.broker;
    this.#onClose = options.onClose;
    this.#log = options.log ?? ((m) => process.stderr.write(`openhook: ${m}\n`));
    this.#table = syscallTable();
    this.#call = { n: this.#n, host: this, cloexec: false };
    notify.notifySyncWakeUp(this.listener); // an optimisation only: older kernels answer EINVAL
    this.#poller = new native.Poller(this.listener, PollMode.Notify, 1, (events, _count, status) => this.#wake(events, status));
    this.#poller.start(C.UV_READABLE | C.UV_DISCONNECT);
  }

  context(): ServiceContext {
    return this.#broker.context();
  }

  get closed(): boolean {
    return this.#closed;
  }

  #wake(events: number, status: number): void {
    if (this.#closed) return;
    for (let i = 0; i < BATCH; i++) {
      const r = notify.notifyRecv(this.listener, this.#n.words);
      if (r === -E.EAGAIN) break;
      if (r === -E.ENOENT || r === -E.EINTR) continue; // its target died before we took it
      if (r < 0) {
        // EPIPE: no program is left; anything else: the listener is unusable
        if (r !== -E.EPIPE) this.#log(`syscall hook: receive failed (${errnoName(r)}); the listener is closed`);
        this.#hangUp();
        return;
      }
      this.stats.notifications++;
      this.#serve();
    }
    // An error stops libuv's watcher; a hang-up with nothing pending means no program is left.
    if (status < 0 || (events & C.UV_DISCONNECT) !== 0) this.#hangUp();
  }

  /** Answers the notification in this.#n. */
  #serve(): void {
    const n = this.#n;
    const call = this.#call;
    call.cloexec = false;
    const entry = n.arch === AUDIT_ARCH ? this.#table.get(n.nr) : undefined;
    if (entry === undefined) {
      // The filter sends nothing else; a newer helper might: refuse as an older kernel would.
      this.#answer(n.idLo, n.idHi, -E.ENOSYS, false, false);
      return;
    }
    let result: number | Promise<number>;
    try {
      result = entry.handler(call);
    } catch (err) {
      this.#log(`syscall hook: ${entry.name} failed: ${(err as Error).stack ?? err}`);
      result = -E.EIO;
    }
    if (typeof result === 'number') {
      this.#answer(n.idLo, n.idHi, result, call.cloexec, false);
      return;
    }
    // A slow open (network filesystem, FIFO rule): answer when it is done; keep what it needs.
    const { idLo, idHi } = n;
    const cloexec = call.cloexec;
    this.#pending++;
    result
      .then(
        (r) => this.#answer(idLo, idHi, r, cloexec, true),
        () => this.#answer(idLo, idHi, -E.EIO, false, false),
      )
      .finally(() => {
        this.#pending--;
        if (this.#hungUp) this.close();
      });
  }

  #answer(idLo: number, idHi: number, result: number, cloexec: boolean, slow: boolean): void {
    const s = this.stats;
    if (result === GONE) {
      s.gone++;
      return;
    }
    if (this.#closed) {
      if (result >= 0) this.#release(result, slow);
      return;
    }
    if (result === DONE) {
      s.performed++;
      if (notify.notifyRespond(this.listener, idLo, idHi, 0, 0, false) < 0) s.gone++;
      return;
    }
    if (result === CONTINUE) {
      s.continued++;
      if (notify.notifyRespond(this.listener, idLo, idHi, 0, 0, true) < 0) s.gone++;
      return;
    }
    if (result >= 0) {
      const installed = notify.notifyAddFd(this.listener, idLo, idHi, result, cloexec);
      this.#release(result, slow);
      if (installed >= 0) {
        s.installed++;
        return;
      }
      if (installed === -E.ENOENT) {
        s.gone++;
        return;
      }
      // Never CONTINUE after a failed install: the program gets the errno (EMFILE...).
      s.installFailed++;
      result = installed;
    }
    s.refused++;
    if (notify.notifyRespond(this.listener, idLo, idHi, 0, -result, false) < 0) s.gone++;
  }

  #release(fd: number, slow: boolean): void {
    if (slow) this.#broker.resolver.release(fd);
    else native.close(fd);
  }

  #hangUp(): void {
    this.#hungUp = true;
    if (this.#pending === 0) this.close();
    else this.#poller.start(0);
  }

  /** Stops serving and closes the listener: programs still trapped get ENOSYS from the kernel. */
  close(): void {
    if (this.#closed) return;
    this.#closed = true;
    this.#poller.close();
    native.close(this.listener);
    this.#onClose?.();
  }
}
