/*
 * shapes.c - shape inference of the graph onnx.c builds: every node's output
 * shape for an S x S input, each node checked against its inputs (ranks,
 * constants, channels, windows) with a message naming it. Two load-time
 * rewrites live here too because they are about shapes: a model of one grey
 * channel gets its first convolutions' weights spread over the three channels
 * MedSearch feeds, and shape arithmetic (Shape, Gather, Unsqueeze, Concat of
 * INT64, what x.view(x.size(0), -1) exports to) is folded into constants as
 * the nodes are reached in order.
 */
#include "model/graph.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

/* ------------------------------------------------------------ grey input */

/* Replaces Conv node nd's [M, 1, kh, kw] weights by [M, 3, kh, kw] with a
 * third in each channel. */
static int spread_grey_weights(graph *g, g_node *nd, ms_err *err)
{
    g_tensor *w = nd->n_in > 1 && nd->in[1] >= 0 ? &g->t[nd->in[1]] : NULL;
    if (!w || !w->is_const || w->elem_type != 1 || w->rank != 4 || w->dims[1] != 1 || !w->f)
        return ms_err_set(err, MS_EUNSUPPORTED,
                          "node '%s' (Conv) reads the one-channel input but its weights are not a constant [M, 1, kh, kw]",
                          nd->name);
    if (w->consumers != 1 || nd->group != 1)
        return ms_err_set(err, MS_EUNSUPPORTED, "node '%s' (Conv) reads the one-channel input with %s", nd->name,
                          nd->group != 1 ? "groups" : "weights another node shares");
    int64_t m = w->dims[0], k = w->dims[2] * w->dims[3];
    if (w->count > G_MAX_CONST_ELEMS / 3)
        return ms_err_set(err, MS_ETOOBIG, "node '%s' (Conv): its weights are too large to spread over 3 channels",
                          nd->name);
    float *f = malloc((size_t)(m * 3 * k) * sizeof *f);
    if (!f)
        return ms_err_set(err, MS_ENOMEM, "out of memory");
    for (int64_t o = 0; o < m; o++)
        for (int c = 0; c < 3; c++)
            for (int64_t i = 0; i < k; i++)
                f[(o * 3 + c) * k + i] = w->f[o * k + i] / 3.0f;
    free(w->f);
    w->f = f;
    w->dims[1] = 3;
    w->count = m * 3 * k;
    return 0;
}

int graph_grey_input(graph *g, ms_err *err)
{
    if (g->input_channels == 3)
        return 0;
    for (int i = 0; i < g->n_order; i++) {
        g_node *nd = &g->n[g->order[i]];
        for (int k = 0; k < nd->n_in; k++) {
            if (nd->in[k] != g->input)
                continue;
            if (nd->op != G_CONV || k != 0)
                return ms_err_set(err, MS_EUNSUPPORTED,
                                  "the model takes one grey channel, and node '%s' (%s) reads it; MedSearch runs such "
                                  "a model only when its input goes straight into Conv nodes", nd->name, nd->op_type);
            int rc = spread_grey_weights(g, nd, err);
            if (rc)
                return rc;
        }
    }
    return 0;
}

/* ---------------------------------------------------------------- shapes */

static int need_act(const graph *g, const g_node *nd, int slot, int rank, ms_err *err)
{
    int t = slot < nd->n_in ? nd->in[slot] : -1;
    if (t < 0)
        return ms_err_set(err, MS_EFORMAT, "node '%s' (%s) lacks input %d", nd->name, nd->op_type, slot);
    const g_tensor *x = &g->t[t];
    if (x->is_const)
        return ms_err_set(err, MS_EUNSUPPORTED,
                          "node '%s' (%s): input '%s' is a constant; MedSearch does not fold constant expressions",
                          nd->name, nd->op_type, x->name);
    if (!x->shaped)
        return ms_err_set(err, MS_EINTERNAL, "node '%s': input '%s' has no shape yet", nd->name, x->name);
    if (rank && x->rank != rank)
        return ms_err_set(err, MS_EFORMAT, "node '%s' (%s): input '%s' has rank %d, expected %d",
                          nd->name, nd->op_type, x->name, x->rank, rank);
    return 0;
}

static int need_const(const graph *g, const g_node *nd, int slot, int rank, int64_t count,
                      ms_err *err)
{
    int t = slot < nd->n_in ? nd->in[slot] : -1;
    if (t < 0)
        return ms_err_set(err, MS_EFORMAT, "node '%s' (%s) lacks input %d", nd->name, nd->op_type, slot);
    const g_tensor *x = &g->t[t];
    if (!x->is_const)
        return ms_err_set(err, MS_EUNSUPPORTED,
                          "node '%s' (%s): input '%s' must be a constant (an initializer) for MedSearch",
                          nd->name, nd->op_type, x->name);
    if (x->elem_type != 1)
        return ms_err_set(err, MS_EFORMAT, "node '%s' (%s): constant '%s' must hold floats",
                          nd->name, nd->op_type, x->name);
    if (rank >= 0 && x->rank != rank)
        return ms_err_set(err, MS_EFORMAT, "node '%s' (%s): constant '%s' has rank %d, expected %d",
                          nd->name, nd->op_type, x->name, x->rank, rank);
    if (count >= 0 && x->count != count)
        return ms_err_set(err, MS_EFORMAT, "node '%s' (%s): constant '%s' has %lld values, expected %lld",
                          nd->name, nd->op_type, x->name, (long long)x->count, (long long)count);
    return 0;
}

static int set_out(graph *g, g_node *nd, int rank, const int64_t *dims, ms_err *err)
{
    g_tensor *o = &g->t[nd->out];
    int64_t n = 1;
    for (int i = 0; i < rank; i++) {
        if (dims[i] < 1 || dims[i] > G_MAX_DIM)
            return ms_err_set(err, MS_EFORMAT, "node '%s' (%s): output dimension %d would be %lld",
                              nd->name, nd->op_type, i, (long long)dims[i]);
        n *= dims[i];
        if (n > G_MAX_ACT_ELEMS)
            return ms_err_set(err, MS_ETOOBIG,
                              "node '%s' (%s): its output would hold over %lld values per image, an absurd size",
                              nd->name, nd->op_type, (long long)G_MAX_ACT_ELEMS);
    }
    o->rank = rank;
    memcpy(o->dims, dims, (size_t)rank * sizeof *dims);
    o->shaped = 1;
    return 0;
}

/* Resolves auto_pad and computes the output size of one spatial axis. */
static int window_axis(const g_node *nd, int ax, int64_t in, int ceil_mode, int *pl, int *pr,
                       int64_t *out, ms_err *err)
{
    int64_t dk = (int64_t)(nd->kernel[ax] - 1) * nd->dilation[ax] + 1, s = nd->stride[ax];
    if (nd->auto_pad == 1 || nd->auto_pad == 2) {
        int64_t o = (in + s - 1) / s;
        int64_t total = (o - 1) * s + dk - in;
        if (total < 0)
            total = 0;
        int64_t small = total / 2;
        *pl = (int)(nd->auto_pad == 1 ? small : total - small);
        *pr = (int)(total - *pl);
    } else if (nd->auto_pad == 3) {
        *pl = *pr = 0;
    }
    int64_t span = in + *pl + *pr - dk;
    if (span < 0)
        return ms_err_set(err, MS_EFORMAT,
                          "node '%s' (%s): the %lld-wide kernel (dilated) does not fit the %lld-wide input with padding %d+%d",
                          nd->name, nd->op_type, (long long)dk, (long long)in, *pl, *pr);
    int64_t o = ceil_mode ? (span + s - 1) / s + 1 : span / s + 1;
    /* A window that would start in the right padding is dropped (ONNX, PyTorch). */
    if (ceil_mode && (o - 1) * s >= in + *pl)
        o--;
    *out = o;
    return 0;
}

static int shape_window(graph *g, g_node *nd, int64_t channels, int ceil_mode, ms_err *err)
{
    const g_tensor *x = &g->t[nd->in[0]];
    int64_t dims[4] = {1, channels, 0, 0};
    for (int ax = 0; ax < 2; ax++) {
        int rc = window_axis(nd, ax, x->dims[2 + ax], ceil_mode, &nd->pad_l[ax], &nd->pad_r[ax],
                             &dims[2 + ax], err);
        if (rc)
            return rc;
    }
    return set_out(g, nd, 4, dims, err);
}

static int shape_conv(graph *g, g_node *nd, ms_err *err)
{
    int rc;
    if ((rc = need_act(g, nd, 0, 4, err)) || (rc = need_const(g, nd, 1, 4, -1, err)))
        return rc;
    const g_tensor *x = &g->t[nd->in[0]], *w = &g->t[nd->in[1]];
    int64_t c = x->dims[1], m = w->dims[0], grp = nd->group;
    if (c % grp || m % grp || w->dims[1] != c / grp)
        return ms_err_set(err, MS_EFORMAT,
                          "node '%s' (Conv): weights %s are [%lld, %lld, ...] but the input has %lld channels in %lld groups",
                          nd->name, w->name, (long long)m, (long long)w->dims[1], (long long)c, (long long)grp);
    for (int ax = 0; ax < 2; ax++) {
        int64_t k = w->dims[2 + ax];
        if (k < 1 || k > G_MAX_KERNEL)
            return ms_err_set(err, MS_EFORMAT, "node '%s' (Conv): kernel size %lld is out of range", nd->name, (long long)k);
        if (nd->kernel[ax] && nd->kernel[ax] != k)
            return ms_err_set(err, MS_EFORMAT, "node '%s' (Conv): kernel_shape does not match the weights", nd->name);
        nd->kernel[ax] = (int)k;
    }
    if (nd->n_in > 2 && nd->in[2] >= 0 && (rc = need_const(g, nd, 2, 1, m, err)))
        return rc;
    return shape_window(g, nd, m, 0, err);
}

static int shape_pool(graph *g, g_node *nd, ms_err *err)
{
    int rc = need_act(g, nd, 0, 4, err);
    if (rc || (rc = shape_window(g, nd, g->t[nd->in[0]].dims[1], nd->ceil_mode, err)))
        return rc;
    const g_tensor *x = &g->t[nd->in[0]], *o = &g->t[nd->out];
    for (int ax = 0; ax < 2; ax++) {
        int dk = (nd->kernel[ax] - 1) * nd->dilation[ax] + 1;
        /* The right padding oneDNN sees includes what ceil_mode adds. */
        int64_t pr = (o->dims[2 + ax] - 1) * nd->stride[ax] + dk - x->dims[2 + ax] - nd->pad_l[ax];
        if (pr > nd->pad_r[ax] && nd->op == G_AVGPOOL && nd->count_include_pad)
            return ms_err_set(err, MS_EUNSUPPORTED,
                              "node '%s' (AveragePool): ceil_mode with count_include_pad is not supported", nd->name);
        if (pr > nd->pad_r[ax])
            nd->pad_r[ax] = (int)pr;
        if (nd->pad_l[ax] >= dk || nd->pad_r[ax] >= dk)
            return ms_err_set(err, MS_EUNSUPPORTED, "node '%s' (%s): padding must be smaller than the kernel",
                              nd->name, nd->op_type);
    }
    return 0;
}

static int scalar_const(const graph *g, const g_node *nd, int slot, float *v, ms_err *err)
{
    if (slot >= nd->n_in || nd->in[slot] < 0)
        return 0;
    int rc = need_const(g, nd, slot, -1, 1, err);
    if (rc)
        return rc;
    const g_tensor *t = &g->t[nd->in[slot]];
    if (t->rank > 1)
        return ms_err_set(err, MS_EFORMAT, "node '%s' (Clip): bound '%s' must be a scalar", nd->name, t->name);
    *v = t->f[0];
    return 0;
}

static int shape_clip(graph *g, g_node *nd, ms_err *err)
{
    int rc = need_act(g, nd, 0, 0, err);
    if (rc || (rc = scalar_const(g, nd, 1, &nd->clip_lo, err)) ||
        (rc = scalar_const(g, nd, 2, &nd->clip_hi, err)))
        return rc;
    if (!(nd->clip_lo <= nd->clip_hi))
        return ms_err_set(err, MS_EFORMAT, "node '%s' (Clip): min %g is above max %g", nd->name,
                          (double)nd->clip_lo, (double)nd->clip_hi);
    const g_tensor *x = &g->t[nd->in[0]];
    return set_out(g, nd, x->rank, x->dims, err);
}

/* PRelu: the slope is a float constant that broadcasts to the input one way
 * (numpy rules): one value, one per channel ([C, 1, 1] as PyTorch exports
 * nn.PReLU), or any shape whose dimensions are 1 or the input's. */
static int shape_prelu(graph *g, g_node *nd, ms_err *err)
{
    int rc = need_act(g, nd, 0, 0, err);
    if (rc)
        return rc;
    const g_tensor *x = &g->t[nd->in[0]], *s = nd->in[1] >= 0 ? &g->t[nd->in[1]] : NULL;
    if (!s)
        return ms_err_set(err, MS_EFORMAT, "node '%s' (PRelu) lacks its slope", nd->name);
    if (!s->is_const || s->elem_type != 1)
        return ms_err_set(err, MS_EUNSUPPORTED, "node '%s' (PRelu): the slope '%s' must be a float constant",
                          nd->name, s->name);
    int fits = s->rank <= x->rank;
    for (int i = 0; fits && i < s->rank; i++) /* x's batch is 1 here, so a slope never varies over it */
        fits = s->dims[i] == 1 || s->dims[i] == x->dims[x->rank - s->rank + i];
    if (!fits)
        return ms_err_set(err, MS_EFORMAT, "node '%s' (PRelu): the slope '%s' does not broadcast to the shape of '%s'",
                          nd->name, s->name, x->name);
    return set_out(g, nd, x->rank, x->dims, err);
}

/* Add, Sub, Mul, Div: numpy broadcasting, with the result shaped like one
 * operand. Sub and Div do not commute: their first operand must be that one. */
static int shape_binary(graph *g, g_node *nd, ms_err *err)
{
    const g_tensor *a = &g->t[nd->in[0]], *b = &g->t[nd->in[1]];
    if (a->is_const && b->is_const)
        return need_act(g, nd, 0, 0, err);
    if (a->is_const || (!b->is_const && graph_elems(b) > graph_elems(a))) {
        if (nd->op == G_SUB || nd->op == G_DIV)
            return ms_err_set(err, MS_EUNSUPPORTED,
                              "node '%s' (%s): only the full-size activation as the first operand is supported "
                              "('%s' is a constant or smaller than '%s')",
                              nd->name, nd->op_type, a->name, b->name);
        const g_tensor *s = a;
        a = b;
        b = s;
    }
    if (!a->shaped || !b->shaped)
        return ms_err_set(err, MS_EINTERNAL, "node '%s': input without shape", nd->name);
    if (b->is_const && b->elem_type != 1)
        return ms_err_set(err, MS_EFORMAT, "node '%s' (%s): constant '%s' must hold floats", nd->name,
                          nd->op_type, b->name);
    if (b->rank > a->rank || (!b->is_const && b->rank != a->rank))
        return ms_err_set(err, MS_EUNSUPPORTED, "node '%s' (%s): cannot broadcast '%s' to the shape of '%s'",
                          nd->name, nd->op_type, b->name, a->name);
    for (int i = 0; i < b->rank; i++) {
        int64_t da = a->dims[a->rank - b->rank + i], db = b->dims[i];
        if (db != da && db != 1)
            return ms_err_set(err, MS_EFORMAT, "node '%s' (%s): shapes of '%s' and '%s' do not match",
                              nd->name, nd->op_type, a->name, b->name);
    }
    return set_out(g, nd, a->rank, a->dims, err);
}

/* One channel of an NCHW map, [N, 1, H, W]; a negative index counts from
 * the end, as Gather's does. */
static int shape_channel(graph *g, g_node *nd, ms_err *err)
{
    int rc = need_act(g, nd, 0, 4, err);
    if (rc)
        return rc;
    const g_tensor *x = &g->t[nd->in[0]];
    int64_t c = x->dims[1], k = nd->channel;
    if (k < -c || k >= c)
        return ms_err_set(err, MS_EFORMAT, "node '%s' (Gather): index %lld is out of range for the %lld channels of '%s'",
                          nd->name, (long long)k, (long long)c, x->name);
    nd->channel = (int)(k < 0 ? k + c : k);
    int64_t dims[4] = {1, 1, x->dims[2], x->dims[3]};
    return set_out(g, nd, 4, dims, err);
}

/* Layer normalisation over the channels of an NCHW map or a [N, C]
 * vector; its scale and shift (optional) hold one value per channel. The
 * axis it was given must be the channels at the input's rank. */
static int shape_layer_norm(graph *g, g_node *nd, ms_err *err)
{
    int rc = need_act(g, nd, 0, 0, err);
    if (rc)
        return rc;
    const g_tensor *x = &g->t[nd->in[0]];
    if (!(x->rank == 2 || (x->rank == 4 && nd->axis == G_LN_CHANNELS)))
        return ms_err_set(err, MS_EUNSUPPORTED,
                          "node '%s' (LayerNormalization) normalises %s of its rank-%d input '%s'; MedSearch runs "
                          "layer normalisation over the channels only (of [N, C], of NCHW, or the last axis of a "
                          "channels-last tensor between Transposes)", nd->name,
                          nd->axis == G_LN_LAST ? "the last axis" : "axes 1 and after", x->rank, x->name);
    nd->axis = G_LN_CHANNELS;
    for (int slot = 1; slot < 3 && slot < nd->n_in; slot++)
        if (nd->in[slot] >= 0 && (rc = need_const(g, nd, slot, -1, x->dims[1], err)))
            return rc;
    return set_out(g, nd, x->rank, x->dims, err);
}

static int shape_bn(graph *g, g_node *nd, ms_err *err)
{
    int rc = need_act(g, nd, 0, 0, err);
    if (rc)
        return rc;
    const g_tensor *x = &g->t[nd->in[0]];
    if (x->rank != 4 && x->rank != 2)
        return ms_err_set(err, MS_EUNSUPPORTED, "node '%s' (BatchNormalization): input rank %d", nd->name, x->rank);
    for (int k = 1; k < 5; k++)
        if ((rc = need_const(g, nd, k, -1, x->dims[1], err)))
            return rc;
    return set_out(g, nd, x->rank, x->dims, err);
}

static int shape_reshape(graph *g, g_node *nd, ms_err *err)
{
    int rc = need_act(g, nd, 0, 0, err);
    if (rc)
        return rc;
    if (nd->in[1] < 0)
        return ms_err_set(err, MS_EFORMAT, "node '%s' (Reshape) has no shape input", nd->name);
    const g_tensor *x = &g->t[nd->in[0]], *s = &g->t[nd->in[1]];
    if (!s->is_const || s->elem_type != 7)
        return ms_err_set(err, MS_EUNSUPPORTED, "node '%s' (Reshape): the shape must be a constant INT64 tensor", nd->name);
    int64_t k = graph_elems(x) / x->dims[0];
    int ok = s->count == 2 && s->i64 != NULL;
    if (ok) {
        int64_t d0 = s->i64[0], d1 = s->i64[1], batch = g->input_decl[0];
        ok = (d0 == -1 || d0 == 1 || d0 == G_BATCH_DIM || (d0 == 0 && !nd->axis) || (batch > 0 && d0 == batch)) &&
             (d1 == k || (d1 == -1 && d0 != -1) || (d1 == 0 && !nd->axis && x->rank >= 2 && x->dims[1] == k));
    }
    if (!ok)
        return ms_err_set(err, MS_EUNSUPPORTED,
                          "node '%s' (Reshape): only a reshape to [batch, %lld] is supported", nd->name, (long long)k);
    int64_t dims[2] = {1, k};
    return set_out(g, nd, 2, dims, err);
}

static int shape_gemm(graph *g, g_node *nd, ms_err *err)
{
    int rc = need_act(g, nd, 0, 2, err);
    if (rc || (rc = need_const(g, nd, 1, 2, -1, err)))
        return rc;
    const g_tensor *a = &g->t[nd->in[0]], *b = &g->t[nd->in[1]];
    int64_t k = b->dims[nd->trans_b ? 1 : 0], m = b->dims[nd->trans_b ? 0 : 1];
    if (k != a->dims[1])
        return ms_err_set(err, MS_EFORMAT, "node '%s' (Gemm): input has %lld features but the weights '%s' expect %lld",
                          nd->name, (long long)a->dims[1], b->name, (long long)k);
    if (nd->n_in > 2 && nd->in[2] >= 0) {
        if ((rc = need_const(g, nd, 2, -1, -1, err)))
            return rc;
        const g_tensor *c = &g->t[nd->in[2]];
        if ((c->count != m && c->count != 1) || c->rank > 2 || (c->rank == 2 && c->dims[0] != 1))
            return ms_err_set(err, MS_EUNSUPPORTED, "node '%s' (Gemm): bias '%s' must be [%lld] or a scalar",
                              nd->name, c->name, (long long)m);
    }
    int64_t dims[2] = {1, m};
    return set_out(g, nd, 2, dims, err);
}

static int norm_axis(const g_node *nd, int rank, int *axis, ms_err *err)
{
    int a = nd->axis < 0 ? nd->axis + rank : nd->axis;
    if (a != 1)
        return ms_err_set(err, MS_EUNSUPPORTED, "node '%s' (%s): only axis 1 (channels) is supported, got %d",
                          nd->name, nd->op_type, nd->axis);
    *axis = a;
    return 0;
}

static int shape_concat(graph *g, g_node *nd, ms_err *err)
{
    int rc, axis;
    if ((rc = need_act(g, nd, 0, 0, err)))
        return rc;
    const g_tensor *x = &g->t[nd->in[0]];
    if ((rc = norm_axis(nd, x->rank, &axis, err)))
        return rc;
    int64_t dims[G_MAX_RANK];
    memcpy(dims, x->dims, sizeof dims);
    for (int i = 1; i < nd->n_in; i++) {
        if ((rc = need_act(g, nd, i, x->rank, err)))
            return rc;
        const g_tensor *y = &g->t[nd->in[i]];
        for (int d = 0; d < x->rank; d++)
            if (d != 1 && y->dims[d] != x->dims[d])
                return ms_err_set(err, MS_EFORMAT, "node '%s' (Concat): '%s' and '%s' differ outside the channel axis",
                                  nd->name, x->name, y->name);
        dims[1] += y->dims[1];
    }
    return set_out(g, nd, x->rank, dims, err);
}

/* Opset >= 11: pads (INT64, begin values then end values, one pair per axis
 * of input 3's axes or of every axis) and the constant value from inputs. */
static int pad_from_inputs(graph *g, g_node *nd, int rank, ms_err *err)
{
    int t = nd->n_in > 1 ? nd->in[1] : -1, ta = nd->n_in > 3 ? nd->in[3] : -1;
    const g_tensor *p = t >= 0 ? &g->t[t] : NULL, *ax = ta >= 0 ? &g->t[ta] : NULL;
    if (!p)
        return ms_err_set(err, MS_EFORMAT, "node '%s' (Pad) has no pads", nd->name);
    if (!p->is_const || p->elem_type != 7 || (ax && (!ax->is_const || ax->elem_type != 7)))
        return ms_err_set(err, MS_EUNSUPPORTED, "node '%s' (Pad): its pads and axes must be constant INT64 tensors",
                          nd->name);
    int64_t n = ax ? ax->count : rank;
    if (n > rank || p->count != 2 * n)
        return ms_err_set(err, MS_EFORMAT, "node '%s' (Pad): %lld pads for %lld axes", nd->name,
                          (long long)p->count, (long long)n);
    for (int64_t i = 0; i < n; i++) {
        int64_t a = ax ? ax->i64[i] : i, lo = p->i64[i], hi = p->i64[n + i];
        a = a < 0 ? a + rank : a;
        if (a < 0 || a >= rank)
            return ms_err_set(err, MS_EFORMAT, "node '%s' (Pad): axis %lld is out of range", nd->name,
                              (long long)(ax ? ax->i64[i] : i));
        if (a < 2 && (lo || hi))
            nd->from_attrs = -1;
        if (a >= 2 && (lo < -G_MAX_KERNEL || lo > G_MAX_KERNEL || hi < -G_MAX_KERNEL || hi > G_MAX_KERNEL))
            return ms_err_set(err, MS_EFORMAT, "node '%s' (Pad): padding %lld / %lld is out of range", nd->name,
                              (long long)lo, (long long)hi);
        if (a >= 2) {
            nd->pad_l[a - 2] = (int)lo;
            nd->pad_r[a - 2] = (int)hi;
        }
    }
    if (nd->n_in > 2 && nd->in[2] >= 0) {
        int rc = need_const(g, nd, 2, -1, 1, err);
        if (rc)
            return rc;
        nd->beta = g->t[nd->in[2]].f[0];
    }
    return 0;
}

static int shape_pad(graph *g, g_node *nd, ms_err *err)
{
    int rc = need_act(g, nd, 0, 4, err);
    if (rc || (!nd->from_attrs && (rc = pad_from_inputs(g, nd, 4, err))))
        return rc;
    if (nd->from_attrs < 0)
        return ms_err_set(err, MS_EUNSUPPORTED, "node '%s' (Pad): only padding of height and width is supported",
                          nd->name);
    if (nd->beta != 0.0f)
        return ms_err_set(err, MS_EUNSUPPORTED, "node '%s' (Pad): padding with %g; only zero padding is supported",
                          nd->name, (double)nd->beta);
    const g_tensor *x = &g->t[nd->in[0]];
    int64_t dims[4] = {1, x->dims[1], x->dims[2], x->dims[3]};
    for (int ax = 0; ax < 2; ax++) {
        if (nd->pad_l[ax] < 0 || nd->pad_r[ax] < 0)
            return ms_err_set(err, MS_EUNSUPPORTED, "node '%s' (Pad): negative padding (cropping) is not supported",
                              nd->name);
        dims[2 + ax] += nd->pad_l[ax] + nd->pad_r[ax];
    }
    return set_out(g, nd, 4, dims, err);
}

/* The axes of a ReduceMean or Squeeze: its attribute (parse_axes), else the
 * constant INT64 list of input 1, else none (*n = 0). Returns 0, or
 * MS_EUNSUPPORTED when input 1 is not such a list. */
static int node_axes(const graph *g, const g_node *nd, int64_t axes[G_MAX_RANK], int *n, ms_err *err)
{
    *n = nd->n_axes;
    for (int i = 0; i < *n; i++)
        axes[i] = nd->axes[i];
    if (*n >= 0)
        return 0;
    const g_tensor *a = nd->n_in > 1 && nd->in[1] >= 0 ? &g->t[nd->in[1]] : NULL;
    if (a && (!a->is_const || a->elem_type != 7 || a->count > G_MAX_RANK))
        return ms_err_set(err, MS_EUNSUPPORTED, "node '%s' (%s): its axes must be a constant INT64 list", nd->name,
                          nd->op_type);
    *n = a ? (int)a->count : 0;
    for (int i = 0; i < *n; i++)
        axes[i] = a->i64[i];
    return 0;
}

/* Squeeze: the listed size-1 dimensions dropped (axes as attribute or input
 * 1), or without axes every size-1 dimension but the batch, which MedSearch
 * never squeezes. The result keeps the batch and at least one dimension. */
static int shape_squeeze(graph *g, g_node *nd, ms_err *err)
{
    int rc = need_act(g, nd, 0, 0, err);
    if (rc)
        return rc;
    const g_tensor *x = &g->t[nd->in[0]];
    int r = x->rank, drop[G_MAX_RANK] = {0}, n;
    int64_t axes[G_MAX_RANK];
    if ((rc = node_axes(g, nd, axes, &n, err)))
        return rc;
    for (int i = 0; i < n; i++) {
        int64_t a = axes[i] < 0 ? axes[i] + r : axes[i];
        if (a < 0 || a >= r || x->dims[a] != 1 || drop[a])
            return ms_err_set(err, MS_EFORMAT, "node '%s' (Squeeze): axis %lld is not a dimension of size 1",
                              nd->name, (long long)axes[i]);
        if (a == 0)
            return ms_err_set(err, MS_EUNSUPPORTED, "node '%s' (Squeeze): the batch is never squeezed", nd->name);
        drop[a] = 1;
    }
    for (int a = 1; a < r && n == 0; a++)
        drop[a] = x->dims[a] == 1;
    int64_t dims[G_MAX_RANK];
    int k = 0;
    for (int a = 0; a < r; a++)
        if (!drop[a])
            dims[k++] = x->dims[a];
    if (k < 2)
        return ms_err_set(err, MS_EUNSUPPORTED, "node '%s' (Squeeze) would leave only the batch", nd->name);
    return set_out(g, nd, k, dims, err);
}

/* ReduceMean over height and width: a global average pool, [N, C, 1, 1],
 * or [N, C] without keepdims. Any other axes are refused. */
static int shape_reduce_mean(graph *g, g_node *nd, ms_err *err)
{
    int rc = need_act(g, nd, 0, 4, err);
    if (rc)
        return rc;
    int64_t axes[G_MAX_RANK];
    int n;
    if ((rc = node_axes(g, nd, axes, &n, err)))
        return rc;
    unsigned mask = 0;
    for (int i = 0; i < n; i++)
        if (axes[i] >= -4 && axes[i] < 4)
            mask |= 1u << (axes[i] < 0 ? axes[i] + 4 : axes[i]);
    if (n != 2 || mask != 0xCu)
        return ms_err_set(err, MS_EUNSUPPORTED,
                          "node '%s' (ReduceMean): only the mean over height and width (axes 2 and 3) is supported",
                          nd->name);
    int64_t dims[4] = {1, g->t[nd->in[0]].dims[1], 1, 1};
    return set_out(g, nd, nd->keepdims ? 4 : 2, dims, err);
}

static int shape_node(graph *g, g_node *nd, ms_err *err)
{
    int rc;
    const g_tensor *x = nd->n_in && nd->in[0] >= 0 ? &g->t[nd->in[0]] : NULL;
    switch (nd->op) {
    case G_CONV:
        return shape_conv(g, nd, err);
    case G_BN:
        return shape_bn(g, nd, err);
    case G_RELU:
    case G_SIGMOID:
    case G_SWISH:
    case G_HARDSIGMOID:
    case G_HARDSWISH:
    case G_LEAKYRELU:
    case G_ELU:
    case G_SELU:
    case G_TANH:
    case G_SOFTPLUS:
    case G_LRN:
    case G_GELU:
    case G_GELU_TANH:
    case G_IDENTITY:
        if ((rc = need_act(g, nd, 0, nd->op == G_LRN ? 4 : 0, err)))
            return rc;
        return set_out(g, nd, x->rank, x->dims, err);
    case G_CLIP:
        return shape_clip(g, nd, err);
    case G_LAYERNORM:
        return shape_layer_norm(g, nd, err);
    case G_CHANNEL:
        return shape_channel(g, nd, err);
    case G_PRELU:
        return shape_prelu(g, nd, err);
    case G_ADD:
    case G_SUB:
    case G_MUL:
    case G_DIV:
        if (nd->in[0] < 0 || nd->in[1] < 0)
            return ms_err_set(err, MS_EFORMAT, "node '%s' (%s) lacks an input", nd->name, nd->op_type);
        return shape_binary(g, nd, err);
    case G_MAXPOOL:
    case G_AVGPOOL:
        return shape_pool(g, nd, err);
    case G_PAD:
        return shape_pad(g, nd, err);
    case G_SQUEEZE:
        return shape_squeeze(g, nd, err);
    case G_GAP:
    case G_GMP: {
        if (!strcmp(nd->op_type, "ReduceMean"))
            return shape_reduce_mean(g, nd, err);
        if ((rc = need_act(g, nd, 0, 4, err)))
            return rc;
        int64_t dims[4] = {1, x->dims[1], 1, 1};
        return set_out(g, nd, 4, dims, err);
    }
    case G_FLATTEN: {
        int axis;
        if ((rc = need_act(g, nd, 0, 0, err)) || (rc = norm_axis(nd, x->rank, &axis, err)))
            return rc;
        int64_t dims[2] = {1, graph_elems(x)};
        return set_out(g, nd, 2, dims, err);
    }
    case G_RESHAPE:
        return shape_reshape(g, nd, err);
    case G_GEMM:
        return shape_gemm(g, nd, err);
    case G_CONCAT:
        return shape_concat(g, nd, err);
    default:
        return ms_err_set(err, MS_EINTERNAL, "node '%s': no shape rule", nd->name);
    }
}

/* -------------------------------------------------- folding shape arithmetic */

/* Makes tensor t an INT64 constant of the given dims holding vals (copied). */
static int make_int_constant(graph *g, int t, int rank, const int64_t *dims, const int64_t *vals, int64_t n,
                             ms_err *err)
{
    g_tensor *o = &g->t[t];
    int64_t *v = malloc((size_t)(n ? n : 1) * sizeof *v);
    if (!v)
        return ms_err_set(err, MS_ENOMEM, "out of memory");
    memcpy(v, vals, (size_t)n * sizeof *v);
    free(o->i64);
    o->i64 = v;
    o->is_const = 1;
    o->elem_type = 7;
    o->rank = rank;
    memcpy(o->dims, dims, (size_t)rank * sizeof *dims);
    o->count = n;
    o->shaped = 1;
    o->producer = -1;
    return 0;
}

/* Input slot of nd as a small INT64 constant (at most G_MAX_RANK values), or NULL. */
static const g_tensor *small_ints(const graph *g, const g_node *nd, int slot)
{
    int t = slot < nd->n_in ? nd->in[slot] : -1;
    const g_tensor *x = t >= 0 ? &g->t[t] : NULL;
    return x && x->is_const && x->elem_type == 7 && x->count <= G_MAX_RANK && x->rank <= 1 ? x : NULL;
}

static int fold_refused(const g_node *nd, const char *why, ms_err *err)
{
    return ms_err_set(err, MS_EUNSUPPORTED, "node '%s' (%s): %s; MedSearch runs %s only on tensor shapes",
                      nd->name, nd->op_type, why, nd->op_type);
}

/* Shape: [batch, C, H, W] of an activation, sliced by start and end. */
static int fold_shape(graph *g, g_node *nd, ms_err *err)
{
    int rc = need_act(g, nd, 0, 0, err);
    if (rc)
        return rc;
    const g_tensor *x = &g->t[nd->in[0]];
    int r = x->rank, lo = nd->shape_start < 0 ? nd->shape_start + r : nd->shape_start;
    int hi = nd->shape_end < 0 ? nd->shape_end + r : nd->shape_end;
    lo = lo < 0 ? 0 : lo > r ? r : lo;
    hi = hi < lo ? lo : hi > r ? r : hi;
    int64_t vals[G_MAX_RANK], n = hi - lo;
    for (int i = lo; i < hi; i++)
        vals[i - lo] = i == 0 ? G_BATCH_DIM : x->dims[i];
    return make_int_constant(g, nd->out, 1, &n, vals, n, err);
}

/* Gather on axis 0 of a 1-D INT64 constant, by constant indices. */
static int fold_gather(graph *g, g_node *nd, ms_err *err)
{
    const g_tensor *d = small_ints(g, nd, 0), *ix = small_ints(g, nd, 1);
    if (!d || !ix || d->rank != 1 || nd->axis != 0)
        return fold_refused(nd, "its data and indices are not small constant INT64 lists (gathering on axis 0), nor one "
                                "index on axis 1 (one channel; a scalar index then needs an Unsqueeze of axis 1)", err);
    int64_t vals[G_MAX_RANK];
    for (int64_t i = 0; i < ix->count; i++) {
        int64_t k = ix->i64[i] < 0 ? ix->i64[i] + d->count : ix->i64[i];
        if (k < 0 || k >= d->count)
            return ms_err_set(err, MS_EFORMAT, "node '%s' (Gather): index %lld is out of range", nd->name,
                              (long long)ix->i64[i]);
        vals[i] = d->i64[k];
    }
    return make_int_constant(g, nd->out, ix->rank, ix->dims, vals, ix->count, err);
}

/* Unsqueeze of an INT64 constant: the same values, dimensions of 1 inserted. */
static int fold_unsqueeze(graph *g, g_node *nd, ms_err *err)
{
    const g_tensor *d = small_ints(g, nd, 0), *ax = nd->n_axes < 0 ? small_ints(g, nd, 1) : NULL;
    int n = nd->n_axes < 0 ? (ax ? (int)ax->count : -1) : nd->n_axes;
    if (!d || n < 1 || d->rank + n > 2)
        return fold_refused(nd, "its input is not a constant INT64 scalar or list, or its axes not constant", err);
    int r = d->rank + n;
    int64_t dims[2] = {0, 0};
    for (int i = 0; i < n; i++) {
        int64_t a = ax ? ax->i64[i] : nd->axes[i];
        a = a < 0 ? a + r : a;
        if (a < 0 || a >= r || dims[a])
            return ms_err_set(err, MS_EFORMAT, "node '%s' (Unsqueeze): bad axes", nd->name);
        dims[a] = 1;
    }
    for (int i = 0, k = 0; i < r; i++)
        dims[i] = dims[i] ? 1 : d->dims[k++];
    return make_int_constant(g, nd->out, r, dims, d->i64, d->count, err);
}

/* Concat of 1-D INT64 constants. */
static int fold_concat(graph *g, g_node *nd, ms_err *err)
{
    int64_t vals[G_MAX_RANK], n = 0;
    for (int i = 0; i < nd->n_in; i++) {
        const g_tensor *x = small_ints(g, nd, i);
        if (!x || x->rank != 1 || n + x->count > G_MAX_RANK)
            return fold_refused(nd, "it mixes constants and activations, or joins more than 6 values", err);
        memcpy(vals + n, x->i64, (size_t)x->count * sizeof *vals);
        n += x->count;
    }
    return make_int_constant(g, nd->out, 1, &n, vals, n, err);
}

/* Folds shape arithmetic into a constant and marks the node dead: 1 when
 * it did, 0 when nd is not shape arithmetic, or a negative code. */
static int fold_shape_node(graph *g, g_node *nd, ms_err *err)
{
    int rc;
    switch (nd->op) {
    case G_SHAPE: rc = fold_shape(g, nd, err); break;
    case G_GATHER: rc = fold_gather(g, nd, err); break;
    case G_UNSQUEEZE: rc = fold_unsqueeze(g, nd, err); break;
    case G_CONCAT: {
        const g_tensor *x = nd->n_in && nd->in[0] >= 0 ? &g->t[nd->in[0]] : NULL;
        if (!x || !x->is_const || x->elem_type != 7)
            return 0;
        rc = fold_concat(g, nd, err);
        break;
    }
    default:
        return 0;
    }
    if (rc)
        return rc;
    nd->dead = 1;
    return 1;
}

/* Whether a node reads a tensor no live node computes (its producer was
 * dropped). */
static int reads_dropped(const graph *g, const g_node *nd)
{
    for (int k = 0; k < nd->n_in; k++) {
        int t = nd->in[k];
        if (t >= 0 && !g->t[t].is_const && !g->t[t].is_input && graph_producer(g, t) < 0)
            return 1;
    }
    return 0;
}

/* The shape of node nd's output, shape arithmetic folded. */
static int shape_one(graph *g, g_node *nd, ms_err *err)
{
    int rc = fold_shape_node(g, nd, err);
    if (rc)
        return rc < 0 ? rc : 0;
    if ((rc = shape_node(g, nd, err)))
        return rc;
    const g_tensor *o = &g->t[nd->out];
    if (o->rank != 2 && o->rank != 4 && !(o->rank == 3 && nd->op == G_SQUEEZE)) /* x.squeeze(-1).squeeze(-1) */
        return ms_err_set(err, MS_EUNSUPPORTED, "node '%s' (%s) produces a rank-%d tensor; only rank 2 and 4 are supported",
                          nd->name, nd->op_type, o->rank);
    return 0;
}

int graph_infer_shapes(graph *g, int input_size, int target, ms_err *err)
{
    g_tensor *in = &g->t[g->input];
    int64_t dims[4] = {1, 3, input_size, input_size};
    in->rank = 4;
    memcpy(in->dims, dims, sizeof dims);
    in->shaped = 1;
    unsigned char *need = calloc((size_t)g->nn + 1, 1);
    if (!need)
        return ms_err_set(err, MS_ENOMEM, "out of memory");
    graph_mark_needed(g, target, need);
    int rc = 0, dropped = 0;
    for (int i = 0; i < g->n_order && !rc; i++) {
        int ni = g->order[i];
        g_node *nd = &g->n[ni];
        if (nd->dead)
            continue;
        ms_err unneeded = {0};
        if (!need[ni] && reads_dropped(g, nd)) {
            nd->dead = 1;
            dropped++;
        } else if ((rc = shape_one(g, nd, need[ni] ? err : &unneeded)) && !need[ni]) {
            nd->dead = 1; /* never computed: what the feature does not need may stay unshaped */
            dropped++;
            rc = 0;
        }
    }
    free(need);
    return rc ? rc : dropped ? graph_order(g, err) : 0;
}
