/**
 * `openhook demo qemu`: the QEMU scenario on temporary images, narrated. Unmodified QEMU runs under
 * `openhook run --preload`, so it cannot open files itself and gets every image from the broker;
 * over QMP it is refused an image outside the policy, takes a snapshot into a new overlay that it
 * creates through the hook, writes to it, and commits it back into the base. The images are checked
 * with qemu-img and qemu-io at each step. Needs qemu-system-x86_64, qemu-img and qemu-io (Debian:
 * qemu-system-x86, qemu-utils); no KVM.
 */
import { execFileSync, spawnSync } from 'node:child_process';
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { Command } from './commander.js';
import { QmpError } from '../qemu/errors.js';
import { runJob } from '../qemu/jobs.js';
import { openhookRun, spawnQemu, type QemuProcess } from '../qemu/spawn.js';

const MACHINE = ['-machine', 'pc,accel=tcg', '-S', '-nodefaults', '-display', 'none', '-m', '128'];
const A = 0x41,
  B = 0x42;

export function demoQemuCommand(): Command {
  return new Command('qemu')
    .description('the QEMU scenario: confined QEMU, a runtime snapshot and commit, every image open through the broker')
    .option('--keep', 'keep the temporary images')
    .action(async (opts: { keep?: boolean }) => {
      process.exitCode = await runQemuDemo(opts.keep ?? false);
    });
}

let readerGone = false; // stdout's reader went away (`| head`): keep quiet, and stop
const say = (line = ''): void => void (readerGone || process.stdout.write(line + '\n'));
const pause = (): Promise<void> => new Promise((r) => setTimeout(r, 30)); // lets stderr lines catch up with QMP

/** The command that runs this CLI, from dist (node main.js) or from src (node --import tsx main.ts). */
function cliCommand(): string[] {
  const here = fileURLToPath(import.meta.url);
  const main = here.replace(/demo-qemu\.(ts|js)$/, 'main.$1');
  return [process.execPath, ...(here.endsWith('.ts') ? ['--import', 'tsx'] : []), main];
}

function missingTools(cli: string[]): string | null {
  for (const tool of ['qemu-system-x86_64', 'qemu-img', 'qemu-io']) {
    if (spawnSync(tool, ['--version'], { stdio: 'ignore' }).status !== 0)
      return `${tool} is not installed (Debian: apt-get install qemu-system-x86 qemu-utils)`;
  }
  const help = spawnSync(cli[0]!, [...cli.slice(1), 'run', '--help'], { encoding: 'utf8' });
  if (help.status !== 0 || !help.stdout.includes('--preload'))
    return 'this build of openhook has no `run --preload` (the launcher and the interposer)';
  return null;
}

/** True if every byte of [offset, offset+length) is `pattern`; reads without locks, so it works while QEMU runs. */
function holds(image: string, pattern: number, offset: number, length: number): boolean {
  const r = spawnSync('qemu-io', ['-f', 'qcow2', '-r', '-U', '-c', `read -P ${pattern} ${offset} ${length}`, image], { encoding: 'utf8' });
  return r.status === 0 && !/fail|error/i.test(r.stdout + r.stderr);
}

function contents(image: string): string {
  const first = holds(image, B, 0, 4096) ? "'B'" : holds(image, A, 0, 4096) ? "'A'" : 'other bytes';
  const next = holds(image, A, 4096, 4096) ? "'A'" : holds(image, 0, 4096, 4096) ? 'zeros (read from below)' : 'other bytes';
  return `first 4 KiB ${first}, next 4 KiB ${next}`;
}

function backingOf(image: string): string {
  const info = JSON.parse(execFileSync('qemu-img', ['info', '--output=json', '-U', image], { encoding: 'utf8' })) as {
    'backing-filename'?: string;
  };
  return info['backing-filename'] ?? '(none)';
}

async function runQemuDemo(keep: boolean): Promise<number> {
  const cli = cliCommand();
  const missing = missingTools(cli);
  if (missing) {
    say(`openhook demo qemu: ${missing}`);
    return 1;
  }
  const root = mkdtempSync(join(tmpdir(), 'openhook-demo-qemu-'));
  const vm = join(root, 'vm'),
    outside = join(root, 'outside');
  mkdirSync(vm);
  mkdirSync(outside);
  const base = join(vm, 'base.qcow2'),
    overlay = join(vm, 'overlay.qcow2'),
    secret = join(outside, 'secret.qcow2');
  execFileSync('qemu-img', ['create', '-q', '-f', 'qcow2', base, '64M']);
  execFileSync('qemu-io', ['-c', `write -P ${A} 0 64k`, base], { stdio: 'ignore' });
  execFileSync('qemu-img', ['create', '-q', '-f', 'qcow2', secret, '64M']);

  let allowed = 0,
    refused = 0;
  const narrate = (line: string): void => {
    // ALLOW, DENY errno (the policy refused), or FAIL errno (allowed, but the open failed: QEMU
    // probing whether a file exists).
    const decision = /^openhook: (ALLOW|(DENY|FAIL) \w+) (.*)$/.exec(line);
    if (decision) {
      if (decision[1] === 'ALLOW') allowed++;
      else if (decision[2] === 'DENY') refused++;
      say(`   broker: ${decision[1]!.padEnd(12)} ${decision[3]}`);
    } else if (line.trim()) {
      say(`   ${line.startsWith('openhook') ? '' : 'qemu: '}${line}`);
    }
  };

  say(`openhook demo qemu: unmodified QEMU, confined, gets every image from the broker (files in ${root})`);
  say();
  say("1. Two images: vm/base.qcow2 (64 MiB; its first 64 KiB hold 'A') and outside/secret.qcow2.");
  const runHelp = spawnSync(cli[0]!, [...cli.slice(1), 'run', '--help'], { encoding: 'utf8' }).stdout;
  let policyArgs: string[];
  if (runHelp.includes('--policy')) {
    const file = join(root, 'vm.toml');
    writeFileSync(
      file,
      `# the VM may read, write and create files in its own directory, and nothing else\n[[rule]]\nallow = "${vm}/"\naccess = "rwc"\n`,
    );
    policyArgs = ['--policy', file];
    say('   The policy, vm.toml:');
    say(`     [[rule]]\n     allow = "${vm}/"\n     access = "rwc"`);
  } else {
    policyArgs = ['--allow', `${vm}/:rwc`];
    say(`   The policy: --allow ${vm}/:rwc`);
  }
  say('   Everything else is denied.');
  say();

  const disk = [
    '-blockdev',
    `driver=file,node-name=base-file,filename=${base}`,
    '-blockdev',
    'driver=qcow2,node-name=base,file=base-file',
    '-device',
    'virtio-blk-pci,drive=base,id=disk0',
  ];
  say('2. QEMU starts under `openhook run --preload`. Landlock and seccomp keep it from opening files');
  say('   itself; the interposer sends its opens to the broker. QMP is on its stdin, a socket it inherits.');
  say(`   $ openhook run --log --preload ${policyArgs.join(' ')} -- \\`);
  say(`       qemu-system-x86_64 ${MACHINE.join(' ')} \\`);
  for (let i = 0; i < disk.length; i += 2) say(`       ${disk[i]} ${disk[i + 1]} \\`);
  say('       -chardev socket,id=qmp,fd=0 -mon chardev=qmp,mode=control');
  const started = performance.now();
  let q: QemuProcess | undefined;
  // Ctrl-C, SIGTERM, or a reader that went away: stop QEMU (run passes SIGTERM on) and clean up,
  // rather than leave a paused VM behind.
  let stopping = false;
  const stopEarly = (status: number) => (): void => {
    readerGone ||= status === 1;
    if (stopping) return;
    stopping = true;
    q?.child.kill('SIGTERM');
    void (q?.exited ?? Promise.resolve()).then(() => {
      if (!keep) rmSync(root, { recursive: true, force: true });
      process.exit(status);
    });
  };
  const onSigint = stopEarly(130),
    onSigterm = stopEarly(143),
    onStdoutError = stopEarly(1);
  process.once('SIGINT', onSigint).once('SIGTERM', onSigterm);
  process.stdout.on('error', onStdoutError);
  const unhook = (): void => {
    process.off('SIGINT', onSigint).off('SIGTERM', onSigterm);
    process.stdout.off('error', onStdoutError);
  };
  try {
    q = await spawnQemu([...MACHINE, ...disk], { prefix: openhookRun(['--log', '--preload', ...policyArgs]), onStderrLine: narrate });
  } catch (err) {
    unhook();
    say(`   QEMU did not start: ${(err as Error).message}`);
    if (!keep) rmSync(root, { recursive: true, force: true });
    return 1;
  }
  let ok = true;
  const check = (condition: boolean, what: string): void => {
    say(`   ${condition ? 'ok' : 'FAILED'}: ${what}`);
    if (!condition) ok = false;
  };
  try {
    const version = q.qmp.greeting.version.qemu;
    await pause();
    say(
      `   QMP ready after ${Math.round(performance.now() - started)} ms: QEMU ${version.major}.${version.minor}.${version.micro}; the disk (virtio-blk) is vm/base.qcow2.`,
    );
    say();

    say('3. Over QMP: blockdev-add of outside/secret.qcow2, which no rule allows.');
    try {
      await q.qmp.execute('blockdev-add', { driver: 'file', 'node-name': 'secret', filename: secret });
      check(false, 'QEMU opened the secret image');
    } catch (err) {
      await pause();
      if (!(err instanceof QmpError)) throw err;
      say(`   QEMU answers: ${err.desc}`);
      check(/Permission denied/.test(err.desc), 'refused with Permission denied');
    }
    say();

    say('4. Over QMP: blockdev-snapshot-sync into a new overlay, vm/overlay.qcow2. QEMU creates the file');
    say("   through the hook, and writes the base's path into its header:");
    await q.qmp.execute('blockdev-snapshot-sync', {
      'node-name': 'base',
      'snapshot-file': overlay,
      'snapshot-node-name': 'overlay',
      format: 'qcow2',
    });
    await pause();
    const backing = backingOf(overlay);
    say(`   overlay.qcow2 backing file: ${backing}`);
    check(backing === base, 'the header names the real path of the base');
    say();

    say("5. The guest writes 'B' over the first 4 KiB of its disk (qemu-io through the virtio-blk device):");
    await q.qmp.execute('human-monitor-command', {
      'command-line': `qemu-io -d /machine/peripheral/disk0/virtio-backend "write -P ${B} 0 4k"`,
    });
    await q.qmp.execute('human-monitor-command', { 'command-line': 'qemu-io -d /machine/peripheral/disk0/virtio-backend "flush"' });
    say(`   overlay.qcow2: ${contents(overlay)}`);
    say(`   base.qcow2:    ${contents(base)}`);
    check(holds(overlay, B, 0, 4096) && holds(base, A, 0, 4096), 'the write landed in the overlay, the base is untouched');
    say();

    say('6. Over QMP: block-commit merges the overlay into the base; the disk is on base.qcow2 again.');
    await runJob(
      q.qmp,
      'block-commit',
      { 'job-id': 'commit', device: 'overlay', 'auto-dismiss': false },
      { complete: true, timeout: 60_000 },
    );
    const block = await q.qmp.execute<Array<{ qdev: string; inserted?: { 'node-name': string } }>>('query-block');
    const node = block.find((b) => b.qdev.includes('disk0'))?.inserted?.['node-name'];
    await pause();
    check(node === 'base', `the disk's node is now '${node}'`);
    say();
  } catch (err) {
    ok = false;
    say(`   FAILED: ${(err as Error).message}`);
  }
  const exit = await q.quit();
  unhook();
  await pause();
  say(`7. QEMU quits (exit status ${exit.signal ?? exit.code}). The images, read with qemu-io:`);
  say(`   base.qcow2:    ${contents(base)}`);
  check(holds(base, B, 0, 4096) && holds(base, A, 4096, 4096), "the base holds the guest's write, and the rest as it was");
  say();
  ok &&= exit.code === 0;
  say(
    ok
      ? `Demo finished: QEMU never opened an image itself; the broker decided every open (${allowed} allowed, ${refused} refused).`
      : 'Demo failed: see the FAILED lines above.',
  );
  if (!keep) rmSync(root, { recursive: true, force: true });
  else say(`Files kept in ${root}`);
  return ok ? 0 : 1;
}
