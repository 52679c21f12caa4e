/**
 * Encoding and decoding of frames (docs/protocol.md). Pure functions over bytes: no sockets here.
 *
 * Decoding fills a caller-owned Request and never copies the name: it records where the name lies in
 * the buffer, so that a broker can decide on the exact bytes without allocating per request.
 */
import { Command, FILE_OP_COMMANDS, MAX_FRAME, MAX_STATUS_REPLY, MIN_FRAME, PROTOCOL_VERSION, Size } from './constants.js';
import { hostEndian } from './endian.js';

export interface Request {
  command: number;
  /** the id of an OPEN_TAGGED request, 0 otherwise */
  id: number;
  /** open(2) flags (QEMU_OPEN, OPEN_TAGGED); CONNECT, STATUS: their flags word (none defined; must be 0) */
  flags: number;
  /** create mode (QEMU_OPEN, OPEN_TAGGED) */
  mode: number;
  /** HELLO: the client's version and wanted features */
  version: number;
  features: number;
  /** the buffer holding the frame, and where the name lies in it */
  buf: Buffer;
  nameOffset: number;
  nameLength: number;
  /** file operations: the second name (RENAME, LINK, SYMLINK), and the numeric arguments */
  name2Offset: number;
  name2Length: number;
  uid: number;
  gid: number;
  a: number;
  b: number;
  c: number;
  d: number;
}

export function newRequest(): Request {
  return {
    command: 0,
    id: 0,
    flags: 0,
    mode: 0,
    version: 0,
    features: 0,
    buf: Buffer.alloc(0),
    nameOffset: 0,
    nameLength: 0,
    name2Offset: 0,
    name2Length: 0,
    uid: 0,
    gid: 0,
    a: 0,
    b: 0,
    c: 0,
    d: 0,
  };
}

/** Why a frame could not be decoded. Every one is answered with -EPROTO. */
export const DecodeError = {
  OK: 0,
  /** fewer bytes than the command's fixed header */
  SHORT: 1,
  /** the size field disagrees with the bytes received, or with header + len */
  SIZE_MISMATCH: 2,
  /** a command this broker does not know */
  UNKNOWN_COMMAND: 3,
  /** an open with len == 0 */
  EMPTY_NAME: 4,
} as const;
export type DecodeError = (typeof DecodeError)[keyof typeof DecodeError];

const { readU32, readS32, readU16, readS64, writeU32, writeS32, writeU16, writeS64 } = hostEndian;

/** The file operations that carry two names; the others carry one (len2 must be 0). */
const TWO_NAMES: ReadonlySet<number> = new Set([Command.RENAME, Command.LINK, Command.SYMLINK]);

/**
 * Decodes the one frame in buf[offset, offset+length). `length` is the message length for
 * SOCK_SEQPACKET, or the frame's size field for SOCK_STREAM once that many bytes have arrived.
 */
export function decodeRequest(buf: Buffer, offset: number, length: number, out: Request): DecodeError {
  if (length < MIN_FRAME) return DecodeError.SHORT;
  const size = readU32(buf, offset);
  const command = readU32(buf, offset + 4);
  out.command = command;
  out.buf = buf;
  out.id = 0;
  if (size !== length) return DecodeError.SIZE_MISMATCH;
  switch (command) {
    case Command.QEMU_OPEN: {
      if (length < Size.OPEN_HEADER) return DecodeError.SHORT;
      out.flags = readU32(buf, offset + 8);
      out.mode = readU32(buf, offset + 12);
      const len = readU16(buf, offset + 16);
      if (Size.OPEN_HEADER + len !== size) return DecodeError.SIZE_MISMATCH;
      if (len === 0) return DecodeError.EMPTY_NAME;
      out.nameOffset = offset + Size.OPEN_HEADER;
      out.nameLength = len;
      return DecodeError.OK;
    }
    case Command.OPEN_TAGGED: {
      if (length < Size.TAGGED_HEADER) return DecodeError.SHORT;
      out.id = readU32(buf, offset + 8);
      out.flags = readU32(buf, offset + 12);
      out.mode = readU32(buf, offset + 16);
      const len = readU16(buf, offset + 20);
      if (Size.TAGGED_HEADER + len !== size) return DecodeError.SIZE_MISMATCH;
      if (len === 0) return DecodeError.EMPTY_NAME;
      out.nameOffset = offset + Size.TAGGED_HEADER;
      out.nameLength = len;
      return DecodeError.OK;
    }
    case Command.HELLO: {
      if (length !== Size.HELLO_REQUEST) return DecodeError.SIZE_MISMATCH;
      out.version = readU32(buf, offset + 8);
      out.features = readU32(buf, offset + 12);
      out.nameLength = 0;
      return DecodeError.OK;
    }
    case Command.CONNECT:
    case Command.STATUS: {
      // The same 12 bytes: size, command, flags.
      if (length !== Size.FLAGS_REQUEST) return DecodeError.SIZE_MISMATCH;
      out.flags = readU32(buf, offset + 8);
      out.nameLength = 0;
      return DecodeError.OK;
    }
    case Command.SESSION: {
      // The name, then the launcher's grants up to the end of the frame (the `mode` field says where
      // they start: no other field of a SESSION request needs it).
      if (length < Size.SESSION_HEADER) return DecodeError.SHORT;
      out.flags = readU32(buf, offset + 8);
      const len = readU16(buf, offset + 12);
      if (Size.SESSION_HEADER + len > size) return DecodeError.SIZE_MISMATCH;
      if (len === 0) return DecodeError.EMPTY_NAME;
      out.nameOffset = offset + Size.SESSION_HEADER;
      out.nameLength = len;
      out.mode = Size.SESSION_HEADER + len;
      return DecodeError.OK;
    }
    default:
      if (FILE_OP_COMMANDS.has(command)) return decodeFileOp(buf, offset, size, command, out);
      return DecodeError.UNKNOWN_COMMAND;
  }
}

function decodeFileOp(buf: Buffer, offset: number, size: number, command: number, out: Request): DecodeError {
  if (size < Size.FILE_OP_HEADER) return DecodeError.SHORT;
  const len1 = readU16(buf, offset + 56);
  const len2 = readU16(buf, offset + 58);
  if (Size.FILE_OP_HEADER + len1 + len2 !== size) return DecodeError.SIZE_MISMATCH;
  if (len1 === 0 || (TWO_NAMES.has(command) ? len2 === 0 : len2 !== 0)) return DecodeError.EMPTY_NAME;
  out.flags = readU32(buf, offset + 8);
  out.mode = readU32(buf, offset + 12);
  out.uid = readU32(buf, offset + 16);
  out.gid = readU32(buf, offset + 20);
  out.a = readS64(buf, offset + 24);
  out.b = readS64(buf, offset + 32);
  out.c = readS64(buf, offset + 40);
  out.d = readS64(buf, offset + 48);
  out.nameOffset = offset + Size.FILE_OP_HEADER;
  out.nameLength = len1;
  out.name2Offset = out.nameOffset + len1;
  out.name2Length = len2;
  return DecodeError.OK;
}

/** The arguments of a file operation; unused ones are 0 (uid and gid: -1, "unchanged"). */
export interface FileOpArgs {
  flags?: number;
  mode?: number;
  uid?: number;
  gid?: number;
  a?: number;
  b?: number;
  c?: number;
  d?: number;
}

/** A whole file-operation request frame (commands 0x110 to 0x11c). Names are bytes (exact) or strings (UTF-8). */
export function encodeFileOp(command: number, name1: Buffer | string, name2: Buffer | string | null, args: FileOpArgs = {}): Buffer {
  const one = typeof name1 === 'string' ? Buffer.from(name1) : name1;
  const two = name2 === null ? Buffer.alloc(0) : typeof name2 === 'string' ? Buffer.from(name2) : name2;
  if (one.length > Size.NAME_MAX_WIRE || two.length > Size.NAME_MAX_WIRE || Size.FILE_OP_HEADER + one.length + two.length > MAX_FRAME) {
    throw new RangeError(`names of ${one.length} and ${two.length} bytes do not fit in one frame`);
  }
  const buf = Buffer.allocUnsafe(Size.FILE_OP_HEADER + one.length + two.length);
  writeU32(buf, 0, buf.length);
  writeU32(buf, 4, command);
  writeU32(buf, 8, args.flags ?? 0);
  writeU32(buf, 12, args.mode ?? 0);
  writeU32(buf, 16, args.uid ?? 0xffffffff);
  writeU32(buf, 20, args.gid ?? 0xffffffff);
  writeS64(buf, 24, args.a ?? 0);
  writeS64(buf, 32, args.b ?? 0);
  writeS64(buf, 40, args.c ?? 0);
  writeS64(buf, 48, args.d ?? 0);
  writeU16(buf, 56, one.length);
  writeU16(buf, 58, two.length);
  one.copy(buf, Size.FILE_OP_HEADER);
  two.copy(buf, Size.FILE_OP_HEADER + one.length);
  return buf;
}

export function isValidFrameSize(size: number): boolean {
  return size >= MIN_FRAME && size <= MAX_FRAME;
}

/** Writes an RFC reply (12 bytes) at offset. */
export function encodeReply(buf: Buffer, offset: number, command: number, result: number): number {
  writeU32(buf, offset, Size.REPLY);
  writeU32(buf, offset + 4, command);
  writeS32(buf, offset + 8, result);
  return Size.REPLY;
}

/** Writes an OPEN_TAGGED reply (16 bytes) at offset. */
export function encodeTaggedReply(buf: Buffer, offset: number, id: number, result: number): number {
  writeU32(buf, offset, Size.TAGGED_REPLY);
  writeU32(buf, offset + 4, Command.OPEN_TAGGED);
  writeS32(buf, offset + 8, result);
  writeU32(buf, offset + 12, id);
  return Size.TAGGED_REPLY;
}

/** Writes a HELLO reply (20 bytes) at offset. */
export function encodeHelloReply(buf: Buffer, offset: number, features: number): number {
  writeU32(buf, offset, Size.HELLO_REPLY);
  writeU32(buf, offset + 4, Command.HELLO);
  writeS32(buf, offset + 8, 0);
  writeU32(buf, offset + 12, PROTOCOL_VERSION);
  writeU32(buf, offset + 16, features);
  return Size.HELLO_REPLY;
}

/** A whole STATUS reply: the 12-byte reply header with result 0, then the JSON document. */
export function encodeStatusReply(json: string): Buffer {
  const body = Buffer.from(json, 'utf8');
  if (Size.REPLY + body.length > MAX_STATUS_REPLY)
    throw new RangeError(`status report of ${body.length} bytes exceeds ${MAX_STATUS_REPLY}`);
  const buf = Buffer.allocUnsafe(Size.REPLY + body.length);
  writeU32(buf, 0, buf.length);
  writeU32(buf, 4, Command.STATUS);
  writeS32(buf, 8, 0);
  body.copy(buf, Size.REPLY);
  return buf;
}

export function encodeStatusRequest(flags = 0): Buffer {
  return encodeFlagsRequest(Command.STATUS, flags);
}

/** The 12-byte request of CONNECT and STATUS: size, command, flags. */
function encodeFlagsRequest(command: number, flags: number): Buffer {
  const buf = Buffer.allocUnsafe(Size.FLAGS_REQUEST);
  writeU32(buf, 0, Size.FLAGS_REQUEST);
  writeU32(buf, 4, command);
  writeU32(buf, 8, flags >>> 0);
  return buf;
}

/** A whole QEMU_OPEN request frame. `name` is bytes (exact) or a string (UTF-8). */
export function encodeOpen(name: Buffer | string, flags: number, mode: number): Buffer {
  const bytes = typeof name === 'string' ? Buffer.from(name) : name;
  if (bytes.length > Size.NAME_MAX_WIRE) throw new RangeError(`name is ${bytes.length} bytes; a frame holds at most ${Size.NAME_MAX_WIRE}`);
  const buf = Buffer.allocUnsafe(Size.OPEN_HEADER + bytes.length);
  writeU32(buf, 0, buf.length);
  writeU32(buf, 4, Command.QEMU_OPEN);
  writeU32(buf, 8, flags >>> 0);
  writeU32(buf, 12, mode >>> 0);
  writeU16(buf, 16, bytes.length);
  bytes.copy(buf, Size.OPEN_HEADER);
  return buf;
}

/** A whole OPEN_TAGGED request frame. */
export function encodeTaggedOpen(id: number, name: Buffer | string, flags: number, mode: number): Buffer {
  const bytes = typeof name === 'string' ? Buffer.from(name) : name;
  if (bytes.length > Size.NAME_MAX_WIRE) throw new RangeError(`name is ${bytes.length} bytes; a frame holds at most ${Size.NAME_MAX_WIRE}`);
  const buf = Buffer.allocUnsafe(Size.TAGGED_HEADER + bytes.length);
  writeU32(buf, 0, buf.length);
  writeU32(buf, 4, Command.OPEN_TAGGED);
  writeU32(buf, 8, id >>> 0);
  writeU32(buf, 12, flags >>> 0);
  writeU32(buf, 16, mode >>> 0);
  writeU16(buf, 20, bytes.length);
  bytes.copy(buf, Size.TAGGED_HEADER);
  return buf;
}

export function encodeHello(features: number): Buffer {
  const buf = Buffer.allocUnsafe(Size.HELLO_REQUEST);
  writeU32(buf, 0, Size.HELLO_REQUEST);
  writeU32(buf, 4, Command.HELLO);
  writeU32(buf, 8, PROTOCOL_VERSION);
  writeU32(buf, 12, features >>> 0);
  return buf;
}

/** A CONNECT request frame. */
export function encodeConnect(flags = 0): Buffer {
  return encodeFlagsRequest(Command.CONNECT, flags);
}

export interface Reply {
  command: number;
  result: number;
  /** OPEN_TAGGED: the request's id */
  id: number;
  /** HELLO: the broker's version and granted features */
  version: number;
  features: number;
  /** STATUS with result 0: the JSON document (a copy); absent for every other reply */
  payload?: Buffer;
}

/** Decodes a reply frame; null if it is malformed. */
export function decodeReply(buf: Buffer, offset: number, length: number): Reply | null {
  if (length < Size.REPLY) return null;
  const size = readU32(buf, offset);
  if (size !== length) return null;
  const command = readU32(buf, offset + 4);
  const result = readS32(buf, offset + 8);
  const reply: Reply = { command, result, id: 0, version: 0, features: 0 };
  if (command === Command.OPEN_TAGGED) {
    if (size !== Size.TAGGED_REPLY) return null;
    reply.id = readU32(buf, offset + 12);
  } else if (command === Command.HELLO && result === 0) {
    if (size !== Size.HELLO_REPLY) return null;
    reply.version = readU32(buf, offset + 12);
    reply.features = readU32(buf, offset + 16);
  } else if (command === Command.STATUS && result === 0) {
    if (size > MAX_STATUS_REPLY) return null;
    reply.payload = Buffer.from(buf.subarray(offset + Size.REPLY, offset + size));
  } else if (command === Command.SESSION) {
    reply.payload = Buffer.from(buf.subarray(offset + Size.REPLY, offset + size));
  } else if (size !== Size.REPLY) {
    return null;
  }
  return reply;
}

/**
 * A SESSION request: the session's name, and the grants the launcher adds to the daemon's base
 * grants, each `ro PATH` or `device PATH` (NUL-terminated).
 */
export function encodeSession(name: string, grants: ReadonlyArray<{ kind: 'ro' | 'device'; path: string }> = [], flags = 0): Buffer {
  const nameBytes = Buffer.from(name, 'utf8');
  const tail = Buffer.from(grants.map((g) => `${g.kind} ${g.path}\0`).join(''), 'utf8');
  const buf = Buffer.alloc(Size.SESSION_HEADER + nameBytes.length + tail.length);
  writeU32(buf, 0, buf.length);
  writeU32(buf, 4, Command.SESSION);
  writeU32(buf, 8, flags >>> 0);
  writeU16(buf, 12, nameBytes.length);
  nameBytes.copy(buf, Size.SESSION_HEADER);
  tail.copy(buf, Size.SESSION_HEADER + nameBytes.length);
  return buf;
}

/** A SESSION reply: the 12-byte reply header, then a body: the base grants (`ACCESS PATH`, NUL-terminated) on success, the reason in words on a refusal. */
export function encodeSessionReply(result: number, body: string): Buffer {
  const text = Buffer.from(body, 'utf8');
  const buf = Buffer.alloc(Size.REPLY + text.length);
  writeU32(buf, 0, buf.length);
  writeU32(buf, 4, Command.SESSION);
  writeS32(buf, 8, result);
  text.copy(buf, Size.REPLY);
  return buf;
}
