/**
 * `openhook demo`: the seed's scenario in a few seconds, on temporary files, narrated.
 *
 * A broker runs in this process. A client process, confined as `openhook run` confines programs so
 * that it cannot open the VM's files itself, gets them through the hook; a request outside the policy is denied; and the client creates a new file at run
 * time, as QEMU creates a snapshot overlay.
 */
import { mkdirSync, mkdtempSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { Command } from './commander.js';
import { verdict } from '../broker/audit.js';
import { Broker } from '../broker/broker.js';
import { describeFlags } from '../broker/flags.js';
import { display } from '../bytestring.js';
import { launch } from '../launch/launch.js';
import { formatAccess } from '../policy/access.js';
import { Policy } from '../policy/policy.js';
import { parseAllowFlag } from '../policy/rule.js';
import { demoQemuCommand } from './demo-qemu.js';

export function demoCommand(): Command {
  return new Command('demo')
    .description('show the open hook working, on temporary files')
    .option('--keep', 'keep the temporary files')
    .addCommand(demoQemuCommand())
    .action(async (opts: { keep?: boolean }) => {
      process.exitCode = await runDemo(opts.keep ?? false);
    });
}

async function runDemo(keep: boolean): Promise<number> {
  const say = (line = ''): void => void process.stdout.write(line + '\n');
  const root = mkdtempSync(join(tmpdir(), 'openhook-demo-'));
  const vm = join(root, 'vm');
  const secret = join(root, 'secret');
  mkdirSync(vm);
  mkdirSync(secret);
  writeFileSync(join(vm, 'base.img'), 'the base image of the VM\n', { mode: 0o600 });
  writeFileSync(join(secret, 'host-key'), 'a key the VM must never see\n', { mode: 0o600 });

  say(`openhook demo: a confined client gets its files from a broker (files in ${root})`);
  say();
  const rule = parseAllowFlag(`${vm}/:rwc`);
  const broker = new Broker({
    policy: new Policy([rule]),
    audit: {
      record(e) {
        say(`   broker: ${verdict(e).padEnd(12)} ${display(e.path)} ${describeFlags(e.flags)}  (${e.reason})`);
      },
    },
    log: (m) => say(`   broker: ${m}`),
  });
  say(`1. The broker starts with one rule: allow ${display(rule.path)}/ '${formatAccess(rule.access)}'. Everything else is denied.`);

  const here = fileURLToPath(import.meta.url);
  const packageRoot = join(dirname(here), '..', '..');
  const clientScript = here.replace(/demo\.(ts|js)$/, 'demo-client.$1');
  let confined = true;
  const result = await launch({
    command: process.execPath,
    args: [...(here.endsWith('.ts') ? ['--import', 'tsx'] : []), clientScript, vm, secret],
    broker,
    session: 'demo',
    readOnly: [packageRoot],
    allowUnconfined: true,
    waitForReport: true,
    stdio: ['ignore', 'inherit', 'inherit'],
    onReport: (report) => {
      confined = report.landlock.enforced && report.seccomp.enforced;
      if (confined) {
        say(
          `2. A client process starts confined: Landlock ABI ${report.landlock.abi} lets it read only ${report.landlock.rules.length} system paths (and the package),`,
        );
        say(
          `   and seccomp closes ${report.seccomp.rules.length} ways around that. It holds the hook socket as fd ${report.hookFd} (OPENHOOK_FD=${report.hookFd}).`,
        );
      } else {
        say('2. A client process starts, but this kernel lacks Landlock or seccomp: it is NOT confined here,');
        say('   so it could open the files itself. `openhook run` refuses to start in that case.');
      }
    },
  });
  broker.close();
  const code = result.status;
  let ok = code === 0;
  try {
    const snap = statSync(join(vm, 'snap1.qcow2'));
    const text = readFileSync(join(vm, 'snap1.qcow2'), 'utf8').trim();
    say();
    say(
      `7. After the client exits: vm/snap1.qcow2 exists (${snap.size} bytes, owner uid ${snap.uid}, mode ${(snap.mode & 0o777).toString(8)}): "${text}"`,
    );
    say("   The broker created it on the client's behalf; the client never held a path it could open itself.");
  } catch {
    ok = false;
    say('7. The snapshot file was not created: something is wrong.');
  }
  ok = (await unmodifiedProgram(say, vm, secret)) && ok;
  say();
  say(
    ok
      ? 'Demo finished: every open went through the broker, and the policy decided each one.'
      : `Demo failed (client exit status ${code}).`,
  );
  if (!keep) rmSync(root, { recursive: true, force: true });
  else say(`Files kept in ${root}`);
  return ok ? 0 : 1;
}

/**
 * The syscall hook: /bin/cat, which knows nothing of openhook, opens the image and the key with its
 * own open(2) calls. Each is trapped, decided by the same policy, and answered by the broker.
 */
async function unmodifiedProgram(say: (line?: string) => void, vm: string, secret: string): Promise<boolean> {
  say();
  say('8. Now a program that knows nothing of openhook: cat, under the syscall hook (the default of `openhook run`).');
  say('   Its own open calls are trapped by seccomp, decided by the same policy, and answered by the broker:');
  const broker = new Broker({
    policy: new Policy([parseAllowFlag(`${vm}/:r`)]),
    audit: { record: (e) => say(`   broker: ${verdict(e).padEnd(12)} ${display(e.path)} ${describeFlags(e.flags)}  (${e.reason})`) },
    log: (m) => say(`   broker: ${m}`),
  });
  let hooked = false;
  try {
    const result = await launch({
      command: 'cat',
      args: [join(vm, 'base.img'), join(secret, 'host-key')],
      broker,
      session: 'cat',
      syscallHook: {},
      waitForReport: true,
      stdio: ['ignore', 'inherit', 'inherit'],
      onReport: (report) => (hooked = report.notify.enforced),
    });
    if (!hooked) {
      say('   This kernel has no seccomp user notification (Linux 5.19 or later): `openhook run --preload` is the fallback.');
      return true;
    }
    // cat prints the image, fails on the key (status 1): both decisions were the broker's.
    say(`   cat exited with status ${result.status}: it read the image, and the key was refused.`);
    return result.status === 1;
  } finally {
    broker.close();
  }
}
