/**
 * `serve --busy-poll US`: after serving, the event loop keeps polling for up to US microseconds
 * before it sleeps. What must hold whatever the machine: requests are served as without it, the
 * spinning stops once the window has passed (the CPU cost is bounded), and the spin never keeps a
 * process alive. (How much latency it saves is for `npm run bench`, never for tests.)
 */
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { after, describe, it } from 'node:test';
import { C } from '../src/native.js';
import { probe, rfcOpenFrame, rfcReplyHex, ROOT, sleep, startServe, tempDir } from './helpers.js';
import { E } from '../src/errno.js';

const tmp = tempDir();
after(tmp.cleanup);
const T = tmp.path;
writeFileSync(join(T, 'disk.img'), 'disk');

/** CPU time (user + system) of a process so far, in ms (10 ms clock ticks). */
function cpuMs(pid: number): number {
  const f = readFileSync(`/proc/${pid}/stat`, 'utf8').split(') ')[1]!.split(' ');
  return (Number(f[11]) + Number(f[12])) * 10;
}

describe('busy polling', () => {
  it('serves as usual, and stops spinning once its window has passed', async () => {
    const socket = join(T, 'b.sock');
    // A long window (200 ms), so that a spin that never stopped would show plainly.
    const serve = await startServe(socket, [`--allow=${T}/:r`, '--busy-poll', '200000']);
    try {
      const lines = probe(socket, 'seqpacket', [rfcOpenFrame(`${T}/disk.img`, C.O_RDONLY), rfcOpenFrame(`${T}/missing`, C.O_RDONLY)]);
      assert.match(lines[0]!, new RegExp(`^reply=${rfcReplyHex(1, 0)} fds=1`));
      assert.equal(lines[1], `reply=${rfcReplyHex(1, -E.ENOENT)} fds=0`);
      await sleep(500); // the window is over
      const before = cpuMs(serve.child.pid!);
      await sleep(1000);
      const used = cpuMs(serve.child.pid!) - before;
      // A loop still spinning would take most of a core for that second (hundreds of ms even on a
      // busy machine); an idle broker takes next to nothing.
      assert.ok(used <= 60, `the idle broker used ${used} ms of CPU in 1 s`);
    } finally {
      await serve.stop();
    }
  });

  it('never keeps a process alive', () => {
    // A poller gets one message with a 1-second window set (the most); the process must still end at once
    // when everything is closed.
    const script = `
      import { C, native, PollMode } from ${JSON.stringify(join(ROOT, 'dist', 'native.js'))};
      native.setBusyPoll(1_000_000);
      const [a, b] = native.socketpair(C.SOCK_SEQPACKET, true);
      const p = new native.Poller(b, PollMode.ReceiveDiscardFds, 8, () => { p.close(); native.close(a); native.close(b); });
      p.start(C.UV_READABLE);
      native.send(a, Buffer.from('x'), 0, 1, -1);`;
    const started = Date.now();
    execFileSync(process.execPath, ['--input-type=module', '-e', script], { timeout: 5000 });
    assert.ok(Date.now() - started < 3000, 'the process ended without waiting for the window');
  });
});
