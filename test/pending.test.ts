/**
 * The one wait-with-timeout-and-AbortSignal helper (src/client/pending.ts) that the client, the
 * QMP client and the QMP listener share: how it gives up, and that settling leaves nothing behind
 * on a long-lived signal.
 */
import assert from 'node:assert/strict';
import { getEventListeners } from 'node:events';
import { describe, it } from 'node:test';
import { AbortError, TimeoutError } from '../src/client/errors.js';
import { Wait } from '../src/client/pending.js';

/** Live timers of this process (Node's own count of them). */
function timers(): number {
  return process.getActiveResourcesInfo().filter((r) => r === 'Timeout').length;
}

describe('Wait: timeout and AbortSignal for one pending answer', () => {
  it("times out with the owner's error, once, and calls onGiveUp", async () => {
    const gaveUp: Error[] = [];
    const w = new Wait<number>({ timeout: 20, timeoutError: () => new TimeoutError('slow'), onGiveUp: (err) => gaveUp.push(err) });
    assert.equal(w.settled, false);
    await assert.rejects(w.promise, (err: Error) => err instanceof TimeoutError && err.message === 'slow');
    assert.equal(w.settled, true);
    assert.equal(gaveUp.length, 1);
    assert.equal(w.resolve(1), false, 'a late answer changes nothing');
  });

  it("rejects at once with openhook's AbortError when the signal fired before the start", async () => {
    const reason = new Error('why');
    const signal = AbortSignal.abort(reason);
    let gaveUp = false;
    const w = new Wait<number>({ signal, timeout: 10_000, onGiveUp: () => (gaveUp = true) });
    assert.equal(w.settled, true);
    assert.equal(getEventListeners(signal, 'abort').length, 0);
    await assert.rejects(w.promise, (err: Error) => {
      assert.ok(err instanceof AbortError, `not openhook's AbortError: ${err}`);
      assert.equal((err as AbortError).code, 'ABORT_ERR');
      assert.equal(err.name, 'AbortError');
      assert.equal(err.cause, reason);
      return true;
    });
    assert.equal(gaveUp, false, 'nothing was started, so nothing is given up');
  });

  it('rejects with AbortError when the signal fires while it waits, and clears its timer', async () => {
    const ac = new AbortController();
    const before = timers();
    const gaveUp: Error[] = [];
    const w = new Wait<number>({ signal: ac.signal, timeout: 60_000, onGiveUp: (err) => gaveUp.push(err) });
    assert.equal(timers(), before + 1);
    ac.abort('stop');
    await assert.rejects(w.promise, (err: Error) => err instanceof AbortError && err.code === 'ABORT_ERR' && err.cause === 'stop');
    assert.equal(gaveUp.length, 1);
    assert.ok(gaveUp[0] instanceof AbortError);
    assert.equal(timers(), before, 'the timeout timer was cleared');
    assert.equal(w.reject(new Error('late')), false);
  });

  it('answered first, it ignores the timer and the signal afterwards', async () => {
    const ac = new AbortController();
    const w = new Wait<string>({ signal: ac.signal, timeout: 10 });
    assert.equal(w.resolve('yes'), true);
    ac.abort();
    await new Promise((r) => setTimeout(r, 30));
    assert.equal(await w.promise, 'yes');
  });

  it('leaves no abort listener and no timer behind after 10,000 settled waits on one signal', async () => {
    const ac = new AbortController();
    const beforeTimers = timers();
    const waits: Array<Wait<number>> = [];
    for (let i = 0; i < 10_000; i++) waits.push(new Wait<number>({ signal: ac.signal, timeout: 60_000 }));
    assert.equal(getEventListeners(ac.signal, 'abort').length, 10_000);
    waits.forEach((w, i) => (i % 2 ? w.resolve(i) : w.reject(new Error(`no ${i}`))));
    await Promise.allSettled(waits.map((w) => w.promise));
    assert.equal(getEventListeners(ac.signal, 'abort').length, 0, 'abort listeners leaked');
    assert.equal(timers(), beforeTimers, 'timers leaked');
  });
});
