/* N-API helpers shared by every part of the addon (declared in napi.h). */
#define _GNU_SOURCE
#include "napi.h"

#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <string.h>
#include <uchar.h>

#include "parts.h"

napi_value throw_last(napi_env env) {
  const napi_extended_error_info *info = NULL;
  bool pending = false;
  napi_is_exception_pending(env, &pending);
  if (!pending) {
    napi_get_last_error_info(env, &info);
    napi_throw_error(env, "ERR_OPENHOOK_NAPI", info && info->error_message ? info->error_message : "N-API call failed");
  }
  return NULL;
}

/* Errors for errno are built in TypeScript, once, by systemError() in src/native.ts, which this
 * calls. That side already builds them for the request path's -errno results, and it has the
 * complete table of names (os.constants.errno) and Node's own wording: a second builder here would
 * need a hand-kept copy of both, and the two would drift (they had). The addon is the main thread's
 * and loaded by native.ts only, which registers the factory before any other call. */
static napi_ref error_factory;

static napi_value js_set_error_factory(napi_env env, napi_callback_info info) {
  ARGS(1);
  napi_valuetype t;
  if (napi_typeof(env, argv[0], &t) != napi_ok || t != napi_function) {
    napi_throw_type_error(env, "ERR_INVALID_ARG_TYPE", "factory must be a function");
    return NULL;
  }
  if (error_factory) napi_delete_reference(env, error_factory);
  CHECK(napi_create_reference(env, argv[0], 1, &error_factory));
  return NULL;
}

napi_value throw_errno(napi_env env, int err, const char *syscall_name) {
  napi_value factory = NULL, args[2], global, error;
  if (error_factory) napi_get_reference_value(env, error_factory, &factory);
  if (!factory) {
    char msg[160];
    snprintf(msg, sizeof msg, "errno %d from %s (load the addon through src/native.ts)", err, syscall_name);
    napi_throw_error(env, "ERR_OPENHOOK_NO_ERROR_FACTORY", msg);
    return NULL;
  }
  napi_create_int32(env, err, &args[0]);
  napi_create_string_utf8(env, syscall_name, NAPI_AUTO_LENGTH, &args[1]);
  napi_get_global(env, &global);
  if (napi_call_function(env, global, factory, 2, args, &error) != napi_ok) return throw_last(env);
  napi_throw(env, error);
  return NULL;
}

napi_value make_int(napi_env env, int64_t v) {
  napi_value out;
  napi_create_int64(env, v, &out);
  return out;
}

int arg_int(napi_env env, napi_value v, int32_t *out) {
  return napi_get_value_int32(env, v, out) == napi_ok ? 0 : -1;
}

int arg_uint(napi_env env, napi_value v, uint32_t *out) {
  return napi_get_value_uint32(env, v, out) == napi_ok ? 0 : -1;
}

/* A path argument is a Buffer, or a byte string: a JS string whose every char is one byte (latin1),
 * the form the TypeScript side uses so that paths that are not UTF-8 keep their exact bytes. The
 * result is NUL-terminated in `out`; an embedded NUL, a char above 0xFF or an over-long path is
 * refused, never truncated or re-encoded. */
int arg_path(napi_env env, napi_value v, char *out, size_t cap, size_t *len_out) {
  bool is_buffer = false;
  napi_is_buffer(env, v, &is_buffer);
  size_t len = 0;
  if (is_buffer) {
    void *data;
    if (napi_get_buffer_info(env, v, &data, &len) != napi_ok) return -EINVAL;
    if (len >= cap) return -ENAMETOOLONG;
    memcpy(out, data, len);
  } else {
    char16_t wide[PATH_MAX];
    if (napi_get_value_string_utf16(env, v, NULL, 0, &len) != napi_ok) return -EINVAL;
    if (len >= cap || len >= PATH_MAX) return -ENAMETOOLONG;
    napi_get_value_string_utf16(env, v, wide, PATH_MAX, &len);
    for (size_t i = 0; i < len; i++) {
      if (wide[i] > 0xff) return -EINVAL;
      out[i] = (char)wide[i];
    }
  }
  out[len] = 0;
  if (memchr(out, 0, len)) return -EINVAL;
  if (len_out) *len_out = len;
  return 0;
}

int get_buffer(napi_env env, napi_value v, uint8_t **data, size_t *len) {
  bool ok = false;
  napi_is_buffer(env, v, &ok);
  if (ok) return napi_get_buffer_info(env, v, (void **)data, len) == napi_ok ? 0 : -1;
  napi_is_typedarray(env, v, &ok);
  if (!ok) return -1;
  napi_typedarray_type t;
  size_t n, off;
  napi_value ab;
  if (napi_get_typedarray_info(env, v, &t, &n, (void **)data, &ab, &off) != napi_ok) return -1;
  size_t width = t == napi_int32_array || t == napi_uint32_array || t == napi_float32_array ? 4
               : t == napi_int16_array || t == napi_uint16_array ? 2
               : t == napi_float64_array || t == napi_bigint64_array || t == napi_biguint64_array ? 8 : 1;
  *len = n * width;
  return 0;
}

void export_constant(napi_env env, napi_value exports, const char *name, int64_t v) {
  napi_value constants;
  bool has = false;
  napi_has_named_property(env, exports, "constants", &has);
  if (has) {
    napi_get_named_property(env, exports, "constants", &constants);
  } else {
    napi_create_object(env, &constants);
    napi_set_named_property(env, exports, "constants", constants);
  }
  napi_set_named_property(env, constants, name, make_int(env, v));
}

napi_status export_functions(napi_env env, napi_value exports, const export_fn *fns, size_t n) {
  for (size_t i = 0; i < n; i++) {
    napi_property_descriptor d = {fns[i].name, NULL, fns[i].fn, NULL, NULL, NULL, napi_default, NULL};
    napi_status s = napi_define_properties(env, exports, 1, &d);
    if (s != napi_ok) return s;
  }
  return napi_ok;
}

napi_status export_class(napi_env env, napi_value exports, const char *name, napi_callback ctor, const export_fn *methods, size_t n) {
  napi_property_descriptor d[16];
  if (n > COUNT(d)) {
    napi_throw_range_error(env, "ERR_OPENHOOK_NAPI", "export_class: more methods than napi.c allows");
    return napi_invalid_arg;
  }
  for (size_t i = 0; i < n; i++) d[i] = (napi_property_descriptor){methods[i].name, NULL, methods[i].fn, NULL, NULL, NULL, napi_default, NULL};
  napi_value cls;
  napi_status s = napi_define_class(env, name, NAPI_AUTO_LENGTH, ctor, NULL, n, d, &cls);
  return s == napi_ok ? napi_set_named_property(env, exports, name, cls) : s;
}

napi_status helpers_register(napi_env env, napi_value exports) {
  static const export_fn fns[] = {
    {"setErrorFactory", js_set_error_factory},
  };
  return export_functions(env, exports, fns, COUNT(fns));
}
