/* kiln's int8 GEMM: C[b, M, Np] = A[b, M, K] x B[b, K, N], A unsigned 8-bit, B signed
 * 8-bit, C the exact int32 sums (what the int8 pass's ``matmul_integer`` and
 * ``conv2d_integer`` compute; zero points and scales are the caller's epilogue).
 *
 * TVM 0.27 does not select vpdpbusd from its int8 loops (it widens every product to int32),
 * so the kernels of quantized models call this function from their TVM code
 * (``ops/gemm_native.py``), as the bfloat16 kernels call ``gemm_bf16.c``, whose structure
 * this file follows.
 *
 * Layouts:
 * - A: row-major rows of ``lda`` bytes; K is a multiple of 64 (the caller pads it).
 * - B: panels of 16 columns, [N/16][K/4][16][4]: each 32-bit word holds the four bytes
 *   (B[4k..4k+3, j]) that one vpdpbusd lane and one AMX tile row multiply.
 *   Np (= ldc) is N rounded up to 16; the padding columns are zero.
 * - C: row-major rows of ``ldc`` = Np int32, every column written.
 *
 * Two paths, chosen once per process: AMX-INT8 (tdpbusd, Sapphire Rapids and later, once
 * Linux grants the tile data permission) in blocks of 32 (or 16) rows x 32 columns; the
 * last M % 16 rows, and every row on CPUs without AMX, with AVX512-VNNI (vpdpbusd): blocks
 * of up to 8 rows x 32 columns in 16 zmm accumulators. Blocks are shared among TVM's
 * worker threads (TVMBackendParallelLaunch).
 */
#include <immintrin.h>

#include "tiles.h"

enum { ROWS = 32, COLS = 32, KSTEP = 64, AVX_ROWS = 8 };

/* -1: not decided yet; 0: AVX512-VNNI only; 1: AMX */
static int use_amx = -1;


/* Select the path: 1 AMX where available, 0 AVX512-VNNI; returns the path in use. Tests
 * call it to cover both paths on an AMX machine. */
int kiln_gemm_u8s8_use_amx(int wanted) {
  use_amx = wanted && kiln_amx_available(25);
  return use_amx;
}

typedef struct {
  const uint8_t* a;
  const int8_t* b;
  int32_t* c;
  int64_t lda, a_stride, b_stride, c_stride, ldc;
  int batch, m, k, m_blocks, n_blocks;
} Gemm;

/* C[0:rows, 0:16*panels] with AVX512-VNNI (rows <= AVX_ROWS, panels 1 or 2). Inlined into
 * ``avx_block`` with constant rows and panels, so that the accumulators stay in registers. */
static inline __attribute__((always_inline)) void avx_tile(const Gemm* g, const uint8_t* a,
                                                           const int8_t* b, int32_t* c,
                                                           const int rows, const int panels) {
  __m512i acc[AVX_ROWS][2];
  for (int i = 0; i < rows; ++i)
    for (int p = 0; p < panels; ++p) acc[i][p] = _mm512_setzero_si512();
  const int64_t panel = (int64_t)g->k * 16;
  for (int kq = 0; kq < g->k / 4; ++kq) {
    __m512i bv[2];
    for (int p = 0; p < panels; ++p)
      bv[p] = _mm512_loadu_si512(b + p * panel + (int64_t)kq * 64);
    for (int i = 0; i < rows; ++i) {
      int32_t quad;
      memcpy(&quad, a + i * g->lda + 4 * kq, sizeof quad);
      __m512i ai = _mm512_set1_epi32(quad);
      for (int p = 0; p < panels; ++p) acc[i][p] = _mm512_dpbusd_epi32(acc[i][p], ai, bv[p]);
    }
  }
  for (int i = 0; i < rows; ++i)
    for (int p = 0; p < panels; ++p) _mm512_storeu_si512(c + i * g->ldc + 16 * p, acc[i][p]);
}

#define AVX_CASE(r)                                  \
  case r:                                            \
    if (panels > 1)                                  \
      avx_tile(g, a, b, c, r, 2);                    \
    else                                             \
      avx_tile(g, a, b, c, r, 1);                    \
    break;

static void avx_block(const Gemm* g, const uint8_t* a, const int8_t* b, int32_t* c, int rows,
                      int panels) {
  switch (rows) {
    AVX_CASE(1) AVX_CASE(2) AVX_CASE(3) AVX_CASE(4)
    AVX_CASE(5) AVX_CASE(6) AVX_CASE(7) AVX_CASE(8)
  }
}

/* C[0:16*halves, 0:16*panels] with AMX (halves, panels: 1 or 2): tiles 0-3 accumulate
 * (0, 1: rows 0-15; 2, 3: rows 16-31), 4-5 hold A's two row halves, 6-7 B's two panels.
 * The int32 sums are stored straight into C's rows. */
static void amx_block(const Gemm* g, const uint8_t* a, const int8_t* b, int32_t* c,
                      int halves, int panels) {
  const int64_t panel = (int64_t)g->k * 16, c_bytes = g->ldc * 4;
  const uint8_t* a1 = a + 16 * g->lda;
  _tile_zero(0);
  _tile_zero(1);
  _tile_zero(2);
  _tile_zero(3);
  for (int k0 = 0; k0 < g->k; k0 += KSTEP) {
    _tile_loadd(4, a + k0, g->lda);
    _tile_loadd(6, b + (int64_t)k0 * 16, 64);
    _tile_dpbusd(0, 4, 6);
    if (halves > 1) {
      _tile_loadd(5, a1 + k0, g->lda);
      _tile_dpbusd(2, 5, 6);
    }
    if (panels > 1) {
      _tile_loadd(7, b + panel + (int64_t)k0 * 16, 64);
      _tile_dpbusd(1, 4, 7);
      if (halves > 1) _tile_dpbusd(3, 5, 7);
    }
  }
  _tile_stored(0, c, c_bytes);
  if (panels > 1) _tile_stored(1, c + 16, c_bytes);
  if (halves > 1) {
    _tile_stored(2, c + 16 * g->ldc, c_bytes);
    if (panels > 1) _tile_stored(3, c + 16 * g->ldc + 16, c_bytes);
  }
}

/* One block: rows [i0, i0 + 32) (fewer at the end) x columns [j0, j0 + 32) of one batch */
static void block(const Gemm* g, int index, int amx) {
  int per_batch = g->m_blocks * g->n_blocks;
  int bi = index / per_batch, rest = index % per_batch;
  int jb = rest / g->m_blocks, ib = rest % g->m_blocks; /* blocks down a column panel in turn */
  int i0 = ib * ROWS, j0 = jb * COLS;
  int rows = g->m - i0 < ROWS ? g->m - i0 : ROWS;
  int panels = (int)(g->ldc - j0) >= COLS ? 2 : 1;
  const uint8_t* a = g->a + bi * g->a_stride + i0 * g->lda;
  const int8_t* b = g->b + bi * g->b_stride + (int64_t)(j0 / 16) * g->k * 16;
  int32_t* c = g->c + bi * g->c_stride + i0 * g->ldc + j0;
  int done = 0;
  if (amx && rows >= 16) {
    done = rows >= 32 ? 32 : 16;
    amx_block(g, a, b, c, done / 16, panels);
  }
  for (; done < rows; done += AVX_ROWS) {
    int r = rows - done < AVX_ROWS ? rows - done : AVX_ROWS;
    avx_block(g, a + done * g->lda, b, c + done * g->ldc, r, panels);
  }
}

static int task(int task_id, TVMParallelGroupEnv* env, void* data) {
  const Gemm* g = (const Gemm*)data;
  int total = g->batch * g->m_blocks * g->n_blocks, tasks = env->num_task;
  int begin = (int)((int64_t)total * task_id / tasks);
  int end = (int)((int64_t)total * (task_id + 1) / tasks);
  int amx = use_amx;
  if (amx) kiln_configure_tiles();
  for (int i = begin; i < end; ++i) block(g, i, amx);
  if (amx) _tile_release();
  return 0;
}

/* The entry point kiln's kernels call (through TVM's call_extern). Returns 0. */
int kiln_gemm_u8s8(const uint8_t* a, int64_t lda, int64_t a_stride, const int8_t* b,
                   int64_t b_stride, int32_t* c, int64_t ldc, int64_t c_stride, int batch,
                   int m, int k) {
  if (use_amx < 0) kiln_gemm_u8s8_use_amx(1);
  Gemm g = {a, b, c, lda, a_stride, b_stride, c_stride, ldc, batch, m, k,
            (m + ROWS - 1) / ROWS, (int)((ldc + COLS - 1) / COLS)};
  int total = batch * g.m_blocks * g.n_blocks;
  if (total <= 1) {
    TVMParallelGroupEnv one = {0, 1};
    return task(0, &one, &g);
  }
  return TVMBackendParallelLaunch(task, &g, 0);
}
