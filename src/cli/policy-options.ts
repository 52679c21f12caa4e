/**
 * The policy options shared by serve, check and run: --policy FILE, or --allow PATH:ACCESS and
 * --deny PATH on the command line.
 */
import type { Command } from './commander.js';
import { collect } from './util.js';
import { Policy } from '../policy/policy.js';
import { parseAllowFlag, parseDenyFlag, PolicyError, type Rule } from '../policy/rule.js';

export interface PolicyFlags {
  allow: string[];
  deny: string[];
  policy?: string;
}


export function addPolicyOptions(cmd: Command): Command {
  return cmd
    .option('--policy <FILE>', 'the policy file (TOML; see docs/policy.md)')
    .option('--allow <PATH:ACCESS>', 'allow ACCESS (letters of rwcdmusax, or all) on PATH; a trailing / means the tree (repeatable)', collect, [])
    .option('--deny <PATH>', 'deny PATH; a trailing / means the tree (repeatable)', collect, []);
}

/** Builds the policy from the flags; throws PolicyError with a message for people. */
function policyFromFlags(flags: PolicyFlags): Policy {
  const rules: Rule[] = [...flags.allow.map(parseAllowFlag), ...flags.deny.map(parseDenyFlag)];
  if (rules.length === 0) throw new PolicyError('no rules: give --policy FILE, or --allow PATH:ACCESS (and --deny PATH), to say what clients may open');
  return new Policy(rules);
}

/**
 * The policy the options name: the file, or the flags (not both). Throws PolicyError. The file
 * reader (and its TOML parser) is loaded only when a file is given: `openhook run --allow ...` starts
 * without it.
 */
export async function policyFromOptions(flags: PolicyFlags): Promise<Policy> {
  if (flags.policy !== undefined) {
    if (flags.allow.length > 0 || flags.deny.length > 0) throw new PolicyError('give either --policy FILE or --allow/--deny rules, not both');
    const { loadPolicyFile } = await import('../policy/file.js');
    return loadPolicyFile(flags.policy);
  }
  return policyFromFlags(flags);
}
