import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { Command, MAX_FRAME, Size } from '../src/protocol/constants.js';
import {
  DecodeError,
  decodeReply,
  decodeRequest,
  encodeHello,
  encodeHelloReply,
  encodeOpen,
  encodeReply,
  encodeTaggedOpen,
  encodeTaggedReply,
  newRequest,
} from '../src/protocol/frames.js';
import { FrameAssembler } from '../src/protocol/stream.js';
import { rfcOpenFrame, rfcReplyHex } from './helpers.js';
import { E } from '../src/errno.js';

describe('RFC frames, byte for byte', () => {
  it('encodes QEMU_OPEN as u32 size | u32 command | u32 flags | u32 mode | u16 len | name', () => {
    const frame = encodeOpen('/srv/vm/a.img', 0x80002, 0o644);
    assert.equal(frame.toString('hex'), rfcOpenFrame('/srv/vm/a.img', 0x80002, 0o644).toString('hex'));
    assert.equal(frame.length, 18 + 13);
    assert.equal(frame.toString('hex').slice(0, 36), '1f000000' + '01000000' + '02000800' + 'a4010000' + '0d00');
  });

  it('encodes the reply as u32 size=12 | u32 command | s32 result', () => {
    const buf = Buffer.alloc(12);
    encodeReply(buf, 0, Command.QEMU_OPEN, -E.EACCES);
    assert.equal(buf.toString('hex'), rfcReplyHex(1, -E.EACCES));
    assert.equal(buf.toString('hex'), '0c00000001000000f3ffffff');
  });

  it('decodes a request without copying the name', () => {
    const frame = encodeOpen('/a/b', 2, 0o600);
    const req = newRequest();
    assert.equal(decodeRequest(frame, 0, frame.length, req), DecodeError.OK);
    assert.equal(req.command, Command.QEMU_OPEN);
    assert.equal(req.flags, 2);
    assert.equal(req.mode, 0o600);
    assert.equal(req.buf, frame);
    assert.equal(frame.toString('latin1', req.nameOffset, req.nameOffset + req.nameLength), '/a/b');
  });

  it('keeps non-UTF-8 name bytes exact', () => {
    const name = Buffer.from([0x2f, 0x78, 0xff, 0xfe, 0x80]);
    const frame = encodeOpen(name, 0, 0);
    const req = newRequest();
    assert.equal(decodeRequest(frame, 0, frame.length, req), DecodeError.OK);
    assert.deepEqual(frame.subarray(req.nameOffset, req.nameOffset + req.nameLength), name);
  });

  it('refuses lying sizes, short frames, empty names and unknown commands', () => {
    const req = newRequest();
    const good = encodeOpen('/x', 0, 0);
    assert.equal(decodeRequest(good, 0, 7, req), DecodeError.SHORT);
    assert.equal(decodeRequest(good, 0, good.length - 1, req), DecodeError.SIZE_MISMATCH);
    const lying = Buffer.from(good);
    lying.writeUInt16LE(5, 16); // len says 5, frame holds 2
    assert.equal(decodeRequest(lying, 0, lying.length, req), DecodeError.SIZE_MISMATCH);
    const empty = rfcOpenFrame('', 0);
    assert.equal(decodeRequest(empty, 0, empty.length, req), DecodeError.EMPTY_NAME);
    const unknown = Buffer.from(good);
    unknown.writeUInt32LE(77, 4);
    assert.equal(decodeRequest(unknown, 0, unknown.length, req), DecodeError.UNKNOWN_COMMAND);
    const short = Buffer.alloc(12);
    short.writeUInt32LE(12, 0);
    short.writeUInt32LE(1, 4);
    assert.equal(decodeRequest(short, 0, 12, req), DecodeError.SHORT);
  });

  it('round-trips the extensions: HELLO and tagged opens', () => {
    const req = newRequest();
    const hello = encodeHello(1);
    assert.equal(decodeRequest(hello, 0, hello.length, req), DecodeError.OK);
    assert.equal(req.command, Command.HELLO);
    assert.equal(req.features, 1);
    const tagged = encodeTaggedOpen(0xdeadbeef, '/t', 0x42, 0o600);
    assert.equal(tagged.length, Size.TAGGED_HEADER + 2);
    assert.equal(decodeRequest(tagged, 0, tagged.length, req), DecodeError.OK);
    assert.equal(req.id, 0xdeadbeef);
    assert.equal(req.flags, 0x42);

    const buf = Buffer.alloc(32);
    assert.deepEqual(decodeReply(buf, 0, encodeTaggedReply(buf, 0, 7, -E.ENOENT)), {
      command: Command.OPEN_TAGGED,
      result: -E.ENOENT,
      id: 7,
      version: 0,
      features: 0,
    });
    assert.deepEqual(decodeReply(buf, 0, encodeHelloReply(buf, 0, 1)), {
      command: Command.HELLO,
      result: 0,
      id: 0,
      version: 1,
      features: 1,
    });
    assert.equal(decodeReply(buf, 0, 11), null);
  });

  it('refuses names that do not fit a u16 length', () => {
    assert.throws(() => encodeOpen(Buffer.alloc(0x10000, 0x61), 0, 0), RangeError);
  });
});

describe('SOCK_STREAM reassembly', () => {
  const frames = [encodeOpen('/a', 0, 0), encodeTaggedOpen(9, '/bb/cc', 2, 0), encodeHello(1), encodeOpen('/' + 'x'.repeat(300), 0, 0)];
  const stream = Buffer.concat(frames);

  it('yields the same frames for every split point of the stream', () => {
    for (let cut = 0; cut <= stream.length; cut++) {
      const got: string[] = [];
      const a = new FrameAssembler();
      const sink = (b: Buffer, o: number, l: number): void => void got.push(b.toString('hex', o, o + l));
      assert.ok(a.push(stream.subarray(0, cut), 0, cut, sink));
      assert.ok(a.push(stream.subarray(cut), 0, stream.length - cut, sink));
      assert.deepEqual(
        got,
        frames.map((f) => f.toString('hex')),
        `cut at ${cut}`,
      );
      assert.equal(a.pendingBytes, 0);
    }
  });

  it('yields the same frames when fed one byte at a time', () => {
    const got: string[] = [];
    const a = new FrameAssembler();
    for (let i = 0; i < stream.length; i++) a.push(stream, i, 1, (b, o, l) => void got.push(b.toString('hex', o, o + l)));
    assert.deepEqual(
      got,
      frames.map((f) => f.toString('hex')),
    );
  });

  it('gives up on an impossible size, which cannot be resynchronised', () => {
    const a = new FrameAssembler();
    const bad = Buffer.alloc(8);
    bad.writeUInt32LE(MAX_FRAME + 1, 0);
    assert.equal(
      a.push(bad, 0, 8, () => assert.fail('no frame')),
      false,
    );
    const tiny = Buffer.alloc(8);
    tiny.writeUInt32LE(3, 0);
    assert.equal(
      new FrameAssembler().push(tiny, 0, 8, () => assert.fail('no frame')),
      false,
    );
    // split inside the size field
    const b = new FrameAssembler();
    assert.ok(b.push(bad, 0, 2, () => {}));
    assert.equal(
      b.push(bad, 2, 6, () => {}),
      false,
    );
  });
});
