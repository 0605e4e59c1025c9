/* hwcc_kernels.c - layer kernels of hwcc's embedded target (see hwcc_kernels.h).
 *
 * hwcc_conv2d tiles a convolution to the accelerator: an output tile of tile_h x tile_w
 * pixels and tile_ocb blocks of R channels needs an input patch (all input channels) and
 * tile_ocb weight blocks in the scratchpad, and tile_h * tile_w * tile_ocb accumulator rows.
 * With double_buffer, patches, weights and accumulators alternate between two buffers, so
 * the next tile's loads overlap this tile's GEMM and the previous tile's store. Whatever is
 * already in a buffer is not loaded again (a patch reused across channel tiles, weights
 * across pixel tiles). hwcc's tiler checks every tile fits; hwcc_conv2d trusts it.
 */
#include "hwcc_kernels.h"

#define HWCC_MIN(a, b) ((a) < (b) ? (a) : (b))
#define HWCC_MAX(a, b) ((a) > (b) ? (a) : (b))

static int32_t rqmul(int32_t v, int32_t m, uint32_t s)
{
    int64_t p = (int64_t)v * (int64_t)m + ((int64_t)1 << (s - 1u));
    return (int32_t)(p >> s);
}

static int8_t clamp8(int32_t v, int32_t lo, int32_t hi)
{
    return (int8_t)(v < lo ? lo : (v > hi ? hi : v));
}

typedef struct {
    uint32_t patch_h, patch_w, patch_bytes, wblk, wbytes;
    uint32_t in_base[2], w_base[2];
} hwcc_plan;

static void load_patch(const hwcc_conv_params *p, const hwcc_plan *pl, uint32_t base,
                       uint32_t oh0, uint32_t ow0, const int8_t *in)
{
    int32_t ih0 = (int32_t)(oh0 * p->stride_h) - (int32_t)p->pad_t;
    int32_t iw0 = (int32_t)(ow0 * p->stride_w) - (int32_t)p->pad_l;
    int32_t r0 = HWCC_MAX(0, ih0), r1 = HWCC_MIN((int32_t)p->in_h, ih0 + (int32_t)pl->patch_h);
    int32_t c0 = HWCC_MAX(0, iw0), c1 = HWCC_MIN((int32_t)p->in_w, iw0 + (int32_t)pl->patch_w);
    if (r0 > ih0 || r1 < ih0 + (int32_t)pl->patch_h || c0 > iw0 ||
        c1 < iw0 + (int32_t)pl->patch_w)
        hwcc_acc_zero(base, pl->patch_bytes);
    if (r1 > r0 && c1 > c0) {
        uint32_t dst = base + ((uint32_t)(r0 - ih0) * pl->patch_w + (uint32_t)(c0 - iw0)) *
                              p->in_c;
        hwcc_acc_load(dst, pl->patch_w * p->in_c,
                      in + ((uint32_t)r0 * p->in_w + (uint32_t)c0) * p->in_c,
                      (int32_t)(p->in_w * p->in_c), (uint32_t)(r1 - r0),
                      (uint32_t)(c1 - c0) * p->in_c);
    }
}

void hwcc_conv2d(const hwcc_conv_params *p, const int8_t *in, int8_t *out)
{
    const uint32_t R = HWCC_ACC_ROWS, C = HWCC_ACC_COLS;
    const uint32_t nbuf = p->double_buffer ? 2u : 1u;
    const uint32_t cob = p->out_c / R;
    const uint32_t nth = (p->out_h + p->tile_h - 1u) / p->tile_h;
    const uint32_t ntw = (p->out_w + p->tile_w - 1u) / p->tile_w;
    const uint32_t nto = (cob + p->tile_ocb - 1u) / p->tile_ocb;
    const uint32_t n_sp = nth * ntw;
    const uint32_t acc_tile = p->tile_h * p->tile_w * p->tile_ocb;
    const uint32_t outer_n = p->oc_outer ? nto : n_sp, inner_n = p->oc_outer ? n_sp : nto;
    hwcc_plan pl;
    int32_t in_tile[2] = {-1, -1}, w_tile[2] = {-1, -1};
    uint32_t in_next = 0, w_next = 0, tile_no = 0, a, b, ob;

    pl.patch_h = (p->tile_h - 1u) * p->stride_h + (p->k_h - 1u) * p->dil_h + 1u;
    pl.patch_w = (p->tile_w - 1u) * p->stride_w + (p->k_w - 1u) * p->dil_w + 1u;
    pl.patch_bytes = pl.patch_h * pl.patch_w * p->in_c;
    pl.wblk = p->k_h * p->k_w * (p->in_c / C) * R * C;
    pl.wbytes = p->tile_ocb * pl.wblk;
    pl.in_base[0] = 0u;
    pl.in_base[1] = pl.patch_bytes;
    pl.w_base[0] = nbuf * pl.patch_bytes;
    pl.w_base[1] = pl.w_base[0] + pl.wbytes;

    for (a = 0; a < outer_n; ++a) {
        for (b = 0; b < inner_n; ++b) {
            const uint32_t st = p->oc_outer ? b : a, ot = p->oc_outer ? a : b;
            const uint32_t oh0 = (st / ntw) * p->tile_h, ow0 = (st % ntw) * p->tile_w;
            const uint32_t lh = HWCC_MIN(p->tile_h, p->out_h - oh0);
            const uint32_t lw = HWCC_MIN(p->tile_w, p->out_w - ow0);
            const uint32_t ob0 = ot * p->tile_ocb, nob = HWCC_MIN(p->tile_ocb, cob - ob0);
            const uint32_t acc_base = (p->double_buffer ? (tile_no & 1u) : 0u) * acc_tile;
            uint32_t ib, wb;

            if (in_tile[0] == (int32_t)st) ib = 0;
            else if (nbuf > 1u && in_tile[1] == (int32_t)st) ib = 1;
            else {
                ib = in_next;
                in_next = (in_next + 1u) % nbuf;
                load_patch(p, &pl, pl.in_base[ib], oh0, ow0, in);
                in_tile[ib] = (int32_t)st;
            }
            if (w_tile[0] == (int32_t)ot) wb = 0;
            else if (nbuf > 1u && w_tile[1] == (int32_t)ot) wb = 1;
            else {
                wb = w_next;
                w_next = (w_next + 1u) % nbuf;
                hwcc_acc_load(pl.w_base[wb], pl.wbytes, p->weights + ob0 * pl.wblk,
                              (int32_t)pl.wbytes, 1u, nob * pl.wblk);
                w_tile[wb] = (int32_t)ot;
            }
            for (ob = 0; ob < nob; ++ob) {
                hwcc_acc_gemm_op g;
                g.acc_row = acc_base + ob * lh * lw;
                g.out_lines = lh;
                g.out_cols = lw;
                g.inp_addr = pl.in_base[ib];
                g.inp_line_stride = p->stride_h * pl.patch_w * p->in_c;
                g.inp_col_stride = p->stride_w * p->in_c;
                g.taps_h = p->k_h;
                g.taps_w = p->k_w;
                g.tap_h_stride = p->dil_h * pl.patch_w * p->in_c;
                g.tap_w_stride = p->dil_w * p->in_c;
                g.k_blocks = p->in_c / C;
                g.wgt_addr = pl.w_base[wb] + ob * pl.wblk;
                g.accumulate = 0;
                hwcc_acc_gemm(&g);
            }
            for (ob = 0; ob < nob; ++ob) {
                const uint32_t ch = (ob0 + ob) * R;
                hwcc_acc_store_op s;
                s.dst = out + (oh0 * p->out_w + ow0) * p->out_c + ch;
                s.dst_line_stride = (int32_t)(p->out_w * p->out_c);
                s.dst_col_stride = (int32_t)p->out_c;
                s.acc_row = acc_base + ob * lh * lw;
                s.lines = lh;
                s.cols = lw;
                s.bias = p->bias + ch;
                s.mult = p->mult + ch;
                s.shift = p->shift + ch;
                s.lo = p->lo;
                s.hi = p->hi;
                hwcc_acc_store(&s);
            }
            ++tile_no;
        }
    }
    hwcc_acc_sync(p->layer);
}

void hwcc_im2col(const hwcc_im2col_params *p, const int8_t *in, int8_t *out)
{
    uint32_t oh, ow, kh, kw, ch;
    for (oh = 0; oh < p->out_h; ++oh)
        for (ow = 0; ow < p->out_w; ++ow) {
            int8_t *dst = out + (oh * p->out_w + ow) * p->k_pad;
            uint32_t j = 0;
            for (kh = 0; kh < p->k_h; ++kh)
                for (kw = 0; kw < p->k_w; ++kw) {
                    int32_t ih = (int32_t)(oh * p->stride_h + kh * p->dil_h) - (int32_t)p->pad_t;
                    int32_t iw = (int32_t)(ow * p->stride_w + kw * p->dil_w) - (int32_t)p->pad_l;
                    int inside = ih >= 0 && iw >= 0 && ih < (int32_t)p->in_h &&
                                 iw < (int32_t)p->in_w;
                    const int8_t *src = in + ((uint32_t)(inside ? ih : 0) * p->in_w +
                                              (uint32_t)(inside ? iw : 0)) * p->in_c;
                    for (ch = 0; ch < p->c; ++ch)
                        dst[j++] = inside ? src[ch] : (int8_t)0;
                }
            for (; j < p->k_pad; ++j)
                dst[j] = 0;
        }
}

void hwcc_add(const hwcc_add_params *p, const int8_t *a, const int8_t *b, int8_t *out)
{
    uint32_t i;
    for (i = 0; i < p->n; ++i) {
        int32_t t = rqmul((int32_t)a[i] * 65536, p->mult_a, p->shift_a) +
                    rqmul((int32_t)b[i] * 65536, p->mult_b, p->shift_b);
        out[i] = clamp8((t + 32768) >> 16, p->lo, p->hi);
    }
    hwcc_acc_sync(p->layer);
}

void hwcc_mean(const hwcc_mean_params *p, const int8_t *in, int8_t *out)
{
    uint32_t c, i;
    for (c = 0; c < p->c; ++c) {
        int32_t sum = 0;
        for (i = 0; i < p->hw; ++i)
            sum += in[i * p->c + c];
        out[c] = clamp8(rqmul(sum, p->mult, p->shift), p->lo, p->hi);
    }
    hwcc_acc_sync(p->layer);
}

void hwcc_maxpool(const hwcc_maxpool_params *p, const int8_t *in, int8_t *out)
{
    uint32_t oh, ow, c, kh, kw;
    for (oh = 0; oh < p->out_h; ++oh)
        for (ow = 0; ow < p->out_w; ++ow)
            for (c = 0; c < p->c; ++c) {
                int32_t best = -128;
                for (kh = 0; kh < p->k_h; ++kh)
                    for (kw = 0; kw < p->k_w; ++kw) {
                        int32_t ih = (int32_t)(oh * p->stride_h + kh) - (int32_t)p->pad_t;
                        int32_t iw = (int32_t)(ow * p->stride_w + kw) - (int32_t)p->pad_l;
                        if (ih >= 0 && iw >= 0 && ih < (int32_t)p->in_h &&
                            iw < (int32_t)p->in_w) {
                            int32_t v = in[((uint32_t)ih * p->in_w + (uint32_t)iw) * p->c + c];
                            best = v > best ? v : best;
                        }
                    }
                out[(oh * p->out_w + ow) * p->c + c] = (int8_t)best;
            }
    hwcc_acc_sync(p->layer);
}

void hwcc_clamp(uint32_t n, int32_t lo, int32_t hi, const int8_t *in, int8_t *out)
{
    uint32_t i;
    for (i = 0; i < n; ++i)
        out[i] = clamp8(in[i], lo, hi);
}

void hwcc_to_nhwc(uint32_t c, uint32_t h, uint32_t w, uint32_t c_pad, const int8_t *in,
                  int8_t *out)
{
    uint32_t ch, i;
    for (i = 0; i < h * w; ++i)
        for (ch = 0; ch < c_pad; ++ch)
            out[i * c_pad + ch] = ch < c ? in[ch * h * w + i] : (int8_t)0;
}

void hwcc_to_nchw(uint32_t c, uint32_t h, uint32_t w, uint32_t c_pad, const int8_t *in,
                  int8_t *out)
{
    uint32_t ch, i;
    for (ch = 0; ch < c; ++ch)
        for (i = 0; i < h * w; ++i)
            out[ch * h * w + i] = in[i * c_pad + ch];
}
