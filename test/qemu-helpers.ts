/**
 * Helpers for the QEMU tests: real images made and checked with qemu-img and qemu-io, and the
 * minimal machine every test boots (TCG, paused, no default devices), so the tests need no KVM.
 */
import { execFileSync, spawnSync } from 'node:child_process';
import { readFileSync } from 'node:fs';

/** A machine that starts in a few hundred ms under TCG and runs no guest code (-S). */
export const MACHINE = ['-machine', 'pc,accel=tcg', '-S', '-nodefaults', '-display', 'none', '-m', '128'];

/** Creates an image; with `pattern`, fills [0, 64k) with that byte. */
export function makeImage(path: string, format: 'qcow2' | 'raw' = 'qcow2', pattern?: number, size = '64M'): void {
  execFileSync('qemu-img', ['create', '-q', '-f', format, path, size]);
  if (pattern !== undefined) qemuIo(path, [`write -P ${pattern} 0 64k`], format);
}

/**
 * Runs qemu-io commands on an image; throws with the output if any of them failed. `shared` opens
 * it read-only without taking locks, to look at an image that a running QEMU holds.
 */
export function qemuIo(path: string, commands: string[], format = 'qcow2', shared = false): string {
  const args = ['-f', format, ...(shared ? ['-r', '-U'] : []), ...commands.flatMap((c) => ['-c', c]), path];
  const r = spawnSync('qemu-io', args, { encoding: 'utf8' });
  const out = r.stdout + r.stderr;
  // qemu-io exits 0 even when a pattern check fails; its message is the only sign.
  if (r.status !== 0 || /verification failed|failed|error/i.test(out))
    throw new Error(`qemu-io ${commands.join('; ')} on ${path}:\n${out}`);
  return out;
}

/** True if [offset, offset+length) of the image holds `pattern` in every byte. */
export function holds(path: string, pattern: number, offset = 0, length = 4096, format = 'qcow2', shared = false): boolean {
  try {
    qemuIo(path, [`read -P ${pattern} ${offset} ${length}`], format, shared);
    return true;
  } catch {
    return false;
  }
}

export interface ImageInfo {
  format: string;
  'virtual-size': number;
  'backing-filename'?: string;
  'full-backing-filename'?: string;
  'backing-filename-format'?: string;
}

export function imageInfo(path: string): ImageInfo {
  return JSON.parse(execFileSync('qemu-img', ['info', '--output=json', '-U', path], { encoding: 'utf8' })) as ImageInfo;
}

/** The access mode (O_RDONLY 0, O_WRONLY 1, O_RDWR 2) of fd in process pid, from /proc. */
export function fdAccessMode(pid: number, fd: number): number {
  const flags = /^flags:\s+([0-7]+)$/m.exec(readFileSync(`/proc/${pid}/fdinfo/${fd}`, 'utf8'));
  if (!flags) throw new Error(`no flags for fd ${fd} of ${pid}`);
  return parseInt(flags[1]!, 8) & 3;
}

/** The qemu-io HMP command that writes `pattern` through a device's own BlockBackend, as a guest would. */
export function guestWrite(deviceId: string, pattern: number, offset = 0, length = 4096): string {
  return `qemu-io -d /machine/peripheral/${deviceId}/virtio-backend "write -P ${pattern} ${offset} ${length}"`;
}

/** The HMP command that flushes a device's writes to its image files, so others can read them. */
export function guestFlush(deviceId: string): string {
  return `qemu-io -d /machine/peripheral/${deviceId}/virtio-backend "flush"`;
}
