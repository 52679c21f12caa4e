/**
 * What an operation beneath a root ends in, as a value: an fd, or an errno with the reason for the
 * audit log. Refusals are shared immutable objects (one per errno without a reason, one constant per
 * reason), so that the hot path allocates nothing to say either.
 */

export interface Refusal {
  /** positive */
  readonly errno: number;
  /** why, in words, or '' when the errno says it all (the policy's reason then stands) */
  readonly reason: string;
}

/** An fd (>= 0) that the caller owns, or a refusal. */
export type OpenResult = number | Refusal;

const plain: Refusal[] = [];

/** The refusal for an errno with no reason of its own: failed(E.ENOENT). */
export function failed(errno: number): Refusal {
  return (plain[errno] ??= Object.freeze({ errno, reason: '' }));
}

/** A refusal with its reason; make these once, as constants. */
export function refusal(errno: number, reason: string): Refusal {
  return Object.freeze({ errno, reason });
}

/** The result as the wire says it: the fd, or -errno. */
export function codeOf(result: OpenResult): number {
  return typeof result === 'number' ? result : -result.errno;
}
