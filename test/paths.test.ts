/**
 * Invariant 2, the lexical half: the decision is made on the normalised absolute path, and every
 * trick a client can write into a name is refused or resolves to exactly the file it names.
 */
import assert from 'node:assert/strict';
import { mkdirSync, statSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { tempDir } from './helpers.js';
import { closeAll, inodeOf, inProcessBroker, openFrame, RawClient, type InProcessBroker } from './raw.js';
import { E } from '../src/errno.js';

const { EACCES, EINVAL, ENOENT, ENAMETOOLONG, EPROTO } = E;

const tmp = tempDir('openhook-paths-');
const vm = join(tmp.path, 'vm');
const vmx = join(tmp.path, 'vmX');
mkdirSync(join(vm, 'sub'), { recursive: true });
mkdirSync(vmx);
writeFileSync(join(vm, 'disk'), 'inside');
writeFileSync(join(vm, 'sub', 'f'), 'inside sub');
writeFileSync(join(vmx, 'disk'), 'a sibling with a common prefix');
const raw = (s: string): Buffer => Buffer.from(s, 'latin1');
/** Names that are not UTF-8, and two spellings of 'é' that must stay two different files. */
const notUtf8 = Buffer.concat([raw(`${vm}/`), Buffer.from([0x66, 0xff, 0xfe, 0x80])]);
const latin1E = Buffer.concat([raw(`${vm}/caf`), Buffer.from([0xe9])]);
const utf8E = Buffer.concat([raw(`${vm}/caf`), Buffer.from([0xc3, 0xa9])]);
writeFileSync(notUtf8, 'bytes');
writeFileSync(latin1E, 'latin1');
writeFileSync(utf8E, 'utf-8');
const ino = (p: string | Buffer): number => statSync(p).ino;

describe('paths: what a name may say', () => {
  let broker: InProcessBroker;
  let client: RawClient;
  before(() => {
    broker = inProcessBroker(tmp.path, 'paths', { allow: [`${vm}/:rw`] });
    client = RawClient.connect(broker.socket);
  });
  after(() => {
    client.close();
    broker.close();
    tmp.cleanup();
  });

  async function open(name: string | Buffer): Promise<{ result: number; ino: number }> {
    const r = (await client.request(openFrame(typeof name === 'string' ? raw(name) : name)))!;
    const got = { result: r.result, ino: r.fds.length ? inodeOf(r.fds[0]!) : 0 };
    closeAll(r.fds);
    return got;
  }

  it("refuses '..' in any position, without resolving it", async () => {
    for (const name of [
      `${vm}/../vm/disk`,
      `${vm}/sub/../disk`,
      `${vm}/disk/..`,
      `${vm}/..`,
      `/../${vm}/disk`,
      `${vm}/sub/..//disk`,
      `${vm}/./../vm/disk`,
    ]) {
      assert.deepEqual(await open(name), { result: -EACCES, ino: 0 }, name);
    }
  });

  it("collapses '//' and '/./' to the file they name", async () => {
    for (const name of [`${vm}//disk`, `/${vm}/disk`, `${vm}/./disk`, `${vm}/././/./disk`, `${vm.replaceAll('/', '//')}//disk`]) {
      assert.deepEqual(await open(name), { result: 0, ino: ino(join(vm, 'disk')) }, name);
    }
  });

  it('refuses relative and empty names', async () => {
    assert.equal((await open('disk')).result, -EINVAL);
    assert.equal((await open(`.${vm}/disk`)).result, -EINVAL);
    assert.equal((await open(' /vm/disk')).result, -EINVAL);
    const empty = (await client.request(openFrame(Buffer.alloc(0))))!;
    assert.equal(empty.result, -EPROTO, 'len 0 is a malformed frame');
  });

  it('refuses a NUL byte anywhere inside the stated length', async () => {
    for (const name of [`${vm}/disk\0`, `${vm}/disk\0/../../etc/passwd`, `\0${vm}/disk`, `${vm}/\0`]) {
      assert.equal((await open(name)).result, -EINVAL, JSON.stringify(name));
    }
  });

  it('refuses names beyond PATH_MAX and components beyond NAME_MAX', async () => {
    const deep = `${vm}/` + 'a/'.repeat(2100);
    assert.ok(deep.length >= 4096);
    assert.equal((await open(deep)).result, -ENAMETOOLONG);
    assert.equal((await open(`${vm}/${'b'.repeat(256)}`)).result, -ENAMETOOLONG);
    assert.equal((await open(`${vm}/sub/${'b'.repeat(300)}/f`)).result, -ENAMETOOLONG);
    assert.equal((await open(`${vm}/${'b'.repeat(255)}`)).result, -ENOENT, 'exactly NAME_MAX is a legal name');
    const justShort = `${vm}/` + 'c/'.repeat((4095 - vm.length - 1) >> 1);
    assert.ok(justShort.length < 4096);
    assert.equal((await open(justShort)).result, -ENOENT);
  });

  it('opens names that are not UTF-8 as their exact bytes, never as a decoded look-alike', async () => {
    assert.deepEqual(await open(notUtf8), { result: 0, ino: ino(notUtf8) });
    assert.deepEqual(await open(latin1E), { result: 0, ino: ino(latin1E) });
    assert.deepEqual(await open(utf8E), { result: 0, ino: ino(utf8E) });
    assert.notEqual(ino(latin1E), ino(utf8E));
    // The bytes a lossy decoder would produce (U+FFFD) name nothing.
    const replaced = Buffer.concat([raw(`${vm}/f`), Buffer.from('\ufffd\ufffd\ufffd', 'utf8')]);
    assert.equal((await open(replaced)).result, -ENOENT);
  });

  it('does not let a common prefix pass for a parent: /…/vmX is not under /…/vm/', async () => {
    assert.equal((await open(join(vmx, 'disk'))).result, -EACCES);
    assert.equal((await open(`${vm}X/disk`)).result, -EACCES);
    assert.equal((await open(`${vm}/../vmX/disk`)).result, -EACCES);
    assert.equal((await open(vm.slice(0, -1))).result, -EACCES);
    assert.deepEqual(await open(join(vm, 'sub', 'f')), { result: 0, ino: ino(join(vm, 'sub', 'f')) });
  });
});
