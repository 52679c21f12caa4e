/**
 * Wire constants. The RFC's frame (command 1) is the contract every client may rely on; the rest are
 * openhook's extensions, specified in docs/protocol.md. All integers are in host byte order.
 */

/** Command numbers. */
export const Command = {
  /** The RFC's request: open a file, answer with an fd or -errno. Replies keep request order. */
  QEMU_OPEN: 1,
  /** Version and feature discovery. A broker that predates it answers -EPROTO, as to any unknown command. */
  HELLO: 0x100,
  /** QEMU_OPEN with a client-chosen id; replies carry the id and may arrive out of order. */
  OPEN_TAGGED: 0x101,
  /**
   * A fresh private connection: the reply carries one fd, a connected socket of the same kind, served
   * with the same identity (peer and session) as the requesting connection. Replies to CONNECT are
   * interchangeable, so processes sharing an inherited socket may race on it harmlessly.
   */
  CONNECT: 0x102,
  /**
   * The broker's health and counters, as a JSON document in the reply. Answered only to a peer with
   * the broker's own uid or root, on a connection accepted from a listening socket; others get -EACCES.
   */
  STATUS: 0x103,
  /**
   * A session of a daemon for a launcher (openhook-exec): the reply carries the session's hook socket
   * and the base Landlock grants; then the launcher sends its seccomp listener on the same connection,
   * which the daemon serves as that session. Only on a connection accepted from a listening socket,
   * for a session a policy section names and admits the peer for (docs/protocol.md).
   */
  SESSION: 0x104,
  // File operations (Feature.FILE_OPS): one frame layout for all, Size.FILE_OP_HEADER then one or two
  // names (docs/protocol.md). The reply is the RFC's 12-byte reply: 0 or -errno (TMPFILE: an fd).
  /** mkdir(name1, mode) */
  MKDIR: 0x110,
  /** unlink(name1): not a directory */
  UNLINK: 0x111,
  /** rmdir(name1) */
  RMDIR: 0x112,
  /** renameat2(name1, name2, flags: RENAME_NOREPLACE 1, RENAME_EXCHANGE 2) */
  RENAME: 0x113,
  /** link(name1 existing, name2 new); flags 0 */
  LINK: 0x114,
  /** symlink(target name1, stored as given; new name2) */
  SYMLINK: 0x115,
  /** chmod(name1, mode); flags: AT_SYMLINK_NOFOLLOW */
  CHMOD: 0x116,
  /** chown(name1, uid, gid): succeeds only if nothing changes; flags: AT_SYMLINK_NOFOLLOW */
  CHOWN: 0x117,
  /** utimensat(name1, [a, b], [c, d]); flags: AT_SYMLINK_NOFOLLOW */
  UTIMES: 0x118,
  /** truncate(name1, length a) */
  TRUNCATE: 0x119,
  /** access(name1, mode: F_OK 0 or R_OK 4 | W_OK 2 | X_OK 1), answered by the policy */
  ACCESS: 0x11a,
  /** mkfifo(name1, mode) */
  MKFIFO: 0x11b,
  /** open(name1 a directory, O_TMPFILE | flags, mode): an unnamed file; the reply carries its fd */
  TMPFILE: 0x11c,
} as const;
export type Command = (typeof Command)[keyof typeof Command];

export const PROTOCOL_VERSION = 1;

/** Feature bits exchanged by HELLO. */
export const Feature = {
  TAGGED_OPEN: 1 << 0,
  CONNECT: 1 << 1,
  /** SESSION (0x104): offered only by a daemon that hosts sessions (`openhook serve`) */
  SESSION: 1 << 3,
  /** the file-operation commands 0x110 to 0x11c */
  FILE_OPS: 1 << 2,
} as const;

/** The file-operation commands, in order. */
export const FILE_OP_COMMANDS: ReadonlySet<number> = new Set([
  Command.MKDIR,
  Command.UNLINK,
  Command.RMDIR,
  Command.RENAME,
  Command.LINK,
  Command.SYMLINK,
  Command.CHMOD,
  Command.CHOWN,
  Command.UTIMES,
  Command.TRUNCATE,
  Command.ACCESS,
  Command.MKFIFO,
  Command.TMPFILE,
]);

/**
 * Operations that only the syscall hook performs: connect() and bind() of a UNIX path socket. They
 * have no wire command (a frame with one of these numbers is an unknown command: -EPROTO); the
 * numbers name them in the audit log and in status.
 */
export const HookOperation = {
  SOCKET_CONNECT: 0x1f0,
  SOCKET_BIND: 0x1f1,
} as const;
export const HOOK_OPERATIONS: ReadonlySet<number> = new Set(Object.values(HookOperation));

/** Each command's name, for the audit log and status. */
export const COMMAND_NAMES: Readonly<Record<number, string>> = {
  [Command.QEMU_OPEN]: 'open',
  [Command.OPEN_TAGGED]: 'open',
  [Command.HELLO]: 'hello',
  [Command.CONNECT]: 'connect',
  [Command.STATUS]: 'status',
  [Command.SESSION]: 'session',
  [Command.MKDIR]: 'mkdir',
  [Command.UNLINK]: 'unlink',
  [Command.RMDIR]: 'rmdir',
  [Command.RENAME]: 'rename',
  [Command.LINK]: 'link',
  [Command.SYMLINK]: 'symlink',
  [Command.CHMOD]: 'chmod',
  [Command.CHOWN]: 'chown',
  [Command.UTIMES]: 'utimes',
  [Command.TRUNCATE]: 'truncate',
  [Command.ACCESS]: 'access',
  [Command.MKFIFO]: 'mkfifo',
  [Command.TMPFILE]: 'tmpfile',
  [HookOperation.SOCKET_CONNECT]: 'socket-connect',
  [HookOperation.SOCKET_BIND]: 'socket-bind',
};

/** Byte sizes of the fixed parts of frames. */
export const Size = {
  /** u32 size | u32 command | u32 flags | u32 mode | u16 len */
  OPEN_HEADER: 18,
  /** u32 size | u32 command | u32 id | u32 flags | u32 mode | u16 len */
  TAGGED_HEADER: 22,
  /** u32 size | u32 command | u32 version | u32 features */
  HELLO_REQUEST: 16,
  /** CONNECT and STATUS: u32 size | u32 command | u32 flags (0: none are defined yet) */
  FLAGS_REQUEST: 12,
  /** u32 size | u32 command | s32 result; also the CONNECT reply (with its fd), and the start of the STATUS reply */
  REPLY: 12,
  /** REPLY | u32 id */
  TAGGED_REPLY: 16,
  /** REPLY | u32 version | u32 features */
  HELLO_REPLY: 20,
  /** u32 size | u32 command | u32 flags | u16 len, then the name and the launcher's grants */
  SESSION_HEADER: 14,
  /** the longest session name */
  SESSION_NAME_MAX: 255,
  /**
   * File operations: u32 size | u32 command | u32 flags | u32 mode | u32 uid | u32 gid |
   * s64 a | s64 b | s64 c | s64 d | u16 len1 | u16 len2, then name1 and name2
   */
  FILE_OP_HEADER: 60,
  /** the longest name a u16 length can state */
  NAME_MAX_WIRE: 0xffff,
} as const;

/** The largest STATUS reply a broker sends, and a client accepts; within MAX_FRAME, so streams reassemble it. */
export const MAX_STATUS_REPLY = 64 * 1024;

/** No frame can be longer: the tagged header plus the longest name. */
export const MAX_FRAME = Size.TAGGED_HEADER + Size.NAME_MAX_WIRE;
/** Every frame starts with u32 size and u32 command. */
export const MIN_FRAME = 8;
