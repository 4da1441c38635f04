// Packed SGEMM with AVX-512 (6 x 64), AVX2+FMA (6 x 16), NEON (6 x 16, aarch64) and portable (6 x 16)
// micro-kernels. All have 6-row slivers, so an A packed once (ck_gemm_pack_a) serves every ISA.
//
// Blocking follows the BLIS scheme: a KC x NR sliver of B and an MR x KC sliver of A meet in a
// register tile. ck_sgemm packs A once (shared) and gives each task a column block of C whose B it
// packs once (see the parallel driver below): packing is memory traffic, and packing either operand
// more than once cost up to a third of the time on VGG's shapes. ck_sgemm_serial (inside other
// tasks) packs per MC x NC tile.
#include "internal.h"

#include <string.h>

enum { KC = 256, MC = 96, NC = 768 };

// The K step: at most KC, and equal steps (K = 576 runs as 3 x 192, not 256 + 256 + 64: a short
// last step pays the C tile's load and store for little arithmetic). Every packing of A and every
// GEMM over a packed A uses this same step.
static inline long kc_step(long K) {
    long steps = (K + KC - 1) / KC;
    return (K + steps - 1) / steps;
}

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

#if CK_X86
// MARK: AVX2 6 x 16

// B rows: the packed panel (koff NULL: row k at b + 16 k, aligned) or rows read in place (row k
// at b + koff[k], unaligned: the forward convolution's implicit GEMM). A full tile goes straight to
// C; edges through a spilled tile. Specialized per call site (constants after inlining), as the
// AVX-512 kernel is: rows = 6 or 4 (a sliver of at most 4 rows, 64 = 10 x 6 + 4 output channels,
// runs 8 FMAs per k instead of 12 on zero rows: 3 % of the 64- and 128-channel layers) and
// halves = 2 or 1 (a panel of at most 8 columns, the short last panel of a Winograd GEMM).
#define ROW6(M) M(0) M(1) M(2) M(3) M(4) M(5)
__attribute__((target("avx2,fma"), always_inline)) static inline void uk_avx2_body(
    long kc, const float *a, const float *b, const long *koff, float *c, long ldc, int acc, int mr, int nr,
    const int rows, const int halves) {
#define DECL(i) __m256 t##i##0 = _mm256_setzero_ps(), t##i##1 = t##i##0;
    ROW6(DECL)
#undef DECL
    for (long k = 0; k < kc; k++) {
        __m256 b0, b1 = _mm256_setzero_ps();
        if (koff) {
            b0 = _mm256_loadu_ps(b + koff[k]);
            if (halves > 1) b1 = _mm256_loadu_ps(b + koff[k] + 8);
        } else {
            b0 = _mm256_load_ps(b + k * 16);
            if (halves > 1) b1 = _mm256_load_ps(b + k * 16 + 8);
        }
        const float *ak = a + k * 6;
        __m256 x;
#define FMA(i) if (i < rows) { x = _mm256_broadcast_ss(ak + i); t##i##0 = _mm256_fmadd_ps(x, b0, t##i##0); \
        if (halves > 1) t##i##1 = _mm256_fmadd_ps(x, b1, t##i##1); }
        ROW6(FMA)
#undef FMA
    }
    if (mr == rows && nr == 16 && halves == 2) {
#define OUT(i) if (i < rows) { float *ci = c + i * ldc; \
        if (acc) { t##i##0 = _mm256_add_ps(t##i##0, _mm256_loadu_ps(ci)); \
                   t##i##1 = _mm256_add_ps(t##i##1, _mm256_loadu_ps(ci + 8)); } \
        _mm256_storeu_ps(ci, t##i##0); _mm256_storeu_ps(ci + 8, t##i##1); }
        ROW6(OUT)
#undef OUT
        return;
    }
    _Alignas(32) float t[6][16];
#define SPILL(i) _mm256_store_ps(t[i], t##i##0); _mm256_store_ps(t[i] + 8, t##i##1);
    ROW6(SPILL)
#undef SPILL
    store_tile(&t[0][0], 16, c, ldc, acc, mr, nr);
}

__attribute__((target("avx2,fma"))) static void uk_avx2(long kc, const float *a, const float *b, float *c, long ldc,
                                                        int acc, int mr, int nr) {
    if (mr <= 4) {
        if (nr <= 8) uk_avx2_body(kc, a, b, NULL, c, ldc, acc, mr, nr, 4, 1);
        else uk_avx2_body(kc, a, b, NULL, c, ldc, acc, mr, nr, 4, 2);
    } else {
        if (nr <= 8) uk_avx2_body(kc, a, b, NULL, c, ldc, acc, mr, nr, 6, 1);
        else uk_avx2_body(kc, a, b, NULL, c, ldc, acc, mr, nr, 6, 2);
    }
}

__attribute__((target("avx2,fma"))) void ck_ukernel_offsets_avx2(long kc, const float *a, const float *base,
                                                                 const long *koff, float *c, long ldc, int acc,
                                                                 int mr, int nr) {
    if (!koff) __builtin_unreachable();  // the in-place loads, without a test per k
    if (mr <= 4) uk_avx2_body(kc, a, base, koff, c, ldc, acc, mr, nr, 4, 2);
    else uk_avx2_body(kc, a, base, koff, c, ldc, acc, mr, nr, 6, 2);
}

// MARK: AVX-512 6 x 64


// B rows: the packed panel (koff NULL: row k at b + 64 k) or rows read in place (row k at
// b + koff[k], unaligned; the forward convolution reads im2col rows straight from a padded image).
// In place, the four 16-column quarters of a row start at seg[0..3] from it (16 readable floats
// each): a panel may join pieces of four image rows. Specialized per call site, for rows = 6 or 4
// and for quarters = 1 .. 4 (packed panels only; constants after inlining): a sliver of at most 4
// rows (64 = 10 x 6 + 4 output channels) runs 16 FMAs per k instead of 24 on zero rows, which
// cost the 64- and 128-channel layers 3 %; a panel of at most 48 columns computes only its quarters.
__attribute__((target("avx512f"), always_inline)) static inline void uk_avx512_body(
    long kc, const float *a, const float *b, const long *koff, const long *seg, float *c, long ldc, int acc, int mr,
    int nr, const int rows, const int quarters) {
    long s0 = koff ? seg[0] : 0, s1 = koff ? seg[1] : 16, s2 = koff ? seg[2] : 32, s3 = koff ? seg[3] : 48;
#define DECL(i) __m512 t##i##0 = _mm512_setzero_ps(), t##i##1 = t##i##0, t##i##2 = t##i##0, t##i##3 = t##i##0;
    ROW6(DECL)
#undef DECL
    for (long k = 0; k < kc; k++) {
        const float *bk = koff ? b + koff[k] : b + k * 64;
        __m512 b0, b1 = _mm512_setzero_ps(), b2 = b1, b3 = b1;
        if (quarters < 4) {  // packed panels only
            b0 = _mm512_loadu_ps(bk);
            if (quarters > 1) b1 = _mm512_loadu_ps(bk + 16);
            if (quarters > 2) b2 = _mm512_loadu_ps(bk + 32);
        } else {
            b0 = _mm512_loadu_ps(bk + s0); b1 = _mm512_loadu_ps(bk + s1);
            b2 = _mm512_loadu_ps(bk + s2); b3 = _mm512_loadu_ps(bk + s3);
        }
        const float *ak = a + k * 6;
        __m512 x;
#define FMA(i) if (i < rows) { x = _mm512_set1_ps(ak[i]); t##i##0 = _mm512_fmadd_ps(x, b0, t##i##0); \
        if (quarters > 1) t##i##1 = _mm512_fmadd_ps(x, b1, t##i##1); \
        if (quarters > 2) t##i##2 = _mm512_fmadd_ps(x, b2, t##i##2); \
        if (quarters > 3) t##i##3 = _mm512_fmadd_ps(x, b3, t##i##3); }
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

__attribute__((target("avx512f"))) static void uk_avx512(long kc, const float *a, const float *b, float *c, long ldc,
                                                         int acc, int mr, int nr) {
    // The last panel of a Winograd GEMM is often short: 20 maps of 8 x 8 are 80 tiles, 64 + 16, and
    // the full width computed 128 columns for them (conv5 at 128 x 128).
#define BODY(rows, quarters) uk_avx512_body(kc, a, b, NULL, NULL, c, ldc, acc, mr, nr, rows, quarters)
    int quarters = (nr + 15) / 16;
    if (mr <= 4) {
        if (quarters == 1) BODY(4, 1); else if (quarters == 2) BODY(4, 2); else if (quarters == 3) BODY(4, 3);
        else BODY(4, 4);
    } else {
        if (quarters == 1) BODY(6, 1); else if (quarters == 2) BODY(6, 2); else if (quarters == 3) BODY(6, 3);
        else BODY(6, 4);
    }
#undef BODY
}

__attribute__((target("avx512f"))) void ck_ukernel_offsets_avx512(long kc, const float *a, const float *base,
                                                                   const long *koff, const long *seg, float *c,
                                                                   long ldc, int acc, int mr, int nr) {
    if (!koff) __builtin_unreachable();  // the in-place loads, without a test per k
    if (mr <= 4) uk_avx512_body(kc, a, base, koff, seg, c, ldc, acc, mr, nr, 4, 4);
    else uk_avx512_body(kc, a, base, koff, seg, c, ldc, acc, mr, nr, 6, 4);
}

#endif

#if defined(__aarch64__)
// MARK: NEON 6 x 16

// 24 accumulators (6 rows x 4 quad registers), the 4 quads of B's row and the sliver's 6 values of A
// (a quad and a pair, used by lane) in the 32 vector registers. Cycle model: per k, 24 FMAs on 4 + 2
// loads. On a core with two 128-bit FMA pipes (Cortex-A76, Neoverse N1: latency 4) that is 12 cycles
// per k, and 24 independent chains cover the 4-cycle latency twice over; with four (Neoverse V1,
// Graviton3) 6 cycles, the 6 loads then fill two of its three load ports. Unmeasured: no ARM
// machine here; correctness is checked under qemu-user (make test-arm).
static void uk_neon(long kc, const float *a, const float *b, float *c, long ldc, int acc, int mr, int nr) {
#define Z(i) float32x4_t t##i##0 = vdupq_n_f32(0), t##i##1 = t##i##0, t##i##2 = t##i##0, t##i##3 = t##i##0;
    Z(0) Z(1) Z(2) Z(3) Z(4) Z(5)
#undef Z
    for (long k = 0; k < kc; k++) {
        const float *bk = b + k * 16, *ak = a + k * 6;
        float32x4_t b0 = vld1q_f32(bk), b1 = vld1q_f32(bk + 4), b2 = vld1q_f32(bk + 8), b3 = vld1q_f32(bk + 12);
        float32x4_t a03 = vld1q_f32(ak);
        float32x2_t a45 = vld1_f32(ak + 4);
#define ROWQ(i, l) t##i##0 = vfmaq_laneq_f32(t##i##0, b0, a03, l); t##i##1 = vfmaq_laneq_f32(t##i##1, b1, a03, l); \
        t##i##2 = vfmaq_laneq_f32(t##i##2, b2, a03, l); t##i##3 = vfmaq_laneq_f32(t##i##3, b3, a03, l);
#define ROWD(i, l) t##i##0 = vfmaq_lane_f32(t##i##0, b0, a45, l); t##i##1 = vfmaq_lane_f32(t##i##1, b1, a45, l); \
        t##i##2 = vfmaq_lane_f32(t##i##2, b2, a45, l); t##i##3 = vfmaq_lane_f32(t##i##3, b3, a45, l);
        ROWQ(0, 0) ROWQ(1, 1) ROWQ(2, 2) ROWQ(3, 3) ROWD(4, 0) ROWD(5, 1)
#undef ROWQ
#undef ROWD
    }
    if (mr == 6 && nr == 16) {
#define OUT(i) { float *ci = c + i * ldc; \
        if (acc) { t##i##0 = vaddq_f32(t##i##0, vld1q_f32(ci)); t##i##1 = vaddq_f32(t##i##1, vld1q_f32(ci + 4)); \
                   t##i##2 = vaddq_f32(t##i##2, vld1q_f32(ci + 8)); t##i##3 = vaddq_f32(t##i##3, vld1q_f32(ci + 12)); } \
        vst1q_f32(ci, t##i##0); vst1q_f32(ci + 4, t##i##1); vst1q_f32(ci + 8, t##i##2); vst1q_f32(ci + 12, t##i##3); }
        OUT(0) OUT(1) OUT(2) OUT(3) OUT(4) OUT(5)
#undef OUT
        return;
    }
    float t[6][16];
#define SPILL(i) vst1q_f32(t[i], t##i##0); vst1q_f32(t[i] + 4, t##i##1); vst1q_f32(t[i] + 8, t##i##2); \
    vst1q_f32(t[i] + 12, t##i##3);
    SPILL(0) SPILL(1) SPILL(2) SPILL(3) SPILL(4) SPILL(5)
#undef SPILL
    store_tile(&t[0][0], 16, c, ldc, acc, mr, nr);
}
#endif

static isa_desc describe(int isa) {
    switch (isa) {
#if CK_X86
    case CK_ISA_AVX512: return (isa_desc){6, 64, uk_avx512};
    case CK_ISA_AVX2: return (isa_desc){6, 16, uk_avx2};
#elif defined(__aarch64__)
    case CK_ISA_NEON: return (isa_desc){6, 16, uk_neon};
#endif
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
    if (!pa || !pb) return;
    for (long k0 = 0, ks = kc_step(K); k0 < K; k0 += ks) {
        long kc = ck_min(ks, K - k0);
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

// MARK: Parallel driver

// A is packed once per call into a buffer all threads read (ck_gemm_pack_a layout). Tasks own
// column blocks of C (all rows, unless there are too few columns for the threads): each packs its
// own B block once per KC step and runs it against every row block, so neither operand is packed
// twice. Inside a task: KC step -> MC row block (A block in L2) -> NR panel -> MR sliver.
typedef struct {
    isa_desc d;
    long M, N, K, Mp, mct, nct, tiles_n;
    const float *Ap, *B;
    long rsb, csb, ldc;
    float *C;
    int accumulate;
    ck_pack_b_fn packer;
    const void *pctx;
} gemm_job;

typedef struct {
    int mr;
    long M, K, Mp, row_blocks;
    const float *A;
    long rsa, csa;
    float *dst;
} pack_job;

static void pack_a_task(void *p, long t) {
    pack_job *q = p;
    long ks = kc_step(q->K), k0 = (t / q->row_blocks) * ks, i0 = (t % q->row_blocks) * MC;
    long kc = ck_min(ks, q->K - k0), mc = ck_min(MC, q->M - i0);
    pack_a(q->mr, mc, kc, q->A + i0 * q->rsa + k0 * q->csa, q->rsa, q->csa, q->dst + k0 * q->Mp + i0 * kc);
}

void ck_gemm_pack_a_parallel(int isa, int M, int K, const float *A, long rsa, long csa, float *dst) {
    isa_desc d = describe(isa);
    long Mp = (long)(M + d.mr - 1) / d.mr * d.mr;
    pack_job q = {d.mr, M, K, Mp, (M + MC - 1) / MC, A, rsa, csa, dst};
    ck_parallel_for(q.row_blocks * ((K + kc_step(K) - 1) / kc_step(K)), &q, pack_a_task);
}

float *ck_gemm_pack_a_shared(int isa, int M, int K, const float *A, long rsa, long csa) {
    float *dst = ck_scratch(7, (size_t)ck_gemm_packed_a_size(isa, M, K));
    if (dst) ck_gemm_pack_a_parallel(isa, M, K, A, rsa, csa, dst);
    return dst;
}

long ck_gemm_kc_step(long K) { return kc_step(K); }

static void gemm_task(void *p, long t) {
    gemm_job *g = p;
    isa_desc d = g->d;
    long j0 = (t % g->tiles_n) * g->nct, i0 = (t / g->tiles_n) * g->mct;
    long nc = ck_min(g->nct, g->N - j0), i1 = ck_min(i0 + g->mct, g->M);
    float *pb = ck_scratch(1, (size_t)d.nr * KC);
    if (!pb) return;
    for (long k0 = 0, ks = kc_step(g->K); k0 < g->K; k0 += ks) {
        long kc = ck_min(ks, g->K - k0);
        int acc = g->accumulate || k0 > 0;
        const float *ab = g->Ap + k0 * g->Mp;
        for (long jr = j0; jr < j0 + nc; jr += d.nr) {
            int nr = (int)ck_min(d.nr, j0 + nc - jr);
            // One panel, packed right before the whole row range uses it (it stays in L1/L2).
            if (g->packer) g->packer(g->pctx, d.nr, k0, kc, jr, nr, pb);
            else pack_b(d.nr, kc, nr, g->B + k0 * g->rsb + jr * g->csb, g->rsb, g->csb, pb);
            for (long ir = i0; ir < i1; ir += d.mr) {
                int mr = (int)ck_min(d.mr, i1 - ir);
                d.kernel(kc, ab + ir * kc, pb, g->C + ir * g->ldc + jr, g->ldc, acc, mr, nr);
            }
        }
    }
}

int ck_sgemm(int M, int N, int K, const float *A, long rsa, long csa, const float *B, long rsb,
             long csb, float *C, long ldc, int accumulate) {
    unsigned long before = ck_alloc_failures();
    ck_sgemm_packer(M, N, K, A, rsa, csa, B, rsb, csb, NULL, NULL, C, ldc, accumulate);
    return ck_status_since(before);
}

void ck_sgemm_packer(int M, int N, int K, const float *A, long rsa, long csa, const float *B, long rsb,
                     long csb, ck_pack_b_fn packer, const void *pctx, float *C, long ldc, int accumulate) {
    if (degenerate(M, N, K, C, ldc, accumulate)) return;
    // A packed once, shared (thread-local scratch of the caller; tasks only read it).
    const float *Ap = ck_gemm_pack_a_shared(ck_isa_active(), M, K, A, rsa, csa);
    if (!Ap) return;
    ck_sgemm_prepacked_a(M, N, K, Ap, B, rsb, csb, packer, pctx, C, ldc, accumulate);
}

void ck_sgemm_prepacked_a(int M, int N, int K, const float *Ap, const float *B, long rsb, long csb,
                          ck_pack_b_fn packer, const void *pctx, float *C, long ldc, int accumulate) {
    if (degenerate(M, N, K, C, ldc, accumulate)) return;
    isa_desc d = describe(ck_isa_active());
    int nt = ck_get_num_threads();
    long Mp = (long)(M + d.mr - 1) / d.mr * d.mr;
    // Column blocks of 1 to NC / NR panels, about 8 per thread so uneven tails balance; rows are
    // split only when there are too few columns for the threads.
    long panels = (N + d.nr - 1) / d.nr;
    long ppt = ck_max(1, ck_min(NC / d.nr, (panels + 8L * nt - 1) / (8L * nt)));
    long tiles_n = (panels + ppt - 1) / ppt;
    long slivers = Mp / d.mr, tiles_m = 1;
    if (tiles_n < 2L * nt) tiles_m = ck_min(slivers, (2L * nt + tiles_n - 1) / tiles_n);
    gemm_job g = {d, M, N, K, Mp, (slivers + tiles_m - 1) / tiles_m * d.mr, ppt * d.nr, tiles_n, Ap, B, rsb, csb,
                  ldc, C, accumulate, packer, pctx};
    tiles_m = (M + g.mct - 1) / g.mct;
    ck_parallel_for(tiles_m * tiles_n, &g, gemm_task);
}

int ck_gemm_nr(int isa) { return describe(isa).nr; }

int ck_gemm_mr(int isa) { return describe(isa).mr; }

long ck_gemm_packed_a_size(int isa, int M, int K) {
    int mr = describe(isa).mr;
    return (long)(M + mr - 1) / mr * mr * K;
}

// Layout: K in steps of kc_step(K); the step at k0 is at dst + k0 * Mp and holds the Mp / mr
// slivers of the rows, each kc x mr (k-major), rows past M zero. The micro-kernel reads a sliver as pack_a writes it.
long ck_gemm_packed_a_index(int isa, int M, int K, long i, long k) {
    int mr = describe(isa).mr;
    long Mp = (long)(M + mr - 1) / mr * mr, ks = kc_step(K), k0 = k / ks * ks, kc = ck_min(ks, K - k0);
    return k0 * Mp + i / mr * kc * mr + (k - k0) * mr + i % mr;
}

void ck_gemm_pack_a(int isa, int M, int K, const float *A, long rsa, long csa, float *dst) {
    int mr = describe(isa).mr;
    long Mp = (long)(M + mr - 1) / mr * mr, ks = kc_step(K);
    for (long k0 = 0; k0 < K; k0 += ks)
        pack_a(mr, M, ck_min(ks, K - k0), A + k0 * csa, rsa, csa, dst + k0 * Mp);
}

void ck_gemm_prepacked(int isa, int s0, int s1, int M, int N, int K, const float *Ap, const float *Bp, float *C,
                       long ldc, int accumulate) {
    isa_desc d = describe(isa);
    long Mp = (long)(M + d.mr - 1) / d.mr * d.mr, ks = kc_step(K);
    for (long k0 = 0; k0 < K; k0 += ks) {
        long kc = ck_min(ks, K - k0);
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
