/**
 * Invariant 6: a slow open does not block the broker. Opens beneath a FUSE filesystem (a stalled
 * server, made locally by the stall-fs fixture) and opens of FIFOs that a rule allows run on the
 * resolver's thread pool; other clients keep being served meanwhile. RFC replies keep their order
 * on a connection; tagged replies may overtake. A client that leaves cancels its FIFO open.
 */
import assert from 'node:assert/strict';
import { spawn, execFileSync, type ChildProcess } from 'node:child_process';
import { closeSync, existsSync, mkdirSync, openSync, constants as fsc, readSync, statSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { Resolver } from '../src/resolver/resolver.js';
import { C, native } from '../src/native.js';
import { fdCount, fixture, settledFdCount, sleep, tempDir } from './helpers.js';
import { closeAll, inodeOf, inProcessBroker, openFrame, RawClient, taggedFrame, type InProcessBroker } from './raw.js';
import { E } from '../src/errno.js';

const { ECANCELED } = E;
const tmp = tempDir('openhook-slow-');
const local = join(tmp.path, 'local');
const fuse = join(tmp.path, 'fuse');
const fifos = join(tmp.path, 'fifos');
mkdirSync(local);
mkdirSync(fuse);
mkdirSync(fifos);
writeFileSync(join(local, 'file'), 'local');
execFileSync('mkfifo', [join(fifos, 'pipe')]);
writeFileSync(join(fifos, 'plain'), 'a regular file beside the FIFO');
const localIno = statSync(join(local, 'file')).ino;
after(tmp.cleanup);

/** Sends requests one after another and returns each one's latency in ms. */
async function latencies(c: RawClient, name: string, n: number): Promise<number[]> {
  const out: number[] = [];
  for (let i = 0; i < n; i++) {
    const t = performance.now();
    const r = (await c.request(openFrame(name)))!;
    out.push(performance.now() - t);
    assert.equal(r.result, 0);
    closeAll(r.fds);
  }
  return out;
}

const median = (xs: number[]): number => [...xs].sort((a, b) => a - b)[xs.length >> 1]!;

// FUSE needs /dev/fuse (the fuse module); the FIFO tests below cover the same invariant without it.
describe('slow opens: a stalled FUSE filesystem', { skip: existsSync('/dev/fuse') ? false : 'no /dev/fuse on this machine' }, () => {
  let fs: ChildProcess;
  let broker: InProcessBroker;
  let heldLines = 0,
    heldSeen = 0;
  /** Resolves once stall-fs holds one more lookup than was waited for before. */
  const held = async (): Promise<void> => {
    heldSeen++;
    for (let i = 0; i < 500 && heldLines < heldSeen; i++) await sleep(10);
    assert.ok(heldLines >= heldSeen, 'stall-fs never got the lookup');
  };
  /** Lets the held lookups go, once the one just asked for is held. */
  const release = async (): Promise<void> => {
    await held();
    fs.stdin!.write('release\n');
  };
  before(async () => {
    fs = spawn(fixture('stall-fs'), [fuse], { stdio: ['pipe', 'pipe', 'inherit'] });
    await new Promise<void>((resolve, reject) => {
      fs.stdout!.setEncoding('utf8').once('data', () => resolve());
      fs.once('exit', (code) => reject(new Error(`stall-fs exited with ${code}`)));
    });
    fs.stdout!.on('data', (d: string) => (heldLines += d.split('\n').filter((l) => l === 'held').length));
    broker = inProcessBroker(tmp.path, 'fuse', { allow: [`${local}/:r`, `${fuse}/:r`] });
  });
  after(async () => {
    broker.close();
    fs.stdin!.end();
    await new Promise((r) => fs.once('exit', r));
  });

  it('runs opens beneath FUSE on the pool, and keeps serving others while one stalls', async () => {
    const a = RawClient.connect(broker.socket);
    const b = RawClient.connect(broker.socket);
    try {
      const quiet = await latencies(b, join(local, 'file'), 50);
      const resolver = broker.broker.resolver;
      const pooled = resolver.stats.slowOpens;

      a.send(openFrame(join(fuse, 'stall')));
      await sleep(100);
      const busy = await latencies(b, join(local, 'file'), 200);
      const fast = (await b.request(openFrame(join(fuse, 'fast'))))!;
      assert.equal(fast.result, 0, 'another open on the same FUSE filesystem is served meanwhile');
      const buf = Buffer.alloc(16);
      assert.equal(buf.toString('utf8', 0, readSync(fast.fds[0]!, buf)), 'hello\n');
      closeAll(fast.fds);
      assert.equal(resolver.stats.slowOpens, pooled + 2, 'the two FUSE opens ran on the pool, the 200 local ones did not');
      process.stdout.write(
        `# local open latency: median ${median(quiet).toFixed(3)} ms quiet, ${median(busy).toFixed(3)} ms with a FUSE open stalled\n`,
      );

      const pending = a.next(5000);
      await sleep(50);
      await release();
      const r = (await pending)!;
      assert.equal(r.result, 0, 'the stalled open completes once the server answers');
      assert.equal(buf.toString('utf8', 0, readSync(r.fds[0]!, buf)), 'hello\n');
      closeAll(r.fds);
    } finally {
      a.close();
      b.close();
    }
  });

  it('lets tagged replies overtake a stalled tagged open', async () => {
    const a = RawClient.connect(broker.socket);
    try {
      a.send(taggedFrame(1, join(fuse, 'stall')));
      a.send(taggedFrame(2, join(local, 'file')));
      a.send(taggedFrame(3, join(local, 'file')));
      const early = [(await a.next(3000))!, (await a.next(3000))!];
      assert.deepEqual(
        early.map((r) => [r.command, r.id, r.result]),
        [
          [0x101, 2, 0],
          [0x101, 3, 0],
        ],
      );
      for (const r of early) {
        assert.equal(inodeOf(r.fds[0]!), localIno);
        closeAll(r.fds);
      }
      await release();
      const late = (await a.next(3000))!;
      assert.deepEqual([late.command, late.id, late.result], [0x101, 1, 0]);
      closeAll(late.fds);
    } finally {
      a.close();
    }
  });

  it('keeps RFC replies in request order behind a stalled RFC open', async () => {
    const a = RawClient.connect(broker.socket);
    try {
      a.send(openFrame(join(fuse, 'stall')));
      a.send(openFrame(join(local, 'file')));
      await assert.rejects(a.next(300), /no reply/, 'the open behind the stalled one waits its turn');
      await release();
      const first = (await a.next(3000))!;
      const second = (await a.next(3000))!;
      assert.equal(first.result, 0);
      assert.notEqual(inodeOf(first.fds[0]!), localIno, 'the stalled FUSE file first');
      assert.equal(inodeOf(second.fds[0]!), localIno, 'then the local file');
      closeAll(first.fds);
      closeAll(second.fds);
    } finally {
      a.close();
    }
  });
});

describe('slow opens: FIFOs where a rule allows them', () => {
  let broker: InProcessBroker;
  before(() => {
    broker = inProcessBroker(
      tmp.path,
      'fifo',
      { allow: [`${fifos}/:rw`, `${local}/:r`], options: { fifos: true } },
      { resolver: new Resolver() },
    );
  });
  after(() => broker.close());

  it('opens a FIFO on the pool: it waits for its writer while others are served', async () => {
    const a = RawClient.connect(broker.socket);
    const b = RawClient.connect(broker.socket);
    try {
      a.send(openFrame(join(fifos, 'pipe'), C.O_RDONLY));
      await sleep(100);
      await latencies(b, join(local, 'file'), 100);
      await assert.rejects(a.next(200), /no reply/, 'the reader waits for a writer, as open(2) does');
      const writer = openSync(join(fifos, 'pipe'), fsc.O_WRONLY | fsc.O_NONBLOCK);
      const r = (await a.next(3000))!;
      assert.equal(r.result, 0);
      const st = new Float64Array(8);
      native.fstat(r.fds[0]!, st);
      assert.equal(st[0]! & C.S_IFMT, C.S_IFIFO);
      closeSync(writer);
      closeAll(r.fds);
      const plain = (await a.request(openFrame(join(fifos, 'plain'))))!;
      assert.equal(plain.result, 0, 'regular files beside FIFOs still open');
      closeAll(plain.fds);
    } finally {
      a.close();
      b.close();
    }
  });

  it('cancels a FIFO open when its client hangs up: no thread stays pinned, no fd stays open', async () => {
    await sleep(50);
    const baseline = fdCount(process.pid);
    for (let i = 0; i < 40; i++) {
      const a = RawClient.connect(broker.socket);
      a.send(openFrame(join(fifos, 'pipe'), i % 2 ? C.O_WRONLY : C.O_RDONLY));
      await sleep(5);
      a.close();
    }
    const resolver = broker.broker.resolver;
    for (let i = 0; i < 200; i++) {
      const [threads, idle, queued, pending] = resolver.poolStats()!;
      if (idle === threads && queued === 0 && pending === 0) break;
      await sleep(20);
    }
    const [threads, idle, queued, pending] = resolver.poolStats()!;
    assert.deepEqual(
      [idle, queued, pending],
      [threads, 0, 0],
      `pool: ${threads} threads, ${idle} idle, ${queued} queued, ${pending} pending`,
    );
    assert.ok(threads <= 16);
    assert.equal(await settledFdCount(process.pid), baseline);
  });

  it('cancels a FIFO open whose client closed right after sending it (request and hang-up read at once)', async () => {
    const resolver = broker.broker.resolver;
    const poolIdle = async (): Promise<boolean> => {
      for (let i = 0; i < 100; i++) {
        const stats = resolver.poolStats();
        if (stats && stats[1] === stats[0] && stats[2] === 0 && stats[3] === 0) return true;
        await sleep(20);
      }
      return false;
    };
    for (const flags of [C.O_RDONLY, C.O_WRONLY]) {
      const started = resolver.stats.slowOpens;
      const a = RawClient.connect(broker.socket);
      // In the same tick: the broker reads the frame and the end of the connection in one wake-up.
      a.send(openFrame(join(fifos, 'pipe'), flags));
      a.close();
      while (resolver.stats.slowOpens === started) await sleep(5); // the broker has taken the request
      const idle = await poolIdle();
      if (!idle) native.close(native.open(join(fifos, 'pipe'), C.O_RDWR | C.O_NONBLOCK, 0)); // free the thread for the tests after
      assert.ok(idle, `a pool thread stays pinned by a FIFO open (${flags ? 'O_WRONLY' : 'O_RDONLY'}) for a client that is gone`);
    }
  });

  it('a cancelled open never reaches the client, and the error is ECANCELED internally only', async () => {
    const r = new Resolver();
    const root = native.open(fifos, C.O_PATH | C.O_DIRECTORY, 0);
    const { codeOf, OpenCancel } = await import('../src/resolver/resolver.js');
    const cancel = new OpenCancel();
    const pending = r.openSlow(
      root,
      'pipe',
      C.O_RDONLY,
      0,
      { followSymlinks: false, directories: false, fifos: true, hardlinks: 'read-only' },
      cancel,
    );
    await sleep(100);
    cancel.cancel();
    assert.equal(codeOf(await pending), -ECANCELED);
    native.close(root);
    r.close();
  });
});
