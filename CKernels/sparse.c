// The relevance backward of a stride-1 convolution that skips the relevance that is zero.
//
// Relevance is zero wherever the layer's output activation is zero (ReLU) and, below a max-pool,
// everywhere but at the winners: VGG-16 at 128 x 128 keeps 3.5-21 % of the positions of the layers
// under a pool and 23-26 % in the rest of block 5. The zero pattern is that of the input, shared by the n maps of
// a block, so the transposed convolution can be gathered per input pixel over the (tap, channel)
// pairs whose relevance is not zero, with the maps as the rows of the GEMM:
//
//     c[m, :, y, x] = sum over taps (dy, dx), active k at q = (y + ph - dy, x + pw - dx):
//                     s[m, k, q] * W[k, :, dy, dx]
//
// Steps: (A) flag the active (k, q): any map's relevance non-zero (pooled input: the winner of a
// window whose relevance is non-zero); (B) number them per position q; (C) pack
// s = R / stab(z) of the active entries, maps innermost in tiles of mr ("S"); (D) per input row
// and column tile of channels, gather each pixel's entries and run an mr x cw micro-kernel over
// them; transpose the row's tiles to the map-major output with Rin = [Rin +] scale * a * c.
// The arithmetic per map is that of the dense direct convolution times the density, without the
// Winograd transforms; the explainer picks this path per layer and input from the density.
#include "internal.h"

#include <string.h>

enum { SP_LD = 32 };                  // weight rows: tiles of this many channels, zero-padded
enum { SP_GROUP_BYTES = 512 << 10 };  // weights of the column tiles one task runs (see row_task)

static long pad_ld(int C) { return ((long)C + SP_LD - 1) / SP_LD * SP_LD; }

long ck_sparse_weights_size(int K, int C, int kh, int kw) { return (long)kh * kw * K * pad_ld(C); }

void ck_sparse_weights(const float *w, int K, int C, int kh, int kw, float *Wb) {
    long taps = (long)kh * kw, rows = taps * K;
    for (long c0 = 0; c0 < pad_ld(C); c0 += SP_LD)
        for (long t = 0; t < taps; t++)
            for (long k = 0; k < K; k++) {
                float *row = Wb + (c0 / SP_LD * rows + t * K + k) * SP_LD;
                for (long c = 0; c < SP_LD; c++) row[c] = c0 + c < C ? w[(k * C + c0 + c) * taps + t] : 0.0f;
            }
}

typedef struct {
    int isa, n, K, Ho, Wo, C, H, W, kh, kw, ph, pw;
    int mr, tiles, cw;   // rows per map tile, map tiles, channel columns per micro-kernel
    int group;           // column tiles per task
    long Q, E;           // output positions; active entries
    const float *R;      // (n, K, Ho, Wo), or the pooled (n, K, Hp, Wp) when argmax is set
    const int32_t *argmax;
    int Hp, Wp;
    const float *rz;     // 1 / stab(z), (K, Ho, Wo)
    int32_t *ent;        // (K, Q): 0/1 flags after A, entry index or -1 after B
    int32_t *cnt;        // Q + 1: entries per position, then offsets
    int32_t *klist;      // E: channel of each entry
    float *S;            // tiles x E x mr
    const float *Wb;     // ck_sparse_weights: tiles of SP_LD columns, kh kw K rows each
    const float *a;
    float scale;
    int accumulate;
    float *Rin;
} sp_job;

// MARK: A-C: which entries are active, and their s packed

static void flag_plane(void *p, long k) {
    sp_job *j = p;
    int32_t *f = j->ent + k * j->Q;
    memset(f, 0, (size_t)j->Q * sizeof(int32_t));
    if (j->argmax) {
        // Per window first (a vectorizable pass per map), then onto the winners.
        long P = (long)j->Hp * j->Wp;
        const int32_t *am = j->argmax + k * P;
        int32_t *fw = (int32_t *)ck_scratch(2, (size_t)P);
        if (!fw) return;
        memset(fw, 0, (size_t)P * sizeof(int32_t));
        for (long m = 0; m < j->n; m++) {
            const float *r = j->R + (m * j->K + k) * P;
            for (long w = 0; w < P; w++) fw[w] |= r[w] != 0.0f;
        }
        for (long w = 0; w < P; w++)
            if (fw[w] && am[w] >= 0) f[am[w]] = 1;
    } else {
        for (long m = 0; m < j->n; m++) {
            const float *r = j->R + (m * j->K + k) * j->Q;
            for (long q = 0; q < j->Q; q++) f[q] |= r[q] != 0.0f;
        }
    }
}

// Per output row: count the active channels of each position.
static void count_row(void *p, long qy) {
    const sp_job *j = p;
    long Wo = j->Wo, Q = j->Q, K = j->K;
    int32_t *restrict c = j->cnt + qy * Wo;
    const int32_t *restrict f = j->ent + qy * Wo;
    memset(c, 0, (size_t)Wo * sizeof(int32_t));
    for (long k = 0; k < K; k++)
        for (long x = 0; x < Wo; x++) c[x] += f[k * Q + x];
}

// Per output row: entry numbers in channel order, from the offsets in cnt. Branch-free (the flags
// are close to random); an inactive entry writes its channel to a spare slot.
static void number_row(void *p, long qy) {
    const sp_job *j = p;
    long Wo = j->Wo, Q = j->Q, K = j->K;
    int32_t *restrict next = (int32_t *)ck_scratch(2, (size_t)Wo + 1);
    if (!next) return;
    int32_t *restrict klist = j->klist, *restrict f = j->ent + qy * Wo;
    int32_t *spare = next + Wo;
    memcpy(next, j->cnt + qy * Wo, (size_t)Wo * sizeof(int32_t));
    for (long k = 0; k < K; k++, f += Q) {
        for (long x = 0; x < Wo; x++) {
            int32_t on = f[x], e = next[x];
            f[x] = on ? e : -1;
            *(on ? klist + e : spare) = (int32_t)k;
            next[x] = e + on;
        }
    }
}

enum { PACK_BLOCK = 1024 };

// Channel k: s of its active entries into S, every map (zeros for the padding maps).
static void pack_plane(void *p, long k) {
    sp_job *j = p;
    const int32_t *e = j->ent + k * j->Q;
    const float *rz = j->rz + k * j->Q;
    long P = j->argmax ? (long)j->Hp * j->Wp : j->Q;
    const int32_t *am = j->argmax ? j->argmax + k * P : NULL;
    int32_t src[PACK_BLOCK], dst[PACK_BLOCK];
    float mul[PACK_BLOCK];
    long mr = j->mr;
    for (long b0 = 0; b0 < P; b0 += PACK_BLOCK) {
        long b1 = ck_min(P, b0 + PACK_BLOCK), cnt = 0;
        for (long w = b0; w < b1; w++) {
            long q = am ? am[w] : w;
            if (q < 0 || e[q] < 0) continue;
            src[cnt] = (int32_t)w; dst[cnt] = e[q]; mul[cnt] = rz[q]; cnt++;
        }
        if (!cnt) continue;
        // Per map tile: its mr rows of this block stay in L1 while each entry's mr values are written
        // together.
        for (long t = 0; t < j->tiles; t++) {
            float *base = j->S + t * j->E * mr;
            const float *rows[14];
            long live = ck_min(mr, j->n - t * mr);
            for (long r = 0; r < live; r++) rows[r] = j->R + ((t * mr + r) * j->K + k) * P;
            for (long i = 0; i < cnt; i++) {
                float *d = base + (long)dst[i] * mr;
                for (long r = 0; r < live; r++) d[r] = rows[r][src[i]] * mul[i];
                for (long r = live; r < mr; r++) d[r] = 0.0f;
            }
        }
    }
}

// MARK: D: micro-kernels. c (mr x cw) = sum_i S[e_i] (mr values) x W row w_i (cw values); weight
// rows are SP_LD apart, `next` is the distance to the next tile's (64-column kernel only).

static inline void uk_portable(int mr, long nk, const int32_t *lw, const int32_t *le, const float *Wc, long next,
                               const float *S, float *out) {
    (void)next;
    float acc[4][16];
    memset(acc, 0, sizeof acc);
    for (long i = 0; i < nk; i++) {
        const float *w = Wc + (long)lw[i] * SP_LD, *s = S + (long)le[i] * mr;
        for (int r = 0; r < mr; r++)
            for (int c = 0; c < 16; c++) acc[r][c] += s[r] * w[c];
    }
    for (int r = 0; r < mr; r++) memcpy(out + r * 16, acc[r], sizeof acc[r]);
}

typedef void (*sp_uk)(long, const int32_t *, const int32_t *, const float *, long, const float *, float *);

#if CK_X86
__attribute__((target("avx2,fma"), always_inline)) static inline void uk_avx2_body(
    int mr, long nk, const int32_t *lw, const int32_t *le, const float *Wc, long next, const float *S, float *out) {
    __m256 acc[6][2];
    for (int r = 0; r < mr; r++) acc[r][0] = acc[r][1] = _mm256_setzero_ps();
    for (long i = 0; i < nk; i++) {
        const float *w = Wc + (long)lw[i] * SP_LD, *s = S + (long)le[i] * mr;
        __m256 b0 = _mm256_loadu_ps(w), b1 = _mm256_loadu_ps(w + 8);
        for (int r = 0; r < mr; r++) {
            __m256 v = _mm256_broadcast_ss(s + r);
            acc[r][0] = _mm256_fmadd_ps(v, b0, acc[r][0]);
            acc[r][1] = _mm256_fmadd_ps(v, b1, acc[r][1]);
        }
    }
    for (int r = 0; r < mr; r++) {
        _mm256_storeu_ps(out + r * 16, acc[r][0]);
        _mm256_storeu_ps(out + r * 16 + 8, acc[r][1]);
    }
}

// nv = 2: 32 columns; nv = 4: 64 columns (two weight tiles, `next` floats apart), for short map
// tiles, where 4 vectors per weight row keep the loads per multiply-add down.
__attribute__((target("avx512f"), always_inline)) static inline void uk_avx512_body(
    int mr, int nv, long nk, const int32_t *lw, const int32_t *le, const float *Wc, long next, const float *S,
    float *out) {
    __m512 acc[14][4], b[4];
    for (int r = 0; r < mr; r++)
        for (int q = 0; q < nv; q++) acc[r][q] = _mm512_setzero_ps();
    for (long i = 0; i < nk; i++) {
        const float *w = Wc + (long)lw[i] * SP_LD, *s = S + (long)le[i] * mr;
        for (int q = 0; q < nv; q++) b[q] = _mm512_loadu_ps(w + (q / 2) * next + (q % 2) * 16);
        for (int r = 0; r < mr; r++) {
            __m512 v = _mm512_set1_ps(s[r]);
            for (int q = 0; q < nv; q++) acc[r][q] = _mm512_fmadd_ps(v, b[q], acc[r][q]);
        }
    }
    for (int r = 0; r < mr; r++)
        for (int q = 0; q < nv; q++) _mm512_storeu_ps(out + (r * nv + q) * 16, acc[r][q]);
}

#define UK512(M)                                                                                                 \
    __attribute__((target("avx512f"))) static void uk512_##M(long nk, const int32_t *lw, const int32_t *le,     \
                                                             const float *Wc, long nx, const float *S, float *o) { \
        uk_avx512_body(M, 2, nk, lw, le, Wc, nx, S, o);                                                             \
    }
#define UK256(M)                                                                                                 \
    __attribute__((target("avx2,fma"))) static void uk256_##M(long nk, const int32_t *lw, const int32_t *le,    \
                                                               const float *Wc, long nx, const float *S, float *o) { \
        uk_avx2_body(M, nk, lw, le, Wc, nx, S, o);                                                               \
    }
#define UK512W(M)                                                                                                \
    __attribute__((target("avx512f"))) static void uk512w_##M(long nk, const int32_t *lw, const int32_t *le,    \
                                                              const float *Wc, long nx, const float *S, float *o) { \
        uk_avx512_body(M, 4, nk, lw, le, Wc, nx, S, o);                                                        \
    }
UK512W(4) UK512W(5) UK512W(6)
UK512(4) UK512(5) UK512(6) UK512(7) UK512(8) UK512(9) UK512(10) UK512(11) UK512(12) UK512(13) UK512(14)
UK256(4) UK256(5) UK256(6)
#endif
static void uk_portable4(long nk, const int32_t *lw, const int32_t *le, const float *Wc, long next, const float *S,
                         float *o) {
    uk_portable(4, nk, lw, le, Wc, next, S, o);
}

static sp_uk kernel_for(int isa, int mr, int cw) {
#if CK_X86
    static const sp_uk k512[] = {uk512_4, uk512_5, uk512_6, uk512_7, uk512_8, uk512_9,
                                 uk512_10, uk512_11, uk512_12, uk512_13, uk512_14};
    static const sp_uk k512w[] = {uk512w_4, uk512w_5, uk512w_6};
    static const sp_uk k256[] = {uk256_4, uk256_5, uk256_6};
    if (isa == CK_ISA_AVX512) return cw == 64 ? k512w[mr - 4] : k512[mr - 4];
    if (isa == CK_ISA_AVX2) return k256[mr - 4];
#else
    (void)isa; (void)mr; (void)cw;
#endif
    return uk_portable4;
}

// Rows per map tile: the fewest padding maps over the ISA's range, the taller tile on a tie.
static int rows_for(int isa, int n) {
    int lo = 4, hi = isa == CK_ISA_AVX512 ? 14 : isa == CK_ISA_AVX2 ? 6 : 4;
    int best = hi;
    long bestPad = ((long)n + hi - 1) / hi * hi;
    for (int m = hi - 1; m >= lo; m--) {
        long p = ((long)n + m - 1) / m * m;
        if (p < bestPad) { best = m; bestPad = p; }
    }
    return best;
}

// MARK: D: transposed stores of a row's tiles

static inline float out_value(const sp_job *j, float c, float *dst, const float *a, long x) {
    float v = j->scale * (a ? a[x] : 1.0f) * c;
    return j->accumulate ? dst[x] + v : v;
}

// T (W16 x mr x cw): the micro-kernel's tiles for the pixels of row y, maps t mr .., channels c0 ...
static void store_portable(const sp_job *j, const float *T, int t, long y, long c0) {
    long mr = j->mr, cw = j->cw, HW = (long)j->H * j->W;
    for (long r = 0; r < mr; r++) {
        long m = t * mr + r;
        if (m >= j->n) break;
        for (long cc = 0; cc < cw && c0 + cc < j->C; cc++) {
            long c = c0 + cc;
            float *dst = j->Rin + (m * j->C + c) * HW + y * j->W;
            const float *a = j->a ? j->a + c * HW + y * j->W : NULL;
            for (long x = 0; x < j->W; x++) dst[x] = out_value(j, T[(x * mr + r) * cw + cc], dst, a, x);
        }
    }
}

#if CK_X86
// Rows r[0..15] become columns: r[c] afterwards holds the former column c.
__attribute__((target("avx512f"), always_inline)) static inline void transpose16(__m512 r[16]) {
    __m512 t[16], u[16];
    for (int i = 0; i < 8; i++) {
        t[2 * i] = _mm512_unpacklo_ps(r[2 * i], r[2 * i + 1]);
        t[2 * i + 1] = _mm512_unpackhi_ps(r[2 * i], r[2 * i + 1]);
    }
    for (int i = 0; i < 4; i++) {
        u[4 * i] = _mm512_shuffle_ps(t[4 * i], t[4 * i + 2], 0x44);
        u[4 * i + 1] = _mm512_shuffle_ps(t[4 * i], t[4 * i + 2], 0xEE);
        u[4 * i + 2] = _mm512_shuffle_ps(t[4 * i + 1], t[4 * i + 3], 0x44);
        u[4 * i + 3] = _mm512_shuffle_ps(t[4 * i + 1], t[4 * i + 3], 0xEE);
    }
    for (int c = 0; c < 4; c++) {
        __m512 v0 = _mm512_shuffle_f32x4(u[c], u[4 + c], 0x88), v1 = _mm512_shuffle_f32x4(u[c], u[4 + c], 0xDD);
        __m512 w0 = _mm512_shuffle_f32x4(u[8 + c], u[12 + c], 0x88), w1 = _mm512_shuffle_f32x4(u[8 + c], u[12 + c], 0xDD);
        r[c] = _mm512_shuffle_f32x4(v0, w0, 0x88);
        r[c + 8] = _mm512_shuffle_f32x4(v0, w0, 0xDD);
        r[c + 4] = _mm512_shuffle_f32x4(v1, w1, 0x88);
        r[c + 12] = _mm512_shuffle_f32x4(v1, w1, 0xDD);
    }
}

// The row's tiles transposed 16 x 16 into columns of x (tmp, 16 x W16), then each (map, channel)
// row written in one run (streaming stores here measured no faster).
__attribute__((target("avx512f"))) static void store_avx512(const sp_job *j, const float *T, float *tmp, int t,
                                                             long y, long c0) {
    long mr = j->mr, cw = j->cw, HW = (long)j->H * j->W, W16 = ((long)j->W + 15) / 16 * 16;
    __m512 ks = _mm512_set1_ps(j->scale);
    for (long r = 0; r < mr; r++) {
        long m = t * mr + r;
        if (m >= j->n) break;
        for (long h = 0; h < cw; h += 16) {
            if (c0 + h >= j->C) break;
            for (long x0 = 0; x0 < j->W; x0 += 16) {
                __m512 v[16];
                for (int i = 0; i < 16; i++) v[i] = _mm512_loadu_ps(T + ((x0 + i) * mr + r) * cw + h);
                transpose16(v);
                for (int cc = 0; cc < 16; cc++) _mm512_store_ps(tmp + cc * W16 + x0, v[cc]);
            }
            for (long cc = 0; cc < 16 && c0 + h + cc < j->C; cc++) {
                long c = c0 + h + cc;
                float *dst = j->Rin + (m * j->C + c) * HW + y * j->W;
                const float *a = j->a ? j->a + c * HW + y * j->W : NULL;
                for (long x0 = 0; x0 < j->W; x0 += 16) {
                    __mmask16 mask = j->W - x0 >= 16 ? 0xFFFF : (__mmask16)((1u << (j->W - x0)) - 1);
                    __m512 k = a ? _mm512_mul_ps(ks, _mm512_maskz_loadu_ps(mask, a + x0)) : ks;
                    __m512 o = _mm512_mul_ps(k, _mm512_load_ps(tmp + cc * W16 + x0));
                    if (j->accumulate) o = _mm512_add_ps(_mm512_maskz_loadu_ps(mask, dst + x0), o);
                    _mm512_mask_storeu_ps(dst + x0, mask, o);
                }
            }
        }
    }
}
#endif

// Task (y, group of column tiles): every map tile of input row y for group x cw channels.
static void row_task(void *p, long task) {
    sp_job *j = p;
    long groups = pad_ld(j->C) / j->cw / j->group;
    long y = task / groups, ct0 = (task % groups) * j->group;
    long W16 = ((long)j->W + 15) / 16 * 16;
    long maxEntries = (long)j->W * j->kh * j->kw * j->K;
    int32_t *lists = (int32_t *)ck_scratch(2, (size_t)(2 * maxEntries + j->W + 1));
    float *T = ck_scratch(3, (size_t)W16 * (j->mr * j->cw + 16));
    if (!lists || !T) return;
    int32_t *lw = lists, *le = lists + maxEntries, *start = lists + 2 * maxEntries;
    long cnt = 0;
    for (long x = 0; x < j->W; x++) {
        start[x] = (int32_t)cnt;
        for (long dy = 0; dy < j->kh; dy++) {
            long qy = y + j->ph - dy;
            if (qy < 0 || qy >= j->Ho) continue;
            for (long dx = 0; dx < j->kw; dx++) {
                long qx = x + j->pw - dx;
                if (qx < 0 || qx >= j->Wo) continue;
                long q = qy * j->Wo + qx, row0 = (dy * j->kw + dx) * j->K;
                for (long e = j->cnt[q]; e < j->cnt[q + 1]; e++) {
                    lw[cnt] = (int32_t)(row0 + j->klist[e]);
                    le[cnt] = (int32_t)e;
                    cnt++;
                }
            }
        }
    }
    start[j->W] = (int32_t)cnt;
#if CK_X86
    float *tmp = T + W16 * j->mr * j->cw;  // store_avx512's transposed tile
#endif
    sp_uk uk = kernel_for(j->isa, j->mr, j->cw);
    long tileStride = (long)j->kh * j->kw * j->K * SP_LD;
    for (int t = 0; t < j->tiles; t++) {
        const float *S = j->S + (long)t * j->E * j->mr;
        for (long ct = ct0; ct < ct0 + j->group; ct++) {
            long c0 = ct * j->cw;
            const float *Wc = j->Wb + (c0 / SP_LD * (long)j->kh * j->kw * j->K) * SP_LD + c0 % SP_LD;
            for (long x = 0; x < j->W; x++)
                uk(start[x + 1] - start[x], lw + start[x], le + start[x], Wc, tileStride, S,
                   T + x * j->mr * j->cw);
#if CK_X86
            if (j->isa == CK_ISA_AVX512) { store_avx512(j, T, tmp, t, y, c0); continue; }
#endif
            store_portable(j, T, t, y, c0);
        }
    }
}

int ck_sparse_lrp(int n, const float *R, const int32_t *argmax, int Hp, int Wp, const float *z, float eps, int K,
                  int Ho, int Wo, const float *Wb, int C, int H, int W, int kh, int kw, int ph, int pw,
                  const float *a, float scale, int accumulate, float *Rin) {
    if (n <= 0) return CK_OK;
    // The phases build index lists the next ones follow: after a failed allocation, stop.
    unsigned long before = ck_alloc_failures();
#define SPARSE_CHECK() \
    if (ck_alloc_failures() != before) return CK_ERROR_MEMORY
    sp_job j = {0};
    j.isa = ck_isa_active();
    j.n = n; j.K = K; j.Ho = Ho; j.Wo = Wo; j.C = C; j.H = H; j.W = W; j.kh = kh; j.kw = kw; j.ph = ph; j.pw = pw;
    j.mr = rows_for(j.isa, n);
    j.tiles = (n + j.mr - 1) / j.mr;
    // AVX-512: 32 columns per micro-kernel, 64 for map tiles of at most 6 rows (when the channels
    // allow; 7 x 4 accumulators and the 4 weight vectors would not fit the 32 registers).
    j.cw = j.isa != CK_ISA_AVX512 ? 16 : j.mr <= 6 && pad_ld(C) % 64 == 0 ? 64 : 32;
    j.Q = (long)Ho * Wo;
    j.R = R; j.argmax = argmax; j.Hp = Hp; j.Wp = Wp;
    j.Wb = Wb; j.a = a; j.scale = scale; j.accumulate = accumulate; j.Rin = Rin;
    float *rz = ck_scratch(6, (size_t)K * j.Q);
    // Slot 5 (the Winograd M of this thread, idle here): flags / entry numbers, counts, channels.
    int32_t *idx = (int32_t *)ck_scratch(5, (size_t)(2 * K * j.Q + j.Q + 1));
    SPARSE_CHECK();
    ck_lrp_stab_reciprocal((long)K * j.Q, z, eps, rz);
    j.rz = rz;
    j.ent = idx;
    j.cnt = idx + K * j.Q;
    j.klist = j.cnt + j.Q + 1;
    ck_parallel_for(K, &j, flag_plane);
    SPARSE_CHECK();
    ck_parallel_for(Ho, &j, count_row);
    long total = 0;
    for (long q = 0; q < j.Q; q++) {
        int32_t c = j.cnt[q];
        j.cnt[q] = (int32_t)total;
        total += c;
    }
    j.cnt[j.Q] = (int32_t)total;
    j.E = total;
    if (total > 0) {
        ck_parallel_for(Ho, &j, number_row);
        // Slot 4 (the Winograd V of this thread, idle here): the packed s.
        j.S = ck_scratch(4, (size_t)(j.tiles * j.mr * total));
        SPARSE_CHECK();
        ck_parallel_for(K, &j, pack_plane);
        SPARSE_CHECK();
    }
    // Column tiles per task: as many as keep their weights within SP_GROUP_BYTES (the packed s of
    // a map tile is then read once per row for all of them), dividing the tiles evenly.
    long ctiles = pad_ld(C) / j.cw, slice = (long)kh * kw * K * j.cw * (long)sizeof(float);
    j.group = 1;
    for (long g = ctiles; g > 1; g--)
        if (ctiles % g == 0 && g * slice <= SP_GROUP_BYTES) { j.group = (int)g; break; }
    ck_parallel_for((long)H * (ctiles / j.group), &j, row_task);
    return ck_status_since(before);
#undef SPARSE_CHECK
}
