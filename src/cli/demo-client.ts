/**
 * The client process of `openhook demo`. It receives the hook socket as OPENHOOK_FD and the VM's and
 * the secret directory's paths as arguments; it prints what it does and what it gets.
 */
import { closeSync, openSync, readSync, writeSync } from 'node:fs';
import { join } from 'node:path';
import { connect } from '../client/client.js';

const [vm, secret] = process.argv.slice(2) as [string, string];
const say = (line: string): void => void process.stdout.write(line + '\n');

function tryDirect(path: string): string {
  try {
    closeSync(openSync(path, 'r'));
    return 'it succeeded (not confined)';
  } catch (err) {
    return `${(err as NodeJS.ErrnoException).code}, as it should`;
  }
}

function readAll(fd: number): string {
  const buf = Buffer.alloc(4096);
  const n = readSync(fd, buf, 0, buf.length, 0);
  return buf.toString('utf8', 0, n).trim();
}

const base = join(vm, 'base.img');
say(`3. The client tries to open ${base} itself: ${tryDirect(base)}.`);

await using hook = await connect();
say(`4. Through the hook (${hook.tagged ? 'tagged opens' : 'RFC frames'}), the client asks for ${base}, read-only:`);
const fd = await hook.open(base, 'r');
say(`   client: got fd ${fd}; it reads "${readAll(fd)}"`);
closeSync(fd);

const key = join(secret, 'host-key');
say(`5. The client asks for ${key}:`);
try {
  const leaked = await hook.open(key, 'r');
  say(`   client: got fd ${leaked}: THE POLICY FAILED`);
  process.exit(1);
} catch (err) {
  say(`   client: refused: ${(err as Error).message}`);
}

const snap = join(vm, 'snap1.qcow2');
say(`6. At run time, the client creates a new file, as QEMU does for a snapshot: ${snap} (wx+, mode 0640)`);
const out = await hook.open(snap, 'wx+', 0o640);
writeSync(out, 'overlay written at run time\n');
closeSync(out);
say(`   client: got fd ${out} for the new file and wrote to it`);
