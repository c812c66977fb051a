/* kiln's bfloat16 GEMM: C[b, M, Np] = A[b, M, K] x B[b, K, N], all bf16, summed in float32
 * and rounded once (to nearest even) when stored.
 *
 * TVM 0.27 cannot emit AVX512-BF16 or AMX code itself (it legalizes every bfloat16 value to
 * float32 or uint16 before LLVM sees it, and LLVM's vdpbf16ps takes bfloat vectors), so the
 * kernels that multiply bfloat16 call this function from their TVM code (``ops/gemm_native.py``);
 * the epilogue (bias, activation, the cast of the result) stays in TVM.
 *
 * Layouts (the caller's TVM code and ``NativeGemm.pack_b`` make them):
 * - A: row-major rows of ``lda`` elements; K is a multiple of 32 (the caller zero-pads).
 * - B: panels of 16 columns, [N/16][K/2][16][2]: each 32-bit word holds the bf16 pair
 *   (B[2k, j], B[2k + 1, j]) that one vdpbf16ps lane and one AMX tile row multiply.
 *   Np (= ldc) is N rounded up to 16; the padding columns are zero.
 * - C: row-major rows of ``ldc`` = Np bf16, every column written.
 *
 * Two paths, chosen once per process: AMX (Sapphire Rapids and later, once Linux grants the
 * tile data permission) in blocks of 32 (or 16) rows x 32 columns (up to four 16 x 16
 * accumulator tiles); the last M % 16 rows, and every row on CPUs without AMX, with
 * AVX512-BF16: blocks of up to 8 rows x 32 columns in 16 zmm accumulators. Blocks are shared
 * among TVM's worker threads (TVMBackendParallelLaunch, the thread pool TVM's own parallel
 * loops use).
 */
#include <immintrin.h>

#include "tiles.h"

enum { ROWS = 32, COLS = 32, KSTEP = 32, AVX_ROWS = 8 };

/* -1: not decided yet; 0: AVX512-BF16 only; 1: AMX */
static int use_amx = -1;


/* Select the path: 1 AMX where available, 0 AVX512-BF16; returns the path in use. Tests
 * call it to cover both paths on an AMX machine. */
int kiln_gemm_bf16_use_amx(int wanted) {
  use_amx = wanted && kiln_amx_available(22);
  return use_amx;
}

typedef struct {
  const uint16_t* a;
  const uint16_t* b;
  uint16_t* c;
  int64_t lda, a_stride, b_stride, c_stride, ldc;
  int batch, m, k, m_blocks, n_blocks;
} Gemm;

/* 16 float32 sums rounded to bf16 (to nearest even, NaN stays NaN) and stored at ``c`` */
static inline void store_bf16(uint16_t* c, __m512 sums) {
  _mm256_storeu_si256((__m256i*)c, (__m256i)_mm512_cvtneps_pbh(sums));
}

/* C[0:rows, 0:16*panels] with AVX512-BF16 (rows <= AVX_ROWS, panels 1 or 2). Inlined into
 * ``avx_block`` with constant rows and panels, so that the accumulators stay in registers. */
static inline __attribute__((always_inline)) void avx_tile(const Gemm* g, const uint16_t* a,
                                                           const uint16_t* b, uint16_t* c,
                                                           const int rows, const int panels) {
  __m512 acc[AVX_ROWS][2];
  for (int i = 0; i < rows; ++i)
    for (int p = 0; p < panels; ++p) acc[i][p] = _mm512_setzero_ps();
  const int64_t panel = (int64_t)g->k * 16;
  for (int kp = 0; kp < g->k / 2; ++kp) {
    __m512bh bv[2];
    for (int p = 0; p < panels; ++p)
      bv[p] = (__m512bh)_mm512_loadu_si512(b + p * panel + (int64_t)kp * 32);
    for (int i = 0; i < rows; ++i) {
      int32_t pair;
      memcpy(&pair, a + i * g->lda + 2 * kp, sizeof pair);
      __m512bh ai = (__m512bh)_mm512_set1_epi32(pair);
      for (int p = 0; p < panels; ++p) acc[i][p] = _mm512_dpbf16_ps(acc[i][p], ai, bv[p]);
    }
  }
  for (int i = 0; i < rows; ++i)
    for (int p = 0; p < panels; ++p) store_bf16(c + i * g->ldc + 16 * p, acc[i][p]);
}

#define AVX_CASE(r)                                  \
  case r:                                            \
    if (panels > 1)                                  \
      avx_tile(g, a, b, c, r, 2);                    \
    else                                             \
      avx_tile(g, a, b, c, r, 1);                    \
    break;

static void avx_block(const Gemm* g, const uint16_t* a, const uint16_t* b, uint16_t* c,
                      int rows, int panels) {
  switch (rows) {
    AVX_CASE(1) AVX_CASE(2) AVX_CASE(3) AVX_CASE(4)
    AVX_CASE(5) AVX_CASE(6) AVX_CASE(7) AVX_CASE(8)
  }
}

/* An accumulator tile (16 x 16 float32) rounded to bf16 into C's rows at ``c`` */
#define STORE_TILE(t, c)                                                   \
  do {                                                                     \
    _tile_stored(t, sums, 64);                                             \
    for (int r = 0; r < 16; ++r)                                           \
      store_bf16((c) + r * g->ldc, _mm512_load_ps(sums + 16 * r));         \
  } while (0)

/* C[0:16*halves, 0:16*panels] with AMX (halves, panels: 1 or 2): tiles 0-3 accumulate
 * (0, 1: rows 0-15; 2, 3: rows 16-31), 4-5 hold A's two row halves, 6-7 B's two panels */
static void amx_block(const Gemm* g, const uint16_t* a, const uint16_t* b, uint16_t* c,
                      int halves, int panels) {
  const int64_t panel = (int64_t)g->k * 16, a_bytes = g->lda * 2;
  float sums[256] __attribute__((aligned(64)));
  const uint16_t* a1 = a + 16 * g->lda;
  _tile_zero(0);
  _tile_zero(1);
  _tile_zero(2);
  _tile_zero(3);
  for (int k0 = 0; k0 < g->k; k0 += KSTEP) {
    _tile_loadd(4, a + k0, a_bytes);
    _tile_loadd(6, b + (int64_t)k0 * 16, 64);
    _tile_dpbf16ps(0, 4, 6);
    if (halves > 1) {
      _tile_loadd(5, a1 + k0, a_bytes);
      _tile_dpbf16ps(2, 5, 6);
    }
    if (panels > 1) {
      _tile_loadd(7, b + panel + (int64_t)k0 * 16, 64);
      _tile_dpbf16ps(1, 4, 7);
      if (halves > 1) _tile_dpbf16ps(3, 5, 7);
    }
  }
  STORE_TILE(0, c);
  if (panels > 1) STORE_TILE(1, c + 16);
  if (halves > 1) {
    STORE_TILE(2, c + 16 * g->ldc);
    if (panels > 1) STORE_TILE(3, c + 16 * g->ldc + 16);
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
  const uint16_t* a = g->a + bi * g->a_stride + i0 * g->lda;
  const uint16_t* b = g->b + bi * g->b_stride + (int64_t)(j0 / 16) * g->k * 16;
  uint16_t* c = g->c + bi * g->c_stride + i0 * g->ldc + j0;
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
int kiln_gemm_bf16(const uint16_t* a, int64_t lda, int64_t a_stride, const uint16_t* b,
                   int64_t b_stride, uint16_t* c, int64_t ldc, int64_t c_stride, int batch,
                   int m, int k) {
  if (use_amx < 0) kiln_gemm_bf16_use_amx(1);
  Gemm g = {a, b, c, lda, a_stride, b_stride, c_stride, ldc, batch, m, k,
            (m + ROWS - 1) / ROWS, (int)((ldc + COLS - 1) / COLS)};
  int total = batch * g.m_blocks * g.n_blocks;
  if (total <= 1) {
    TVMParallelGroupEnv one = {0, 1};
    return task(0, &one, &g);
  }
  return TVMBackendParallelLaunch(task, &g, 0);
}
