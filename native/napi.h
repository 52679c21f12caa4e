/* N-API helpers shared by every part of the addon: arguments, results, errors, exports.
 *
 * Errors for a failed syscall are built in one place, src/native.ts (see throw_errno in napi.c):
 * C reports the errno and the syscall's name, and never words an error itself. Argument errors
 * (a wrong type, too few arguments) are N-API type errors thrown here, since they are programming
 * errors of the TypeScript side and carry no errno.
 */
#ifndef OPENHOOK_NAPI_H
#define OPENHOOK_NAPI_H

#include <node_api.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* Throws the pending N-API error (or a generic one) and returns NULL. */
napi_value throw_last(napi_env env);

/* Throws the Node-style error (code, errno, syscall) for errno err, built by the factory that
 * src/native.ts registers with setErrorFactory; returns NULL. */
napi_value throw_errno(napi_env env, int err, const char *syscall_name);

napi_value make_int(napi_env env, int64_t v);
int arg_int(napi_env env, napi_value v, int32_t *out);
int arg_uint(napi_env env, napi_value v, uint32_t *out);

/* A path argument: a Buffer or a byte string (latin1), NUL-terminated in out; -errno if bad. */
int arg_path(napi_env env, napi_value v, char *out, size_t cap, size_t *len_out);

/* The bytes of a Buffer or of any typed array; -1 if v is neither. */
int get_buffer(napi_env env, napi_value v, uint8_t **data, size_t *len);

/* Sets exports.constants[name] = v, making exports.constants on first use. */
void export_constant(napi_env env, napi_value exports, const char *name, int64_t v);
#define EXPORT_CONSTANT(exports, x) export_constant(env, (exports), #x, (x))

/* Defines functions on exports from a table of {name, fn}; returns napi_ok or the failure. */
typedef struct {
  const char *name;
  napi_callback fn;
} export_fn;
napi_status export_functions(napi_env env, napi_value exports, const export_fn *fns, size_t n);

/* Defines the class name (constructor ctor, at most 16 methods from a table) on exports. */
napi_status export_class(napi_env env, napi_value exports, const char *name, napi_callback ctor, const export_fn *methods, size_t n);

#define COUNT(table) (sizeof(table) / sizeof((table)[0]))

#define CHECK(call)                                                                                \
  do {                                                                                             \
    if ((call) != napi_ok) return throw_last(env);                                                 \
  } while (0)

#define ARGS(n)                                                                                    \
  size_t argc = n;                                                                                 \
  napi_value argv[n];                                                                              \
  napi_value self;                                                                                 \
  CHECK(napi_get_cb_info(env, info, &argc, argv, &self, NULL));                                    \
  (void)self;                                                                                      \
  if (argc < n) {                                                                                  \
    napi_throw_type_error(env, "ERR_INVALID_ARG", "too few arguments");                            \
    return NULL;                                                                                   \
  }

#define INT_ARG(i, name)                                                                           \
  int32_t name;                                                                                    \
  if (arg_int(env, argv[i], &name)) {                                                              \
    napi_throw_type_error(env, "ERR_INVALID_ARG_TYPE", #name " must be an integer");               \
    return NULL;                                                                                   \
  }

#define UINT_ARG(i, name)                                                                          \
  uint32_t name;                                                                                   \
  if (arg_uint(env, argv[i], &name)) {                                                             \
    napi_throw_type_error(env, "ERR_INVALID_ARG_TYPE", #name " must be an unsigned integer");      \
    return NULL;                                                                                   \
  }

/* A 64-bit number argument (times in seconds, a length, a syscall's return value). */
#define I64_ARG(i, name)                                                                           \
  int64_t name;                                                                                    \
  if (napi_get_value_int64(env, argv[i], &name) != napi_ok) {                                      \
    napi_throw_type_error(env, "ERR_INVALID_ARG_TYPE", #name " must be a number");                 \
    return NULL;                                                                                   \
  }

/* A flag argument: true, or false for anything else (as JS callers pass booleans or nothing). */
#define BOOL_ARG(i, name)                                                                          \
  bool name = false;                                                                               \
  napi_get_value_bool(env, argv[i], &name)

/* A path argument for a request-path call: a bad one (NUL inside, too long) is -errno, not a throw. */
#define PATH_ARG(i, name)                                                                          \
  char name[PATH_MAX];                                                                             \
  {                                                                                                \
    int bad = arg_path(env, argv[i], name, sizeof name, NULL);                                     \
    if (bad) return make_int(env, bad);                                                            \
  }

#endif
