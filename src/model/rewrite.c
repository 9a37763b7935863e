/*
 * rewrite.c - load-time rewrites that turn op sequences exporters write into
 * ops MedSearch runs. They run on the ordered graph, before the feature is
 * chosen, and change nothing they do not recognise whole.
 *
 * GELU. PyTorch exports nn.GELU before opset 20 as
 *     y = Mul(Mul(x, Add(Erf(Div(x, sqrt 2)), 1)), 0.5)
 * (or with the 0.5 applied to x first, or Mul(x, 1/sqrt 2) for the Div).
 * The last node of the chain becomes one G_GELU reading x: an activation
 * that fuses into the Conv before it like Relu.
 *
 * Layer normalisation over channels. Before opset 17, F.layer_norm exports
 * as its formula,
 *     d = Sub(x, ReduceMean(x)),  y = Div(d, Sqrt(Add(ReduceMean(Pow(d, 2)), eps)))
 * with both means over one axis: the last (a channels-last tensor, as
 * ConvNeXt permutes it) or axis 1 (the channels of NCHW, as ConvNeXt's
 * original "channels_first" LayerNorm writes it by hand). The Div becomes one
 * G_LAYERNORM; a Mul by and an Add of per-channel constants right after it
 * (the layer's weight and bias) become its scale and shift.
 *
 * One channel. torchvision's Inception v3 and GoogLeNet with ImageNet weights
 * rescale each channel of their input first, as
 *     Concat(Add(Mul(Unsqueeze(Gather(x, 0, axis 1), 1), s0), b0), ...)
 * A Gather of one index on axis 1 of an activation (shapes are 1-D, so
 * never such a Gather) becomes a G_CHANNEL taking that channel, with the
 * Unsqueeze after it when the index is a scalar.
 *
 * Channels-last regions. ConvNeXt runs its blocks as
 *     Transpose(0,2,3,1) -> LayerNorm -> MatMul -> Add -> GELU -> MatMul -> Add -> Transpose(0,3,1,2)
 * Inside such a region every op works on the last axis, the channels, or
 * elementwise: a MatMul by a constant [C, K] is a 1x1 convolution, a
 * LayerNorm over the last axis is one over the channels, a constant of C
 * values broadcasts along the channels. So the region runs in NCHW as well:
 * both Transposes become Identity, each MatMul a 1x1 Conv (its Add of a
 * constant its bias), each per-channel constant [C, 1, 1]. A region is lifted
 * only when every node reading one of its tensors is of that kind or a
 * closing Transpose and none of its tensors is a graph output; otherwise
 * the graph is left as it is and the Transposes stay refused.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "model/graph.h"

/* The live readers of each tensor, built once per pass: readers of t are
 * node[start[t] .. start[t + 1]). Nodes killed during a pass stay listed;
 * callers check `dead`. `keep`: the tensor named as the feature (-1 for
 * none), which, like a graph output, counts as one more reader, so that no
 * rewrite folds it away or changes its layout. */
typedef struct readers {
    int *start, *node;
    int keep;
} readers;

static int readers_build(const graph *g, int keep, readers *r, ms_err *err)
{
    r->keep = keep;
    r->start = calloc((size_t)g->nt + 2, sizeof *r->start);
    int total = 0;
    for (int i = 0; i < g->nn; i++)
        total += g->n[i].dead ? 0 : g->n[i].n_in;
    r->node = malloc(((size_t)total + 1) * sizeof *r->node);
    int *fill = calloc((size_t)g->nt + 1, sizeof *fill);
    if (!r->start || !r->node || !fill) {
        free(r->start);
        free(r->node);
        free(fill);
        return ms_err_set(err, MS_ENOMEM, "out of memory");
    }
    for (int i = 0; i < g->nn; i++)
        for (int k = 0; !g->n[i].dead && k < g->n[i].n_in; k++)
            if (g->n[i].in[k] >= 0)
                r->start[g->n[i].in[k] + 1]++;
    for (int t = 0; t < g->nt; t++)
        r->start[t + 1] += r->start[t];
    for (int i = 0; i < g->nn; i++)
        for (int k = 0; !g->n[i].dead && k < g->n[i].n_in; k++) {
            int t = g->n[i].in[k];
            /* a node reading t twice (Mul(d, d)) is listed once */
            if (t >= 0 && (fill[t] == 0 || r->node[r->start[t] + fill[t] - 1] != i))
                r->node[r->start[t] + fill[t]++] = i;
        }
    for (int t = 0; t < g->nt; t++) /* close the gaps of nodes listed once */
        for (int k = r->start[t] + fill[t]; k < r->start[t + 1]; k++)
            r->node[k] = -1;
    free(fill);
    return 0;
}

static void readers_free(readers *r)
{
    free(r->start);
    free(r->node);
}

/* Whether t must stay as the file computes it: a graph output, or `keep`. */
static int is_kept(const graph *g, int keep, int t)
{
    for (int i = 0; i < g->n_outputs; i++)
        if (g->outputs[i] == t)
            return 1;
    return t == keep;
}

/* How many live nodes read t (a kept tensor counts as one more). */
static int n_readers(const graph *g, const readers *r, int t)
{
    int n = is_kept(g, r->keep, t);
    for (int k = r->start[t]; k < r->start[t + 1]; k++)
        n += r->node[k] >= 0 && !g->n[r->node[k]].dead;
    return n;
}

/* The one live node reading t, when t has no other use; else -1. */
static int sole_reader(const graph *g, const readers *r, int t)
{
    if (t < 0 || n_readers(g, r, t) != 1)
        return -1;
    for (int k = r->start[t]; k < r->start[t + 1]; k++)
        if (r->node[k] >= 0 && !g->n[r->node[k]].dead)
            return r->node[k];
    return -1;
}

/* Live node i when it runs (or is counted as) op. */
static int node_is(const graph *g, int i, g_op op)
{
    if (i < 0 || g->n[i].dead)
        return 0;
    switch (op) {
    case G_MATMUL: return !strcmp(g->n[i].op_type, "MatMul") && g->n[i].op == G_UNSUPPORTED;
    case G_ERF: return !strcmp(g->n[i].op_type, "Erf") && g->n[i].op == G_UNSUPPORTED;
    case G_POW: return !strcmp(g->n[i].op_type, "Pow") && g->n[i].op == G_UNSUPPORTED;
    case G_SQRT: return !strcmp(g->n[i].op_type, "Sqrt") && g->n[i].op == G_UNSUPPORTED;
    case G_REDUCEMEAN: return g->n[i].op == G_GAP && !strcmp(g->n[i].op_type, "ReduceMean");
    default: return g->n[i].op == op;
    }
}

static int producer_of(const graph *g, int t)
{
    return t < 0 ? -1 : graph_producer(g, t);
}

/* The float value of a one-value constant, into *v. */
static int scalar_of(const graph *g, int t, float *v)
{
    if (t < 0 || !g->t[t].is_const || g->t[t].elem_type != 1 || g->t[t].count != 1 || !g->t[t].f)
        return 0;
    *v = g->t[t].f[0];
    return 1;
}

/* Whether nd has exactly two inputs, both given. */
static int two_inputs(const g_node *nd)
{
    return nd->n_in == 2 && nd->in[0] >= 0 && nd->in[1] >= 0;
}

/* For a two-input node reading t: its other input, else -1. */
static int other_input(const g_node *nd, int t)
{
    if (!two_inputs(nd))
        return -1;
    return nd->in[0] == t ? nd->in[1] : nd->in[1] == t ? nd->in[0] : -1;
}

/* A binary node reading t and a constant scalar within tol of want. */
static int with_scalar(const graph *g, int node, int t, double want, double tol)
{
    float v;
    return node >= 0 && scalar_of(g, other_input(&g->n[node], t), &v) && fabs((double)v - want) <= tol;
}

static int rename_op(g_node *nd, g_op op, const char *op_type, ms_err *err)
{
    size_t n = strlen(op_type);
    char *s = malloc(n + 1);
    if (!s)
        return ms_err_set(err, MS_ENOMEM, "out of memory");
    memcpy(s, op_type, n + 1);
    free(nd->op_type);
    nd->op_type = s;
    nd->op = op;
    return 0;
}

/* Node nd now reads n inputs, the first `x`, the others none yet. */
static int set_inputs(g_node *nd, int n, int x, ms_err *err)
{
    int *in = realloc(nd->in, (size_t)n * sizeof *in);
    if (!in)
        return ms_err_set(err, MS_ENOMEM, "out of memory");
    nd->in = in;
    nd->n_in = n;
    in[0] = x;
    for (int i = 1; i < n; i++)
        in[i] = -1;
    return 0;
}

/* A new float constant of the given shape (zeroed); its index or a code. */
static int new_constant(graph *g, const char *node, const char *what, int rank, const int64_t *dims, ms_err *err)
{
    char name[600];
    snprintf(name, sizeof name, "%.500s/%s#lifted%d", node, what, g->nt);
    int t = graph_intern(g, name, err);
    if (t < 0)
        return t;
    int64_t n = 1;
    for (int i = 0; i < rank; i++)
        n *= dims[i];
    g_tensor *x = &g->t[t];
    x->is_const = 1;
    x->shaped = 1;
    x->elem_type = 1;
    x->rank = rank;
    memcpy(x->dims, dims, (size_t)rank * sizeof *dims);
    x->count = n;
    x->f = calloc((size_t)(n ? n : 1), sizeof *x->f);
    return x->f ? t : ms_err_set(err, MS_ENOMEM, "out of memory");
}

/* ------------------------------------------------------------------ GELU */

/* From Erf node e: the GELU chain around it, its last node turned into a
 * G_GELU reading x. 1 when rewritten, 0 when e is no such chain. */
static int gelu_at(graph *g, const readers *r, int e, ms_err *err)
{
    int in = g->n[e].in[0], scaled = producer_of(g, in);
    if (scaled < 0 || sole_reader(g, r, in) != e || !two_inputs(&g->n[scaled]))
        return 0;
    int x = !g->t[g->n[scaled].in[0]].is_const ? g->n[scaled].in[0] : g->n[scaled].in[1];
    if (x < 0 || g->t[x].is_const ||
        !((node_is(g, scaled, G_DIV) && g->n[scaled].in[0] == x && with_scalar(g, scaled, x, sqrt(2.0), 1e-4)) ||
          (node_is(g, scaled, G_MUL) && with_scalar(g, scaled, x, sqrt(0.5), 1e-4))))
        return 0;
    int one = sole_reader(g, r, g->n[e].out);
    if (!node_is(g, one, G_ADD) || !with_scalar(g, one, g->n[e].out, 1.0, 1e-6))
        return 0;
    int m = sole_reader(g, r, g->n[one].out);
    if (!node_is(g, m, G_MUL))
        return 0;
    int z = other_input(&g->n[m], g->n[one].out), last, half;
    if (z == x) { /* Mul(Mul(x, 1 + erf), 0.5) */
        last = sole_reader(g, r, g->n[m].out);
        if (!node_is(g, last, G_MUL) || !with_scalar(g, last, g->n[m].out, 0.5, 1e-6))
            return 0;
        half = m;
    } else { /* Mul(Mul(x, 0.5), 1 + erf) */
        half = producer_of(g, z);
        if (!node_is(g, half, G_MUL) || other_input(&g->n[half], x) < 0 || !with_scalar(g, half, x, 0.5, 1e-6) ||
            sole_reader(g, r, z) != m)
            return 0;
        last = m;
    }
    int rc = set_inputs(&g->n[last], 1, x, err);
    if (!rc)
        rc = rename_op(&g->n[last], G_GELU, "Gelu", err);
    if (rc)
        return rc;
    g->n[scaled].dead = g->n[e].dead = g->n[one].dead = g->n[half].dead = 1;
    g->stats.gelu_rewritten++;
    return 1;
}

/* ------------------------------------------------------------- LayerNorm */

/* The axis a ReduceMean node averages over when it is one axis with
 * keepdims, as a G_LN_* code: the last (-1, or 3 of a rank-4 tensor), the
 * channels (1), or G_LN_REFUSED for anything else. */
static int mean_axis(const graph *g, int node)
{
    const g_node *nd = &g->n[node];
    if (!nd->keepdims)
        return 0;
    int a;
    if (nd->n_axes == 1) {
        a = nd->axes[0];
    } else if (nd->n_axes < 0 && nd->n_in > 1 && nd->in[1] >= 0 && g->t[nd->in[1]].is_const &&
               g->t[nd->in[1]].i64 && g->t[nd->in[1]].count == 1) { /* axes as an input (opset 18) */
        a = (int)g->t[nd->in[1]].i64[0];
    } else {
        return 0;
    }
    return a == -1 || a == 3 ? G_LN_LAST : a == 1 ? G_LN_CHANNELS : G_LN_REFUSED;
}

/* From ReduceMean node m1: the layer normalisation it starts, its Div turned
 * into a G_LAYERNORM reading x. 1 when rewritten, 0 when it is no such chain. */
static int layer_norm_at(graph *g, const readers *r, int m1, ms_err *err)
{
    int axis = mean_axis(g, m1), x = g->n[m1].in[0];
    if (!axis || x < 0 || g->t[x].is_const)
        return 0;
    int sub = sole_reader(g, r, g->n[m1].out);
    if (!node_is(g, sub, G_SUB) || g->n[sub].in[0] != x || g->n[sub].in[1] != g->n[m1].out)
        return 0;
    int d = g->n[sub].out, sq = -1, div = -1;
    if (n_readers(g, r, d) != 2)
        return 0;
    for (int k = r->start[d]; k < r->start[d + 1]; k++) {
        int u = r->node[k];
        if (u < 0 || g->n[u].dead)
            continue;
        if ((node_is(g, u, G_POW) && with_scalar(g, u, d, 2.0, 0)) ||
            (node_is(g, u, G_MUL) && g->n[u].in[0] == d && g->n[u].in[1] == d))
            sq = u;
        else if (node_is(g, u, G_DIV) && g->n[u].in[0] == d)
            div = u;
    }
    if (sq < 0 || div < 0)
        return 0;
    int m2 = sole_reader(g, r, g->n[sq].out);
    if (!node_is(g, m2, G_REDUCEMEAN) || mean_axis(g, m2) != axis)
        return 0;
    int add = sole_reader(g, r, g->n[m2].out);
    float eps;
    if (!node_is(g, add, G_ADD) || !scalar_of(g, other_input(&g->n[add], g->n[m2].out), &eps) ||
        !(eps >= 0 && isfinite(eps)))
        return 0;
    int root = sole_reader(g, r, g->n[add].out);
    if (!node_is(g, root, G_SQRT) || sole_reader(g, r, g->n[root].out) != div || g->n[div].in[1] != g->n[root].out)
        return 0;
    int rc = set_inputs(&g->n[div], 3, x, err);
    if (!rc)
        rc = rename_op(&g->n[div], G_LAYERNORM, "LayerNormalization", err);
    if (rc)
        return rc;
    g->n[div].axis = axis;
    g->n[div].eps = eps;
    g->n[m1].dead = g->n[sub].dead = g->n[sq].dead = g->n[m2].dead = g->n[add].dead = g->n[root].dead = 1;
    g->stats.norm_rewritten++;
    return 1;
}

/* Constant t as C per-channel values for a layer norm over `axis`: all its
 * dimensions 1 but the last (axis -1: [C], [1, 1, 1, C]) or but the one the
 * channels of NCHW align with under numpy broadcasting (axis 1: [C, 1, 1],
 * [1, C, 1, 1]). Its C, or 0 when it is not such a constant. */
static int64_t channel_vector(const graph *g, int t, int axis)
{
    if (t < 0 || !g->t[t].is_const || g->t[t].elem_type != 1 || !g->t[t].f || g->t[t].count < 2)
        return 0;
    const g_tensor *k = &g->t[t];
    int at = axis == G_LN_LAST ? k->rank - 1 : k->rank - 3;
    if (k->rank > 4 || at < 0)
        return 0;
    for (int i = 0; i < k->rank; i++)
        if (i != at && k->dims[i] != 1)
            return 0;
    return k->dims[at];
}

/* A copy of constant t as [n] (lifted: [n, 1, 1]); its index or a code. */
static int copy_constant(graph *g, int t, const char *node, const char *what, int lifted, ms_err *err)
{
    int64_t n = g->t[t].count, dims[3] = {n, 1, 1};
    int c = new_constant(g, node, what, lifted ? 3 : 1, dims, err);
    if (c >= 0)
        memcpy(g->t[c].f, g->t[t].f, (size_t)n * sizeof(float));
    return c;
}

/* The layer's weight and bias after layer norm ln (Mul by, then Add of, C
 * per-channel constants) become its scale and shift. */
static int absorb_affine(graph *g, const readers *r, int ln, ms_err *err)
{
    int slot[2] = {1, 2};
    g_op ops[2] = {G_MUL, G_ADD};
    const char *what[2] = {"scale", "shift"};
    for (int s = 0; s < 2; s++) {
        int y = g->n[ln].out, u = sole_reader(g, r, y);
        if (!node_is(g, u, ops[s]))
            continue; /* a bias without a weight is a shift alone */
        int k = other_input(&g->n[u], y);
        if (!channel_vector(g, k, g->n[ln].axis))
            return 0;
        int c = copy_constant(g, k, g->n[ln].name, what[s], 0, err);
        if (c < 0)
            return c;
        g->n[ln].in[slot[s]] = c;
        graph_take_output(g, &g->n[ln], &g->n[u]);
    }
    return 0;
}

/* ---------------------------------------------------------------- channel */

/* The one INT64 value of constant t (a scalar or [1]) into *v, and whether
 * it is a scalar (rank 0) into *scalar. */
static int one_index(const graph *g, int t, int64_t *v, int *scalar)
{
    if (t < 0 || !g->t[t].is_const || !g->t[t].i64 || g->t[t].count != 1 || g->t[t].rank > 1)
        return 0;
    *v = g->t[t].i64[0];
    *scalar = g->t[t].rank == 0;
    return 1;
}

/* Whether Unsqueeze node u inserts exactly axis 1. */
static int unsqueezes_axis1(const graph *g, int u)
{
    const g_node *nd = &g->n[u];
    int64_t a;
    int scalar;
    if (nd->n_axes == 1)
        return nd->axes[0] == 1;
    return nd->n_axes < 0 && nd->n_in > 1 && one_index(g, nd->in[1], &a, &scalar) && a == 1;
}

/* From Gather node i: one channel of an activation. 1 when rewritten. */
static int channel_at(graph *g, const readers *r, int i, ms_err *err)
{
    g_node *nd = &g->n[i];
    int64_t k;
    int scalar;
    if (nd->axis != 1 || nd->n_in != 2 || nd->in[0] < 0 || g->t[nd->in[0]].is_const ||
        !one_index(g, nd->in[1], &k, &scalar) || k < -G_MAX_DIM || k >= G_MAX_DIM)
        return 0;
    int u = scalar ? sole_reader(g, r, nd->out) : -1;
    if (scalar && (!node_is(g, u, G_UNSQUEEZE) || !unsqueezes_axis1(g, u)))
        return 0;
    int rc = set_inputs(nd, 1, nd->in[0], err);
    if (rc)
        return rc;
    nd->op = G_CHANNEL;
    nd->channel = (int)k;
    if (scalar)
        graph_take_output(g, nd, &g->n[u]);
    return 1;
}

/* ------------------------------------------------- channels-last regions */

static int is_perm(const g_node *nd, int a, int b, int c, int d)
{
    return nd->n_axes == 4 && nd->axes[0] == a && nd->axes[1] == b && nd->axes[2] == c && nd->axes[3] == d;
}

static int is_transpose(const graph *g, int i)
{
    return !g->n[i].dead && !strcmp(g->n[i].op_type, "Transpose") &&
           (g->n[i].op == G_UNSUPPORTED || g->n[i].op == G_TRANSPOSE);
}

/* Whether constant t broadcasts along the last axis only (a scalar, or C
 * values as [C] or [1, ..., C]). */
static int last_axis_constant(const graph *g, int t)
{
    const g_tensor *k = &g->t[t];
    if (!k->is_const || k->elem_type != 1 || !k->f || k->rank > 4)
        return 0;
    for (int i = 0; i + 1 < k->rank; i++)
        if (k->dims[i] != 1)
            return 0;
    return 1;
}

/* Whether node i, reading channels-last tensors (in_cl), computes one that
 * the lift can run in NCHW. */
static int liftable(const graph *g, int i, const unsigned char *in_cl)
{
    const g_node *nd = &g->n[i];
    g_post post;
    int acts = 0;
    for (int k = 0; k < nd->n_in; k++) {
        int t = nd->in[k];
        if (t < 0) {
            if (nd->op == G_LAYERNORM && k > 0)
                continue; /* no scale or shift */
            return 0;
        }
        if (in_cl[t])
            acts++;
        else if (!g->t[t].is_const)
            return 0; /* mixes in an NCHW activation */
    }
    if (!acts)
        return 0;
    if (nd->op == G_LAYERNORM)
        return nd->axis == G_LN_LAST && in_cl[nd->in[0]];
    if (graph_eltwise_post(nd, &post) || nd->op == G_IDENTITY)
        return 1;
    if (nd->op == G_ADD || nd->op == G_SUB || nd->op == G_MUL || nd->op == G_DIV) {
        for (int k = 0; k < 2; k++)
            if (!in_cl[nd->in[k]] && !last_axis_constant(g, nd->in[k]))
                return 0;
        return 1;
    }
    if (node_is(g, i, G_MATMUL))
        return nd->n_in == 2 && in_cl[nd->in[0]] && g->t[nd->in[1]].is_const && g->t[nd->in[1]].elem_type == 1 &&
               g->t[nd->in[1]].rank == 2 && g->t[nd->in[1]].f;
    return 0;
}

/* The channels-last tensors, from each Transpose(0,2,3,1) of an NCHW
 * activation through the nodes reading them, in order. 1 when the region
 * can be lifted whole (marking region nodes in node_cl), 0 when not, or a
 * code. */
static int find_regions(const graph *g, int keep, unsigned char *in_cl, unsigned char *node_cl)
{
    int found = 0;
    for (int o = 0; o < g->n_order; o++) {
        int i = g->order[o];
        const g_node *nd = &g->n[i];
        if (nd->dead)
            continue;
        int reads_cl = 0;
        for (int k = 0; k < nd->n_in; k++)
            reads_cl |= nd->in[k] >= 0 && in_cl[nd->in[k]];
        if (is_transpose(g, i) && is_perm(nd, 0, 2, 3, 1) && !reads_cl && nd->in[0] >= 0 &&
            !g->t[nd->in[0]].is_const) {
            in_cl[nd->out] = 1;
            node_cl[i] = 1;
            found = 1;
        } else if (is_transpose(g, i) && is_perm(nd, 0, 3, 1, 2) && reads_cl) {
            node_cl[i] = 2; /* an exit */
        } else if (reads_cl) {
            if (!liftable(g, i, in_cl))
                return 0;
            in_cl[nd->out] = 1;
            node_cl[i] = 1;
        }
    }
    for (int t = 0; t < g->nt; t++)
        if (in_cl[t] && is_kept(g, keep, t))
            return 0;
    return found;
}

/* MatMul by a constant [C, K] in a region: a 1x1 Conv with weights [K, C, 1, 1]. */
static int matmul_to_conv(graph *g, int i, ms_err *err)
{
    int b = g->n[i].in[1];
    int64_t c = g->t[b].dims[0], k = g->t[b].dims[1], dims[4] = {k, c, 1, 1};
    int w = new_constant(g, g->n[i].name, "weights", 4, dims, err);
    if (w < 0)
        return w;
    const float *src = g->t[b].f;
    float *dst = g->t[w].f;
    for (int64_t o = 0; o < k; o++)
        for (int64_t j = 0; j < c; j++)
            dst[o * c + j] = src[j * k + o];
    g_node *nd = &g->n[i];
    nd->in[1] = w;
    nd->op = G_CONV;
    nd->kernel[0] = nd->kernel[1] = 1;
    nd->stride[0] = nd->stride[1] = nd->dilation[0] = nd->dilation[1] = 1;
    nd->pad_l[0] = nd->pad_l[1] = nd->pad_r[0] = nd->pad_r[1] = 0;
    nd->auto_pad = 0;
    nd->group = 1;
    return 0;
}

/* Per-channel constants of a region's binary node, [C] -> [C, 1, 1]. */
static int lift_binary_constants(graph *g, int i, ms_err *err)
{
    for (int k = 0; k < 2; k++) {
        int t = g->n[i].in[k];
        if (!g->t[t].is_const || g->t[t].count < 2)
            continue;
        int c = copy_constant(g, t, g->n[i].name, "channels", 1, err);
        if (c < 0)
            return c;
        g->n[i].in[k] = c;
    }
    return 0;
}

/* A lifted MatMul's Add of a constant [K, 1, 1] (or a scalar, when K is 1)
 * becomes the Conv's bias. */
static int bias_into_conv(graph *g, const readers *r, int conv, ms_err *err)
{
    int y = g->n[conv].out, add = sole_reader(g, r, y);
    if (!node_is(g, add, G_ADD))
        return 0;
    int k = other_input(&g->n[add], y), m = (int)g->t[g->n[conv].in[1]].dims[0];
    if (k < 0 || !g->t[k].is_const || !g->t[k].f || g->t[k].count != m)
        return 0;
    int64_t dims[1] = {m};
    int b = new_constant(g, g->n[conv].name, "bias", 1, dims, err);
    if (b < 0)
        return b;
    memcpy(g->t[b].f, g->t[k].f, (size_t)m * sizeof(float));
    int *in = realloc(g->n[conv].in, 3 * sizeof *in);
    if (!in)
        return ms_err_set(err, MS_ENOMEM, "out of memory");
    g->n[conv].in = in;
    g->n[conv].n_in = 3;
    in[2] = b;
    graph_take_output(g, &g->n[conv], &g->n[add]);
    return 0;
}

static int lift_regions(graph *g, int keep, ms_err *err)
{
    unsigned char *in_cl = calloc((size_t)g->nt + 1, 1), *node_cl = calloc((size_t)g->nn + 1, 1);
    int rc = in_cl && node_cl ? 0 : ms_err_set(err, MS_ENOMEM, "out of memory");
    int nn = g->nn, lifted = !rc && find_regions(g, keep, in_cl, node_cl) == 1;
    for (int i = 0; lifted && !rc && i < nn; i++) {
        g_node *nd = &g->n[i];
        if (!node_cl[i])
            continue;
        if (is_transpose(g, i)) {
            if (nd->op == G_UNSUPPORTED) { /* counted again as what the file says */
                g->op_count[G_UNSUPPORTED]--;
                g->op_count[G_TRANSPOSE]++;
            }
            nd->op = G_IDENTITY;
            g->stats.transposes_lifted++;
        } else if (nd->op == G_LAYERNORM) {
            nd->axis = G_LN_CHANNELS;
        } else if (node_is(g, i, G_MATMUL)) {
            rc = matmul_to_conv(g, i, err);
            g->stats.matmuls_lifted++;
        } else if (nd->op == G_ADD || nd->op == G_SUB || nd->op == G_MUL || nd->op == G_DIV) {
            rc = lift_binary_constants(g, i, err);
        }
    }
    free(in_cl);
    free(node_cl);
    return rc ? rc : lifted;
}

/* ------------------------------------------------------------------ passes */

typedef int (*rewrite_fn)(graph *g, const readers *r, int node, ms_err *err);

/* fn at every live node that `match` accepts, with readers built once. */
static int each_node(graph *g, int keep, int (*match)(const graph *, int), rewrite_fn fn, ms_err *err)
{
    readers r;
    int rc = readers_build(g, keep, &r, err);
    for (int i = 0, nn = g->nn; !rc && i < nn; i++)
        if (!g->n[i].dead && match(g, i) && (rc = fn(g, &r, i, err)) > 0)
            rc = 0;
    readers_free(&r);
    return rc;
}

static int match_gather(const graph *g, int i)
{
    return g->n[i].op == G_GATHER;
}

static int match_erf(const graph *g, int i)
{
    return node_is(g, i, G_ERF);
}

static int match_mean(const graph *g, int i)
{
    return node_is(g, i, G_REDUCEMEAN);
}

static int match_layer_norm(const graph *g, int i)
{
    return g->n[i].op == G_LAYERNORM && g->n[i].n_in == 3 && g->n[i].in[1] < 0 && g->n[i].in[2] < 0;
}

static int match_lifted_conv(const graph *g, int i)
{
    return g->n[i].op == G_CONV && !strcmp(g->n[i].op_type, "MatMul") && g->n[i].n_in == 2;
}

/* A layer norm that cannot be over the channels is not run; shape
 * inference tells about the others once ranks are known. */
static void refuse_other_layer_norms(graph *g)
{
    for (int i = 0; i < g->nn; i++)
        if (!g->n[i].dead && g->n[i].op == G_LAYERNORM && g->n[i].axis == G_LN_REFUSED)
            g->n[i].op = G_UNSUPPORTED;
}

int graph_rewrite(graph *g, int keep, ms_err *err)
{
    int rc, lifted;
    if ((rc = each_node(g, keep, match_gather, channel_at, err)) || (rc = each_node(g, keep, match_erf, gelu_at, err)) ||
        (rc = each_node(g, keep, match_mean, layer_norm_at, err)) ||
        (rc = each_node(g, keep, match_layer_norm, absorb_affine, err)))
        return rc;
    if ((lifted = lift_regions(g, keep, err)) < 0)
        return lifted;
    if (lifted && (rc = each_node(g, keep, match_lifted_conv, bias_into_conv, err)))
        return rc;
    refuse_other_layer_norms(g);
    return graph_order(g, err);
}
