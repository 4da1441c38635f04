// The patch side of a mixed-mode explanation: the patch-pooled, channel-summed first-order maps
// A (P x h) are Q B_1 ... B_L R_L, with B_l the (linear, input-dependent) LRP backward of layer l
// and Q the patch pooling. Bracketed from the top, that is h backward passes over whole maps;
// from the bottom, Q B_1 ... B_k is P vectors propagated through the transposed steps, each
// non-zero only near its patch (a 3 x 3 convolution grows the support by one pixel a side, a
// max-pool halves it). These kernels move those P vectors, each in its own cell of a mosaic image
// (see ck_cells in ckernels.h), so the convolution itself is the ordinary forward kernel run on
// the mosaic; and they contract the P vectors with the h maps at the layer where the two meet.
#include "internal.h"

#include <string.h>

#if defined(__x86_64__)
#include <immintrin.h>
#endif

static inline long cell_base(const ck_cells *l, int p, long mosaic_w) {
    return (long)(p / l->gc) * l->ch * mosaic_w + (long)(p % l->gc) * l->cw;
}

// Rows [i0, i1) and columns [c0, c1) of cell p that lie inside an H x W map.
static inline void in_map(const ck_cells *l, int p, int H, int W, int *i0, int *i1, int *c0, int *c1) {
    *i0 = (int)ck_max(0, -l->oy[p]); *i1 = (int)ck_min(l->ch, H - l->oy[p]);
    *c0 = (int)ck_max(0, -l->ox[p]); *c1 = (int)ck_min(l->cw, W - l->ox[p]);
}

long ck_cells_mosaic_height(const ck_cells *l) { return (long)((l->P + l->gc - 1) / l->gc) * l->ch; }
long ck_cells_mosaic_width(const ck_cells *l) { return (long)l->gc * l->cw; }

typedef struct {
    int C, H, W, Ho, Wo;
    const ck_cells *s, *d;
    const float *src, *factor, *z;
    const int32_t *argmax;
    float *dst;
    float eps, scale;
    int accumulate;
} cells_job;

// Channel c's planes of the source and destination mosaics (and their widths); the destination
// zeroed, since cells only write where they reach.
static void channel_planes(const cells_job *j, long c, const float **src, long *sw, float **dst, long *dw) {
    *sw = ck_cells_mosaic_width(j->s);
    *dw = ck_cells_mosaic_width(j->d);
    long dh = ck_cells_mosaic_height(j->d);
    *src = j->src + c * ck_cells_mosaic_height(j->s) * *sw;
    *dst = j->dst + c * dh * *dw;
    memset(*dst, 0, (size_t)(dh * *dw) * sizeof(float));
}

// Task c: every cell of channel c, dst from src at the same map position, times factor.
static void load_channel(void *ctx, long c) {
    const cells_job *j = ctx;
    const ck_cells *s = j->s, *d = j->d;
    long sw, dw;
    const float *src;
    float *dst;
    channel_planes(j, c, &src, &sw, &dst, &dw);
    const float *f = j->factor ? j->factor + c * (long)j->H * j->W : NULL;
    for (int p = 0; p < d->P; p++) {
        float *dc = dst + cell_base(d, p, dw);
        const float *sc = src + cell_base(s, p, sw);
        // Rows and columns of the destination cell inside both the map and the source cell.
        int dy = s->oy[p] - d->oy[p], dx = s->ox[p] - d->ox[p];
        int i0, i1, c0, c1;
        in_map(d, p, j->H, j->W, &i0, &i1, &c0, &c1);
        i0 = (int)ck_max(i0, dy); i1 = (int)ck_min(i1, dy + s->ch);
        c0 = (int)ck_max(c0, dx); c1 = (int)ck_min(c1, dx + s->cw);
        for (int i = i0; i < i1; i++) {
            const float *sr = sc + (long)(i - dy) * sw - dx;
            float *dr = dc + (long)i * dw;
            if (f) {
                const float *fr = f + (long)(d->oy[p] + i) * j->W + d->ox[p];
                for (int x = c0; x < c1; x++) dr[x] = sr[x] * fr[x];
            } else {
                for (int x = c0; x < c1; x++) dr[x] = sr[x];
            }
        }
    }
}

void ck_cells_load(int C, int H, int W, const ck_cells *src_layout, const float *src, const ck_cells *dst_layout,
                   const float *factor, float *dst) {
    cells_job j = {C, H, W, 0, 0, src_layout, dst_layout, src, factor, NULL, NULL, dst, 0, 0, 0};
    ck_parallel_for(C, &j, load_channel);
}

// Task c: v = [v +] scale * o / stab(z) inside the map, 0 outside.
static void scale_channel(void *ctx, long c) {
    const cells_job *j = ctx;
    const ck_cells *l = j->s;
    long mh = ck_cells_mosaic_height(l), mw = ck_cells_mosaic_width(l);
    const float *o = j->src + c * mh * mw;
    float *v = j->dst + c * mh * mw;
    const float *z = j->z + c * (long)j->H * j->W;
    if (!j->accumulate) memset(v, 0, (size_t)(mh * mw) * sizeof(float));
    for (int p = 0; p < l->P; p++) {
        long b = cell_base(l, p, mw);
        int i0, i1, c0, c1;
        in_map(l, p, j->H, j->W, &i0, &i1, &c0, &c1);
        for (int i = i0; i < i1; i++) {
            const float *orow = o + b + (long)i * mw;
            float *vrow = v + b + (long)i * mw;
            const float *zr = z + (long)(l->oy[p] + i) * j->W + l->ox[p];
            for (int x = c0; x < c1; x++) {
                float zz = zr[x];
                float r = orow[x] / (zz + (zz >= 0.0f ? j->eps : -j->eps)) * j->scale;
                vrow[x] = j->accumulate ? vrow[x] + r : r;
            }
        }
    }
}

void ck_cells_scale(int C, int H, int W, const ck_cells *layout, const float *o, const float *z, float eps,
                    float scale, int accumulate, float *v) {
    cells_job j = {C, H, W, 0, 0, layout, NULL, o, NULL, z, NULL, v, eps, scale, accumulate};
    ck_parallel_for(C, &j, scale_channel);
}

// Task c: post[p, y, x] = pre[p, winner of (y, x)] when the winner lies in p's pre cell.
static void unpool_channel(void *ctx, long c) {
    const cells_job *j = ctx;
    const ck_cells *s = j->s, *d = j->d;
    long sw, dw;
    const float *pre;
    float *post;
    channel_planes(j, c, &pre, &sw, &post, &dw);
    const int32_t *am = j->argmax + c * (long)j->Ho * j->Wo;
    for (int p = 0; p < d->P; p++) {
        long bs = cell_base(s, p, sw), bd = cell_base(d, p, dw);
        int i0, i1, c0, c1;
        in_map(d, p, j->Ho, j->Wo, &i0, &i1, &c0, &c1);
        for (int i = i0; i < i1; i++) {
            const int32_t *ar = am + (long)(d->oy[p] + i) * j->Wo + d->ox[p];
            float *prow = post + bd + (long)i * dw;
            for (int x = c0; x < c1; x++) {
                int32_t a = ar[x];
                if (a < 0) continue;
                int y = a / j->W - s->oy[p], xx = a % j->W - s->ox[p];
                if (y >= 0 && y < s->ch && xx >= 0 && xx < s->cw) prow[x] = pre[bs + (long)y * sw + xx];
            }
        }
    }
}

void ck_cells_unpool(int C, int H, int W, int Ho, int Wo, const int32_t *argmax, const ck_cells *pre_layout,
                     const float *pre, const ck_cells *post_layout, float *post) {
    cells_job j = {C, H, W, Ho, Wo, pre_layout, post_layout, pre, NULL, NULL, argmax, post, 0, 0, 0};
    ck_parallel_for(C, &j, unpool_channel);
}

typedef struct {
    int C, H, W, n, groups;
    const ck_cells *l;
    const float *v, *R;
    float *partial;
    int isa;
} contract_job;


#if defined(__x86_64__)
// Cell p of channel c against maps m0 .. m0 + nm - 1 (nm <= 4): each cell row of v is loaded once
// for the rows of four maps.
__attribute__((target("avx512f"))) static void contract_cell_avx512(const contract_job *j, int c, int p, float *out) {
    const ck_cells *l = j->l;
    long HW = (long)j->H * j->W, mapStride = (long)j->C * HW;
    long mw = ck_cells_mosaic_width(l), mh = ck_cells_mosaic_height(l);
    int i0, i1, c0, c1;
    in_map(l, p, j->H, j->W, &i0, &i1, &c0, &c1);
    if (i0 >= i1 || c0 >= c1) return;
    const float *vc = j->v + c * mh * mw + cell_base(l, p, mw);
    for (int m0 = 0; m0 < j->n; m0 += 4) {
        int nm = (int)ck_min(4, j->n - m0);
        __m512 acc[4] = {_mm512_setzero_ps(), _mm512_setzero_ps(), _mm512_setzero_ps(), _mm512_setzero_ps()};
        const float *Rc = j->R + (long)m0 * mapStride + c * HW + (long)l->oy[p] * j->W + l->ox[p];
        for (int i = i0; i < i1; i++) {
            const float *vr = vc + (long)i * mw, *rr = Rc + (long)i * j->W;
            for (int x = c0; x < c1; x += 16) {
                __mmask16 mk = (__mmask16)((1u << ck_min(16, c1 - x)) - 1);
                __m512 vv = _mm512_maskz_loadu_ps(mk, vr + x);
                for (int q = 0; q < nm; q++)
                    acc[q] = _mm512_fmadd_ps(vv, _mm512_maskz_loadu_ps(mk, rr + q * mapStride + x), acc[q]);
            }
        }
        for (int q = 0; q < nm; q++) out[m0 + q] += _mm512_reduce_add_ps(acc[q]);
    }
}
#endif

static void contract_cell(const contract_job *j, int c, int p, float *out) {
    const ck_cells *l = j->l;
    long HW = (long)j->H * j->W, mapStride = (long)j->C * HW;
    long mw = ck_cells_mosaic_width(l), mh = ck_cells_mosaic_height(l);
    int i0, i1, c0, c1;
    in_map(l, p, j->H, j->W, &i0, &i1, &c0, &c1);
    const float *vc = j->v + c * mh * mw + cell_base(l, p, mw);
    for (int m = 0; m < j->n; m++) {
        const float *Rc = j->R + (long)m * mapStride + c * HW + (long)l->oy[p] * j->W + l->ox[p];
        float acc = 0;
        for (int i = i0; i < i1; i++) {
            const float *vr = vc + (long)i * mw, *rr = Rc + (long)i * j->W;
            float s = 0;
            for (int x = c0; x < c1; x++) s += vr[x] * rr[x];
            acc += s;
        }
        out[m] += acc;
    }
}

// Task g: the channels of group g, every cell, into the group's partial sums (P x n). Per channel
// the maps' planes and the cells stay in cache: cells overlap (at conv3_3 of VGG-16 every pixel
// lies in about 36 of them), so a task per cell would fetch each map row that many times.
static void contract_group(void *ctx, long g) {
    const contract_job *j = ctx;
    int ca = (int)(g * j->C / j->groups), cb = (int)((g + 1) * j->C / j->groups);
    float *out = j->partial + g * (long)j->l->P * j->n;
    memset(out, 0, (size_t)j->l->P * j->n * sizeof(float));
    for (int c = ca; c < cb; c++)
        for (int p = 0; p < j->l->P; p++) {
#if defined(__x86_64__)
            if (j->isa == CK_ISA_AVX512) {
                contract_cell_avx512(j, c, p, out + (long)p * j->n);
                continue;
            }
#endif
            contract_cell(j, c, p, out + (long)p * j->n);
        }
}

int ck_cells_contract(int C, int H, int W, const ck_cells *layout, const float *v, int n, const float *R,
                      float *A, long lda) {
    int groups = (int)ck_min(C, 2 * ck_get_num_threads());
    float *partial = ck_malloc((size_t)groups * layout->P * n * sizeof(float));
    if (!partial) return CK_ERROR_MEMORY;
    contract_job j = {C, H, W, n, groups, layout, v, R, partial, ck_isa_active()};
    ck_parallel_for(groups, &j, contract_group);
    for (int p = 0; p < layout->P; p++)
        for (int m = 0; m < n; m++) {
            float s = 0;
            for (int g = 0; g < groups; g++) s += partial[((long)g * layout->P + p) * n + m];
            A[(long)p * lda + m] = s;
        }
    free(partial);
    return CK_OK;
}

// MARK: - Cells in vector lanes

// A grid row of gc cells in groups of at most 16 lanes, split evenly (28 cells: 14 + 14).
enum { LANES = 16 };
static inline int lane_groups(int gc) { return (gc + LANES - 1) / LANES; }
static inline int group_start(int gc, int g) { return (int)((long)g * gc / lane_groups(gc)); }

long ck_cells_lanes_size(int C, const ck_cells *l) {
    if (l->P % l->gc) return 0;
    for (int p = 0; p < l->P; p++) {
        int q = p % l->gc, r0 = p - q;
        if (l->oy[p] != l->oy[r0] || l->ox[p] != l->ox[r0] + q) return 0;
    }
    return (long)(l->P / l->gc) * lane_groups(l->gc) * C * l->ch * l->cw * LANES;
}

typedef struct {
    int C, H, W;
    const ck_cells *l;
    const float *v;
    float *vt;
    int n;
    const float *R;
    float *A;
    long lda;
} lanes_job;

enum { LANE_MAPS = 16 };  // maps a pass: 16 accumulators, the cell row and a map row stay in registers

// vt[row][group][c][i][j][lane] = v of the lane's cell at pixel (i, j) when that pixel lies in the
// map, else 0 (lanes past the group's cells too): the masked-off terms of ck_cells_contract.
static void lanes_pack_channel(void *ctx, long c) {
    const lanes_job *j = ctx;
    const ck_cells *l = j->l;
    long mw = ck_cells_mosaic_width(l), mh = ck_cells_mosaic_height(l);
    int groups = lane_groups(l->gc), rows = l->P / l->gc;
    long cell = (long)l->ch * l->cw * LANES;
    for (int r = 0; r < rows; r++)
        for (int g = 0; g < groups; g++) {
            int q0 = group_start(l->gc, g), lanes = group_start(l->gc, g + 1) - q0;
            float *dst = j->vt + (((long)r * groups + g) * j->C + c) * cell;
            memset(dst, 0, (size_t)cell * sizeof(float));
            for (int t = 0; t < lanes; t++) {
                int p = r * l->gc + q0 + t;
                int i0, i1, c0, c1;
                in_map(l, p, j->H, j->W, &i0, &i1, &c0, &c1);
                const float *src = j->v + c * mh * mw + cell_base(l, p, mw);
                for (int i = i0; i < i1; i++)
                    for (int x = c0; x < c1; x++) dst[((long)i * l->cw + x) * LANES + t] = src[(long)i * mw + x];
            }
        }
}

void ck_cells_lanes_pack(int C, int H, int W, const ck_cells *layout, const float *v, float *vt) {
    lanes_job j = {C, H, W, layout, v, vt, 0, NULL, NULL, 0};
    ck_parallel_for(C, &j, lanes_pack_channel);
}

// The columns a lane group reads: map columns x0 + j + t for lane t < lanes and pixel column j.
typedef struct {
    int r, q0, lanes, x0, y0, i0, i1;  // y0: the row's origin row; [i0, i1): its cell rows in the map
    const float *vt;                   // the group's packed cells, C x ch x cw x LANES
} lane_group;

static lane_group group_at(const lanes_job *j, long task) {
    const ck_cells *l = j->l;
    int groups = lane_groups(l->gc);
    lane_group G;
    G.r = (int)(task / groups);
    int g = (int)(task % groups);
    G.q0 = group_start(l->gc, g);
    G.lanes = group_start(l->gc, g + 1) - G.q0;
    int p = G.r * l->gc + G.q0;
    G.y0 = l->oy[p];
    G.x0 = l->ox[p];
    G.i0 = (int)ck_max(0, -G.y0);
    G.i1 = (int)ck_min(l->ch, j->H - G.y0);
    G.vt = j->vt + task * (long)j->C * l->ch * l->cw * LANES;
    return G;
}

static void store_sums(const lanes_job *j, const lane_group *G, int m0, int nm, const float *sums) {
    for (int t = 0; t < G->lanes; t++) {
        float *a = j->A + (long)(G->r * j->l->gc + G->q0 + t) * j->lda + m0;
        for (int q = 0; q < nm; q++) a[q] = sums[q * LANES + t];
    }
}

#if defined(__x86_64__)
__attribute__((target("avx512f"))) static inline __attribute__((always_inline)) void
lanes_maps_avx512(const lanes_job *j, const lane_group *G, const __mmask16 *mask, int m0, const int NM) {
    const ck_cells *l = j->l;
    long HW = (long)j->H * j->W, mapStride = (long)j->C * HW;
    int cw = l->cw;
    __m512 acc[NM];
    for (int q = 0; q < NM; q++) acc[q] = _mm512_setzero_ps();
    for (int c = 0; c < j->C; c++) {
        const float *vc = G->vt + (long)c * l->ch * cw * LANES;
        const float *Rc = j->R + (long)m0 * mapStride + c * HW + G->x0;
        for (int i = G->i0; i < G->i1; i++) {
            const float *vr = vc + (long)i * cw * LANES, *rr = Rc + (long)(G->y0 + i) * j->W;
            for (int x = 0; x < cw; x++) {
                if (!mask[x]) continue;
                __m512 vv = _mm512_loadu_ps(vr + x * LANES);
                for (int q = 0; q < NM; q++)
                    acc[q] = _mm512_fmadd_ps(vv, _mm512_maskz_loadu_ps(mask[x], rr + q * mapStride + x), acc[q]);
            }
        }
    }
    float sums[NM * LANES];
    for (int q = 0; q < NM; q++) _mm512_storeu_ps(sums + q * LANES, acc[q]);
    store_sums(j, G, m0, NM, sums);
}

__attribute__((target("avx512f"))) static void lanes_task_avx512(void *ctx, long task) {
    const lanes_job *j = ctx;
    lane_group G = group_at(j, task);
    // Per pixel column: the lanes whose map column lies in the map (the others' R may lie outside
    // the buffer; their packed v is 0).
    __mmask16 mask[j->l->cw];
    for (int x = 0; x < j->l->cw; x++) {
        unsigned m = 0;
        for (int t = 0; t < G.lanes; t++) {
            int col = G.x0 + x + t;
            if (col >= 0 && col < j->W) m |= 1u << t;
        }
        mask[x] = (__mmask16)m;
    }
    // Evenly split passes over the maps (20 maps: 10 + 10, not 16 + 4): fewer passes over v.
    int passes = (j->n + LANE_MAPS - 1) / LANE_MAPS;
    for (int k = 0; k < passes; k++) {
        int m0 = (int)((long)k * j->n / passes), nm = (int)((long)(k + 1) * j->n / passes) - m0;
        switch (nm) {
#define CASE(k) case k: lanes_maps_avx512(j, &G, mask, m0, k); break;
            CASE(1) CASE(2) CASE(3) CASE(4) CASE(5) CASE(6) CASE(7) CASE(8)
            CASE(9) CASE(10) CASE(11) CASE(12) CASE(13) CASE(14) CASE(15) CASE(16)
#undef CASE
        }
    }
}

// AVX2: the 16 lanes as two vectors of 8, masked loads for lanes whose column lies outside the map;
// at most 6 maps a pass (12 accumulators, the two v vectors and R in the 16 registers).
enum { LANE_MAPS_AVX2 = 6 };

__attribute__((target("avx2,fma"))) static inline __attribute__((always_inline)) void
lanes_maps_avx2(const lanes_job *j, const lane_group *G, const int32_t (*mask)[LANES], const int *any, int m0,
                const int NM) {
    const ck_cells *l = j->l;
    long HW = (long)j->H * j->W, mapStride = (long)j->C * HW;
    int cw = l->cw;
    __m256 lo[NM], hi[NM];
    for (int q = 0; q < NM; q++) lo[q] = hi[q] = _mm256_setzero_ps();
    for (int c = 0; c < j->C; c++) {
        const float *vc = G->vt + (long)c * l->ch * cw * LANES;
        const float *Rc = j->R + (long)m0 * mapStride + c * HW + G->x0;
        for (int i = G->i0; i < G->i1; i++) {
            const float *vr = vc + (long)i * cw * LANES, *rr = Rc + (long)(G->y0 + i) * j->W;
            for (int x = 0; x < cw; x++) {
                if (!any[x]) continue;
                __m256i ml = _mm256_loadu_si256((const __m256i *)mask[x]);
                __m256i mh = _mm256_loadu_si256((const __m256i *)(mask[x] + 8));
                __m256 vl = _mm256_loadu_ps(vr + x * LANES), vh = _mm256_loadu_ps(vr + x * LANES + 8);
                for (int q = 0; q < NM; q++) {
                    const float *r = rr + q * mapStride + x;
                    lo[q] = _mm256_fmadd_ps(vl, _mm256_maskload_ps(r, ml), lo[q]);
                    hi[q] = _mm256_fmadd_ps(vh, _mm256_maskload_ps(r + 8, mh), hi[q]);
                }
            }
        }
    }
    float sums[NM * LANES];
    for (int q = 0; q < NM; q++) {
        _mm256_storeu_ps(sums + q * LANES, lo[q]);
        _mm256_storeu_ps(sums + q * LANES + 8, hi[q]);
    }
    store_sums(j, G, m0, NM, sums);
}

__attribute__((target("avx2,fma"))) static void lanes_task_avx2(void *ctx, long task) {
    const lanes_job *j = ctx;
    lane_group G = group_at(j, task);
    int32_t mask[j->l->cw][LANES];
    int any[j->l->cw];
    for (int x = 0; x < j->l->cw; x++) {
        any[x] = 0;
        for (int t = 0; t < LANES; t++) {
            int col = G.x0 + x + t;
            mask[x][t] = t < G.lanes && col >= 0 && col < j->W ? -1 : 0;
            any[x] |= mask[x][t];
        }
    }
    int passes = (j->n + LANE_MAPS_AVX2 - 1) / LANE_MAPS_AVX2;
    for (int k = 0; k < passes; k++) {
        int m0 = (int)((long)k * j->n / passes), nm = (int)((long)(k + 1) * j->n / passes) - m0;
        switch (nm) {
#define CASE(k) case k: lanes_maps_avx2(j, &G, (const int32_t (*)[LANES])mask, any, m0, k); break;
            CASE(1) CASE(2) CASE(3) CASE(4) CASE(5) CASE(6)
#undef CASE
        }
    }
}
#endif

// Portable: the same sums, lanes innermost.
static void lanes_task(void *ctx, long task) {
    const lanes_job *j = ctx;
    const ck_cells *l = j->l;
    lane_group G = group_at(j, task);
    long HW = (long)j->H * j->W, mapStride = (long)j->C * HW;
    int cw = l->cw;
    float sums[LANES];
    for (int m = 0; m < j->n; m++) {
        for (int t = 0; t < LANES; t++) sums[t] = 0;
        for (int c = 0; c < j->C; c++) {
            const float *vc = G.vt + (long)c * l->ch * cw * LANES;
            const float *Rc = j->R + (long)m * mapStride + c * HW;
            for (int i = G.i0; i < G.i1; i++) {
                const float *vr = vc + (long)i * cw * LANES, *rr = Rc + (long)(G.y0 + i) * j->W;
                for (int x = 0; x < cw; x++)
                    for (int t = 0; t < G.lanes; t++) {
                        int col = G.x0 + x + t;
                        if (col >= 0 && col < j->W) sums[t] += vr[x * LANES + t] * rr[col];
                    }
            }
        }
        store_sums(j, &G, m, 1, sums);
    }
}

void ck_cells_contract_lanes(int C, int H, int W, const ck_cells *layout, const float *vt, int n, const float *R,
                             float *A, long lda) {
    if (n <= 0 || layout->P == 0) return;
    lanes_job j = {C, H, W, layout, NULL, (float *)vt, n, R, A, lda};
    long tasks = (long)(layout->P / layout->gc) * lane_groups(layout->gc);
#if defined(__x86_64__)
    if (ck_isa_active() == CK_ISA_AVX512) {
        ck_parallel_for(tasks, &j, lanes_task_avx512);
        return;
    }
    if (ck_isa_active() == CK_ISA_AVX2) {
        ck_parallel_for(tasks, &j, lanes_task_avx2);
        return;
    }
#endif
    ck_parallel_for(tasks, &j, lanes_task);
}
