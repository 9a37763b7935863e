/*
 * graph.c - bookkeeping, ordering, BatchNorm and Pad folding and post-op
 * fusion of the graph onnx.c builds, and the analyses dnnl.c and model.c
 * use. Shape inference is in shapes.c. Nothing here knows about oneDNN:
 * dnnl.c picks memory layouts and plans buffers from what this file leaves.
 */
#include "model/graph.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ------------------------------------------------------------ bookkeeping */

const char *graph_op_name(g_op op)
{
    static const char *const names[G_OP_COUNT] = {
        "Conv", "BatchNormalization", "Relu", "Clip", "Sigmoid", "Swish", "Add", "Mul",
        "MaxPool", "AveragePool", "GlobalAveragePool", "Flatten", "Reshape", "Gemm",
        "Concat", "Identity", "HardSigmoid", "HardSwish", "Sub", "Div", "Pad", "GlobalMaxPool",
        "Shape", "Gather", "Unsqueeze", "Squeeze", "unsupported (not run)", "ReduceMean", "Dropout",
        "LeakyRelu", "PRelu", "Elu", "Selu", "Tanh", "Softplus", "LRN", "Cast", "Transpose",
        "LayerNormalization", "Gelu", "Gather of a channel", "Gelu (tanh)", "MatMul", "Erf", "Pow", "Sqrt"};
    return op >= 0 && op < G_OP_COUNT ? names[op] : "?";
}

void graph_init(graph *g)
{
    memset(g, 0, sizeof *g);
    g->input = -1;
    g->input_channels = 3;
}

void graph_free(graph *g)
{
    if (!g)
        return;
    for (int i = 0; i < g->nt; i++) {
        free(g->t[i].name);
        free(g->t[i].f);
        free(g->t[i].i64);
    }
    for (int i = 0; i < g->nn; i++) {
        free(g->n[i].name);
        free(g->n[i].op_type);
        free(g->n[i].in);
    }
    for (int i = 0; i < g->n_meta; i++) {
        free(g->meta[i].key);
        free(g->meta[i].value);
    }
    free(g->t);
    free(g->n);
    free(g->order);
    free(g->outputs);
    free(g->meta);
    free(g->producer);
    free(g->hash);
    graph_init(g);
}

static uint64_t name_hash(const char *s)
{
    uint64_t h = 1469598103934665603ull;
    for (; *s; s++)
        h = (h ^ (unsigned char)*s) * 1099511628211ull;
    return h;
}

static int hash_slot(const graph *g, const char *name)
{
    size_t mask = (size_t)g->hash_cap - 1, i = (size_t)name_hash(name) & mask;
    while (g->hash[i] >= 0 && strcmp(g->t[g->hash[i]].name, name))
        i = (i + 1) & mask;
    return (int)i;
}

int graph_find(const graph *g, const char *name)
{
    if (!g->hash_cap || !name)
        return -1;
    return g->hash[hash_slot(g, name)];
}

static int hash_grow(graph *g, ms_err *err)
{
    int cap = g->hash_cap ? g->hash_cap * 2 : 256;
    int *h = malloc((size_t)cap * sizeof *h);
    if (!h)
        return ms_err_set(err, MS_ENOMEM, "out of memory");
    for (int i = 0; i < cap; i++)
        h[i] = -1;
    free(g->hash);
    g->hash = h;
    g->hash_cap = cap;
    for (int t = 0; t < g->nt; t++)
        g->hash[hash_slot(g, g->t[t].name)] = t;
    return 0;
}

int graph_intern(graph *g, const char *name, ms_err *err)
{
    int t = graph_find(g, name);
    if (t >= 0)
        return t;
    if (g->nt >= 4 * G_MAX_NODES + 1000000)
        return ms_err_set(err, MS_ETOOBIG, "the model names too many tensors");
    if ((g->nt + 1) * 2 > g->hash_cap) {
        int rc = hash_grow(g, err);
        if (rc)
            return rc;
    }
    if (g->nt == g->cap_t) {
        int cap = g->cap_t ? g->cap_t * 2 : 256;
        g_tensor *nt = realloc(g->t, (size_t)cap * sizeof *nt);
        if (!nt)
            return ms_err_set(err, MS_ENOMEM, "out of memory");
        g->t = nt;
        g->cap_t = cap;
    }
    g_tensor *x = &g->t[g->nt];
    memset(x, 0, sizeof *x);
    size_t len = strlen(name);
    if (!(x->name = malloc(len + 1)))
        return ms_err_set(err, MS_ENOMEM, "out of memory");
    memcpy(x->name, name, len + 1);
    x->producer = -1;
    g->hash[hash_slot(g, name)] = g->nt;
    return g->nt++;
}

static char *dup(const char *s)
{
    size_t n = strlen(s);
    char *d = malloc(n + 1);
    if (d)
        memcpy(d, s, n + 1);
    return d;
}

int graph_add_node(graph *g, g_op op, const char *name, const char *op_type, ms_err *err)
{
    if (g->nn >= G_MAX_NODES)
        return ms_err_set(err, MS_ETOOBIG, "the model has more than %d nodes", G_MAX_NODES);
    if (g->nn == g->cap_n) {
        int cap = g->cap_n ? g->cap_n * 2 : 128;
        g_node *nn = realloc(g->n, (size_t)cap * sizeof *nn);
        if (!nn)
            return ms_err_set(err, MS_ENOMEM, "out of memory");
        g->n = nn;
        g->cap_n = cap;
    }
    g_node *nd = &g->n[g->nn];
    memset(nd, 0, sizeof *nd);
    nd->op = op;
    nd->out = -1;
    nd->weights = nd->bias = -1;
    nd->group = 1;
    nd->alpha = nd->beta = 1.0f;
    nd->name = dup(name);
    nd->op_type = dup(op_type);
    if (!nd->name || !nd->op_type) {
        free(nd->name);
        free(nd->op_type);
        return ms_err_set(err, MS_ENOMEM, "out of memory");
    }
    return g->nn++;
}

const char *graph_meta(const graph *g, const char *key)
{
    for (int i = 0; i < g->n_meta; i++)
        if (!strcmp(g->meta[i].key, key))
            return g->meta[i].value;
    return NULL;
}

int64_t graph_elems(const g_tensor *t)
{
    int64_t n = 1;
    for (int i = 0; i < t->rank; i++)
        n *= t->dims[i];
    return n;
}

void graph_release_constant(graph *g, int t)
{
    if (t < 0 || t >= g->nt)
        return;
    free(g->t[t].f);
    g->t[t].f = NULL;
}

int graph_producer(const graph *g, int t)
{
    if (t < 0)
        return -1;
    int p = g->t[t].producer;
    return p >= 0 && !g->n[p].dead ? p : -1;
}

int graph_node_reads(const graph *g, const g_node *nd, int *in, int cap)
{
    int n = 0;
    for (int i = 0; i < nd->n_in && n < cap; i++) {
        int t = nd->in[i];
        if (t >= 0 && !g->t[t].is_const)
            in[n++] = t;
    }
    for (int i = 0; i < nd->n_post && n < cap; i++)
        if (nd->post[i].kind == G_POST_SUM)
            in[n++] = nd->post[i].tensor;
    return n;
}

/* ----------------------------------------------------------------- order */

/* Uses of each tensor by live nodes. A Conv or Gemm whose weights were
 * folded or transposed reads its own constants, not the file's. */
static void count_consumers(graph *g)
{
    for (int t = 0; t < g->nt; t++)
        g->t[t].consumers = 0;
    for (int i = 0; i < g->nn; i++) {
        g_node *nd = &g->n[i];
        if (nd->dead)
            continue;
        int own = (nd->op == G_CONV || nd->op == G_GEMM) && nd->weights >= 0;
        for (int k = 0; k < (own ? 1 : nd->n_in); k++)
            if (nd->in[k] >= 0)
                g->t[nd->in[k]].consumers++;
        if (own) {
            g->t[nd->weights].consumers++;
            if (nd->bias >= 0)
                g->t[nd->bias].consumers++;
        }
        for (int k = 0; k < nd->n_post; k++)
            if (nd->post[k].kind == G_POST_SUM)
                g->t[nd->post[k].tensor].consumers++;
    }
}

/* Frees the data of constants no live node reads any more (folded
 * BatchNorm statistics, Gemm weights that were transposed, Clip bounds). */
static void drop_unused_constants(graph *g)
{
    for (int t = 0; t < g->nt; t++)
        if (g->t[t].is_const && !g->t[t].consumers) {
            free(g->t[t].f);
            free(g->t[t].i64);
            g->t[t].f = NULL;
            g->t[t].i64 = NULL;
        }
}

static int check_defined(const graph *g, ms_err *err)
{
    for (int i = 0; i < g->nn; i++) {
        const g_node *nd = &g->n[i];
        for (int k = 0; !nd->dead && k < nd->n_in; k++) {
            int t = nd->in[k];
            if (t < 0)
                continue;
            const g_tensor *x = &g->t[t];
            if (x->producer <= -2)
                return ms_err_set(err, MS_EUNSUPPORTED,
                                  "node '%s' (%s) reads '%s', an extra output of node '%s' that MedSearch does not compute",
                                  nd->name, nd->op_type, x->name, g->n[-2 - x->producer].name);
            if (x->producer < 0 && !x->is_const && !x->is_input)
                return ms_err_set(err, MS_EFORMAT,
                                  "node '%s' (%s) reads '%s', which no node, initializer or input defines",
                                  nd->name, nd->op_type, x->name);
        }
    }
    for (int i = 0; i < g->n_outputs; i++) {
        const g_tensor *x = &g->t[g->outputs[i]];
        if (x->producer < 0)
            return ms_err_set(err, MS_EFORMAT, "graph output '%s' is not produced by any node", x->name);
    }
    return 0;
}

/* Identity of a constant (exporters use it to share initializers) makes
 * its output a constant too, a copy, and the node disappears. */
static int constant_identities(graph *g, ms_err *err)
{
    for (int changed = 1; changed;) {
        changed = 0;
        for (int i = 0; i < g->nn; i++) {
            g_node *nd = &g->n[i];
            if (nd->dead || nd->op != G_IDENTITY || nd->in[0] < 0 || !g->t[nd->in[0]].is_const)
                continue;
            const g_tensor *s = &g->t[nd->in[0]];
            g_tensor *o = &g->t[nd->out];
            size_t n = (size_t)s->count;
            if (s->f && !(o->f = malloc((n ? n : 1) * sizeof *o->f)))
                return ms_err_set(err, MS_ENOMEM, "out of memory");
            if (s->i64 && !(o->i64 = malloc((n ? n : 1) * sizeof *o->i64)))
                return ms_err_set(err, MS_ENOMEM, "out of memory");
            if (s->f)
                memcpy(o->f, s->f, n * sizeof *o->f);
            if (s->i64)
                memcpy(o->i64, s->i64, n * sizeof *o->i64);
            o->is_const = 1;
            o->shaped = 1;
            o->elem_type = s->elem_type;
            o->count = s->count;
            o->rank = s->rank;
            memcpy(o->dims, s->dims, sizeof o->dims);
            o->producer = -1;
            nd->dead = 1;
            changed = 1;
        }
    }
    return 0;
}

/* A node on the cycle that blocked the sort: from any blocked node, walk
 * back through blocked producers; after nn steps the walk is on the cycle. */
static int node_on_cycle(const graph *g, const int *indeg)
{
    int bad = 0;
    while (bad < g->nn && (!indeg[bad] || g->n[bad].dead))
        bad++;
    for (int step = 0; step < g->nn; step++) {
        int next = -1;
        for (int k = 0; k < g->n[bad].n_in && next < 0; k++) {
            int t = g->n[bad].in[k], p = t >= 0 ? g->t[t].producer : -1;
            if (p >= 0 && indeg[p])
                next = p;
        }
        if (next < 0)
            break;
        bad = next;
    }
    return bad;
}

/* Consumers of each producing node as compressed rows (start[], edge[]),
 * and each node's count of produced inputs (indeg[]). Dead nodes (folded,
 * or rewritten into another) take no part. */
static void build_edges(const graph *g, int *start, int *edge, int *indeg, int *cursor)
{
    for (int i = 0; i < g->nn; i++)
        for (int k = 0; !g->n[i].dead && k < g->n[i].n_in; k++) {
            int t = g->n[i].in[k];
            if (t >= 0 && g->t[t].producer >= 0) {
                start[g->t[t].producer + 1]++;
                indeg[i]++;
            }
        }
    for (int i = 0; i < g->nn; i++) {
        start[i + 1] += start[i];
        cursor[i] = start[i];
    }
    for (int i = 0; i < g->nn; i++)
        for (int k = 0; !g->n[i].dead && k < g->n[i].n_in; k++) {
            int t = g->n[i].in[k];
            if (t >= 0 && g->t[t].producer >= 0)
                edge[cursor[g->t[t].producer]++] = i;
        }
}

/* Kahn's algorithm; nodes keep their file order where dependencies allow. */
int graph_order(graph *g, ms_err *err)
{
    int rc = check_defined(g, err);
    if (!rc)
        rc = constant_identities(g, err);
    if (rc)
        return rc;
    int nn = g->nn, total = 0;
    for (int i = 0; i < nn; i++)
        total += g->n[i].n_in;
    int *indeg = calloc((size_t)nn + 1, sizeof *indeg);
    int *start = calloc((size_t)nn + 2, sizeof *start);
    int *edge = malloc(((size_t)total + 1) * sizeof *edge);
    int *queue = malloc(((size_t)nn + 1) * sizeof *queue);
    free(g->order);
    g->order = malloc(((size_t)nn + 1) * sizeof *g->order);
    if (!indeg || !start || !edge || !queue || !g->order) {
        rc = ms_err_set(err, MS_ENOMEM, "out of memory");
        goto out;
    }
    build_edges(g, start, edge, indeg, queue /* as scratch */);
    int head = 0, tail = 0, live = 0;
    for (int i = 0; i < nn; i++) {
        live += !g->n[i].dead;
        if (!indeg[i] && !g->n[i].dead)
            queue[tail++] = i;
    }
    g->n_order = 0;
    while (head < tail) {
        int v = queue[head++];
        g->order[g->n_order++] = v;
        for (int e = start[v]; e < start[v + 1]; e++)
            if (--indeg[edge[e]] == 0)
                queue[tail++] = edge[e];
    }
    if (g->n_order != live) {
        int bad = node_on_cycle(g, indeg);
        rc = ms_err_set(err, MS_EFORMAT, "the graph has a cycle: node '%s' (%s) depends on its own output",
                        g->n[bad].name, g->n[bad].op_type);
        goto out;
    }
    count_consumers(g);
out:
    free(indeg);
    free(start);
    free(edge);
    free(queue);
    return rc;
}

/* --------------------------------------------------------------- folding */

/* A constant the caller may modify: itself when only this node reads it,
 * else a fresh copy named after the node. Returns the index or a code. */
static int own_constant(graph *g, int t, const char *node, const char *what, int64_t count,
                        ms_err *err)
{
    if (t >= 0 && g->t[t].consumers <= 1 && g->t[t].f && g->t[t].count == count)
        return t;
    char name[600];
    snprintf(name, sizeof name, "%.500s/%s#folded%d", node, what, g->nt);
    int n = graph_intern(g, name, err);
    if (n < 0)
        return n;
    g_tensor *x = &g->t[n];
    x->is_const = 1;
    x->shaped = 1;
    x->elem_type = 1;
    x->count = count;
    x->f = calloc((size_t)(count ? count : 1), sizeof *x->f);
    if (!x->f)
        return ms_err_set(err, MS_ENOMEM, "out of memory");
    x->consumers = 1;
    if (t >= 0) {
        const g_tensor *s = &g->t[t];
        x->rank = s->rank;
        memcpy(x->dims, s->dims, sizeof x->dims);
        if (s->f && s->count == count)
            memcpy(x->f, s->f, (size_t)count * sizeof *x->f);
        g->t[t].consumers--;
    } else {
        x->rank = 1;
        x->dims[0] = count;
    }
    return n;
}

static int fold_bn(graph *g, g_node *conv, g_node *bn, ms_err *err)
{
    const g_tensor *w0 = &g->t[conv->weights];
    int64_t m = w0->dims[0], per = w0->count / m;
    int w = own_constant(g, conv->weights, conv->name, "weights", w0->count, err);
    if (w < 0)
        return w;
    conv->weights = w;
    int b = own_constant(g, conv->bias, conv->name, "bias", m, err);
    if (b < 0)
        return b;
    conv->bias = b;
    const float *scale = g->t[bn->in[1]].f, *shift = g->t[bn->in[2]].f;
    const float *mean = g->t[bn->in[3]].f, *var = g->t[bn->in[4]].f;
    float *wf = g->t[w].f, *bf = g->t[b].f;
    for (int64_t o = 0; o < m; o++) {
        double v = (double)var[o] + bn->eps;
        if (!(v > 0))
            return ms_err_set(err, MS_EFORMAT, "node '%s' (BatchNormalization): variance + epsilon is %g at channel %lld",
                              bn->name, v, (long long)o);
        double s = scale[o] / sqrt(v);
        for (int64_t k = 0; k < per; k++)
            wf[o * per + k] = (float)(wf[o * per + k] * s);
        bf[o] = (float)(((double)bf[o] - mean[o]) * s + shift[o]);
    }
    for (int k = 1; k < 5; k++)
        g->t[bn->in[k]].consumers--;
    return 0;
}

/* Gemm weights become [M, K] times alpha, its bias [M] times beta. */
static int prepare_gemm(graph *g, g_node *nd, ms_err *err)
{
    const g_tensor *b0 = &g->t[nd->in[1]];
    int64_t m = g->t[nd->out].dims[1], k = g->t[nd->in[0]].dims[1];
    nd->weights = nd->in[1];
    if (!nd->trans_b || nd->alpha != 1.0f) {
        int w = own_constant(g, -1, nd->name, "weights", m * k, err);
        if (w < 0)
            return w;
        b0 = &g->t[nd->in[1]];
        g_tensor *wt = &g->t[w];
        wt->rank = 2;
        wt->dims[0] = m;
        wt->dims[1] = k;
        for (int64_t o = 0; o < m; o++)
            for (int64_t i = 0; i < k; i++)
                wt->f[o * k + i] = nd->alpha * (nd->trans_b ? b0->f[o * k + i] : b0->f[i * m + o]);
        g->t[nd->in[1]].consumers--;
        nd->weights = w;
    }
    int c = nd->n_in > 2 ? nd->in[2] : -1;
    nd->bias = c;
    if (c >= 0 && (g->t[c].count != m || nd->beta != 1.0f)) {
        int b = own_constant(g, -1, nd->name, "bias", m, err);
        if (b < 0)
            return b;
        const g_tensor *ct = &g->t[c];
        for (int64_t o = 0; o < m; o++)
            g->t[b].f[o] = nd->beta * ct->f[ct->count == 1 ? 0 : o];
        g->t[c].consumers--;
        nd->bias = b;
    }
    return 0;
}

/* ---------------------------------------------------------------- fusion */

static int can_fuse_into(const graph *g, int t, const unsigned char *keep, int consumers)
{
    return t >= 0 && !keep[t] && g->t[t].consumers == consumers && graph_producer(g, t) >= 0;
}

void graph_take_output(graph *g, g_node *into, g_node *from)
{
    g_tensor *mid = &g->t[into->out];
    mid->consumers = 0;
    mid->producer = -1;
    mid->fused_into = 1 + (int)(into - g->n);
    into->out = from->out;
    g->t[from->out].producer = (int)(into - g->n);
    from->dead = 1;
}

int graph_eltwise_post(const g_node *e, g_post *p)
{
    memset(p, 0, sizeof *p);
    p->kind = G_POST_ELTWISE;
    switch (e->op) {
    case G_RELU: p->act = G_ACT_RELU; return 1;
    case G_CLIP: p->act = G_ACT_CLIP; p->lo = e->clip_lo; p->hi = e->clip_hi; return 1;
    case G_SIGMOID: p->act = G_ACT_SIGMOID; return 1;
    case G_SWISH: p->act = G_ACT_SWISH; return 1;
    case G_HARDSIGMOID: p->act = G_ACT_HARDSIGMOID; p->lo = e->alpha; p->hi = e->beta; return 1;
    case G_HARDSWISH: p->act = G_ACT_HARDSWISH; return 1;
    case G_LEAKYRELU: p->act = G_ACT_LEAKYRELU; p->lo = e->alpha; return 1;
    case G_ELU: p->act = G_ACT_ELU; p->lo = e->alpha; return 1;
    case G_SELU: p->act = G_ACT_SELU; p->lo = e->alpha; p->hi = e->beta; return 1;
    case G_TANH: p->act = G_ACT_TANH; return 1;
    case G_SOFTPLUS: p->act = G_ACT_SOFTPLUS; return 1;
    case G_GELU: p->act = G_ACT_GELU_ERF; return 1;
    case G_GELU_TANH: p->act = G_ACT_GELU_TANH; return 1;
    default: return 0;
    }
}

static int is_binary(g_op op)
{
    return op == G_ADD || op == G_SUB || op == G_MUL || op == G_DIV;
}

/* An activation after a Conv, Gemm or binary node becomes its post-op; any
 * other node is left as it is. */
static void fuse_eltwise(graph *g, g_node *e, const unsigned char *keep)
{
    g_post post;
    if (!graph_eltwise_post(e, &post))
        return;
    int x = e->in[0];
    if (!can_fuse_into(g, x, keep, 1))
        return;
    g_node *p = &g->n[graph_producer(g, x)];
    if ((p->op != G_CONV && p->op != G_GEMM && !is_binary(p->op)) || p->n_post >= G_MAX_POST)
        return;
    p->post[p->n_post++] = post;
    graph_take_output(g, p, e);
    g->stats.act_fused++;
}

/* The op x * gate(x) is, for the gate node: swish for Sigmoid, hard swish for
 * HardSigmoid with ONNX HardSwish's alpha 1/6 and beta 1/2 (PyTorch exports
 * Hardswish that way before opset 14); G_OP_COUNT for anything else. */
static g_op self_gated(const g_node *gate)
{
    if (gate->op == G_SIGMOID)
        return G_SWISH;
    if (gate->op == G_HARDSIGMOID && fabsf(gate->alpha - 1.0f / 6.0f) < 1e-6f && gate->beta == 0.5f)
        return G_HARDSWISH;
    return G_OP_COUNT;
}

/* For a Mul of x and gate(x) that is a swish or hard swish: the side (0 or 1)
 * holding x; -1 for any other Mul. */
static int gated_input(const graph *g, const g_node *mul)
{
    for (int side = 0; side < 2; side++) {
        int s = mul->in[side], x = mul->in[1 - side];
        int sp = s < 0 || x < 0 ? -1 : graph_producer(g, s);
        if (sp >= 0 && self_gated(&g->n[sp]) != G_OP_COUNT && g->n[sp].in[0] == x)
            return 1 - side;
    }
    return -1;
}

/* x * Sigmoid(x) -> swish and x * HardSigmoid(x) -> hard swish, fused into
 * x's Conv when they can be. */
static void fuse_swish(graph *g, g_node *mul, const unsigned char *keep)
{
    for (int side = 0; side < 2; side++) {
        int s = mul->in[side], x = mul->in[1 - side];
        int sp = graph_producer(g, s);
        g_op op = sp < 0 ? G_OP_COUNT : self_gated(&g->n[sp]);
        if (op == G_OP_COUNT || g->n[sp].in[0] != x || !can_fuse_into(g, s, keep, 1) || g->t[x].is_const)
            continue;
        g_node *sig = &g->n[sp];
        sig->dead = 1;
        g->t[s].consumers = 0;
        g->t[x].consumers--; /* the gate no longer reads x */
        mul->op = op;
        mul->in[0] = x;
        mul->n_in = 1;
        g->stats.swish_fused++;
        return;
    }
}

/* ------------------------------------------------------------ Pad folding */

/* The one live node reading t, when it reads it once as input 0; else -1. */
static int sole_reader(const graph *g, int t, const unsigned char *keep)
{
    if (keep[t] || g->t[t].consumers != 1)
        return -1;
    for (int i = 0; i < g->n_order; i++) {
        const g_node *nd = &g->n[g->order[i]];
        for (int k = 0; !nd->dead && k < nd->n_in; k++)
            if (nd->in[k] == t)
                return k == 0 ? g->order[i] : -1;
    }
    return -1;
}

/* What the ops that made a tensor tell of its sign, from best to worst. */
typedef enum { SIGN_NONNEGATIVE, SIGN_NEARLY_NONNEGATIVE, SIGN_ANY } value_sign;

/* Relu, Sigmoid, HardSigmoid, Softplus and a Clip at or above 0 make values
 * >= 0; swish and hard swish (a fused op, or still the Mul of x and its gate)
 * values >= -0.28 and -0.375, GELU >= -0.17; pools, Pad, LRN and Identity keep their input's
 * sign and a Concat the worst of its inputs'. Anything else may be negative.
 * *budget bounds the nodes visited: a hostile graph of Concats reading
 * Concats would otherwise be walked along every path, exponentially many,
 * and deeply recursed into; past the budget the answer is the safe one,
 * SIGN_ANY. */
static value_sign sign_of(const graph *g, int t, int *budget)
{
    for (int p = graph_producer(g, t); p >= 0 && --*budget > 0; p = graph_producer(g, g->n[p].in[0])) {
        const g_node *nd = &g->n[p];
        switch (nd->op) {
        case G_RELU:
        case G_SIGMOID:
        case G_HARDSIGMOID:
        case G_SOFTPLUS: return SIGN_NONNEGATIVE;
        case G_CLIP: return nd->clip_lo >= 0.0f ? SIGN_NONNEGATIVE : SIGN_ANY;
        case G_SWISH:
        case G_HARDSWISH:
        case G_GELU: /* >= -0.17 */
        case G_GELU_TANH: return SIGN_NEARLY_NONNEGATIVE;
        case G_MUL: return gated_input(g, nd) >= 0 ? SIGN_NEARLY_NONNEGATIVE : SIGN_ANY;
        case G_CONCAT: {
            value_sign worst = SIGN_NONNEGATIVE;
            for (int i = 0; i < nd->n_in && worst != SIGN_ANY; i++) {
                value_sign s = nd->in[i] < 0 ? SIGN_ANY : sign_of(g, nd->in[i], budget);
                worst = s > worst ? s : worst;
            }
            return worst;
        }
        case G_MAXPOOL:
        case G_AVGPOOL:
        case G_GAP:
        case G_GMP:
        case G_IDENTITY:
        case G_LRN: /* divides by a positive number */
        case G_PAD: continue;
        default: return SIGN_ANY;
        }
    }
    return SIGN_ANY;
}

#define SIGN_WALK_BUDGET 256 /* nodes: more than any real network's last Concat needs */

static int nonnegative(const graph *g, int t)
{
    int budget = SIGN_WALK_BUDGET;
    return sign_of(g, t, &budget) == SIGN_NONNEGATIVE;
}

int graph_nearly_nonnegative(const graph *g, int t)
{
    int budget = SIGN_WALK_BUDGET;
    return sign_of(g, t, &budget) != SIGN_ANY;
}

/* Why zero padding cannot become the reader's own padding; NULL when it can.
 * A Conv pads with zeros; an AveragePool does when it counts its padding (or
 * has none, and then counts the Pad's); a MaxPool ignores its padding, which
 * equals zero padding only when no value is negative. Pools also need their
 * padding smaller than the kernel. */
static const char *pad_fold_refusal(const graph *g, const g_node *pad, const g_node *r)
{
    if (!r)
        return "its output is read by more than one node, or is a graph output";
    if (r->op == G_CONV)
        return NULL;
    if (r->op != G_AVGPOOL && r->op != G_MAXPOOL)
        return "it is read by a node that is not a Conv, AveragePool or MaxPool";
    int own = r->pad_l[0] || r->pad_l[1] || r->pad_r[0] || r->pad_r[1];
    if (r->op == G_AVGPOOL && own && !r->count_include_pad)
        return "the AveragePool reading it has padding of its own that it does not count";
    if (r->op == G_MAXPOOL && !nonnegative(g, pad->in[0]))
        return "the MaxPool reading it may see negative values, where zeros would win";
    for (int ax = 0; ax < 2; ax++) {
        int dk = (r->kernel[ax] - 1) * r->dilation[ax] + 1;
        if (r->pad_l[ax] + pad->pad_l[ax] >= dk || r->pad_r[ax] + pad->pad_r[ax] >= dk)
            return "the padding would not be smaller than the pool's kernel";
    }
    return NULL;
}

/* A Pad node becomes an Identity when it pads nothing, else it is folded into
 * the one Conv or pool reading it. MedSearch has no padding primitive: a Pad
 * that cannot be folded is refused. */
static int fold_pad(graph *g, g_node *pad, const unsigned char *keep, ms_err *err)
{
    if (!pad->pad_l[0] && !pad->pad_l[1] && !pad->pad_r[0] && !pad->pad_r[1]) {
        pad->op = G_IDENTITY;
        pad->n_in = 1;
        return 0;
    }
    int ri = sole_reader(g, pad->out, keep);
    g_node *r = ri >= 0 ? &g->n[ri] : NULL;
    const char *why = pad_fold_refusal(g, pad, r);
    if (why)
        return ms_err_set(err, MS_EUNSUPPORTED,
                          "node '%s' (Pad): MedSearch runs zero padding only as the padding of the Conv or pool "
                          "that reads it, and cannot here: %s", pad->name, why);
    for (int ax = 0; ax < 2; ax++) {
        r->pad_l[ax] += pad->pad_l[ax];
        r->pad_r[ax] += pad->pad_r[ax];
    }
    if (r->op == G_AVGPOOL)
        r->count_include_pad = 1;
    r->auto_pad = 0; /* resolved into pad_l / pad_r by shape inference */
    r->in[0] = pad->in[0];
    g->t[pad->out].consumers = 0;
    pad->dead = 1;
    return 0;
}

static int order_index(const graph *g, int node)
{
    for (int i = 0; i < g->n_order; i++)
        if (g->order[i] == node)
            return i;
    return -1;
}

/* Add(Conv(...), r) -> Conv with a sum post-op accumulating into r, run where
 * the Add was (every input of the Conv is ready there, and so is r). */
static void fuse_sum(graph *g, g_node *add, int add_pos, const unsigned char *keep)
{
    const g_tensor *a = &g->t[add->in[0]], *b = &g->t[add->in[1]];
    if (a->is_const || b->is_const || a->rank != 4 || memcmp(a->dims, b->dims, sizeof a->dims) ||
        add->in[0] == add->in[1])
        return;
    int best = -1, best_pos = -1;
    for (int side = 0; side < 2; side++) {
        int t = add->in[side];
        if (!can_fuse_into(g, t, keep, 1))
            continue;
        int p = graph_producer(g, t);
        const g_node *c = &g->n[p];
        int has_sum = 0;
        for (int k = 0; k < c->n_post; k++)
            has_sum |= c->post[k].kind == G_POST_SUM;
        if (c->op != G_CONV || has_sum || c->n_post >= G_MAX_POST)
            continue;
        int pos = order_index(g, p);
        if (pos > best_pos) {
            best_pos = pos;
            best = side;
        }
    }
    if (best < 0)
        return;
    int conv_i = graph_producer(g, add->in[best]);
    g_node *conv = &g->n[conv_i];
    g_post *p = &conv->post[conv->n_post++];
    memset(p, 0, sizeof *p);
    p->kind = G_POST_SUM;
    p->tensor = add->in[1 - best];
    graph_take_output(g, conv, add);
    /* move the conv to the Add's slot */
    memmove(&g->order[best_pos], &g->order[best_pos + 1], (size_t)(add_pos - best_pos) * sizeof *g->order);
    g->order[add_pos] = conv_i;
    g->stats.add_fused++;
}

static void compact_order(graph *g)
{
    int n = 0;
    for (int i = 0; i < g->n_order; i++)
        if (!g->n[g->order[i]].dead)
            g->order[n++] = g->order[i];
    g->n_order = n;
}

int graph_optimise(graph *g, const int *keep_list, int n_keep, ms_err *err)
{
    unsigned char *keep = calloc((size_t)g->nt + 1, 1);
    if (!keep)
        return ms_err_set(err, MS_ENOMEM, "out of memory");
    for (int i = 0; i < n_keep; i++)
        if (keep_list[i] >= 0)
            keep[keep_list[i]] = 1;
    count_consumers(g); /* shape arithmetic folded by shape inference reads nothing now */
    for (int i = 0; i < g->n_outputs; i++)
        keep[g->outputs[i]] = 1;
    int rc = 0;
    /* weights and biases, Gemm in [M, K] form */
    for (int i = 0; i < g->n_order && !rc; i++) {
        g_node *nd = &g->n[g->order[i]];
        if (nd->op == G_CONV) {
            nd->weights = nd->in[1];
            nd->bias = nd->n_in > 2 ? nd->in[2] : -1;
        } else if (nd->op == G_GEMM) {
            rc = prepare_gemm(g, nd, err);
        }
    }
    for (int i = 0; i < g->n_order && !rc; i++)
        if (g->n[g->order[i]].op == G_PAD)
            rc = fold_pad(g, &g->n[g->order[i]], keep, err);
    /* BatchNorm right after a Conv whose output nothing else reads */
    for (int i = 0; i < g->n_order && !rc; i++) {
        g_node *bn = &g->n[g->order[i]];
        if (bn->op != G_BN || bn->dead || !can_fuse_into(g, bn->in[0], keep, 1))
            continue;
        g_node *conv = &g->n[graph_producer(g, bn->in[0])];
        if (conv->op != G_CONV || conv->n_post)
            continue;
        if (!(rc = fold_bn(g, conv, bn, err))) {
            graph_take_output(g, conv, bn);
            g->stats.bn_folded++;
        }
    }
    compact_order(g);
    /* one pass in order: each node's producers are already in final form */
    for (int i = 0; i < g->n_order && !rc; i++) {
        g_node *nd = &g->n[g->order[i]];
        if (nd->dead)
            continue;
        if (nd->op == G_MUL)
            fuse_swish(g, nd, keep);
        if (nd->op == G_ADD)
            fuse_sum(g, nd, i, keep);
        else
            fuse_eltwise(g, nd, keep);
    }
    compact_order(g);
    count_consumers(g);
    if (!rc)
        drop_unused_constants(g);
    free(keep);
    return rc;
}

/* ------------------------------------------------------------- analysis */

void graph_mark_needed(const graph *g, int target, unsigned char *need)
{
    int *stack = malloc(((size_t)g->nt + 1) * sizeof *stack);
    unsigned char *seen = calloc((size_t)g->nt + 1, 1);
    if (!stack || !seen) {
        /* without memory, mark everything: correct, only slower */
        for (int i = 0; i < g->n_order; i++)
            need[g->order[i]] = 1;
        free(stack);
        free(seen);
        return;
    }
    int sp = 0;
    stack[sp++] = target;
    seen[target] = 1;
    while (sp) {
        int t = stack[--sp], p = graph_producer(g, t);
        if (p < 0 || need[p])
            continue;
        need[p] = 1;
        const g_node *nd = &g->n[p];
        for (int k = 0; k < nd->n_in + nd->n_post; k++) {
            int r = k < nd->n_in ? nd->in[k]
                    : nd->post[k - nd->n_in].kind == G_POST_SUM ? nd->post[k - nd->n_in].tensor : -1;
            if (r >= 0 && !g->t[r].is_const && !seen[r]) {
                seen[r] = 1;
                stack[sp++] = r;
            }
        }
    }
    free(stack);
    free(seen);
}

int graph_first_unsupported(const graph *g, int t)
{
    unsigned char *need = calloc((size_t)g->nn + 1, 1);
    if (!need)
        return MS_ENOMEM;
    graph_mark_needed(g, t, need);
    int found = -1;
    for (int i = 0; i < g->n_order && found < 0; i++)
        if (g->n[g->order[i]].op == G_UNSUPPORTED && need[g->order[i]])
            found = g->order[i];
    free(need);
    return found;
}

int graph_prune(graph *g, int feature, ms_err *err)
{
    int u = graph_first_unsupported(g, feature), dropped = 0;
    if (u == MS_ENOMEM)
        return ms_err_set(err, MS_ENOMEM, "out of memory");
    if (u >= 0)
        return onnx_unsupported(g, &g->n[u], feature, err);
    /* in order, so a node's producers are settled before it */
    for (int i = 0; i < g->n_order; i++) {
        g_node *nd = &g->n[g->order[i]];
        int tainted = nd->op == G_UNSUPPORTED;
        for (int k = 0; k < nd->n_in && !tainted; k++) {
            int p = nd->in[k] >= 0 ? g->t[nd->in[k]].producer : -1;
            tainted = p >= 0 && g->n[p].dead;
        }
        if (tainted) {
            nd->dead = 1;
            dropped++;
        }
    }
    if (!dropped)
        return 0;
    compact_order(g);
    count_consumers(g);
    return 0;
}

int graph_max_reads(const graph *g)
{
    int m = 1;
    for (int i = 0; i < g->nn; i++)
        if (g->n[i].n_in + g->n[i].n_post > m)
            m = g->n[i].n_in + g->n[i].n_post;
    return m;
}

static double node_flops(const graph *g, const g_node *nd)
{
    const g_tensor *o = &g->t[nd->out];
    if (nd->op == G_CONV) {
        const g_tensor *w = &g->t[nd->weights];
        int64_t per_out = w->dims[1] * w->dims[2] * w->dims[3];
        return 2.0 * (double)graph_elems(o) * (double)per_out;
    }
    if (nd->op == G_GEMM)
        return 2.0 * (double)o->dims[1] * (double)g->t[nd->in[0]].dims[1];
    return 0;
}

double graph_flops(const graph *g, int target)
{
    unsigned char *need = calloc((size_t)g->nn + 1, 1);
    if (!need)
        return 0;
    graph_mark_needed(g, target, need);
    double f = 0;
    for (int i = 0; i < g->n_order; i++)
        if (need[g->order[i]])
            f += node_flops(g, &g->n[g->order[i]]);
    free(need);
    return f;
}

int64_t graph_live_bytes(const graph *g, int target)
{
    unsigned char *need = calloc((size_t)g->nn + 1, 1);
    int *last = malloc(((size_t)g->nt + 1) * sizeof *last);
    int cap = graph_max_reads(g);
    int *reads = malloc((size_t)cap * sizeof *reads);
    int64_t peak = 0, live = 0;
    if (!need || !last || !reads) {
        free(need);
        free(last);
        free(reads);
        return -1;
    }
    graph_mark_needed(g, target, need);
    for (int t = 0; t < g->nt; t++)
        last[t] = -1;
    for (int i = 0; i < g->n_order; i++) {
        const g_node *nd = &g->n[g->order[i]];
        if (!need[g->order[i]])
            continue;
        int n = graph_node_reads(g, nd, reads, cap);
        for (int k = 0; k < n; k++)
            last[reads[k]] = i;
    }
    last[target] = g->n_order;
    live = 4 * graph_elems(&g->t[g->input]);
    for (int i = 0; i < g->n_order; i++) {
        const g_node *nd = &g->n[g->order[i]];
        if (!need[g->order[i]])
            continue;
        live += 4 * graph_elems(&g->t[nd->out]);
        if (live > peak)
            peak = live;
        int n = graph_node_reads(g, nd, reads, cap);
        for (int k = 0; k < n; k++)
            if (last[reads[k]] == i) {
                live -= 4 * graph_elems(&g->t[reads[k]]);
                last[reads[k]] = -2; /* count each release once */
            }
    }
    free(need);
    free(last);
    free(reads);
    return peak;
}

/* The node that computes t, seen through Flatten, Reshape, Squeeze and
 * Identity; -1 for none. */
static int producer_through_views(const graph *g, int t)
{
    int p = graph_producer(g, t);
    while (p >= 0 && (g->n[p].op == G_FLATTEN || g->n[p].op == G_RESHAPE || g->n[p].op == G_SQUEEZE ||
                      g->n[p].op == G_IDENTITY))
        p = graph_producer(g, g->n[p].in[0]);
    return p;
}

int graph_global_pool_node(const graph *g, int t)
{
    int p = producer_through_views(g, t);
    return p >= 0 && (g->n[p].op == G_GAP || g->n[p].op == G_GMP || g->n[p].op == G_AVGPOOL ||
                      g->n[p].op == G_MAXPOOL) ? p : -1;
}

/* After a classifier's logits: what turns them into scores, and views. */
static int after_logits(const g_node *nd)
{
    if (nd->op == G_FLATTEN || nd->op == G_RESHAPE || nd->op == G_SQUEEZE || nd->op == G_IDENTITY ||
        nd->op == G_SIGMOID)
        return 1;
    return nd->op == G_UNSUPPORTED && (!strcmp(nd->op_type, "Softmax") || !strcmp(nd->op_type, "LogSoftmax"));
}

/* A constant operand of a two-input node: the other input's index, or -1. */
static int other_than_constant(const graph *g, const g_node *nd)
{
    if (nd->n_in != 2 || nd->in[0] < 0 || nd->in[1] < 0)
        return -1;
    if (g->t[nd->in[1]].is_const && !g->t[nd->in[0]].is_const)
        return nd->in[0];
    if (g->t[nd->in[0]].is_const && !g->t[nd->in[1]].is_const)
        return nd->in[1];
    return -1;
}

/* The tensor one dense layer of a head reads, with *layer set to its Gemm
 * (constant weights) or MatMul (constant weights, then possibly the Add of
 * a constant bias) node p; -1 when p is no such layer. */
static int dense_layer_input(const graph *g, int p, int *layer)
{
    const g_node *nd = &g->n[p];
    if (nd->op == G_GEMM && nd->n_in >= 2 && nd->in[0] >= 0 && !g->t[nd->in[0]].is_const && nd->in[1] >= 0 &&
        g->t[nd->in[1]].is_const) {
        *layer = p;
        return nd->in[0];
    }
    /* MatMul (not run by MedSearch), possibly followed by the Add of its bias */
    int x;
    if (nd->op == G_ADD && (x = other_than_constant(g, nd)) >= 0) {
        p = graph_producer(g, x);
        nd = p >= 0 ? &g->n[p] : NULL;
    }
    if (!nd || nd->op != G_UNSUPPORTED || strcmp(nd->op_type, "MatMul"))
        return -1;
    *layer = p;
    return other_than_constant(g, nd);
}

/* Tensor t with the activations and Dropouts (Identity once loaded) that
 * made it undone: what a hidden layer of a head computed. Before fusion, so
 * a swish or hard swish is still a Mul of x and its gate. */
static int before_activations(const graph *g, int t)
{
    for (int p = graph_producer(g, t); p >= 0; p = graph_producer(g, t)) {
        const g_node *nd = &g->n[p];
        g_post post;
        int side;
        if (graph_eltwise_post(nd, &post) || nd->op == G_IDENTITY)
            t = nd->in[0];
        else if (nd->op == G_MUL && (side = gated_input(g, nd)) >= 0)
            t = nd->in[side];
        else
            break;
    }
    return t;
}

int graph_classifier_head(const graph *g, int t, int *head, int *layers)
{
    int p = graph_producer(g, t);
    while (p >= 0 && after_logits(&g->n[p]))
        p = g->n[p].n_in ? graph_producer(g, g->n[p].in[0]) : -1;
    /* dense layers, the last first: the logits' layer, then any hidden ones
     * (MobileNetV3's Linear, Hardswish, Dropout, Linear) down to the pool */
    int x = -1, n = 0, layer = -1;
    for (int d = p; d >= 0 && n < G_MAX_HEAD_LAYERS; n++) {
        int in = dense_layer_input(g, d, &layer);
        if (in < 0)
            break;
        x = in;
        d = graph_producer(g, before_activations(g, x));
    }
    /* ConvNeXt normalises the pooled vector before its classifier: the
     * feature is then the normalised vector the first layer reads */
    int ln = n == 0 || x < 0 ? -1 : producer_through_views(g, x);
    int pooled = ln >= 0 && g->n[ln].op == G_LAYERNORM ? g->n[ln].in[0] : x;
    /* only a pool that is global whatever the input size: an AveragePool may
     * not be, and the head's output would then be the feature after all */
    int gp = n == 0 || x < 0 ? -1 : graph_global_pool_node(g, pooled);
    if (gp < 0 || (g->n[gp].op != G_GAP && g->n[gp].op != G_GMP))
        return -1;
    *head = layer;
    *layers = n;
    return x;
}

int graph_classifier_head_behind(const graph *g, int t, int *head, int *layers)
{
    int *stack = malloc(((size_t)g->nt + 1) * sizeof *stack);
    unsigned char *seen = calloc((size_t)g->nt + 1, 1);
    int sp = 0, pooled = -1, scores = -1, h, l;
    if (!stack || !seen)
        goto fail;
    stack[sp++] = t;
    seen[t] = 1;
    while (sp) {
        int u = stack[--sp], p = graph_producer(g, u);
        if (p < 0) {
            if (g->t[u].is_input)
                goto fail; /* a path from the image around the head */
            continue;
        }
        int x = graph_classifier_head(g, u, &h, &l);
        if (x >= 0) { /* a head's scores: every walk must end at the same ones */
            if (pooled >= 0 && (x != pooled || u != scores))
                goto fail;
            pooled = x, *head = h, *layers = l, scores = u;
            continue;
        }
        const g_node *nd = &g->n[p];
        for (int k = 0; k < nd->n_in; k++) {
            int r = nd->in[k];
            if (r >= 0 && !g->t[r].is_const && !seen[r]) {
                seen[r] = 1;
                stack[sp++] = r;
            }
        }
    }
    free(stack);
    free(seen);
    return pooled;
fail:
    free(stack);
    free(seen);
    return -1;
}

int graph_pool_is_global(const graph *g, int node)
{
    const g_node *nd = &g->n[node];
    if (nd->op == G_GAP || nd->op == G_GMP)
        return 1;
    if (nd->op != G_AVGPOOL && nd->op != G_MAXPOOL)
        return 0;
    const g_tensor *x = &g->t[nd->in[0]];
    if (!x->shaped || x->rank != 4)
        return 0;
    for (int ax = 0; ax < 2; ax++)
        if (nd->kernel[ax] != x->dims[2 + ax] || nd->pad_l[ax] || nd->pad_r[ax] || nd->dilation[ax] != 1)
            return 0;
    return 1;
}
