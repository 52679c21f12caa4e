/**
 * The policy options shared by serve, check and run: --policy FILE, or --allow PATH:ACCESS and
 * --deny PATH on the command line.
 */
import { statSync } from 'node:fs';
import type { Command } from './commander.js';
import { display, toBytes } from '../bytestring.js';
import { Access, formatAccess } from '../policy/access.js';
import { collect } from './util.js';
import { Policy } from '../policy/policy.js';
import { parseAllowFlag, parseDenyFlag, PolicyError, type Rule } from '../policy/rule.js';

export interface PolicyFlags {
  allow: string[];
  deny: string[];
  policy?: string;
  /** --follow-symlinks / --no-follow-symlinks: every --allow rule's follow_symlinks (unset: the rules that grant s follow) */
  followSymlinks?: boolean;
}

export function addPolicyOptions(cmd: Command): Command {
  return cmd
    .option('--policy <FILE>', 'the policy file (TOML; see docs/policy.md)')
    .option(
      '--allow <PATH:ACCESS>',
      'allow ACCESS (letters of rwcdmusaxnb, or all) on PATH; a trailing / means the tree (repeatable)',
      collect,
      [],
    )
    .option('--deny <PATH>', 'deny PATH; a trailing / means the tree (repeatable)', collect, [])
    .option('--follow-symlinks', 'every --allow rule follows symlinks that stay beneath its root (default: the rules that grant s)')
    .option('--no-follow-symlinks', 'no --allow rule follows symlinks, not even those that grant s');
}

/**
 * `--allow DIR:ACCESS` without the trailing `/`, where DIR is a directory, is an exact rule: it covers
 * the directory itself, not what is in it, which is seldom what was meant. Without 'd' such a rule
 * can allow nothing at all (a directory opens only with 'd'), so it is refused, with the fix. With
 * 'd' it is a real rule (list DIR, open nothing in it), so it stands, with a warning and the fix.
 */
function exactDirectory(rule: Rule, warn: (message: string) => void): void {
  if (rule.effect !== 'allow' || rule.tree || rule.glob) return;
  try {
    if (!statSync(toBytes(rule.path)).isDirectory()) return;
  } catch {
    return; // not there (yet): an exact file rule, as written
  }
  const fix = `for the tree beneath it write --allow ${display(rule.path)}/:${formatAccess(rule.access)}`;
  if (!(rule.access & Access.DIRECTORY)) {
    throw new PolicyError(
      `${rule.origin}: ${display(rule.path)} is a directory, and without a trailing '/' the rule covers only the directory itself, which it cannot open without 'd': ${fix}`,
    );
  }
  warn(
    `${rule.origin}: ${display(rule.path)} is a directory; without a trailing '/' the rule lets clients open (list) the directory itself, nothing in it: ${fix}`,
  );
}

/** Builds the policy from the flags; throws PolicyError with a message for people. */
function policyFromFlags(flags: PolicyFlags, warn: (message: string) => void): Policy {
  const allows = flags.allow.map(parseAllowFlag);
  if (flags.followSymlinks !== undefined) for (const rule of allows) rule.followSymlinks = flags.followSymlinks;
  const rules: Rule[] = [...allows, ...flags.deny.map(parseDenyFlag)];
  for (const rule of rules) exactDirectory(rule, warn);
  if (rules.length === 0)
    throw new PolicyError('no rules: give --policy FILE, or --allow PATH:ACCESS (and --deny PATH), to say what clients may open');
  return new Policy(rules);
}

/**
 * The policy the options name: the file, or the flags (not both). Throws PolicyError. The file
 * reader (and its TOML parser) is loaded only when a file is given: `openhook run --allow ...` starts
 * without it. warn: for flags that are probably not what was meant, but valid.
 */
export async function policyFromOptions(flags: PolicyFlags, warn: (message: string) => void): Promise<Policy> {
  if (flags.policy !== undefined) {
    if (flags.allow.length > 0 || flags.deny.length > 0)
      throw new PolicyError('give either --policy FILE or --allow/--deny rules, not both');
    if (flags.followSymlinks !== undefined)
      throw new PolicyError(
        `--${flags.followSymlinks ? '' : 'no-'}follow-symlinks applies to --allow rules; in a policy file write follow_symlinks = ${flags.followSymlinks} on each rule`,
      );
    const { loadPolicyFile } = await import('../policy/file.js');
    return loadPolicyFile(flags.policy);
  }
  return policyFromFlags(flags, warn);
}
