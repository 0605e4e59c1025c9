/* hwcc_sim_main.c - run an embedded artifact's model on the simulator, from a command line.
 *
 *   cc -std=c99 -O2 -I. model.c hwcc_kernels.c hwcc_acc_sim.c hwcc_sim_main.c -o model_sim
 *   ./model_sim input.bin output.bin
 *
 * input.bin holds HWCC_MODEL_INPUT_BYTES int8 values (see model.h); output.bin receives
 * HWCC_MODEL_OUTPUT_BYTES. Prints the simulated cycles and DMA bytes. Builds for any
 * hosted C99 target (e.g. riscv64-linux-gnu-gcc -static, then qemu-riscv64-static).
 */
#include <stdio.h>

#include "hwcc_sim.h"
#include "model.h"

static union {
    int64_t align;
    int8_t bytes[HWCC_MODEL_ARENA_BYTES > 0 ? HWCC_MODEL_ARENA_BYTES : 1];
} arena;
static int8_t input[HWCC_MODEL_INPUT_BYTES];
static int8_t output[HWCC_MODEL_OUTPUT_BYTES];

int main(int argc, char **argv)
{
    FILE *f;
    hwcc_sim_stats st;
    const char *err;
    if (argc != 3) {
        fprintf(stderr, "usage: %s INPUT.bin OUTPUT.bin\n", argv[0]);
        return 2;
    }
    f = fopen(argv[1], "rb");
    if (!f || fread(input, 1, sizeof input, f) != sizeof input) {
        fprintf(stderr, "cannot read %u bytes from %s\n", (unsigned)sizeof input, argv[1]);
        return 2;
    }
    fclose(f);
    hwcc_sim_reset();
    hwcc_model_run(input, output, arena.bytes);
    err = hwcc_sim_error();
    if (err) {
        fprintf(stderr, "simulator: %s\n", err);
        return 1;
    }
    f = fopen(argv[2], "wb");
    if (!f || fwrite(output, 1, sizeof output, f) != sizeof output) {
        fprintf(stderr, "cannot write %s\n", argv[2]);
        return 2;
    }
    fclose(f);
    hwcc_sim_total_stats(&st);
    printf("cycles %llu load_bytes %llu store_bytes %llu\n", (unsigned long long)st.cycles,
           (unsigned long long)st.load_bytes, (unsigned long long)st.store_bytes);
    return 0;
}
