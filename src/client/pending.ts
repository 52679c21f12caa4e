/**
 * A wait that may give up: one request, greeting, event or connection awaited with an optional
 * timeout and AbortSignal. The client, the QMP client and the QMP listener all wait this way.
 *
 * Whoever settles it first wins: the answer (resolve/reject by the owner), the timer, or the
 * signal. Settling, by any of them, clears the timer and removes the abort listener, so that a
 * long-lived signal shared by many requests holds nothing of the finished ones.
 *
 * Giving up rejects with openhook's own errors: AbortError (code ABORT_ERR, the signal's reason as
 * its cause), never the DOM's, and the timeout error its owner makes (TimeoutError, QmpTimeoutError).
 */
import { AbortError } from './errors.js';

export interface WaitOptions {
  /** ms; 0 or absent: no timeout */
  timeout?: number;
  signal?: AbortSignal | null;
  /** the error when the timeout fires */
  timeoutError?: () => Error;
  /**
   * Called once when it gives up (timeout or abort), after it has rejected: the owner forgets what
   * it no longer waits for (a request not yet sent, say).
   */
  onGiveUp?: (err: Error) => void;
}

/** openhook's AbortError for a signal that fired, with the signal's reason as its cause. */
export function abortError(signal: AbortSignal): AbortError {
  return new AbortError(undefined, { cause: signal.reason });
}

export class Wait<T> {
  readonly promise: Promise<T>;
  #resolve!: (value: T) => void;
  #reject!: (err: Error) => void;
  #settled = false;
  #timer: NodeJS.Timeout | null = null;
  #signal: AbortSignal | null;
  #onAbort: (() => void) | null = null;
  #onGiveUp: ((err: Error) => void) | null;

  /** A signal that has fired already makes a wait that is rejected at once (settled is true). */
  constructor(options: WaitOptions = {}) {
    this.promise = new Promise<T>((resolve, reject) => {
      this.#resolve = resolve;
      this.#reject = reject;
    });
    this.#signal = options.signal ?? null;
    this.#onGiveUp = options.onGiveUp ?? null;
    const signal = this.#signal;
    if (signal?.aborted) {
      this.#settled = true;
      this.#reject(abortError(signal));
      return;
    }
    const timeout = options.timeout ?? 0;
    if (timeout > 0) {
      const make = options.timeoutError ?? (() => new Error(`no answer within ${timeout} ms`));
      this.#timer = setTimeout(() => this.#giveUp(make()), timeout);
    }
    if (signal) {
      this.#onAbort = () => this.#giveUp(abortError(signal));
      signal.addEventListener('abort', this.#onAbort, { once: true });
    }
  }

  /** Answered, timed out, aborted or rejected: nothing more happens to it. */
  get settled(): boolean {
    return this.#settled;
  }

  /** Resolves it; false (and nothing done) when it was settled already. */
  resolve(value: T): boolean {
    if (!this.#end()) return false;
    this.#resolve(value);
    return true;
  }

  /** Rejects it; false (and nothing done) when it was settled already. */
  reject(err: Error): boolean {
    if (!this.#end()) return false;
    this.#reject(err);
    return true;
  }

  #giveUp(err: Error): void {
    const onGiveUp = this.#onGiveUp;
    if (this.reject(err)) onGiveUp?.(err);
  }

  #end(): boolean {
    if (this.#settled) return false;
    this.#settled = true;
    if (this.#timer) clearTimeout(this.#timer);
    if (this.#onAbort) this.#signal!.removeEventListener('abort', this.#onAbort);
    this.#timer = null;
    this.#onAbort = null;
    this.#onGiveUp = null;
    return true;
  }
}
