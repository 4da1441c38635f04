// From first-order maps to pair relevance: channel sum and patch sum-pooling, then A A'^T.
//
// Sum-pooling (not the authors' average) keeps the total, so sum R = sum_m (sum A) (sum A') = y
// stays checkable after pooling.
#include "internal.h"

#include <string.h>

typedef struct {
    const float *R;
    float *out;
    int C, H, W, patch, Ph, Pw;
} patch_job;

static void patch_map(void *p, long m) {
    patch_job *q = p;
    long HW = (long)q->H * q->W;
    const float *R = q->R + m * q->C * HW;
    float *o = q->out + m * (long)q->Ph * q->Pw;
    memset(o, 0, (size_t)q->Ph * q->Pw * sizeof(float));
    for (int c = 0; c < q->C; c++)
        for (int y = 0; y < q->H; y++) {
            const float *r = R + c * HW + (long)y * q->W;
            float *orow = o + (long)(y / q->patch) * q->Pw;
            for (int x = 0; x < q->W; x++) orow[x / q->patch] += r[x];
        }
}

void ck_patch_pool(int n, const float *R, int C, int H, int W, int patch, float *out) {
    patch_job q = {R, out, C, H, W, patch, (H + patch - 1) / patch, (W + patch - 1) / patch};
    ck_parallel_for(n, &q, patch_map);
}

int ck_pair_product(int P, int Q, int h, const float *A, const float *B, float *R) {
    return ck_sgemm(P, Q, h, A, h, 1, B, 1, h, R, Q, 0);
}
