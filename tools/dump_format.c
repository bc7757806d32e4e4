/* dump_format.c: argument parsing, xorshift64* and the darkpy-dump/1 writer.
 * No darknet here (see dump_format.h). */
#include "dump_format.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/types.h>

/* Defaults baked in by tools/build.sh (-D...); overridable at run time. */
#ifndef DARKPY_DUMP_DEFAULT_LABEL
#define DARKPY_DUMP_DEFAULT_LABEL ""
#endif
#ifndef DARKPY_DUMP_DEFAULT_OPTS
#define DARKPY_DUMP_DEFAULT_OPTS "unknown"
#endif

const char DUMP_STEP_INFER[] = "forward train=0 (prefix infer_)";
const char DUMP_STEP_TRAIN[] = "forward train=1";
const char DUMP_STEP_BACKWARD[] = "backward";
const char DUMP_STEP_UPDATE[] = "update_network (learning rate, momentum, decay from [net])";

const char dump_usage[] =
    "usage: darkpy-dump CFG [--weights W] [--input raw.f32 | --image img.jpg]\n"
    "                       [--image-mode letterbox|resize] [--truth raw.f32] [--boxes N]\n"
    "                       [--train] [--infer] [--out DIR] [--seed N]\n"
    "                       [--label L] [--opts 'darknet OPTS']\n"
    "Runs darknet on CFG and writes every layer's tensors as a darkpy-dump/1 case in DIR.\n"
    "  --weights W    darknet .weights to load (default: deterministic xorshift64* weights)\n"
    "  --input F      raw little-endian float32 input, batch*inputs values\n"
    "  --image F      an image, letterboxed (default) or resized to the net's w x h,\n"
    "                 copied into every image of the batch\n"
    "  --truth F      raw float32 truth, batch*truths values (default: --boxes random\n"
    "                 boxes per image for yolo/region/detection, else a one-hot class)\n"
    "  --train        forward train=1, backward, update_network\n"
    "  --infer        forward train=0 (neither flag: both, inference first)\n"
    "  --out DIR      output directory (default ./dump)\n"
    "  --seed N       seed of the generated weights/input/truth (default 1)\n"
    "  --label, --opts  how darknet was built, for case.json (also $DARKPY_DUMP_LABEL,\n"
    "                 $DARKPY_DUMP_OPTS)\n";

static int fail(char *err, size_t errlen, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    if (err && errlen) vsnprintf(err, errlen, fmt, ap);
    va_end(ap);
    return -1;
}

static int parse_u64(const char *s, uint64_t *v)
{
    char *end;
    if (!s || !*s || *s == '-') return -1;
    errno = 0;
    unsigned long long x = strtoull(s, &end, 0);
    if (errno || *end) return -1;
    *v = (uint64_t)x;
    return 0;
}

int dump_parse_args(int argc, char **argv, dump_options *o, char *err, size_t errlen)
{
    memset(o, 0, sizeof(*o));
    o->out = "dump";
    o->seed = 1;
    o->boxes = 2;
    o->letterbox = 1;
    const char *env;
    o->label = (env = getenv("DARKPY_DUMP_LABEL")) ? env : DARKPY_DUMP_DEFAULT_LABEL;
    o->opts = (env = getenv("DARKPY_DUMP_OPTS")) ? env : DARKPY_DUMP_DEFAULT_OPTS;

    for (int i = 1; i < argc; ++i) {
        const char *a = argv[i];
        /* options that take a value */
        const char **slot = NULL;
        if (!strcmp(a, "--weights")) slot = &o->weights;
        else if (!strcmp(a, "--input")) slot = &o->input;
        else if (!strcmp(a, "--image")) slot = &o->image;
        else if (!strcmp(a, "--truth")) slot = &o->truth;
        else if (!strcmp(a, "--out")) slot = &o->out;
        else if (!strcmp(a, "--label")) slot = &o->label;
        else if (!strcmp(a, "--opts")) slot = &o->opts;
        if (slot) {
            if (i + 1 >= argc) return fail(err, errlen, "%s needs a value", a);
            *slot = argv[++i];
            continue;
        }
        if (!strcmp(a, "--seed")) {
            if (i + 1 >= argc) return fail(err, errlen, "--seed needs a value");
            if (parse_u64(argv[++i], &o->seed))
                return fail(err, errlen, "--seed: not a non-negative integer: %s", argv[i]);
        } else if (!strcmp(a, "--boxes")) {
            uint64_t n;
            if (i + 1 >= argc) return fail(err, errlen, "--boxes needs a value");
            if (parse_u64(argv[++i], &n) || n > 90)
                return fail(err, errlen, "--boxes: expected 0..90, got %s", argv[i]);
            o->boxes = (int)n;
        } else if (!strcmp(a, "--image-mode")) {
            if (i + 1 >= argc) return fail(err, errlen, "--image-mode needs a value");
            const char *m = argv[++i];
            if (!strcmp(m, "letterbox")) o->letterbox = 1;
            else if (!strcmp(m, "resize")) o->letterbox = 0;
            else return fail(err, errlen, "--image-mode: expected letterbox or resize, got %s", m);
        } else if (!strcmp(a, "--train")) {
            o->train = 1;
        } else if (!strcmp(a, "--infer")) {
            o->infer = 1;
        } else if (!strcmp(a, "-h") || !strcmp(a, "--help")) {
            o->help = 1;
            return 0;
        } else if (a[0] == '-' && a[1] != '\0') {
            return fail(err, errlen, "unknown option %s", a);
        } else if (!o->cfg) {
            o->cfg = a;
        } else {
            return fail(err, errlen, "unexpected argument %s (the cfg is %s)", a, o->cfg);
        }
    }
    if (!o->cfg) return fail(err, errlen, "missing CFG");
    if (o->input && o->image) return fail(err, errlen, "--input and --image exclude each other");
    if (!o->train && !o->infer) o->train = o->infer = 1;
    if (o->truth && !o->train) return fail(err, errlen, "--truth needs --train");
    return 0;
}

/* ---- xorshift64* ------------------------------------------------------ */

void dump_rng_seed(dump_rng *r, uint64_t seed)
{
    r->s = seed ? seed : 0x9E3779B97F4A7C15ull;
}

uint64_t dump_rng_next(dump_rng *r)
{
    uint64_t x = r->s;
    x ^= x >> 12;
    x ^= x << 25;
    x ^= x >> 27;
    r->s = x;
    return x * 0x2545F4914F6CDD1Dull;
}

float dump_rng_unit(dump_rng *r)
{
    /* 24 bits fit a float's significand: k * 2^-24 is exact. */
    return (float)(dump_rng_next(r) >> 40) * (1.0f / 16777216.0f);
}

float dump_rng_symmetric(dump_rng *r)
{
    /* 2u - 1 is exact for u = k * 2^-24. */
    return 2.0f * dump_rng_unit(r) - 1.0f;
}

/* ---- files ------------------------------------------------------------ */

static int mkdir_p(const char *path)
{
    char buf[4096];
    size_t n = strlen(path);
    if (n == 0 || n >= sizeof(buf)) { errno = ENAMETOOLONG; return -1; }
    memcpy(buf, path, n + 1);
    for (size_t i = 1; i <= n; ++i) {
        if (buf[i] == '/' || buf[i] == '\0') {
            char c = buf[i];
            buf[i] = '\0';
            if (mkdir(buf, 0777) && errno != EEXIST) return -1;
            buf[i] = c;
        }
    }
    struct stat st;
    if (stat(path, &st) || !S_ISDIR(st.st_mode)) { errno = ENOTDIR; return -1; }
    return 0;
}

static int join(char *out, size_t outlen, const char *dir, const char *name, const char *ext)
{
    int k = snprintf(out, outlen, "%s/%s%s", dir, name, ext);
    if (k < 0 || (size_t)k >= outlen) { errno = ENAMETOOLONG; return -1; }
    return 0;
}

int dump_case_open(dump_case *dc, const char *dir)
{
    memset(dc, 0, sizeof(*dc));
    if (strlen(dir) >= sizeof(dc->dir)) { errno = ENAMETOOLONG; return -1; }
    strcpy(dc->dir, dir);
    return mkdir_p(dir);
}

void dump_case_close(dump_case *dc)
{
    free(dc->tensors);
    dc->tensors = NULL;
    dc->n = dc->cap = 0;
}

int dump_write_tensor(dump_case *dc, const char *name, const float *data,
                      int ndim, const int *shape, const char *stage)
{
    if (ndim < 1 || ndim > DUMP_MAX_DIMS || strlen(name) >= DUMP_NAME_LEN) {
        errno = EINVAL;
        return -1;
    }
    size_t count = 1;
    for (int k = 0; k < ndim; ++k) {
        if (shape[k] < 0) { errno = EINVAL; return -1; }
        count *= (size_t)shape[k];
    }
    char path[4200];
    if (join(path, sizeof(path), dc->dir, name, ".f32")) return -1;
    FILE *fp = fopen(path, "wb");
    if (!fp) return -1;
    /* Little-endian bytes of each float's bit pattern, whatever the host order. */
    unsigned char buf[4096];
    size_t used = 0;
    for (size_t i = 0; i < count; ++i) {
        uint32_t bits;
        memcpy(&bits, &data[i], 4);
        buf[used++] = (unsigned char)(bits);
        buf[used++] = (unsigned char)(bits >> 8);
        buf[used++] = (unsigned char)(bits >> 16);
        buf[used++] = (unsigned char)(bits >> 24);
        if (used == sizeof(buf)) {
            if (fwrite(buf, 1, used, fp) != used) { fclose(fp); return -1; }
            used = 0;
        }
    }
    if (used && fwrite(buf, 1, used, fp) != used) { fclose(fp); return -1; }
    if (fclose(fp)) return -1;

    if (dc->n == dc->cap) {
        int cap = dc->cap ? 2 * dc->cap : 64;
        dump_tensor *t = realloc(dc->tensors, (size_t)cap * sizeof(*t));
        if (!t) return -1;
        dc->tensors = t;
        dc->cap = cap;
    }
    dump_tensor *t = &dc->tensors[dc->n++];
    memset(t, 0, sizeof(*t));
    strcpy(t->name, name);
    t->ndim = ndim;
    memcpy(t->shape, shape, (size_t)ndim * sizeof(int));
    t->stage = stage;
    return 0;
}

int dump_copy_file(dump_case *dc, const char *src, const char *name)
{
    char path[4200];
    if (join(path, sizeof(path), dc->dir, name, "")) return -1;
    FILE *in = fopen(src, "rb");
    if (!in) return -1;
    FILE *out = fopen(path, "wb");
    if (!out) { fclose(in); return -1; }
    char buf[65536];
    size_t k;
    int rc = 0;
    while ((k = fread(buf, 1, sizeof(buf), in)) > 0)
        if (fwrite(buf, 1, k, out) != k) { rc = -1; break; }
    if (ferror(in)) rc = -1;
    fclose(in);
    if (fclose(out)) rc = -1;
    return rc;
}

/* ---- case.json -------------------------------------------------------- */

static void json_string(FILE *fp, const char *s)
{
    fputc('"', fp);
    for (const unsigned char *p = (const unsigned char *)(s ? s : ""); *p; ++p) {
        if (*p == '"' || *p == '\\') fprintf(fp, "\\%c", *p);
        else if (*p == '\n') fputs("\\n", fp);
        else if (*p == '\t') fputs("\\t", fp);
        else if (*p < 0x20) fprintf(fp, "\\u%04x", *p);
        else fputc(*p, fp);
    }
    fputc('"', fp);
}

int dump_write_manifest(dump_case *dc, const dump_build *b, const dump_params *p,
                        const dump_generator *g)
{
    char path[4200];
    if (join(path, sizeof(path), dc->dir, "case.json", "")) return -1;
    FILE *fp = fopen(path, "w");
    if (!fp) return -1;

    fputs("{\n  \"format\": \"darkpy-dump/1\",\n  \"kind\": \"network\",\n", fp);
    fputs("  \"build\": {\"darknet\": ", fp);
    json_string(fp, b->darknet);
    fputs(", \"compiler\": ", fp);
    json_string(fp, b->compiler);
    fputs(", \"label\": ", fp);
    json_string(fp, b->label);
    fputs(", \"opts\": ", fp);
    json_string(fp, b->opts);
    fputs("},\n", fp);

    fputs("  \"params\": {\"cfg\": ", fp);
    json_string(fp, p->cfg);
    fputs(", \"weights\": ", fp);
    json_string(fp, p->weights);
    fprintf(fp, ", \"batch\": %d, \"c\": %d, \"h\": %d, \"w\": %d, \"layers\": %d,\n",
            p->batch, p->c, p->h, p->w, p->layers);
    fputs("             \"steps\": [", fp);
    for (int k = 0; k < 4 && p->steps[k]; ++k) {
        if (k) fputs(", ", fp);
        json_string(fp, p->steps[k]);
    }
    fputs("]", fp);
    if (p->has_srand) fprintf(fp, ", \"srand\": %u", p->srand_seed);
    fputs("},\n", fp);

    if (g) {
        fputs("  \"generator\": {\"harness\": ", fp);
        json_string(fp, g->harness);
        fprintf(fp, ", \"seed\": %llu, \"weights\": ", (unsigned long long)g->seed);
        json_string(fp, g->weights);
        fputs(", \"input\": ", fp);
        json_string(fp, g->input);
        fputs(", \"truth\": ", fp);
        if (g->truth) json_string(fp, g->truth);
        else fputs("null", fp);
        fprintf(fp, ", \"seen\": %lld, \"learning_rate\": ", g->seen);
        /* %.9g round-trips a float; the rate is a float in darknet. */
        if (g->learning_rate >= 0 && g->learning_rate < 1e300) fprintf(fp, "%.9g", g->learning_rate);
        else fputs("null", fp);
        fputs("},\n", fp);
    }

    fputs("  \"tensors\": [\n", fp);
    for (int i = 0; i < dc->n; ++i) {
        const dump_tensor *t = &dc->tensors[i];
        fputs("    {\"name\": ", fp);
        json_string(fp, t->name);
        char file[DUMP_NAME_LEN + 4];
        snprintf(file, sizeof(file), "%s.f32", t->name);
        fputs(", \"file\": ", fp);
        json_string(fp, file);
        fputs(", \"shape\": [", fp);
        for (int k = 0; k < t->ndim; ++k) fprintf(fp, k ? ", %d" : "%d", t->shape[k]);
        fputs("], \"stage\": ", fp);
        json_string(fp, t->stage);
        fputs(i + 1 < dc->n ? "},\n" : "}\n", fp);
    }
    fputs("  ]\n}\n", fp);
    return fclose(fp) ? -1 : 0;
}
