/** The policy options shared by serve, check and run: --allow PATH:ACCESS and --deny PATH. */
import type { Command } from 'commander';
import { Policy } from '../policy/policy.js';
import { parseAllowFlag, parseDenyFlag, PolicyError, type Rule } from '../policy/rule.js';

export interface PolicyFlags {
  allow: string[];
  deny: string[];
}

const collect = (value: string, previous: string[]): string[] => [...previous, value];

export function addPolicyOptions(cmd: Command): Command {
  return cmd
    .option('--allow <PATH:ACCESS>', 'allow ACCESS (r, w, c) on PATH; a trailing / means the tree (repeatable)', collect, [])
    .option('--deny <PATH>', 'deny PATH; a trailing / means the tree (repeatable)', collect, []);
}

/** Builds the policy from the flags; throws PolicyError with a message for people. */
export function policyFromFlags(flags: PolicyFlags): Policy {
  const rules: Rule[] = [...flags.allow.map(parseAllowFlag), ...flags.deny.map(parseDenyFlag)];
  if (rules.length === 0) throw new PolicyError('no rules: give --allow PATH:ACCESS (and --deny PATH) to say what clients may open');
  return new Policy(rules);
}
