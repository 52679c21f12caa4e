/**
 * `openhook run [policy options] [--ro PATH ...] -- CMD ARGS...`: runs CMD confined, so that it cannot
 * open files itself, with an in-process broker serving its hook fd (docs/run.md).
 *
 * Exit status: CMD's, or 128+N if a signal N killed it; 125 when run itself fails or refuses (bad
 * options, a bad policy, confinement unavailable), 126 when CMD cannot be executed, 127 when it is
 * not found.
 */
import { readdirSync, readFileSync, readlinkSync, renameSync, unlinkSync, writeFileSync } from 'node:fs';
import { basename, resolve } from 'node:path';
import { Command, InvalidArgumentError } from './commander.js';
import { teeAudit, verdict, type AuditSink } from '../broker/audit.js';
import type { AuditLog } from '../broker/audit-log.js';
import { Broker } from '../broker/broker.js';
import { describeFlags } from '../broker/flags.js';
import { display } from '../bytestring.js';
import { C } from '../native.js';
import { ConfinementError } from '../launch/confinement.js';
import { describeFailure, EXIT_REFUSED, FORWARDED_SIGNALS, launch, LaunchError, type LaunchResult } from '../launch/launch.js';
import type { LearnRecorder } from '../launch/learn.js';
import { PRELOAD_LIBRARY, preloadValue } from '../launch/preload.js';
import { formatReport, type LaunchReport } from '../launch/report.js';
import { Access } from '../policy/access.js';
import { Policy } from '../policy/policy.js';
import { Command as ProtocolCommand, COMMAND_NAMES } from '../protocol/constants.js';
import { rootOf, type Rule } from '../policy/rule.js';
import { makePrivateTmp, privateTmpEnv, privateTmpRule, removePrivateTmp, withRule } from '../launch/private-tmp.js';
import { PolicyError } from '../policy/rule.js';
import { addAuditOptions, auditFromOptions, type AuditFlags } from './audit-options.js';
import { addPolicyOptions, policyFromOptions, type PolicyFlags } from './policy-options.js';
import { collect, shellQuote } from './util.js';

export interface RunOptions extends PolicyFlags, AuditFlags {
  ro: string[];
  device: string[];
  passFd: number[];
  fd?: number;
  session?: string;
  learn?: string;
  report?: boolean;
  log?: boolean;
  allowUnconfined?: boolean;
  allowUnixSockets?: boolean;
  preload?: boolean;
  /** false with --no-private-tmp */
  privateTmp?: boolean;
}

function parseFd(text: string): number {
  if (!/^\d+$/.test(text) || Number(text) < 3 || Number(text) > 1_048_575)
    throw new InvalidArgumentError(`the hook fd must be a number from 3 up, not '${text}'`);
  return Number(text);
}

function parsePassFd(text: string, previous: number[]): number[] {
  if (!/^\d+$/.test(text) || Number(text) < 3 || Number(text) > 1_048_575)
    throw new InvalidArgumentError(`a passed fd must be a number from 3 up (0-2 are stdio), not '${text}'`);
  return [...previous, Number(text)];
}

/**
 * Why `run` cannot pass on its fd N, or null if it can: N must be open, and must not be one of Node's
 * own fds (its event loop's epoll, eventfds, self-pipes), which a mistyped number would otherwise
 * hand to CMD. Node marks inherited low fds close-on-exec too, so that flag cannot tell them apart;
 * the kind of file can: nobody passes an epoll on purpose, and a pipe whose both ends are open in
 * `run` is a self-pipe of its own.
 */
export function passFdProblem(fd: number): string | null {
  let target: string;
  try {
    target = readlinkSync(`/proc/self/fd/${fd}`);
  } catch {
    return `--pass-fd ${fd}: fd ${fd} is not open in openhook run (open it in the shell, e.g. ${fd}<FILE)`;
  }
  const own = `--pass-fd ${fd}: fd ${fd} is one of openhook run's own (${target}), not one it inherited`;
  if (/^anon_inode:\[(eventpoll|eventfd|signalfd|timerfd|io_uring)\]$/.test(target)) return own;
  if (target.startsWith('pipe:')) {
    const modes = new Set<number>();
    for (const other of readdirSync('/proc/self/fd')) {
      try {
        if (readlinkSync(`/proc/self/fd/${other}`) !== target) continue;
        const flags = /^flags:\s*([0-7]+)/m.exec(readFileSync(`/proc/self/fdinfo/${other}`, 'latin1'));
        if (flags) modes.add(parseInt(flags[1]!, 8) & C.O_ACCMODE);
      } catch {
        // closed meanwhile (readdirSync's own fd)
      }
    }
    if (modes.has(C.O_RDONLY) && modes.has(C.O_WRONLY)) return own;
  }
  return null;
}

export function runCommand(): Command {
  const cmd = new Command('run')
    .description('run a program confined: it cannot open files itself and asks the broker for them through its hook fd')
    .usage('[policy options] [options] -- CMD [ARGS...]')
    .argument('<command>', 'the program to run')
    .argument('[args...]', 'its arguments');
  addAuditOptions(addPolicyOptions(cmd))
    .option(
      '--ro <PATH>',
      'let the program read and execute PATH itself, besides /usr /lib /lib64 /bin /sbin /etc (repeatable)',
      collect,
      [],
    )
    .option(
      '--device <PATH>',
      'let the program open the character device PATH itself, read-write with its ioctls, e.g. /dev/kvm (repeatable)',
      collect,
      [],
    )
    .option(
      '--pass-fd <N>',
      "keep run's fd N open at N in the program, e.g. a listening socket for -chardev socket,fd=N (repeatable)",
      parsePassFd,
      [],
    )
    .option(
      '--fd <N>',
      'fd number of the hook socket in the program, exported as OPENHOOK_FD (default: 3, or the lowest not passed)',
      parseFd,
    )
    .option('--session <NAME>', "session name that policy sections match (default: the command's base name)")
    .option('--learn <FILE>', 'allow every request, then write a minimal policy for what the program asked to FILE')
    .option('--report', 'print the confinement that was enforced (Landlock, seccomp) before the program starts')
    .option('--log', 'print every broker decision to stderr, briefly (--audit for the full audit log)')
    .option('--allow-unconfined', 'run even if Landlock or seccomp is unavailable (not recommended)')
    .option(
      '--preload',
      "instead of the syscall hook: route a dynamically linked program's opens to the broker with the interposer (LD_PRELOAD; docs/interposer.md)",
    )
    .option('--allow-unix-sockets', 'let the program create UNIX sockets; it can then connect to any socket path it can name')
    .option(
      '--no-private-tmp',
      'give the program no private temporary directory (default: one per session, granted all, TMPDIR set, removed at the end)',
    )
    .passThroughOptions()
    .exitOverride((err) => process.exit(err.exitCode === 0 ? 0 : EXIT_REFUSED));
  return cmd.action(async (command: string, args: string[], opts: RunOptions) => {
    process.exitCode = await run(command, args, opts);
  });
}

const say = (line: string): void => void process.stderr.write(`openhook run: ${line}\n`);

/** --log: one short line per decision on stderr, beside the program's own output. */
const stderrLog: AuditSink = {
  record(e) {
    // An open says its flags; any other operation (mkdir, rename, a socket's connect...) its name.
    const open = e.command === ProtocolCommand.QEMU_OPEN || e.command === ProtocolCommand.OPEN_TAGGED;
    const to = e.path2 ? ` -> ${display(e.path2)}` : '';
    const what = open
      ? `${display(e.path)} ${describeFlags(e.flags)}`
      : `${COMMAND_NAMES[e.command] ?? `command ${e.command}`} ${display(e.path)}${to}`;
    process.stderr.write(`openhook: ${verdict(e)} ${what} (${e.reason})\n`);
  },
};

export async function run(command: string, args: string[], opts: RunOptions): Promise<number> {
  let policy: Policy;
  let recorder: LearnRecorder | null = null;
  const log = opts.log ? stderrLog : null;
  try {
    if (opts.learn !== undefined) {
      if (opts.allow.length > 0 || opts.deny.length > 0 || opts.policy !== undefined) {
        throw new PolicyError('--learn allows every request; give no --policy, --allow or --deny with it');
      }
      // Loaded only for --learn: every other run starts without it.
      const { allowEverythingPolicy, LearnRecorder } = await import('../launch/learn.js');
      recorder = new LearnRecorder();
      policy = allowEverythingPolicy();
    } else {
      // No rules at all is a valid policy: the program gets nothing through its hook.
      policy =
        opts.allow.length > 0 || opts.deny.length > 0 || opts.policy !== undefined
          ? await policyFromOptions(opts, (m) => say(`WARNING: ${m}`))
          : new Policy([]);
    }
  } catch (err) {
    if (err instanceof PolicyError) {
      say(err.message);
      return EXIT_REFUSED;
    }
    throw err;
  }

  const session = opts.session ?? basename(command);
  const self = { pid: process.pid, uid: process.getuid!(), gid: process.getgid!(), groups: process.getgroups!(), session };
  if (!policy.admits(self))
    say(`WARNING: the policy has no section for session ${session} and refuses unmatched clients: every request will be denied`);

  // --preload: the interposer goes first in LD_PRELOAD, and the program may map it (read and execute).
  let env: Record<string, string> | undefined;
  if (opts.preload) {
    try {
      env = { LD_PRELOAD: preloadValue() };
    } catch (err) {
      say((err as Error).message);
      policy.close();
      return EXIT_REFUSED;
    }
  }
  const devices = opts.device.map((path) => resolve(path));
  for (const fd of opts.passFd) {
    const problem = passFdProblem(fd);
    if (problem) {
      say(problem);
      return EXIT_REFUSED;
    }
  }
  if (opts.fd !== undefined && opts.passFd.includes(opts.fd)) {
    say(`--fd ${opts.fd} is also a --pass-fd: the hook needs a number of its own (leave out --fd to have one chosen)`);
    return EXIT_REFUSED;
  }
  // x (execute) is fixed at launch: Landlock lets the program read and run files beneath those rules itself.
  const readOnly = [
    ...opts.ro.map((path) => resolve(path)),
    ...(opts.preload ? [PRELOAD_LIBRARY] : []),
    ...(recorder ? [] : executableRoots(policy)),
  ];

  let privateTmp: string | null = null;
  if (opts.privateTmp !== false) {
    try {
      privateTmp = makePrivateTmp();
    } catch (err) {
      say(`cannot make the private temporary directory: ${(err as Error).message}`);
      policy.close();
      return EXIT_REFUSED;
    }
    policy = withRule(policy, privateTmpRule(privateTmp));
    recorder?.ignored.push(privateTmp); // gone after the session: nothing to learn there
    env = { ...env, ...privateTmpEnv(privateTmp) };
  }
  try {
    return await runWith(command, args, opts, policy, recorder, log, session, env, readOnly, devices);
  } finally {
    if (privateTmp !== null && !removePrivateTmp(privateTmp))
      say(`could not remove the private temporary directory ${privateTmp} entirely`);
  }
}

/** The roots of allow rules with x, in every section: what Landlock must let the program execute. */
function executableRoots(policy: Policy): string[] {
  const rules: Rule[] = [...policy.rules, ...policy.sections.flatMap((s) => s.rules)];
  return [...new Set(rules.filter((r) => r.effect === 'allow' && r.access & Access.EXECUTE).map((r) => (r.glob ? rootOf(r) : r.path)))].map(
    (p) => Buffer.from(p, 'latin1').toString('utf8'),
  );
}

async function runWith(
  command: string,
  args: string[],
  opts: RunOptions,
  policy: Policy,
  recorder: LearnRecorder | null,
  log: AuditSink | null,
  session: string,
  env: Record<string, string> | undefined,
  readOnly: string[],
  devices: string[],
): Promise<number> {
  let auditLog: AuditLog | null;
  try {
    auditLog = await auditFromOptions(opts, say);
  } catch (err) {
    say(`cannot open the audit log ${opts.audit}: ${(err as Error).message}`);
    policy.close();
    return EXIT_REFUSED;
  }
  const broker = new Broker({ policy, audit: teeAudit([recorder, log, auditLog]), log: (m) => say(m) });
  let result: LaunchResult;
  try {
    result = await launch({
      command,
      args,
      broker,
      session,
      hookFd: opts.fd,
      passFds: opts.passFd,
      devices,
      readOnly,
      env,
      allowUnconfined: opts.allowUnconfined,
      allowUnixSockets: opts.allowUnixSockets,
      // The syscall hook is the default way in; --preload is the fallback, instead of it.
      ...(opts.preload ? {} : { syscallHook: { continueAlways: recorder !== null } }),
      // Wait for the report before CMD starts whenever something must be said first.
      waitForReport: opts.report === true || opts.allowUnconfined === true,
      onReport: (report) => announce(report, opts),
      forwardSignals: FORWARDED_SIGNALS,
    });
  } catch (err) {
    if (err instanceof LaunchError || err instanceof ConfinementError) {
      say(err.message);
      return EXIT_REFUSED;
    }
    throw err;
  } finally {
    broker.close();
    await auditLog?.close();
  }

  const failure = describeFailure(result, command);
  if (failure) {
    say(failure);
    return result.status;
  }
  if (result.status !== 0 && broker.metrics.requests === 0 && broker.metrics.operations.size === 0)
    say(unbrokeredFailure(command, result.status, opts.preload === true));
  if (recorder && opts.learn !== undefined) {
    const written = await writeLearned(opts.learn, recorder, [...learnedOptions(opts), '--', command, ...args], result.status);
    if (written !== 0) return written;
  }
  return result.status;
}

/**
 * CMD failed and never asked the broker for anything: whatever it could not do, the kernel refused
 * (Landlock or the seccomp filter) without the broker hearing of it, so --log and --audit are silent.
 * Say so, and what helps.
 */
function unbrokeredFailure(command: string, status: number, preload: boolean): string {
  const why = `${command} exited with status ${status} and asked the broker for nothing`;
  if (!preload) {
    return (
      `${why}: if a call failed, the kernel refused it (Landlock or the seccomp filter), not the policy. ` +
      `The syscall hook brokers only the calls --report lists as trapped; --ro PATH lets the program read PATH itself`
    );
  }
  return (
    `${why}: if it failed to open a file, the kernel refused it (Landlock), not the policy. ` +
    `Its opens went to the real call (OPENHOOK_TRACE=1 shows where each went); --ro PATH lets it read PATH itself`
  );
}

function announce(report: LaunchReport, opts: RunOptions): void {
  if (report.fatal) return; // described after the helper exits
  if (opts.report) for (const line of formatReport(report)) say(line);
  if (!report.landlock.enforced && report.landlock.unavailable)
    say(`WARNING: running without Landlock (${report.landlock.unavailable}): the program can open any file you can`);
  if (!report.seccomp.enforced && report.seccomp.unavailable)
    say(`WARNING: running without the seccomp filter (${report.seccomp.unavailable})`);
}

/**
 * The options of a learn run that shape what the program could do, as arguments: the policy file's
 * header repeats them, since the learned rules hold only under the same options (--preload above all).
 */
function learnedOptions(opts: RunOptions): string[] {
  return [
    ...(opts.preload ? ['--preload'] : []),
    ...opts.ro.flatMap((path) => ['--ro', path]),
    ...opts.device.flatMap((path) => ['--device', path]),
    ...opts.passFd.flatMap((fd) => ['--pass-fd', String(fd)]),
    ...(opts.fd !== undefined ? ['--fd', String(opts.fd)] : []),
    ...(opts.session !== undefined ? ['--session', opts.session] : []),
    ...(opts.allowUnixSockets ? ['--allow-unix-sockets'] : []),
    ...(opts.allowUnconfined ? ['--allow-unconfined'] : []),
  ];
}

/** argv: the learn run's options, '--', and the command with its arguments. */
async function writeLearned(file: string, recorder: LearnRecorder, argv: string[], status: number): Promise<number> {
  const { formatPolicy, minimalRules } = await import('../launch/learned-policy.js');
  const rules = minimalRules(recorder.used);
  const words = argv.map(shellQuote).join(' ');
  const header = [
    `openhook policy learned by: openhook run --learn ${shellQuote(file)} ${words}`,
    `${new Date().toISOString()}: the program exited with status ${status}; ${recorder.requests} requests on ${recorder.used.size} paths`,
    `Review it, then enforce it: openhook run --policy ${shellQuote(file)} ${words}`,
  ];
  const tmp = `${file}.tmp-${process.pid}`;
  try {
    writeFileSync(tmp, formatPolicy(rules, header), { mode: 0o644 });
    renameSync(tmp, file);
  } catch (err) {
    try {
      unlinkSync(tmp);
    } catch {
      // nothing was written
    }
    say(`cannot write the learned policy to ${file}: ${(err as Error).message}`);
    return EXIT_REFUSED;
  }
  say(
    `learned ${recorder.requests} requests on ${recorder.used.size} paths; wrote ${rules.length} rules to ${file}${status !== 0 ? ` (the program exited with status ${status}: check that it did all it should)` : ''}`,
  );
  return 0;
}
