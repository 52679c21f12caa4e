/**
 * Host byte order accessors. The RFC puts integers in the host's order, not the network's, so the
 * choice is made once here from the machine we run on.
 */
import { endianness } from 'node:os';

interface Accessors {
  readU32(buf: Buffer, offset: number): number;
  readS32(buf: Buffer, offset: number): number;
  readU16(buf: Buffer, offset: number): number;
  writeU32(buf: Buffer, offset: number, value: number): void;
  writeS32(buf: Buffer, offset: number, value: number): void;
  writeU16(buf: Buffer, offset: number, value: number): void;
  /** s64 as a Number: exact within ±2^53 (times and lengths) */
  readS64(buf: Buffer, offset: number): number;
  writeS64(buf: Buffer, offset: number, value: number): void;
}

const little: Accessors = {
  readU32: (b, o) => b.readUInt32LE(o),
  readS32: (b, o) => b.readInt32LE(o),
  readU16: (b, o) => b.readUInt16LE(o),
  writeU32: (b, o, v) => void b.writeUInt32LE(v >>> 0, o),
  writeS32: (b, o, v) => void b.writeInt32LE(v | 0, o),
  writeU16: (b, o, v) => void b.writeUInt16LE(v, o),
  readS64: (b, o) => Number(b.readBigInt64LE(o)),
  writeS64: (b, o, v) => void b.writeBigInt64LE(BigInt(Math.trunc(v)), o),
};

const big: Accessors = {
  readU32: (b, o) => b.readUInt32BE(o),
  readS32: (b, o) => b.readInt32BE(o),
  readU16: (b, o) => b.readUInt16BE(o),
  writeU32: (b, o, v) => void b.writeUInt32BE(v >>> 0, o),
  writeS32: (b, o, v) => void b.writeInt32BE(v | 0, o),
  writeU16: (b, o, v) => void b.writeUInt16BE(v, o),
  readS64: (b, o) => Number(b.readBigInt64BE(o)),
  writeS64: (b, o, v) => void b.writeBigInt64BE(BigInt(Math.trunc(v)), o),
};

export const hostEndian: Accessors = endianness() === 'LE' ? little : big;
