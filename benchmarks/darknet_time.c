/* darknet_time: times the original C darknet for `darkpy bench`.
 *
 * Compiled by darkpy/bench.py at bench time into a temporary directory against
 * $DARKNET_DIR/include/darknet.h and $DARKNET_DIR/libdarknet.a (never committed as a
 * binary).  Every sample is printed on one line,
 *
 *     TIME <what> <ms> <ms> ...
 *
 * and the harness takes the median.  Modes:
 *
 *   darknet_time network CFG WEIGHTS|- INPUT.f32|- REPEATS
 *       network_predict (forward, train = 0) on one batch; INPUT is raw float32
 *       (batch*inputs values), '-' for a deterministic uniform [0, 1) input.
 *   darknet_time train CFG WEIGHTS|- REPEATS
 *       train_network_datum (seen += batch, forward + backward + update) with the
 *       cfg's batch, a deterministic input and an all-zero truth.
 *   darknet_time batchnorm BATCH C H W REPEATS
 *       a standalone [batchnorm] layer: forward with train = 1, backward, and
 *       forward with train = 0 timed separately (l.delta is restored, untimed,
 *       before every backward).
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "darknet.h"

/* batchnorm_layer.h is not part of darknet's public header. */
layer make_batchnorm_layer(int batch, int w, int h, int c);
void forward_batchnorm_layer(layer l, network net);
void backward_batchnorm_layer(layer l, network net);

static double now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1e3 + ts.tv_nsec * 1e-6;
}

/* A small deterministic generator (not darknet's rand(): timing only). */
static unsigned long long state = 0x9E3779B97F4A7C15ull;

static float uniform01(void)
{
    state ^= state >> 12;
    state ^= state << 25;
    state ^= state >> 27;
    return (float)((state * 0x2545F4914F6CDD1Dull) >> 40) / 16777216.0f;
}

static void fill_uniform(float *x, size_t n, float lo, float hi)
{
    for (size_t i = 0; i < n; ++i) x[i] = lo + (hi - lo) * uniform01();
}

static float *xcalloc(size_t n)
{
    float *p = calloc(n ? n : 1, sizeof(float));
    if (!p) {
        fprintf(stderr, "darknet_time: out of memory\n");
        exit(2);
    }
    return p;
}

static void print_samples(const char *what, const double *t, int n)
{
    printf("TIME %s", what);
    for (int i = 0; i < n; ++i) printf(" %.6f", t[i]);
    printf("\n");
    fflush(stdout);
}

static int time_network(int argc, char **argv)
{
    if (argc != 6) return -1;
    char *weights = strcmp(argv[3], "-") ? argv[3] : 0;
    int repeats = atoi(argv[5]);
    network *net = load_network(argv[2], weights, 0);
    size_t n = (size_t)net->batch * net->inputs;
    float *input = xcalloc(n);
    if (strcmp(argv[4], "-")) {
        FILE *f = fopen(argv[4], "rb");
        if (!f || fread(input, sizeof(float), n, f) != n) {
            fprintf(stderr, "darknet_time: cannot read %zu floats from %s\n", n, argv[4]);
            return 2;
        }
        fclose(f);
    } else {
        fill_uniform(input, n, 0, 1);
    }
    double *t = malloc(sizeof(double) * (repeats > 0 ? repeats : 1));
    network_predict(net, input);  /* warm-up: first touch of every buffer */
    for (int r = 0; r < repeats; ++r) {
        double t0 = now_ms();
        network_predict(net, input);
        t[r] = now_ms() - t0;
    }
    print_samples("forward", t, repeats);
    return 0;
}

static int time_train(int argc, char **argv)
{
    if (argc != 5) return -1;
    char *weights = strcmp(argv[3], "-") ? argv[3] : 0;
    int repeats = atoi(argv[4]);
    network *net = load_network(argv[2], weights, 0);
    fill_uniform(net->input, (size_t)net->batch * net->inputs, 0, 1);
    if (net->truth) memset(net->truth, 0, sizeof(float) * (size_t)net->batch * net->truths);
    double *t = malloc(sizeof(double) * (repeats > 0 ? repeats : 1));
    for (int r = 0; r < repeats; ++r) {
        double t0 = now_ms();
        train_network_datum(net);
        t[r] = now_ms() - t0;
    }
    print_samples("train_step", t, repeats);
    return 0;
}

static int time_batchnorm(int argc, char **argv)
{
    if (argc != 7) return -1;
    int batch = atoi(argv[2]), c = atoi(argv[3]), h = atoi(argv[4]), w = atoi(argv[5]);
    int repeats = atoi(argv[6]);
    layer l = make_batchnorm_layer(batch, w, h, c);
    size_t n = (size_t)batch * c * h * w;
    /* what make_batchnorm_layer does not allocate on the CPU (see darkpy's batchnorm layer) */
    l.x = xcalloc(n);
    l.x_norm = xcalloc(n);
    l.mean_delta = xcalloc(c);
    l.variance_delta = xcalloc(c);
    fill_uniform(l.scales, c, 0.5f, 1.5f);
    fill_uniform(l.biases, c, -0.1f, 0.1f);
    fill_uniform(l.rolling_variance, c, 0.5f, 1.5f);

    network net = {0};
    net.input = xcalloc(n);
    net.delta = xcalloc(n);
    fill_uniform(net.input, n, -2, 2);
    float *delta_in = xcalloc(n);
    fill_uniform(delta_in, n, -1, 1);

    double *tf = malloc(sizeof(double) * (repeats > 0 ? repeats : 1));
    double *tb = malloc(sizeof(double) * (repeats > 0 ? repeats : 1));
    double *ti = malloc(sizeof(double) * (repeats > 0 ? repeats : 1));
    for (int r = -1; r < repeats; ++r) {  /* r = -1: warm-up */
        net.train = 1;
        double t0 = now_ms();
        forward_batchnorm_layer(l, net);
        double t1 = now_ms();
        memcpy(l.delta, delta_in, sizeof(float) * n);
        double t2 = now_ms();
        backward_batchnorm_layer(l, net);
        double t3 = now_ms();
        net.train = 0;
        double t4 = now_ms();
        forward_batchnorm_layer(l, net);
        double t5 = now_ms();
        if (r >= 0) {
            tf[r] = t1 - t0;
            tb[r] = t3 - t2;
            ti[r] = t5 - t4;
        }
    }
    print_samples("batchnorm_train_forward", tf, repeats);
    print_samples("batchnorm_backward", tb, repeats);
    print_samples("batchnorm_infer_forward", ti, repeats);
    return 0;
}

int main(int argc, char **argv)
{
    int rc = -1;
    if (argc >= 2 && !strcmp(argv[1], "network")) rc = time_network(argc, argv);
    else if (argc >= 2 && !strcmp(argv[1], "train")) rc = time_train(argc, argv);
    else if (argc >= 2 && !strcmp(argv[1], "batchnorm")) rc = time_batchnorm(argc, argv);
    if (rc < 0) {
        fprintf(stderr,
                "usage: darknet_time network CFG WEIGHTS|- INPUT.f32|- REPEATS\n"
                "       darknet_time train CFG WEIGHTS|- REPEATS\n"
                "       darknet_time batchnorm BATCH C H W REPEATS\n");
        return 2;
    }
    return rc;
}
