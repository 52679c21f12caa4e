// The least a Node command line can do in front of a program: start, spawn it with inherited stdio,
// and pass its exit status on. bench/qemu.ts times QEMU behind it to show the floor that Node's own
// start-up sets for `openhook run`.
import { spawn } from 'node:child_process';

const child = spawn(process.argv[2], process.argv.slice(3), { stdio: 'inherit' });
child.on('exit', (code, signal) => process.exit(code ?? (signal ? 128 : 1)));
