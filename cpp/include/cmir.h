/* C API of the native CMIR engine: load a plan, query its inputs, predict from caller-owned float arrays.
 * Research use only, not for diagnostic use.
 *
 * Every function returns CMIR_OK (0) or an error code; cmir_last_error() then gives a message (thread-local, valid
 * until the next cmir_* call on the same thread). A cmir_engine may be used from several threads at once. */
#ifndef CMIR_H
#define CMIR_H

#include <stddef.h>

#ifdef __cplusplus
extern "C" {
#endif

#define CMIR_API_VERSION 1

#if defined(__GNUC__)
#define CMIR_API __attribute__((visibility("default")))
#else
#define CMIR_API
#endif

typedef struct cmir_engine cmir_engine;

enum cmir_status {
  CMIR_OK = 0,
  CMIR_ERROR_INVALID_ARGUMENT = 1, /* null pointer, bad batch size, NaN/inf input */
  CMIR_ERROR_PLAN = 2,             /* missing, corrupt, truncated or unsupported plan file */
  CMIR_ERROR_RUNTIME = 3,          /* anything else (out of memory, oneDNN failure) */
};

typedef struct cmir_input_spec {
  int image_size;   /* S: art/pv are [B, in_channels, S, S], NCHW float32 */
  int in_channels;
  int num_clinical; /* F: clinical is [B, F] (0: pass NULL) */
  int num_classes;  /* logit/probability are [B, num_classes]; heatmap is [B, 1, S, S] */
  int two_phase;    /* 0: pv is ignored and may be NULL */
} cmir_input_spec;

/* threads <= 0: all cores. On success *out owns the engine; release it with cmir_engine_destroy. */
CMIR_API int cmir_engine_create(const char* plan_path, int threads, cmir_engine** out);
/* precision "fp32" (= cmir_engine_create) or "bf16" (bf16 convolutions; CMIR_ERROR_INVALID_ARGUMENT on a CPU without
 * avx512_bf16 or AMX, cmir_last_error() says why). */
CMIR_API int cmir_engine_create_precision(const char* plan_path, int threads, const char* precision, cmir_engine** out);
CMIR_API void cmir_engine_destroy(cmir_engine* engine);
CMIR_API int cmir_engine_input_spec(const cmir_engine* engine, cmir_input_spec* spec);
/* The plan's metadata (JSON, UTF-8, NUL-terminated), owned by the engine. */
CMIR_API const char* cmir_engine_metadata_json(const cmir_engine* engine);
CMIR_API int cmir_engine_predict(cmir_engine* engine, const float* art, const float* pv, const float* clinical, int batch,
                        float* logit, float* probability, float* heatmap);
CMIR_API const char* cmir_last_error(void);
CMIR_API int cmir_api_version(void);

#ifdef __cplusplus
}
#endif
#endif /* CMIR_H */
