/* dump_format.h: the darknet-free half of darkpy-dump.
 *
 * Command-line parsing, the xorshift64* generator and the writer of a dump
 * directory (format darkpy-dump/1, see ../shared/golden/README.md): one raw
 * little-endian float32 file per tensor plus case.json listing them in order.
 * Nothing here includes darknet.h, so tests/test_tools.py compiles it with a
 * small test main (tools/dump_format_test.c) on machines without darknet.
 */
#ifndef DARKPY_DUMP_FORMAT_H
#define DARKPY_DUMP_FORMAT_H

#include <stddef.h>
#include <stdint.h>

/* ---- command line ------------------------------------------------------ */

typedef struct {
    const char *cfg;        /* positional: the darknet cfg */
    const char *weights;    /* --weights W; NULL: deterministic weights from --seed */
    const char *input;      /* --input raw.f32: batch*inputs floats */
    const char *image;      /* --image img.jpg */
    int letterbox;          /* --image-mode letterbox (1, default) | resize (0) */
    const char *truth;      /* --truth raw.f32: batch*truths floats */
    int boxes;              /* --boxes N: generated truth boxes per image (default 2) */
    int train;              /* run forward train=1, backward, update_network */
    int infer;              /* run forward train=0 */
    const char *out;        /* --out DIR (default "dump") */
    uint64_t seed;          /* --seed N (default 1) */
    const char *label;      /* --label, else $DARKPY_DUMP_LABEL, else the build.sh default */
    const char *opts;       /* --opts,  else $DARKPY_DUMP_OPTS,  else the build.sh default */
    int help;               /* -h / --help was given */
} dump_options;

/* Fill *o from argv.  Neither --train nor --infer means both (the golden
 * cases' four steps).  Returns 0, or -1 with a one-line message in err. */
int dump_parse_args(int argc, char **argv, dump_options *o, char *err, size_t errlen);

/* The usage text, for -h and for errors. */
extern const char dump_usage[];

/* ---- deterministic numbers ------------------------------------------- */

/* xorshift64* (Vigna): state must be non-zero; a zero seed is mapped to a
 * fixed non-zero constant so every --seed works. */
typedef struct { uint64_t s; } dump_rng;

void dump_rng_seed(dump_rng *r, uint64_t seed);
uint64_t dump_rng_next(dump_rng *r);
/* The top 24 bits as a float in [0, 1): exact, no rounding. */
float dump_rng_unit(dump_rng *r);
/* 2*unit - 1: uniform in [-1, 1), exact. */
float dump_rng_symmetric(dump_rng *r);

/* ---- the dump directory ---------------------------------------------- */

#define DUMP_MAX_DIMS 4
#define DUMP_NAME_LEN 64

typedef struct {
    char name[DUMP_NAME_LEN];
    int ndim;
    int shape[DUMP_MAX_DIMS];
    const char *stage;      /* "given", "forward", "backward", "update" (static strings) */
} dump_tensor;

typedef struct {
    char dir[4096];
    dump_tensor *tensors;
    int n, cap;
} dump_case;

/* Create dir (and its parents); start an empty tensor list.  0 or -1 (errno). */
int dump_case_open(dump_case *dc, const char *dir);
void dump_case_close(dump_case *dc);

/* Write DIR/<name>.f32 (count = product of shape floats, little-endian
 * whatever the host) and append the tensor to the manifest list. */
int dump_write_tensor(dump_case *dc, const char *name, const float *data,
                      int ndim, const int *shape, const char *stage);

/* Copy a file byte for byte into DIR/<name>. */
int dump_copy_file(dump_case *dc, const char *src, const char *name);

/* What case.json says besides the tensor list. */
typedef struct {
    const char *darknet;    /* e.g. "pjreddie/darknet@f6afaabc" */
    const char *compiler;   /* e.g. "gcc 12.2.0 x86-64" */
    const char *label;
    const char *opts;
} dump_build;

typedef struct {
    const char *cfg;        /* file name inside DIR */
    const char *weights;    /* file name inside DIR */
    int batch, c, h, w, layers;
    const char *steps[4];   /* NULL-terminated when fewer */
    int has_srand;          /* 1: srand(srand_seed) ran just before the training forward */
    unsigned srand_seed;    /* written as params "srand", so a checker can replay rand() (dropout, crop) */
} dump_params;

typedef struct {            /* provenance: written as case.json "generator" */
    const char *harness;
    uint64_t seed;
    const char *weights;    /* where the parameters came from */
    const char *input;
    const char *truth;      /* NULL: no truth */
    double learning_rate;   /* what update_network used (< 0: not run) */
    long long seen;         /* *net->seen before the training step */
} dump_generator;

/* Write DIR/case.json for kind "network". */
int dump_write_manifest(dump_case *dc, const dump_build *b, const dump_params *p,
                        const dump_generator *g);

/* Step names, as the golden cases spell them. */
extern const char DUMP_STEP_INFER[];
extern const char DUMP_STEP_TRAIN[];
extern const char DUMP_STEP_BACKWARD[];
extern const char DUMP_STEP_UPDATE[];

#endif
