/**
 * The native fast path (openFile, native/files.c) states a security rule of its own: it reopens at
 * once what it found when that is a regular file with one link and the flags do not ask for a
 * directory, and hands everything else back unopened for the resolver's type and link check. These
 * tests hold the two statements of the rule together, through public calls only: for every file
 * type × link count × flags,
 * - the fast path reopens exactly when the resolver's check allows under its strictest options
 *   (no directories, no FIFOs, hard links refused): what the fast path opens, every rule allows;
 * - for every rule's options, Resolver.open gives the same answer with the fast path as without it.
 * Resolver.open takes the path without the fast path when a verify hook is set (the hook must see
 * the O_PATH fd before any I/O open); a hook that allows everything leaves only the check.
 */
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { linkSync, mkdirSync, symlinkSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { after, describe, it } from 'node:test';
import { codeOf, Resolver, type HardlinkRule, type OpenOptions } from '../src/resolver/resolver.js';
import { C, native } from '../src/native.js';
import { tempDir } from './helpers.js';

const tmp = tempDir('openhook-fast-path-');
const tree = join(tmp.path, 'tree');
mkdirSync(join(tree, 'dir'), { recursive: true });
writeFileSync(join(tree, 'one-link'), 'one');
writeFileSync(join(tree, 'two-links'), 'two');
linkSync(join(tree, 'two-links'), join(tree, 'two-links-too'));
symlinkSync('one-link', join(tree, 'symlink'));
execFileSync('mkfifo', [join(tree, 'fifo')]);
execFileSync('mknod', [join(tree, 'char-dev'), 'c', '1', '3']);
execFileSync('mknod', [join(tree, 'block-dev'), 'b', '7', '200']);
const sock = native.listenUnix(Buffer.from(join(tree, 'sock')), C.SOCK_STREAM, 0o600, 1);
const root = native.open(tree, C.O_PATH | C.O_DIRECTORY, 0);
// Both ends of the FIFO are held open, so that a fast path that wrongly opened it fails the test
// instead of blocking it forever.
const fifoEnds = native.open(join(tree, 'fifo'), C.O_RDWR | C.O_NONBLOCK, 0);

after(() => {
  native.close(sock.fd);
  native.close(root);
  native.close(fifoEnds);
  tmp.cleanup();
});

const names = ['one-link', 'two-links', 'dir', 'symlink', 'fifo', 'char-dev', 'block-dev', 'sock', 'missing'];
const flagSets = [
  C.O_RDONLY,
  C.O_WRONLY,
  C.O_RDWR,
  C.O_RDONLY | C.O_TRUNC,
  C.O_WRONLY | C.O_APPEND,
  C.O_RDONLY | C.O_DIRECTORY,
  C.O_RDONLY | C.O_NOFOLLOW,
  C.O_WRONLY | C.O_NOFOLLOW,
  C.O_RDONLY | C.O_NONBLOCK,
  C.O_WRONLY | C.O_NONBLOCK,
  C.O_RDONLY | C.O_DIRECTORY | C.O_NOFOLLOW,
];
const strictest: OpenOptions = { followSymlinks: false, directories: false, fifos: false, hardlinks: 'refuse' };
const RESOLVE = C.RESOLVE_BENEATH | C.RESOLVE_NO_MAGICLINKS | C.RESOLVE_NO_XDEV | C.RESOLVE_NO_SYMLINKS;
const allowAll = (): number => 0;

/** An fd or -errno from Resolver.open, with the fd closed: only the answer matters here. */
function answer(resolver: Resolver, name: string, flags: number, options: OpenOptions): number {
  const fd = codeOf(resolver.open(root, name, flags, 0, options));
  if (fd >= 0) native.close(fd);
  return fd >= 0 ? 0 : fd;
}

describe('the native fast path and the resolver state one rule', () => {
  const resolver = new Resolver();
  after(() => resolver.close());

  it('the fast path reopens exactly what the resolver allows under its strictest options', () => {
    const out = new Float64Array(9);
    let reopened = 0;
    for (const name of names) {
      for (const flags of flagSets) {
        const io = flags | C.O_NOCTTY | C.O_CLOEXEC;
        const fd = native.openFile(root, name, C.O_PATH | C.O_CLOEXEC | (flags & C.O_NOFOLLOW), RESOLVE, io, out);
        if (fd >= 0) native.close(fd);
        const fast = out[8] === 1; // its decision, whether or not the kernel then let the reopen succeed
        const checked = answer(resolver, name, flags, { ...strictest, verify: allowAll }) === 0;
        assert.equal(
          fast,
          checked,
          `${name} with flags 0o${flags.toString(8)}: fast path ${fast ? 'reopens' : 'does not'}, the check ${checked ? 'allows' : 'refuses'}`,
        );
        if (fast) reopened++;
      }
    }
    assert.ok(reopened >= 5, 'the matrix holds cases that the fast path takes');
  });

  it('Resolver.open answers the same with the fast path as without it, for every rule', () => {
    for (const directories of [false, true]) {
      for (const hardlinks of ['allow', 'read-only', 'refuse'] as HardlinkRule[]) {
        const options: OpenOptions = { followSymlinks: false, directories, hardlinks };
        for (const name of names) {
          for (const flags of flagSets) {
            const fast = answer(resolver, name, flags, options);
            const checked = answer(resolver, name, flags, { ...options, verify: allowAll });
            assert.equal(fast, checked, `${name} with flags 0o${flags.toString(8)}, directories ${directories}, hardlinks ${hardlinks}`);
          }
        }
      }
    }
  });
});
