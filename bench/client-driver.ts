/**
 * Drives a broker with the library client (src/client), in a process of its own as ref-client is:
 *
 *   node --import tsx bench/client-driver.ts SOCKET PATH COUNT DEPTH
 *
 * Keeps DEPTH opens in flight on one connection until COUNT have been answered, closing every fd,
 * and prints the same fields as ref-client: opens_per_s, mean_us, errors.
 */
import { closeSync } from 'node:fs';
import { connect } from '../src/client/client.js';

const [socket, path, countText, depthText] = process.argv.slice(2);
const count = Number(countText),
  depth = Number(depthText);
const hook = await connect(socket!);

async function run(n: number): Promise<number> {
  let sent = 0,
    done = 0,
    errors = 0;
  await new Promise<void>((resolve) => {
    const next = (): void => {
      while (sent < n && sent - done < depth) {
        sent++;
        hook.open(path!, 'r').then(
          (fd) => {
            closeSync(fd);
            if (++done === n) resolve();
            else next();
          },
          () => {
            errors++;
            if (++done === n) resolve();
            else next();
          },
        );
      }
    };
    next();
  });
  return errors;
}

await run(Math.min(2000, count)); // warm the JIT on both sides
const started = process.hrtime.bigint();
const errors = await run(count);
const seconds = Number(process.hrtime.bigint() - started) / 1e9;
console.log(`opens_per_s ${(count / seconds).toFixed(0)}\nmean_us ${((seconds / count) * 1e6).toFixed(2)}\nerrors ${errors}`);
hook.close();
