/**
 * Loading a policy file: read and check it (spec.ts), then compile it (policy.ts).
 */
import { compileTriesSliced, Policy } from './policy.js';
import { readPolicyFile, type PolicySpec } from './spec.js';

export { parsePolicyText, readPolicyFile, type PolicySpec } from './spec.js';

/** Reads, checks and compiles a policy file. Throws PolicyError with file:line:column. */
export function loadPolicyFile(path: string): Policy {
  return compilePolicy(readPolicyFile(path));
}

export function compilePolicy(spec: PolicySpec): Policy {
  return new Policy(spec.rules, { denyErrno: spec.denyErrno, sections: spec.sections, unmatched: spec.unmatched, source: spec.source });
}

/** compilePolicy() in slices that yield to the event loop (for reloads, while the old policy serves). */
export async function compilePolicySliced(spec: PolicySpec): Promise<Policy> {
  const tries = await compileTriesSliced(spec.rules, spec.sections);
  return new Policy(spec.rules, {
    denyErrno: spec.denyErrno,
    sections: spec.sections,
    unmatched: spec.unmatched,
    source: spec.source,
    tries,
  });
}
