// Convolution forward (GEMM with im2col panels packed from the image) and its adjoint, the
// relevance backward (GEMM + col2im).
//
// The backward of LRP through a convolution is c = W^T s: the input gradient of a convolution whose
// output gradient is s. As a matrix product that is cols (C kh kw, Ho Wo) = W^T (C kh kw, K) x s (K,
// Ho Wo), then col2im sums the overlapping windows back into (C, H, W). It handles any stride and
// padding; the GEMM reads W transposed through strides, so no transposed copy of W is kept.
#include "internal.h"

#include <stdatomic.h>
#include <string.h>
#include <unistd.h>

static inline int out_size(int n, int k, int s, int p) { return (n + 2 * p - k) / s + 1; }

static inline int is_pointwise(int kh, int kw, int sh, int sw, int ph, int pw) {
    return kh == 1 && kw == 1 && sh == 1 && sw == 1 && ph == 0 && pw == 0;
}

typedef struct {
    const float *x;
    float *cols;
    int C, H, W, kh, kw, sh, sw, ph, pw, Ho, Wo;
} cols_job;

// The adjoint of im2col over a block of columns: x[c, iy, ix] += the entries of rows ck0 .. ck1 - 1
// (k = (c kh + i) kw + j) and columns j0 .. j0 + cnt - 1 of cols (row stride ldc) that read it.
static void col2im_rows(const cols_job *q, const float *cols, long ldc, long j0, long cnt, long ck0, long ck1,
                        float *x) {
    long HW = (long)q->H * q->W;
    for (long ck = ck0; ck < ck1; ck++) {
        long c = ck / (q->kh * q->kw);
        int i = (int)((ck / q->kw) % q->kh), j = (int)(ck % q->kw);
        // Output columns ox whose input column ox sw - pw + j lies in [0, W).
        long oxmin = q->pw - j <= 0 ? 0 : (q->pw - j + q->sw - 1) / q->sw;
        long oxmax = q->W - 1 + q->pw - j < 0 ? 0 : (q->W - 1 + q->pw - j) / q->sw + 1;
        float *xc = x + c * HW;
        const float *row = cols + (ck - ck0) * ldc;
        for (long o = j0; o < j0 + cnt;) {
            long oy = o / q->Wo, ox0 = o % q->Wo;
            long run = ck_min(j0 + cnt - o, q->Wo - ox0);
            long iy = oy * q->sh - q->ph + i;
            if (iy >= 0 && iy < q->H) {
                long lo = ck_max(oxmin, ox0), hi = ck_min(oxmax, ox0 + run);
                float *xr = xc + iy * q->W;
                const float *r = row + (o - j0) - ox0;  // r[ox] is column (oy, ox)
                if (q->sw == 1) {
                    float *d = xr - q->pw + j;
                    for (long ox = lo; ox < hi; ox++) d[ox] += r[ox];
                } else {
                    for (long ox = lo; ox < hi; ox++) xr[ox * q->sw - q->pw + j] += r[ox];
                }
            }
            o += run;
        }
    }
}

// Channel c of x (C, H, W) from the whole cols matrix (C kh kw, Ho Wo).
static void col2im_channel(void *p, long c) {
    cols_job *q = p;
    long N = (long)q->Ho * q->Wo, khw = (long)q->kh * q->kw;
    float *x = (float *)q->x;
    memset(x + c * (long)q->H * q->W, 0, (size_t)q->H * q->W * sizeof(float));
    col2im_rows(q, q->cols + c * khw * N, N, 0, N, c * khw, (c + 1) * khw, x);
}

// The im2col matrix packed straight into the GEMM's panels, never stored: row k = (c kh + i) kw + j
// of column o = oy Wo + ox is x[c, oy sh - ph + i, ox sw - pw + j] (0 outside). The image rows it
// reads stay in cache across the kh kw rows that share them; a stored im2col matrix is kh kw times
// the image and went through memory twice (64 channels at 224 x 224: 115 MB per forward).
static void pack_im2col(const void *p, int nr, long k0, long kc, long j0, long nc, float *dst) {
    const cols_job *q = p;
    for (long jr = 0; jr < nc; jr += nr) {
        long cols = ck_min(nr, nc - jr), jstart = j0 + jr;
        int oy0 = (int)(jstart / q->Wo), ox0 = (int)(jstart % q->Wo);
        // Row k = (c kh + i) kw + j, stepped without divisions (three per row cost as much as
        // the copy itself).
        long c = k0 / ((long)q->kw * q->kh);
        int i = (int)((k0 / q->kw) % q->kh), j = (int)(k0 % q->kw);
        for (long k = k0; k < k0 + kc; k++) {
            const float *xc = q->x + c * (long)q->H * q->W;
            float *d = dst;
            int oy = oy0, ox = ox0;
            for (long t = 0; t < cols;) {
                long run = ck_min(cols - t, q->Wo - ox);
                int iy = oy * q->sh - q->ph + i;
                if (iy < 0 || iy >= q->H) {
                    for (long r = 0; r < run; r++) d[t + r] = 0.0f;
                } else {
                    const float *xr = xc + (long)iy * q->W;
                    if (q->sw == 1) {
                        long ix0 = ox - q->pw + j;  // ix = ix0 + r; inside the image for lo <= r < hi
                        long lo = ck_min(run, ck_max(0, -ix0)), hi = ck_max(lo, ck_min(run, q->W - ix0));
                        for (long r = 0; r < lo; r++) d[t + r] = 0.0f;
                        for (long r = lo; r < hi; r++) d[t + r] = xr[ix0 + r];
                        for (long r = hi; r < run; r++) d[t + r] = 0.0f;
                    } else {
                        for (long r = 0; r < run; r++) {
                            int ix = (ox + (int)r) * q->sw - q->pw + j;
                            d[t + r] = (ix >= 0 && ix < q->W) ? xr[ix] : 0.0f;
                        }
                    }
                }
                t += run;
                ox = 0;
                oy++;
            }
            for (long t = cols; t < nr; t++) d[t] = 0.0f;
            dst += nr;
            if (++j == q->kw) {
                j = 0;
                if (++i == q->kh) { i = 0; c++; }
            }
        }
    }
}

#if CK_X86
// MARK: Implicit GEMM (AVX-512 and AVX2, stride 1)

// With stride 1 the im2col matrix needs no copy at all: with the image padded, row
// k = (c kh + i) kw + j of the column of output (oy, ox) is xp[koff[k] + oy Ws + ox] with
// koff[k] = c (rows per channel) Ws + i Ws + j (Ws the padded row's stride), and 16 outputs of a
// row are 16 consecutive floats of xp. The micro-kernel reads its four 16-column quarters in place
// (ck_ukernel_offsets_avx512; on AVX2 one quarter per call, ck_ukernel_offsets_avx2). Two layouts of the columns:
// - Wo a multiple of 16 (every VGG map at 128 x 128, 224 and 112 at 224): the columns are y's own,
//   quarters never straddle a row, and the kernel writes y directly. No wasted column. On AVX-512,
//   on rows of 64 floats or more, padded rows are 16 zeros then the image row (Ws: rounded up to
//   16): the image is copied with aligned vectors and the 64-byte reads with j = pw (a third) are
//   aligned; the right padding is the next row's leading zeros. Narrower rows take the layout
//   below (16 zeros per row of 16 would make 512 x 16 x 16 a strip of 1.2 MB, L2 is 2 MB, instead
//   of 0.6 MB), and so does AVX2: its 32-byte reads gain little from alignment, and the 16 zeros
//   make a 3 x 3 layer's three reads of a row span three cache lines (one for the single float
//   left of the row) where 18 floats at any offset mostly span two. The quarter's rows took a third
//   more of L1; with the layout below, 128 -> 128 at 64 x 64 went from 87 % of the FMA peak to 92 %
//   and 64 -> 64 at 128 x 128 from 88 % to 91 % (AVX2 on a Zen 4 EPYC, 1 thread, fastest of 50
//   calls; on AVX-512 both layouts ran the same there).
// - otherwise: columns o' = oy Ws + ox over padded rows, so panels run across row ends; the
//   Ws - Wo wrap-around columns per row are computed into the task's buffer and dropped on the
//   copy to y. A padded row here is pw zeros then the image row, Ws = W + pw (or Wo if wider):
//   the zeros serve as the right padding of the row before and the left padding of this one, so
//   a 3 x 3 layer wastes one column per row, not two (1 of 57 at 56 x 56, 1 of 15 at 14 x 14;
//   256 -> 256 at 56 x 56 went from 85-87 % of the FMA peak to 89 %).
// The padded image is never made whole: each thread copies the rows its column block reads into a
// strip of its own (every channel, R rows from the block's first) and keeps it for its next task
// on the same block. Tasks are numbered block by block and each thread starts on its own run of
// them (ck_parallel_for_ranges), so a thread copies the strips of its own blocks only; column
// blocks end on whole rows where a few rows make whole panels (fewer halo rows), and there are a
// multiple of the thread count of them. Measured against one padded copy of the whole image
// before the GEMM (bilrp-bench --kernels-only, medians of 7 rounds; 2026-11-27): the 64-channel
// layers went from 80-83 % of the FMA peak to 86-88 % (1 and 2 threads), and the 2-thread figures
// of the other shapes from 81-85 % to 85-91 %. That copy went to memory and came back, and on 2
// threads half of it came from the other core's cache. (Prefetching the image rows of the next
// strip during the GEMM halved the copy and slowed the GEMM as much; fetching them a channel
// ahead inside the copy: no change.) Packing im2col panels cost up to a quarter of the time.
typedef struct {
    const float *Ap, *x;
    const long *koff;
    float *y;
    long M, K, Ncols, Mp, Wo, N, kh, kw, C, H, W, ph, pw;
    long units, unit, tiles_n, slivers, tiles_m, nct, mct;  // blocks of units x slivers; largest sizes
    long Ws, lead;  // padded row stride; zeros before an image row (pw, or 16)
    long R, call;   // rows per strip; this call's number (a thread keeps its strip within a call)
    long plane;     // floats per channel in a strip: R Ws and a gap (see strip_plane)
    int accumulate, direct, avx512;  // avx512: 6 x 64 micro-kernel, else AVX2 6 x 16
} implicit_job;

// Where column col of the GEMM starts in the padded rows (from padded row 0).
static inline long padded_pos(const implicit_job *g, long col) {
    return g->direct ? col / g->Wo * g->Ws + col % g->Wo + g->lead - g->pw : col;
}

// Where the four quarters of the panel at column jr start, from padded row r0.
static void panel_quarters(const implicit_job *g, long jr, long r0, long seg[4]) {
    for (int q = 0; q < 4; q++) {
        long col = jr + 16 * q;
        seg[q] = col < g->Ncols || !g->direct ? padded_pos(g, col) - r0 * g->Ws : seg[0];
    }
}

// The first and the last padded row that the column block j0 .. j0 + nc - 1 reads. With 16
// leading zeros, the last row's right padding is read from the row after it: the next channel's
// first row, or the slack after the strip, both leading zeros.
static void block_rows(const implicit_job *g, long j0, long nc, long *r0, long *r1) {
    *r0 = padded_pos(g, j0) / g->Ws;
    if (g->direct) { *r1 = (j0 + nc - 1) / g->Wo + g->kh - 1; return; }
    long last = j0 + (nc + 63) / 64 * 64 - 1;  // quarters are read whole
    *r1 = (last + (g->kh - 1) * g->Ws + g->kw - 1) / g->Ws;
}

// Column block b of T: units b U / T .. (b + 1) U / T - 1 of U (a unit: one panel, or the panels
// of a few whole rows; see conv_implicit).
static void column_block(const implicit_job *g, long b, long *j0, long *nc) {
    *j0 = b * g->units / g->tiles_n * g->unit * 64;
    *nc = ck_min((b + 1) * g->units / g->tiles_n * g->unit * 64, g->Ncols) - *j0;
}

static _Thread_local long strip_call = -1, strip_r0 = -1;

// A channel's rows in a strip, rounded up to whole cache lines and then to an odd number of them.
// A panel's rows are one to three image rows of every channel: with R Ws a multiple of 1024 bytes
// (R = 8 rows of 160 floats at 128 x 128) the channels fell on 4 of L1's 64 sets, and the rows of
// one 16-column quarter (24 KB at 64 channels) did not stay in Zen 3's 8-way 32 KB L1 (128 -> 128
// at 64 x 64 on AVX2: 59 % of the FMA peak, 1 thread; with odd lines: see docs/performance.md).
static long strip_plane(long R, long Ws) {
    long lines = (R * Ws + 15) / 16;
    return (lines | 1) * 16;
}

// One padded row (Ws floats) from image row src (W floats, NULL: a padding row): lead zeros, the
// row, zeros to Ws. The AVX-512 path copies with aligned vector stores where lead is 16 (below).
static void pad_row(float *row, const float *src, long lead, long W, long Ws) {
    if (!src) { memset(row, 0, (size_t)Ws * sizeof(float)); return; }
    memset(row, 0, (size_t)lead * sizeof(float));
    memcpy(row + lead, src, (size_t)W * sizeof(float));
    memset(row + lead + W, 0, (size_t)(Ws - lead - W) * sizeof(float));
}

// The padded rows r0 .. r0 + R - 1 of every channel into strip s, with aligned AVX-512 stores where
// a row has 16 leading zeros.
__attribute__((target("avx512f"))) static void fill_strip_avx512(const implicit_job *g, long r0, float *s) {
    long Ws = g->Ws, W = g->W, lead = g->lead, plane = g->plane;
    __m512 zero = _mm512_setzero_ps();
    __mmask16 tail = (__mmask16)((1u << (W % 16)) - 1);
    for (long c = 0; c < g->C; c++)
        for (long r = r0; r < r0 + g->R; r++) {
            float *row = s + c * plane + (r - r0) * Ws;
            long y = r - g->ph;
            if (y < 0 || y >= g->H) { memset(row, 0, (size_t)Ws * sizeof(float)); continue; }
            const float *src = g->x + (c * g->H + y) * W;
            if (lead != 16) { pad_row(row, src, lead, W, Ws); continue; }
            _mm512_store_ps(row, zero);
            long i = 0;
            for (; i + 16 <= W; i += 16) _mm512_store_ps(row + 16 + i, _mm512_loadu_ps(src + i));
            if (i < W) {
                _mm512_store_ps(row + 16 + i, _mm512_maskz_loadu_ps(tail, src + i));
                i += 16;
            }
            for (i += 16; i < Ws; i += 16) _mm512_store_ps(row + i, zero);
        }
}

// This thread's strip of padded rows r0 .. r0 + R - 1 of every channel (each channel's gap
// zero: the right padding of its last row), and its slack.
static const float *strip_for(const implicit_job *g, long r0) {
    long Ws = g->Ws, plane = g->plane;
    float *s = ck_scratch(2, (size_t)(g->C * plane + Ws + 64));
    if (!s) { strip_call = -1; return NULL; }
    if (strip_call == g->call && strip_r0 == r0) return s;
    if (g->avx512) {
        fill_strip_avx512(g, r0, s);
    } else {
        for (long c = 0; c < g->C; c++)
            for (long r = r0; r < r0 + g->R; r++) {
                long y = r - g->ph;
                pad_row(s + c * plane + (r - r0) * Ws, y < 0 || y >= g->H ? NULL : g->x + (c * g->H + y) * g->W,
                        g->lead, g->W, Ws);
            }
    }
    for (long c = 0; c < g->C; c++)
        memset(s + c * plane + g->R * Ws, 0, (size_t)(plane - g->R * Ws) * sizeof(float));
    memset(s + g->C * plane, 0, (size_t)(Ws + 64) * sizeof(float));
    strip_call = g->call;
    strip_r0 = r0;
    return s;
}

// Rows *pk .. *pk + per - 1 (at most nkc) of the next panel (K step nk0, its quarters starting at
// nseg[q]), fetched while one sliver of this panel runs: spread over the slivers, the next panel's
// rows are in cache when its first sliver starts.
static inline void prefetch_rows(const implicit_job *g, const float *xs, long nk0, long nkc, long per, long *pk,
                                 const long *nseg) {
    for (long e = ck_min(nkc, *pk + per); *pk < e; (*pk)++) {
        const float *row = xs + g->koff[nk0 + *pk];
        for (int q = 0; q < 4; q++) {
            _mm_prefetch((const char *)(row + nseg[q]), _MM_HINT_T0);
            _mm_prefetch((const char *)(row + nseg[q] + 15), _MM_HINT_T0);
        }
    }
}

// The GEMM of one task on AVX-512: per K step and 64-column panel, every 6-row sliver.
static void panels_avx512(const implicit_job *g, const float *xs, long r0, long i0, long i1, long j0, long nc,
                          float *out, long ldo) {
    long ks = ck_gemm_kc_step(g->K);
    for (long k0 = 0; k0 < g->K; k0 += ks) {
        long kc = ck_min(ks, g->K - k0);
        const float *ab = g->Ap + k0 * g->Mp;
        for (long jr = j0; jr < j0 + nc; jr += 64) {
            int nr = (int)ck_min(64, j0 + nc - jr);
            long seg[4];
            panel_quarters(g, jr, r0, seg);
            // The panel that follows (the next one, or the first of the next K step): its rows,
            // scattered over the strip, are fetched while this one's slivers run. Without it the
            // first sliver over each panel waited on them, which cost the 64-channel layers
            // (11 slivers per panel) the most.
            long nk0 = k0, njr = jr + 64;
            if (njr >= j0 + nc) { nk0 = k0 + ks; njr = j0; }
            long nkc = nk0 < g->K ? ck_min(ks, g->K - nk0) : 0, nseg[4];
            if (nkc) panel_quarters(g, njr, r0, nseg);
            long slivers = (i1 - i0 + 5) / 6, per = (nkc + slivers - 1) / slivers, pk = 0;
            for (long ir = i0; ir < i1; ir += 6) {
                prefetch_rows(g, xs, nk0, nkc, per, &pk, nseg);
                ck_ukernel_offsets_avx512(kc, ab + ir * kc, xs, g->koff + k0, seg, out + (ir - i0) * ldo + (jr - j0),
                                          ldo, g->accumulate || k0 > 0, (int)ck_min(6, i1 - ir), nr);
            }
        }
    }
}

// The same on AVX2, whose micro-kernel is 6 x 16: per K step, panel and 16-column quarter, every
// sliver, so the quarter's rows (kc x 16 floats) stay in L1 while the slivers of A stream from L2
// (the order of the packed GEMM; the whole 64-column panel is 48 KB at kc = 192, above Zen 3's
// 32 KB L1). The next quarter is the same rows 16 columns on, one new line per row, which the
// hardware prefetchers bring: fetching its rows in software as the AVX-512 path does made every
// shape 2-3 % slower (Zen 4 EPYC, 1 and 2 threads).
static void panels_avx2(const implicit_job *g, const float *xs, long r0, long i0, long i1, long j0, long nc,
                        float *out, long ldo) {
    long ks = ck_gemm_kc_step(g->K);
    for (long k0 = 0; k0 < g->K; k0 += ks) {
        long kc = ck_min(ks, g->K - k0);
        const float *ab = g->Ap + k0 * g->Mp;
        for (long jr = j0; jr < j0 + nc; jr += 64) {
            int nr = (int)ck_min(64, j0 + nc - jr);
            long seg[4];
            panel_quarters(g, jr, r0, seg);
            for (int q = 0; 16 * q < nr; q++) {
                for (long ir = i0; ir < i1; ir += 6) {
                    ck_ukernel_offsets_avx2(kc, ab + ir * kc, xs + seg[q], g->koff + k0,
                                            out + (ir - i0) * ldo + (jr - j0) + 16 * q, ldo,
                                            g->accumulate || k0 > 0, (int)ck_min(6, i1 - ir), (int)ck_min(16, nr - 16 * q));
                }
            }
        }
    }
}

static void implicit_task(void *p, long t) {
    implicit_job *g = p;
    long b = t / g->tiles_m, m = t % g->tiles_m, j0, nc, r0, r1;
    column_block(g, b, &j0, &nc);
    long i0 = m * g->slivers / g->tiles_m * 6, i1 = ck_min((m + 1) * g->slivers / g->tiles_m * 6, g->M);
    block_rows(g, j0, nc, &r0, &r1);
    const float *xs = strip_for(g, r0);
    if (!xs) return;
    float *out = g->y + i0 * g->N + j0;
    long ldo = g->N;
    if (!g->direct) {
        out = ck_scratch(1, (size_t)g->mct * g->nct);
        if (!out) return;
        ldo = g->nct;
        // With accumulate (the bias), start from y as the packed path does, so that both sum in
        // the same order and give the same bits: R is sensitive to rounding in z where z is small.
        if (g->accumulate)
            for (long i = i0; i < i1; i++) {
                float *b = out + (i - i0) * ldo;
                const float *yi = g->y + i * g->N;
                for (long o = j0; o < j0 + nc; o++) {
                    long oy = o / g->Ws, ox = o % g->Ws;
                    b[o - j0] = ox < g->Wo ? yi[oy * g->Wo + ox] : 0.0f;
                }
            }
    }
    if (g->avx512) panels_avx512(g, xs, r0, i0, i1, j0, nc, out, ldo);
    else panels_avx2(g, xs, r0, i0, i1, j0, nc, out, ldo);
    if (g->direct) return;
    // Valid columns to y, row run by row run.
    for (long i = i0; i < i1; i++) {
        const float *b = out + (i - i0) * ldo;
        float *yi = g->y + i * g->N;
        for (long o = j0; o < j0 + nc;) {
            long oy = o / g->Ws, ox = o % g->Ws;
            long run = ck_min(j0 + nc - o, g->Ws - ox);
            long valid = ck_max(0, ck_min(run, g->Wo - ox));
            float *dst = yi + oy * g->Wo + ox;
            const float *src = b + (o - j0);
            for (long r = 0; r < valid; r++) dst[r] = src[r];
            o += run;
        }
    }
}

// Floats of an output block (K x nc) that stays in L2 across the K steps: half the core's L2
// (262144 on the 2 MiB L2 of the Xeon this was tuned on; 65536 on Zen 3's 512 KiB, where blocks
// of 1 MiB went back to L3 on every K step).
static long l2_block_floats(void) {
    static _Atomic long cached = 0;
    long v = atomic_load(&cached);
    if (v) return v;
    long l2 = sysconf(_SC_LEVEL2_CACHE_SIZE);
    v = (l2 > 0 ? l2 : 2L << 20) / 2 / (long)sizeof(float);
    atomic_store(&cached, v);
    return v;
}

static void conv_implicit(const float *x, int C, int H, int W, const float *Ap, int K, int kh, int kw, int ph, int pw,
                          int Ho, int Wo, int accumulate, float *y) {
    long CKK = (long)C * kh * kw;
    int avx512 = ck_isa_active() == CK_ISA_AVX512;
    int direct = Wo % 16 == 0, lead16 = avx512 && direct && W >= 64 && pw <= 16;
    long Ws = lead16 ? (16 + W + 15) / 16 * 16 : ck_max(W + pw, Wo);
    long Ncols = direct ? (long)Ho * Wo : (long)Ho * Ws, Mp = (K + 5) / 6 * 6;
    int nt = ck_get_num_threads();
    // Column blocks as wide as an L2-sized buffer allows (M x nc <= 1 MiB, nc <= 768), in units of
    // whole rows where a few rows make whole panels (2 rows of 224 are 7 panels); a multiple of the
    // thread count of them; then row blocks until there are about 8 tasks per thread. Blocks are
    // split evenly (sizes differ by at most one unit or sliver: 256 panels as 21 x 12 + 4 left one
    // of 2 threads 3 % more work). Splitting rows costs a thread at most one more strip.
    long panels = (Ncols + 63) / 64, slivers = Mp / 6;
    long ppt = ck_max(1, ck_min(12, l2_block_floats() / (ck_max(K, 1) * 64L))), unit = 1;
    if (direct) {
        long r = 1;
        while (r * Wo % 64) r++;
        unit = r * Wo / 64;
        if (unit > 2 * ppt) unit = 1;
    }
    long upt = ck_max(1, (ppt + unit / 2) / unit), units = (panels + unit - 1) / unit;
    long tiles_n = (units + upt - 1) / upt, tiles_m = 1;
    if (tiles_n < 8L * nt) tiles_n = ck_min(units, (tiles_n + nt - 1) / nt * nt);
    if (tiles_n < 8L * nt) tiles_m = ck_min(slivers, (8L * nt + tiles_n - 1) / tiles_n);
    static _Atomic long calls = 0;
    implicit_job g = {.Ap = Ap, .x = x, .y = y, .M = K, .K = CKK, .Ncols = Ncols, .Mp = Mp, .Wo = Wo,
                      .N = (long)Ho * Wo, .kh = kh, .kw = kw, .C = C, .H = H, .W = W, .ph = ph, .pw = pw,
                      .units = units, .unit = unit, .tiles_n = tiles_n, .slivers = slivers, .tiles_m = tiles_m,
                      .nct = (units + tiles_n - 1) / tiles_n * unit * 64, .mct = (slivers + tiles_m - 1) / tiles_m * 6,
                      .Ws = Ws, .lead = lead16 ? 16 : pw, .call = atomic_fetch_add(&calls, 1),
                      .accumulate = accumulate, .direct = direct, .avx512 = avx512};
    for (long b = 0; b < tiles_n; b++) {
        long j0, nc, r0, r1;
        column_block(&g, b, &j0, &nc);
        block_rows(&g, j0, nc, &r0, &r1);
        g.R = ck_max(g.R, r1 - r0 + 1);
    }
    g.plane = strip_plane(g.R, g.Ws);
    long *koff = ck_malloc((size_t)CKK * sizeof(long));
    if (!koff) return;
    for (long k = 0; k < CKK; k++) {
        long c = k / (kh * kw), i = (k / kw) % kh, j = k % kw;
        koff[k] = c * g.plane + i * g.Ws + j;
    }
    g.koff = koff;
    ck_parallel_for_ranges(tiles_m * tiles_n, &g, implicit_task);
    free(koff);
}

#endif

// Every ISA's micro-kernel has 6-row slivers (gemm.c), so the portable packing serves all of them.
long ck_conv_weights_size(int K, int C, int kh, int kw) {
    return ck_gemm_packed_a_size(CK_ISA_PORTABLE, K, C * kh * kw);
}

void ck_conv_weights(const float *w, int K, int C, int kh, int kw, float *packed) {
    long CKK = (long)C * kh * kw;
    ck_gemm_pack_a_parallel(CK_ISA_PORTABLE, K, (int)CKK, w, CKK, 1, packed);
}

static void forward(const float *x, int C, int H, int W, const float *Ap, const float *bias, int K, int kh, int kw,
                    int sh, int sw, int ph, int pw, float *y) {
    int Ho = out_size(H, kh, sh, ph), Wo = out_size(W, kw, sw, pw);
    long N = (long)Ho * Wo, CKK = (long)C * kh * kw;
    if (bias)
        for (int k = 0; k < K; k++)
            for (long i = 0; i < N; i++) y[k * N + i] = bias[k];
    if (is_pointwise(kh, kw, sh, sw, ph, pw)) {
        ck_sgemm_prepacked_a(K, (int)N, (int)CKK, Ap, x, N, 1, NULL, NULL, y, N, bias != NULL);
        return;
    }
#if CK_X86
    if (sh == 1 && sw == 1 && CKK > 0 && K > 0 && N > 0 && ck_isa_active() != CK_ISA_PORTABLE &&
        ck_conv_implicit_enabled()) {
        conv_implicit(x, C, H, W, Ap, K, kh, kw, ph, pw, Ho, Wo, bias != NULL, y);
        return;
    }
#endif
    cols_job q = {x, NULL, C, H, W, kh, kw, sh, sw, ph, pw, Ho, Wo};
    ck_sgemm_prepacked_a(K, (int)N, (int)CKK, Ap, NULL, 0, 0, pack_im2col, &q, y, N, bias != NULL);
}

int ck_conv2d_forward_packed(const float *x, int C, int H, int W, const float *packed, const float *bias, int K,
                             int kh, int kw, int sh, int sw, int ph, int pw, float *y) {
    unsigned long before = ck_alloc_failures();
    forward(x, C, H, W, packed, bias, K, kh, kw, sh, sw, ph, pw, y);
    return ck_status_since(before);
}

int ck_conv2d_forward(const float *x, int C, int H, int W, const float *w, const float *bias, int K,
                      int kh, int kw, int sh, int sw, int ph, int pw, float *y) {
    unsigned long before = ck_alloc_failures();
    long CKK = (long)C * kh * kw;
    const float *Ap = K > 0 && CKK > 0 ? ck_gemm_pack_a_shared(ck_isa_active(), K, (int)CKK, w, CKK, 1) : NULL;
    if (Ap || K <= 0 || CKK <= 0) forward(x, C, H, W, Ap, bias, K, kh, kw, sh, sw, ph, pw, y);
    return ck_status_since(before);
}

static _Thread_local int implicit_off = 0;

int ck_conv_set_implicit(int enabled) {
    int old = !implicit_off;
    implicit_off = !enabled;
    return old;
}

int ck_conv_implicit_enabled(void) { return !implicit_off; }

typedef struct {
    int isa;
    const float *s, *w;
    float *c;
    int K, C, H, W, kh, kw, sh, sw, ph, pw, Ho, Wo;
} back_job;

// One map, serial: used when there are enough maps to give every thread its own.
static void backward_map(void *p, long m) {
    back_job *b = p;
    long N = (long)b->Ho * b->Wo, CKK = (long)b->C * b->kh * b->kw, HW = (long)b->H * b->W;
    const float *sm = b->s + m * b->K * N;
    float *cm = b->c + m * b->C * HW;
    if (is_pointwise(b->kh, b->kw, b->sh, b->sw, b->ph, b->pw)) {
        ck_sgemm_serial(b->isa, (int)CKK, (int)N, b->K, b->w, 1, CKK, sm, N, 1, cm, N, 0);
        return;
    }
    float *cols = ck_scratch(2, (size_t)CKK * N);
    if (!cols) return;
    ck_sgemm_serial(b->isa, (int)CKK, (int)N, b->K, b->w, 1, CKK, sm, N, 1, cols, N, 0);
    cols_job q = {cm, cols, b->C, b->H, b->W, b->kh, b->kw, b->sh, b->sw, b->ph, b->pw, b->Ho, b->Wo};
    for (long ch = 0; ch < b->C; ch++) col2im_channel(&q, ch);
}

int ck_conv2d_backward(int n, const float *s, int K, int Ho, int Wo, const float *w, int C, int H,
                       int W, int kh, int kw, int sh, int sw, int ph, int pw, float *c) {
    if (n <= 0) return CK_OK;
    unsigned long before = ck_alloc_failures();
    long N = (long)Ho * Wo, CKK = (long)C * kh * kw, HW = (long)H * W;
    // A linear layer (everything 1 x 1): all maps in one product, c (n, C) = s (n, K) W (K, C).
    if (N == 1 && HW == 1 && kh == 1 && kw == 1) return ck_sgemm(n, C, K, s, K, 1, w, C, 1, c, C, 0);
    back_job b = {ck_isa_active(), s, w, c, K, C, H, W, kh, kw, sh, sw, ph, pw, Ho, Wo};
    if (n >= ck_get_num_threads() && n > 1) {
        ck_parallel_for(n, &b, backward_map);
        return ck_status_since(before);
    }
    // Few maps: parallelize inside each product instead.
    int pointwise = is_pointwise(kh, kw, sh, sw, ph, pw);
    float *cols = pointwise ? NULL : ck_malloc((size_t)CKK * N * sizeof(float));
    if (!pointwise && !cols) return CK_ERROR_MEMORY;
    for (int m = 0; m < n; m++) {
        const float *sm = s + (long)m * K * N;
        float *cm = c + (long)m * C * HW;
        if (pointwise) { ck_sgemm((int)CKK, (int)N, K, w, 1, CKK, sm, N, 1, cm, N, 0); continue; }
        ck_sgemm((int)CKK, (int)N, K, w, 1, CKK, sm, N, 1, cols, N, 0);
        cols_job q = {cm, cols, C, H, W, kh, kw, sh, sw, ph, pw, Ho, Wo};
        ck_parallel_for(C, &q, col2im_channel);
    }
    free(cols);
    return ck_status_since(before);
}

// MARK: Fused direct LRP pass

// One LRP pass through a convolution by the direct path, for layers without Winograd (the input
// layer's z^B rule with its three terms, strided and non-3x3 convolutions). Per map: s = R / stab(z)
// is packed straight into the GEMM's panels (no s block is stored), the T terms' products
// W_t^T s run from the same panels, col2im adds each column block into the map's c_t, and
// Rin = [Rin +] scale * sum_t a_t c_t. The separate steps read and wrote the whole block of maps
// once per step and packed s once per term.
typedef struct {
    int isa, T, mr, nr;
    const float *R, *rz;
    const float **Ap;      // T packed weights, each (C kh kw) x K as ck_gemm_pack_a packs W^T
    const float *const *a; // T inputs (C, H, W), NULL entries for 1
    float scale;
    int accumulate;
    float *Rin;
    cols_job geo;  // the convolution's geometry (its pointers unused)
    int K;
    long nc;  // output columns per block
} direct_job;

// Rin[c, j0 + j] = [Rin +] scale * sum_t a_t[c, j0 + j] c_t[c, j] for a block of columns (c_t with row
// stride ldc, T of them C rows apart; the map's rows N apart). Term 0's rows end up holding the sum.
static void finish_columns(const direct_job *q, float *cols, long ldc, long j0, long cnt, long C, long N,
                           float *out) {
    for (long c = 0; c < C; c++) {
        float *v = cols + c * ldc, *o = out + c * N + j0;  // v: the sum over terms, in term 0's row
        const float *a0 = q->a[0] ? q->a[0] + c * N + j0 : NULL;
        if (a0) for (long j = 0; j < cnt; j++) v[j] = a0[j] * v[j];
        for (int t = 1; t < q->T; t++) {
            const float *ct = cols + (t * C + c) * ldc, *at = q->a[t] ? q->a[t] + c * N + j0 : NULL;
            if (at) for (long j = 0; j < cnt; j++) v[j] += at[j] * ct[j];
            else for (long j = 0; j < cnt; j++) v[j] += ct[j];
        }
        if (q->accumulate) for (long j = 0; j < cnt; j++) o[j] += q->scale * v[j];
        else for (long j = 0; j < cnt; j++) o[j] = q->scale * v[j];
    }
}

static void direct_map(void *p, long m) {
    direct_job *q = p;
    const cols_job *g = &q->geo;
    long N = (long)g->Ho * g->Wo, CKK = (long)g->C * g->kh * g->kw, CHW = (long)g->C * g->H * g->W;
    long ncp = (q->nc + q->nr - 1) / q->nr * q->nr;
    // A pointwise layer's columns are the map itself: the product goes straight into acc.
    int pointwise = is_pointwise(g->kh, g->kw, g->sh, g->sw, g->ph, g->pw);
    float *Bp = ck_scratch(0, (size_t)q->K * ncp);
    float *cols = ck_scratch(1, (size_t)q->T * CKK * q->nc);
    float *acc = pointwise ? NULL : ck_scratch(2, (size_t)q->T * CHW);
    if (!Bp || !cols || (!pointwise && !acc)) return;
    if (acc) memset(acc, 0, (size_t)(q->T * CHW) * sizeof(float));
    float *out = q->Rin + m * CHW;
    const float *Rm = q->R + m * q->K * N;
    int slivers = (int)((CKK + q->mr - 1) / q->mr);
    for (long j0 = 0; j0 < N; j0 += q->nc) {
        long cnt = ck_min(q->nc, N - j0);
        // Row by row: each row of R and rz is read in order (sliver by sliver, K rows apart, the
        // loads missed the cache: 37 % of this function's time).
        for (long k = 0; k < q->K; k++) {
            const float *r = Rm + k * N + j0, *rz = q->rz + k * N + j0;
            for (long jp = 0; jp < cnt; jp += q->nr) {
                long w = ck_min(q->nr, cnt - jp);
                float *d = Bp + (jp / q->nr) * q->K * q->nr + k * q->nr;
                for (long t = 0; t < w; t++) d[t] = r[jp + t] * rz[jp + t];
                for (long t = w; t < q->nr; t++) d[t] = 0.0f;
            }
        }
        for (int t = 0; t < q->T; t++) {
            float *ct = cols + t * CKK * q->nc;
            ck_gemm_prepacked(q->isa, 0, slivers, (int)CKK, (int)cnt, q->K, q->Ap[t], Bp, ct, q->nc, 0);
            if (!pointwise) col2im_rows(g, ct, q->nc, j0, cnt, 0, CKK, acc + t * CHW);
        }
        // A pointwise layer's columns are the map's own pixels j0 .. j0 + cnt - 1: its products
        // finish while the block is in cache (no full-map accumulator goes through memory).
        if (pointwise) finish_columns(q, cols, q->nc, j0, cnt, CKK, N, out);
    }
    if (!pointwise) finish_columns(q, acc, CHW, 0, CHW, 1, CHW, out);  // the whole map as one row
}

// MARK: Rank-one weights (the flat rule)

// A layer whose weights are all 1 (the flat rule's rho) has W^T s = 1 (sum_k s_k): every row of the
// column matrix is the same, S[o] = sum_k R[k, o] / stab(z[k, o]). So one channel's col2im of S is
// every channel's c, and a pass costs K + kh kw multiply-adds per output pixel instead of C kh kw K
// (ResNet-50's 7 x 7 stem: 147 x 64 -> 64 + 49).
typedef struct {
    const float *R, *rz, *a;  // a: the term's input, NULL for 1
    float scale;
    int accumulate, K;
    float *Rin;
    cols_job geo;  // the convolution's geometry (its pointers unused)
} flat_job;

static void flat_map(void *p, long m) {
    const flat_job *q = p;
    const cols_job *g = &q->geo;
    long N = (long)g->Ho * g->Wo, HW = (long)g->H * g->W;
    float *S = ck_scratch(3, (size_t)N), *r0 = ck_scratch(4, (size_t)HW);
    if (!S || !r0) return;
    memset(S, 0, (size_t)N * sizeof(float));
    memset(r0, 0, (size_t)HW * sizeof(float));
    const float *Rm = q->R + m * q->K * N;
    for (long k = 0; k < q->K; k++) {
        const float *r = Rm + k * N, *rz = q->rz + k * N;
        for (long o = 0; o < N; o++) S[o] += r[o] * rz[o];
    }
    // Channel 0's taps, every one reading the row S (row stride 0).
    cols_job one = *g;
    one.C = 1;
    col2im_rows(&one, S, 0, 0, N, 0, (long)g->kh * g->kw, r0);
    float *out = q->Rin + m * g->C * HW;
    for (long c = 0; c < g->C; c++) {
        float *o = out + c * HW;
        const float *a = q->a ? q->a + c * HW : NULL;
        if (q->accumulate) {
            if (a) for (long i = 0; i < HW; i++) o[i] += q->scale * (a[i] * r0[i]);
            else for (long i = 0; i < HW; i++) o[i] += q->scale * r0[i];
        } else {
            if (a) for (long i = 0; i < HW; i++) o[i] = q->scale * (a[i] * r0[i]);
            else for (long i = 0; i < HW; i++) o[i] = q->scale * r0[i];
        }
    }
}

static int all_ones(const float *w, long count) {
    for (long i = 0; i < count; i++) if (w[i] != 1.0f) return 0;
    return 1;
}

int ck_lrp_direct(int n, const float *R, const float *z, float eps, int K, int Ho, int Wo, int T,
                  const float *const *w, const float *const *a, float scale, int C, int H, int W, int kh, int kw,
                  int sh, int sw, int ph, int pw, int accumulate, float *Rin) {
    if (n <= 0 || T <= 0) return CK_OK;
    unsigned long before = ck_alloc_failures();
    long N = (long)Ho * Wo, CKK = (long)C * kh * kw, CHW = (long)C * H * W;
    int nt = ck_get_num_threads();
    // Few maps (fewer than two per thread) or a linear layer (one column per map): the separate
    // steps, which parallelize inside a map or run all maps as one product.
    if (n < 2 * nt || N == 1 || K == 0 || CKK == 0) {
        float *s = ck_malloc((size_t)n * K * N * sizeof(float));
        float *c = s ? ck_malloc((size_t)n * CHW * sizeof(float)) : NULL;
        if (c) {
            ck_lrp_divide(n, K * N, R, z, eps, s);
            for (int t = 0; t < T; t++) {
                if (ck_conv2d_backward(n, s, K, Ho, Wo, w[t], C, H, W, kh, kw, sh, sw, ph, pw, c) != CK_OK) break;
                ck_lrp_product(n, CHW, a[t], c, scale, Rin, accumulate || t > 0);
            }
        }
        free(s);
        free(c);
        return ck_status_since(before);
    }
    int isa = ck_isa_active();
    float *rz = ck_scratch(6, (size_t)K * N);
    if (!rz) return CK_ERROR_MEMORY;
    ck_lrp_stab_reciprocal(K * N, z, eps, rz);
    if (T == 1 && all_ones(w[0], (long)K * CKK)) {
        flat_job f = {R, rz, a[0], scale, accumulate, K, Rin, {NULL, NULL, C, H, W, kh, kw, sh, sw, ph, pw, Ho, Wo}};
        ck_parallel_for(n, &f, flat_map);
        return ck_status_since(before);
    }
    long per = ck_gemm_packed_a_size(isa, (int)CKK, K);
    float *packed = ck_malloc((size_t)T * per * sizeof(float));
    const float **ap = packed ? ck_malloc((size_t)T * sizeof(float *)) : NULL;
    if (!ap) {
        free(packed);
        return CK_ERROR_MEMORY;
    }
    for (int t = 0; t < T; t++) {
        // A(i, k) = W_t[k, i]: the transpose, read through strides.
        ck_gemm_pack_a(isa, (int)CKK, K, w[t], 1, CKK, packed + t * per);
        ap[t] = packed + t * per;
    }
    int nr = ck_gemm_nr(isa);
    // Column blocks whose T column buffers stay in L2 next to their panel (about 1 MiB).
    long nc = ck_max(nr, ck_min(N, (262144 / ck_max(1, (long)T * CKK + K)) / nr * nr));
    direct_job q = {isa, T, ck_gemm_mr(isa), nr, R, rz, ap, a, scale, accumulate, Rin,
                    {NULL, NULL, C, H, W, kh, kw, sh, sw, ph, pw, Ho, Wo}, K, nc};
    ck_parallel_for(n, &q, direct_map);
    free(ap);
    free(packed);
    return ck_status_since(before);
}
