/**
 * The launch helper's report: what it enforced before exec, parsed from its lines (format in
 * native/launch.c), and printed for `openhook run --report`.
 */
import { display, type ByteString } from '../bytestring.js';

export interface LandlockRule {
  /** Landlock's names for the rights granted: execute, read_file, ... */
  rights: string[];
  /** 'beneath' a directory, or one 'file' */
  kind: 'beneath' | 'file';
  path: ByteString;
}

export interface SeccompRule {
  /** a syscall name, or '*' for every syscall */
  syscall: string;
  /** a condition on the arguments ('domain==AF_UNIX'), or '-' for none */
  condition: string;
  /** 'errno EPERM', 'kill-process' */
  action: string;
}

export interface DeviceGrant {
  path: ByteString;
  /** Landlock's names for the rights granted on the node */
  rights: string[];
  /** Landlock handles IOCTL_DEV (ABI 5+): ioctls are allowed on granted devices only */
  ioctlEnforced: boolean;
}

export interface LaunchReport {
  /** the fd the hook socket was given (OPENHOOK_FD) */
  hookFd: number | null;
  /** fds kept open at their numbers (--pass-fd) */
  passedFds: number[];
  /** character devices granted (--device) */
  devices: DeviceGrant[];
  fdsClosed: boolean;
  noNewPrivs: boolean;
  /** the signal CMD gets if the process that launched it (and holds its broker) dies */
  parentDeathSignal: string | null;
  landlock: {
    enforced: boolean;
    /** the ABI the kernel reports, and the one whose rights were handled (the newest known) */
    abi: number;
    usedAbi: number;
    errata: number | null;
    handled: string[];
    scoped: string[];
    rules: LandlockRule[];
    skipped: Array<{ path: ByteString; reason: string }>;
    /** why Landlock was not applied (an errno name), when it was not */
    unavailable: string | null;
  };
  capabilities: { dropped: boolean; boundingDropped: number | null } | null;
  seccomp: { enforced: boolean; arch: string; rules: SeccompRule[]; instructions: number; unavailable: string | null };
  /** the syscall hook: the calls trapped into seccomp user notifications, answered by the broker */
  notify: { enforced: boolean; trapped: string[] };
  /** the helper refused to start CMD: which stage, the errno name, and what */
  fatal: { stage: string; code: string; message: string } | null;
  /** the command it was about to exec */
  exec: string | null;
  /** exec failed: the errno name */
  execError: string | null;
  /** lines this parser did not know (a newer helper) */
  unknown: string[];
}

export function emptyReport(): LaunchReport {
  return {
    hookFd: null,
    passedFds: [],
    devices: [],
    fdsClosed: false,
    noNewPrivs: false,
    parentDeathSignal: null,
    landlock: { enforced: false, abi: 0, usedAbi: 0, errata: null, handled: [], scoped: [], rules: [], skipped: [], unavailable: null },
    capabilities: null,
    seccomp: { enforced: false, arch: '', rules: [], instructions: 0, unavailable: null },
    notify: { enforced: false, trapped: [] },
    fatal: null,
    exec: null,
    execError: null,
    unknown: [],
  };
}

/** Undoes the helper's \xNN escapes; the result is a byte string. */
function unescape(field: string): ByteString {
  return field.replace(/\\x([0-9a-f]{2})/g, (_, hex: string) => String.fromCharCode(parseInt(hex, 16)));
}

const list = (text: string | undefined): string[] => (!text || text === '-' ? [] : text.split(','));

/** Adds one report line (without its newline; read as latin1) to report. */
export function parseReportLine(report: LaunchReport, line: string): void {
  if (line === '') return;
  const f = line.split('\t').map(unescape);
  const ll = report.landlock;
  switch (`${f[0]} ${f[1] ?? ''}`) {
    case 'fds hook':
      report.hookFd = Number(f[2]);
      return;
    case 'fds pass':
      report.passedFds.push(Number(f[2]));
      return;
    case 'fds closed':
      report.fdsClosed = true;
      return;
    case 'device grant':
      report.devices.push({ rights: list(f[2]), ioctlEnforced: f[3] === 'ioctl-enforced', path: f[4] ?? '' });
      return;
    case 'no_new_privs set':
      report.noNewPrivs = true;
      return;
    case 'parent watched':
      report.parentDeathSignal = f[3] ?? '';
      return;
    case 'landlock abi':
      ll.abi = Number(f[2]);
      ll.usedAbi = Number(f[3]);
      return;
    case 'landlock errata':
      ll.errata = Number(f[2]);
      return;
    case 'landlock handled':
      ll.handled = list(f[2]);
      return;
    case 'landlock scoped':
      ll.scoped = list(f[2]);
      return;
    case 'landlock rule':
      ll.rules.push({ rights: list(f[2]), kind: f[3] === 'file' ? 'file' : 'beneath', path: f[4] ?? '' });
      return;
    case 'landlock skip':
      ll.skipped.push({ reason: f[2] ?? '', path: f[3] ?? '' });
      return;
    case 'landlock enforced':
      ll.enforced = true;
      return;
    case 'landlock unavailable':
      ll.unavailable = f[2] ?? 'unknown';
      return;
    case 'capabilities dropped':
    case 'capabilities none':
      report.capabilities = { dropped: f[1] === 'dropped', boundingDropped: f[2] === 'bounding-dropped' ? Number(f[3]) : null };
      return;
    case 'seccomp arch':
      report.seccomp.arch = f[2] ?? '';
      return;
    case 'seccomp rule':
      report.seccomp.rules.push({ syscall: f[2] ?? '', condition: f[3] ?? '-', action: f[4] ?? '' });
      return;
    case 'seccomp enforced':
      report.seccomp.enforced = true;
      report.seccomp.instructions = Number(f[2]);
      return;
    case 'seccomp unavailable':
      report.seccomp.unavailable = f[2] ?? 'unknown';
      return;
    case 'notify arch':
      return;
    case 'notify trap':
      report.notify.trapped.push(f[2] ?? '');
      return;
    case 'notify enforced':
      report.notify.enforced = true;
      return;
  }
  switch (f[0]) {
    case 'fatal':
      report.fatal = { stage: f[1] ?? '', code: f[2] ?? '', message: f[3] ?? '' };
      return;
    case 'exec':
      report.exec = f[1] ?? '';
      return;
    case 'error':
      report.execError = f[2] ?? '';
      return;
    case 'ready':
      return;
  }
  report.unknown.push(line);
}

/** The report for people: what `openhook run --report` prints. */
export function formatReport(r: LaunchReport): string[] {
  const out: string[] = [];
  const ll = r.landlock;
  const passed = r.passedFds.length ? `; passed fds: ${r.passedFds.join(', ')}` : '';
  out.push(
    `hook: fd ${r.hookFd ?? '?'} (OPENHOOK_FD)${passed}; ${r.fdsClosed ? 'every other fd above stdio closed' : 'other fds NOT closed'}`,
  );
  out.push(`no_new_privs: ${r.noNewPrivs ? 'set' : 'NOT set'}`);
  out.push(
    `if the broker's process dies: ${r.parentDeathSignal ? `the program gets ${r.parentDeathSignal}` : 'the program is NOT stopped'}`,
  );
  if (ll.enforced) {
    out.push(
      `landlock: ABI ${ll.abi}${ll.usedAbi !== ll.abi ? ` (enforcing the rights of ABI ${ll.usedAbi}, the newest openhook knows)` : ''}${ll.errata !== null ? `, errata ${ll.errata}` : ''}`,
    );
    out.push(`  handled access rights: ${ll.handled.join(' ')}`);
    out.push(`  scoped: ${ll.scoped.length ? ll.scoped.join(' ') : 'nothing (needs ABI 6)'}`);
    for (const rule of ll.rules)
      out.push(`  allow ${rule.rights.join(',')} ${rule.kind === 'beneath' ? 'beneath' : 'on file'} ${display(rule.path)}`);
    for (const s of ll.skipped) out.push(`  skipped ${display(s.path)} (${s.reason})`);
    for (const d of r.devices) {
      const ioctls = d.ioctlEnforced
        ? 'ioctls allowed on this node (Landlock IOCTL_DEV), refused on devices not granted'
        : `ioctls are not restricted by Landlock (ABI ${ll.usedAbi} < 5, no IOCTL_DEV)`;
      out.push(`  device ${display(d.path)}: ${d.rights.join(',')}; ${ioctls}`);
    }
    out.push('  everything else: denied');
  } else {
    out.push(`landlock: NOT enforced (${ll.unavailable ?? 'unknown'})`);
  }
  if (r.capabilities) {
    out.push(
      `capabilities: ${r.capabilities.dropped ? 'all dropped' : 'none held'}${r.capabilities.boundingDropped !== null ? `, bounding set emptied (${r.capabilities.boundingDropped})` : ''}`,
    );
  }
  const sc = r.seccomp;
  if (sc.enforced) {
    out.push(`seccomp: filter for ${sc.arch}, ${sc.rules.length} rules, ${sc.instructions} BPF instructions`);
    for (const rule of sc.rules) {
      const what =
        rule.syscall === '*'
          ? `any syscall with ${rule.condition}`
          : rule.condition === '-'
            ? rule.syscall
            : `${rule.syscall} with ${rule.condition}`;
      out.push(`  ${what}: ${rule.action}`);
    }
    out.push('  everything else: allowed');
  } else {
    out.push(`seccomp: NOT enforced (${sc.unavailable ?? 'unknown'})`);
  }
  if (r.notify.enforced) {
    out.push(
      `mode: syscall hook (seccomp user notification): ${r.notify.trapped.join(', ')} answered by the broker, whatever libc the program uses`,
    );
  } else {
    out.push('mode: hook socket only (no syscall hook): the program opens files through OPENHOOK_FD, or the interposer with --preload');
  }
  for (const line of r.unknown) out.push(`(unrecognised: ${line})`);
  return out;
}
