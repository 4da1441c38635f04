// Winograd F(4x4, 3x3) for 3x3 convolutions with stride 1 and padding 1 (every VGG convolution),
// used for the relevance backward: the transposed convolution of such a layer is again one (kernel
// flipped, channels swapped). Per 4x4 output tile it needs 36 multiplications per channel pair
// instead of 144 (Lavin and Gray, 2016). The transforms change rounding: the tests compare this path
// with the float64 reference and the explainer keeps the direct path behind a switch.
//
// Layout: U[xi][k][c] (36 x K x C) are the transformed weights, computed and packed for the GEMM
// micro-kernel once per layer and rule. The tiles of all n maps are numbered in one
// sequence (map, tile row, tile column) and processed in ranges: V[xi][c][t] = B^T d B of each input
// tile, 36 GEMMs M[xi] (K x T) = U[xi] (K x C) V[xi] (C x T), then Y = A^T m A per output tile.
//
// Two schedules, same arithmetic. "Fused" (the default where it fits): each thread takes 64 tiles at
// a time and runs all three steps on them, so V and M (a few hundred KiB) never leave its L2; the
// 64- and 128-channel layers are bound by memory traffic otherwise. "Chunked" (wide layers, where
// V of 64 tiles would not fit L2): big super-chunks, each step parallel over channels or xi.
#include "internal.h"

#include <limits.h>
#include <string.h>

// G of F(4x4, 3x3) with interpolation points 0, +-1, +-2 (and infinity); B^T and A^T are written
// out as formulas in the transforms below:
//   B^T = [4 0 -5 0 1 0; 0 -4 -4 1 1 0; 0 4 -4 -1 1 0; 0 -2 -1 2 1 0; 0 2 -1 -2 1 0; 0 4 0 -5 0 1]
//   A^T = [1 1 1 1 1 0; 0 1 -1 2 -2 0; 0 1 1 4 4 0; 0 1 -1 8 -8 1]
static const float G[6][3] = {
    {1.0f / 4, 0, 0}, {-1.0f / 6, -1.0f / 6, -1.0f / 6}, {-1.0f / 6, 1.0f / 6, -1.0f / 6},
    {1.0f / 24, 1.0f / 12, 1.0f / 6}, {1.0f / 24, -1.0f / 12, 1.0f / 6}, {0, 0, 1},
};

// B^T applied along one axis of 16 tiles or columns at once: e[k] = (B^T d)[k] for the six vectors
// d[0..5] (f4, f5, f2: the constants 4, 5, 2). Every AVX-512 input transform runs it along y, then
// along x.
#define BT_PASS(e, d)                                                                                       \
    do {                                                                                                        \
        e[0] = _mm512_add_ps(_mm512_fmsub_ps(f4, d[0], _mm512_mul_ps(f5, d[2])), d[4]);                         \
        e[1] = _mm512_sub_ps(_mm512_add_ps(d[3], d[4]), _mm512_mul_ps(f4, _mm512_add_ps(d[1], d[2])));          \
        e[2] = _mm512_add_ps(_mm512_mul_ps(f4, _mm512_sub_ps(d[1], d[2])), _mm512_sub_ps(d[4], d[3]));          \
        e[3] = _mm512_add_ps(_mm512_mul_ps(f2, _mm512_sub_ps(d[3], d[1])), _mm512_sub_ps(d[4], d[2]));          \
        e[4] = _mm512_add_ps(_mm512_mul_ps(f2, _mm512_sub_ps(d[1], d[3])), _mm512_sub_ps(d[4], d[2]));          \
        e[5] = _mm512_add_ps(_mm512_fmsub_ps(f4, d[1], _mm512_mul_ps(f5, d[3])), d[5]);                         \
    } while (0)

// A^T applied along one axis: t[0..3] = (A^T q)[k] for the six vectors q[0..5] (f2, f4, f8: the
// constants 2, 4, 8). Every AVX-512 output transform runs it along x, then along y.
#define AT_PASS(t, q)                                                                                    \
    do {                                                                                                 \
        __m512 p1_ = _mm512_add_ps(q[1], q[2]), d1_ = _mm512_sub_ps(q[1], q[2]);                          \
        __m512 p3_ = _mm512_add_ps(q[3], q[4]), d3_ = _mm512_sub_ps(q[3], q[4]);                          \
        t[0] = _mm512_add_ps(_mm512_add_ps(q[0], p1_), p3_);                                             \
        t[1] = _mm512_fmadd_ps(f2, d3_, d1_);                                                            \
        t[2] = _mm512_fmadd_ps(f4, p3_, p1_);                                                            \
        t[3] = _mm512_add_ps(_mm512_fmadd_ps(f8, d3_, d1_), q[5]);                                       \
    } while (0)

long ck_winograd_weights_size(int K, int C) { return 36L * ck_gemm_packed_a_size(CK_ISA_PORTABLE, K, C); }

typedef struct {
    const float *w;
    int K, C, transpose;
    long per;  // floats per U[xi]
    float *U;
} weights_job;

// (G g G^T) for output channel k and input channel c into u[xi], xi = 6 a + b.
static void weights_tile(const weights_job *q, long k, int c, float u[36]) {
    float g[3][3];
    for (int i = 0; i < 3; i++)
        for (int j = 0; j < 3; j++)
            g[i][j] = q->transpose ? q->w[((long)c * q->K + k) * 9 + (2 - i) * 3 + (2 - j)]
                                   : q->w[((long)k * q->C + c) * 9 + i * 3 + j];
    float t[6][3];  // G g
    for (int a = 0; a < 6; a++)
        for (int j = 0; j < 3; j++) t[a][j] = G[a][0] * g[0][j] + G[a][1] * g[1][j] + G[a][2] * g[2][j];
    for (int a = 0; a < 6; a++)
        for (int b = 0; b < 6; b++) u[a * 6 + b] = t[a][0] * G[b][0] + t[a][1] * G[b][1] + t[a][2] * G[b][2];
}

// Sliver t (rows 6 t .. 6 t + 5) of every U[xi], written straight into the packed layout of
// ck_gemm_pack_a (ck_gemm_packed_a_index), rows k >= K (the last sliver's padding) zero. Per input channel the six rows' values go out together (six
// consecutive floats per U[xi]); a task owns the cache lines it writes. Rows one at a time,
// tasks of one row each, wrote every line six times from both cores (VGG-16's Winograd weights,
// paper-vgg, 2 threads on Zen 3: 0.40 s; 0.21 s this way, the result array's allocation included).
static void weights_sliver(void *p, long t) {
    const weights_job *q = p;
    for (int c = 0; c < q->C; c++) {
        float *at = q->U + ck_gemm_packed_a_index(CK_ISA_PORTABLE, q->K, q->C, 6 * t, c);
        float u[6][36];
        for (int r = 0; r < 6; r++) {
            if (6 * t + r < q->K) weights_tile(q, 6 * t + r, c, u[r]);
            else for (int xi = 0; xi < 36; xi++) u[r][xi] = 0.0f;
        }
        for (int xi = 0; xi < 36; xi++)
            for (int r = 0; r < 6; r++) at[xi * q->per + r] = u[r][xi];
    }
}

int ck_winograd_weights(const float *w, int K, int C, int transpose, float *U) {
    // transpose: w is a forward weight (Kf, Cf, 3, 3) and U is for its adjoint: K = Cf outputs,
    // C = Kf inputs, kernel flipped in both axes. Packed for the GEMM micro-kernels once here
    // (every ISA's kernel takes 6-row slivers), not per call: the explainer calls once per block
    // of maps, and a 512-channel U is 38 MB. Rows in parallel, each written once into its packed
    // place (a transform into a temporary U then packing it was 4 % of the CPU time of a VGG-16
    // explanation at 128 x 128 and most of the explainer's start-up).
    unsigned long before = ck_alloc_failures();
    weights_job q = {w, K, C, transpose, ck_gemm_packed_a_size(CK_ISA_PORTABLE, K, C), U};
    ck_parallel_for((K + 5) / 6, &q, weights_sliver);
    return ck_status_since(before);
}

typedef struct {
    int isa;
    const float *x;
    const float *Up;  // U as packed by ck_winograd_weights
    float *y;
    float *V, *M;
    int C, K, H, W, th, tw;
    long g0, T;  // the tile range [g0, g0 + T) of V and M
    long Tp;     // T rounded up to nr: the row stride of V's panels and of M
    int k0, Kr;  // M holds output channels [k0, k0 + Kr)
    // Fused LRP steps (NULL: off). Input: x / stab(z), z shared by all maps. Output:
    // y = [y +] scale * a * result, a shared by all maps.
    const float *z, *a;
    float eps, scale;
    int accumulate;
    int nr, mr;  // GEMM micro-kernel tile: V is written pre-packed in panels of nr tiles
    long Mp;     // K rounded up to mr: the packed size of one U[xi] is Mp * C
    // Unpooling on loading (NULL: off): x is the relevance at the output of a max-pool with
    // non-overlapping sh x sw windows, (n, C, pHo, pWo), and pam (C, pHo, pWo) its winners.
    const int32_t *pam;
    int pHo, pWo, psh, psw;
} wino_job;

// V[xi] as the GEMM's packed B: panels of nr tiles, each C rows of nr values.
static inline float *v_at(const wino_job *j, int xi, long c, long t) {
    return j->V + (long)xi * j->C * j->Tp + (t / j->nr) * j->C * j->nr + c * j->nr + (t % j->nr);
}

static inline float *m_at(const wino_job *j, int xi, long k, long t) {
    return j->M + ((long)xi * j->Kr + (k - j->k0)) * j->Tp + t;
}

// The row-wise transforms walk the job's tile range in runs along tile rows: map m, tile row ty,
// tile columns tx .. tx + cnt - 1 (cnt <= most), l the run's first index in the range; with
// panels, runs also end at the packed panels' edges, so each run's V stores are contiguous.
typedef struct {
    long m, l;
    int ty, tx, cnt;
} tile_run;

static inline int next_run(const wino_job *j, long *g, int most, int panels, tile_run *r) {
    long end = j->g0 + j->T;
    if (*g >= end) return 0;
    long gr = *g / j->tw;
    r->m = gr / j->th;
    r->ty = (int)(gr % j->th);
    r->tx = (int)(*g % j->tw);
    r->l = *g - j->g0;
    long cnt = ck_min(ck_min(j->tw - r->tx, end - *g), most);
    if (panels) cnt = ck_min(cnt, j->nr - r->l % j->nr);
    r->cnt = (int)cnt;
    *g += cnt;
    return 1;
}

#if CK_X86
// One row of the unpooled relevance times 1 / stab(z), for 2-wide pool windows: row[p] for image
// columns x0 + p in [x0 + lo, x0 + hi). 16 windows (32 columns) per step: the winners' columns
// compared with each lane's two, the values interleaved into the even and odd columns.
__attribute__((target("avx512f"))) static void unpool_row2_avx512(float *row, int x0, int lo, int hi, const float *rp,
                                                                  const int32_t *am, const float *zr, long rowStart,
                                                                  int pWo) {
    const __m512i one = _mm512_set1_epi32(1), lane = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24,
                                                                        26, 28, 30);
    const __m512i lo16 = _mm512_setr_epi32(0, 16, 1, 17, 2, 18, 3, 19, 4, 20, 5, 21, 6, 22, 7, 23);
    const __m512i hi16 = _mm512_setr_epi32(8, 24, 9, 25, 10, 26, 11, 27, 12, 28, 13, 29, 14, 30, 15, 31);
    int first = x0 + lo, last = x0 + hi;  // image columns [first, last)
    for (int xs = first & ~1; xs < last; xs += 32) {
        int q0 = xs / 2, nq = pWo - q0 < 16 ? pWo - q0 : 16;
        __mmask16 qm = nq <= 0 ? 0 : (__mmask16)((1u << nq) - 1);
        __m512 v = _mm512_maskz_loadu_ps(qm, rp + q0);
        __m512i d = _mm512_sub_epi32(_mm512_maskz_loadu_epi32(qm, am + q0), _mm512_set1_epi32((int)rowStart));
        __m512i even = _mm512_add_epi32(_mm512_set1_epi32(xs), lane);
        __m512 ve = _mm512_maskz_mov_ps(_mm512_cmpeq_epi32_mask(d, even), v);
        __m512 vo = _mm512_maskz_mov_ps(_mm512_cmpeq_epi32_mask(d, _mm512_add_epi32(even, one)), v);
        for (int h = 0; h < 2; h++) {
            int c0 = xs + 16 * h;  // image columns c0 .. c0 + 15
            int a = first - c0 > 0 ? first - c0 : 0, b = last - c0 < 16 ? last - c0 : 16;
            if (b <= a) continue;
            __mmask16 cm = (__mmask16)(((1u << b) - 1) & ~((1u << a) - 1));
            __m512 w = _mm512_permutex2var_ps(ve, h ? hi16 : lo16, vo);
            w = _mm512_mul_ps(w, _mm512_maskz_loadu_ps(cm, zr + c0));
            _mm512_mask_storeu_ps(row + (c0 - x0), cm, w);
        }
    }
}
#endif

// Where row yy of channel c's unpooled relevance (map m) comes from: the pooled row rp, its winners
// am and 1 / stab(z) of the row zr. 0 when no pool window covers the row (it is all zero).
static inline int unpool_source(const wino_job *j, long m, long c, int yy, const float **rp, const int32_t **am,
                                const float **zr) {
    int py = yy / j->psh;
    if (py >= j->pHo) return 0;
    *rp = j->x + (m * j->C + c) * (long)j->pHo * j->pWo + (long)py * j->pWo;
    *am = j->pam + (c * (long)j->pHo + py) * j->pWo;
    *zr = j->z + (c * (long)j->H + yy) * j->W;
    return 1;
}

// row[p] for image columns x0 + p in [x0 + lo, x0 + hi) of row yy: each window's relevance to its
// winner, 0 elsewhere. Branch-free: which column of a window wins is data, and mispredicted
// branches cost more than the select.
static inline void unpool_row(const wino_job *j, int yy, int x0, int lo, int hi, const float *rp, const int32_t *am,
                              const float *zr, float *row) {
    long rowStart = (long)yy * j->W;
    for (int p = lo; p < hi; p++) {
        int xx = x0 + p, q = xx / j->psw;
        row[p] = q < j->pWo && am[q] - rowStart == xx ? rp[q] * zr[xx] : 0.0f;
    }
}

// Input transform of channel c for the job's tile range, one segment (a tile row's run of tiles
// inside the range) at a time: the vertical pass (B^T along y) is element-wise over x and
// vectorizes; the horizontal pass uses the explicit formulas of B^T, which skip its zeros.
// Instantiated for AVX2 and portable code below (the C target has no ISA flags); AVX-512 runs
// input_avx512, the same passes in registers.
static inline __attribute__((always_inline)) void input_body(wino_job *j, long c) {
    const int tw = j->tw;
    float *buf = ck_scratch(3, (size_t)12 * (4 * tw + 2));
    if (!buf) return;
    long plane = (long)j->H * j->W;
    for (long g = j->g0, end = j->g0 + j->T; g < end;) {
        long gr = g / tw, m = gr / j->th;
        int ty = (int)(gr % j->th), tx0 = (int)(g % tw);
        int tx1 = (int)ck_min(tw, tx0 + (end - g));
        const int Wp = 4 * (tx1 - tx0) + 2;  // padded columns 4 tx0 .. 4 tx1 + 1, i.e. x = 4 tx0 - 1 ..
        float *d = buf, *e = buf + 6 * Wp;   // d: 6 padded input rows; e: B^T d
        const float *xc = j->x + (m * j->C + c) * plane;
        int x0 = 4 * tx0 - 1;
        int lo = x0 < 0 ? -x0 : 0, hi = (int)ck_min(Wp, j->W - x0);  // row[p] with 0 <= x0 + p < W
        for (int a = 0; a < 6; a++) {
            float *row = d + a * Wp;
            int yy = ty * 4 - 1 + a;
            if (yy < 0 || yy >= j->H || hi <= lo) { memset(row, 0, (size_t)Wp * sizeof(float)); continue; }
            for (int p = 0; p < lo; p++) row[p] = 0.0f;
            for (int p = hi; p < Wp; p++) row[p] = 0.0f;
            if (j->pam) {  // winner-take-all: each window's relevance to its winner, 0 elsewhere
                const float *rp, *zr;
                const int32_t *am;
                if (unpool_source(j, m, c, yy, &rp, &am, &zr)) unpool_row(j, yy, x0, lo, hi, rp, am, zr, row);
                else for (int p = lo; p < hi; p++) row[p] = 0.0f;
                continue;
            }
            const float *src = xc + (long)yy * j->W + x0;
            if (j->z) {  // j->z holds 1 / stab(z) here (see winograd())
                const float *zr = j->z + (c * (long)j->H + yy) * j->W + x0;
                for (int p = lo; p < hi; p++) row[p] = src[p] * zr[p];
            } else {
                memcpy(row + lo, src + lo, (size_t)(hi - lo) * sizeof(float));
            }
        }
        const float *d0 = d, *d1 = d + Wp, *d2 = d + 2 * Wp, *d3 = d + 3 * Wp, *d4 = d + 4 * Wp, *d5 = d + 5 * Wp;
        float *e0 = e, *e1 = e + Wp, *e2 = e + 2 * Wp, *e3 = e + 3 * Wp, *e4 = e + 4 * Wp, *e5 = e + 5 * Wp;
        for (int x = 0; x < Wp; x++) {
            e0[x] = 4 * d0[x] - 5 * d2[x] + d4[x];
            e1[x] = -4 * d1[x] - 4 * d2[x] + d3[x] + d4[x];
            e2[x] = 4 * d1[x] - 4 * d2[x] - d3[x] + d4[x];
            e3[x] = -2 * d1[x] - d2[x] + 2 * d3[x] + d4[x];
            e4[x] = 2 * d1[x] - d2[x] - 2 * d3[x] + d4[x];
            e5[x] = 4 * d1[x] - 5 * d3[x] + d5[x];
        }
        long lbase = g - j->g0;  // tile index of tx0 inside the range
        for (int a = 0; a < 6; a++) {
            const float *er = e + a * Wp;
            // Runs of tiles that fall in one packed panel, so every store below is contiguous.
            for (int t0 = 0, n = tx1 - tx0; t0 < n;) {
                long l = lbase + t0;
                int cnt = (int)ck_min(n - t0, j->nr - l % j->nr);
                float *dst[6];
                for (int b = 0; b < 6; b++) dst[b] = v_at(j, a * 6 + b, c, l);
                for (int t = 0; t < cnt; t++) {
                    const float *q = er + 4 * (t0 + t);
                    dst[0][t] = 4 * q[0] - 5 * q[2] + q[4];
                    dst[1][t] = -4 * q[1] - 4 * q[2] + q[3] + q[4];
                    dst[2][t] = 4 * q[1] - 4 * q[2] - q[3] + q[4];
                    dst[3][t] = -2 * q[1] - q[2] + 2 * q[3] + q[4];
                    dst[4][t] = 2 * q[1] - q[2] - 2 * q[3] + q[4];
                    dst[5][t] = 4 * q[1] - 5 * q[3] + q[5];
                }
                t0 += cnt;
            }
        }
        g += tx1 - tx0;
    }
}

#if CK_X86
// B^T d B of 16 tiles at once, d[a][b] holding row a, column b of every lane's 6 x 6 input (B^T
// along y, then along x), stored to V for the tiles l .. l + 15: 16 consecutive tiles from a
// multiple of 16 stay in one panel (nr is 64 where these run).
__attribute__((target("avx512f,avx512dq,avx2,fma"), always_inline)) static inline void transform_store16(
    wino_job *j, long c, long l, __m512 d[6][6]) {
    const __m512 f4 = _mm512_set1_ps(4), f5 = _mm512_set1_ps(5), f2 = _mm512_set1_ps(2);
    __m512 e[6][6];
    for (int b = 0; b < 6; b++) {
        __m512 rows[6], col[6];
        for (int a = 0; a < 6; a++) rows[a] = d[a][b];
        BT_PASS(col, rows);
        for (int k = 0; k < 6; k++) e[k][b] = col[k];
    }
    for (int a = 0; a < 6; a++) {
        __m512 h[6];
        BT_PASS(h, e[a]);
        for (int b = 0; b < 6; b++) _mm512_storeu_ps(v_at(j, a * 6 + b, c, l), h[b]);
    }
}

// A^T m A of 16 tiles at once, from M's values of output channel k for the tiles l .. l + 15:
// o[r][x] holds row r, column x of every lane's 4 x 4 result.
__attribute__((target("avx512f,avx512dq,avx2,fma"), always_inline)) static inline void inverse16(
    const wino_job *j, long k, long l, __m512 o[4][4]) {
    const __m512 f2 = _mm512_set1_ps(2), f4 = _mm512_set1_ps(4), f8 = _mm512_set1_ps(8);
    long st = (long)j->Kr * j->Tp;
    const float *m0 = m_at(j, 0, k, l);
    __m512 f[6][4];
    for (int a = 0; a < 6; a++) {
        __m512 q[6];
        for (int b = 0; b < 6; b++) q[b] = _mm512_loadu_ps(m0 + (long)(a * 6 + b) * st);
        AT_PASS(f[a], q);
    }
    for (int x = 0; x < 4; x++) {
        __m512 col[6], t[4];
        for (int a = 0; a < 6; a++) col[a] = f[a][x];
        AT_PASS(t, col);
        for (int r = 0; r < 4; r++) o[r][x] = t[r];
    }
}

// MARK: Small maps: 16 tiles per vector

// On maps of at most 4 tiles per row (VGG's 8 x 8 layers; 13 to 16 pixels a side take the
// map-per-vector variants further down) a tile row is too short for the row-wise passes: their
// per-row work dominates. These variants put 16 consecutive tiles
// of the range (any rows, any maps) in the 16 lanes of a vector: the 6 x 6 inputs are gathered
// (zero where padding), both passes are lane-wise, and V is stored with plain vector stores; the
// output side loads M contiguously and scatters the 4 x 4 results.
typedef struct {
    int off[16], pos[16];  // element offsets of each lane's tile corner: with the map, within the plane
    int ty[16], tx[16];
    int lanes;
} tile_lanes;

// Runs once per 16 tiles and channel: the divisions for the first tile only, then the tile
// column, row and map step on (lanes past cnt run on past the range; their masks are off, so
// nothing is read or written for them).
static void lanes_at(const wino_job *j, long g, int cnt, long mapStride, int corner, tile_lanes *L) {
    L->lanes = cnt;
    long gr = g / j->tw, m = gr / j->th;
    int ty = (int)(gr % j->th), tx = (int)(g % j->tw);
    for (int i = 0; i < 16; i++) {
        L->ty[i] = ty; L->tx[i] = tx;
        L->pos[i] = (4 * ty + corner) * j->W + 4 * tx + corner;
        L->off[i] = (int)(m * mapStride) + L->pos[i];
        if (++tx == j->tw) {
            tx = 0;
            if (++ty == j->th) { ty = 0; m++; }
        }
    }
}

// Lanes whose coordinate 4 t + corner + d (t: each lane's tile row or column) lies in [0, limit).
__attribute__((target("avx512f"))) static inline __mmask16 edge_mask(const tile_lanes *L, const int *t, int corner,
                                                                     int d, int limit) {
    __mmask16 m = 0;
    for (int i = 0; i < L->lanes; i++) {
        int v = 4 * t[i] + corner + d;
        if (v >= 0 && v < limit) m |= (__mmask16)(1u << i);
    }
    return m;
}

__attribute__((target("avx512f,avx512dq,avx2,fma"))) static void input_lanes_avx512(void *p, long c) {
    wino_job *j = p;
    long plane = (long)j->H * j->W;
    const float *xc = j->x + c * plane;
    const float *zc = j->z ? j->z + c * plane : NULL;
    for (long g = j->g0, end = j->g0 + j->T; g < end; g += 16) {
        tile_lanes L;
        int cnt = (int)ck_min(16, end - g);
        lanes_at(j, g, cnt, (long)j->C * plane, -1, &L);
        __m512i off = _mm512_loadu_si512(L.off), pos = _mm512_loadu_si512(L.pos);
        __mmask16 rows[6], cols[6];
        for (int a = 0; a < 6; a++) { rows[a] = edge_mask(&L, L.ty, -1, a, j->H); cols[a] = edge_mask(&L, L.tx, -1, a, j->W); }
        __m512 d[6][6];
        for (int a = 0; a < 6; a++)
            for (int b = 0; b < 6; b++) {
                __mmask16 m = rows[a] & cols[b];
                __m512i o = _mm512_add_epi32(off, _mm512_set1_epi32(a * j->W + b));
                d[a][b] = _mm512_mask_i32gather_ps(_mm512_setzero_ps(), m, o, xc, 4);
                if (zc) {
                    __m512i q = _mm512_add_epi32(pos, _mm512_set1_epi32(a * j->W + b));
                    d[a][b] = _mm512_mul_ps(d[a][b], _mm512_mask_i32gather_ps(_mm512_setzero_ps(), m, q, zc, 4));
                }
            }
        // Lanes past the range hold zeros, which is what the panel's tail must hold.
        transform_store16(j, c, g - j->g0, d);
    }
}

__attribute__((target("avx512f,avx512dq,avx2,fma"))) static void output_lanes_avx512(void *p, long k) {
    wino_job *j = p;
    long plane = (long)j->H * j->W;
    float *yk = j->y + k * plane;
    const float *ak = j->a ? j->a + k * plane : NULL;
    const __m512 sc = _mm512_set1_ps(j->scale);
    for (long g = j->g0, end = j->g0 + j->T; g < end; g += 16) {
        tile_lanes L;
        int cnt = (int)ck_min(16, end - g);
        lanes_at(j, g, cnt, (long)j->K * plane, 0, &L);
        __m512i off = _mm512_loadu_si512(L.off), pos = _mm512_loadu_si512(L.pos);
        __m512 o[4][4];
        inverse16(j, k, g - j->g0, o);
        __mmask16 cols[4];
        for (int x = 0; x < 4; x++) cols[x] = edge_mask(&L, L.tx, 0, x, j->W);
        for (int r = 0; r < 4; r++) {
            __mmask16 rm = edge_mask(&L, L.ty, 0, r, j->H);
            if (!rm) continue;
            for (int x = 0; x < 4; x++) {
                __mmask16 m = rm & cols[x];
                __m512i oi = _mm512_add_epi32(off, _mm512_set1_epi32(r * j->W + x));
                __m512 v = _mm512_mul_ps(sc, o[r][x]);
                if (ak) {
                    __m512i q = _mm512_add_epi32(pos, _mm512_set1_epi32(r * j->W + x));
                    v = _mm512_mul_ps(v, _mm512_mask_i32gather_ps(_mm512_setzero_ps(), m, q, ak, 4));
                }
                if (j->accumulate) v = _mm512_add_ps(v, _mm512_mask_i32gather_ps(_mm512_setzero_ps(), m, oi, yk, 4));
                _mm512_mask_i32scatter_ps(yk, m, oi, v, 4);
            }
        }
    }
}

// MARK: Maps of 4 x 4 tiles: a map per vector

// Maps of 13 to 16 pixels a side (VGG-16's 16 x 16 layers at 128 x 128, 14 x 14 at 224 x 224) are
// exactly 16 tiles, the lanes of one vector (lane 4 ty + tx), and every range starts at a multiple
// of 16 tiles (panels of 64). The variants below load and store whole map rows and move values
// between rows and tiles with lane permutes, where the lane variants above gather and scatter each
// value (a gather costs tens of cycles on CPUs with the gather data sampling mitigation; they were
// 30 % of the 512-channel layers' time). Same arithmetic as the lane variants, bit for bit.

// out[j] lane 4 ty + tx = in[ty] lane 4 tx + j (tile-major to row-major and back are the same
// permutation with the roles of the vector index and the lane's low two bits swapped).
__attribute__((target("avx512f"))) static inline void rows_to_tiles(const __m512 in[4], __m512 out[4]) {
    for (int jj = 0; jj < 4; jj++) {
        int idx[16];
        for (int L = 0; L < 16; L++) idx[L] = ((L / 4) & 1) * 16 + (L % 4) * 4 + jj;
        __m512i ix = _mm512_loadu_si512(idx);
        out[jj] = _mm512_mask_blend_ps((__mmask16)0xFF00, _mm512_permutex2var_ps(in[0], ix, in[1]),
                                       _mm512_permutex2var_ps(in[2], ix, in[3]));
    }
}

// out[ty] lane 4 tx + x = in[x] lane 4 ty + tx.
__attribute__((target("avx512f"))) static inline void tiles_to_rows(const __m512 in[4], __m512 out[4]) {
    for (int ty = 0; ty < 4; ty++) {
        int idx[16];
        for (int L = 0; L < 16; L++) idx[L] = ((L % 4) & 1) * 16 + ty * 4 + L / 4;
        __m512i ix = _mm512_loadu_si512(idx);
        out[ty] = _mm512_mask_blend_ps((__mmask16)0xCCCC, _mm512_permutex2var_ps(in[0], ix, in[1]),
                                       _mm512_permutex2var_ps(in[2], ix, in[3]));
    }
}

__attribute__((target("avx512f,avx512dq,avx2,fma"))) static void input_maps_avx512(void *p, long c) {
    wino_job *j = p;
    long plane = (long)j->H * j->W;
    const __mmask16 cm = (__mmask16)((1u << j->W) - 1);
    int prev[16], next[16];
    for (int L = 0; L < 16; L++) { prev[L] = L - 1 < 0 ? 0 : L - 1; next[L] = L + 1 > 15 ? 15 : L + 1; }
    const __m512i iprev = _mm512_loadu_si512(prev), inext = _mm512_loadu_si512(next);
    for (long g = j->g0, end = j->g0 + j->T; g < end; g += 16) {
        long m = g / 16;
        const float *xc = j->x + (m * j->C + c) * plane;
        const float *zc = j->z ? j->z + c * plane : NULL;
        __m512 d[6][6];  // d[a][b]: tile row a, column b of every tile's 6 x 6 input
        for (int a = 0; a < 6; a++) {
            __m512 X[4], T[4];
            for (int ty = 0; ty < 4; ty++) {
                int y = 4 * ty - 1 + a;
                if (y < 0 || y >= j->H) { X[ty] = _mm512_setzero_ps(); continue; }
                X[ty] = _mm512_maskz_loadu_ps(cm, xc + (long)y * j->W);
                if (zc) X[ty] = _mm512_mul_ps(X[ty], _mm512_maskz_loadu_ps(cm, zc + (long)y * j->W));
            }
            rows_to_tiles(X, T);
            // Columns 4 tx - 1 and 4 tx + 4: the neighbouring tile's last and first (0 past the map).
            d[a][0] = _mm512_maskz_permutexvar_ps((__mmask16)0xEEEE, iprev, T[3]);
            for (int b = 1; b < 5; b++) d[a][b] = T[b - 1];
            d[a][5] = _mm512_maskz_permutexvar_ps((__mmask16)0x7777, inext, T[0]);
        }
        transform_store16(j, c, g - j->g0, d);
    }
}

__attribute__((target("avx512f,avx512dq,avx2,fma"))) static void output_maps_avx512(void *p, long k) {
    wino_job *j = p;
    long plane = (long)j->H * j->W;
    const __m512 sc = _mm512_set1_ps(j->scale);
    const __mmask16 cm = (__mmask16)((1u << j->W) - 1);
    const float *ak = j->a ? j->a + k * plane : NULL;
    for (long g = j->g0, end = j->g0 + j->T; g < end; g += 16) {
        long m = g / 16;
        float *yk = j->y + (m * j->K + k) * plane;
        __m512 o[4][4];
        inverse16(j, k, g - j->g0, o);
        for (int r = 0; r < 4; r++) {
            __m512 row[4];
            tiles_to_rows(o[r], row);
            for (int ty = 0; ty < 4; ty++) {
                int y = 4 * ty + r;
                if (y >= j->H) continue;
                long off = (long)y * j->W;
                __m512 v = _mm512_mul_ps(sc, row[ty]);
                if (ak) v = _mm512_mul_ps(v, _mm512_maskz_loadu_ps(cm, ak + off));
                if (j->accumulate) v = _mm512_add_ps(v, _mm512_maskz_loadu_ps(cm, yk + off));
                _mm512_mask_storeu_ps(yk + off, cm, v);
            }
        }
    }
}

// MARK: Row-wise transforms in registers

// A run of cnt <= 15 tiles of one tile row (NV = 2: cnt <= 7), inside one packed panel: the six
// input rows are loaded straight into registers (times 1 / stab(z); zero off the map), B^T runs
// along y on the vectors, then along x after deinterleaving each tile's columns with lane permutes
// (q_k[t] = column 4 t + k), and the 36 results go to V with masked stores. The scalar version
// (input_body) stages rows, both passes and results through buffers: on VGG's 28 x 28 maps (7
// tiles a row) that cost three times the arithmetic.
__attribute__((target("avx512f,avx512dq,avx2,fma"), always_inline)) static inline void input_run_avx512(
    wino_job *j, long c, long m, int ty, int tx, int cnt, long l, float *buf, const int NV) {
    const __m512 f4 = _mm512_set1_ps(4), f5 = _mm512_set1_ps(5), f2 = _mm512_set1_ps(2);
    long plane = (long)j->H * j->W;
    const float *xc = j->x + (m * j->C + c) * plane;
    int x0 = 4 * tx - 1, len = 4 * cnt + 2;  // padded columns x0 .. x0 + len - 1
    int lo = x0 < 0 ? -x0 : 0, hi = (int)ck_min(len, j->W - x0);  // columns inside the map
    __mmask16 mk[4];
    for (int v = 0; v < NV; v++) {
        int a = lo - 16 * v, b = hi - 16 * v;
        a = a < 0 ? 0 : a > 16 ? 16 : a;
        b = b < 0 ? 0 : b > 16 ? 16 : b;
        mk[v] = (__mmask16)(b > a ? ((1u << b) - 1) & ~((1u << a) - 1) : 0);
    }
    __m512 d[6][4];
    for (int a = 0; a < 6; a++) {
        int yy = 4 * ty - 1 + a;
        if (yy < 0 || yy >= j->H || hi <= lo) {
            for (int v = 0; v < NV; v++) d[a][v] = _mm512_setzero_ps();
            continue;
        }
        if (j->pam) {  // winner-take-all unpooling into buf, then from there
            const float *rp, *zr;
            const int32_t *am;
            if (!unpool_source(j, m, c, yy, &rp, &am, &zr)) {
                for (int v = 0; v < NV; v++) d[a][v] = _mm512_setzero_ps();
                continue;
            }
            if (j->psw == 2) unpool_row2_avx512(buf, x0, lo, hi, rp, am, zr, (long)yy * j->W, j->pWo);
            else unpool_row(j, yy, x0, lo, hi, rp, am, zr, buf);
            for (int v = 0; v < NV; v++) d[a][v] = _mm512_maskz_loadu_ps(mk[v], buf + 16 * v);
            continue;
        }
        const float *src = xc + (long)yy * j->W + x0;
        const float *zr = j->z ? j->z + (c * (long)j->H + yy) * j->W + x0 : NULL;
        for (int v = 0; v < NV; v++) {
            d[a][v] = _mm512_maskz_loadu_ps(mk[v], src + 16 * v);
            if (zr) d[a][v] = _mm512_mul_ps(d[a][v], _mm512_maskz_loadu_ps(mk[v], zr + 16 * v));
        }
    }
    const __m512i sel0 = _mm512_setr_epi32(0, 4, 8, 12, 16, 20, 24, 28, 0, 0, 0, 0, 0, 0, 0, 0);
    const __m512i one = _mm512_set1_epi32(1);
    const __mmask16 sm = (__mmask16)((1u << cnt) - 1);
    for (int v = 0; v < NV; v++) {  // B^T along y, vector by vector of columns
        __m512 col[6], e[6];
        for (int a = 0; a < 6; a++) col[a] = d[a][v];
        BT_PASS(e, col);
        for (int a = 0; a < 6; a++) d[a][v] = e[a];
    }
    for (int a = 0; a < 6; a++) {
        __m512 q[6];
        __m512i idx = sel0;
        if (NV == 2) {  // tiles 0 .. 6: columns up to 4 * 6 + 5 = 29, inside two vectors
            for (int k = 0; k < 6; k++) {
                q[k] = _mm512_permutex2var_ps(d[a][0], idx, d[a][1]);
                idx = _mm512_add_epi32(idx, one);
            }
        } else {
            for (int k = 0; k < 4; k++) {
                __m512 lo8 = _mm512_permutex2var_ps(d[a][0], idx, d[a][1]);
                __m512 hi8 = _mm512_permutex2var_ps(d[a][2], idx, d[a][3]);
                q[k] = _mm512_shuffle_f32x4(lo8, hi8, 0x44);
                idx = _mm512_add_epi32(idx, one);
            }
            // Columns 4 t + 4 and 4 t + 5 are the next tile's first two (lane 15 is never stored).
            __m512i z = _mm512_setzero_si512();
            q[4] = _mm512_castsi512_ps(_mm512_alignr_epi32(z, _mm512_castps_si512(q[0]), 1));
            q[5] = _mm512_castsi512_ps(_mm512_alignr_epi32(z, _mm512_castps_si512(q[1]), 1));
        }
        __m512 h[6];
        BT_PASS(h, q);  // along x
        for (int b = 0; b < 6; b++) _mm512_mask_storeu_ps(v_at(j, a * 6 + b, c, l), sm, h[b]);
    }
}

__attribute__((target("avx512f,avx512dq,avx2,fma"))) static void input_avx512(void *p, long c) {
    wino_job *j = p;
    float *buf = ck_scratch(3, 64);
    if (!buf) return;
    tile_run r;
    for (long g = j->g0; next_run(j, &g, 15, 1, &r);) {
        if (r.cnt <= 7) input_run_avx512(j, c, r.m, r.ty, r.tx, r.cnt, r.l, buf, 2);
        else input_run_avx512(j, c, r.m, r.ty, r.tx, r.cnt, r.l, buf, 4);
    }
}

// MARK: Row-wise input transform on AVX2

// B^T along one axis on 8 lanes; the AVX-512 pass's formulas (same fused operations, same bits).
#define BT_PASS8(e, d)                                                                                      \
    do {                                                                                                    \
        e[0] = _mm256_add_ps(_mm256_fmsub_ps(f4, d[0], _mm256_mul_ps(f5, d[2])), d[4]);                     \
        e[1] = _mm256_sub_ps(_mm256_add_ps(d[3], d[4]), _mm256_mul_ps(f4, _mm256_add_ps(d[1], d[2])));      \
        e[2] = _mm256_add_ps(_mm256_mul_ps(f4, _mm256_sub_ps(d[1], d[2])), _mm256_sub_ps(d[4], d[3]));      \
        e[3] = _mm256_add_ps(_mm256_mul_ps(f2, _mm256_sub_ps(d[3], d[1])), _mm256_sub_ps(d[4], d[2]));      \
        e[4] = _mm256_add_ps(_mm256_mul_ps(f2, _mm256_sub_ps(d[1], d[3])), _mm256_sub_ps(d[4], d[2]));      \
        e[5] = _mm256_add_ps(_mm256_fmsub_ps(f4, d[1], _mm256_mul_ps(f5, d[3])), d[5]);                     \
    } while (0)

// Lanes i of a vector of 8 with lo <= 8 v + i < hi, as a maskload / maskstore mask.
__attribute__((target("avx2"))) static inline __m256i lanes_between(int v, int lo, int hi) {
    __m256i i = _mm256_add_epi32(_mm256_set1_epi32(8 * v), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
    __m256i ge = _mm256_cmpgt_epi32(i, _mm256_set1_epi32(lo - 1)), lt = _mm256_cmpgt_epi32(_mm256_set1_epi32(hi), i);
    return _mm256_and_si256(ge, lt);
}

// A run of cnt <= 8 tiles of one tile row inside one packed panel, in registers (the AVX-512
// input_run_avx512 on 8 lanes): the six input rows' 34 padded columns (4 cnt + 2 used) are loaded
// into five vectors each (times 1 / stab(z); zero off the map), B^T runs along y on the vectors;
// along x each tile's columns are deinterleaved (tile t's four columns are half t % 2 of vector
// t / 2: two cross-lane permutes pair tiles t and t + 4, an in-lane 4 x 4 transpose gives columns
// 0-3 of the 8 tiles, columns 4 and 5 are the next tile's 0 and 1); the 36 results go to V with
// one (masked) store each. The generic loop (input_body) staged rows, both passes and the results
// through buffers and stored the results a float at a time.
__attribute__((target("avx2,fma"), always_inline)) static inline void input_run_avx2(wino_job *j, long c, long m,
                                                                                    int ty, int tx, int cnt, long l,
                                                                                    float *buf) {
    const __m256 f4 = _mm256_set1_ps(4), f5 = _mm256_set1_ps(5), f2 = _mm256_set1_ps(2);
    long plane = (long)j->H * j->W;
    const float *xc = j->x + (m * j->C + c) * plane;
    int x0 = 4 * tx - 1, len = 4 * cnt + 2;                          // padded columns x0 .. x0 + len - 1
    int lo = x0 < 0 ? -x0 : 0, hi = (int)ck_min(len, j->W - x0);     // columns inside the map
    __m256i mk[5];
    for (int v = 0; v < 5; v++) mk[v] = lanes_between(v, lo, hi);
    __m256 d[6][5];
    for (int a = 0; a < 6; a++) {
        int yy = 4 * ty - 1 + a;
        if (yy < 0 || yy >= j->H || hi <= lo) {
            for (int v = 0; v < 5; v++) d[a][v] = _mm256_setzero_ps();
            continue;
        }
        if (j->pam) {  // winner-take-all unpooling into buf, then from there
            const float *rp, *zr;
            const int32_t *am;
            if (!unpool_source(j, m, c, yy, &rp, &am, &zr)) {
                for (int v = 0; v < 5; v++) d[a][v] = _mm256_setzero_ps();
                continue;
            }
            unpool_row(j, yy, x0, lo, hi, rp, am, zr, buf);
            for (int v = 0; v < 5; v++) d[a][v] = _mm256_maskload_ps(buf + 8 * v, mk[v]);
            continue;
        }
        // Masked lanes are not read: the pointers below may lie before the row (x0 = -1).
        const float *src = xc + (long)yy * j->W + x0;
        const float *zr = j->z ? j->z + (c * (long)j->H + yy) * j->W + x0 : NULL;
        for (int v = 0; v < 5; v++) {
            d[a][v] = _mm256_maskload_ps(src + 8 * v, mk[v]);
            if (zr) d[a][v] = _mm256_mul_ps(d[a][v], _mm256_maskload_ps(zr + 8 * v, mk[v]));
        }
    }
    for (int v = 0; v < 5; v++) {  // B^T along y, vector by vector of columns
        __m256 col[6], e[6];
        for (int a = 0; a < 6; a++) col[a] = d[a][v];
        BT_PASS8(e, col);
        for (int a = 0; a < 6; a++) d[a][v] = e[a];
    }
    const __m256i next = _mm256_setr_epi32(1, 2, 3, 4, 5, 6, 7, 7);
    for (int a = 0; a < 6; a++) {
        const __m256 *E = d[a];
        __m256 w0 = _mm256_permute2f128_ps(E[0], E[2], 0x20), w1 = _mm256_permute2f128_ps(E[0], E[2], 0x31);
        __m256 w2 = _mm256_permute2f128_ps(E[1], E[3], 0x20), w3 = _mm256_permute2f128_ps(E[1], E[3], 0x31);
        __m256 t0 = _mm256_unpacklo_ps(w0, w1), t1 = _mm256_unpackhi_ps(w0, w1);
        __m256 t2 = _mm256_unpacklo_ps(w2, w3), t3 = _mm256_unpackhi_ps(w2, w3);
        __m256 q[6], h[6];
        q[0] = _mm256_shuffle_ps(t0, t2, 0x44);  // column 4 t of tile t, t = 0 .. 7
        q[1] = _mm256_shuffle_ps(t0, t2, 0xEE);
        q[2] = _mm256_shuffle_ps(t1, t3, 0x44);
        q[3] = _mm256_shuffle_ps(t1, t3, 0xEE);
        // Columns 4 t + 4 and 4 t + 5: tile t + 1's first two; tile 7's are columns 32 and 33.
        __m256 c32 = _mm256_permutevar8x32_ps(E[4], _mm256_setzero_si256());
        __m256 c33 = _mm256_permutevar8x32_ps(E[4], _mm256_set1_epi32(1));
        q[4] = _mm256_blend_ps(_mm256_permutevar8x32_ps(q[0], next), c32, 0x80);
        q[5] = _mm256_blend_ps(_mm256_permutevar8x32_ps(q[1], next), c33, 0x80);
        BT_PASS8(h, q);  // along x
        // Short runs through a spilled vector: vmaskmovps stores are microcoded on AMD (Zen 3
        // and 4), and this was 3-15 % slower on the VGG-16 layers (C harness, Zen 4).
        if (cnt == 8)
            for (int b = 0; b < 6; b++) _mm256_storeu_ps(v_at(j, a * 6 + b, c, l), h[b]);
        else
            for (int b = 0; b < 6; b++) {
                _Alignas(32) float t[8];
                _mm256_store_ps(t, h[b]);
                float *dst = v_at(j, a * 6 + b, c, l);
                for (int i = 0; i < cnt; i++) dst[i] = t[i];
            }
    }
}

__attribute__((target("avx2,fma"))) static void input_avx2(void *p, long c) {
    wino_job *j = p;
    float *buf = ck_scratch(3, 40);
    if (!buf) return;
    tile_run r;
    for (long g = j->g0; next_run(j, &g, 8, 1, &r);) input_run_avx2(j, c, r.m, r.ty, r.tx, r.cnt, r.l, buf);
}
#endif
static void input_portable(void *p, long c) { input_body(p, c); }

// The unused lanes of the last panel: zero, not stale scratch (denormals are slow).
static void zero_tail(wino_job *j) {
    if (j->Tp == j->T) return;
    for (int xi = 0; xi < 36; xi++)
        for (long c = 0; c < j->C; c++)
            for (long t = j->T; t < j->Tp; t++) *v_at(j, xi, c, t) = 0.0f;
}

// M[xi] rows [k0, k0 + Kr) = U[xi] V[xi]; k0 and Kr are multiples of mr (or Kr reaches K).
static void gemm_xi(wino_job *j, int xi) {
    int s0 = j->k0 / j->mr, s1 = (int)((ck_min(j->K, j->k0 + j->Kr) + j->mr - 1) / j->mr);
    ck_gemm_prepacked(j->isa, s0, s1, j->K, (int)j->T, j->C, j->Up + (long)xi * j->Mp * j->C,
                      j->V + (long)xi * j->C * j->Tp, m_at(j, xi, j->k0, 0), j->Tp, 0);
}

static void gemm_task(void *p, long xi) { gemm_xi(p, (int)xi); }

// Output transform of channel k for the job's tile range, segment by segment: horizontal pass (A^T
// along x) from the contiguous per-tile values, then the vertical pass element-wise over x, with
// the fused product.
static inline __attribute__((always_inline)) void output_body(wino_job *j, long k) {
    const int tw = j->tw;
    float *f = ck_scratch(3, (size_t)6 * 4 * tw);
    float *row = ck_scratch(2, (size_t)4 * tw);
    if (!f || !row) return;
    long plane = (long)j->H * j->W;
    long st = (long)j->Kr * j->Tp;
    for (long g = j->g0, end = j->g0 + j->T; g < end;) {
        long gr = g / tw, m = gr / j->th;
        int ty = (int)(gr % j->th), tx0 = (int)(g % tw);
        int tx1 = (int)ck_min(tw, tx0 + (end - g));
        int nt = tx1 - tx0, Wo = 4 * nt;
        long lbase = g - j->g0;
        for (int a = 0; a < 6; a++) {
            const float *m0 = m_at(j, a * 6, k, lbase);
            const float *m1 = m0 + st, *m2 = m1 + st, *m3 = m2 + st, *m4 = m3 + st, *m5 = m4 + st;
            float *fr = f + a * Wo;
            for (int t = 0; t < nt; t++) {
                float p1 = m1[t] + m2[t], q1 = m1[t] - m2[t], p3 = m3[t] + m4[t], q3 = m3[t] - m4[t];
                fr[4 * t + 0] = m0[t] + p1 + p3;
                fr[4 * t + 1] = q1 + 2 * q3;
                fr[4 * t + 2] = p1 + 4 * p3;
                fr[4 * t + 3] = q1 + 8 * q3 + m5[t];
            }
        }
        float *yk = j->y + (m * j->K + k) * plane;
        const float *f0 = f, *f1 = f + Wo, *f2 = f + 2 * Wo, *f3 = f + 3 * Wo, *f4 = f + 4 * Wo, *f5 = f + 5 * Wo;
        int rows = j->H - ty * 4 < 4 ? j->H - ty * 4 : 4;
        int xs = 4 * tx0, nx = (int)ck_min(Wo, j->W - xs);  // output columns xs .. xs + nx
        for (int a = 0; a < rows; a++) {
            long off = (long)(ty * 4 + a) * j->W + xs;
            float *yr = yk + off;
            for (int x = 0; x < nx; x++) {
                float p1 = f1[x] + f2[x], q1 = f1[x] - f2[x], p3 = f3[x] + f4[x], q3 = f3[x] - f4[x];
                row[x] = a == 0 ? f0[x] + p1 + p3 : a == 1 ? q1 + 2 * q3 : a == 2 ? p1 + 4 * p3 : q1 + 8 * q3 + f5[x];
            }
            const float *ar = j->a ? j->a + (k * plane) + off : NULL;
            float sc = j->scale;
            if (ar && j->accumulate) for (int x = 0; x < nx; x++) yr[x] += sc * ar[x] * row[x];
            else if (ar) for (int x = 0; x < nx; x++) yr[x] = sc * ar[x] * row[x];
            else if (j->accumulate) for (int x = 0; x < nx; x++) yr[x] += sc * row[x];
            else for (int x = 0; x < nx; x++) yr[x] = sc * row[x];
        }
        g += nt;
    }
}

#if CK_X86
// Output transform of a run of cnt <= 15 tiles of one tile row (NV = 2: cnt <= 7) in registers:
// A^T along x on the tiles' M values (one masked load per xi), the four results per tile
// interleaved into columns (tiles_to_rows), A^T along y on those rows, then y = [y +] scale * v *
// a on whole row vectors.
__attribute__((target("avx512f,avx512dq,avx2,fma"), always_inline)) static inline void output_run_avx512(
    wino_job *j, long k, long m, int ty, int tx, int cnt, long l, const int NV) {
    const __m512 f2 = _mm512_set1_ps(2), f4 = _mm512_set1_ps(4), f8 = _mm512_set1_ps(8);
    long plane = (long)j->H * j->W, st = (long)j->Kr * j->Tp;
    const __mmask16 lm = (__mmask16)((1u << cnt) - 1);
    const float *mk = m_at(j, 0, k, l);
    __m512 f[6][4];  // f[a][v]: row a of A^T m, columns 16 v .. of the run
    for (int a = 0; a < 6; a++) {
        __m512 q[6], t[4];
        for (int b = 0; b < 6; b++) q[b] = _mm512_maskz_loadu_ps(lm, mk + (long)(a * 6 + b) * st);
        AT_PASS(t, q);
        tiles_to_rows(t, f[a]);
    }
    int xs = 4 * tx, nx = (int)ck_min(4 * cnt, j->W - xs);  // output columns xs .. xs + nx - 1
    __mmask16 cm[4];
    for (int v = 0; v < NV; v++) {
        int b = nx - 16 * v;
        cm[v] = (__mmask16)(b >= 16 ? 0xFFFF : b <= 0 ? 0 : (1u << b) - 1);
    }
    float *yk = j->y + (m * j->K + k) * plane;
    const float *ak = j->a ? j->a + k * plane : NULL;
    const __m512 sc = _mm512_set1_ps(j->scale);
    __m512 rows[4][4];  // rows[r][v]: output row 4 ty + r, columns 16 v ..
    for (int v = 0; v < NV; v++) {
        __m512 col[6], t[4];
        for (int a = 0; a < 6; a++) col[a] = f[a][v];
        AT_PASS(t, col);
        for (int r = 0; r < 4; r++) rows[r][v] = t[r];
    }
    for (int r = 0; r < 4; r++) {
        int y = 4 * ty + r;
        if (y >= j->H) break;
        long off = (long)y * j->W + xs;
        for (int v = 0; v < NV; v++) {
            if (!cm[v]) continue;
            __m512 o = _mm512_mul_ps(sc, rows[r][v]);
            if (ak) o = _mm512_mul_ps(o, _mm512_maskz_loadu_ps(cm[v], ak + off + 16 * v));
            if (j->accumulate) o = _mm512_add_ps(o, _mm512_maskz_loadu_ps(cm[v], yk + off + 16 * v));
            _mm512_mask_storeu_ps(yk + off + 16 * v, cm[v], o);
        }
    }
}

__attribute__((target("avx512f,avx512dq,avx2,fma"))) static void output_avx512(void *p, long k) {
    wino_job *j = p;
    tile_run r;  // M rows are contiguous over the whole range: no panel split
    for (long g = j->g0; next_run(j, &g, 15, 0, &r);) {
        if (r.cnt <= 7) output_run_avx512(j, k, r.m, r.ty, r.tx, r.cnt, r.l, 2);
        else output_run_avx512(j, k, r.m, r.ty, r.tx, r.cnt, r.l, 4);
    }
}

// MARK: Row-wise output transform on AVX2

#define AT_PASS8(t, q)                                                                                   \
    do {                                                                                                 \
        __m256 p1_ = _mm256_add_ps(q[1], q[2]), d1_ = _mm256_sub_ps(q[1], q[2]);                          \
        __m256 p3_ = _mm256_add_ps(q[3], q[4]), d3_ = _mm256_sub_ps(q[3], q[4]);                          \
        t[0] = _mm256_add_ps(_mm256_add_ps(q[0], p1_), p3_);                                             \
        t[1] = _mm256_fmadd_ps(f2, d3_, d1_);                                                            \
        t[2] = _mm256_fmadd_ps(f4, p3_, p1_);                                                            \
        t[3] = _mm256_add_ps(_mm256_fmadd_ps(f8, d3_, d1_), q[5]);                                       \
    } while (0)

// A run of cnt <= 8 tiles of one tile row in registers (output_run_avx512 on 8 lanes): A^T along x
// on the tiles' M values (one load per xi, lane = tile), the four results per tile turned into
// row vectors (in-lane 4 x 4 transpose, then cross-lane permutes pairing tiles 2 v and 2 v + 1),
// A^T along y on those, then y = [y +] scale * v * a on whole row vectors.
__attribute__((target("avx2,fma"), always_inline)) static inline void output_run_avx2(wino_job *j, long k, long m,
                                                                                     int ty, int tx, int cnt, long l) {
    const __m256 f2 = _mm256_set1_ps(2), f4 = _mm256_set1_ps(4), f8 = _mm256_set1_ps(8);
    long plane = (long)j->H * j->W, st = (long)j->Kr * j->Tp;
    const __m256i lm = lanes_between(0, 0, cnt);
    const float *mk = m_at(j, 0, k, l);
    __m256 f[6][4];  // f[a][v]: row a of A^T m, columns 8 v .. 8 v + 7 of the run
    for (int a = 0; a < 6; a++) {
        __m256 q[6], t[4];
        for (int b = 0; b < 6; b++) {
            const float *src = mk + (long)(a * 6 + b) * st;
            q[b] = cnt == 8 ? _mm256_loadu_ps(src) : _mm256_maskload_ps(src, lm);
        }
        AT_PASS8(t, q);  // t[x] lane i: column x of tile i
        __m256 u0 = _mm256_unpacklo_ps(t[0], t[1]), u1 = _mm256_unpackhi_ps(t[0], t[1]);
        __m256 u2 = _mm256_unpacklo_ps(t[2], t[3]), u3 = _mm256_unpackhi_ps(t[2], t[3]);
        __m256 r0 = _mm256_shuffle_ps(u0, u2, 0x44), r1 = _mm256_shuffle_ps(u0, u2, 0xEE);  // tiles 0 | 4, 1 | 5
        __m256 r2 = _mm256_shuffle_ps(u1, u3, 0x44), r3 = _mm256_shuffle_ps(u1, u3, 0xEE);  // tiles 2 | 6, 3 | 7
        f[a][0] = _mm256_permute2f128_ps(r0, r1, 0x20);
        f[a][1] = _mm256_permute2f128_ps(r2, r3, 0x20);
        f[a][2] = _mm256_permute2f128_ps(r0, r1, 0x31);
        f[a][3] = _mm256_permute2f128_ps(r2, r3, 0x31);
    }
    int xs = 4 * tx, nx = (int)ck_min(4 * cnt, j->W - xs);  // output columns xs .. xs + nx - 1
    float *yk = j->y + (m * j->K + k) * plane;
    const float *ak = j->a ? j->a + k * plane : NULL;
    const __m256 sc = _mm256_set1_ps(j->scale);
    for (int v = 0; 8 * v < nx; v++) {
        __m256 col[6], rows[4];
        for (int a = 0; a < 6; a++) col[a] = f[a][v];
        AT_PASS8(rows, col);
        int full = nx - 8 * v >= 8;
        __m256i cm = lanes_between(v, 0, nx);
        for (int r = 0; r < 4; r++) {
            int y = 4 * ty + r;
            if (y >= j->H) break;
            float *dst = yk + (long)y * j->W + xs + 8 * v;
            const float *ar = ak ? ak + (long)y * j->W + xs + 8 * v : NULL;
            __m256 o = _mm256_mul_ps(sc, rows[r]);
            if (full) {
                if (ar) o = _mm256_mul_ps(o, _mm256_loadu_ps(ar));
                if (j->accumulate) o = _mm256_add_ps(o, _mm256_loadu_ps(dst));
                _mm256_storeu_ps(dst, o);
            } else {  // the row's last columns, through a spilled vector (as in input_run_avx2)
                if (ar) o = _mm256_mul_ps(o, _mm256_maskload_ps(ar, cm));
                _Alignas(32) float t[8];
                _mm256_store_ps(t, o);
                for (int i = 0; i < nx - 8 * v; i++) dst[i] = j->accumulate ? dst[i] + t[i] : t[i];
            }
        }
    }
}

__attribute__((target("avx2,fma"))) static void output_avx2(void *p, long k) {
    wino_job *j = p;
    tile_run r;  // M rows are contiguous over the whole range: no panel split
    for (long g = j->g0; next_run(j, &g, 8, 0, &r);) output_run_avx2(j, k, r.m, r.ty, r.tx, r.cnt, r.l);
}
#endif
static void output_portable(void *p, long k) { output_body(p, k); }

#if defined(__aarch64__)
// MARK: Row-wise transforms on NEON

// Runs of up to 4 tiles of one tile row, one tile per lane (the AVX2 and AVX-512 row-wise
// transforms on 4 lanes). A tile's four columns are one vector of its row, so moving between
// columns and tiles is a 4 x 4 transpose (two trn1/trn2 pairs), and columns 4 and 5 of the tiles
// are the next vector's first two (ext). Cycle model (Neoverse N1 / V1, Apple M1: 2-4 128-bit FMA
// pipes): per run and channel, 30 loads (six rows of five vectors), 2 x 5 x 6 + 6 x 6 B^T vector
// operations of 1-2 instructions each, 24 permutes and 36 stores: about 150-200 instructions for
// 4 x 36 = 144 values of V, where the generic loop takes about 3 scalar instructions per value
// plus its staging copies. Checked under qemu-user against plain loops (`make test-arm`); its
// speed is not measured here (no ARM machine).

#define BT_PASS4(e, d)                                                                                       \
    do {                                                                                                     \
        e[0] = vaddq_f32(vfmsq_n_f32(vmulq_n_f32(d[0], 4.0f), d[2], 5.0f), d[4]);                            \
        e[1] = vsubq_f32(vaddq_f32(d[3], d[4]), vmulq_n_f32(vaddq_f32(d[1], d[2]), 4.0f));                   \
        e[2] = vaddq_f32(vmulq_n_f32(vsubq_f32(d[1], d[2]), 4.0f), vsubq_f32(d[4], d[3]));                   \
        e[3] = vaddq_f32(vmulq_n_f32(vsubq_f32(d[3], d[1]), 2.0f), vsubq_f32(d[4], d[2]));                   \
        e[4] = vaddq_f32(vmulq_n_f32(vsubq_f32(d[1], d[3]), 2.0f), vsubq_f32(d[4], d[2]));                   \
        e[5] = vaddq_f32(vfmsq_n_f32(vmulq_n_f32(d[1], 4.0f), d[3], 5.0f), d[5]);                            \
    } while (0)

#define AT_PASS4(t, q)                                                                                       \
    do {                                                                                                     \
        float32x4_t p1_ = vaddq_f32(q[1], q[2]), d1_ = vsubq_f32(q[1], q[2]);                                \
        float32x4_t p3_ = vaddq_f32(q[3], q[4]), d3_ = vsubq_f32(q[3], q[4]);                                \
        t[0] = vaddq_f32(vaddq_f32(q[0], p1_), p3_);                                                         \
        t[1] = vfmaq_n_f32(d1_, d3_, 2.0f);                                                                  \
        t[2] = vfmaq_n_f32(p1_, p3_, 4.0f);                                                                  \
        t[3] = vaddq_f32(vfmaq_n_f32(d1_, d3_, 8.0f), q[5]);                                                 \
    } while (0)

// out[k] lane t = in[t] lane k.
static inline void transpose4(const float32x4_t in[4], float32x4_t out[4]) {
    float32x4_t a0 = vtrn1q_f32(in[0], in[1]), a1 = vtrn2q_f32(in[0], in[1]);
    float32x4_t a2 = vtrn1q_f32(in[2], in[3]), a3 = vtrn2q_f32(in[2], in[3]);
    out[0] = vreinterpretq_f32_f64(vtrn1q_f64(vreinterpretq_f64_f32(a0), vreinterpretq_f64_f32(a2)));
    out[1] = vreinterpretq_f32_f64(vtrn1q_f64(vreinterpretq_f64_f32(a1), vreinterpretq_f64_f32(a3)));
    out[2] = vreinterpretq_f32_f64(vtrn2q_f64(vreinterpretq_f64_f32(a0), vreinterpretq_f64_f32(a2)));
    out[3] = vreinterpretq_f32_f64(vtrn2q_f64(vreinterpretq_f64_f32(a1), vreinterpretq_f64_f32(a3)));
}

static inline void input_run_neon(wino_job *j, long c, long m, int ty, int tx, int cnt, long l, float *buf) {
    long plane = (long)j->H * j->W;
    const float *xc = j->x + (m * j->C + c) * plane;
    int x0 = 4 * tx - 1, len = 4 * cnt + 2;                       // padded columns x0 .. x0 + len - 1
    int lo = x0 < 0 ? -x0 : 0, hi = (int)ck_min(len, j->W - x0);  // columns inside the map
    float32x4_t d[6][5];
    for (int a = 0; a < 6; a++) {
        int yy = 4 * ty - 1 + a;
        for (int v = 0; v < 5; v++) d[a][v] = vdupq_n_f32(0.0f);
        if (yy < 0 || yy >= j->H || hi <= lo) continue;
        // The row's columns [lo, hi) into buf (zero elsewhere), then five vectors from it.
        float *row = buf;
        memset(row, 0, 20 * sizeof(float));
        if (j->pam) {
            const float *rp, *zr;
            const int32_t *am;
            if (!unpool_source(j, m, c, yy, &rp, &am, &zr)) continue;
            unpool_row(j, yy, x0, lo, hi, rp, am, zr, row);
        } else {
            const float *src = xc + (long)yy * j->W + x0;
            if (j->z) {
                const float *zr = j->z + (c * (long)j->H + yy) * j->W + x0;
                for (int p = lo; p < hi; p++) row[p] = src[p] * zr[p];
            } else {
                memcpy(row + lo, src + lo, (size_t)(hi - lo) * sizeof(float));
            }
        }
        for (int v = 0; v < 5; v++) d[a][v] = vld1q_f32(row + 4 * v);
    }
    for (int v = 0; v < 5; v++) {  // B^T along y
        float32x4_t col[6], e[6];
        for (int a = 0; a < 6; a++) col[a] = d[a][v];
        BT_PASS4(e, col);
        for (int a = 0; a < 6; a++) d[a][v] = e[a];
    }
    for (int a = 0; a < 6; a++) {
        float32x4_t q[6], h[6];
        transpose4(d[a], q);  // q[k] lane t: column 4 t + k
        q[4] = vextq_f32(q[0], d[a][4], 1);                       // column 4 t + 4: tile t + 1's first
        q[5] = vextq_f32(q[1], vextq_f32(d[a][4], d[a][4], 1), 1);  // and its second
        BT_PASS4(h, q);  // along x
        for (int b = 0; b < 6; b++) {
            float *dst = v_at(j, a * 6 + b, c, l);
            if (cnt == 4) vst1q_f32(dst, h[b]);
            else {
                float t[4];
                vst1q_f32(t, h[b]);
                for (int i = 0; i < cnt; i++) dst[i] = t[i];
            }
        }
    }
}

static void input_neon(void *p, long c) {
    wino_job *j = p;
    float *buf = ck_scratch(3, 20);
    if (!buf) return;
    tile_run r;
    for (long g = j->g0; next_run(j, &g, 4, 1, &r);) input_run_neon(j, c, r.m, r.ty, r.tx, r.cnt, r.l, buf);
}

// A^T m A of a run of cnt <= 4 tiles: A^T along x on the tiles' M values (lane = tile), the four
// results per tile turned into row vectors (transpose4), A^T along y, then y = [y +] scale * a * v.
static inline void output_run_neon(wino_job *j, long k, long m, int ty, int tx, int cnt, long l) {
    long plane = (long)j->H * j->W, st = (long)j->Kr * j->Tp;
    const float *mk = m_at(j, 0, k, l);
    float32x4_t f[6][4];  // f[a][v]: row a of A^T m, the 4 columns of tile v
    for (int a = 0; a < 6; a++) {
        float32x4_t q[6], t[4];
        for (int b = 0; b < 6; b++) {
            const float *src = mk + (long)(a * 6 + b) * st;
            if (cnt == 4) q[b] = vld1q_f32(src);
            else {
                float v[4] = {0, 0, 0, 0};
                for (int i = 0; i < cnt; i++) v[i] = src[i];
                q[b] = vld1q_f32(v);
            }
        }
        AT_PASS4(t, q);
        transpose4(t, f[a]);
    }
    int xs = 4 * tx, nx = (int)ck_min(4 * cnt, j->W - xs);  // output columns xs .. xs + nx - 1
    float *yk = j->y + (m * j->K + k) * plane;
    const float *ak = j->a ? j->a + k * plane : NULL;
    for (int v = 0; 4 * v < nx; v++) {
        float32x4_t col[6], r4[4];
        for (int a = 0; a < 6; a++) col[a] = f[a][v];
        AT_PASS4(r4, col);
        int w = nx - 4 * v < 4 ? nx - 4 * v : 4;
        for (int r = 0; r < 4; r++) {
            int y = 4 * ty + r;
            if (y >= j->H) break;
            long off = (long)y * j->W + xs + 4 * v;
            float32x4_t o = vmulq_n_f32(r4[r], j->scale);
            if (w == 4) {
                if (ak) o = vmulq_f32(o, vld1q_f32(ak + off));
                if (j->accumulate) o = vaddq_f32(o, vld1q_f32(yk + off));
                vst1q_f32(yk + off, o);
            } else {
                float t[4];
                vst1q_f32(t, o);
                for (int i = 0; i < w; i++) {
                    float u = ak ? t[i] * ak[off + i] : t[i];
                    yk[off + i] = j->accumulate ? yk[off + i] + u : u;
                }
            }
        }
    }
}

static void output_neon(void *p, long k) {
    wino_job *j = p;
    tile_run r;  // M rows are contiguous over the whole range: no panel split
    for (long g = j->g0; next_run(j, &g, 4, 0, &r);) output_run_neon(j, k, r.m, r.ty, r.tx, r.cnt, r.l);
}
#endif

typedef struct {
    const int32_t *argmax;
    int Ho, Wo, sh, sw;
} unpool;

static int winograd(int n, const float *x, const float *z, float eps, int C, int H, int W, const float *U, int K,
                    const float *a, float scale, int accumulate, float *y, const unpool *up);

int ck_winograd_conv3x3(int n, const float *x, int C, int H, int W, const float *U, int K, float *y) {
    return winograd(n, x, NULL, 0, C, H, W, U, K, NULL, 1, 0, y, NULL);
}

int ck_winograd_lrp(int n, const float *R, const float *z, float eps, int C, int H, int W, const float *U, int K,
                    const float *a, float scale, int accumulate, float *Rin) {
    return winograd(n, R, z, eps, C, H, W, U, K, a, scale, accumulate, Rin, NULL);
}

int ck_winograd_lrp_unpool(int n, const float *Rp, const int32_t *argmax, int Ho, int Wo, int sh, int sw,
                           const float *z, float eps, int C, int H, int W, const float *U, int K, const float *a,
                           float scale, int accumulate, float *Rin) {
    unpool up = {argmax, Ho, Wo, sh, sw};
    return winograd(n, Rp, z, eps, C, H, W, U, K, a, scale, accumulate, Rin, &up);
}

static _Thread_local int schedule_override = CK_WINOGRAD_AUTO;
static _Thread_local long chunk_tiles_cap = 0;

long ck_winograd_set_chunk_tiles(long tiles) {
    long old = chunk_tiles_cap;
    chunk_tiles_cap = tiles > 0 ? tiles : 0;
    return old;
}

int ck_winograd_set_schedule(int schedule) {
    int old = schedule_override;
    schedule_override = schedule;
    return old;
}

// Tiles per unit of the fused schedule (a multiple of every ISA's nr), and the output channels
// whose M is live at once.
enum { FUSED_TILES = 64, FUSED_K = 48 };

// The schedule for C relevance channels and a call of `tiles` tiles (forced, else measured).
static int schedule_for(int C, long tiles) {
    int o = schedule_override;
    if (o == CK_WINOGRAD_CHUNKED || o == CK_WINOGRAD_FUSED) return o;
    const char *e = getenv("BILRP_WINOGRAD");
    if (e && !strcmp(e, "chunked")) return CK_WINOGRAD_CHUNKED;
    if (e && !strcmp(e, "fused")) return CK_WINOGRAD_FUSED;
    // Measured on VGG-16 (2 MiB L2 per core): fused wins up to 256 relevance channels (V of a unit
    // 2.4 MiB; 0.18 s against 0.25 s for a 256-channel layer at 128 x 128), chunked from 512 (V of
    // a unit would be 4.7 MiB, and 8 x 8 maps give too few units to balance two threads). Fewer
    // fused units than threads (one 28 x 28 map is 49 tiles: one unit) would leave threads idle;
    // the chunked steps split over channels instead.
    if (tiles <= (long)FUSED_TILES * (ck_get_num_threads() - 1)) return CK_WINOGRAD_CHUNKED;
    return C <= 256 ? CK_WINOGRAD_FUSED : CK_WINOGRAD_CHUNKED;
}

int ck_winograd_schedule(int C, int K) {
    (void)K;
    return schedule_for(C, LONG_MAX);
}

typedef struct {
    wino_job base;
    long total;  // tiles over all maps
    ck_task_fn in, out;
} fused_job;

// One unit of the fused schedule: FUSED_TILES tiles through input transform, GEMMs, output
// transform on this thread's scratch.
static void fused_unit(void *p, long u) {
    fused_job *f = p;
    wino_job j = f->base;
    j.g0 = u * FUSED_TILES;
    j.T = ck_min(FUSED_TILES, f->total - j.g0);
    j.Tp = (j.T + j.nr - 1) / j.nr * j.nr;
    int kb = (FUSED_K + j.mr - 1) / j.mr * j.mr;
    j.V = ck_scratch(4, 36 * (size_t)j.C * j.Tp);
    j.M = ck_scratch(5, 36 * (size_t)kb * j.Tp);
    if (!j.V || !j.M) return;
    for (long c = 0; c < j.C; c++) f->in(&j, c);
    zero_tail(&j);
    for (j.k0 = 0; j.k0 < j.K; j.k0 += kb) {
        j.Kr = (int)ck_min(kb, j.K - j.k0);
        for (int xi = 0; xi < 36; xi++) gemm_xi(&j, xi);
        for (long k = j.k0; k < j.k0 + j.Kr; k++) f->out(&j, k);
    }
}

static int winograd(int n, const float *x, const float *z, float eps, int C, int H, int W, const float *U, int K,
                    const float *a, float scale, int accumulate, float *y, const unpool *up) {
    if (n <= 0) return CK_OK;
    unsigned long before = ck_alloc_failures();
    float *unpooled = NULL;
    int th = (H + 3) / 4, tw = (W + 3) / 4;
    int isa = ck_isa_active();
    int nr = ck_gemm_nr(isa), mr = ck_gemm_mr(isa);
    long Mp = (K + mr - 1) / mr * mr;
    // 1 / stab(z) once per call, shared by all maps: a multiply per element instead of a divide.
    // Kept between calls (thread-local to the caller).
    float *rz = NULL;
    if (z) {
        rz = ck_scratch(6, (size_t)C * H * W);
        if (!rz) return CK_ERROR_MEMORY;
        ck_lrp_stab_reciprocal((long)C * H * W, z, eps, rz);
    }
    wino_job j = {isa, x, U, y, NULL, NULL, C, K, H, W, th, tw, 0, 0, 0, 0, K, rz, a, eps, scale, accumulate,
                  nr, mr, Mp, NULL, 0, 0, 1, 1};
    ck_task_fn in = input_portable, out = output_portable;
    int lanes = 0;
#if defined(__aarch64__)
    if (isa == CK_ISA_NEON) { in = input_neon; out = output_neon; }
#endif
#if CK_X86
    if (isa == CK_ISA_AVX512) { in = input_avx512; out = output_avx512; }
    if (isa == CK_ISA_AVX2) { in = input_avx2; out = output_avx2; }
    // Small maps: 16 tiles per vector (gather offsets are 32-bit).
    lanes = isa == CK_ISA_AVX512 && tw <= 4 && (long)n * ck_max(C, K) * H * W < (1L << 31);
    if (lanes) {
        in = input_lanes_avx512;
        out = output_lanes_avx512;
        if (tw == 4 && th == 4) {  // a map per vector (every range starts at a multiple of 16 tiles)
            in = input_maps_avx512;
            out = output_maps_avx512;
        }
    }
#endif
    if (up && lanes) {
        // The lane transforms gather their inputs: unpool first (small maps, a small block).
        unpooled = ck_malloc((size_t)n * C * H * W * sizeof(float));
        if (!unpooled) return CK_ERROR_MEMORY;
        ck_maxpool_backward(n, x, C, up->Ho, up->Wo, up->argmax, H, W, unpooled);
        j.x = unpooled;
    } else if (up) {
        j.pam = up->argmax;
        j.pHo = up->Ho; j.pWo = up->Wo; j.psh = up->sh; j.psw = up->sw;
    }
    long total = (long)n * th * tw;
    if (schedule_for(C, total) == CK_WINOGRAD_FUSED) {
        fused_job f = {j, total, in, out};
        ck_parallel_for((total + FUSED_TILES - 1) / FUSED_TILES, &f, fused_unit);
        free(unpooled);
        return ck_status_since(before);
    }
    // Chunked: super-chunks whose V and M together stay near 48 MiB, in whole panels (any tile
    // range works): chunks of whole tile rows left a partial last panel in every chunk, computed
    // in full by the GEMM (28 x 28 maps, 46 rows of 7 tiles: 322 tiles in 384 columns).
    long per_tile = 36L * (C + K) * (long)sizeof(float);
    long cap = ck_max(1, ck_min(total, (48L << 20) / per_tile));
    if (chunk_tiles_cap) cap = ck_min(cap, chunk_tiles_cap);
    long Tmax = (cap + nr - 1) / nr * nr;
    // Kept between calls: fresh 48 MiB buffers every layer and block cost more in page faults than
    // the transforms.
    j.V = ck_scratch(4, 36 * (size_t)C * Tmax);
    j.M = ck_scratch(5, 36 * (size_t)K * Tmax);
    if (!j.V || !j.M) {
        free(unpooled);
        return CK_ERROR_MEMORY;
    }
    for (long g0 = 0; g0 < total; g0 += Tmax) {
        j.g0 = g0;
        j.T = ck_min(Tmax, total - g0);
        j.Tp = (j.T + nr - 1) / nr * nr;
        ck_parallel_for(C, &j, in);
        zero_tail(&j);
        ck_parallel_for(36, &j, gemm_task);
        ck_parallel_for(K, &j, out);
    }
    free(unpooled);
    return ck_status_since(before);
}
