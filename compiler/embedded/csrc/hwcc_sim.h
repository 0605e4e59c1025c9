/* hwcc_sim.h - host-side controls of hwcc's accelerator simulator (hwcc_acc_sim.c).
 *
 * Only hosts and tests use this header; the generated device code sees hwcc_acc.h alone.
 * The simulator counts cycles with the model described at the top of hwcc_acc_sim.c. Work
 * is attributed to a layer by hwcc_acc_sync(layer): each sync closes the interval since the
 * previous one, so work issued after the last sync shows in no statistics until the next.
 */
#ifndef HWCC_SIM_H
#define HWCC_SIM_H

#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* Counters of one layer (or of the whole run). Instructions skipped for an error count
 * nothing. */
typedef struct {
    uint64_t cycles;      /* simulated cycles: the sum of the intervals between each sync
                             tagged with this layer and the sync before it */
    uint64_t gemm_cycles; /* cycles the MAC array was busy (the GEMM instructions' busy
                             cycles, without their fixed latency) */
    uint64_t mac_slots;   /* gemm_cycles * ROWS * COLS: the MACs the array could issue in
                             those cycles (useful MACs <= mac_slots) */
    uint64_t load_bytes;  /* bytes the DMA engine read from main memory: hwcc_acc_load data
                             plus the 9 * ROWS bytes of bias/mult/shift of every store */
    uint64_t store_bytes; /* bytes the DMA engine wrote to main memory (lines*cols*ROWS per
                             store) */
    uint64_t loads;       /* hwcc_acc_load instructions (hwcc_acc_zero is not counted) */
    uint64_t gemms;       /* hwcc_acc_gemm instructions */
    uint64_t stores;      /* hwcc_acc_store instructions */
} hwcc_sim_stats;

/* Zero everything: scratchpad, accumulators, scoreboard, engine times, statistics, error. */
void hwcc_sim_reset(void);

/* The simulated time of the last hwcc_acc_sync (0 before the first). */
uint64_t hwcc_sim_cycles(void);

/* Copies layer `layer`'s counters into *out and returns 1; returns 0 (and zeroes *out) if
 * that layer was never synced or is beyond the table. */
int hwcc_sim_layer_stats(uint32_t layer, hwcc_sim_stats *out);

/* The counters summed over every sync so far (equals the sum over all layers). */
void hwcc_sim_total_stats(hwcc_sim_stats *out);

/* The first error since the last reset (which instruction, what went out of range), or
 * NULL if none. The instruction that raised an error was skipped entirely. */
const char *hwcc_sim_error(void);

/* The highest layer id hwcc_acc_sync accepts. */
#define HWCC_SIM_MAX_LAYER 4095u

#ifdef __cplusplus
}
#endif

#endif /* HWCC_SIM_H */
