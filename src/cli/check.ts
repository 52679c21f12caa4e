/**
 * `openhook check [policy options] [--uid U --gid G --groups G,... --session S] PATH ACCESS`:
 * explains one decision, naming the rule that made it and where it was written.
 * Exit status: 0 allow, 1 deny, 2 a bad policy (or bad arguments).
 */
import { Command, InvalidArgumentError } from './commander.js';
import { display, fromText } from '../bytestring.js';
import { errnoName, errnoValue } from '../errno.js';
import { Access, explainAccess, formatAccess, OPERATION_ACCESS, parseRequestAccess } from '../policy/access.js';
import { normalise } from '../policy/path.js';
import type { Decision, Peer, Policy } from '../policy/policy.js';
import { describeRule, followsByDefault, PolicyError } from '../policy/rule.js';
import { addPolicyOptions, policyFromOptions, type PolicyFlags } from './policy-options.js';

interface CheckOptions extends PolicyFlags {
  uid?: number;
  gid?: number;
  groups?: number[];
  session?: string;
}

function parseId(text: string): number {
  if (!/^\d+$/.test(text) || Number(text) >= 0xffffffff) throw new InvalidArgumentError(`expected a numeric id: '${text}'`);
  return Number(text);
}

function parseIds(text: string): number[] {
  return text === '' ? [] : text.split(',').map((t) => parseId(t.trim()));
}

export function checkCommand(): Command {
  const cmd = new Command('check')
    .description('explain what the policy decides for PATH and ACCESS: exit 0 allow, 1 deny, 2 bad policy')
    .argument('<PATH>', 'absolute path a client would ask for')
    .argument(
      '<ACCESS>',
      `what the request needs: letters of rwcdmusaxnb or all (d: the path is a directory), or an operation: ${Object.keys(OPERATION_ACCESS).join(', ')}`,
    )
    .option('--uid <UID>', 'the client’s uid (default: yours)', parseId)
    .option('--gid <GID>', 'the client’s primary gid (default: yours)', parseId)
    .option('--groups <GID,...>', 'the client’s supplementary groups (default: yours, or none with --uid or --gid)', parseIds)
    .option('--session <NAME>', 'the client’s session name (clients the launcher started)');
  addPolicyOptions(cmd);
  // Usage errors exit 2, as a bad policy does: 1 means "denied" and nothing else.
  cmd.exitOverride((err) => process.exit(err.exitCode === 0 ? 0 : 2));
  return cmd.action(async (path: string, access: string, opts: CheckOptions) => {
    process.exitCode = await check(path, access, opts);
  });
}

async function check(pathText: string, accessText: string, opts: CheckOptions): Promise<number> {
  // One write at the end: a reader that stops early (`| head -1`) then never breaks a later write.
  const lines: string[] = [];
  const out = (line: string): void => void lines.push(line);
  try {
    return await explain(pathText, accessText, opts, out);
  } finally {
    if (lines.length > 0) process.stdout.write(lines.join('\n') + '\n');
  }
}

async function explain(pathText: string, accessText: string, opts: CheckOptions, out: (line: string) => void): Promise<number> {
  let want: number;
  try {
    want = parseRequestAccess(accessText);
  } catch (err) {
    process.stderr.write(`openhook check: ${(err as Error).message}\n`);
    return 2;
  }
  let policy: Policy;
  try {
    policy = await policyFromOptions(opts, (m) => process.stderr.write(`openhook check: warning: ${m}\n`));
  } catch (err) {
    if (!(err instanceof PolicyError)) throw err;
    process.stderr.write(`openhook check: ${err.message}\n`);
    return 2;
  }
  // Another uid or gid is another client: your own supplementary groups are not theirs.
  const own = opts.uid === undefined && opts.gid === undefined;
  const peer: Peer = {
    pid: process.pid,
    uid: opts.uid ?? process.getuid!(),
    gid: opts.gid ?? process.getgid!(),
    groups: opts.groups ?? (own ? process.getgroups!() : []),
    ...(opts.session !== undefined ? { session: opts.session } : {}),
  };
  try {
    const section = policy.sectionFor(peer);
    const who = `uid ${peer.uid}, gid ${peer.gid}${peer.groups?.length ? `, groups ${peer.groups.join(',')}` : ''}${peer.session !== undefined ? `, session ${peer.session}` : ''}`;
    const norm = normalise(fromText(pathText));
    if (!norm.ok) {
      out(`deny (${norm.errno}) ${pathText} ${formatAccess(want)}`);
      out(`  why: the name is refused before any rule is consulted: ${norm.reason}`);
      return 1;
    }
    const d = policy.decide(peer, norm.path, want & ~Access.DIRECTORY);
    let allowed = d.allowed,
      errno = d.errno,
      why = d.reason;
    if (allowed && want & Access.DIRECTORY && !d.open.directories) {
      // What the resolver answers when it finds a directory that the rule does not allow.
      allowed = false;
      errno = errnoValue('EACCES')!;
      why = `${d.rule!.origin} does not allow directories (access letter d)`;
    }
    if (allowed && d.directoryOnly && !(want & Access.DIRECTORY)) {
      // What the resolver answers when the name a glob tree covers as its root is not a directory.
      allowed = false;
      errno = policy.denyErrno;
      why = `${d.rule!.origin} covers ${display(norm.path)} only as a directory (a tree's root); check it with 'd' if it is one`;
    }
    out(`${allowed ? 'allow' : `deny (${errnoName(errno)})`} ${display(norm.path)} ${formatAccess(want)}`);
    out(`  why: ${why}`);
    out(`  needs: ${explainAccess(want)}`);
    if (d.rule) out(`  rule: ${d.rule.origin}: ${describeRule(d.rule)}`);
    out(
      `  client: ${who} -> ${section === null ? 'refused (matches no section; unmatched = "refuse")' : section === policy.defaultSection ? 'default section' : `section ${section.name}`}`,
    );
    if (allowed) out(`  opens: ${d.rest} beneath ${display(rootPathOf(norm.path, d.rest))}${d.open.followSymlinks ? following(d) : ''}`);
    return allowed ? 0 : 1;
  } finally {
    policy.close();
  }
}

/** How a following rule follows: why it does, and whether the broker checks real paths (carve-outs.ts). */
function following(d: Decision): string {
  const why = followsByDefault(d.rule!.access) ? 'the rule grants s' : 'follow_symlinks = true';
  const checks = d.open.verify ? 'deny rules decided again on the real path' : 'no rule beneath it to check real paths against';
  return `, following symlinks beneath it (${why}); ${checks}`;
}

function rootPathOf(path: string, rest: string): string {
  if (rest === '.') return path;
  const root = path.slice(0, path.length - rest.length - 1);
  return root === '' ? '/' : root;
}
