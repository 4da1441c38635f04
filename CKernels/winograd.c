// Winograd F(4x4, 3x3) for 3x3 convolutions with stride 1 and padding 1 (every VGG convolution),
// used for the relevance backward: the transposed convolution of such a layer is again one (kernel
// flipped, channels swapped). Per 4x4 output tile it needs 36 multiplications per channel pair
// instead of 144 (Lavin and Gray, 2016). The transforms change rounding: the tests compare this path
// with the float64 reference and the explainer keeps the direct path behind a switch.
//
// Layout: U[xi][k][c] (36 x K x C) are the transformed weights, computed once per layer and rule.
// Tiles of all n maps are processed in super-chunks: V[xi][c][t] = B^T d B of each input tile,
// 36 GEMMs M[xi] (K x T) = U[xi] (K x C) V[xi] (C x T), then Y = A^T m A per output tile.
#include "internal.h"

#include <immintrin.h>
#include <string.h>

// G of F(4x4, 3x3) with interpolation points 0, +-1, +-2 (and infinity); B^T and A^T are written
// out as formulas in the transforms below:
//   B^T = [4 0 -5 0 1 0; 0 -4 -4 1 1 0; 0 4 -4 -1 1 0; 0 -2 -1 2 1 0; 0 2 -1 -2 1 0; 0 4 0 -5 0 1]
//   A^T = [1 1 1 1 1 0; 0 1 -1 2 -2 0; 0 1 1 4 4 0; 0 1 -1 8 -8 1]
static const float G[6][3] = {
    {1.0f / 4, 0, 0}, {-1.0f / 6, -1.0f / 6, -1.0f / 6}, {-1.0f / 6, 1.0f / 6, -1.0f / 6},
    {1.0f / 24, 1.0f / 12, 1.0f / 6}, {1.0f / 24, -1.0f / 12, 1.0f / 6}, {0, 0, 1},
};

void ck_winograd_weights(const float *w, int K, int C, int transpose, float *U) {
    // transpose: w is a forward weight (Kf, Cf, 3, 3) and U is for its adjoint: K = Cf outputs,
    // C = Kf inputs, kernel flipped in both axes.
    for (int k = 0; k < K; k++)
        for (int c = 0; c < C; c++) {
            float g[3][3];
            for (int i = 0; i < 3; i++)
                for (int j = 0; j < 3; j++)
                    g[i][j] = transpose ? w[((long)c * K + k) * 9 + (2 - i) * 3 + (2 - j)]
                                        : w[((long)k * C + c) * 9 + i * 3 + j];
            float t[6][3];  // G g
            for (int a = 0; a < 6; a++)
                for (int j = 0; j < 3; j++) t[a][j] = G[a][0] * g[0][j] + G[a][1] * g[1][j] + G[a][2] * g[2][j];
            for (int a = 0; a < 6; a++)
                for (int b = 0; b < 6; b++)
                    U[((long)(a * 6 + b) * K + k) * C + c] = t[a][0] * G[b][0] + t[a][1] * G[b][1] + t[a][2] * G[b][2];
        }
}

typedef struct {
    int isa;
    const float *x;
    const float *U;
    float *y;
    float *V, *M;
    int C, K, H, W, th, tw;
    long r0, rows;  // first tile row (over all maps) of the super-chunk and its count
    long T;         // tiles in the super-chunk: rows * tw
    // Fused LRP steps (NULL: off). Input: x / stab(z), z shared by all maps. Output:
    // y = [y +] scale * a * result, a shared by all maps.
    const float *z, *a;
    float eps, scale;
    int accumulate;
    int nr;      // column panel width of the GEMM micro-kernel: V is written pre-packed
    long Tp;     // T rounded up to nr
} wino_job;

// V[xi] as the GEMM's packed B: panels of nr tiles, each C rows of nr values.
static inline float *v_at(const wino_job *j, int xi, long c, long t) {
    return j->V + (long)xi * j->C * j->Tp + (t / j->nr) * j->C * j->nr + c * j->nr + (t % j->nr);
}

// Input transform of channel c for the super-chunk, one tile row at a time: the vertical pass
// (B^T along y) is element-wise over x and vectorizes; the horizontal pass uses the explicit
// formulas of B^T, which skip its zeros. Instantiated per ISA below (the C target has no ISA flags).
// The horizontal B^T pass for 16 tiles at a time: q_k[t] = er[4t + k] deinterleaved with lane
// permutes (q4, q5 are q0, q1 of the next tile). Returns how many of the count tiles it did.
__attribute__((target("avx512f"))) static int horizontal_avx512(const float *er, int count, float h[6][64]) {
    const __m512i sel0 = _mm512_setr_epi32(0, 4, 8, 12, 16, 20, 24, 28, 0, 0, 0, 0, 0, 0, 0, 0);
    const __m512i one = _mm512_set1_epi32(1);
    int t = 0;
    for (; t + 16 <= count; t += 16) {
        const float *q = er + 4 * t;
        __m512 x0 = _mm512_loadu_ps(q), x1 = _mm512_loadu_ps(q + 16), x2 = _mm512_loadu_ps(q + 32), x3 = _mm512_loadu_ps(q + 48);
        __m512 c[4];
        __m512i idx = sel0;
        for (int k = 0; k < 4; k++) {
            __m512 lo = _mm512_permutex2var_ps(x0, idx, x1), hi = _mm512_permutex2var_ps(x2, idx, x3);
            c[k] = _mm512_shuffle_f32x4(lo, hi, 0x44);
            idx = _mm512_add_epi32(idx, one);
        }
        __m512 c4 = _mm512_castsi512_ps(_mm512_alignr_epi32(_mm512_castps_si512(_mm512_set1_ps(q[64])), _mm512_castps_si512(c[0]), 1));
        __m512 c5 = _mm512_castsi512_ps(_mm512_alignr_epi32(_mm512_castps_si512(_mm512_set1_ps(q[65])), _mm512_castps_si512(c[1]), 1));
        const __m512 f4 = _mm512_set1_ps(4), f5 = _mm512_set1_ps(5), f2 = _mm512_set1_ps(2);
        __m512 s34 = _mm512_add_ps(c[3], c4);
        _mm512_storeu_ps(h[0] + t, _mm512_add_ps(_mm512_fmsub_ps(f4, c[0], _mm512_mul_ps(f5, c[2])), c4));
        _mm512_storeu_ps(h[1] + t, _mm512_sub_ps(s34, _mm512_mul_ps(f4, _mm512_add_ps(c[1], c[2]))));
        _mm512_storeu_ps(h[2] + t, _mm512_add_ps(_mm512_mul_ps(f4, _mm512_sub_ps(c[1], c[2])), _mm512_sub_ps(c4, c[3])));
        _mm512_storeu_ps(h[3] + t, _mm512_add_ps(_mm512_mul_ps(f2, _mm512_sub_ps(c[3], c[1])), _mm512_sub_ps(c4, c[2])));
        _mm512_storeu_ps(h[4] + t, _mm512_add_ps(_mm512_mul_ps(f2, _mm512_sub_ps(c[1], c[3])), _mm512_sub_ps(c4, c[2])));
        _mm512_storeu_ps(h[5] + t, _mm512_add_ps(_mm512_fmsub_ps(f4, c[1], _mm512_mul_ps(f5, c[3])), c5));
    }
    return t;
}

static inline __attribute__((always_inline)) void input_body(wino_job *j, long c, int vector) {
    const int tw = j->tw, Wp = 4 * tw + 2;
    float *buf = ck_scratch(3, (size_t)12 * Wp);
    float *d = buf, *e = buf + 6 * Wp;  // d: 6 padded input rows; e: B^T d
    long plane = (long)j->H * j->W;
    for (long r = 0; r < j->rows; r++) {
        long gr = j->r0 + r, m = gr / j->th;
        int ty = (int)(gr % j->th);
        const float *xc = j->x + (m * j->C + c) * plane;
        for (int a = 0; a < 6; a++) {
            float *row = d + a * Wp;
            int yy = ty * 4 - 1 + a;
            memset(row, 0, (size_t)Wp * sizeof(float));
            if (yy < 0 || yy >= j->H) continue;
            const float *src = xc + (long)yy * j->W;
            if (j->z) {  // j->z holds 1 / stab(z) here (see winograd())
                const float *zr = j->z + (c * (long)j->H + yy) * j->W;
                for (int x = 0; x < j->W; x++) row[1 + x] = src[x] * zr[x];
            } else {
                memcpy(row + 1, src, (size_t)j->W * sizeof(float));
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
        long tbase = r * tw;
        float h[6][64];
        for (int a = 0; a < 6; a++) {
            const float *er = e + a * Wp;
            // Segments of tiles that fall in one packed panel, so every store below is contiguous.
            for (int t0 = 0; t0 < tw;) {
                long g = tbase + t0;
                int cnt = (int)ck_min(ck_min(tw - t0, 64), j->nr - g % j->nr);
                int done = vector ? horizontal_avx512(er + 4 * t0, cnt, h) : 0;
                for (int t = done; t < cnt; t++) {
                    const float *q = er + 4 * (t0 + t);
                    h[0][t] = 4 * q[0] - 5 * q[2] + q[4];
                    h[1][t] = -4 * q[1] - 4 * q[2] + q[3] + q[4];
                    h[2][t] = 4 * q[1] - 4 * q[2] - q[3] + q[4];
                    h[3][t] = -2 * q[1] - q[2] + 2 * q[3] + q[4];
                    h[4][t] = 2 * q[1] - q[2] - 2 * q[3] + q[4];
                    h[5][t] = 4 * q[1] - 5 * q[3] + q[5];
                }
                for (int b = 0; b < 6; b++) {
                    float *dst = v_at(j, a * 6 + b, c, g);
                    for (int t = 0; t < cnt; t++) dst[t] = h[b][t];
                }
                t0 += cnt;
            }
        }
    }
}

__attribute__((target("avx512f,avx512dq,avx2,fma"))) static void input_avx512(void *p, long c) { input_body(p, c, 1); }
__attribute__((target("avx2,fma"))) static void input_avx2(void *p, long c) { input_body(p, c, 0); }
static void input_portable(void *p, long c) { input_body(p, c, 0); }

static void gemm_task(void *p, long xi) {
    wino_job *j = p;
    ck_sgemm_packed_b(j->isa, j->K, (int)j->T, j->C, j->U + xi * j->K * j->C, j->C, 1, j->V + xi * j->C * j->Tp,
                      j->M + xi * j->K * j->T, j->T, 0);
}

// Output transform of channel k, one tile row at a time: horizontal pass (A^T along x) from the
// contiguous per-tile values, then the vertical pass element-wise over x, with the fused product.
static inline __attribute__((always_inline)) void output_body(wino_job *j, long k) {
    const int tw = j->tw, Wo = 4 * tw;
    float *f = ck_scratch(3, (size_t)6 * Wo);
    long plane = (long)j->H * j->W;
    for (long r = 0; r < j->rows; r++) {
        long gr = j->r0 + r, m = gr / j->th;
        int ty = (int)(gr % j->th);
        long tbase = r * tw;
        for (int a = 0; a < 6; a++) {
            const float *m0 = j->M + ((long)(a * 6) * j->K + k) * j->T + tbase;
            long st = (long)j->K * j->T;
            const float *m1 = m0 + st, *m2 = m1 + st, *m3 = m2 + st, *m4 = m3 + st, *m5 = m4 + st;
            float *fr = f + a * Wo;
            for (int t = 0; t < tw; t++) {
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
        float *row = ck_scratch(2, (size_t)j->W);
        for (int a = 0; a < rows; a++) {
            long off = (long)(ty * 4 + a) * j->W;
            float *yr = yk + off;
            for (int x = 0; x < j->W; x++) {
                float p1 = f1[x] + f2[x], q1 = f1[x] - f2[x], p3 = f3[x] + f4[x], q3 = f3[x] - f4[x];
                row[x] = a == 0 ? f0[x] + p1 + p3 : a == 1 ? q1 + 2 * q3 : a == 2 ? p1 + 4 * p3 : q1 + 8 * q3 + f5[x];
            }
            const float *ar = j->a ? j->a + (k * (long)j->H * j->W) + off : NULL;
            float sc = j->scale;
            if (ar && j->accumulate) for (int x = 0; x < j->W; x++) yr[x] += sc * ar[x] * row[x];
            else if (ar) for (int x = 0; x < j->W; x++) yr[x] = sc * ar[x] * row[x];
            else if (j->accumulate) for (int x = 0; x < j->W; x++) yr[x] += sc * row[x];
            else for (int x = 0; x < j->W; x++) yr[x] = sc * row[x];
        }
    }
}

__attribute__((target("avx512f,avx512dq,avx2,fma"))) static void output_avx512(void *p, long k) { output_body(p, k); }
__attribute__((target("avx2,fma"))) static void output_avx2(void *p, long k) { output_body(p, k); }
static void output_portable(void *p, long k) { output_body(p, k); }

static void winograd(int n, const float *x, const float *z, float eps, int C, int H, int W, const float *U, int K,
                     const float *a, float scale, int accumulate, float *y);

void ck_winograd_conv3x3(int n, const float *x, int C, int H, int W, const float *U, int K, float *y) {
    winograd(n, x, NULL, 0, C, H, W, U, K, NULL, 1, 0, y);
}

void ck_winograd_lrp(int n, const float *R, const float *z, float eps, int C, int H, int W, const float *U, int K,
                     const float *a, float scale, int accumulate, float *Rin) {
    winograd(n, R, z, eps, C, H, W, U, K, a, scale, accumulate, Rin);
}

static void winograd(int n, const float *x, const float *z, float eps, int C, int H, int W, const float *U, int K,
                     const float *a, float scale, int accumulate, float *y) {
    if (n <= 0) return;
    int th = (H + 3) / 4, tw = (W + 3) / 4;
    long total_rows = (long)n * th;
    // Super-chunks of whole tile rows whose V and M together stay near 48 MiB.
    long per_row = 36L * (C + K) * tw * (long)sizeof(float);
    long R = ck_max(1, ck_min(total_rows, (48L << 20) / per_row));
    int isa = ck_isa_active();
    int nr = ck_gemm_nr(isa);
    long Tmax = (R * tw + nr - 1) / nr * nr;
    // Kept between calls (thread-local to the caller): fresh 48 MiB buffers every layer and block
    // cost more in page faults than the transforms.
    float *V = ck_scratch(4, 36 * (size_t)C * Tmax);
    float *M = ck_scratch(5, 36 * (size_t)K * Tmax);
    // 1 / stab(z) once, shared by all maps: a multiply per element instead of a divide.
    float *rz = NULL;
    if (z) {
        long cnt = (long)C * H * W;
        rz = ck_scratch(6, (size_t)cnt);
        for (long i = 0; i < cnt; i++) rz[i] = 1.0f / (z[i] + (z[i] >= 0.0f ? eps : -eps));
    }
    wino_job j = {isa, x, U, y, V, M, C, K, H, W, th, tw, 0, 0, 0, rz, a, eps, scale, accumulate, nr, 0};
    ck_task_fn in = isa == CK_ISA_AVX512 ? input_avx512 : isa == CK_ISA_AVX2 ? input_avx2 : input_portable;
    ck_task_fn out = isa == CK_ISA_AVX512 ? output_avx512 : isa == CK_ISA_AVX2 ? output_avx2 : output_portable;
    for (long r0 = 0; r0 < total_rows; r0 += R) {
        j.r0 = r0;
        j.rows = ck_min(R, total_rows - r0);
        j.T = j.rows * tw;
        j.Tp = (j.T + nr - 1) / nr * nr;
        ck_parallel_for(C, &j, in);
        if (j.Tp > j.T)  // the unused lanes of the last panel: zero, not stale scratch (denormals are slow)
            for (int xi = 0; xi < 36; xi++)
                for (long c = 0; c < C; c++)
                    for (long t = j.T; t < j.Tp; t++) *v_at(&j, xi, c, t) = 0.0f;
        ck_parallel_for(36, &j, gemm_task);
        ck_parallel_for(K, &j, out);
    }
}
