// Internal helpers shared by the kernel files; not part of the C API.
#ifndef CK_INTERNAL_H
#define CK_INTERNAL_H

#include "include/ckernels.h"
#include <stdlib.h>

/// 1 where the AVX2 and AVX-512 paths are compiled (x86-64); elsewhere only the portable path is.
#if defined(__x86_64__)
#define CK_X86 1
#include <immintrin.h>
#else
#define CK_X86 0
#endif
#if defined(__aarch64__)
#include <arm_neon.h>
#endif

/// One unit of parallel work: task index i of n.
typedef void (*ck_task_fn)(void *ctx, long i);

/// Runs fn(ctx, i) for i in [0, n) on up to ck_get_num_threads() threads (OpenMP when compiled
/// with -fopenmp, libdispatch otherwise). Tasks are handed out from an atomic counter, so uneven
/// tasks balance. Must not be nested: call serial code inside tasks.
void ck_parallel_for(long n, void *ctx, ck_task_fn fn);
// As ck_parallel_for, but thread w starts on tasks w n / T .. (w + 1) n / T - 1 in order, then
// helps the others (taking their next tasks): neighbouring tasks that share data stay on one
// thread unless the balance needs otherwise.
void ck_parallel_for_ranges(long n, void *ctx, ck_task_fn fn);

/// 64-byte aligned thread-local scratch buffer, grown on demand and kept; slots 0-1: GEMM packing,
/// 6: Winograd 1 / stab(z), 7: ck_sgemm's packed A (both of the calling thread),
/// 2: conv columns, row buffers and the forward's padded strips, 3: transform rows, 4-5: Winograd
/// V and M (calling thread; the sparse backward's packed s and indices on the calling thread, 2-3
/// its row lists and tiles).
/// NULL when the allocation fails (noted as by ck_malloc): the caller skips its work.
float *ck_scratch(int slot, size_t floats);

/// Allocation failures: what fails returns NULL and is noted for the calling thread (inside a
/// parallel task: for the region, and so for its caller). An entry point takes
/// `unsigned long before = ck_alloc_failures()` first and returns `ck_status_since(before)`:
/// CK_ERROR_MEMORY when anything it (or its tasks) allocated failed, and its outputs are undefined.
void *ck_malloc(size_t bytes);
unsigned long ck_alloc_failures(void);
int ck_status_since(unsigned long before);

/// Column panel width of the GEMM micro-kernel for an ISA.
int ck_gemm_nr(int isa);

/// Packs B(k0 .. k0 + kc, j0 .. j0 + nc) into panels of nr columns (each kc rows of nr values,
/// columns past nc zero), as pack_b in gemm.c does from a stored B.
typedef void (*ck_pack_b_fn)(const void *ctx, int nr, long k0, long kc, long j0, long nc, float *dst);

/// ck_sgemm with B produced by a packer instead of read from memory (B, rsb, csb unused when
/// packer is not NULL): the forward convolution packs its im2col panels straight from the image.
void ck_sgemm_packer(int M, int N, int K, const float *A, long rsa, long csa, const float *B, long rsb,
                     long csb, ck_pack_b_fn packer, const void *pctx, float *C, long ldc, int accumulate);

/// ck_sgemm_packer with A already packed by ck_gemm_pack_a (every ISA's micro-kernel has 6-row
/// slivers, so one packing serves all): the forward convolution keeps its packed weights per layer.
void ck_sgemm_prepacked_a(int M, int N, int K, const float *Ap, const float *B, long rsb, long csb,
                          ck_pack_b_fn packer, const void *pctx, float *C, long ldc, int accumulate);

/// Packs all of A (M x K) as ck_gemm_pack_a does, in parallel, into the caller's scratch slot 7;
/// valid until the caller's next ck_sgemm.
float *ck_gemm_pack_a_shared(int isa, int M, int K, const float *A, long rsa, long csa);
/// The K step of every packed-A GEMM (at most 256, equal steps).
long ck_gemm_kc_step(long K);
/// The AVX-512 6 x 64 micro-kernel reading B in place: columns 16 q .. 16 q + 15 of panel row k
/// are the 16 floats at base + koff[k] + seg[q].
void ck_ukernel_offsets_avx512(long kc, const float *a, const float *base, const long *koff, const long *seg,
                               float *c, long ldc, int acc, int mr, int nr);
/// The AVX2 6 x 16 micro-kernel reading B in place: panel row k is the 16 floats at base + koff[k].
void ck_ukernel_offsets_avx2(long kc, const float *a, const float *base, const long *koff, float *c, long ldc,
                             int acc, int mr, int nr);

/// Row sliver height of the GEMM micro-kernel for an ISA.
int ck_gemm_mr(int isa);
/// Floats of a fully packed A (M x K) for ck_gemm_prepacked: M rounded up to mr, times K.
long ck_gemm_packed_a_size(int isa, int M, int K);
/// Packs all of A (M x K, strides rsa, csa) for the micro-kernel of isa. Serial.
void ck_gemm_pack_a(int isa, int M, int K, const float *A, long rsa, long csa, float *dst);
/// Where A(i, k) lies in that layout (rows i .. i + mr - 1 of one sliver, i a multiple of mr,
/// are the mr floats from there on).
long ck_gemm_packed_a_index(int isa, int M, int K, long i, long k);
/// ck_gemm_pack_a in parallel tasks (not from inside one).
void ck_gemm_pack_a_parallel(int isa, int M, int K, const float *A, long rsa, long csa, float *dst);
/// C (rows s0 mr .. min(s1 mr, M), N) [+]= A B with A packed by ck_gemm_pack_a and B pre-packed in
/// the micro-kernel's layout: panels of nr columns (zero-padded), each K rows of nr values, panel p
/// at Bp + p * K * nr. C points at row s0 mr. Serial, no scratch: safe inside any task.
void ck_gemm_prepacked(int isa, int s0, int s1, int M, int N, int K, const float *Ap, const float *Bp, float *C,
                       long ldc, int accumulate);

/// Single-threaded GEMM (same contract as ck_sgemm), for use inside parallel tasks.
void ck_sgemm_serial(int isa, int M, int N, int K, const float *A, long rsa, long csa,
                     const float *B, long rsb, long csb, float *C, long ldc, int accumulate);

/// rz[i] = 1 / stab(z[i]) (stab as in ck_lrp_divide), in parallel: the fused LRP kernels multiply
/// by it, once per call for all maps, instead of dividing per map.
void ck_lrp_stab_reciprocal(long len, const float *z, float eps, float *rz);

static inline long ck_min(long a, long b) { return a < b ? a : b; }
static inline long ck_max(long a, long b) { return a > b ? a : b; }

#endif
