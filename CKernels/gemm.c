// Packed SGEMM with AVX-512 (6 x 64), AVX2+FMA (6 x 16) and portable (6 x 16) micro-kernels. All
// three have 6-row slivers, so an A packed once (ck_gemm_pack_a) serves every ISA.
//
// Blocking follows the BLIS scheme: a KC x NR sliver of B and an MR x KC sliver of A meet in a
// register tile. Parallel work is a 2-D grid of MC x NC tiles of C; each task packs its own A and B
// blocks. That repacks B ceil(M / MC) times and A ceil(N / NC) times, which costs about 1 / MC and
// 1 / NC of the arithmetic (under 1 %) and keeps the parallel scheme a plain parallel-for.
#include "internal.h"

#include <immintrin.h>
#include <string.h>

enum { KC = 256, MC = 96, NC = 768 };

typedef void (*ukernel_fn)(long kc, const float *a, const float *b, float *c, long ldc, int acc,
                           int mr, int nr);

typedef struct {
    int mr, nr;
    ukernel_fn kernel;
} isa_desc;

// Writes an MR x NR register tile held in `t` (row stride NRMAX) to C, honoring edges.
static inline void store_tile(const float *t, int ldt, float *c, long ldc, int acc, int mr, int nr) {
    for (int i = 0; i < mr; i++) {
        float *ci = c + i * ldc;
        const float *ti = t + i * ldt;
        if (acc) for (int j = 0; j < nr; j++) ci[j] += ti[j];
        else memcpy(ci, ti, (size_t)nr * sizeof(float));
    }
}

// MARK: Portable 6 x 16

static void uk_portable(long kc, const float *a, const float *b, float *c, long ldc, int acc, int mr,
                        int nr) {
    float t[6][16] = {{0}};
    for (long k = 0; k < kc; k++) {
        const float *bk = b + k * 16;
        for (int i = 0; i < 6; i++) {
            float ai = a[k * 6 + i];
            for (int j = 0; j < 16; j++) t[i][j] += ai * bk[j];
        }
    }
    store_tile(&t[0][0], 16, c, ldc, acc, mr, nr);
}

// MARK: AVX2 6 x 16

__attribute__((target("avx2,fma"))) static void uk_avx2(long kc, const float *a, const float *b,
                                                        float *c, long ldc, int acc, int mr, int nr) {
    __m256 t00 = _mm256_setzero_ps(), t01 = t00, t10 = t00, t11 = t00, t20 = t00, t21 = t00;
    __m256 t30 = t00, t31 = t00, t40 = t00, t41 = t00, t50 = t00, t51 = t00;
    for (long k = 0; k < kc; k++) {
        __m256 b0 = _mm256_load_ps(b + k * 16), b1 = _mm256_load_ps(b + k * 16 + 8);
        const float *ak = a + k * 6;
        __m256 x;
        x = _mm256_broadcast_ss(ak + 0); t00 = _mm256_fmadd_ps(x, b0, t00); t01 = _mm256_fmadd_ps(x, b1, t01);
        x = _mm256_broadcast_ss(ak + 1); t10 = _mm256_fmadd_ps(x, b0, t10); t11 = _mm256_fmadd_ps(x, b1, t11);
        x = _mm256_broadcast_ss(ak + 2); t20 = _mm256_fmadd_ps(x, b0, t20); t21 = _mm256_fmadd_ps(x, b1, t21);
        x = _mm256_broadcast_ss(ak + 3); t30 = _mm256_fmadd_ps(x, b0, t30); t31 = _mm256_fmadd_ps(x, b1, t31);
        x = _mm256_broadcast_ss(ak + 4); t40 = _mm256_fmadd_ps(x, b0, t40); t41 = _mm256_fmadd_ps(x, b1, t41);
        x = _mm256_broadcast_ss(ak + 5); t50 = _mm256_fmadd_ps(x, b0, t50); t51 = _mm256_fmadd_ps(x, b1, t51);
    }
    _Alignas(32) float t[6][16];
    _mm256_store_ps(t[0], t00); _mm256_store_ps(t[0] + 8, t01);
    _mm256_store_ps(t[1], t10); _mm256_store_ps(t[1] + 8, t11);
    _mm256_store_ps(t[2], t20); _mm256_store_ps(t[2] + 8, t21);
    _mm256_store_ps(t[3], t30); _mm256_store_ps(t[3] + 8, t31);
    _mm256_store_ps(t[4], t40); _mm256_store_ps(t[4] + 8, t41);
    _mm256_store_ps(t[5], t50); _mm256_store_ps(t[5] + 8, t51);
    store_tile(&t[0][0], 16, c, ldc, acc, mr, nr);
}

// MARK: AVX-512 6 x 64

#define ROW6(M) M(0) M(1) M(2) M(3) M(4) M(5)

__attribute__((target("avx512f"))) static void uk_avx512(long kc, const float *a, const float *b,
                                                         float *c, long ldc, int acc, int mr, int nr) {
#define DECL(i) __m512 t##i##0 = _mm512_setzero_ps(), t##i##1 = t##i##0, t##i##2 = t##i##0, t##i##3 = t##i##0;
    ROW6(DECL)
#undef DECL
    for (long k = 0; k < kc; k++) {
        const float *bk = b + k * 64;
        __m512 b0 = _mm512_load_ps(bk), b1 = _mm512_load_ps(bk + 16);
        __m512 b2 = _mm512_load_ps(bk + 32), b3 = _mm512_load_ps(bk + 48);
        const float *ak = a + k * 6;
        __m512 x;
#define FMA(i) x = _mm512_set1_ps(ak[i]); \
        t##i##0 = _mm512_fmadd_ps(x, b0, t##i##0); t##i##1 = _mm512_fmadd_ps(x, b1, t##i##1); \
        t##i##2 = _mm512_fmadd_ps(x, b2, t##i##2); t##i##3 = _mm512_fmadd_ps(x, b3, t##i##3);
        ROW6(FMA)
#undef FMA
    }
    if (mr == 6 && nr == 64) {
#define OUT(i) { float *ci = c + i * ldc; \
        if (acc) { t##i##0 = _mm512_add_ps(t##i##0, _mm512_loadu_ps(ci)); \
                   t##i##1 = _mm512_add_ps(t##i##1, _mm512_loadu_ps(ci + 16)); \
                   t##i##2 = _mm512_add_ps(t##i##2, _mm512_loadu_ps(ci + 32)); \
                   t##i##3 = _mm512_add_ps(t##i##3, _mm512_loadu_ps(ci + 48)); } \
        _mm512_storeu_ps(ci, t##i##0); _mm512_storeu_ps(ci + 16, t##i##1); \
        _mm512_storeu_ps(ci + 32, t##i##2); _mm512_storeu_ps(ci + 48, t##i##3); }
        ROW6(OUT)
#undef OUT
        return;
    }
    _Alignas(64) float t[6][64];
#define SPILL(i) _mm512_store_ps(t[i], t##i##0); _mm512_store_ps(t[i] + 16, t##i##1); \
    _mm512_store_ps(t[i] + 32, t##i##2); _mm512_store_ps(t[i] + 48, t##i##3);
    ROW6(SPILL)
#undef SPILL
    store_tile(&t[0][0], 64, c, ldc, acc, mr, nr);
}

static isa_desc describe(int isa) {
    switch (isa) {
    case CK_ISA_AVX512: return (isa_desc){6, 64, uk_avx512};
    case CK_ISA_AVX2: return (isa_desc){6, 16, uk_avx2};
    default: return (isa_desc){6, 16, uk_portable};
    }
}

// MARK: Packing

// A block (mc x kc at A(i0, k0)) into MR-row slivers, each kc x MR (k-major), zero-padded rows.
static void pack_a(int mr, long mc, long kc, const float *A, long rsa, long csa, float *dst) {
    for (long i0 = 0; i0 < mc; i0 += mr) {
        long rows = ck_min(mr, mc - i0);
        for (long k = 0; k < kc; k++) {
            const float *src = A + i0 * rsa + k * csa;
            long i = 0;
            for (; i < rows; i++) dst[i] = src[i * rsa];
            for (; i < mr; i++) dst[i] = 0.0f;
            dst += mr;
        }
    }
}

// B block (kc x nc at B(k0, j0)) into NR-column slivers, each kc x NR, zero-padded columns.
static void pack_b(int nr, long kc, long nc, const float *B, long rsb, long csb, float *dst) {
    for (long j0 = 0; j0 < nc; j0 += nr) {
        long cols = ck_min(nr, nc - j0);
        for (long k = 0; k < kc; k++) {
            const float *src = B + k * rsb + j0 * csb;
            long j = 0;
            if (csb == 1) { memcpy(dst, src, (size_t)cols * sizeof(float)); j = cols; }
            else for (; j < cols; j++) dst[j] = src[j * csb];
            for (; j < nr; j++) dst[j] = 0.0f;
            dst += nr;
        }
    }
}

// One MC x NC tile of C over the whole K, serial.
static void gemm_tile(isa_desc d, long i0, long mc, long j0, long nc, long K, const float *A,
                      long rsa, long csa, const float *B, long rsb, long csb, float *C, long ldc,
                      int accumulate, ck_pack_b_fn packer, const void *pctx) {
    long mcp = (mc + d.mr - 1) / d.mr * d.mr, ncp = (nc + d.nr - 1) / d.nr * d.nr;
    float *pa = ck_scratch(0, (size_t)mcp * KC);
    float *pb = ck_scratch(1, (size_t)ncp * KC);
    for (long k0 = 0; k0 < K; k0 += KC) {
        long kc = ck_min(KC, K - k0);
        int acc = accumulate || k0 > 0;
        if (packer) packer(pctx, d.nr, k0, kc, j0, nc, pb);
        else pack_b(d.nr, kc, nc, B + k0 * rsb + j0 * csb, rsb, csb, pb);
        pack_a(d.mr, mc, kc, A + i0 * rsa + k0 * csa, rsa, csa, pa);
        for (long jr = 0; jr < nc; jr += d.nr) {
            int nr = (int)ck_min(d.nr, nc - jr);
            const float *bs = pb + jr * kc;
            for (long ir = 0; ir < mc; ir += d.mr) {
                int mr = (int)ck_min(d.mr, mc - ir);
                d.kernel(kc, pa + ir * kc, bs, C + (i0 + ir) * ldc + j0 + jr, ldc, acc, mr, nr);
            }
        }
    }
}

static int degenerate(int M, int N, int K, float *C, long ldc, int accumulate) {
    if (M <= 0 || N <= 0) return 1;
    if (K <= 0) {
        if (!accumulate)
            for (long i = 0; i < M; i++) memset(C + i * ldc, 0, (size_t)N * sizeof(float));
        return 1;
    }
    return 0;
}

void ck_sgemm_serial(int isa, int M, int N, int K, const float *A, long rsa, long csa,
                     const float *B, long rsb, long csb, float *C, long ldc, int accumulate) {
    if (degenerate(M, N, K, C, ldc, accumulate)) return;
    isa_desc d = describe(isa);
    for (long j0 = 0; j0 < N; j0 += NC)
        for (long i0 = 0; i0 < M; i0 += MC)
            gemm_tile(d, i0, ck_min(MC, M - i0), j0, ck_min(NC, N - j0), K, A, rsa, csa, B, rsb,
                      csb, C, ldc, accumulate, NULL, NULL);
}

typedef struct {
    isa_desc d;
    long M, N, K, mc, nc, tiles_m;
    const float *A, *B;
    long rsa, csa, rsb, csb, ldc;
    float *C;
    int accumulate;
    ck_pack_b_fn packer;
    const void *pctx;
} gemm_job;

static void gemm_task(void *p, long t) {
    gemm_job *g = p;
    long i0 = (t % g->tiles_m) * g->mc, j0 = (t / g->tiles_m) * g->nc;
    gemm_tile(g->d, i0, ck_min(g->mc, g->M - i0), j0, ck_min(g->nc, g->N - j0), g->K, g->A, g->rsa,
              g->csa, g->B, g->rsb, g->csb, g->C, g->ldc, g->accumulate, g->packer, g->pctx);
}

void ck_sgemm(int M, int N, int K, const float *A, long rsa, long csa, const float *B, long rsb,
              long csb, float *C, long ldc, int accumulate) {
    ck_sgemm_packer(M, N, K, A, rsa, csa, B, rsb, csb, NULL, NULL, C, ldc, accumulate);
}

void ck_sgemm_packer(int M, int N, int K, const float *A, long rsa, long csa, const float *B, long rsb,
                     long csb, ck_pack_b_fn packer, const void *pctx, float *C, long ldc, int accumulate) {
    if (degenerate(M, N, K, C, ldc, accumulate)) return;
    gemm_job g = {describe(ck_isa_active()), M, N, K, MC, NC, 0, A, B, rsa, csa, rsb, csb, ldc, C,
                  accumulate, packer, pctx};
    // Enough tiles for every thread: shrink NC (in NR steps) when N alone gives too few.
    int nt = ck_get_num_threads();
    long tiles_m = (M + MC - 1) / MC;
    while (tiles_m * ((N + g.nc - 1) / g.nc) < 4L * nt) {
        long half = (g.nc / 2 + g.d.nr - 1) / g.d.nr * g.d.nr;
        if (half >= g.nc) break;
        g.nc = half;
    }
    g.tiles_m = tiles_m;
    long tiles = tiles_m * ((N + g.nc - 1) / g.nc);
    ck_parallel_for(tiles, &g, gemm_task);
}

int ck_gemm_nr(int isa) { return describe(isa).nr; }

int ck_gemm_mr(int isa) { return describe(isa).mr; }

long ck_gemm_packed_a_size(int isa, int M, int K) {
    int mr = describe(isa).mr;
    return (long)(M + mr - 1) / mr * mr * K;
}

// Layout: K in blocks of KC; block k0 at dst + k0 * Mp holds the Mp / mr slivers of the rows, each
// kc x mr (k-major), rows past M zero. The micro-kernel reads a sliver as pack_a writes it.
void ck_gemm_pack_a(int isa, int M, int K, const float *A, long rsa, long csa, float *dst) {
    int mr = describe(isa).mr;
    long Mp = (long)(M + mr - 1) / mr * mr;
    for (long k0 = 0; k0 < K; k0 += KC)
        pack_a(mr, M, ck_min(KC, K - k0), A + k0 * csa, rsa, csa, dst + k0 * Mp);
}

void ck_gemm_prepacked(int isa, int s0, int s1, int M, int N, int K, const float *Ap, const float *Bp, float *C,
                       long ldc, int accumulate) {
    isa_desc d = describe(isa);
    long Mp = (long)(M + d.mr - 1) / d.mr * d.mr;
    for (long k0 = 0; k0 < K; k0 += KC) {
        long kc = ck_min(KC, K - k0);
        int acc = accumulate || k0 > 0;
        const float *ab = Ap + k0 * Mp;
        for (long jr = 0; jr < N; jr += d.nr) {
            int nr = (int)ck_min(d.nr, N - jr);
            const float *bs = Bp + (jr / d.nr) * (long)K * d.nr + k0 * d.nr;
            for (long s = s0; s < s1; s++) {
                long i = s * d.mr;
                int mr = (int)ck_min(d.mr, M - i);
                d.kernel(kc, ab + i * kc, bs, C + (i - (long)s0 * d.mr) * ldc + jr, ldc, acc, mr, nr);
            }
        }
    }
}

void ck_sgemm_packed_b(int isa, int M, int N, int K, const float *A, long rsa, long csa, const float *Bp, float *C,
                       long ldc, int accumulate) {
    if (degenerate(M, N, K, C, ldc, accumulate)) return;
    isa_desc d = describe(isa);
    float *pa = ck_scratch(0, (size_t)((MC + d.mr - 1) / d.mr * d.mr) * KC);
    for (long i0 = 0; i0 < M; i0 += MC) {
        long mc = ck_min(MC, M - i0);
        for (long k0 = 0; k0 < K; k0 += KC) {
            long kc = ck_min(KC, K - k0);
            int acc = accumulate || k0 > 0;
            pack_a(d.mr, mc, kc, A + i0 * rsa + k0 * csa, rsa, csa, pa);
            for (long jr = 0; jr < N; jr += d.nr) {
                int nr = (int)ck_min(d.nr, N - jr);
                const float *bs = Bp + (jr / d.nr) * (long)K * d.nr + k0 * d.nr;
                for (long ir = 0; ir < mc; ir += d.mr) {
                    int mr = (int)ck_min(d.mr, mc - ir);
                    d.kernel(kc, pa + ir * kc, bs, C + (i0 + ir) * ldc + jr, ldc, acc, mr, nr);
                }
            }
        }
    }
}
