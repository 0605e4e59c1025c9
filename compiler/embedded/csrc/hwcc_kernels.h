/* hwcc_kernels.h - the layer kernels hwcc's generated model.c calls.
 *
 * Standalone C99: no heap, no floating point, no runtime. Activations are int8, NHWC, with
 * channels padded to a multiple of max(R, C) (the padding channels hold 0). Convolutions
 * and fully connected layers run on the accelerator (hwcc_acc.h), tiled to its scratchpad
 * and accumulator buffer; the few elementwise layers (residual add, pooling, layout) are
 * plain integer C on the host core.
 *
 * rqmul(v, m, s) = (int32)(((int64)v * m + 2^(s-1)) >> s), s in 1..62: every
 * requantization (see hwcc_acc.h).
 */
#ifndef HWCC_KERNELS_H
#define HWCC_KERNELS_H

#include <stdint.h>

#include "hwcc_acc.h"

#ifdef __cplusplus
extern "C" {
#endif

/* A convolution (a fully connected layer is one with a 1x1 input and kernel). */
typedef struct {
    uint32_t layer;                                  /* id passed to hwcc_acc_sync */
    uint32_t in_h, in_w, in_c;                       /* in_c: padded, a multiple of C */
    uint32_t out_h, out_w, out_c;                    /* out_c: padded, a multiple of R */
    uint32_t k_h, k_w, stride_h, stride_w, pad_t, pad_l, dil_h, dil_w;
    const int8_t *weights;   /* [out_c/R][k_h][k_w][in_c/C][R][C] */
    const int32_t *bias;     /* out_c entries, in accumulator units */
    const int32_t *mult;     /* out_c requantization multipliers */
    const uint8_t *shift;    /* out_c right shifts */
    int32_t lo, hi;          /* output clamp (the activation) */
    /* the tile: output rows, output columns, R-blocks of output channels */
    uint32_t tile_h, tile_w, tile_ocb;
    uint32_t oc_outer;       /* 1: output-channel tiles outermost (weights loaded once) */
    uint32_t double_buffer;  /* 1: two scratchpad / accumulator buffers (load || compute) */
} hwcc_conv_params;

void hwcc_conv2d(const hwcc_conv_params *p, const int8_t *in, int8_t *out);

/* im2col: gather each output pixel's k_h x k_w taps of the c real input channels into one
 * vector of k_pad channels, in (tap row, tap column, channel) order, zeros outside the input
 * and after the k_h*k_w*c values; the conv then runs as a 1x1 conv over k_pad channels. */
typedef struct {
    uint32_t in_h, in_w, in_c, c;        /* in_c: the input's padded channels; c: real ones */
    uint32_t out_h, out_w, k_h, k_w, stride_h, stride_w, pad_t, pad_l, dil_h, dil_w;
    uint32_t k_pad;
} hwcc_im2col_params;

void hwcc_im2col(const hwcc_im2col_params *p, const int8_t *in, int8_t *out);

/* out = clamp((rqmul(a * 2^16, mult_a, shift_a) + rqmul(b * 2^16, mult_b, shift_b)
 *              + 2^15) >> 16, lo, hi), elementwise over n bytes. */
typedef struct {
    uint32_t layer, n;
    int32_t mult_a, mult_b;
    uint32_t shift_a, shift_b;
    int32_t lo, hi;
} hwcc_add_params;

void hwcc_add(const hwcc_add_params *p, const int8_t *a, const int8_t *b, int8_t *out);

/* Mean over the spatial positions: out[c] = clamp(rqmul(sum_hw in[hw][c], mult, shift)). */
typedef struct {
    uint32_t layer, hw, c;
    int32_t mult;
    uint32_t shift;
    int32_t lo, hi;
} hwcc_mean_params;

void hwcc_mean(const hwcc_mean_params *p, const int8_t *in, int8_t *out);

/* Max pooling over the valid positions of each window (padding never wins). */
typedef struct {
    uint32_t layer, in_h, in_w, c, out_h, out_w;
    uint32_t k_h, k_w, stride_h, stride_w, pad_t, pad_l;
} hwcc_maxpool_params;

void hwcc_maxpool(const hwcc_maxpool_params *p, const int8_t *in, int8_t *out);

/* out = clamp(in, lo, hi), elementwise over n bytes. */
void hwcc_clamp(uint32_t n, int32_t lo, int32_t hi, const int8_t *in, int8_t *out);

/* Layout: NCHW (c, h, w) -> NHWC with c_pad channels (the extra ones 0), and back. */
void hwcc_to_nhwc(uint32_t c, uint32_t h, uint32_t w, uint32_t c_pad, const int8_t *in,
                  int8_t *out);
void hwcc_to_nchw(uint32_t c, uint32_t h, uint32_t w, uint32_t c_pad, const int8_t *in,
                  int8_t *out);

#ifdef __cplusplus
}
#endif

#endif /* HWCC_KERNELS_H */
