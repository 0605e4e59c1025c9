/* hwcc_acc_sim.c - functional, cycle-counting simulator of the hwcc int8 accelerator.
 *
 * Implements hwcc_acc.h (the device interface) plus the host controls of hwcc_sim.h. Pure
 * C99, no heap, no floating point: the scratchpad, the accumulators and the scoreboard are
 * static arrays sized by hwcc_acc_config.h.
 *
 * Functional model: every instruction takes effect at once, in program order.
 *
 * Cycle model (deterministic). Three in-order engines, LOAD (hwcc_acc_load, hwcc_acc_zero),
 * GEMM and STORE, each with the time it is next free. Instructions of different engines
 * overlap; an instruction starts at max(its engine free, the end of every earlier
 * instruction it conflicts with). Conflicts are tracked by a scoreboard of the last write
 * end and last read end of every 64-byte scratchpad page and of every accumulator row:
 *   - load/zero wait for earlier writes and reads (gemm) of the pages they write (WAW, WAR);
 *   - gemm waits for the loads of the pages of its input footprint (lowest to highest
 *     byte read) and of its weight block, and for the stores still reading the accumulator
 *     rows it writes (WAR);
 *   - store waits for the gemms writing its accumulator rows.
 * Costs: a load moves HWCC_ACC_DMA_BYTES per cycle, each row rounded up to whole cycles,
 * plus HWCC_ACC_DMA_LATENCY; zero writes HWCC_ACC_COLS bytes per cycle (no latency); a gemm
 * issues one C-wide vector x R x C block per cycle (out pixels x taps x k_blocks cycles)
 * plus HWCC_ACC_GEMM_LATENCY; a store drains one accumulator row per cycle, or R bytes at
 * the DMA rate if slower, plus the DMA latency and the fetch of 9*R bytes of
 * bias/mult/shift. hwcc_acc_sync waits for all three engines and closes a layer's interval.
 */
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "hwcc_acc.h"
#include "hwcc_sim.h"

#define R_ HWCC_ACC_ROWS
#define C_ HWCC_ACC_COLS
#define SPAD_ HWCC_ACC_SPAD_BYTES
#define ACCR_ HWCC_ACC_ACC_ROWS

#if HWCC_ACC_ROWS < 1 || HWCC_ACC_COLS < 1 || HWCC_ACC_SPAD_BYTES < 1 || \
    HWCC_ACC_ACC_ROWS < 1 || HWCC_ACC_DMA_BYTES < 1 || HWCC_ACC_DMA_LATENCY < 0 || \
    HWCC_ACC_GEMM_LATENCY < 0
#error "hwcc_acc_config.h: every size must be positive and every latency non-negative"
#endif

#define PAGE_BYTES 64u
#define N_PAGES (((uint64_t)SPAD_ + PAGE_BYTES - 1u) / PAGE_BYTES)
#define N_LAYERS ((uint64_t)HWCC_SIM_MAX_LAYER + 1u)
/* Address arithmetic saturates here: far beyond any scratchpad, far below uint64 overflow. */
#define CAP ((uint64_t)1 << 40)

static int8_t spad[SPAD_];
static int32_t acc[ACCR_][R_];

static uint64_t page_wr[N_PAGES], page_rd[N_PAGES];
static uint64_t acc_wr[ACCR_], acc_rd[ACCR_];
static uint64_t load_free, gemm_free, store_free, last_sync;

static hwcc_sim_stats pending, total, layers[N_LAYERS];
static unsigned char layer_seen[N_LAYERS];

static char err_msg[256];
static int err_set;
static char scratch[256];
static size_t scratch_len;

/* ---- error messages (no stdio) ---------------------------------------------------- */

static void msg_s(const char *s) {
    while (*s && scratch_len + 1 < sizeof scratch) scratch[scratch_len++] = *s++;
    scratch[scratch_len] = '\0';
}

static void msg_u(uint64_t v) {
    char digits[24];
    int n = 0;
    do {
        digits[n++] = (char)('0' + (int)(v % 10u));
        v /= 10u;
    } while (v);
    while (n > 0 && scratch_len + 1 < sizeof scratch) scratch[scratch_len++] = digits[--n];
    scratch[scratch_len] = '\0';
}

static void msg_begin(const char *s) {
    scratch_len = 0;
    scratch[0] = '\0';
    msg_s(s);
}

static void msg_end(void) {
    if (!err_set) {
        memcpy(err_msg, scratch, scratch_len + 1);
        err_set = 1;
    }
}

static void fail(const char *s) {
    msg_begin(s);
    msg_end();
}

/* "<insn>: <what> at A + N beyond the S-byte scratchpad" */
static void fail_spad(const char *what, uint64_t addr, uint64_t bytes) {
    msg_begin(what);
    msg_s(" at ");
    msg_u(addr);
    msg_s(" + ");
    msg_u(bytes);
    msg_s(" beyond the ");
    msg_u((uint64_t)SPAD_);
    msg_s("-byte scratchpad");
    msg_end();
}

static void fail_acc(const char *insn, uint64_t row, uint64_t n) {
    msg_begin(insn);
    msg_s(": accumulator rows ");
    msg_u(row);
    msg_s(" + ");
    msg_u(n);
    msg_s(" beyond the ");
    msg_u((uint64_t)ACCR_);
    msg_s(" accumulator rows");
    msg_end();
}

/* ---- arithmetic helpers ----------------------------------------------------------- */

static uint64_t umax(uint64_t a, uint64_t b) { return a > b ? a : b; }

static uint64_t ceil_div(uint64_t a, uint64_t b) { return a / b + (a % b != 0u); }

/* min(a * b, CAP) without overflow. */
static uint64_t mulc(uint64_t a, uint64_t b) {
    if (a == 0u || b == 0u) return 0u;
    if (a > CAP / b) return CAP;
    return a * b > CAP ? CAP : a * b;
}

static uint64_t addc(uint64_t a, uint64_t b) { return a + b > CAP ? CAP : a + b; }

/* Two's-complement reinterpretation without implementation-defined conversions. */
static int32_t wrap32(uint32_t u) {
    if (u <= (uint32_t)INT32_MAX) return (int32_t)u;
    return (int32_t)(u - (uint32_t)0x80000000u) - INT32_MAX - 1;
}

static int8_t wrap8(int32_t v) {
    uint32_t u = (uint32_t)v & 0xffu;
    return (int8_t)(u < 128u ? (int)u : (int)u - 256);
}

/* rqmul(v, m, s) = (int32_t)((v * m + 2^(s-1)) >> s), arithmetic shift, s in 1..62. */
static int32_t rqmul(int32_t v, int32_t m, unsigned s) {
    int64_t x = (int64_t)v * m + ((int64_t)1 << (s - 1u)); /* |x| < 2^63 */
    int64_t q = x >= 0 ? x >> s : -1 - ((-1 - x) >> s);    /* floor(x / 2^s) */
    return wrap32((uint32_t)(uint64_t)q);
}

/* ---- scoreboard ------------------------------------------------------------------- */

/* Pages [addr, addr + bytes), bytes > 0, inside the scratchpad. */
static uint64_t pages_last_write(uint64_t addr, uint64_t bytes) {
    uint64_t p, t = 0;
    for (p = addr / PAGE_BYTES; p <= (addr + bytes - 1u) / PAGE_BYTES; ++p) t = umax(t, page_wr[p]);
    return t;
}

static uint64_t pages_last_access(uint64_t addr, uint64_t bytes) {
    uint64_t p, t = 0;
    for (p = addr / PAGE_BYTES; p <= (addr + bytes - 1u) / PAGE_BYTES; ++p)
        t = umax(t, umax(page_wr[p], page_rd[p]));
    return t;
}

static void pages_mark_write(uint64_t addr, uint64_t bytes, uint64_t end) {
    uint64_t p;
    for (p = addr / PAGE_BYTES; p <= (addr + bytes - 1u) / PAGE_BYTES; ++p)
        page_wr[p] = umax(page_wr[p], end);
}

static void pages_mark_read(uint64_t addr, uint64_t bytes, uint64_t end) {
    uint64_t p;
    for (p = addr / PAGE_BYTES; p <= (addr + bytes - 1u) / PAGE_BYTES; ++p)
        page_rd[p] = umax(page_rd[p], end);
}

/* ---- the device interface --------------------------------------------------------- */

void hwcc_acc_load(uint32_t spad_addr, uint32_t spad_stride, const int8_t *src,
                   int32_t src_stride, uint32_t rows, uint32_t row_bytes) {
    uint64_t i, start, end, cycles;
    if (src == NULL) {
        fail("hwcc_acc_load: src is NULL");
        return;
    }
    if (rows > 0u && row_bytes > 0u) {
        uint64_t last = addc(spad_addr, mulc(rows - 1u, spad_stride));
        if (addc(last, row_bytes) > (uint64_t)SPAD_) {
            fail_spad("hwcc_acc_load: row", last, row_bytes);
            return;
        }
    }
    start = load_free;
    if (row_bytes > 0u)
        for (i = 0; i < rows; ++i)
            start = umax(start, pages_last_access(spad_addr + i * spad_stride, row_bytes));
    cycles = (uint64_t)HWCC_ACC_DMA_LATENCY +
             (uint64_t)rows * ceil_div(row_bytes, (uint64_t)HWCC_ACC_DMA_BYTES);
    end = start + cycles;
    for (i = 0; i < rows && row_bytes > 0u; ++i) {
        uint64_t a = spad_addr + i * spad_stride;
        memcpy(&spad[(size_t)a], src + (ptrdiff_t)((int64_t)i * src_stride), row_bytes);
        pages_mark_write(a, row_bytes, end);
    }
    load_free = end;
    pending.load_bytes += (uint64_t)rows * row_bytes;
    pending.loads += 1u;
}

void hwcc_acc_zero(uint32_t spad_addr, uint32_t bytes) {
    uint64_t start = load_free, end;
    if ((uint64_t)spad_addr + bytes > (uint64_t)SPAD_) {
        fail_spad("hwcc_acc_zero: range", spad_addr, bytes);
        return;
    }
    if (bytes > 0u) start = umax(start, pages_last_access(spad_addr, bytes));
    end = start + ceil_div(bytes, (uint64_t)C_);
    if (bytes > 0u) {
        memset(&spad[spad_addr], 0, bytes);
        pages_mark_write(spad_addr, bytes, end);
    }
    load_free = end;
}

void hwcc_acc_gemm(const hwcc_acc_gemm_op *op) {
    uint64_t npix, busy, start, end, r, inp_bytes = 0, wgt_bytes = 0;
    uint32_t l, c, th, tw, kb, o, j;
    int reads;
    if (op == NULL) {
        fail("hwcc_acc_gemm: op is NULL");
        return;
    }
    npix = (uint64_t)op->out_lines * op->out_cols;
    if (addc(op->acc_row, npix) > (uint64_t)ACCR_) {
        fail_acc("hwcc_acc_gemm", op->acc_row, npix);
        return;
    }
    reads = npix > 0u && op->taps_h > 0u && op->taps_w > 0u && op->k_blocks > 0u;
    if (reads) {
        /* Strides are unsigned: the lowest byte read is inp_addr, the highest the last
         * pixel's last tap's last lane. */
        inp_bytes = addc(mulc(op->out_lines - 1u, op->inp_line_stride),
                         mulc(op->out_cols - 1u, op->inp_col_stride));
        inp_bytes = addc(inp_bytes, mulc(op->taps_h - 1u, op->tap_h_stride));
        inp_bytes = addc(inp_bytes, mulc(op->taps_w - 1u, op->tap_w_stride));
        inp_bytes = addc(inp_bytes, mulc((uint64_t)op->k_blocks - 1u, (uint64_t)C_));
        inp_bytes = addc(inp_bytes, (uint64_t)C_);
        if (addc(op->inp_addr, inp_bytes) > (uint64_t)SPAD_) {
            fail_spad("hwcc_acc_gemm: input footprint", op->inp_addr, inp_bytes);
            return;
        }
        wgt_bytes = mulc(mulc(mulc(op->taps_h, op->taps_w), op->k_blocks),
                         (uint64_t)R_ * (uint64_t)C_);
        if (addc(op->wgt_addr, wgt_bytes) > (uint64_t)SPAD_) {
            fail_spad("hwcc_acc_gemm: weight block", op->wgt_addr, wgt_bytes);
            return;
        }
    }

    /* Functional. */
    for (l = 0; l < op->out_lines; ++l) {
        for (c = 0; c < op->out_cols; ++c) {
            uint32_t sum[R_];
            size_t row = (size_t)op->acc_row + (size_t)l * op->out_cols + c;
            for (o = 0; o < (uint32_t)R_; ++o) sum[o] = op->accumulate ? (uint32_t)acc[row][o] : 0u;
            if (reads) {
                size_t base = (size_t)op->inp_addr + (size_t)l * op->inp_line_stride +
                              (size_t)c * op->inp_col_stride;
                for (th = 0; th < op->taps_h; ++th) {
                    for (tw = 0; tw < op->taps_w; ++tw) {
                        for (kb = 0; kb < op->k_blocks; ++kb) {
                            const int8_t *ip = &spad[base + (size_t)th * op->tap_h_stride +
                                                     (size_t)tw * op->tap_w_stride +
                                                     (size_t)kb * C_];
                            const int8_t *wp =
                                &spad[(size_t)op->wgt_addr +
                                      (((size_t)th * op->taps_w + tw) * op->k_blocks + kb) *
                                          (size_t)R_ * (size_t)C_];
                            for (o = 0; o < (uint32_t)R_; ++o) {
                                uint32_t s = sum[o];
                                for (j = 0; j < (uint32_t)C_; ++j)
                                    s += (uint32_t)((int32_t)ip[j] * (int32_t)wp[o * C_ + j]);
                                sum[o] = s;
                            }
                        }
                    }
                }
            }
            for (o = 0; o < (uint32_t)R_; ++o) acc[row][o] = wrap32(sum[o]);
        }
    }

    /* Timing. */
    busy = reads ? npix * op->taps_h * op->taps_w * op->k_blocks : 0u;
    start = gemm_free;
    if (reads) {
        start = umax(start, pages_last_write(op->inp_addr, inp_bytes));
        start = umax(start, pages_last_write(op->wgt_addr, wgt_bytes));
    }
    for (r = op->acc_row; r < op->acc_row + npix; ++r) start = umax(start, acc_rd[r]);
    end = start + (uint64_t)HWCC_ACC_GEMM_LATENCY + busy;
    if (reads) {
        pages_mark_read(op->inp_addr, inp_bytes, end);
        pages_mark_read(op->wgt_addr, wgt_bytes, end);
    }
    for (r = op->acc_row; r < op->acc_row + npix; ++r) acc_wr[r] = umax(acc_wr[r], end);
    gemm_free = end;
    pending.gemm_cycles += busy;
    pending.mac_slots += busy * (uint64_t)R_ * (uint64_t)C_;
    pending.gemms += 1u;
}

void hwcc_acc_store(const hwcc_acc_store_op *op) {
    uint64_t npix, start, end, r, cycles;
    uint32_t l, c, o;
    if (op == NULL) {
        fail("hwcc_acc_store: op is NULL");
        return;
    }
    if (op->dst == NULL) {
        fail("hwcc_acc_store: dst is NULL");
        return;
    }
    if (op->bias == NULL || op->mult == NULL || op->shift == NULL) {
        fail("hwcc_acc_store: bias, mult or shift is NULL");
        return;
    }
    npix = (uint64_t)op->lines * op->cols;
    if (addc(op->acc_row, npix) > (uint64_t)ACCR_) {
        fail_acc("hwcc_acc_store", op->acc_row, npix);
        return;
    }
    for (o = 0; o < (uint32_t)R_; ++o) {
        if (op->shift[o] < 1u || op->shift[o] > 62u) {
            msg_begin("hwcc_acc_store: shift[");
            msg_u(o);
            msg_s("] = ");
            msg_u(op->shift[o]);
            msg_s(" outside 1..62");
            msg_end();
            return;
        }
    }

    /* Functional. */
    for (l = 0; l < op->lines; ++l) {
        for (c = 0; c < op->cols; ++c) {
            size_t row = (size_t)op->acc_row + (size_t)l * op->cols + c;
            int8_t *d = op->dst + (ptrdiff_t)((int64_t)l * op->dst_line_stride +
                                              (int64_t)c * op->dst_col_stride);
            for (o = 0; o < (uint32_t)R_; ++o) {
                int32_t v = wrap32((uint32_t)acc[row][o] + (uint32_t)op->bias[o]);
                v = rqmul(v, op->mult[o], op->shift[o]);
                if (v < op->lo) v = op->lo;
                if (v > op->hi) v = op->hi;
                d[o] = wrap8(v);
            }
        }
    }

    /* Timing. */
    cycles = (uint64_t)HWCC_ACC_DMA_LATENCY +
             umax(npix, ceil_div(npix * (uint64_t)R_, (uint64_t)HWCC_ACC_DMA_BYTES)) +
             ceil_div(9u * (uint64_t)R_, (uint64_t)HWCC_ACC_DMA_BYTES);
    start = store_free;
    for (r = op->acc_row; r < op->acc_row + npix; ++r) start = umax(start, acc_wr[r]);
    end = start + cycles;
    for (r = op->acc_row; r < op->acc_row + npix; ++r) acc_rd[r] = umax(acc_rd[r], end);
    store_free = end;
    pending.store_bytes += npix * (uint64_t)R_;
    pending.load_bytes += 9u * (uint64_t)R_;
    pending.stores += 1u;
}

static void stats_add(hwcc_sim_stats *a, const hwcc_sim_stats *b) {
    a->cycles += b->cycles;
    a->gemm_cycles += b->gemm_cycles;
    a->mac_slots += b->mac_slots;
    a->load_bytes += b->load_bytes;
    a->store_bytes += b->store_bytes;
    a->loads += b->loads;
    a->gemms += b->gemms;
    a->stores += b->stores;
}

void hwcc_acc_sync(uint32_t layer) {
    uint64_t t;
    if ((uint64_t)layer >= N_LAYERS) {
        msg_begin("hwcc_acc_sync: layer ");
        msg_u(layer);
        msg_s(" beyond the simulator's ");
        msg_u(HWCC_SIM_MAX_LAYER);
        msg_end();
        return;
    }
    t = umax(load_free, umax(gemm_free, store_free));
    load_free = gemm_free = store_free = t;
    pending.cycles = t - last_sync;
    stats_add(&layers[layer], &pending);
    stats_add(&total, &pending);
    layer_seen[layer] = 1u;
    memset(&pending, 0, sizeof pending);
    last_sync = t;
}

/* ---- host controls (hwcc_sim.h) --------------------------------------------------- */

void hwcc_sim_reset(void) {
    memset(spad, 0, sizeof spad);
    memset(acc, 0, sizeof acc);
    memset(page_wr, 0, sizeof page_wr);
    memset(page_rd, 0, sizeof page_rd);
    memset(acc_wr, 0, sizeof acc_wr);
    memset(acc_rd, 0, sizeof acc_rd);
    load_free = gemm_free = store_free = last_sync = 0u;
    memset(&pending, 0, sizeof pending);
    memset(&total, 0, sizeof total);
    memset(layers, 0, sizeof layers);
    memset(layer_seen, 0, sizeof layer_seen);
    err_msg[0] = '\0';
    err_set = 0;
}

uint64_t hwcc_sim_cycles(void) { return last_sync; }

int hwcc_sim_layer_stats(uint32_t layer, hwcc_sim_stats *out) {
    if ((uint64_t)layer >= N_LAYERS || !layer_seen[layer]) {
        if (out) memset(out, 0, sizeof *out);
        return 0;
    }
    if (out) *out = layers[layer];
    return 1;
}

void hwcc_sim_total_stats(hwcc_sim_stats *out) {
    if (out) *out = total;
}

const char *hwcc_sim_error(void) { return err_set ? err_msg : NULL; }
