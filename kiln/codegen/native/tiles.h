/* What kiln's native GEMMs share: TVM's thread pool (the backend API that TVM's own
 * parallel loops call) and AMX's tile set-up. */
#ifndef KILN_NATIVE_TILES_H
#define KILN_NATIVE_TILES_H

#include <cpuid.h>
#include <immintrin.h>
#include <stdint.h>
#include <string.h>
#include <sys/syscall.h>
#include <unistd.h>

typedef struct {
  void* sync_handle;
  int32_t num_task;
} TVMParallelGroupEnv;
typedef int (*FTVMParallelLambda)(int task_id, TVMParallelGroupEnv* penv, void* cdata);
extern int TVMBackendParallelLaunch(FTVMParallelLambda flambda, void* cdata, int num_task);

/* Does the CPU have AMX-TILE and the AMX unit ``edx_bit`` of CPUID leaf 7 (22: BF16,
 * 25: INT8), and does Linux let this process use it? Linux hands out the 8 KB of tile
 * state only to processes that ask (ARCH_REQ_XCOMP_PERM for XFEATURE_XTILEDATA); without
 * it the first tile instruction raises SIGILL. */
static inline int kiln_amx_available(int edx_bit) {
  unsigned a, b, c, d;
  if (!__get_cpuid_count(7, 0, &a, &b, &c, &d)) return 0;
  if (!(d & (1u << edx_bit)) || !(d & (1u << 24))) return 0;
  return syscall(SYS_arch_prctl, 0x1023, 18) == 0;
}

typedef struct {
  uint8_t palette, start_row, reserved[14];
  uint16_t colsb[16];
  uint8_t rows[16];
} KilnTileConfig;

/* Configure the eight tiles as 16 rows of 64 bytes (the only shape the kernels use). */
static inline void kiln_configure_tiles(void) {
  KilnTileConfig cfg;
  memset(&cfg, 0, sizeof cfg);
  cfg.palette = 1;
  for (int t = 0; t < 8; ++t) {
    cfg.rows[t] = 16;
    cfg.colsb[t] = 64;
  }
  _tile_loadconfig(&cfg);
}

#endif
