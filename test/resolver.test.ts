/**
 * Invariants 2 and 4: the open stays beneath the rule's root whatever symlinks, magic links, mounts,
 * hard links and special files a client has planted, and only what the rule allows is opened.
 *
 * Every case runs twice: on the event loop, and on the thread pool that slow opens use (offload
 * 'always'), so that the two paths cannot drift apart. The broker runs in this process so that its
 * options can be set; sockets, syscalls and files are all real.
 */
import assert from 'node:assert/strict';
import { execFileSync, spawn } from 'node:child_process';
import { existsSync, linkSync, mkdirSync, readFileSync, statSync, symlinkSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import type { AuditRecord } from '../src/broker/audit.js';
import { codeOf, ioFlagsOf, Resolver } from '../src/resolver/resolver.js';
import { C, native } from '../src/native.js';
import { fixture, tempDir } from './helpers.js';
import { closeAll, fdFlags, inodeOf, inProcessBroker, openFrame, RawClient, warmUp, type InProcessBroker } from './raw.js';
import { E } from '../src/errno.js';

const { EACCES, ELOOP, EXDEV, EEXIST, ENOTDIR, EISDIR } = E;

const tmp = tempDir('openhook-resolver-');
const tree = join(tmp.path, 'tree');
const outside = join(tmp.path, 'outside');
const mnt = join(tree, 'mnt');
mkdirSync(join(tree, 'sub'), { recursive: true });
mkdirSync(outside);
mkdirSync(mnt);
writeFileSync(join(tree, 'file'), 'inside');
writeFileSync(join(tree, 'sub', 'file2'), 'inside too');
writeFileSync(join(outside, 'secret'), 'SECRET');
writeFileSync(join(outside, 'linked'), 'SECRET, hard-linked into the tree');
symlinkSync(join(outside, 'secret'), join(tree, 'abs-link'));
symlinkSync('../outside/secret', join(tree, 'rel-link'));
symlinkSync(outside, join(tree, 'abs-dir'));
symlinkSync('../outside', join(tree, 'rel-dir'));
symlinkSync('file', join(tree, 'in-link'));
symlinkSync('sub', join(tree, 'in-dir'));
symlinkSync('/proc/self/root/etc/hostname', join(tree, 'proc-root'));
symlinkSync('/proc/self/cwd', join(tree, 'proc-cwd'));
symlinkSync(join(outside, 'created-through-link'), join(tree, 'dangling-abs'));
symlinkSync('../outside/created-through-rel', join(tree, 'dangling-rel'));
symlinkSync('created-inside', join(tree, 'dangling-in'));
linkSync(join(outside, 'linked'), join(tree, 'hard'));
execFileSync('mkfifo', [join(tree, 'fifo')]);
execFileSync('mknod', [join(tree, 'null-dev'), 'c', '1', '3']);
execFileSync('mknod', [join(tree, 'loop-dev'), 'b', '7', '200']);
const sockFd = native.listenUnix(Buffer.from(join(tree, 'sock')), C.SOCK_STREAM, 0o600, 1).fd;
execFileSync('mount', ['-t', 'tmpfs', '-o', 'size=1m', 'openhook-test', mnt]);
writeFileSync(join(mnt, 'on-tmpfs'), 'another filesystem');

const secretIno = statSync(join(outside, 'secret')).ino;
const linkedIno = statSync(join(outside, 'linked')).ino;
const fileIno = statSync(join(tree, 'file')).ino;

after(() => {
  native.close(sockFd);
  execFileSync('umount', [mnt]);
  tmp.cleanup();
});

/** Watches paths for real opens (IN_OPEN) while fn runs; returns the count per path. */
async function countOpens(paths: string[], fn: () => Promise<void>): Promise<number[]> {
  const child = spawn(fixture('open-watch'), paths, { stdio: ['pipe', 'pipe', 'inherit'] });
  let out = '';
  child.stdout.on('data', (d) => (out += d));
  while (!out.includes('ready')) await new Promise((r) => setTimeout(r, 5));
  await fn();
  child.stdin.end();
  await new Promise((r) => child.on('close', r));
  return /opens=([\d,]+)/.exec(out)![1]!.split(',').map(Number);
}

for (const offload of ['auto', 'always'] as const) {
  const where = offload === 'always' ? 'on the thread pool' : 'on the event loop';

  describe(`resolver ${where}: links`, () => {
    after(() => {
      // Each path really ran: the pool only for 'always', never after the warm-up for 'auto'.
      const pooled = plain.broker.resolver.stats.slowOpens + follow.broker.resolver.stats.slowOpens;
      if (offload === 'auto') assert.ok(pooled <= 2, `${pooled} opens went to the pool`);
      else assert.ok(pooled > 20, `only ${pooled} opens went to the pool`);
    });
    let plain: InProcessBroker, follow: InProcessBroker;
    let a: RawClient, b: RawClient;
    before(async () => {
      plain = inProcessBroker(tmp.path, `plain-${offload}`, { allow: [`${tree}/:rwc`] }, { resolver: new Resolver({ offload }) });
      follow = inProcessBroker(
        tmp.path,
        `follow-${offload}`,
        { allow: [`${tree}/:rwc`], options: { follow_symlinks: true } },
        { resolver: new Resolver({ offload }) },
      );
      await warmUp(plain, join(tree, 'file'));
      await warmUp(follow, join(tree, 'file'));
      a = RawClient.connect(plain.socket);
      b = RawClient.connect(follow.socket);
    });
    after(() => {
      a.close();
      b.close();
      plain.close();
      follow.close();
    });

    /** Opens name with both brokers; never the secret, and the errno each one gives. */
    async function both(name: string, flags = 0, mode = 0): Promise<[number, number]> {
      const out: number[] = [];
      for (const c of [a, b]) {
        const r = (await c.request(openFrame(join(tree, name), flags, mode)))!;
        for (const fd of r.fds) {
          assert.notEqual(inodeOf(fd), secretIno, `${name} opened the secret`);
          assert.notEqual(inodeOf(fd), linkedIno, `${name} opened the hard-linked file`);
        }
        closeAll(r.fds);
        out.push(r.result);
      }
      return out as [number, number];
    }

    it('refuses symlinks that point out of the tree, absolute or relative, last component or parent', async () => {
      for (const name of ['abs-link', 'rel-link', 'abs-dir/secret', 'rel-dir/secret']) {
        const [p, f] = await both(name);
        assert.equal(p, -ELOOP, `${name}: no symlinks are followed by default`);
        assert.ok(f === -EXDEV || f === -ELOOP, `${name}: following, the kernel refuses to leave the root (got ${f})`);
      }
    });

    it('follows a symlink that stays inside only when the rule says so', async () => {
      assert.deepEqual(await both('in-link'), [-ELOOP, 0]);
      assert.deepEqual(await both('in-dir/file2'), [-ELOOP, 0]);
      const r = (await b.request(openFrame(join(tree, 'in-link'))))!;
      assert.equal(inodeOf(r.fds[0]!), fileIno);
      closeAll(r.fds);
    });

    it('refuses magic links planted as symlinks', async () => {
      for (const name of ['proc-root', 'proc-cwd/file']) {
        const [p, f] = await both(name);
        assert.equal(p, -ELOOP);
        assert.ok(f === -EXDEV || f === -ELOOP, `${name}: ${f}`);
      }
    });

    it('never creates through a dangling symlink, inside or outside', async () => {
      for (const name of ['dangling-abs', 'dangling-rel', 'dangling-in']) {
        for (const flags of [C.O_RDWR | C.O_CREAT, C.O_WRONLY | C.O_CREAT | C.O_TRUNC, C.O_RDWR | C.O_CREAT | C.O_EXCL]) {
          const [p, f] = await both(name, flags, 0o644);
          assert.ok(p < 0 && f < 0, `${name} ${flags.toString(8)}: ${p} ${f}`);
        }
      }
      assert.equal(existsSync(join(outside, 'created-through-link')), false);
      assert.equal(existsSync(join(outside, 'created-through-rel')), false);
      assert.equal(existsSync(join(tree, 'created-inside')), false);
    });

    it('does not cross a mount point inside the tree', async () => {
      const [p, f] = await both('mnt/on-tmpfs');
      assert.equal(p, -EXDEV);
      assert.equal(f, -EXDEV);
      assert.deepEqual(await both('mnt/new', C.O_RDWR | C.O_CREAT, 0o644), [-EXDEV, -EXDEV]);
      assert.equal(existsSync(join(mnt, 'new')), false);
    });

    it('holds a deny carve-out on the real path when symlinks are followed', async () => {
      const carve = inProcessBroker(
        tmp.path,
        `carve-${offload}`,
        { allow: [`${tree}/:rwc`], deny: [`${tree}/sub/`], options: { follow_symlinks: true } },
        { resolver: new Resolver({ offload }) },
      );
      await warmUp(carve, join(tree, 'file'));
      const c = RawClient.connect(carve.socket);
      try {
        const direct = (await c.request(openFrame(join(tree, 'sub', 'file2'))))!;
        assert.equal(direct.result, -EACCES, 'the name itself is denied');
        const via = (await c.request(openFrame(join(tree, 'in-dir', 'file2'))))!;
        assert.equal(via.result, -EACCES, 'and so is the same file through a symlink');
        assert.deepEqual(via.fds, []);
        const ok = (await c.request(openFrame(join(tree, 'in-link'))))!;
        assert.equal(ok.result, 0, 'a followed symlink to an allowed file still works');
        closeAll(ok.fds);
      } finally {
        c.close();
        carve.close();
      }
    });

    it('answers O_NOFOLLOW on a symlink with ELOOP, and O_CREAT|O_EXCL on one without creating', async () => {
      assert.deepEqual(await both('in-link', C.O_NOFOLLOW), [-ELOOP, -ELOOP]);
      const [p, f] = await both('in-link', C.O_RDWR | C.O_CREAT | C.O_EXCL, 0o644);
      assert.equal(p, -ELOOP);
      assert.ok(f === -EEXIST || f === -ELOOP, String(f));
    });
  });

  describe(`resolver ${where}: special files and hard links`, () => {
    let broker: InProcessBroker, client: RawClient, other: RawClient;
    const audited: AuditRecord[] = [];
    /** The audit log's reasons for the refusals of name (the resolver's reason, on either path). */
    const reasonsFor = (name: string): string[] => [
      ...new Set(audited.filter((e) => e.path === join(tree, name) && e.errno === EACCES).map((e) => e.reason)),
    ];
    before(async () => {
      broker = inProcessBroker(
        tmp.path,
        `special-${offload}`,
        { allow: [`${tree}/:rwc`] },
        { resolver: new Resolver({ offload }), audit: { record: (e) => audited.push(e) } },
      );
      await warmUp(broker, join(tree, 'file'));
      client = RawClient.connect(broker.socket);
      other = RawClient.connect(broker.socket, 'seqpacket');
    });
    after(() => {
      client.close();
      other.close();
      broker.close();
    });

    it('refuses FIFOs, devices and sockets without ever opening them for I/O', async () => {
      const specials = ['fifo', 'null-dev', 'loop-dev', 'sock'];
      const flagSets = [C.O_RDONLY, C.O_WRONLY, C.O_RDWR, C.O_RDONLY | C.O_NONBLOCK, C.O_WRONLY | C.O_NONBLOCK, C.O_RDWR | C.O_TRUNC];
      const counts = await countOpens([...specials.map((s) => join(tree, s)), join(tree, 'file')], async () => {
        for (const name of specials) {
          for (const flags of flagSets) {
            const r = (await client.request(openFrame(join(tree, name), flags), 2000))!;
            assert.equal(r.result, -EACCES, `${name} ${flags.toString(8)}`);
            assert.deepEqual(r.fds, []);
          }
        }
        // The positive control: a real open of a regular file is seen.
        const r = (await client.request(openFrame(join(tree, 'file'))))!;
        assert.equal(r.result, 0);
        closeAll(r.fds);
      });
      assert.deepEqual(counts, [0, 0, 0, 0, 1], 'IN_OPEN events: none on the special files, one on the file');
      assert.deepEqual(reasonsFor('fifo'), ['FIFO refused']);
      assert.deepEqual(reasonsFor('null-dev'), ['device refused']);
      assert.deepEqual(reasonsFor('sock'), ['socket refused']);
    });

    it('serves another client while a FIFO request is refused, and a writer waiting on the FIFO stays waiting', async () => {
      // A writer blocked in open(O_WRONLY) would be released by any reader's open: it must stay blocked.
      const writer = spawn('sh', ['-c', `exec 3>"${join(tree, 'fifo')}"; echo opened`], { stdio: ['ignore', 'pipe', 'inherit'] });
      let out = '';
      writer.stdout.on('data', (d) => (out += d));
      try {
        await new Promise((r) => setTimeout(r, 100));
        const [fifo, file] = await Promise.all([
          client.request(openFrame(join(tree, 'fifo'))),
          other.request(openFrame(join(tree, 'file'))),
        ]);
        assert.equal(fifo!.result, -EACCES);
        assert.equal(file!.result, 0);
        closeAll(file!.fds);
        await new Promise((r) => setTimeout(r, 200));
        assert.equal(out, '', 'the writer was not released');
      } finally {
        writer.kill();
      }
    });

    it('refuses write access to a file with more than one hard link, by default', async () => {
      const ro = (await client.request(openFrame(join(tree, 'hard'), C.O_RDONLY)))!;
      assert.equal(ro.result, 0, 'reading is allowed by the default rule');
      closeAll(ro.fds);
      for (const flags of [C.O_RDWR, C.O_WRONLY, C.O_WRONLY | C.O_TRUNC, C.O_RDONLY | C.O_TRUNC, C.O_RDWR | C.O_CREAT]) {
        const r = (await client.request(openFrame(join(tree, 'hard'), flags, 0o644)))!;
        assert.equal(r.result, -EACCES, flags.toString(8));
      }
      assert.equal(readFileSync(join(outside, 'linked'), 'utf8'), 'SECRET, hard-linked into the tree');
      assert.deepEqual(reasonsFor('hard'), ['file has more than one hard link: write access refused']);
    });

    it('honours O_NONBLOCK and O_APPEND, and always adds O_NOCTTY', async () => {
      const r = (await client.request(openFrame(join(tree, 'file'), C.O_RDWR | C.O_NONBLOCK | C.O_APPEND)))!;
      assert.equal(r.result, 0);
      const fl = fdFlags(r.fds[0]!);
      assert.equal(fl & C.O_ACCMODE, C.O_RDWR);
      assert.ok(fl & C.O_NONBLOCK && fl & C.O_APPEND);
      closeAll(r.fds);
      // The kernel keeps no trace of O_NOCTTY in the open file, so check the flags the broker opens with.
      for (const flags of [C.O_RDONLY, C.O_RDWR | C.O_CREAT | C.O_EXCL, C.O_WRONLY | C.O_TRUNC]) {
        const io = ioFlagsOf(flags);
        assert.ok(io & C.O_NOCTTY && io & C.O_CLOEXEC, flags.toString(8));
        assert.equal(io & (C.O_CREAT | C.O_EXCL), 0, "creating is the create step's, never the reopen's");
      }
    });

    it('honours O_EXCL: an existing name is EEXIST and nothing is opened', async () => {
      const r = (await client.request(openFrame(join(tree, 'file'), C.O_RDWR | C.O_CREAT | C.O_EXCL, 0o644)))!;
      assert.equal(r.result, -EEXIST);
      assert.deepEqual(r.fds, []);
    });

    it('treats a trailing slash as open(2) does: ENOTDIR for a file, EISDIR with O_CREAT', async () => {
      assert.equal((await client.request(openFrame(join(tree, 'file') + '/')))!.result, -ENOTDIR);
      assert.equal((await client.request(openFrame(join(tree, 'newdir') + '/', C.O_RDWR | C.O_CREAT, 0o644)))!.result, -EISDIR);
      assert.equal(existsSync(join(tree, 'newdir')), false);
    });
  });

  describe(`resolver ${where}: hard-link options and create modes`, () => {
    it('hardlinks: refuse refuses reads too; allow allows writes', async () => {
      const strict = inProcessBroker(
        tmp.path,
        `hl-refuse-${offload}`,
        { allow: [`${tree}/:rw`], options: { hardlinks: 'refuse' } },
        { resolver: new Resolver({ offload }) },
      );
      const lax = inProcessBroker(
        tmp.path,
        `hl-allow-${offload}`,
        { allow: [`${tree}/:rw`], options: { hardlinks: 'allow' } },
        { resolver: new Resolver({ offload }) },
      );
      await warmUp(strict, join(tree, 'file'));
      await warmUp(lax, join(tree, 'file'));
      const c1 = RawClient.connect(strict.socket),
        c2 = RawClient.connect(lax.socket);
      try {
        assert.equal((await c1.request(openFrame(join(tree, 'hard'))))!.result, -EACCES);
        const ok = (await c1.request(openFrame(join(tree, 'file'))))!;
        assert.equal(ok.result, 0, 'a file with one link is fine');
        closeAll(ok.fds);
        const w = (await c2.request(openFrame(join(tree, 'hard'), C.O_RDWR)))!;
        assert.equal(w.result, 0);
        assert.equal(inodeOf(w.fds[0]!), linkedIno);
        closeAll(w.fds);
      } finally {
        c1.close();
        c2.close();
        strict.close();
        lax.close();
      }
    });

    it('creates files without setuid, setgid or sticky, with its own umask whatever the process umask', async () => {
      const br = inProcessBroker(
        tmp.path,
        `mode-${offload}`,
        { allow: [`${tree}/:rwc`] },
        { resolver: new Resolver({ offload, umask: 0o027 }) },
      );
      await warmUp(br, join(tree, 'file'));
      const c = RawClient.connect(br.socket);
      const old = process.umask(0o077);
      try {
        for (const [i, mode, want] of [
          [1, 0o7777, 0o750],
          [2, 0o4755, 0o750],
          [3, 0o2640, 0o640],
          [4, 0o1666, 0o640],
          [5, 0o600, 0o600],
        ] as const) {
          const name = join(tree, `made-${offload}-${i}`);
          const r = (await c.request(openFrame(name, C.O_RDWR | C.O_CREAT | C.O_EXCL, mode)))!;
          assert.equal(r.result, 0);
          closeAll(r.fds);
          assert.equal(statSync(name).mode & 0o7777, want, `mode ${mode.toString(8)}`);
        }
      } finally {
        process.umask(old);
        c.close();
        br.close();
      }
    });
  });
}

describe('resolver: EAGAIN from openat2', () => {
  // A symlink whose target walks '..' many times, followed while another process renames anything:
  // openat2 cannot prove each '..' safe and answers EAGAIN. The resolver may retry only so often,
  // and must then answer EAGAIN itself: never fall back to an open that the kernel did not vouch for.
  const dir = join(tmp.path, 'eagain');
  const target = join(dir, 't', 'f');
  before(() => {
    mkdirSync(join(dir, 'a'), { recursive: true });
    mkdirSync(join(dir, 't'));
    mkdirSync(join(dir, 'swap', 'x'), { recursive: true });
    symlinkSync('x', join(dir, 'swap', 'y'));
    writeFileSync(target, 'target');
    symlinkSync('../a/'.repeat(200) + '../t/f', join(dir, 'a', 'link'));
  });

  it('retries a bounded number of times, then answers EAGAIN, and never opens anything else', async () => {
    const swapper = spawn(fixture('swapper'), [join(dir, 'swap', 'x'), join(dir, 'swap', 'y')], { stdio: ['ignore', 'pipe', 'inherit'] });
    await new Promise((r) => swapper.stdout.once('data', r));
    const root = native.open(dir, C.O_PATH | C.O_DIRECTORY, 0);
    const targetIno = statSync(target).ino;
    const options = { followSymlinks: true, directories: false, fifos: false, hardlinks: 'read-only' as const };
    try {
      // The same machine runs on both drivers: the bound must hold on the event loop and on the pool.
      for (const [retries, driver] of [
        [0, 'sync'],
        [3, 'sync'],
        [1, 'pool'],
      ] as const) {
        const resolver = new Resolver({ eagainRetries: retries });
        let failures = 0,
          successes = 0;
        const deadline = Date.now() + 10_000;
        while ((failures < 20 || (retries > 0 && successes < 5)) && Date.now() < deadline) {
          const seen = resolver.stats.eagain;
          const fd = codeOf(
            driver === 'sync'
              ? resolver.open(root, 'a/link', C.O_RDONLY, 0, options)
              : await resolver.openSlow(root, 'a/link', C.O_RDONLY, 0, options, null),
          );
          const tries = resolver.stats.eagain - seen;
          if (fd >= 0) {
            assert.equal(inodeOf(fd), targetIno);
            native.close(fd);
            assert.ok(tries <= retries, `${driver}: success after ${tries} EAGAINs with ${retries} retries`);
            successes++;
          } else {
            assert.equal(fd, -E.EAGAIN, `only EAGAIN may come back, got ${fd}`);
            assert.equal(tries, retries + 1, `${driver}: exactly the bound of attempts, then EAGAIN`);
            failures++;
          }
        }
        assert.ok(failures >= 20, `the swapper provoked EAGAIN (${failures} failures, ${successes} successes)`);
        assert.equal(resolver.stats.eagainFailures, failures);
        resolver.close();
      }
    } finally {
      native.close(root);
      swapper.kill();
    }
  });
});

describe('resolver: magic links', () => {
  it('never follows a magic link, even under a rule that follows symlinks (ELOOP, on both paths)', async () => {
    // A root inside /proc makes /proc/self/fd/N a name beneath the root. RESOLVE_BENEATH alone
    // would refuse the jump with EXDEV; RESOLVE_NO_MAGICLINKS refuses the magic link itself.
    const root = native.open('/proc/self/', C.O_PATH | C.O_DIRECTORY | C.O_CLOEXEC, 0);
    const target = native.open(join(tree, 'file'), C.O_RDONLY | C.O_CLOEXEC, 0);
    const resolver = new Resolver();
    const options = { followSymlinks: true, directories: false, fifos: false, hardlinks: 'read-only' as const };
    try {
      assert.equal(codeOf(resolver.open(root, `fd/${target}`, C.O_RDONLY, 0, options)), -ELOOP);
      assert.equal(codeOf(await resolver.openSlow(root, `fd/${target}`, C.O_RDONLY, 0, options, null)), -ELOOP);
    } finally {
      resolver.close();
      native.close(target);
      native.close(root);
    }
  });
});
