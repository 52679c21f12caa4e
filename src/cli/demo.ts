/**
 * `openhook demo`: the seed's scenario in a few seconds, on temporary files, narrated.
 *
 * A broker runs in this process. A client process, which cannot open the VM's files itself, gets them
 * through the hook; a request outside the policy is denied; and the client creates a new file at run
 * time, as QEMU creates a snapshot overlay.
 */
import { spawn } from 'node:child_process';
import { chmodSync, mkdirSync, mkdtempSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { Command } from 'commander';
import { Broker } from '../broker/broker.js';
import { describeFlags } from '../broker/flags.js';
import { display } from '../bytestring.js';
import { C, errnoName, native } from '../native.js';
import { formatAccess } from '../policy/access.js';
import { Policy } from '../policy/policy.js';
import { parseAllowFlag } from '../policy/rule.js';

const NOBODY = 65534;

export function demoCommand(): Command {
  return new Command('demo')
    .description('show the open hook working, on temporary files')
    .option('--keep', 'keep the temporary files')
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
  const asRoot = process.getuid?.() === 0;
  if (asRoot) chmodSync(root, 0o711); // nobody may traverse to the dirs, but open nothing in them

  say(`openhook demo: a confined client gets its files from a broker (files in ${root})`);
  say();
  const rule = parseAllowFlag(`${vm}/:rwc`);
  const broker = new Broker({
    policy: new Policy([rule]),
    audit: {
      record(e) {
        const verdict = e.allowed && e.errno === 0 ? 'ALLOW' : `DENY ${errnoName(e.errno)}`;
        say(`   broker: ${verdict.padEnd(12)} ${display(e.path)} ${describeFlags(e.flags)}  (${e.reason})`);
      },
    },
    log: (m) => say(`   broker: ${m}`),
  });
  say(`1. The broker starts with one rule: allow ${display(rule.path)}/ '${formatAccess(rule.access)}'. Everything else is denied.`);

  const [brokerEnd, clientEnd] = native.socketpair(C.SOCK_SEQPACKET, false);
  broker.adopt(brokerEnd, 'seqpacket');
  say(`2. A client process starts ${asRoot ? `as uid ${NOBODY} (nobody)` : 'as your own user'}, holding the hook socket as fd 3 (OPENHOOK_FD=3).`);
  if (!asRoot) say('   (not root: the client could open the files itself here; `openhook run` confines it properly.)');

  const here = fileURLToPath(import.meta.url);
  const clientScript = here.replace(/demo\.(ts|js)$/, 'demo-client.$1');
  const child = spawn(process.execPath, [...(here.endsWith('.ts') ? ['--import', 'tsx'] : []), clientScript, vm, secret], {
    stdio: ['ignore', 'inherit', 'inherit', clientEnd],
    env: { ...process.env, OPENHOOK_FD: '3' },
    ...(asRoot ? { uid: NOBODY, gid: NOBODY } : {}),
  });
  native.close(clientEnd);
  const code: number = await new Promise((resolve) => child.on('exit', (c, s) => resolve(c ?? (s ? 128 : 1))));
  broker.close();

  let ok = code === 0;
  try {
    const snap = statSync(join(vm, 'snap1.qcow2'));
    const text = readFileSync(join(vm, 'snap1.qcow2'), 'utf8').trim();
    say();
    say(`7. After the client exits: vm/snap1.qcow2 exists (${snap.size} bytes, owner uid ${snap.uid}, mode ${(snap.mode & 0o777).toString(8)}): "${text}"`);
    say('   The broker created it on the client\'s behalf; the client never held a path it could open itself.');
  } catch {
    ok = false;
    say('7. The snapshot file was not created: something is wrong.');
  }
  say();
  say(ok ? 'Demo finished: every open went through the broker, and the policy decided each one.' : `Demo failed (client exit status ${code}).`);
  if (!keep) rmSync(root, { recursive: true, force: true });
  else say(`Files kept in ${root}`);
  return ok ? 0 : 1;
}
