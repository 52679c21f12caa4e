/** The policy: rules from a TOML file or flags, compiled into a trie, deciding per client. */
export { Access, AccessError, formatAccess, parseAccess } from './access.js';
export { compilePolicy, loadPolicyFile, parsePolicyText, readPolicyFile, type PolicySpec } from './file.js';
export { normalise } from './path.js';
export { Policy, Section, type Decision, type Peer, type PolicyOptions, type SectionSpec } from './policy.js';
export { describeRule, makeRule, parseAllowFlag, parseDenyFlag, PolicyError, type Rule } from './rule.js';
