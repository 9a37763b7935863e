/*
 * model.c - the public face of the model module (model.h): loading, the
 * preprocessing a model asks for, identity, description and forwards.
 */
#include "model/model.h"

#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "model/dnn.h"
#include "model/graph.h"
#include "model/pooling.h"
#include "util/sha256.h"

#define DEFAULT_MAX_FILE ((size_t)2 << 30)
#define MAX_BATCH 4096

/* torchvision's ImageNet convention, in R, G, B order, on the 0..255 scale */
static const float imagenet_mean[3] = {123.675f, 116.28f, 103.53f};
static const float imagenet_std[3] = {58.395f, 57.12f, 57.375f};
/* for a model of one grey channel, the usual single-channel form of it: the
 * means of the three, 0.449 and 0.226 on the 0..1 scale */
static const float grey_mean[3] = {114.495f, 114.495f, 114.495f};
static const float grey_std[3] = {57.63f, 57.63f, 57.63f};

struct model {
    graph g;
    dnn *dnn;
    model_pool pool;
    float gem_p;
    int feature;           /* tensor the vector comes from */
    int map;               /* GAP source for pooled features, else -1 */
    int signed_map;        /* the map --pool auto left to the graph's pool, as it may be negative; else -1 */
    int pool_node;         /* the graph's pooling node replaced by `pool`, when map >= 0 */
    int head_node;         /* the classifier head left out of the default feature, else -1 */
    int head_output;       /* that head's output, the graph's first output (when head_node >= 0) */
    int head_layers;       /* its dense layers (MobileNetV3's has 2) */
    int target;            /* what the backend produces: map or feature */
    int dim, map_c, map_hw;
    image_prep prep;
    int prep_meta;
    char prep_note[160];   /* where each preprocessing value came from */
    int bgr;
    int bf16;
    char *name;
    char sha[65];
    char identity[512];
    char *describe;
    double flops;
    float *map_buf;
    size_t map_cap;        /* floats */
    int flip;
    float *mirror_buf;     /* with flip: the batch mirrored, then its features */
    size_t mirror_cap;     /* floats */
    /* The map the feature is a global pooling of, for model_feature_shares:
     * `map` when the pooling is ours, else the map behind the graph's own
     * global pool; -1 when the feature is no such pooling. */
    int share_map;
    model_pool share_pool; /* how the feature pools it */
    int share_c, share_h, share_w;
};

void model_options_init(model_options *o)
{
    memset(o, 0, sizeof *o);
    o->pool = MODEL_POOL_OUTPUT;
    o->gem_p = 3.0f;
}

/* ----------------------------------------------------------- preprocessing */

/* "v" or "v1,v2,v3": fills out[3] (one value repeated). 0 or -1. */
static int parse_triple(const char *s, float out[3])
{
    float v[3];
    int n = 0;
    const char *p = s;
    while (n < 3) {
        char *end;
        errno = 0;
        double x = strtod(p, &end);
        if (end == p || errno || !isfinite(x))
            return -1;
        v[n++] = (float)x;
        while (*end == ' ')
            end++;
        if (*end == '\0')
            break;
        if (*end != ',')
            return -1;
        p = end + 1;
    }
    if (n == 3) {
        while (*p && *p != ',')
            p++;
        if (*p)
            return -1; /* more than three */
    }
    if (n == 2)
        return -1;
    for (int i = 0; i < 3; i++)
        out[i] = n == 1 ? v[0] : v[i];
    return 0;
}

static int parse_size(const char *s, int *out)
{
    char *end;
    errno = 0;
    long v = strtol(s, &end, 10);
    if (end == s || *end || errno || v < 8 || v > G_MAX_INPUT_SIZE)
        return -1;
    *out = (int)v;
    return 0;
}

static const char *meta_str(const graph *g, const char *key)
{
    const char *v = graph_meta(g, key);
    return v && *v ? v : NULL;
}

/* Where a preprocessing value came from, for model_describe. */
static const char src_flags[] = "flags", src_meta[] = "metadata";

/* The input size: the flag (input_size > 0), else the metadata, else the
 * input's declared H = W, else 224. *src says which. */
static int resolve_size(const graph *g, int input_size, int *size, const char **src, ms_err *err)
{
    const char *ms = meta_str(g, "medsearch.input_size");
    if (input_size > 0) {
        if (input_size < 8 || input_size > G_MAX_INPUT_SIZE)
            return ms_err_set(err, MS_EINVAL, "input size %d is outside 8..%d", input_size, G_MAX_INPUT_SIZE);
        *size = input_size;
        *src = src_flags;
        return 0;
    }
    if (ms) {
        if (parse_size(ms, size))
            return ms_err_set(err, MS_EFORMAT, "metadata medsearch.input_size '%.40s' is not a size in 8..%d", ms,
                              G_MAX_INPUT_SIZE);
        *src = src_meta;
        return 0;
    }
    int64_t h = g->input_decl[2], w = g->input_decl[3];
    if (h > 0 && w > 0 && h != w)
        return ms_err_set(err, MS_EUNSUPPORTED, "the model's input is %lldx%lld; MedSearch feeds square images "
                          "(set an input size to override)", (long long)h, (long long)w);
    if (h > 0 && (h < 8 || h > G_MAX_INPUT_SIZE))
        return ms_err_set(err, MS_EUNSUPPORTED, "the model's input size %lld is outside 8..%d", (long long)h,
                          G_MAX_INPUT_SIZE);
    *size = h > 0 ? (int)h : w > 0 ? (int)w : 224;
    *src = "the model input";
    return 0;
}

/* One of mean/scale: flag text, else metadata, else the ImageNet default
 * (stated in R,G,B order, so reversed for a BGR model). */
static int resolve_triple(const graph *g, int bgr, const char *flag, const char *flag_name, const char *meta_key,
                          const float def[3], const char *def_name, int invert, float out[3], const char **src,
                          ms_err *err)
{
    const char *meta = meta_str(g, meta_key);
    if (flag) {
        if (parse_triple(flag, out))
            return ms_err_set(err, MS_EINVAL, "--%s '%.60s' must be one number or three separated by commas",
                              flag_name, flag);
        *src = src_flags;
    } else if (meta) {
        if (parse_triple(meta, out))
            return ms_err_set(err, MS_EFORMAT, "metadata %s '%.60s' must be one number or three separated by commas",
                              meta_key, meta);
        *src = src_meta;
    } else {
        for (int i = 0; i < 3; i++)
            out[i] = def[bgr ? 2 - i : i];
        *src = def_name;
        if (invert)
            for (int i = 0; i < 3; i++)
                out[i] = 1.0f / out[i];
        return 0;
    }
    for (int i = 0; i < 3; i++) {
        if (invert && !(out[i] > 0 || out[i] < 0))
            return ms_err_set(err, flag ? MS_EINVAL : MS_EFORMAT, "%s has a zero standard deviation",
                              flag ? flag_name : meta_key);
        if (invert)
            out[i] = 1.0f / out[i];
        if (!isfinite(out[i]))
            return ms_err_set(err, flag ? MS_EINVAL : MS_EFORMAT, "%s is not finite", flag ? flag_name : meta_key);
    }
    return 0;
}

/* Mean and scale from o's mean, scale and std (each NULL: the model's own).
 * src[0] and src[1] say where each came from. */
static int resolve_norm(const graph *g, int bgr, const model_options *o, float mean[3], float scale[3],
                        const char *src[2], ms_err *err)
{
    int grey = g->input_channels == 1;
    const float *dm = grey ? grey_mean : imagenet_mean, *ds = grey ? grey_std : imagenet_std;
    const char *dn = grey ? "ImageNet default for one channel" : "ImageNet default";
    int rc = resolve_triple(g, bgr, o->mean, "mean", "medsearch.mean", dm, dn, 0, mean, &src[0], err);
    if (rc)
        return rc;
    /* scale: flag scale, flag std, metadata scale, metadata std, default */
    if (o->scale || (!o->std && meta_str(g, "medsearch.scale")))
        rc = resolve_triple(g, bgr, o->scale, "scale", "medsearch.scale", ds, dn, 0, scale, &src[1], err);
    else
        rc = resolve_triple(g, bgr, o->std, "std", "medsearch.std", ds, dn, 1, scale, &src[1], err);
    for (int i = 0; i < 3 && !rc; i++)
        if (!(scale[i] > 0 || scale[i] < 0))
            rc = ms_err_set(err, o->scale ? MS_EINVAL : MS_EFORMAT, "the scale must not be zero");
    /* the three channels fed to a grey model must stay identical */
    if (!rc && grey && (mean[1] != mean[0] || mean[2] != mean[0] || scale[1] != scale[0] || scale[2] != scale[0]))
        rc = ms_err_set(err, o->mean || o->scale || o->std ? MS_EINVAL : MS_EFORMAT,
                        "the model takes one grey channel: its mean and scale must be one value each, not three");
    return rc;
}

static int resolve_prep(model *m, const model_options *o, ms_err *err)
{
    const char *size_src = "?", *src[2] = {"?", "?"};
    int rc = resolve_size(&m->g, o->input_size, &m->prep.size, &size_src, err);
    if (rc)
        return rc;
    const char *color = meta_str(&m->g, "medsearch.color");
    if (color) {
        if (!strcasecmp(color, "bgr"))
            m->bgr = 1;
        else if (strcasecmp(color, "rgb"))
            return ms_err_set(err, MS_EFORMAT, "metadata medsearch.color '%.20s' is neither rgb nor bgr", color);
        m->prep_meta = 1;
    }
    if ((rc = resolve_norm(&m->g, m->bgr, o, m->prep.mean, m->prep.scale, src, err)))
        return rc;
    if (size_src == src_meta || src[0] == src_meta || src[1] == src_meta)
        m->prep_meta = 1;
    snprintf(m->prep_note, sizeof m->prep_note, "mean from %s, scale from %s, size from %s", src[0], src[1],
             size_src);
    return 0;
}

/* Whether preprocessing values agree to float rounding: --std 58.395 and
 * --scale 0.017124754 make the same normalisation and the same vectors. */
static bool same_values(const float *a, const float *b, int n)
{
    for (int i = 0; i < n; i++)
        if (fabsf(a[i] - b[i]) > 1e-6f * fmaxf(fabsf(a[i]), fabsf(b[i])))
            return false;
    return true;
}

/* What the identity records of the preprocessing flags: *size is the input
 * size in force when it is not the model's own (0 when it is), and digest
 * the first 8 hex digits of SHA-256 of the mean and scale in force when they
 * are not the model's own ("" when they are). "%.9g" gives every float back
 * exactly, so equal values always give the same text. A model whose own
 * value cannot be resolved (its metadata is bad, its input not square) has
 * none: a flag then always differs. */
static void prep_identity(const model *m, const model_options *o, int *size, char digest[9])
{
    const image_prep *p = &m->prep;
    const char *src[2];
    int own_size;
    *size = 0;
    if (o->input_size > 0 && (resolve_size(&m->g, 0, &own_size, src, NULL) || own_size != p->size))
        *size = p->size;
    digest[0] = '\0';
    model_options own;
    model_options_init(&own);
    float mean[3], scale[3];
    if ((o->mean || o->scale || o->std) &&
        (resolve_norm(&m->g, m->bgr, &own, mean, scale, src, NULL) || !same_values(mean, p->mean, 3) ||
         !same_values(scale, p->scale, 3))) {
        char text[192], hex[65];
        int n = snprintf(text, sizeof text, "mean %.9g,%.9g,%.9g scale %.9g,%.9g,%.9g", (double)p->mean[0],
                         (double)p->mean[1], (double)p->mean[2], (double)p->scale[0], (double)p->scale[1],
                         (double)p->scale[2]);
        ms_sha256_hex(text, (size_t)n, hex);
        memcpy(digest, hex, 8);
        digest[8] = '\0';
    }
}

/* ----------------------------------------------------------------- loading */

/* The poolings by the names --pool takes; in an identity GeM's name is
 * followed by its p ("gem3"). No name is the start of another. */
static const struct {
    const char *name;
    model_pool pool;
} pool_names[] = {{"output", MODEL_POOL_OUTPUT}, {"avg", MODEL_POOL_AVG}, {"gem", MODEL_POOL_GEM},
                  {"max", MODEL_POOL_MAX}, {"topleft", MODEL_POOL_TOPLEFT}};

int model_pool_parse(const char *name, model_pool *out)
{
    if (!strcmp(name, "auto")) { /* never in an identity: not in pool_names */
        *out = MODEL_POOL_AUTO;
        return 0;
    }
    for (size_t i = 0; i < sizeof pool_names / sizeof *pool_names; i++)
        if (!strcmp(name, pool_names[i].name)) {
            *out = pool_names[i].pool;
            return 0;
        }
    return MS_EINVAL;
}

const char *model_pool_name(model_pool p)
{
    if (p == MODEL_POOL_AUTO)
        return "auto";
    for (size_t i = 0; i < sizeof pool_names / sizeof *pool_names; i++)
        if (pool_names[i].pool == p)
            return pool_names[i].name;
    return "output";
}

static const char *pool_name(model_pool p, float gem_p, char *buf, size_t len)
{
    if (p == MODEL_POOL_GEM) {
        snprintf(buf, len, "gem%g", (double)gem_p);
        return buf;
    }
    return model_pool_name(p);
}

/* An identity's last part: the pooling, then "-bf16", "-flip", "-in<size>"
 * (size > 0) and "-norm<digest>" (digest not empty), in that order. Both
 * model_identity and its reading back write it here, so that a reading
 * accepts only what an identity can hold. */
static void pool_part(char *buf, size_t len, const model_options *o, int size, const char *digest)
{
    char pb[32], in[24] = "";
    if (size > 0)
        snprintf(in, sizeof in, "-in%d", size);
    snprintf(buf, len, "%s%s%s%s%s%s", pool_name(o->pool, o->gem_p, pb, sizeof pb), o->bf16 ? "-bf16" : "",
             o->flip ? "-flip" : "", in, *digest ? "-norm" : "", digest);
}

/* One "-..." element of an identity's pooling part (t: after the '-', n
 * characters) into got or digest. 0, or -1 for no element model_identity
 * writes (its order and uniqueness are checked by the caller). */
static int read_suffix(const char *t, size_t n, model_options *got, char digest[9])
{
    if (n == 4 && !strncmp(t, "bf16", 4))
        got->bf16 = 1;
    else if (n == 4 && !strncmp(t, "flip", 4))
        got->flip = 1;
    else if (n >= 3 && n <= 6 && !strncmp(t, "in", 2) && strspn(t + 2, "0123456789") >= n - 2) {
        int v = 0;
        for (size_t i = 2; i < n; i++)
            v = v * 10 + (t[i] - '0');
        if (v < 8 || v > G_MAX_INPUT_SIZE)
            return -1;
        got->input_size = v;
    } else if (n == 12 && !strncmp(t, "norm", 4) && strspn(t + 4, "0123456789abcdef") >= 8) {
        memcpy(digest, t + 4, 8);
        digest[8] = '\0';
    } else {
        return -1;
    }
    return 0;
}

int model_options_from_identity(const char *identity, model_options *o)
{
    const char *part = identity ? strrchr(identity, ':') : NULL;
    if (!part)
        return MS_EINVAL;
    part++;
    model_options got = *o;
    got.bf16 = got.flip = got.input_size = 0;
    size_t len = 0;
    for (size_t i = 0; i < sizeof pool_names / sizeof *pool_names && !len; i++)
        if (!strncmp(part, pool_names[i].name, strlen(pool_names[i].name))) {
            len = strlen(pool_names[i].name);
            got.pool = pool_names[i].pool;
        }
    if (got.pool == MODEL_POOL_GEM && len) {
        char *end;
        errno = 0;
        double p = strtod(part + len, &end);
        if (errno || end == part + len || !(p > 0 && p <= 100))
            return MS_EINVAL;
        got.gem_p = (float)p;
        len = (size_t)(end - part);
    }
    if (!len)
        return MS_EINVAL;
    char digest[9] = "";
    for (const char *t = part + len; *t;) {
        size_t n = *t == '-' ? strcspn(t + 1, "-") : 0;
        if (!n || read_suffix(t + 1, n, &got, digest))
            return MS_EINVAL;
        t += 1 + n;
    }
    /* Written back, it must be the same text: this refuses another order, a
     * repeated element, "gem 3" or "-in0224". */
    char canon[96];
    pool_part(canon, sizeof canon, &got, got.input_size, digest);
    if (strcmp(canon, part))
        return MS_EINVAL;
    *o = got;
    return 0;
}

/* MODEL_POOL_AUTO for a feature produced by global pooling node gp (-1:
 * none), first step: GeM of the map is a candidate when gp is a global
 * average pool (GeM retrieves better with ImageNet features: more weight on
 * the strongest activations of each channel); the graph's own output
 * otherwise: a max pool is kept, and a head after the pool (a projection;
 * a classifier on the first output was already left out by pick_feature)
 * is the model's feature and is not skipped. A tensor named by
 * options.output is taken as it is. resolve_auto_pooling decides the rest. */
static model_pool auto_pooling(const graph *g, int gp, const model_options *o)
{
    return !o->output && gp >= 0 && (g->n[gp].op == G_GAP || g->n[gp].op == G_AVGPOOL) ? MODEL_POOL_AUTO
                                                                                       : MODEL_POOL_OUTPUT;
}

/* The feature as the graph computes it, instead of a pooling of its map. */
static void use_graph_output(model *m)
{
    m->pool = MODEL_POOL_OUTPUT;
    m->map = -1;
    m->target = m->feature;
}

/* Once shapes are known: an AveragePool or MaxPool taken for the feature's
 * pooling must cover its whole map (a 7x7 kernel on a 7x7 map; at another
 * --input-size the same node may not). If it does not, --pool auto keeps
 * the graph's own output, and an explicit pooling is an error. */
static int check_pool_covers_map(model *m, ms_err *err)
{
    if (m->map < 0 || graph_pool_is_global(&m->g, m->pool_node))
        return 0;
    const graph *g = &m->g;
    const g_node *nd = &g->n[m->pool_node];
    const g_tensor *x = &g->t[nd->in[0]];
    if (m->pool == MODEL_POOL_AUTO) {
        use_graph_output(m);
        return 0;
    }
    char pb[32];
    return ms_err_set(err, MS_EUNSUPPORTED,
                      "pooling '%s' needs the feature '%s' to come from a global pooling; node '%s' (%s) pools "
                      "'%s' of %lldx%lld with a %dx%d kernel%s, not the whole map",
                      pool_name(m->pool, m->gem_p, pb, sizeof pb), g->t[m->feature].name, nd->name, nd->op_type,
                      x->name, (long long)x->dims[2], (long long)x->dims[3], nd->kernel[0], nd->kernel[1],
                      nd->pad_l[0] || nd->pad_l[1] || nd->pad_r[0] || nd->pad_r[1] ? " and padding" : "");
}

/* Second step, once shapes are known: GeM clamps each value at a small
 * floor, which suits a map made by Relu, ReLU6, Sigmoid, swish and the like
 * and would throw away the negative half of a signed one (after LeakyRelu,
 * PRelu, Elu, Tanh, or no activation at all): such a map keeps the graph's
 * own average pool. */
static void resolve_auto_pooling(model *m)
{
    if (m->pool != MODEL_POOL_AUTO)
        return;
    if (graph_nearly_nonnegative(&m->g, m->map)) {
        m->pool = MODEL_POOL_GEM;
        return;
    }
    m->signed_map = m->map;
    use_graph_output(m);
}

/* The tensor named as the feature: options.output, else the model's
 * medsearch.feature_output metadata; NULL for the default. */
static const char *feature_name(const graph *g, const model_options *o)
{
    return o->output ? o->output : meta_str(g, "medsearch.feature_output");
}

static int pick_feature(model *m, const model_options *o, ms_err *err)
{
    graph *g = &m->g;
    const char *name = feature_name(g, o);
    int t = name ? graph_find(g, name) : g->outputs[0];
    if (t >= 0 && g->t[t].producer >= 0 && g->n[g->t[t].producer].dead)
        return ms_err_set(err, MS_EUNSUPPORTED, "the feature '%.200s' is the NHWC input transposed, which MedSearch "
                          "folds away; name a tensor computed from it", g->t[t].name);
    if (t < 0 || g->t[t].is_const || (g->t[t].producer < 0 && !g->t[t].is_input)) {
        if (o->output)
            return ms_err_set(err, MS_ENOTFOUND, "the model has no tensor named '%.200s'", o->output);
        return ms_err_set(err, MS_EFORMAT, "metadata medsearch.feature_output names '%.200s', which the model does not compute",
                          name);
    }
    m->head_node = -1;
    if (!name) { /* the first output by default: behind a classifier head, the pooled vector it reads */
        int pooled = graph_classifier_head(g, t, &m->head_node, &m->head_layers);
        /* scores post-processed by ops MedSearch does not run: the head behind them */
        if (pooled < 0 && graph_first_unsupported(g, t) >= 0)
            pooled = graph_classifier_head_behind(g, t, &m->head_node, &m->head_layers);
        if (pooled >= 0) {
            m->head_output = t;
            t = pooled;
        }
    }
    m->feature = t;
    m->map = m->signed_map = -1;
    m->target = t;
    int gp = graph_global_pool_node(g, t);
    if (m->pool == MODEL_POOL_AUTO)
        m->pool = auto_pooling(g, gp, o);
    if (m->pool == MODEL_POOL_OUTPUT)
        return 0;
    char pb[32];
    if (gp < 0) {
        int p = graph_producer(g, t);
        return ms_err_set(err, MS_EUNSUPPORTED,
                          "pooling '%s' needs the feature '%s' to come from a global pooling (GlobalAveragePool, "
                          "ReduceMean over height and width, GlobalMaxPool, or an AveragePool or MaxPool covering the "
                          "whole map, through Flatten, Reshape, Squeeze or Identity); it comes from %s node '%s'",
                          pool_name(m->pool, m->gem_p, pb, sizeof pb), g->t[t].name,
                          p >= 0 ? g->n[p].op_type : "no", p >= 0 ? g->n[p].name : "-");
    }
    m->map = g->n[gp].in[0];
    m->pool_node = gp;
    m->target = m->map;
    return 0;
}

static int check_options(const model_options *o, ms_err *err)
{
    if (o->pool < MODEL_POOL_OUTPUT || o->pool > MODEL_POOL_AUTO)
        return ms_err_set(err, MS_EINVAL, "unknown pooling %d", (int)o->pool);
    if ((o->pool == MODEL_POOL_GEM || o->pool == MODEL_POOL_AUTO) && !(o->gem_p > 0 && o->gem_p <= 100))
        return ms_err_set(err, MS_EINVAL, "GeM p must be in (0, 100], got %g", (double)o->gem_p);
    return 0;
}

static void describe(model *m);
static int tensor_available(const model *m, const char *name, int *t, ms_err *err);

/* Once optimised: the map model_feature_shares splits the feature over.
 * The graph's own pool counts only when it is global and the feature is
 * that pool reshaped (as many values as the map has channels), and when
 * the map is still a tensor of its own after fusion. */
static void find_share_map(model *m)
{
    const graph *g = &m->g;
    m->share_map = -1;
    int t = m->map, gp = -1;
    if (t >= 0) {
        m->share_pool = m->pool;
    } else {
        gp = graph_global_pool_node(g, m->feature);
        if (gp < 0 || !graph_pool_is_global(g, gp))
            return;
        t = g->n[gp].in[0];
        m->share_pool = g->n[gp].op == G_GMP || g->n[gp].op == G_MAXPOOL ? MODEL_POOL_MAX : MODEL_POOL_AVG;
    }
    int found;
    const g_tensor *x = &g->t[t];
    if (tensor_available(m, x->name, &found, NULL) || found != t || x->rank != 4 ||
        (gp >= 0 && graph_elems(&g->t[m->feature]) != x->dims[1]))
        return;
    m->share_map = t;
    m->share_c = (int)x->dims[1];
    m->share_h = (int)x->dims[2];
    m->share_w = (int)x->dims[3];
}

static int compile(model *m, const model_options *o, ms_err *err)
{
    graph *g = &m->g;
    int rc;
    const char *named = feature_name(g, o);
    if ((rc = graph_order(g, err)) || (rc = graph_rewrite(g, named ? graph_find(g, named) : -1, err)) ||
        (rc = resolve_prep(m, o, err)) ||
        (rc = pick_feature(m, o, err)) ||
        (rc = graph_prune(g, m->feature, err)) || (rc = graph_grey_input(g, err)) ||
        (rc = graph_infer_shapes(g, m->prep.size, m->feature, err)))
        return rc;
    if ((rc = check_pool_covers_map(m, err)))
        return rc;
    resolve_auto_pooling(m);
    int keep[2] = {m->feature, m->map};
    if ((rc = graph_optimise(g, keep, 2, err)))
        return rc;
    find_share_map(m);
    int64_t live = graph_live_bytes(g, m->target);
    if (live < 0)
        return ms_err_set(err, MS_ENOMEM, "out of memory");
    int64_t limit = o->max_activation_bytes ? (int64_t)o->max_activation_bytes : G_MAX_LIVE_BYTES;
    if (live > limit)
        return ms_err_set(err, MS_ETOOBIG, "the model needs %.1f MiB of activations per image, over the %.1f MiB limit",
                          (double)live / (1 << 20), (double)limit / (1 << 20));
    const g_tensor *tt = &g->t[m->target];
    if (m->map >= 0) {
        m->map_c = (int)tt->dims[1];
        m->map_hw = (int)(tt->dims[2] * tt->dims[3]);
        m->dim = m->map_c;
    } else {
        m->dim = (int)graph_elems(tt);
    }
    m->flops = graph_flops(g, m->target);
    dnn_options dopt = {0};
    dopt.bf16 = o->bf16;
    dopt.max_arena = o->max_activation_bytes ? 16 * o->max_activation_bytes : 0;
    if ((rc = dnn_create(g, &dopt, &m->dnn, err)) || (rc = dnn_prepare(m->dnn, m->target, 1, err)))
        return rc;
    dnn_release_host_weights(m->dnn);
    int size;
    char digest[9], part[96];
    prep_identity(m, o, &size, digest);
    model_options in_force = *o; /* the pooling resolved */
    in_force.pool = m->pool;
    in_force.gem_p = m->gem_p;
    pool_part(part, sizeof part, &in_force, size, digest);
    snprintf(m->identity, sizeof m->identity, "%.300s:%s:%d:%s", m->name, m->sha, m->dim, part);
    describe(m);
    return m->describe ? 0 : ms_err_set(err, MS_ENOMEM, "out of memory");
}

/* How load() holds the file's bytes: the caller's, or a mapping it must
 * drop (as soon as the graph is built, to keep the peak RSS down). */
typedef enum { BYTES_BORROWED = 0, BYTES_MAPPED } bytes_kind;

static void drop_bytes(const void *buf, size_t len, bytes_kind kind)
{
    if (kind == BYTES_MAPPED && len)
        munmap((void *)(uintptr_t)buf, len);
}

static int load(const void *buf, size_t len, bytes_kind kind, const char *name, const model_options *opt,
                model **out, ms_err *err)
{
    model_options defaults;
    if (!opt) {
        model_options_init(&defaults);
        opt = &defaults;
    }
    *out = NULL;
    int rc = check_options(opt, err);
    size_t max = opt->max_file_bytes ? opt->max_file_bytes : DEFAULT_MAX_FILE;
    if (!rc && len > max)
        rc = ms_err_set(err, MS_ETOOBIG, "the model file is %zu bytes, over the %zu-byte limit", len, max);
    model *m = rc ? NULL : calloc(1, sizeof *m);
    if (!rc && !m)
        rc = ms_err_set(err, MS_ENOMEM, "out of memory");
    if (rc) {
        drop_bytes(buf, len, kind);
        return rc;
    }
    graph_init(&m->g);
    m->pool = opt->pool;
    m->bf16 = opt->bf16;
    m->flip = opt->flip != 0;
    m->gem_p = opt->gem_p > 0 ? opt->gem_p : 3.0f;
    const char *base = name ? strrchr(name, '/') : NULL;
    base = base ? base + 1 : name && *name ? name : "model";
    m->name = strdup(base);
    ms_sha256_hex(buf, len, m->sha);
    rc = m->name ? onnx_parse(buf, len, &m->g, err) : ms_err_set(err, MS_ENOMEM, "out of memory");
    drop_bytes(buf, len, kind); /* the graph holds everything it needs */
    if (!rc)
        rc = compile(m, opt, err);
    if (rc) {
        model_free(m);
        return rc;
    }
    *out = m;
    return 0;
}

int model_load_buffer(const void *buf, size_t len, const char *name, const model_options *opt, model **out,
                      ms_err *err)
{
    return load(buf, len, BYTES_BORROWED, name, opt, out, err);
}

int model_load(const char *path, const model_options *opt, model **out, ms_err *err)
{
    *out = NULL;
    size_t max = opt && opt->max_file_bytes ? opt->max_file_bytes : DEFAULT_MAX_FILE;
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return ms_err_set(err, errno == ENOENT ? MS_ENOTFOUND : MS_EIO, "cannot open model '%s': %s", path,
                          strerror(errno));
    struct stat st;
    if (fstat(fd, &st) || !S_ISREG(st.st_mode)) {
        close(fd);
        return ms_err_set(err, MS_EIO, "model '%s' is not a regular file", path);
    }
    if ((uint64_t)st.st_size > max) {
        close(fd);
        return ms_err_set(err, MS_ETOOBIG, "model '%s' is %lld bytes, over the %zu-byte limit", path,
                          (long long)st.st_size, max);
    }
    size_t len = (size_t)st.st_size;
    if (len == 0) {
        close(fd);
        return load("", 0, BYTES_BORROWED, path, opt, out, err);
    }
    /* Mapped, not copied: protobuf-c copies what it keeps, and the mapping
     * goes as soon as the graph is built. */
    void *map = mmap(NULL, len, PROT_READ, MAP_PRIVATE | MAP_POPULATE, fd, 0);
    close(fd);
    if (map == MAP_FAILED)
        return ms_err_set(err, MS_EIO, "cannot read model '%s': %s", path, strerror(errno));
    return load(map, len, BYTES_MAPPED, path, opt, out, err);
}

void model_free(model *m)
{
    if (!m)
        return;
    dnn_free(m->dnn);
    graph_free(&m->g);
    free(m->name);
    free(m->describe);
    free(m->map_buf);
    free(m->mirror_buf);
    free(m);
}

/* ---------------------------------------------------------------- forwards */

static int check_batch(int n, ms_err *err)
{
    if (n < 1 || n > MAX_BATCH)
        return ms_err_set(err, MS_EINVAL, "batch size %d is outside 1..%d", n, MAX_BATCH);
    return 0;
}

/* Makes *buf hold at least need floats. Buffers are grown once per larger
 * batch and touched now (zeroed), never during forwards, so that a
 * steady-state forward faults no page in. False when out of memory (*buf
 * is then unchanged). */
static bool grow_zeroed(float **buf, size_t *cap, size_t need)
{
    if (need <= *cap)
        return true;
    float *p = malloc(need * sizeof *p);
    if (!p)
        return false;
    memset(p, 0, need * sizeof *p);
    free(*buf);
    *buf = p;
    *cap = need;
    return true;
}

/* One forward of n images into n x dim features (pooled here when the
 * pooling is ours). */
static int forward_once(model *m, const float *input, int n, float *out, ms_err *err)
{
    if (m->map < 0)
        return dnn_run(m->dnn, m->feature, n, input, out, err);
    if (!grow_zeroed(&m->map_buf, &m->map_cap, (size_t)n * (size_t)m->map_c * (size_t)m->map_hw))
        return ms_err_set(err, MS_ENOMEM, "cannot allocate the feature map for batch %d", n);
    int rc = dnn_run(m->dnn, m->map, n, input, m->map_buf, err);
    if (rc)
        return rc;
    pool_map(m->map_buf, n, m->map_c, m->map_hw, m->pool, m->gem_p, out);
    return 0;
}

/* Each of n images (3 planes of size x size) reversed left-right. */
static void mirror_images(const float *in, int n, int size, float *out)
{
    size_t rows = (size_t)n * 3 * (size_t)size;
    for (size_t r = 0; r < rows; r++) {
        const float *src = in + r * (size_t)size;
        float *dst = out + r * (size_t)size;
        for (int x = 0; x < size; x++)
            dst[x] = src[size - 1 - x];
    }
}

int model_forward(model *m, const float *input, int n, float *out, ms_err *err)
{
    int rc = check_batch(n, err);
    if (rc || !m->flip)
        return rc ? rc : forward_once(m, input, n, out, err);
    size_t pixels = (size_t)n * 3 * (size_t)m->prep.size * (size_t)m->prep.size;
    if (!grow_zeroed(&m->mirror_buf, &m->mirror_cap, pixels + (size_t)n * (size_t)m->dim))
        return ms_err_set(err, MS_ENOMEM, "cannot allocate the mirrored batch of %d", n);
    float *mirrored = m->mirror_buf, *mirrored_out = m->mirror_buf + pixels;
    mirror_images(input, n, m->prep.size, mirrored);
    if ((rc = forward_once(m, input, n, out, err)) || (rc = forward_once(m, mirrored, n, mirrored_out, err)))
        return rc;
    model_l2_normalise(out, n, m->dim);
    model_l2_normalise(mirrored_out, n, m->dim);
    for (size_t i = 0; i < (size_t)n * (size_t)m->dim; i++)
        out[i] += mirrored_out[i];
    return 0;
}

static int tensor_available(const model *m, const char *name, int *t, ms_err *err)
{
    const graph *g = &m->g;
    *t = name ? graph_find(g, name) : -1;
    if (*t < 0 || g->t[*t].is_const || !g->t[*t].shaped)
        return ms_err_set(err, MS_ENOTFOUND, "the model has no activation tensor named '%.200s'", name ? name : "");
    if (g->t[*t].fused_into)
        return ms_err_set(err, MS_ENOTFOUND,
                          "tensor '%.200s' is not computed on its own: it was fused into node '%s' (load the model "
                          "with it as the output to keep it)",
                          name, g->n[g->t[*t].fused_into - 1].name);
    if (!g->t[*t].is_input && graph_producer(g, *t) < 0)
        return ms_err_set(err, MS_ENOTFOUND, "tensor '%.200s' is not computed by the model", name);
    return 0;
}

int model_forward_tensor(model *m, const float *input, int n, const char *tensor, float *out, size_t out_per_image,
                         ms_err *err)
{
    int t, rc = check_batch(n, err);
    if (rc || (rc = tensor_available(m, tensor, &t, err)))
        return rc;
    size_t per = (size_t)graph_elems(&m->g.t[t]);
    if (out_per_image != per)
        return ms_err_set(err, MS_EINVAL, "tensor '%s' has %zu values per image, not %zu", tensor, per, out_per_image);
    return dnn_run(m->dnn, t, n, input, out, err);
}

int model_feature_grid(const model *m, int *h, int *w, ms_err *err)
{
    *h = *w = 0;
    if (m->share_map < 0) {
        const graph *g = &m->g;
        int p = graph_producer(g, m->feature);
        return ms_err_set(err, MS_EUNSUPPORTED,
                          "the model's feature '%.200s' (from %s node '%.200s') is not a global pooling of a feature "
                          "map, so it cannot be split over the image's regions",
                          g->t[m->feature].name, p >= 0 ? g->n[p].op_type : "no", p >= 0 ? g->n[p].name : "-");
    }
    *h = m->share_h;
    *w = m->share_w;
    return 0;
}

/* n maps into their features and shares (pooling.h). */
static void pool_with_shares(const model *m, const float *maps, int n, float *feature, float *shares)
{
    size_t hw = (size_t)m->share_h * (size_t)m->share_w, per = (size_t)m->share_c * hw;
    for (int i = 0; i < n; i++) {
        pool_map(maps + (size_t)i * per, 1, m->share_c, (int)hw, m->share_pool, m->gem_p,
                 feature + (size_t)i * (size_t)m->share_c);
        pool_map_shares(maps + (size_t)i * per, m->share_c, (int)hw, m->share_pool, m->gem_p, shares + (size_t)i * per);
    }
}

static double inverse_norm(const float *v, int n)
{
    double ss = 0;
    for (int i = 0; i < n; i++)
        ss += (double)v[i] * v[i];
    return ss > 0 ? 1.0 / sqrt(ss) : 1.0; /* a zero vector stays zero, as model_l2_normalise leaves it */
}

/* With flip: each image's feature and shares become a/|a| + b/|b| of its
 * own (a) and its mirror image's (b), whose cells are mirrored back. */
static void add_mirrored_shares(const model *m, int n, float *feature, float *shares, const float *m_feature,
                                const float *m_shares)
{
    int c = m->share_c, h = m->share_h, w = m->share_w;
    size_t hw = (size_t)h * (size_t)w, per = (size_t)c * hw;
    for (int i = 0; i < n; i++) {
        float *f = feature + (size_t)i * (size_t)c, *s = shares + (size_t)i * per;
        const float *mf = m_feature + (size_t)i * (size_t)c, *ms = m_shares + (size_t)i * per;
        double ia = inverse_norm(f, c), ib = inverse_norm(mf, c);
        for (int ch = 0; ch < c; ch++) {
            f[ch] = (float)(f[ch] * ia + mf[ch] * ib);
            for (int y = 0; y < h; y++)
                for (int x = 0; x < w; x++) {
                    size_t at = (size_t)ch * hw + (size_t)y * (size_t)w;
                    s[at + (size_t)x] = (float)(s[at + (size_t)x] * ia + ms[at + (size_t)(w - 1 - x)] * ib);
                }
        }
    }
}

int model_feature_shares(model *m, const float *input, int n, float *feature, float *shares, ms_err *err)
{
    int h, w, rc = model_feature_grid(m, &h, &w, err);
    if (rc || (rc = check_batch(n, err)))
        return rc;
    size_t per = (size_t)m->share_c * (size_t)h * (size_t)w, all = (size_t)n * per;
    if (!grow_zeroed(&m->map_buf, &m->map_cap, all))
        return ms_err_set(err, MS_ENOMEM, "cannot allocate the feature map for batch %d", n);
    if ((rc = dnn_run(m->dnn, m->share_map, n, input, m->map_buf, err)))
        return rc;
    pool_with_shares(m, m->map_buf, n, feature, shares);
    if (!m->flip)
        return 0;
    size_t pixels = (size_t)n * 3 * (size_t)m->prep.size * (size_t)m->prep.size;
    float *mirrored = malloc((pixels + all + (size_t)n * (size_t)m->share_c) * sizeof *mirrored);
    if (!mirrored)
        return ms_err_set(err, MS_ENOMEM, "cannot allocate the mirrored batch of %d", n);
    float *m_shares = mirrored + pixels, *m_feature = m_shares + all;
    mirror_images(input, n, m->prep.size, mirrored);
    rc = dnn_run(m->dnn, m->share_map, n, mirrored, m->map_buf, err);
    if (rc == 0) {
        pool_with_shares(m, m->map_buf, n, m_feature, m_shares);
        add_mirrored_shares(m, n, feature, shares, m_feature, m_shares);
    }
    free(mirrored);
    return rc;
}

size_t model_tensor_size(const model *m, const char *tensor)
{
    int t;
    if (tensor_available(m, tensor, &t, NULL))
        return 0;
    return (size_t)graph_elems(&m->g.t[t]);
}

/* ------------------------------------------------------------- accessors */

int model_dim(const model *m) { return m->dim; }
const image_prep *model_prep(const model *m) { return &m->prep; }
int model_prep_from_metadata(const model *m) { return m->prep_meta; }
model_pool model_pooling(const model *m) { return m->pool; }
const char *model_identity(const model *m) { return m->identity; }
const char *model_name(const model *m) { return m->name; }
const char *model_sha256(const model *m) { return m->sha; }
const char *model_describe(const model *m) { return m->describe; }
double model_flops_per_image(const model *m) { return m->flops; }

int model_measure_peak_gflops(double seconds, double *gflops, ms_err *err)
{
    return dnn_measure_peak(seconds, gflops, err);
}

const char *model_runtime_info(const model *m)
{
    static char buf[192];
    snprintf(buf, sizeof buf, "%s; conv: %s; weights %.1f MB; activations %.1f MB%s", dnn_version(),
             m ? dnn_conv_impl(m->dnn) : "-", m ? (double)dnn_weight_bytes(m->dnn) / 1e6 : 0,
             m ? (double)dnn_arena_bytes(m->dnn) / 1e6 : 0, m && m->bf16 ? "; fpmath bf16" : "");
    return buf;
}

/* ------------------------------------------------------------- describe */

typedef struct sbuf {
    char *p;
    size_t len, cap;
} sbuf;

__attribute__((format(printf, 2, 3))) static void sb_printf(sbuf *s, const char *fmt, ...)
{
    if (!s->p)
        return;
    for (;;) {
        va_list ap;
        va_start(ap, fmt);
        int n = vsnprintf(s->p + s->len, s->cap - s->len, fmt, ap);
        va_end(ap);
        if (n < 0)
            return;
        if ((size_t)n < s->cap - s->len) {
            s->len += (size_t)n;
            return;
        }
        char *q = realloc(s->p, s->cap * 2 + (size_t)n);
        if (!q) {
            free(s->p);
            s->p = NULL;
            return;
        }
        s->p = q;
        s->cap = s->cap * 2 + (size_t)n;
    }
}

static void sb_shape(sbuf *s, const g_tensor *t)
{
    sb_printf(s, "[batch");
    for (int i = 1; i < t->rank; i++)
        sb_printf(s, ", %lld", (long long)t->dims[i]);
    sb_printf(s, "]");
}

static void describe(model *m)
{
    const graph *g = &m->g;
    sbuf s = {malloc(1024), 0, 1024};
    char pb[32];
    sb_printf(&s, "model       %s\n", m->name);
    sb_printf(&s, "identity    %s\n", m->identity);
    sb_printf(&s, "format      ONNX IR %lld, opset %lld%s%s%s\n", (long long)g->ir_version, (long long)g->opset,
              g->producer && *g->producer ? ", producer \"" : "", g->producer ? g->producer : "",
              g->producer && *g->producer ? "\"" : "");
    sb_printf(&s, "input       %s ", g->t[g->input].name);
    sb_shape(&s, &g->t[g->input]);
    sb_printf(&s, " float32, %s\n", g->input_nhwc ? "NCHW (NHWC in the file: its Transpose to NCHW is folded)" : "NCHW");
    for (int i = 0; i < g->n_outputs; i++) {
        sb_printf(&s, "%s %s ", i ? "           " : "outputs    ", g->t[g->outputs[i]].name);
        if (g->t[g->outputs[i]].shaped)
            sb_shape(&s, &g->t[g->outputs[i]]);
        else
            sb_printf(&s, "(not computed: it depends on an op MedSearch does not run)");
        sb_printf(&s, "\n");
    }
    sb_printf(&s, "feature     %s, %d values, pooling %s%s%s\n", g->t[m->feature].name, m->dim,
              pool_name(m->pool, m->gem_p, pb, sizeof pb), m->map >= 0 ? " of " : "",
              m->map >= 0 ? g->t[m->map].name : "");
    if (m->head_node >= 0)
        sb_printf(&s, "            (the pooled vector: the classifier head of %d dense layer%s from '%s' (%s) "
                  "giving '%s' is left out; --output %s keeps it)\n", m->head_layers, m->head_layers == 1 ? "" : "s",
                  g->n[m->head_node].name, g->n[m->head_node].op_type, g->t[m->head_output].name,
                  g->t[m->head_output].name);
    if (m->share_map >= 0)
        sb_printf(&s, "maps        similarity maps (explain) on a %d x %d grid of '%s'\n", m->share_h, m->share_w,
                  g->t[m->share_map].name);
    else
        sb_printf(&s, "maps        none: the feature is not a global pooling of a feature map\n");
    if (m->signed_map >= 0)
        sb_printf(&s, "            (not GeM: --pool auto keeps the graph's average of '%s', which may be negative, "
                  "where GeM would clamp it)\n", g->t[m->signed_map].name);
    const image_prep *p = &m->prep;
    if (g->input_channels == 1)
        sb_printf(&s, "preprocess  grey -> %dx%d, one channel (fed as 3 identical ones, the first Conv's weights "
                  "spread over them), x = (pixel - mean) * scale\n", p->size, p->size);
    else
        sb_printf(&s, "preprocess  grey -> %dx%d, replicated to 3 channels (%s), x = (pixel - mean) * scale\n",
                  p->size, p->size, m->bgr ? "BGR" : "RGB");
    sb_printf(&s, "            mean %g,%g,%g  scale %g,%g,%g\n", (double)p->mean[0], (double)p->mean[1],
              (double)p->mean[2], (double)p->scale[0], (double)p->scale[1], (double)p->scale[2]);
    sb_printf(&s, "            %s (%s)\n",
              m->prep_meta ? "from the model's medsearch.* metadata" : "torchvision ImageNet convention (the model has no medsearch.* metadata)",
              m->prep_note);
    sb_printf(&s, "ops         ");
    for (int op = 0, first = 1; op <= G_OP_COUNT; op++)
        if (g->op_count[op]) {
            sb_printf(&s, "%s%s %d", first ? "" : ", ", op == G_OP_COUNT ? "Constant" : graph_op_name((g_op)op),
                      g->op_count[op]);
            first = 0;
        }
    sb_printf(&s, "\nparameters  %lld\n", (long long)g->params);
    sb_printf(&s, "flops       %.3f GFLOP per image (multiply-add = 2)\n", m->flops / 1e9);
    sb_printf(&s, "compiled    %d BatchNorm folded, %d activations and %d residual adds fused, %d swish or hard swish; %d nodes\n",
              g->stats.bn_folded, g->stats.act_fused, g->stats.add_fused, g->stats.swish_fused, g->n_order);
    const g_stats *st = &g->stats;
    if (st->gelu_rewritten || st->norm_rewritten || st->transposes_lifted)
        sb_printf(&s, "rewritten   %d GELU from Erf, %d layer norms from their formula, %d Transposes and %d MatMuls "
                  "of channels-last regions run in NCHW\n", st->gelu_rewritten, st->norm_rewritten,
                  st->transposes_lifted, st->matmuls_lifted);
    sb_printf(&s, "runtime     %s\n", model_runtime_info(m));
    m->describe = s.p;
}
