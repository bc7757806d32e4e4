/* darkpy-dump: run a user's darknet build on a cfg and dump every layer's tensors.
 *
 * The result is a darkpy-dump/1 "network" case (../shared/golden/README.md),
 * the same naming and order as the golden network cases, so that
 * `darkpy check DIR` can re-run it in darkpy and compare bit for bit.
 *
 * Steps, on one network object, as the golden cases do:
 *   1. input (and, when training, truth) are set; the parameters are saved with
 *      darknet's own save_weights() as DIR/weights.weights, the cfg copied as
 *      DIR/network.cfg;
 *   2. forward_network with train=0          -> infer_layerNN_output
 *   3. seen += batch, forward_network train=1 -> layerNN_output, cost
 *   4. backward_network                      -> layerNN_delta, per parametric layer
 *      weight_updates, bias_updates (+ scale_updates, rolling_mean, rolling_variance)
 *   5. update_network                        -> layerNN_weights_after, biases_after (+ scales_after)
 * --infer runs step 2 only, --train steps 3-5 only.
 *
 * Build: DARKNET_DIR=/path/to/darknet tools/build.sh (links DARKNET_DIR/libdarknet.a).
 * Written for pjreddie/darknet's include/darknet.h (the CPU code paths).
 */
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "darknet.h"
#include "dump_format.h"

#ifndef DARKPY_DUMP_DARKNET
#define DARKPY_DUMP_DARKNET "darknet"
#endif
#ifndef DARKPY_DUMP_COMPILER
#define DARKPY_DUMP_COMPILER "unknown"
#endif

#define HARNESS "darkpy-dump (tools/darkpy_dump.c)"

static void die(const char *what, const char *path)
{
    if (path) fprintf(stderr, "darkpy-dump: %s %s: %s\n", what, path, strerror(errno));
    else fprintf(stderr, "darkpy-dump: %s\n", what);
    exit(1);
}

/* ---- tensors ---------------------------------------------------------- */

/* A layer's output/delta shape: NCHW when out_c*out_h*out_w == outputs,
 * else [batch, outputs] (softmax, cost, connected, ...). */
static int output_shape(const layer *l, int *shape)
{
    if (l->out_c > 0 && l->out_h > 0 && l->out_w > 0 &&
        l->out_c * l->out_h * l->out_w == l->outputs) {
        shape[0] = l->batch; shape[1] = l->out_c; shape[2] = l->out_h; shape[3] = l->out_w;
        return 4;
    }
    shape[0] = l->batch; shape[1] = l->outputs;
    return 2;
}

static void put(dump_case *dc, const char *name, const float *data, int ndim,
                const int *shape, const char *stage)
{
    if (dump_write_tensor(dc, name, data, ndim, shape, stage)) die("cannot write tensor", name);
}

static void put1(dump_case *dc, const char *name, const float *data, int n, const char *stage)
{
    put(dc, name, data, 1, &n, stage);
}

/* Layers whose parameters darknet trains on the CPU and whose tensors we dump. */
static int is_parametric(const layer *l)
{
    return l->type == CONVOLUTIONAL || l->type == CONNECTED;
}

/* Number of parameters per output channel and the weights' shape. */
static int weights_shape(const layer *l, int *shape)
{
    if (l->type == CONVOLUTIONAL) {
        shape[0] = l->n; shape[1] = l->c / l->groups; shape[2] = l->size; shape[3] = l->size;
        return 4;
    }
    shape[0] = l->outputs; shape[1] = l->inputs;    /* CONNECTED */
    return 2;
}

static int n_filters(const layer *l)
{
    return l->type == CONVOLUTIONAL ? l->n : l->outputs;
}

static int count(int ndim, const int *shape)
{
    int k = 1;
    for (int i = 0; i < ndim; ++i) k *= shape[i];
    return k;
}

static void dump_outputs(dump_case *dc, network *net, const char *prefix)
{
    char name[DUMP_NAME_LEN];
    int shape[4];
    for (int i = 0; i < net->n; ++i) {
        layer *l = &net->layers[i];
        int nd = output_shape(l, shape);
        snprintf(name, sizeof(name), "%slayer%02d_output", prefix, i);
        put(dc, name, l->output, nd, shape, "forward");
    }
}

static void dump_backward(dump_case *dc, network *net)
{
    char name[DUMP_NAME_LEN];
    int shape[4];
    for (int i = 0; i < net->n; ++i) {
        layer *l = &net->layers[i];
        if (!l->delta) continue;
        int nd = output_shape(l, shape);
        snprintf(name, sizeof(name), "layer%02d_delta", i);
        put(dc, name, l->delta, nd, shape, "backward");
    }
    for (int i = 0; i < net->n; ++i) {
        layer *l = &net->layers[i];
        if (!is_parametric(l)) continue;
        int nd = weights_shape(l, shape), n = n_filters(l);
        snprintf(name, sizeof(name), "layer%02d_weight_updates", i);
        put(dc, name, l->weight_updates, nd, shape, "backward");
        snprintf(name, sizeof(name), "layer%02d_bias_updates", i);
        put1(dc, name, l->bias_updates, n, "backward");
        if (l->batch_normalize) {
            snprintf(name, sizeof(name), "layer%02d_scale_updates", i);
            put1(dc, name, l->scale_updates, n, "backward");
            snprintf(name, sizeof(name), "layer%02d_rolling_mean", i);
            put1(dc, name, l->rolling_mean, n, "backward");
            snprintf(name, sizeof(name), "layer%02d_rolling_variance", i);
            put1(dc, name, l->rolling_variance, n, "backward");
        }
    }
}

static void dump_update(dump_case *dc, network *net)
{
    char name[DUMP_NAME_LEN];
    int shape[4];
    for (int i = 0; i < net->n; ++i) {
        layer *l = &net->layers[i];
        if (!is_parametric(l) || !l->update) continue;
        int nd = weights_shape(l, shape), n = n_filters(l);
        snprintf(name, sizeof(name), "layer%02d_weights_after", i);
        put(dc, name, l->weights, nd, shape, "update");
        snprintf(name, sizeof(name), "layer%02d_biases_after", i);
        put1(dc, name, l->biases, n, "update");
        if (l->batch_normalize) {
            snprintf(name, sizeof(name), "layer%02d_scales_after", i);
            put1(dc, name, l->scales, n, "update");
        }
    }
}

/* ---- deterministic parameters, input and truth ------------------------ */

/* He-uniform weights (bound sqrt(6/fan_in)), small biases, scales and rolling
 * variances in [0.5, 1.5), rolling means in [-0.1, 0.1).  Layer types other than
 * convolutional/connected keep darknet's own rand() initialisation (after
 * srand(seed)); save_weights stores whatever they hold. */
static void fill_parameters(network *net, dump_rng *r)
{
    for (int i = 0; i < net->n; ++i) {
        layer *l = &net->layers[i];
        if (!is_parametric(l)) continue;
        int shape[4];
        int nw = count(weights_shape(l, shape), shape), n = n_filters(l);
        int fan_in = nw / n;
        float bound = (float)sqrt(6.0 / (fan_in > 0 ? fan_in : 1));
        for (int k = 0; k < nw; ++k) l->weights[k] = bound * dump_rng_symmetric(r);
        for (int k = 0; k < n; ++k) l->biases[k] = 0.1f * dump_rng_symmetric(r);
        if (l->batch_normalize) {
            for (int k = 0; k < n; ++k) l->scales[k] = 0.5f + dump_rng_unit(r);
            for (int k = 0; k < n; ++k) l->rolling_mean[k] = 0.1f * dump_rng_symmetric(r);
            for (int k = 0; k < n; ++k) l->rolling_variance[k] = 0.5f + dump_rng_unit(r);
        }
    }
}

/* Read exactly n floats (little-endian float32) from path into dst. */
static void read_raw(const char *path, float *dst, size_t n, const char *what)
{
    FILE *fp = fopen(path, "rb");
    if (!fp) die("cannot open", path);
    for (size_t i = 0; i < n; ++i) {
        unsigned char b[4];
        if (fread(b, 1, 4, fp) != 4) {
            fprintf(stderr, "darkpy-dump: %s %s: expected %zu float32 values, file is shorter\n",
                    what, path, n);
            exit(1);
        }
        uint32_t bits = (uint32_t)b[0] | (uint32_t)b[1] << 8 | (uint32_t)b[2] << 16 | (uint32_t)b[3] << 24;
        memcpy(&dst[i], &bits, 4);
    }
    if (fgetc(fp) != EOF) {
        fprintf(stderr, "darkpy-dump: %s %s: longer than the expected %zu float32 values\n",
                what, path, n);
        exit(1);
    }
    fclose(fp);
}

/* Truth boxes in darknet's layouts (what data.c's fill_truth_* produce):
 *   yolo/region: per image, up to max boxes of [x, y, w, h, class] (region: coords+1);
 *   detection (YOLOv1): per grid cell [is_obj, one-hot classes, x, y, w, h] with x, y
 *   relative to the cell;
 *   anything else: one-hot over the network's truths (a classifier). */
static const char *fill_truth(network *net, dump_rng *r, int boxes, char *how, size_t howlen)
{
    layer *last = &net->layers[net->n - 1];
    int truths = net->truths;
    memset(net->truth, 0, (size_t)net->batch * truths * sizeof(float));
    for (int b = 0; b < net->batch; ++b) {
        float *t = net->truth + (size_t)b * truths;
        if (last->type == YOLO || last->type == REGION) {
            int stride = last->type == YOLO ? 5 : last->coords + 1;
            int classes = last->classes > 0 ? last->classes : 1;
            for (int k = 0; k < boxes && (k + 1) * stride <= truths; ++k) {
                float *box = t + k * stride;
                box[0] = 0.15f + 0.7f * dump_rng_unit(r);   /* x, y: centre, never 0 */
                box[1] = 0.15f + 0.7f * dump_rng_unit(r);
                box[2] = 0.05f + 0.4f * dump_rng_unit(r);   /* w, h */
                box[3] = 0.05f + 0.4f * dump_rng_unit(r);
                box[stride - 1] = (float)(dump_rng_next(r) % (uint64_t)classes);
            }
            snprintf(how, howlen, "xorshift64*: %d boxes per image [x, y, w, h, class]", boxes);
        } else if (last->type == DETECTION) {
            int side = last->side, coords = last->coords;
            int classes = last->classes > 0 ? last->classes : 1;
            int cell = 1 + classes + coords;
            for (int k = 0; k < boxes; ++k) {
                float x = 0.15f + 0.7f * dump_rng_unit(r), y = 0.15f + 0.7f * dump_rng_unit(r);
                float w = 0.05f + 0.4f * dump_rng_unit(r), h = 0.05f + 0.4f * dump_rng_unit(r);
                int id = (int)(dump_rng_next(r) % (uint64_t)classes);
                int col = (int)(x * side), row = (int)(y * side);
                float *c = t + (col + row * side) * cell;
                if (c[0]) continue;                         /* one box per cell */
                c[0] = 1;
                c[1 + id] = 1;
                c[1 + classes + 0] = x * side - col;
                c[1 + classes + 1] = y * side - row;
                c[1 + classes + 2] = w;
                c[1 + classes + 3] = h;
            }
            snprintf(how, howlen, "xorshift64*: %d boxes per image, detection grid layout", boxes);
        } else {
            if (truths > 0) t[dump_rng_next(r) % (uint64_t)truths] = 1;
            snprintf(how, howlen, "xorshift64*: one-hot over %d truths", truths);
        }
    }
    return how;
}

/* ---- main ------------------------------------------------------------- */

int main(int argc, char **argv)
{
    dump_options o;
    char err[512];
    if (dump_parse_args(argc, argv, &o, err, sizeof(err))) {
        fprintf(stderr, "darkpy-dump: %s\n%s", err, dump_usage);
        return 2;
    }
    if (o.help) {
        fputs(dump_usage, stdout);
        return 0;
    }

    /* Fail on unreadable files before darknet's parser (which exit()s on them). */
    const char *files[] = {o.cfg, o.weights, o.input, o.image, o.truth};
    for (size_t k = 0; k < sizeof(files) / sizeof(files[0]); ++k) {
        FILE *fp = files[k] ? fopen(files[k], "rb") : NULL;
        if (files[k] && !fp) die("cannot open", files[k]);
        if (fp) fclose(fp);
    }

    srand((unsigned)o.seed);
    dump_rng rng;
    dump_rng_seed(&rng, o.seed);

    network *net = parse_network_cfg((char *)o.cfg);
    char weights_how[600];
    if (o.weights) {
        load_weights(net, (char *)o.weights);
        snprintf(weights_how, sizeof(weights_how), "loaded from %s", o.weights);
    } else {
        fill_parameters(net, &rng);
        snprintf(weights_how, sizeof(weights_how),
                 "xorshift64*: He-uniform weights; other layer types darknet's rand() after srand(seed)");
    }

    dump_case dc;
    if (dump_case_open(&dc, o.out)) die("cannot create", o.out);
    if (dump_copy_file(&dc, o.cfg, "network.cfg")) die("cannot copy", o.cfg);
    {
        char path[sizeof(dc.dir) + 32];
        snprintf(path, sizeof(path), "%s/weights.weights", dc.dir);
        save_weights(net, path);    /* before any step changes a parameter */
    }

    size_t inputs = (size_t)net->batch * net->inputs;
    char input_how[600];
    if (o.input) {
        read_raw(o.input, net->input, inputs, "--input");
        snprintf(input_how, sizeof(input_how), "from %s", o.input);
    } else if (o.image) {
        image im = load_image((char *)o.image, 0, 0, net->c);
        image sized = o.letterbox ? letterbox_image(im, net->w, net->h)
                                  : resize_image(im, net->w, net->h);
        if ((size_t)sized.w * sized.h * sized.c != (size_t)net->inputs)
            die("the image does not match the network's input size", NULL);
        for (int b = 0; b < net->batch; ++b)
            memcpy(net->input + (size_t)b * net->inputs, sized.data, net->inputs * sizeof(float));
        free_image(im);
        free_image(sized);
        snprintf(input_how, sizeof(input_how), "%s of %s, in every image of the batch",
                 o.letterbox ? "letterbox_image" : "resize_image", o.image);
    } else {
        for (size_t i = 0; i < inputs; ++i) net->input[i] = dump_rng_unit(&rng);
        snprintf(input_how, sizeof(input_how), "xorshift64*: uniform [0, 1), 24 bits");
    }

    char truth_buf[600];
    const char *truth_how = NULL;
    if (o.train) {
        if (o.truth) {
            read_raw(o.truth, net->truth, (size_t)net->batch * net->truths, "--truth");
            snprintf(truth_buf, sizeof(truth_buf), "from %s", o.truth);
            truth_how = truth_buf;
        } else {
            truth_how = fill_truth(net, &rng, o.boxes, truth_buf, sizeof(truth_buf));
        }
    }

    int shape[4] = {net->batch, net->c, net->h, net->w};
    if (net->c * net->h * net->w == net->inputs) put(&dc, "input", net->input, 4, shape, "given");
    else { shape[1] = net->inputs; put(&dc, "input", net->input, 2, shape, "given"); }
    if (o.train) {
        shape[1] = net->truths;
        put(&dc, "truth", net->truth, 2, shape, "given");
    }

    dump_params p = {"network.cfg", "weights.weights", net->batch, net->c, net->h, net->w, net->n,
                     {NULL, NULL, NULL, NULL}, 0, 0};
    int ns = 0;
    if (o.infer) {
        p.steps[ns++] = DUMP_STEP_INFER;
        net->train = 0;
        forward_network(net);
        dump_outputs(&dc, net, "infer_");
    }
    long long seen_before = (long long)*net->seen;
    double rate = -1;
    if (o.train) {
        p.steps[ns++] = DUMP_STEP_TRAIN;
        p.steps[ns++] = DUMP_STEP_BACKWARD;
        p.steps[ns++] = DUMP_STEP_UPDATE;
        *net->seen += net->batch;
        net->train = 1;
        /* Layers that draw from C's rand() while training (dropout, crop) see a known stream. */
        p.srand_seed = (unsigned)o.seed;
        p.has_srand = 1;
        srand(p.srand_seed);
        forward_network(net);
        dump_outputs(&dc, net, "");
        put1(&dc, "cost", net->cost, 1, "forward");
        backward_network(net);
        dump_backward(&dc, net);
        rate = get_current_rate(net);
        update_network(net);
        dump_update(&dc, net);
    }

    dump_build b = {DARKPY_DUMP_DARKNET, DARKPY_DUMP_COMPILER, o.label, o.opts};
    dump_generator g = {HARNESS, o.seed, weights_how, input_how, truth_how, rate, seen_before};
    if (dump_write_manifest(&dc, &b, &p, &g)) die("cannot write case.json in", dc.dir);
    fprintf(stderr, "darkpy-dump: %d tensors written to %s\n", dc.n, dc.dir);
    dump_case_close(&dc);
    free_network(net);
    return 0;
}
