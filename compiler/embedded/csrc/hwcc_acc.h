/* hwcc_acc.h - the accelerator interface that hwcc's embedded C calls.
 *
 * The device: an int8 x int8 -> int32 MAC array of HWCC_ACC_ROWS x HWCC_ACC_COLS (R output
 * channels x C reduction lanes), a scratchpad of HWCC_ACC_SPAD_BYTES (int8 inputs and
 * weights), an accumulator buffer of HWCC_ACC_ACC_ROWS rows of R int32, a DMA engine moving
 * HWCC_ACC_DMA_BYTES bytes per cycle between main memory and the scratchpad, and a scalar
 * int32 ALU on the store path for requantization. No floating point anywhere.
 *
 * Three engines run concurrently, as in VTA (LOAD / GEMM / STORE): an instruction starts
 * when its engine is free and the instructions it depends on (through the scratchpad bytes
 * or accumulator rows it reads or overwrites) are done. Functionally every call takes effect
 * at once, in program order; hwcc_acc_sync waits for all of them.
 *
 * A chip vendor implements these functions for the real device; hwcc ships a functional,
 * cycle-counting simulator of them (hwcc_acc_sim.c). The geometry comes from
 * hwcc_acc_config.h, generated per artifact.
 */
#ifndef HWCC_ACC_H
#define HWCC_ACC_H

#include <stdint.h>

#include "hwcc_acc_config.h"

#ifdef __cplusplus
extern "C" {
#endif

/* rqmul(v, m, s) = (int32_t)(((int64_t)v * m + ((int64_t)1 << (s - 1))) >> s), s in 1..62,
 * arithmetic shift (rounds half up). The requantization of every int32 value hwcc makes. */

/* DMA main memory -> scratchpad, 2-D: `rows` rows of `row_bytes` bytes; row i is read from
 * src + i * src_stride and written at spad_addr + i * spad_stride. */
void hwcc_acc_load(uint32_t spad_addr, uint32_t spad_stride, const int8_t *src,
                   int32_t src_stride, uint32_t rows, uint32_t row_bytes);

/* Zero `bytes` scratchpad bytes from spad_addr (the load engine writes C bytes per cycle). */
void hwcc_acc_zero(uint32_t spad_addr, uint32_t bytes);

/* One GEMM instruction: a two-level loop over output pixels and a two-level loop over
 * reduction taps (VTA's micro-op loops), one C-wide input vector times one R x C weight
 * block per cycle. Output pixel (l, c) for l < out_lines, c < out_cols is accumulator row
 * acc_row + l * out_cols + c; for each o < R:
 *
 *   acc[row][o] = (accumulate ? acc[row][o] : 0)
 *     + sum_{th < taps_h, tw < taps_w, kb < k_blocks, j < C}
 *         spad[inp_addr + l*inp_line_stride + c*inp_col_stride
 *              + th*tap_h_stride + tw*tap_w_stride + kb*C + j]
 *       * spad[wgt_addr + (((th*taps_w + tw)*k_blocks + kb)*R + o)*C + j]
 *
 * (both operands int8, products and sums int32, wrapping). */
typedef struct {
    uint32_t acc_row;
    uint32_t out_lines, out_cols;
    uint32_t inp_addr, inp_line_stride, inp_col_stride;
    uint32_t taps_h, taps_w, tap_h_stride, tap_w_stride;
    uint32_t k_blocks;
    uint32_t wgt_addr;
    uint32_t accumulate;
} hwcc_acc_gemm_op;

void hwcc_acc_gemm(const hwcc_acc_gemm_op *op);

/* Accumulators -> main memory through the ALU: for l < lines, c < cols, o < R, with
 * row = acc_row + l * cols + c:
 *
 *   v = rqmul(acc[row][o] + bias[o], mult[o], shift[o]);  v = min(max(v, lo), hi);
 *   dst[l * dst_line_stride + c * dst_col_stride + o] = (int8_t)v
 *
 * bias, mult and shift hold R entries each (read from main memory by the DMA engine). */
typedef struct {
    int8_t *dst;
    int32_t dst_line_stride, dst_col_stride;
    uint32_t acc_row, lines, cols;
    const int32_t *bias, *mult;
    const uint8_t *shift;
    int32_t lo, hi;
} hwcc_acc_store_op;

void hwcc_acc_store(const hwcc_acc_store_op *op);

/* Wait until every engine is idle. `layer` tags the work since the previous sync (the
 * simulator's per-layer counters; a device may ignore it). */
void hwcc_acc_sync(uint32_t layer);

#ifdef __cplusplus
}
#endif

#endif /* HWCC_ACC_H */
