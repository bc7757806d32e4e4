/* dump_format_test: a small driver of dump_format.c for tests/test_tools.py.
 *
 *   dump_format_test args ARG...   parse ARG... as darkpy-dump would; print the
 *                                  options as key=value lines, or "error: ..." (exit 2)
 *   dump_format_test rng SEED N    N xorshift64* outputs (hex), then N unit floats
 *                                  and N symmetric floats of fresh generators (%a)
 *   dump_format_test case DIR      write a small case: three tensors and case.json
 *                                  whose strings need JSON escaping
 * No darknet needed.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "dump_format.h"

static const char *str(const char *s)
{
    return s ? s : "(null)";
}

static int cmd_args(int argc, char **argv)
{
    dump_options o;
    char err[256];
    if (dump_parse_args(argc, argv, &o, err, sizeof(err))) {
        printf("error: %s\n", err);
        return 2;
    }
    printf("cfg=%s\nweights=%s\ninput=%s\nimage=%s\nletterbox=%d\ntruth=%s\nboxes=%d\n",
           str(o.cfg), str(o.weights), str(o.input), str(o.image), o.letterbox, str(o.truth),
           o.boxes);
    printf("train=%d\ninfer=%d\nout=%s\nseed=%llu\nlabel=%s\nopts=%s\nhelp=%d\n",
           o.train, o.infer, str(o.out), (unsigned long long)o.seed, str(o.label), str(o.opts),
           o.help);
    return 0;
}

static int cmd_rng(const char *seed_s, const char *n_s)
{
    unsigned long long seed = strtoull(seed_s, NULL, 0);
    int n = atoi(n_s);
    dump_rng r;
    dump_rng_seed(&r, seed);
    for (int i = 0; i < n; ++i) printf("%016llx\n", (unsigned long long)dump_rng_next(&r));
    dump_rng_seed(&r, seed);
    for (int i = 0; i < n; ++i) printf("%a\n", (double)dump_rng_unit(&r));
    dump_rng_seed(&r, seed);
    for (int i = 0; i < n; ++i) printf("%a\n", (double)dump_rng_symmetric(&r));
    return 0;
}

static int cmd_case(const char *dir)
{
    dump_case dc;
    if (dump_case_open(&dc, dir)) { perror(dir); return 1; }
    /* signed zero, infinities, NaN, a denormal: every bit must survive */
    float input[6] = {0.5f, -0.0f, INFINITY, -INFINITY, NAN, 1e-45f};
    int ishape[4] = {2, 1, 1, 3};
    float cost = 42.25f;
    int one = 1;
    float w[4] = {1, 2, 3, 4};
    int wshape[4] = {1, 1, 2, 2};
    if (dump_write_tensor(&dc, "input", input, 4, ishape, "given") ||
        dump_write_tensor(&dc, "layer00_weights_after", w, 4, wshape, "update") ||
        dump_write_tensor(&dc, "cost", &cost, 1, &one, "forward")) {
        perror("write");
        return 1;
    }
    dump_build b = {"someone/darknet@0123abcd", "gcc 12.2.0 x86-64", "str\"ict\\", "-O2\n-x"};
    dump_params p = {"network.cfg", "weights.weights", 2, 1, 1, 3, 1,
                     {DUMP_STEP_INFER, DUMP_STEP_TRAIN, NULL, NULL}, 1, 4294967295u};
    dump_generator g = {"test", 18446744073709551615ull, "w", "i", NULL, 0.001f, 7};
    if (dump_write_manifest(&dc, &b, &p, &g)) { perror("manifest"); return 1; }
    dump_case_close(&dc);
    return 0;
}

int main(int argc, char **argv)
{
    if (argc >= 2 && !strcmp(argv[1], "args")) return cmd_args(argc - 1, argv + 1);
    if (argc == 4 && !strcmp(argv[1], "rng")) return cmd_rng(argv[2], argv[3]);
    if (argc == 3 && !strcmp(argv[1], "case")) return cmd_case(argv[2]);
    fprintf(stderr, "usage: dump_format_test args ARG... | rng SEED N | case DIR\n");
    return 2;
}
