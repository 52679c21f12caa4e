/* Landlock's user API, as far as openhook-launch uses it.
 *
 * Debian 12's <linux/landlock.h> stops at ABI 2 (REFER), but the helper must handle every right of
 * the ABI the running kernel reports, up to the newest it knows. So the structures and constants are
 * defined here, from the kernel's documented ABI, instead of relying on the build host's headers.
 * The helper never includes <linux/landlock.h>.
 *
 *   ABI 1 (5.13)  filesystem rights EXECUTE .. MAKE_SYM
 *   ABI 2 (5.19)  + REFER (rename and link across directories)
 *   ABI 3 (6.2)   + TRUNCATE
 *   ABI 4 (6.7)   + handled_access_net (TCP bind and connect); the attribute grows to 16 bytes
 *   ABI 5 (6.10)  + IOCTL_DEV
 *   ABI 6 (6.12)  + scoped: ABSTRACT_UNIX_SOCKET, SIGNAL; the attribute grows to 24 bytes
 *   ABI 7 (6.15)  + audit logging flags for landlock_restrict_self, errata query
 */
#ifndef OPENHOOK_LANDLOCK_UAPI_H
#define OPENHOOK_LANDLOCK_UAPI_H

#include <stdint.h>

/* The attribute of landlock_create_ruleset(2). The kernel takes a size and accepts a prefix of this
 * struct, so a kernel with an older ABI is given only the fields it knows (see ll_attr_size()). */
struct oh_landlock_ruleset_attr {
  uint64_t handled_access_fs;
  uint64_t handled_access_net; /* ABI 4 */
  uint64_t scoped;             /* ABI 6 */
};

/* LANDLOCK_RULE_PATH_BENEATH's attribute; packed in the kernel's ABI. */
struct oh_landlock_path_beneath_attr {
  uint64_t allowed_access;
  int32_t parent_fd;
} __attribute__((packed));

#define OH_LANDLOCK_CREATE_RULESET_VERSION (1U << 0)
#define OH_LANDLOCK_CREATE_RULESET_ERRATA (1U << 1) /* ABI 7 */
#define OH_LANDLOCK_RULE_PATH_BENEATH 1

#define OH_LL_FS_EXECUTE (1ULL << 0)
#define OH_LL_FS_WRITE_FILE (1ULL << 1)
#define OH_LL_FS_READ_FILE (1ULL << 2)
#define OH_LL_FS_READ_DIR (1ULL << 3)
#define OH_LL_FS_REMOVE_DIR (1ULL << 4)
#define OH_LL_FS_REMOVE_FILE (1ULL << 5)
#define OH_LL_FS_MAKE_CHAR (1ULL << 6)
#define OH_LL_FS_MAKE_DIR (1ULL << 7)
#define OH_LL_FS_MAKE_REG (1ULL << 8)
#define OH_LL_FS_MAKE_SOCK (1ULL << 9)
#define OH_LL_FS_MAKE_FIFO (1ULL << 10)
#define OH_LL_FS_MAKE_BLOCK (1ULL << 11)
#define OH_LL_FS_MAKE_SYM (1ULL << 12)
#define OH_LL_FS_REFER (1ULL << 13)     /* ABI 2 */
#define OH_LL_FS_TRUNCATE (1ULL << 14)  /* ABI 3 */
#define OH_LL_FS_IOCTL_DEV (1ULL << 15) /* ABI 5 */

/* Rights that apply to a file (not a directory): a rule on a file may grant only these. */
#define OH_LL_FS_FILE_RIGHTS \
  (OH_LL_FS_EXECUTE | OH_LL_FS_WRITE_FILE | OH_LL_FS_READ_FILE | OH_LL_FS_TRUNCATE | OH_LL_FS_IOCTL_DEV)

#define OH_LL_SCOPE_ABSTRACT_UNIX_SOCKET (1ULL << 0) /* ABI 6 */
#define OH_LL_SCOPE_SIGNAL (1ULL << 1)               /* ABI 6 */

/* The newest ABI whose rights this file defines. A newer kernel is used at this level: it still
 * enforces everything listed here, and nothing newer is silently assumed. */
#define OH_LANDLOCK_ABI_KNOWN 7

/* Every filesystem right of an ABI: the helper handles all of them, so that whatever no rule grants
 * is denied. */
static inline uint64_t oh_landlock_fs_rights(int abi) {
  if (abi >= 5) return (OH_LL_FS_IOCTL_DEV << 1) - 1;
  if (abi >= 3) return (OH_LL_FS_TRUNCATE << 1) - 1;
  if (abi >= 2) return (OH_LL_FS_REFER << 1) - 1;
  return (OH_LL_FS_MAKE_SYM << 1) - 1;
}

static inline uint64_t oh_landlock_scopes(int abi) {
  return abi >= 6 ? OH_LL_SCOPE_ABSTRACT_UNIX_SOCKET | OH_LL_SCOPE_SIGNAL : 0;
}

/* The size of the attribute prefix that an ABI knows; older kernels refuse a longer one (E2BIG)
 * only if its extra bytes are not zero, but giving exactly what they know is the documented way. */
static inline unsigned long oh_landlock_attr_size(int abi) {
  if (abi >= 6) return 24;
  if (abi >= 4) return 16;
  return 8;
}

#endif
