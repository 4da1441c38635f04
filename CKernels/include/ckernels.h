// CKernels: the arithmetic of BiLRP in C11.
//
// Everything here is float32, C-contiguous, batch 1 per input. A "block" of n relevance maps is
// stored map-major: map m of a (C, H, W) tensor starts at m * C * H * W.
//
// Parallelism: with `-fopenmp` (the Makefile's build) work is split with OpenMP; without it, with
// libdispatch (`dispatch_apply_f`), so a plain `swift build` is parallel too and the manifest needs
// no unsafe flags. Both schedule the same tasks; results are bitwise identical across thread counts
// because every task owns its outputs.
//
// ISA: each entry point picks a micro-kernel once per call: AVX-512, AVX2+FMA or portable C. The
// default is the best the CPU supports; `BILRP_ISA=avx512|avx2|portable` in the environment caps
// it process-wide, and `ck_set_thread_isa` caps it for the calling thread (used by the tests to
// cross-check every path in one process).
#ifndef CKERNELS_H
#define CKERNELS_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

// MARK: - Status
/// Entry points that allocate (scratch, packed copies, column buffers) return CK_OK, or
/// CK_ERROR_MEMORY when an allocation failed: the call then did only part of its work and its
/// outputs are undefined. They never abort the process.
enum { CK_OK = 0, CK_ERROR_MEMORY = 1 };
/// For tests: allocations for calls made from this thread (their parallel tasks included) of more
/// than `bytes` fail as if malloc had failed, also where a scratch buffer already holds that much;
/// 0 removes the limit. Returns the previous limit.
size_t ck_set_thread_alloc_limit(size_t bytes);
// MARK: - Machine

/// Paths, ordered within an architecture (a cap picks the lower): x86-64 portable < AVX2 <
/// AVX-512; aarch64 portable < NEON. BILRP_ISA names a path of this architecture (avx512, avx2,
/// neon, portable); another architecture's name is ignored.
enum { CK_ISA_PORTABLE = 0, CK_ISA_AVX2 = 1, CK_ISA_AVX512 = 2, CK_ISA_NEON = 3 };

/// Best ISA this CPU supports.
int ck_isa_supported(void);
/// ISA used by calls from this thread: min(supported, BILRP_ISA, thread override).
int ck_isa_active(void);
/// Cap the ISA for the calling thread; -1 removes the cap. Returns the ISA now active.
int ck_set_thread_isa(int isa);
/// Re-read BILRP_ISA from the environment (tests set it with setenv). Returns the ISA now active.
int ck_reload_env(void);
const char *ck_isa_name(int isa);

/// Worker threads for parallel kernels (default: online CPUs, or OMP_NUM_THREADS / BILRP_THREADS).
void ck_set_num_threads(int n);
int ck_get_num_threads(void);
/// 1 when compiled with OpenMP, 0 when the libdispatch fallback is used.
int ck_openmp_enabled(void);
/// The measured fp32 FMA peak in GFLOP/s of `threads` threads with the active ISA (0 if portable).
double ck_fma_peak_gflops(int threads);

// MARK: - GEMM

/// C(i, j) = [C(i, j) +] sum_k A(i, k) B(k, j), with A(i, k) = A[i * rsa + k * csa],
/// B(k, j) = B[k * rsb + j * csb] and C(i, j) = C[i * ldc + j]. Any strides: transposes are free.
/// Parallel over tiles of C.
int ck_sgemm(int M, int N, int K, const float *A, long rsa, long csa, const float *B, long rsb,
             long csb, float *C, long ldc, int accumulate);

// MARK: - Convolution

/// y (K, Ho, Wo) = conv2d(x (C, H, W), w (K, C, kh, kw)) + bias (nullable), cross-correlation as in
/// PyTorch, zero padding. Ho = (H + 2 ph - kh) / sh + 1.
int ck_conv2d_forward(const float *x, int C, int H, int W, const float *w, const float *bias, int K,
                      int kh, int kw, int sh, int sw, int ph, int pw, float *y);

/// Floats of a convolution weight (K, C, kh, kw) packed by ck_conv_weights.
long ck_conv_weights_size(int K, int C, int kh, int kw);
/// Packs a forward weight (K, C, kh, kw) for the GEMM micro-kernels (every ISA), once per layer:
/// ck_conv2d_forward packs it on every call (9.4 MB for 512 x 512 x 3 x 3, as much memory traffic
/// as the whole product on a 16 x 16 map).
void ck_conv_weights(const float *w, int K, int C, int kh, int kw, float *packed);
/// ck_conv2d_forward with the weight packed by ck_conv_weights. Same bits.
int ck_conv2d_forward_packed(const float *x, int C, int H, int W, const float *packed, const float *bias, int K,
                             int kh, int kw, int sh, int sw, int ph, int pw, float *y);

/// Stride-1 convolutions on AVX-512 and AVX2 run as an implicit GEMM (the micro-kernel reads im2col rows in
/// place from padded rows of the image, copied per thread); elsewhere, and when disabled for the calling thread
/// here, the GEMM packs im2col panels. Returns the previous setting. For tests and benchmarks.
int ck_conv_set_implicit(int enabled);
int ck_conv_implicit_enabled(void);

/// The relevance backward of a convolution for a block of n maps: c (n, C, H, W) = conv2d^T(s (n, K,
/// Ho, Wo), w), the adjoint of ck_conv2d_forward without bias (what autograd computes as the input
/// gradient). Output positions of the forward that no window covers get 0.
int ck_conv2d_backward(int n, const float *s, int K, int Ho, int Wo, const float *w, int C, int H,
                       int W, int kh, int kw, int sh, int sw, int ph, int pw, float *c);

/// A convolution's geometry: input (C, H, W), K output channels, kernel kh x kw, stride, zero
/// padding, and groups (dividing C and K; the weight is (K, C / groups, kh, kw)).
typedef struct { int C, H, W, K, kh, kw, sh, sw, ph, pw, groups; } ck_conv_geometry;
/// A grouped convolution's forward, y (K, Ho, Wo) = conv2d(x (C, H, W), w) + bias (nullable), with
/// the layer's own arithmetic (K (C / groups) kh kw per output), not that of the dense weight.
int ck_grouped_conv_forward(const float *x, ck_conv_geometry g, const float *w, const float *bias, float *y);
/// Its adjoint for n maps: c (n, C, H, W) = conv2d^T(s (n, K, Ho, Wo), w), as ck_conv2d_backward.
int ck_grouped_conv_backward(int n, const float *s, ck_conv_geometry g, const float *w, float *c);

/// One LRP pass through any convolution (or linear layer as 1 x 1) by the direct path, fused: for
/// the T terms of the pass with weights w[t] (K, C, kh, kw) and inputs a[t] (C, H, W; NULL for 1),
/// Rin (n, C, H, W) = [Rin +] scale * sum_t a[t] * conv^T_t(R / stab(z)), with R (n, K, Ho, Wo) and
/// z (K, Ho, Wo) shared by the n maps. s is packed for the GEMM straight from R and z and shared by
/// the terms (the input layer's z^B rule has three).
int ck_lrp_direct(int n, const float *R, const float *z, float eps, int K, int Ho, int Wo, int T,
                  const float *const *w, const float *const *a, float scale, int C, int H, int W, int kh, int kw,
                  int sh, int sw, int ph, int pw, int accumulate, float *Rin);

/// Floats of U from ck_winograd_weights: 36 x K x C, K rounded up to the GEMM's 6-row slivers.
long ck_winograd_weights_size(int K, int C);
/// Winograd F(4x4, 3x3) weights U (36 x K x C, packed for the GEMM micro-kernels; size from
/// ck_winograd_weights_size) for a 3x3 convolution. transpose = 0: w is (K, C, 3, 3)
/// and U is for that convolution; transpose = 1: w is a forward weight (C, K, 3, 3) and U is for its
/// adjoint (the relevance backward: K = the forward's input channels). Once per layer and rule.
int ck_winograd_weights(const float *w, int K, int C, int transpose, float *U);
/// y (n, K, H, W) = conv2d(x (n, C, H, W)) with a 3x3 kernel, stride 1, zero padding 1, by Winograd
/// F(4x4, 3x3) from U of ck_winograd_weights. About 4x fewer multiplications than direct.
int ck_winograd_conv3x3(int n, const float *x, int C, int H, int W, const float *U, int K, float *y);
/// One LRP term through a 3x3/s1/p1 layer, fused: s = R / stab(z) on loading (z (C, H, W) shared by
/// the n maps; R (n, C, H, W) is the relevance at the layer output), c = conv^T(s) by Winograd, and
/// Rin (n, K, H, W) = [Rin +] scale * a * c on storing (a (K, H, W) shared, NULL for 1). Saves the
/// separate element-wise passes over the whole block.
int ck_winograd_lrp(int n, const float *R, const float *z, float eps, int C, int H, int W, const float *U, int K,
                    const float *a, float scale, int accumulate, float *Rin);

/// ck_winograd_lrp for a layer followed by a max-pool with non-overlapping sh x sw windows (no
/// padding): Rp (n, C, Ho, Wo) is the relevance at the pool's output and argmax (C, Ho, Wo) its
/// winners (ck_maxpool_forward); the winner-take-all unpooling happens on loading, so the
/// unpooled block (3 zeros in 4) is never written and read back. Same results as
/// ck_maxpool_backward then ck_winograd_lrp. z is required.
int ck_winograd_lrp_unpool(int n, const float *Rp, const int32_t *argmax, int Ho, int Wo, int sh, int sw,
                           const float *z, float eps, int C, int H, int W, const float *U, int K, const float *a,
                           float scale, int accumulate, float *Rin);

/// Floats of the weights prepared by ck_sparse_weights: kh * kw * K rows of C channels, padded to
/// a multiple of 32.
long ck_sparse_weights_size(int K, int C, int kh, int kw);
/// Wb[(dy * kw + dx) * K + k][c] = w[k][c][dy][dx] for w (K, C, kh, kw) (K: the layer's output
/// channels, C: its input channels), rows padded with zeros.
void ck_sparse_weights(const float *w, int K, int C, int kh, int kw, float *Wb);
/// One LRP term through a stride-1 convolution (kh x kw, zero padding ph, pw; Ho = H + 2 ph - kh + 1),
/// gathered over the non-zero relevance only: Rin (n, C, H, W) = [Rin +] scale * a * conv^T(R / stab(z))
/// with z (K, Ho, Wo) required, a (C, H, W) or NULL for 1, Wb from ck_sparse_weights. R is the
/// relevance at the layer output (n, K, Ho, Wo), or, when argmax is not NULL, at the output of a
/// max-pool with non-overlapping windows (n, K, Hp, Wp) and argmax its winners (ck_maxpool_forward),
/// unpooled on packing. An entry (k, q) is skipped when every map's relevance there is zero, so the
/// cost per map is the direct convolution's times the density of the relevance. Sums in a
/// different order than the direct path (rounding only).
int ck_sparse_lrp(int n, const float *R, const int32_t *argmax, int Hp, int Wp, const float *z, float eps, int K,
                  int Ho, int Wo, const float *Wb, int C, int H, int W, int kh, int kw, int ph, int pw,
                  const float *a, float scale, int accumulate, float *Rin);

/// Schedules of the Winograd kernels (same arithmetic, same results): FUSED runs transform, GEMMs
/// and output transform per 64 tiles on one thread (V and M stay in L2); CHUNKED runs each step over
/// big super-chunks, parallel over channels. By default FUSED up to 256 relevance channels, else
/// CHUNKED (measured on VGG-16 layers), and CHUNKED for calls with fewer 64-tile units than
/// threads; BILRP_WINOGRAD=fused|chunked in the environment forces one.
enum { CK_WINOGRAD_AUTO = -1, CK_WINOGRAD_CHUNKED = 0, CK_WINOGRAD_FUSED = 1 };
/// Forces a schedule for calls made from this thread (CK_WINOGRAD_AUTO: back to the default);
/// returns the previous setting. For tests and benchmarks.
int ck_winograd_set_schedule(int schedule);
/// The schedule used for C relevance channels in and K out, for a call of many tiles.
int ck_winograd_schedule(int C, int K);
/// Caps the CHUNKED schedule's super-chunks at this many tiles for calls made from this thread
/// (rounded up to the GEMM's panel width; 0: the default, about 48 MiB of V and M); returns the
/// previous cap. For tests: chunk boundaries inside tile rows and maps.
long ck_winograd_set_chunk_tiles(long tiles);

// MARK: - Memory

/// A mapping of old_bytes at p resized to new_bytes (mremap, may move; the pages kept stay resident),
/// or NULL where that is not possible (not Linux, or the call failed: p is then untouched).
void *ck_remap(void *p, size_t old_bytes, size_t new_bytes);

// MARK: - LRP element-wise steps

/// s[m, i] = R[m, i] / stab(z[i]) for m < n, i < len; stab(z) = z + eps * sign(z), sign(0) = +1.
void ck_lrp_divide(int n, long len, const float *R, const float *z, float eps, float *s);
/// R[m, i] = [R[m, i] +] scale * a[i] * c[m, i]; a == NULL means a = 1.
void ck_lrp_product(int n, long len, const float *a, const float *c, float scale, float *R,
                    int accumulate);
/// A sum's relevance split among its k summands: out_j[m, i] = [out_j[m, i] +] a_j[i] R[m, i] / stab(z[i])
/// (accumulate[j] chooses). An output may be R itself, or the same for two summands (both accumulating
/// after the first).
void ck_lrp_shares(int n, long len, const float *R, const float *z, float eps, int k, const float *const *a,
                   float *const *out, const int *accumulate);
/// y[i] = max(x[i], 0) (sign > 0), min(x[i], 0) (sign < 0), in place allowed.
void ck_clamp(long len, const float *x, int sign, float *y);

// MARK: - Pooling

/// Max-pool (padding counts as -inf). argmax[c, o] = the winning index in the channel's H * W
/// plane, the first maximum in row-major window order (as PyTorch).
void ck_maxpool_forward(const float *x, int C, int H, int W, int kh, int kw, int sh, int sw, int ph,
                        int pw, float *y, int32_t *argmax);
/// Winner-take-all: Rin (n, C, H, W) = 0, then Rin[m, c, argmax[c, o]] += Rout[m, c, o].
void ck_maxpool_backward(int n, const float *Rout, int C, int Ho, int Wo, const int32_t *argmax,
                         int H, int W, float *Rin);
/// Average pool, zero padding counted in the divisor (PyTorch's count_include_pad = True).
void ck_avgpool_forward(const float *x, int C, int H, int W, int kh, int kw, int sh, int sw, int ph,
                        int pw, float *y);
/// Adjoint of ck_avgpool_forward for n maps: c[m, j] = sum over windows o containing j of s[m, o] / (kh kw).
void ck_avgpool_backward(int n, const float *s, int C, int Ho, int Wo, int H, int W, int kh, int kw,
                         int sh, int sw, int ph, int pw, float *c);
/// Adaptive average pool with PyTorch's bins: rows [floor(i H / Ho), ceil((i + 1) H / Ho)).
void ck_adaptive_avgpool_forward(const float *x, int C, int H, int W, int Ho, int Wo, float *y);
void ck_adaptive_avgpool_backward(int n, const float *s, int C, int Ho, int Wo, int H, int W,
                                  float *c);

// MARK: - Patch side (mixed-mode explanations)

/// P cells of ch x cw pixels in a mosaic image: cell p at row block p / gc and column block
/// p % gc, its pixel (i, j) standing for map position (oy[p] + i, ox[p] + j), which may lie
/// outside the map (such pixels hold 0). A mosaic of C channels is (C, ck_cells_mosaic_height,
/// ck_cells_mosaic_width), row-major, so an ordinary convolution can run on it: with a zero ring
/// of r pixels in every cell, a stride-1 convolution with kernel 2r + 1 and padding r computes
/// each cell's vector alone (what leaks from a neighbour comes from its zero ring).
typedef struct {
    int P, gc, ch, cw;
    const int32_t *oy, *ox;
} ck_cells;
long ck_cells_mosaic_height(const ck_cells *l);
long ck_cells_mosaic_width(const ck_cells *l);
/// dst (C, mosaic of dst_layout) = src at the same map position (0 where src's cell does not
/// reach, and outside the map), times factor (C, H, W; NULL for 1). H, W: the map.
void ck_cells_load(int C, int H, int W, const ck_cells *src_layout, const float *src, const ck_cells *dst_layout,
                   const float *factor, float *dst);
/// v = [v +] scale * o / stab(z) inside the map (z (C, H, W)), 0 outside; o and v in one layout.
void ck_cells_scale(int C, int H, int W, const ck_cells *layout, const float *o, const float *z, float eps,
                    float scale, int accumulate, float *v);
/// The transpose of a max-pool's winner-take-all backward, per cell: post (Ho, Wo map) at (y, x) =
/// pre (H, W map) at the winner argmax[c, y, x] (ck_maxpool_forward), when the winner lies in the
/// cell's pre-pool rectangle; else 0.
void ck_cells_unpool(int C, int H, int W, int Ho, int Wo, const int32_t *argmax, const ck_cells *pre_layout,
                     const float *pre, const ck_cells *post_layout, float *post);
/// A[p * lda + m] = sum over channels and the in-map pixels of cell p of v * R[m] (R (n, C, H, W)),
/// for m < n: the P cell vectors against a block of n relevance maps.
int ck_cells_contract(int C, int H, int W, const ck_cells *layout, const float *v, int n, const float *R,
                      float *A, long lda);
/// ck_cells_contract with 16 cells of a grid row in the lanes of a vector, for layouts whose cells
/// sit at unit steps: in each grid row the same origin row, origins one column apart (the patch
/// side's cells at the layer where the patch grid has the map's resolution, VGG-16's pool3 with 8 x
/// 8 patches). Then one vector load of a map row serves 16 cells, and the sums need no horizontal
/// reduction. ck_cells_lanes_size is 0 for other layouts; ck_cells_lanes_pack transposes v (once,
/// for every block of maps) and ck_cells_contract_lanes computes what ck_cells_contract does.
long ck_cells_lanes_size(int C, const ck_cells *layout);
void ck_cells_lanes_pack(int C, int H, int W, const ck_cells *layout, const float *v, float *vt);
void ck_cells_contract_lanes(int C, int H, int W, const ck_cells *layout, const float *vt, int n, const float *R,
                             float *A, long lda);

// MARK: - Graph ops (moving, selecting and reducing values)

/// The extent of a (C, H, W) tensor, or of a box inside one.
typedef struct { int C, H, W; } ck_shape3;
/// A position (channel, row, column) inside a (C, H, W) tensor.
typedef struct { int c, h, w; } ck_at3;

/// For each of n maps: the box of `box` values of src starting at src_at is copied to dst at dst_at
/// (added when accumulate). Values of dst outside the box are left as they are. src and dst are
/// blocks of n maps of their shapes. Pad and Slice, forward and backward, are this copy.
void ck_copy_box(int n, const float *src, ck_shape3 src_shape, ck_at3 src_at, float *dst, ck_shape3 dst_shape,
                 ck_at3 dst_at, ck_shape3 box, int accumulate);

/// y[i] = max (is_max) or min over the k inputs x[j][i]; winner[i] = the first j that gives it
/// (NaN wins, as in max-pool).
void ck_extremum_forward(int k, const float *const *x, long len, int is_max, float *y, int32_t *winner);
/// Winner-take-all for input j, n maps: Rin[m, i] = winner[i] == j ? R[m, i] : 0.
void ck_extremum_backward(int n, long len, const float *R, const int32_t *winner, int j, float *Rin);

/// Axes of a (C, H, W) tensor, as bits.
enum { CK_AXIS_C = 1, CK_AXIS_H = 2, CK_AXIS_W = 4 };
/// y = scale * the sum of x over the axes in `axes` (those of y have extent 1: keepdims).
void ck_reduce_forward(const float *x, ck_shape3 s, int axes, float scale, float *y);
/// The reduction's LRP step, n maps: Rin[m, c, h, w] = scale * a[c, h, w] * S[m, reduced (c, h, w)],
/// S (n, reduced shape) the relevance already divided by the stabilized outputs.
void ck_reduce_backward(int n, const float *S, const float *a, ck_shape3 s, int axes, float scale, float *Rin);

// MARK: - Transformer ops (features-major sequences: feature c of token t at c * T + t)

/// LayerNorm over the D features of each of T tokens: y = gamma (x - mean) / sigma + beta, and 1 / sigma (T).
void ck_layernorm_forward(const float *x, int D, int T, const float *gamma, const float *beta, float eps, float *y,
                          float *inv_sigma);
/// Its relevance step for n maps, S the relevance divided by the stabilized outputs: the LN rule
/// (sigma constant) Rin = x (gamma S - mean_c gamma S) / sigma, or with `exact` the true gradient
/// x input, which also subtracts xh mean_c(gamma S xh), xh = (x - mean x) / sigma.
void ck_layernorm_backward(int n, const float *S, const float *x, int D, int T, const float *gamma,
                           const float *inv_sigma, int exact, float *Rin);
/// The transposed LN-rule map for n functionals, in place: w <- gamma (w - mean_c w) / sigma.
void ck_layernorm_transposed(int n, float *w, int D, int T, const float *gamma, const float *inv_sigma);
/// gelu(x) = x Phi(x) with the exact normal CDF, and x gelu'(x) (what the true gradient multiplies by).
void ck_gelu_forward(long count, const float *x, float *y);
void ck_gelu_input_slope(long count, const float *x, float *out);
/// Multi-head self-attention: per head h (features h dh .. (h + 1) dh - 1, dh = D / heads) the
/// weights A_h = softmax(q_h^T k_h / sqrt(dh)) (heads, T, T), row i over the keys, and o_h = v_h A_h^T.
int ck_attention_forward(const float *q, const float *k, const float *v, int D, int T, int heads, float *o, float *A);
/// The AH rule for n maps (weights constant): Rv[c, j] = v[c, j] sum_i A_h[i, j] S[c, i].
void ck_attention_value_backward(int n, const float *S, const float *v, int D, int T, int heads, const float *A,
                                 float *Rv);
/// The true gradient x input through the softmax to the queries and keys, for n maps with G = R / stab(o).
int ck_attention_score_backward(int n, const float *G, const float *q, const float *k, const float *v, int D, int T,
                                int heads, const float *A, float *Rq, float *Rk);

// MARK: - Pairs

/// out (n, Ph, Pw) = sum over channels and over patch x patch windows of R (n, C, H, W);
/// Ph = ceil(H / patch): border patches of a side that is not a multiple are smaller.
void ck_patch_pool(int n, const float *R, int C, int H, int W, int patch, float *out);
/// R (P, Q) = A (P, h) * B (Q, h)^T, both row-major.
int ck_pair_product(int P, int Q, int h, const float *A, const float *B, float *R);

#ifdef __cplusplus
}
#endif
#endif
