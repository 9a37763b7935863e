/*
 * dnnl.c - runs a compiled graph on oneDNN 2.6 (C API). The only file of
 * MedSearch that includes dnnl.h: oneDNN 3 changes this API.
 *
 * Weights: each Conv/Gemm asks oneDNN for its preferred weight layout
 * (format_tag_any); the weights are reordered into it once and kept.
 * Activations: each primitive picks its destination layout (blocked, e.g.
 * nChw16c), and a reorder is inserted only where a consumer wants another.
 * Every activation lives in one arena at an offset chosen by liveness (a
 * greedy-by-size packing), shared by all plans of the model because a model
 * runs one forward at a time. The arena is allocated and touched once, so a
 * steady-state forward neither allocates nor faults a page in.
 */
#include "model/dnn.h"

#include <dlfcn.h>
#include <dnnl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define MAX_VARIANTS 8
#define MAX_PLANS 16
#define ALIGN 64

typedef struct wvar {
    dnnl_memory_desc_t md;
    dnnl_memory_t mem;
} wvar;

/* What a node holds across plans. */
typedef struct node_res {
    wvar w[MAX_VARIANTS];
    int nw;
    dnnl_memory_t bias;
    dnnl_memory_t bn[4];     /* mean, variance, scale, shift */
    dnnl_memory_t konst;     /* a constant operand of Add/Mul, PRelu's slope */
    dnnl_memory_desc_t konst_md;
} node_res;

typedef struct value {
    dnnl_memory_desc_t md;
    int buf;                 /* buffer index; BUF_INPUT / BUF_OUTPUT: the caller's */
    int from;                /* value this one is a reordered copy of, or -1 */
    dnnl_memory_t mem;
} value;

#define BUF_INPUT (-1)
#define BUF_OUTPUT (-2)

typedef struct buffer {
    size_t size;
    int first, last;         /* steps */
    int last_pos;            /* last node position reading any tensor in it */
    size_t off;
} buffer;

typedef struct arg {
    int kind;                /* DNNL_ARG_* */
    int val;                 /* value index, or -1 when mem is fixed */
    dnnl_memory_t mem;
} arg;

typedef struct step {
    dnnl_primitive_t prim;
    arg *a;
    int na;
    dnnl_exec_arg_t *exec;
    size_t scratch;          /* bytes */
    dnnl_memory_desc_t scratch_md;
    dnnl_memory_t scratch_mem;
} step;

typedef struct plan {
    int n, target;
    value *v;
    int nv, cap_v;
    int *tval;               /* tensor -> value, -1 */
    buffer *b;
    int nb, cap_b;
    step *s;
    int ns, cap_s;
    int in_val, out_val;
    size_t act_bytes, scratch_bytes, total;
    unsigned gen;            /* arena generation bound to */
    uint64_t used;
} plan;

struct dnn {
    graph *g;
    dnn_options opt;
    dnnl_engine_t eng;
    dnnl_stream_t stream;
    node_res *res;
    plan *plans[MAX_PLANS];
    int n_plans;
    uint64_t clock;
    void *arena;
    size_t arena_size;
    unsigned gen;
    size_t weight_bytes;
    char conv_impl[64];
};

/* ------------------------------------------------------------- errors */

static int dn_code(dnnl_status_t s)
{
    if (s == dnnl_out_of_memory)
        return MS_ENOMEM;
    if (s == dnnl_unimplemented || s == dnnl_invalid_arguments)
        return MS_EUNSUPPORTED;
    return MS_EINTERNAL;
}

static const char *dn_status(dnnl_status_t s)
{
    switch (s) {
    case dnnl_out_of_memory: return "out of memory";
    case dnnl_invalid_arguments: return "invalid arguments";
    case dnnl_unimplemented: return "no implementation for these shapes";
    case dnnl_runtime_error: return "runtime error";
    default: return "error";
    }
}

static int dn_fail(dnnl_status_t s, const g_node *nd, const char *what, ms_err *err)
{
    if (nd)
        return ms_err_set(err, dn_code(s), "oneDNN cannot %s for node '%s' (%s): %s", what, nd->name,
                          nd->op_type, dn_status(s));
    return ms_err_set(err, dn_code(s), "oneDNN cannot %s: %s", what, dn_status(s));
}

#define DN(call, nd, what)                               \
    do {                                                 \
        dnnl_status_t st_ = (call);                      \
        if (st_ != dnnl_success)                         \
            return dn_fail(st_, (nd), (what), err);      \
    } while (0)

/* ------------------------------------------------------- descriptors */

static int plain_tag(int rank)
{
    return rank == 1 ? dnnl_a : rank == 2 ? dnnl_ab : rank == 3 ? dnnl_abc : rank == 4 ? dnnl_abcd
                                                                           : dnnl_abcde;
}

static int md_init_dt(dnnl_memory_desc_t *md, int rank, const int64_t *dims, int tag, dnnl_data_type_t dt,
                      ms_err *err)
{
    dnnl_dims_t d;
    for (int i = 0; i < rank; i++)
        d[i] = dims[i];
    DN(dnnl_memory_desc_init_by_tag(md, rank, d, dt, (dnnl_format_tag_t)tag), NULL, "describe a tensor");
    return 0;
}

static int md_init(dnnl_memory_desc_t *md, int rank, const int64_t *dims, int tag, ms_err *err)
{
    return md_init_dt(md, rank, dims, tag, dnnl_f32, err);
}

/* Dims of tensor t with the batch set to n. */
static void batch_dims(const g_tensor *t, int n, int64_t *dims)
{
    for (int i = 0; i < t->rank; i++)
        dims[i] = t->dims[i];
    dims[0] = n;
}

static int md_is_plain(const dnnl_memory_desc_t *md)
{
    dnnl_memory_desc_t p;
    if (dnnl_memory_desc_init_by_tag(&p, md->ndims, md->dims, dnnl_f32,
                                     (dnnl_format_tag_t)plain_tag(md->ndims)) != dnnl_success)
        return 0;
    return dnnl_memory_desc_equal(&p, md);
}

/* -------------------------------------------------------- plan pieces */

static int grow(void **p, int *cap, int need, size_t elem, ms_err *err)
{
    if (need <= *cap)
        return 0;
    int c = *cap ? *cap * 2 : 64;
    while (c < need)
        c *= 2;
    void *q = realloc(*p, (size_t)c * elem);
    if (!q)
        return ms_err_set(err, MS_ENOMEM, "out of memory");
    memset((char *)q + (size_t)*cap * elem, 0, (size_t)(c - *cap) * elem);
    *p = q;
    *cap = c;
    return 0;
}

static int new_buffer(plan *pl, const dnnl_memory_desc_t *md, ms_err *err)
{
    int rc = grow((void **)&pl->b, &pl->cap_b, pl->nb + 1, sizeof *pl->b, err);
    if (rc)
        return rc;
    buffer *b = &pl->b[pl->nb];
    b->size = dnnl_memory_desc_get_size(md);
    b->first = b->last = -1;
    b->last_pos = -1;
    return pl->nb++;
}

/* A value in buffer buf (a new buffer when buf == -3). Returns its index.
 * md may point into pl->v itself (another value's layout): it is copied
 * before the array grows. */
static int new_value(plan *pl, const dnnl_memory_desc_t *md, int buf, ms_err *err)
{
    dnnl_memory_desc_t layout = *md;
    int rc = grow((void **)&pl->v, &pl->cap_v, pl->nv + 1, sizeof *pl->v, err);
    if (rc)
        return rc;
    if (buf == -3 && (buf = new_buffer(pl, &layout, err)) < 0)
        return buf;
    value *v = &pl->v[pl->nv];
    v->md = layout;
    v->buf = buf;
    v->from = -1;
    v->mem = NULL;
    return pl->nv++;
}

static int new_step(plan *pl, dnnl_primitive_desc_t pd, int nargs, ms_err *err)
{
    int rc = grow((void **)&pl->s, &pl->cap_s, pl->ns + 1, sizeof *pl->s, err);
    if (rc)
        return rc;
    step *s = &pl->s[pl->ns];
    memset(s, 0, sizeof *s);
    s->a = calloc((size_t)nargs + 1, sizeof *s->a);
    s->exec = calloc((size_t)nargs + 2, sizeof *s->exec);
    if (!s->a || !s->exec) {
        free(s->a);
        free(s->exec);
        return ms_err_set(err, MS_ENOMEM, "out of memory");
    }
    dnnl_status_t st = dnnl_primitive_create(&s->prim, pd);
    if (st != dnnl_success) {
        free(s->a);
        free(s->exec);
        return dn_fail(st, NULL, "create a primitive", err);
    }
    const dnnl_memory_desc_t *sm = dnnl_primitive_desc_query_md(pd, dnnl_query_scratchpad_md, 0);
    if (sm) {
        s->scratch_md = *sm;
        s->scratch = dnnl_memory_desc_get_size(sm);
    }
    return pl->ns++;
}

static void step_arg(step *s, int kind, int val, dnnl_memory_t mem)
{
    arg *a = &s->a[s->na++];
    a->kind = kind;
    a->val = val;
    a->mem = mem;
}

/* Hard swish is x * clip(x / 6 + 1/2, 0, 1). oneDNN 2.x fixes these values
 * and ignores its alpha and beta; oneDNN 3 reads them. */
#define HSW_ALPHA (1.0f / 6.0f)
#define HSW_BETA 0.5f

/* One oneDNN eltwise step of an activation. */
typedef struct act_step {
    dnnl_alg_kind_t alg;
    float alpha, beta;
} act_step;

/* The eltwise steps, applied in order, that activation p runs as: the same
 * whether it is fused as post-ops or runs as a node of its own. Returns
 * how many (1 or 2; 0 for a post-op that is not an activation). */
static int act_steps(const g_post *p, act_step s[2])
{
    switch (p->act) {
    case G_ACT_RELU: s[0] = (act_step){dnnl_eltwise_relu, 0, 0}; return 1;
    case G_ACT_CLIP: s[0] = (act_step){dnnl_eltwise_clip, p->lo, p->hi}; return 1;
    case G_ACT_SIGMOID: s[0] = (act_step){dnnl_eltwise_logistic, 0, 0}; return 1;
    case G_ACT_SWISH: s[0] = (act_step){dnnl_eltwise_swish, 1.0f, 0}; return 1;
    case G_ACT_HARDSIGMOID: /* clip(alpha x + beta, 0, 1) */
        s[0] = (act_step){dnnl_eltwise_linear, p->lo, p->hi};
        s[1] = (act_step){dnnl_eltwise_clip, 0.0f, 1.0f};
        return 2;
    case G_ACT_HARDSWISH: s[0] = (act_step){dnnl_eltwise_hardswish, HSW_ALPHA, HSW_BETA}; return 1;
    case G_ACT_LEAKYRELU: s[0] = (act_step){dnnl_eltwise_relu, p->lo, 0}; return 1;
    case G_ACT_ELU: s[0] = (act_step){dnnl_eltwise_elu, p->lo, 0}; return 1;
    case G_ACT_SELU: /* gamma * elu(x, alpha) */
        s[0] = (act_step){dnnl_eltwise_elu, p->lo, 0};
        s[1] = (act_step){dnnl_eltwise_linear, p->hi, 0};
        return 2;
    case G_ACT_TANH: s[0] = (act_step){dnnl_eltwise_tanh, 0, 0}; return 1;
    case G_ACT_SOFTPLUS: s[0] = (act_step){dnnl_eltwise_soft_relu, 0, 0}; return 1;
    case G_ACT_GELU_ERF: s[0] = (act_step){dnnl_eltwise_gelu_erf, 0, 0}; return 1;
    case G_ACT_GELU_TANH: s[0] = (act_step){dnnl_eltwise_gelu_tanh, 0, 0}; return 1;
    }
    return 0;
}

static dnnl_primitive_attr_t new_attr(const dnn *d, const g_node *nd, int with_posts)
{
    dnnl_primitive_attr_t attr = NULL;
    if (dnnl_primitive_attr_create(&attr) != dnnl_success)
        return NULL;
    dnnl_primitive_attr_set_scratchpad_mode(attr, dnnl_scratchpad_mode_user);
    if (!with_posts || !nd || !nd->n_post)
        return attr;
    dnnl_post_ops_t po;
    if (dnnl_post_ops_create(&po) != dnnl_success) {
        dnnl_primitive_attr_destroy(attr);
        return NULL;
    }
    for (int i = 0; i < nd->n_post; i++) {
        const g_post *p = &nd->post[i];
        if (p->kind == G_POST_SUM) {
            dnnl_post_ops_append_sum(po, 1.0f);
            continue;
        }
        act_step steps[2];
        for (int k = 0, n = act_steps(p, steps); k < n; k++)
            dnnl_post_ops_append_eltwise(po, 1.0f, steps[k].alg, steps[k].alpha, steps[k].beta);
    }
    dnnl_primitive_attr_set_post_ops(attr, po);
    dnnl_post_ops_destroy(po);
    return attr;
}

/* Creates a primitive descriptor; NULL attr means "out of memory". */
static int make_pd(dnnl_primitive_desc_t *pd, const void *desc, dnnl_primitive_attr_t attr,
                   const dnn *d, const g_node *nd, const char *what, ms_err *err)
{
    if (!attr)
        return ms_err_set(err, MS_ENOMEM, "out of memory");
    dnnl_status_t st = dnnl_primitive_desc_create(pd, desc, attr, d->eng, NULL);
    dnnl_primitive_attr_destroy(attr);
    if (st != dnnl_success)
        return dn_fail(st, nd, what, err);
    return 0;
}

/* A reorder step copying value v into a new buffer in layout md. */
static int copy_value(dnn *d, plan *pl, int v, const dnnl_memory_desc_t *md, ms_err *err)
{
    dnnl_primitive_desc_t pd;
    dnnl_primitive_attr_t attr = new_attr(d, NULL, 0);
    if (!attr)
        return ms_err_set(err, MS_ENOMEM, "out of memory");
    dnnl_status_t st = dnnl_reorder_primitive_desc_create(&pd, &pl->v[v].md, d->eng, md, d->eng, attr);
    dnnl_primitive_attr_destroy(attr);
    if (st != dnnl_success)
        return dn_fail(st, NULL, "reorder an activation", err);
    int nv = new_value(pl, md, -3, err);
    int s = nv < 0 ? nv : new_step(pl, pd, 2, err);
    dnnl_primitive_desc_destroy(pd);
    if (s < 0)
        return s;
    step_arg(&pl->s[s], DNNL_ARG_FROM, v, NULL);
    step_arg(&pl->s[s], DNNL_ARG_TO, nv, NULL);
    return nv;
}

/* The value of `v` in layout md: v itself, an earlier copy, or a new copy
 * (remembered for the next consumer). Returns a value index or a code. */
static int value_as(dnn *d, plan *pl, int v, const dnnl_memory_desc_t *md, ms_err *err)
{
    if (dnnl_memory_desc_equal(&pl->v[v].md, md))
        return v;
    for (int i = 0; i < pl->nv; i++)
        if (pl->v[i].from == v && dnnl_memory_desc_equal(&pl->v[i].md, md))
            return i;
    int nv = copy_value(d, pl, v, md, err);
    if (nv >= 0)
        pl->v[nv].from = v;
    return nv;
}

/* ------------------------------------------------------------- weights */

/* The OpenMP runtime oneDNN was built with (libgomp, loaded with libdnnl):
 * reached through dlsym so the build needs no OpenMP flag. NULL when absent. */
typedef void (*omp_set_fn)(int);
typedef int (*omp_get_fn)(void);

static void omp_fns(omp_set_fn *set, omp_get_fn *get)
{
    *set = (omp_set_fn)(uintptr_t)dlsym(RTLD_DEFAULT, "omp_set_num_threads");
    *get = (omp_get_fn)(uintptr_t)dlsym(RTLD_DEFAULT, "omp_get_max_threads");
}

static int reorder_run(dnn *d, dnnl_memory_t from, dnnl_memory_t to, const g_node *nd, ms_err *err)
{
    const dnnl_memory_desc_t *fm, *tm;
    dnnl_memory_get_memory_desc(from, &fm);
    dnnl_memory_get_memory_desc(to, &tm);
    dnnl_primitive_desc_t pd;
    dnnl_primitive_t p;
    DN(dnnl_reorder_primitive_desc_create(&pd, fm, d->eng, tm, d->eng, NULL), nd, "reorder weights");
    dnnl_status_t st = dnnl_primitive_create(&p, pd);
    dnnl_primitive_desc_destroy(pd);
    if (st != dnnl_success)
        return dn_fail(st, nd, "reorder weights", err);
    dnnl_exec_arg_t args[2] = {{DNNL_ARG_FROM, from}, {DNNL_ARG_TO, to}};
    st = dnnl_primitive_execute(p, d->stream, 2, args);
    if (st == dnnl_success)
        st = dnnl_stream_wait(d->stream);
    dnnl_primitive_destroy(p);
    if (st != dnnl_success)
        return dn_fail(st, nd, "reorder weights", err);
    return 0;
}

/* Reorders weights once, on one thread: a weight reorder takes about a
 * millisecond, while a parallel region can wait a whole time slice for a
 * descheduled thread on a busy machine. Only this thread's OpenMP setting
 * changes, and only around the reorder (oneDNN sizes its work when the
 * primitive is created, so both steps are inside). */
static int reorder_now(dnn *d, dnnl_memory_t from, dnnl_memory_t to, const g_node *nd, ms_err *err)
{
    omp_set_fn set;
    omp_get_fn get;
    omp_fns(&set, &get);
    int threads = set && get ? get() : 0;
    if (threads > 1)
        set(1);
    int rc = reorder_run(d, from, to, nd, err);
    if (threads > 1)
        set(threads);
    return rc;
}

/* Dims of a Conv's weights as oneDNN sees them: [O, I, kh, kw], or with
 * groups [g, O/g, I/g, kh, kw] (the same bytes as ONNX's [O, I/g, kh, kw]).
 * Returns the rank. */
static int conv_weight_dims(const graph *g, const g_node *nd, int64_t *dims)
{
    const g_tensor *w = &g->t[nd->weights];
    if (nd->group == 1) {
        memcpy(dims, w->dims, 4 * sizeof *dims);
        return 4;
    }
    int64_t t[5] = {nd->group, w->dims[0] / nd->group, w->dims[1], w->dims[2], w->dims[3]};
    memcpy(dims, t, sizeof t);
    return 5;
}

/* The plain layout of a node's weights as the graph holds them. */
static int weights_plain_md(const graph *g, const g_node *nd, dnnl_memory_desc_t *md, ms_err *err)
{
    const g_tensor *w = &g->t[nd->weights];
    if (nd->op == G_GEMM)
        return md_init(md, 2, w->dims, dnnl_ab, err);
    int64_t dims[5];
    int rank = conv_weight_dims(g, nd, dims);
    return md_init(md, rank, dims, rank == 4 ? dnnl_abcd : dnnl_abcde, err);
}

/* The node's weights in layout want, reordered once and kept. */
static int weights_as(dnn *d, int node, const dnnl_memory_desc_t *want, dnnl_memory_t *out,
                      ms_err *err)
{
    node_res *r = &d->res[node];
    const g_node *nd = &d->g->n[node];
    for (int i = 0; i < r->nw; i++)
        if (dnnl_memory_desc_equal(&r->w[i].md, want)) {
            *out = r->w[i].mem;
            return 0;
        }
    if (r->nw == MAX_VARIANTS)
        return ms_err_set(err, MS_EINTERNAL, "node '%s': too many weight layouts", nd->name);
    dnnl_memory_t src = NULL, dst;
    int rc;
    if (r->nw) {
        src = r->w[0].mem;
    } else {
        dnnl_memory_desc_t pm;
        float *host = d->g->t[nd->weights].f;
        if (!host)
            return ms_err_set(err, MS_EINTERNAL, "node '%s': weights were released", nd->name);
        if ((rc = weights_plain_md(d->g, nd, &pm, err)))
            return rc;
        DN(dnnl_memory_create(&src, &pm, d->eng, host), nd, "wrap weights");
    }
    dnnl_status_t st = dnnl_memory_create(&dst, want, d->eng, DNNL_MEMORY_ALLOCATE);
    if (st != dnnl_success) {
        if (!r->nw)
            dnnl_memory_destroy(src);
        return dn_fail(st, nd, "allocate weights", err);
    }
    rc = reorder_now(d, src, dst, nd, err);
    if (!r->nw)
        dnnl_memory_destroy(src);
    if (rc) {
        dnnl_memory_destroy(dst);
        return rc;
    }
    r->w[r->nw].md = *want;
    r->w[r->nw++].mem = dst;
    d->weight_bytes += dnnl_memory_desc_get_size(want);
    *out = dst;
    return 0;
}

/* A plain 1-D memory over a graph constant (kept by the graph). */
static int const_mem(dnn *d, int t, dnnl_memory_t *out, const g_node *nd, ms_err *err)
{
    if (*out)
        return 0;
    dnnl_memory_desc_t md;
    int64_t n = d->g->t[t].count;
    int rc = md_init(&md, 1, &n, dnnl_a, err);
    if (rc)
        return rc;
    DN(dnnl_memory_create(out, &md, d->eng, d->g->t[t].f), nd, "wrap a constant");
    return 0;
}

/* --------------------------------------------------------- node builders */

typedef struct ctx {
    dnn *d;
    plan *pl;
    const graph *g;
    const int *last_pos;     /* tensor -> last node position reading it */
    int pos;                 /* position of the node being built */
} ctx;

static int value_of(const ctx *c, int t, const g_node *nd, ms_err *err)
{
    int v = c->pl->tval[t];
    if (v < 0)
        return ms_err_set(err, MS_EINTERNAL, "node '%s' reads '%s' before it is computed", nd->name,
                          c->g->t[t].name);
    return v;
}

/* Maps tensor t to value v and extends the value's buffer liveness. */
static void bind_tensor(const ctx *c, int t, int v)
{
    c->pl->tval[t] = v;
    int b = c->pl->v[v].buf;
    if (b >= 0 && c->last_pos[t] > c->pl->b[b].last_pos)
        c->pl->b[b].last_pos = c->last_pos[t];
}

/* Whether value v's memory may be overwritten by the node at c->pos. */
static int dies_here(const ctx *c, int v)
{
    int b = c->pl->v[v].buf;
    return b >= 0 && c->pl->b[b].last_pos <= c->pos;
}

/* The residual a Conv's sum post-op adds, as a value index; -1 without. */
static int conv_residual(const ctx *c, const g_node *nd, ms_err *err)
{
    for (int i = 0; i < nd->n_post; i++)
        if (nd->post[i].kind == G_POST_SUM)
            return value_of(c, nd->post[i].tensor, nd, err);
    return -1;
}

/* The convolution's primitive descriptor with oneDNN's preferred layouts.
 * With a residual sum it first asks for the residual's own layout as dst,
 * so the sum can accumulate in place. */
static int conv_pd(const ctx *c, const g_node *nd, const dnnl_memory_desc_t *res_md, dnnl_primitive_desc_t *pd,
                   ms_err *err)
{
    const graph *g = c->g;
    const g_tensor *x = &g->t[nd->in[0]], *o = &g->t[nd->out];
    int64_t sd[4], od[4], wd[5], bd = o->dims[1];
    batch_dims(x, c->pl->n, sd);
    batch_dims(o, c->pl->n, od);
    int wr = conv_weight_dims(g, nd, wd);
    dnnl_memory_desc_t src_md, w_md, b_md, dst_md;
    int rc;
    dnnl_data_type_t dt = c->d->opt.bf16 ? dnnl_bf16 : dnnl_f32; /* bias stays f32 */
    if ((rc = md_init_dt(&src_md, 4, sd, dnnl_format_tag_any, dt, err)) ||
        (rc = md_init_dt(&w_md, wr, wd, dnnl_format_tag_any, dt, err)) || (rc = md_init(&b_md, 1, &bd, dnnl_a, err)) ||
        (rc = md_init_dt(&dst_md, 4, od, dnnl_format_tag_any, dt, err)))
        return rc;
    dnnl_dims_t strides = {nd->stride[0], nd->stride[1]};
    dnnl_dims_t dil = {nd->dilation[0] - 1, nd->dilation[1] - 1}; /* oneDNN counts dilation from 0 */
    dnnl_dims_t pad_l = {nd->pad_l[0], nd->pad_l[1]}, pad_r = {nd->pad_r[0], nd->pad_r[1]};
    dnnl_status_t st = dnnl_success;
    for (int attempt = res_md ? 0 : 1; attempt < 2; attempt++) {
        dnnl_convolution_desc_t cd;
        DN(dnnl_dilated_convolution_forward_desc_init(&cd, dnnl_forward_inference, dnnl_convolution_direct, &src_md,
                                                      &w_md, nd->bias >= 0 ? &b_md : NULL,
                                                      attempt == 0 ? res_md : &dst_md, strides, dil, pad_l, pad_r),
           nd, "describe the convolution");
        dnnl_primitive_attr_t attr = new_attr(c->d, nd, 1);
        if (!attr)
            return ms_err_set(err, MS_ENOMEM, "out of memory");
        st = dnnl_primitive_desc_create(pd, &cd, attr, c->d->eng, NULL);
        dnnl_primitive_attr_destroy(attr);
        if (st == dnnl_success)
            break;
    }
    if (st != dnnl_success)
        return dn_fail(st, nd, "create the convolution", err);
    const char *impl = NULL;
    if (dnnl_primitive_desc_query(*pd, dnnl_query_impl_info_str, 0, &impl) == dnnl_success && impl)
        snprintf(c->d->conv_impl, sizeof c->d->conv_impl, "%s", impl);
    return 0;
}

/* Arguments of a convolution or inner-product step (bias only when the
 * node has one), and the node's output bound to its destination value. */
static void bind_weighted_step(const ctx *c, step *st, const g_node *nd, int sv, dnnl_memory_t wmem,
                               dnnl_memory_t bias, int dv)
{
    step_arg(st, DNNL_ARG_SRC, sv, NULL);
    step_arg(st, DNNL_ARG_WEIGHTS, -1, wmem);
    if (nd->bias >= 0)
        step_arg(st, DNNL_ARG_BIAS, -1, bias);
    step_arg(st, DNNL_ARG_DST, dv, NULL);
    bind_tensor(c, nd->out, dv);
}

/* Where the convolution writes: with a sum, the residual's own buffer when
 * nothing reads it later and the conv does not read it as src, else a copy
 * of the residual; without, a new buffer. A value index or a code. */
static int conv_dst(const ctx *c, int sv, int res_v, const dnnl_memory_desc_t *dst, ms_err *err)
{
    plan *pl = c->pl;
    if (res_v < 0)
        return new_value(pl, dst, -3, err);
    if (dnnl_memory_desc_equal(&pl->v[res_v].md, dst) && dies_here(c, res_v) && pl->v[sv].buf != pl->v[res_v].buf)
        return new_value(pl, dst, pl->v[res_v].buf, err);
    return copy_value(c->d, pl, res_v, dst, err);
}

static int build_conv(const ctx *c, int node, ms_err *err)
{
    dnn *d = c->d;
    plan *pl = c->pl;
    const g_node *nd = &c->g->n[node];
    int res_v = conv_residual(c, nd, err);
    if (res_v < -1)
        return res_v;
    dnnl_primitive_desc_t pd;
    int rc = conv_pd(c, nd, res_v >= 0 ? &pl->v[res_v].md : NULL, &pd, err);
    if (rc)
        return rc;
    dnnl_memory_t wmem = NULL;
    int sv = value_of(c, nd->in[0], nd, err), dv = -1;
    if (sv >= 0)
        sv = value_as(d, pl, sv, dnnl_primitive_desc_query_md(pd, dnnl_query_src_md, 0), err);
    rc = sv < 0 ? sv : weights_as(d, node, dnnl_primitive_desc_query_md(pd, dnnl_query_weights_md, 0), &wmem, err);
    if (!rc && nd->bias >= 0)
        rc = const_mem(d, nd->bias, &d->res[node].bias, nd, err);
    if (!rc && (dv = conv_dst(c, sv, res_v, dnnl_primitive_desc_query_md(pd, dnnl_query_dst_md, 0), err)) < 0)
        rc = dv;
    int s = rc ? -1 : new_step(pl, pd, 4, err);
    dnnl_primitive_desc_destroy(pd);
    if (rc || s < 0)
        return rc ? rc : s;
    bind_weighted_step(c, &pl->s[s], nd, sv, wmem, d->res[node].bias, dv);
    return 0;
}

static int build_gemm(const ctx *c, int node, ms_err *err)
{
    dnn *d = c->d;
    plan *pl = c->pl;
    const graph *g = c->g;
    const g_node *nd = &g->n[node];
    const g_tensor *o = &g->t[nd->out], *w = &g->t[nd->weights];
    int64_t sd[2] = {pl->n, w->dims[1]}, od[2] = {pl->n, o->dims[1]}, bd = o->dims[1];
    dnnl_memory_desc_t src_md, w_md, b_md, dst_md;
    int rc;
    dnnl_data_type_t dt = d->opt.bf16 ? dnnl_bf16 : dnnl_f32; /* the Gemm's output stays f32 */
    if ((rc = md_init_dt(&src_md, 2, sd, dnnl_format_tag_any, dt, err)) ||
        (rc = md_init_dt(&w_md, 2, w->dims, dnnl_format_tag_any, dt, err)) ||
        (rc = md_init(&b_md, 1, &bd, dnnl_a, err)) || (rc = md_init(&dst_md, 2, od, dnnl_ab, err)))
        return rc;
    dnnl_inner_product_desc_t ipd;
    DN(dnnl_inner_product_forward_desc_init(&ipd, dnnl_forward_inference, &src_md, &w_md,
                                            nd->bias >= 0 ? &b_md : NULL, &dst_md),
       nd, "describe the Gemm");
    dnnl_primitive_desc_t pd;
    if ((rc = make_pd(&pd, &ipd, new_attr(d, nd, 1), d, nd, "create the Gemm", err)))
        return rc;
    const dnnl_memory_desc_t *want_src = dnnl_primitive_desc_query_md(pd, dnnl_query_src_md, 0);
    const dnnl_memory_desc_t *want_w = dnnl_primitive_desc_query_md(pd, dnnl_query_weights_md, 0);
    dnnl_memory_t wmem = NULL;
    int sv = value_of(c, nd->in[0], nd, err);
    if (sv >= 0)
        sv = value_as(d, pl, sv, want_src, err);
    rc = sv < 0 ? sv : weights_as(d, node, want_w, &wmem, err);
    if (!rc && nd->bias >= 0)
        rc = const_mem(d, nd->bias, &d->res[node].bias, nd, err);
    int dv = rc ? -1 : new_value(pl, &dst_md, -3, err);
    int s = rc || dv < 0 ? -1 : new_step(pl, pd, 5, err);
    dnnl_primitive_desc_destroy(pd);
    if (rc)
        return rc;
    if (dv < 0 || s < 0)
        return dv < 0 ? dv : s;
    bind_weighted_step(c, &pl->s[s], nd, sv, wmem, d->res[node].bias, dv);
    return 0;
}

/* Output value of an op whose destination has the source's layout: the
 * source's buffer when it dies here (in place), else a new buffer. */
static int same_layout_dst(const ctx *c, int sv, ms_err *err)
{
    int inplace = dies_here(c, sv);
    return new_value(c->pl, &c->pl->v[sv].md, inplace ? c->pl->v[sv].buf : -3, err);
}

static int finish_unary(const ctx *c, const g_node *nd, dnnl_primitive_desc_t pd, int sv, int dv,
                        int nextra, const int *extra_kind, dnnl_memory_t *extra, ms_err *err)
{
    int s = new_step(c->pl, pd, 2 + nextra, err);
    dnnl_primitive_desc_destroy(pd);
    if (s < 0)
        return s;
    step *st = &c->pl->s[s];
    step_arg(st, DNNL_ARG_SRC, sv, NULL);
    for (int i = 0; i < nextra; i++)
        step_arg(st, extra_kind[i], -1, extra[i]);
    step_arg(st, DNNL_ARG_DST, dv, NULL);
    bind_tensor(c, nd->out, dv);
    return 0;
}

/* One eltwise step from value sv; dv_buf: the buffer to write (-3: decide
 * here, in place when sv dies at this node). The new value, or a code. */
static int eltwise_step(const ctx *c, const g_node *nd, int sv, dnnl_alg_kind_t alg, float alpha, float beta,
                        int dv_buf, ms_err *err)
{
    dnnl_eltwise_desc_t ed;
    DN(dnnl_eltwise_forward_desc_init(&ed, dnnl_forward_inference, alg, &c->pl->v[sv].md, alpha, beta),
       nd, "describe the activation");
    dnnl_primitive_desc_t pd;
    int rc = make_pd(&pd, &ed, new_attr(c->d, nd, 0), c->d, nd, "create the activation", err);
    if (rc)
        return rc;
    int dv = dv_buf == -3 ? same_layout_dst(c, sv, err) : new_value(c->pl, &c->pl->v[sv].md, dv_buf, err);
    if (dv < 0) {
        dnnl_primitive_desc_destroy(pd);
        return dv;
    }
    rc = finish_unary(c, nd, pd, sv, dv, 0, NULL, NULL, err);
    return rc ? rc : dv;
}

static int build_eltwise(const ctx *c, int node, ms_err *err)
{
    const g_node *nd = &c->g->n[node];
    g_post post;
    act_step steps[2];
    int n = graph_eltwise_post(nd, &post) ? act_steps(&post, steps) : 0;
    if (!n)
        return ms_err_set(err, MS_EINTERNAL, "node '%s' (%s) is not an activation", nd->name, nd->op_type);
    int dv = value_of(c, nd->in[0], nd, err);
    /* the first step in place when its source dies here, the second in place on the first's output */
    for (int k = 0; k < n && dv >= 0; k++)
        dv = eltwise_step(c, nd, dv, steps[k].alg, steps[k].alpha, steps[k].beta, k ? c->pl->v[dv].buf : -3, err);
    return dv < 0 ? dv : 0;
}

/* LRN across channels. oneDNN divides alpha by the local size as ONNX
 * does, and its k is ONNX's bias. */
static int build_lrn(const ctx *c, int node, ms_err *err)
{
    const g_node *nd = &c->g->n[node];
    int sv = value_of(c, nd->in[0], nd, err);
    if (sv < 0)
        return sv;
    dnnl_lrn_desc_t ld;
    DN(dnnl_lrn_forward_desc_init(&ld, dnnl_forward_inference, dnnl_lrn_across_channels, &c->pl->v[sv].md,
                                  nd->kernel[0], nd->alpha, nd->beta, nd->eps),
       nd, "describe the LRN");
    dnnl_primitive_desc_t pd;
    int rc = make_pd(&pd, &ld, new_attr(c->d, nd, 0), c->d, nd, "create the LRN", err);
    if (rc)
        return rc;
    /* LRN reads neighbouring channels of each value it writes: never in place */
    int dv = new_value(c->pl, &c->pl->v[sv].md, -3, err);
    if (dv < 0) {
        dnnl_primitive_desc_destroy(pd);
        return dv;
    }
    return finish_unary(c, nd, pd, sv, dv, 0, NULL, NULL, err);
}

static int build_bn(const ctx *c, int node, ms_err *err)
{
    dnn *d = c->d;
    const g_node *nd = &c->g->n[node];
    int sv = value_of(c, nd->in[0], nd, err);
    if (sv < 0)
        return sv;
    node_res *r = &d->res[node];
    /* ONNX order: X, scale, B, mean, var; oneDNN args: mean, variance, scale, shift */
    const int from[4] = {3, 4, 1, 2};
    for (int i = 0; i < 4; i++) {
        int rc = const_mem(d, nd->in[from[i]], &r->bn[i], nd, err);
        if (rc)
            return rc;
    }
    dnnl_batch_normalization_desc_t bd;
    DN(dnnl_batch_normalization_forward_desc_init(&bd, dnnl_forward_inference, &c->pl->v[sv].md, nd->eps,
                                                  dnnl_use_global_stats | dnnl_use_scale | dnnl_use_shift),
       nd, "describe the batch normalization");
    dnnl_primitive_desc_t pd;
    int rc = make_pd(&pd, &bd, new_attr(d, nd, 0), d, nd, "create the batch normalization", err);
    if (rc)
        return rc;
    int dv = same_layout_dst(c, sv, err);
    if (dv < 0) {
        dnnl_primitive_desc_destroy(pd);
        return dv;
    }
    const int kinds[4] = {DNNL_ARG_MEAN, DNNL_ARG_VARIANCE, DNNL_ARG_SCALE, DNNL_ARG_SHIFT};
    return finish_unary(c, nd, pd, sv, dv, 4, kinds, r->bn, err);
}

/* A view of value v's buffer in layout md (no copy). Its index or a code. */
static int view_of(plan *pl, int v, const dnnl_memory_desc_t *md, ms_err *err)
{
    int w = new_value(pl, md, pl->v[v].buf, err);
    if (w >= 0)
        pl->v[w].from = -2;
    return w;
}

/* One channel: a view of it in the map laid out plain (NCHW), copied into
 * a [N, 1, H, W] buffer of its own. */
static int build_channel(const ctx *c, int node, ms_err *err)
{
    plan *pl = c->pl;
    const g_node *nd = &c->g->n[node];
    int sv = value_of(c, nd->in[0], nd, err);
    if (sv < 0)
        return sv;
    int64_t dims[4], od[4];
    batch_dims(&c->g->t[nd->in[0]], pl->n, dims);
    batch_dims(&c->g->t[nd->out], pl->n, od);
    dnnl_memory_desc_t plain, out;
    int rc;
    if ((rc = md_init(&plain, 4, dims, dnnl_nchw, err)) || (rc = md_init(&out, 4, od, dnnl_nchw, err)))
        return rc;
    if ((sv = value_as(c->d, pl, sv, &plain, err)) < 0)
        return sv;
    dnnl_memory_desc_t sub;
    dnnl_dims_t sd = {od[0], 1, od[2], od[3]}, off = {0, nd->channel, 0, 0};
    DN(dnnl_memory_desc_init_submemory(&sub, &plain, sd, off), nd, "describe the channel");
    int v = view_of(pl, sv, &sub, err);
    if (v < 0 || (v = copy_value(c->d, pl, v, &out, err)) < 0)
        return v;
    bind_tensor(c, nd->out, v);
    return 0;
}

/* Layer normalisation over the channels: oneDNN normalises the last axis,
 * so a map is laid out NHWC (a reorder unless the producer chose it) and
 * normalised as [N * H * W, C] rows; the result is that buffer seen as
 * NHWC. A [N, C] vector is its own rows. */
static int build_layer_norm(const ctx *c, int node, ms_err *err)
{
    dnn *d = c->d;
    plan *pl = c->pl;
    const g_node *nd = &c->g->n[node];
    const g_tensor *x = &c->g->t[nd->in[0]];
    int sv = value_of(c, nd->in[0], nd, err);
    if (sv < 0)
        return sv;
    int64_t dims[4], rd[2];
    batch_dims(x, pl->n, dims);
    int map = x->rank == 4;
    rd[0] = map ? dims[0] * dims[2] * dims[3] : dims[0];
    rd[1] = dims[1];
    dnnl_memory_desc_t nhwc, rows;
    int rc;
    if ((rc = md_init(&rows, 2, rd, dnnl_ab, err)) || (map && (rc = md_init(&nhwc, 4, dims, dnnl_nhwc, err))))
        return rc;
    if (map && ((sv = value_as(d, pl, sv, &nhwc, err)) < 0 || (sv = view_of(pl, sv, &rows, err)) < 0))
        return sv;
    if (!map && (sv = value_as(d, pl, sv, &rows, err)) < 0)
        return sv;
    node_res *r = &d->res[node];
    unsigned flags = 0;
    int kinds[2], n = 0;
    dnnl_memory_t extra[2];
    for (int slot = 1; slot < 3 && slot < nd->n_in; slot++) {
        if (nd->in[slot] < 0)
            continue;
        dnnl_memory_t *mem = &r->bn[slot + 1]; /* bn[2] scale, bn[3] shift, as BatchNorm's */
        if ((rc = const_mem(d, nd->in[slot], mem, nd, err)))
            return rc;
        flags |= slot == 1 ? dnnl_use_scale : dnnl_use_shift;
        kinds[n] = slot == 1 ? DNNL_ARG_SCALE : DNNL_ARG_SHIFT;
        extra[n++] = *mem;
    }
    dnnl_layer_normalization_desc_t ld;
    DN(dnnl_layer_normalization_forward_desc_init(&ld, dnnl_forward_inference, &rows, NULL, nd->eps, flags), nd,
       "describe the layer normalization");
    dnnl_primitive_desc_t pd;
    if ((rc = make_pd(&pd, &ld, new_attr(d, nd, 0), d, nd, "create the layer normalization", err)))
        return rc;
    int dv = new_value(pl, &rows, -3, err);
    if (dv < 0) {
        dnnl_primitive_desc_destroy(pd);
        return dv;
    }
    if ((rc = finish_unary(c, nd, pd, sv, dv, n, kinds, extra, err)) || !map)
        return rc;
    int ov = view_of(pl, dv, &nhwc, err);
    if (ov < 0)
        return ov;
    bind_tensor(c, nd->out, ov);
    return 0;
}

/* Binds nd's output (rank 2, or 3 for a Squeeze) to a plain view of value
 * sv (rank, batch dims), made plain (NCHW) first when it is not. */
static int flat_view(const ctx *c, const g_node *nd, int sv, int rank, const int64_t *dims, ms_err *err)
{
    plan *pl = c->pl;
    const g_tensor *o = &c->g->t[nd->out];
    int rc;
    if (!md_is_plain(&pl->v[sv].md)) {
        dnnl_memory_desc_t plain;
        if ((rc = md_init(&plain, rank, dims, plain_tag(rank), err)))
            return rc;
        if ((sv = value_as(c->d, pl, sv, &plain, err)) < 0)
            return sv;
    }
    int64_t od[G_MAX_RANK];
    batch_dims(o, pl->n, od);
    dnnl_memory_desc_t view;
    if ((rc = md_init(&view, o->rank, od, plain_tag(o->rank), err)))
        return rc;
    int dv = view_of(pl, sv, &view, err);
    if (dv < 0)
        return dv;
    bind_tensor(c, nd->out, dv);
    return 0;
}

static int build_pool(const ctx *c, int node, ms_err *err)
{
    const g_node *nd = &c->g->n[node];
    plan *pl = c->pl;
    int sv = value_of(c, nd->in[0], nd, err);
    if (sv < 0)
        return sv;
    const g_tensor *x = &c->g->t[nd->in[0]], *o = &c->g->t[nd->out];
    int global = nd->op == G_GAP || nd->op == G_GMP;
    int64_t od[4] = {pl->n, x->dims[1], 1, 1}; /* global: [N, C] outputs pool to [N, C, 1, 1] first */
    if (!global)
        batch_dims(o, pl->n, od);
    dnnl_memory_desc_t dst_md;
    int rc = md_init_dt(&dst_md, 4, od, dnnl_format_tag_any, pl->v[sv].md.data_type, err);
    if (rc)
        return rc;
    dnnl_alg_kind_t alg = dnnl_pooling_max;
    dnnl_dims_t k = {nd->kernel[0], nd->kernel[1]}, s = {nd->stride[0], nd->stride[1]};
    dnnl_dims_t dil = {nd->dilation[0] - 1, nd->dilation[1] - 1};
    dnnl_dims_t pl_ = {nd->pad_l[0], nd->pad_l[1]}, pr = {nd->pad_r[0], nd->pad_r[1]};
    if (nd->op == G_AVGPOOL)
        alg = nd->count_include_pad ? dnnl_pooling_avg_include_padding : dnnl_pooling_avg_exclude_padding;
    if (global) {
        alg = nd->op == G_GAP ? dnnl_pooling_avg_exclude_padding : dnnl_pooling_max;
        k[0] = x->dims[2];
        k[1] = x->dims[3];
        s[0] = s[1] = 1;
        dil[0] = dil[1] = 0;
        pl_[0] = pl_[1] = pr[0] = pr[1] = 0;
    }
    dnnl_pooling_v2_desc_t pdsc;
    DN(dnnl_pooling_v2_forward_desc_init(&pdsc, dnnl_forward_inference, alg, &pl->v[sv].md, &dst_md, s, k,
                                         dil, pl_, pr),
       nd, "describe the pooling");
    dnnl_primitive_desc_t pd;
    if ((rc = make_pd(&pd, &pdsc, new_attr(c->d, nd, 0), c->d, nd, "create the pooling", err)))
        return rc;
    int dv = new_value(pl, dnnl_primitive_desc_query_md(pd, dnnl_query_dst_md, 0), -3, err);
    if (dv < 0) {
        dnnl_primitive_desc_destroy(pd);
        return dv;
    }
    if ((rc = finish_unary(c, nd, pd, sv, dv, 0, NULL, NULL, err)))
        return rc;
    return o->rank == 2 ? flat_view(c, nd, dv, 4, od, err) : 0;
}

/* The constant operand of Add/Mul as a plain memory with the activation's
 * rank (numpy broadcasting: dims aligned right, 1 elsewhere). */
static int binary_const(const ctx *c, int node, int t, int rank, ms_err *err)
{
    node_res *r = &c->d->res[node];
    if (r->konst)
        return 0;
    const g_tensor *k = &c->g->t[t];
    int64_t dims[G_MAX_RANK];
    for (int i = 0; i < rank; i++)
        dims[i] = 1;
    for (int i = 0; i < k->rank; i++)
        dims[rank - k->rank + i] = k->dims[i];
    int rc = md_init(&r->konst_md, rank, dims, plain_tag(rank), err);
    if (rc)
        return rc;
    DN(dnnl_memory_create(&r->konst, &r->konst_md, c->d->eng, k->f), &c->g->n[node], "wrap a constant");
    return 0;
}

static int build_binary(const ctx *c, int node, ms_err *err)
{
    dnn *d = c->d;
    plan *pl = c->pl;
    const graph *g = c->g;
    const g_node *nd = &g->n[node];
    int a = nd->in[0], b = nd->in[1];
    if (g->t[a].is_const || (!g->t[b].is_const && graph_elems(&g->t[b]) > graph_elems(&g->t[a]))) {
        int t = a;
        a = b;
        b = t;
    }
    int sv0 = value_of(c, a, nd, err), sv1 = -1, rc;
    if (sv0 < 0)
        return sv0;
    const dnnl_memory_desc_t *md0 = &pl->v[sv0].md;
    dnnl_memory_desc_t md1;
    if (g->t[b].is_const) {
        if ((rc = binary_const(c, node, b, md0->ndims, err)))
            return rc;
        md1 = d->res[node].konst_md;
    } else {
        if ((sv1 = value_of(c, b, nd, err)) < 0)
            return sv1;
        if (graph_elems(&g->t[b]) == graph_elems(&g->t[a])) {
            sv1 = value_as(d, pl, sv1, md0, err); /* same shape: same layout */
        } else {
            int64_t dims[G_MAX_RANK];
            batch_dims(&g->t[b], pl->n, dims);
            dnnl_memory_desc_t plain;
            if ((rc = md_init(&plain, g->t[b].rank, dims, plain_tag(g->t[b].rank), err)))
                return rc;
            sv1 = value_as(d, pl, sv1, &plain, err);
        }
        if (sv1 < 0)
            return sv1;
        md0 = &pl->v[sv0].md;
        md1 = pl->v[sv1].md;
    }
    dnnl_binary_desc_t bd;
    dnnl_alg_kind_t alg = nd->op == G_ADD ? dnnl_binary_add : nd->op == G_SUB ? dnnl_binary_sub
                        : nd->op == G_MUL ? dnnl_binary_mul : dnnl_binary_div;
    DN(dnnl_binary_desc_init(&bd, alg, md0, &md1, md0), nd, "describe the binary op");
    dnnl_primitive_desc_t pd;
    if ((rc = make_pd(&pd, &bd, new_attr(d, nd, 1), d, nd, "create the binary op", err)))
        return rc;
    int inplace = dies_here(c, sv0) && (sv1 < 0 || pl->v[sv1].buf != pl->v[sv0].buf);
    int dv = new_value(pl, &pl->v[sv0].md, inplace ? pl->v[sv0].buf : -3, err);
    int s = dv < 0 ? dv : new_step(pl, pd, 3, err);
    dnnl_primitive_desc_destroy(pd);
    if (s < 0)
        return s;
    step *st = &pl->s[s];
    step_arg(st, DNNL_ARG_SRC_0, sv0, NULL);
    step_arg(st, DNNL_ARG_SRC_1, sv1, sv1 < 0 ? d->res[node].konst : NULL);
    step_arg(st, DNNL_ARG_DST, dv, NULL);
    bind_tensor(c, nd->out, dv);
    return 0;
}

/* PRelu: oneDNN's prelu with the slope as its weights, broadcast from the
 * constant's plain layout whatever the layout of the activation. */
static int build_prelu(const ctx *c, int node, ms_err *err)
{
    const g_node *nd = &c->g->n[node];
    node_res *r = &c->d->res[node];
    int sv = value_of(c, nd->in[0], nd, err);
    if (sv < 0)
        return sv;
    int rc = binary_const(c, node, nd->in[1], c->pl->v[sv].md.ndims, err);
    if (rc)
        return rc;
    dnnl_prelu_desc_t desc;
    DN(dnnl_prelu_forward_desc_init(&desc, dnnl_forward_inference, &c->pl->v[sv].md, &r->konst_md), nd,
       "describe the PRelu");
    dnnl_primitive_desc_t pd;
    if ((rc = make_pd(&pd, &desc, new_attr(c->d, nd, 0), c->d, nd, "create the PRelu", err)))
        return rc;
    int dv = same_layout_dst(c, sv, err);
    if (dv < 0) {
        dnnl_primitive_desc_destroy(pd);
        return dv;
    }
    const int kind = DNNL_ARG_WEIGHTS;
    return finish_unary(c, nd, pd, sv, dv, 1, &kind, &r->konst, err);
}

static int build_concat(const ctx *c, int node, ms_err *err)
{
    plan *pl = c->pl;
    const g_node *nd = &c->g->n[node];
    dnnl_memory_desc_t *mds = malloc((size_t)nd->n_in * sizeof *mds);
    int *sv = malloc((size_t)nd->n_in * sizeof *sv);
    int rc = 0;
    if (!mds || !sv)
        rc = ms_err_set(err, MS_ENOMEM, "out of memory");
    for (int i = 0; i < nd->n_in && !rc; i++) {
        if ((sv[i] = value_of(c, nd->in[i], nd, err)) < 0)
            rc = sv[i];
        else
            mds[i] = pl->v[sv[i]].md;
    }
    dnnl_primitive_desc_t pd = NULL;
    dnnl_primitive_attr_t attr = rc ? NULL : new_attr(c->d, nd, 0);
    if (!rc && !attr)
        rc = ms_err_set(err, MS_ENOMEM, "out of memory");
    if (!rc) {
        dnnl_status_t st = dnnl_concat_primitive_desc_create(&pd, NULL, nd->n_in, 1, mds, attr, c->d->eng);
        if (st != dnnl_success)
            rc = dn_fail(st, nd, "create the concatenation", err);
    }
    if (attr)
        dnnl_primitive_attr_destroy(attr);
    int dv = rc ? -1 : new_value(pl, dnnl_primitive_desc_query_md(pd, dnnl_query_dst_md, 0), -3, err);
    if (!rc && dv < 0)
        rc = dv;
    int s = rc ? -1 : new_step(pl, pd, nd->n_in + 1, err);
    if (pd)
        dnnl_primitive_desc_destroy(pd);
    if (!rc && s < 0)
        rc = s;
    if (!rc) {
        for (int i = 0; i < nd->n_in; i++)
            step_arg(&pl->s[s], DNNL_ARG_MULTIPLE_SRC + i, sv[i], NULL);
        step_arg(&pl->s[s], DNNL_ARG_DST, dv, NULL);
        bind_tensor(c, nd->out, dv);
    }
    free(mds);
    free(sv);
    return rc;
}

/* Flatten and Reshape to [N, K]: a view of a plain (NCHW) buffer. */
static int build_flatten(const ctx *c, int node, ms_err *err)
{
    const g_node *nd = &c->g->n[node];
    const g_tensor *x = &c->g->t[nd->in[0]];
    int sv = value_of(c, nd->in[0], nd, err);
    if (sv < 0)
        return sv;
    int64_t dims[G_MAX_RANK];
    batch_dims(x, c->pl->n, dims);
    return flat_view(c, nd, sv, x->rank, dims, err);
}

static int build_node(const ctx *c, int node, ms_err *err)
{
    const g_node *nd = &c->g->n[node];
    switch (nd->op) {
    case G_CONV: return build_conv(c, node, err);
    case G_GEMM: return build_gemm(c, node, err);
    case G_BN: return build_bn(c, node, err);
    case G_RELU:
    case G_CLIP:
    case G_SIGMOID:
    case G_SWISH:
    case G_HARDSIGMOID:
    case G_HARDSWISH:
    case G_LEAKYRELU:
    case G_ELU:
    case G_SELU:
    case G_TANH:
    case G_SOFTPLUS:
    case G_GELU:
    case G_GELU_TANH: return build_eltwise(c, node, err);
    case G_LAYERNORM: return build_layer_norm(c, node, err);
    case G_CHANNEL: return build_channel(c, node, err);
    case G_PRELU: return build_prelu(c, node, err);
    case G_LRN: return build_lrn(c, node, err);
    case G_ADD:
    case G_SUB:
    case G_MUL:
    case G_DIV: return build_binary(c, node, err);
    case G_MAXPOOL:
    case G_AVGPOOL:
    case G_GAP:
    case G_GMP: return build_pool(c, node, err);
    case G_CONCAT: return build_concat(c, node, err);
    case G_FLATTEN:
    case G_RESHAPE:
    case G_SQUEEZE: return build_flatten(c, node, err);
    case G_IDENTITY: {
        int v = value_of(c, nd->in[0], nd, err);
        if (v < 0)
            return v;
        bind_tensor(c, nd->out, v);
        return 0;
    }
    default:
        return ms_err_set(err, MS_EINTERNAL, "node '%s': no builder", nd->name);
    }
}

/* ------------------------------------------------------- plan assembly */

static void plan_free(plan *pl)
{
    if (!pl)
        return;
    for (int i = 0; i < pl->ns; i++) {
        if (pl->s[i].prim)
            dnnl_primitive_destroy(pl->s[i].prim);
        if (pl->s[i].scratch_mem)
            dnnl_memory_destroy(pl->s[i].scratch_mem);
        free(pl->s[i].a);
        free(pl->s[i].exec);
    }
    for (int i = 0; i < pl->nv; i++)
        if (pl->v[i].mem)
            dnnl_memory_destroy(pl->v[i].mem);
    free(pl->s);
    free(pl->v);
    free(pl->b);
    free(pl->tval);
    free(pl);
}

/* Step-level lifetimes of the buffers, then offsets: largest first, each at
 * the lowest offset clear of every placed buffer alive at the same time. */
static int layout(plan *pl, ms_err *err)
{
    for (int s = 0; s < pl->ns; s++)
        for (int k = 0; k < pl->s[s].na; k++) {
            int v = pl->s[s].a[k].val;
            int b = v >= 0 ? pl->v[v].buf : -1;
            if (b < 0)
                continue;
            if (pl->b[b].first < 0 || s < pl->b[b].first)
                pl->b[b].first = s;
            if (s > pl->b[b].last)
                pl->b[b].last = s;
        }
    int *idx = malloc(((size_t)pl->nb + 1) * sizeof *idx), n = 0;
    int *placed = malloc(((size_t)pl->nb + 1) * sizeof *placed), np = 0;
    if (!idx || !placed) {
        free(idx);
        free(placed);
        return ms_err_set(err, MS_ENOMEM, "out of memory");
    }
    for (int b = 0; b < pl->nb; b++)
        if (pl->b[b].first >= 0)
            idx[n++] = b;
    /* insertion sort by size, descending (a few hundred buffers) */
    for (int i = 1; i < n; i++) {
        int x = idx[i], j = i;
        while (j > 0 && pl->b[idx[j - 1]].size < pl->b[x].size) {
            idx[j] = idx[j - 1];
            j--;
        }
        idx[j] = x;
    }
    size_t top = 0;
    for (int i = 0; i < n; i++) {
        buffer *b = &pl->b[idx[i]];
        size_t size = (b->size + ALIGN - 1) / ALIGN * ALIGN, off = 0;
        for (int again = 1; again;) {
            again = 0;
            for (int k = 0; k < np; k++) {
                const buffer *o = &pl->b[placed[k]];
                size_t osz = (o->size + ALIGN - 1) / ALIGN * ALIGN;
                int overlap_time = !(o->last < b->first || b->last < o->first);
                if (overlap_time && off < o->off + osz && o->off < off + size) {
                    off = o->off + osz;
                    again = 1;
                }
            }
        }
        b->off = off;
        placed[np++] = idx[i];
        if (off + size > top)
            top = off + size;
    }
    free(idx);
    free(placed);
    pl->act_bytes = top;
    pl->scratch_bytes = 0;
    for (int s = 0; s < pl->ns; s++)
        if (pl->s[s].scratch > pl->scratch_bytes)
            pl->scratch_bytes = pl->s[s].scratch;
    pl->total = top + (pl->scratch_bytes + ALIGN - 1) / ALIGN * ALIGN;
    return 0;
}

static int create_memories(dnn *d, plan *pl, ms_err *err)
{
    for (int i = 0; i < pl->nv; i++)
        if (pl->v[i].buf >= 0 || pl->v[i].buf == BUF_INPUT || pl->v[i].buf == BUF_OUTPUT)
            DN(dnnl_memory_create(&pl->v[i].mem, &pl->v[i].md, d->eng, DNNL_MEMORY_NONE), NULL,
               "create a memory object");
    for (int s = 0; s < pl->ns; s++) {
        step *st = &pl->s[s];
        if (st->scratch)
            DN(dnnl_memory_create(&st->scratch_mem, &st->scratch_md, d->eng, DNNL_MEMORY_NONE), NULL,
               "create a scratchpad");
        int n = 0;
        for (int k = 0; k < st->na; k++) {
            st->exec[n].arg = st->a[k].kind;
            st->exec[n++].memory = st->a[k].val >= 0 ? pl->v[st->a[k].val].mem : st->a[k].mem;
        }
        if (st->scratch_mem) {
            st->exec[n].arg = DNNL_ARG_SCRATCHPAD;
            st->exec[n++].memory = st->scratch_mem;
        }
        st->na = n; /* from here on: the count of exec arguments */
    }
    return 0;
}

/* Points every memory of the plan into the current arena. */
static int bind(dnn *d, plan *pl, ms_err *err)
{
    char *base = d->arena;
    for (int i = 0; i < pl->nv; i++)
        if (pl->v[i].buf >= 0)
            DN(dnnl_memory_set_data_handle(pl->v[i].mem, base + pl->b[pl->v[i].buf].off), NULL,
               "bind an activation");
    for (int s = 0; s < pl->ns; s++)
        if (pl->s[s].scratch_mem)
            DN(dnnl_memory_set_data_handle(pl->s[s].scratch_mem, base + pl->act_bytes), NULL,
               "bind a scratchpad");
    pl->gen = d->gen;
    return 0;
}

static int output_step(dnn *d, plan *pl, ms_err *err)
{
    const g_tensor *t = &d->g->t[pl->target];
    int64_t dims[G_MAX_RANK];
    batch_dims(t, pl->n, dims);
    dnnl_memory_desc_t md;
    int rc = md_init(&md, t->rank, dims, plain_tag(t->rank), err);
    if (rc)
        return rc;
    int from = pl->tval[pl->target];
    if ((pl->out_val = new_value(pl, &md, BUF_OUTPUT, err)) < 0)
        return pl->out_val;
    dnnl_primitive_desc_t pd;
    dnnl_primitive_attr_t attr = new_attr(d, NULL, 0);
    if (!attr)
        return ms_err_set(err, MS_ENOMEM, "out of memory");
    dnnl_status_t st = dnnl_reorder_primitive_desc_create(&pd, &pl->v[from].md, d->eng, &md, d->eng, attr);
    dnnl_primitive_attr_destroy(attr);
    if (st != dnnl_success)
        return dn_fail(st, NULL, "copy the output", err);
    int s = new_step(pl, pd, 2, err);
    dnnl_primitive_desc_destroy(pd);
    if (s < 0)
        return s;
    step_arg(&pl->s[s], DNNL_ARG_FROM, from, NULL);
    step_arg(&pl->s[s], DNNL_ARG_TO, pl->out_val, NULL);
    return 0;
}

static int plan_build(dnn *d, int target, int n, plan **out, ms_err *err)
{
    const graph *g = d->g;
    plan *pl = calloc(1, sizeof *pl);
    unsigned char *need = calloc((size_t)g->nn + 1, 1);
    int *last_pos = malloc(((size_t)g->nt + 1) * sizeof *last_pos);
    int cap = graph_max_reads(g);
    int *reads = malloc((size_t)cap * sizeof *reads);
    int rc = 0;
    if (!pl || !need || !last_pos || !reads || !(pl->tval = malloc(((size_t)g->nt + 1) * sizeof *pl->tval)))
        rc = ms_err_set(err, MS_ENOMEM, "out of memory");
    if (!rc) {
        pl->n = n;
        pl->target = target;
        graph_mark_needed(g, target, need);
        for (int t = 0; t < g->nt; t++)
            pl->tval[t] = last_pos[t] = -1;
        for (int i = 0; i < g->n_order; i++) {
            if (!need[g->order[i]])
                continue;
            int k = graph_node_reads(g, &g->n[g->order[i]], reads, cap);
            for (int j = 0; j < k; j++)
                last_pos[reads[j]] = i;
        }
        last_pos[target] = g->n_order; /* read by the output copy */
        int64_t dims[4];
        batch_dims(&g->t[g->input], n, dims);
        dnnl_memory_desc_t in_md;
        rc = md_init(&in_md, 4, dims, dnnl_abcd, err);
        if (!rc && (pl->in_val = new_value(pl, &in_md, BUF_INPUT, err)) < 0)
            rc = pl->in_val;
        if (!rc)
            pl->tval[g->input] = pl->in_val;
    }
    ctx c = {d, pl, g, last_pos, 0};
    for (int i = 0; i < g->n_order && !rc; i++) {
        if (!need[g->order[i]])
            continue;
        c.pos = i;
        rc = build_node(&c, g->order[i], err);
    }
    if (!rc && pl->tval[target] < 0)
        rc = ms_err_set(err, MS_EINTERNAL, "tensor '%s' was not computed", g->t[target].name);
    if (!rc)
        rc = output_step(d, pl, err);
    if (!rc)
        rc = layout(pl, err);
    if (!rc && pl->total > (d->opt.max_arena ? d->opt.max_arena : ((size_t)8 << 30)))
        rc = ms_err_set(err, MS_ENOMEM, "batch %d needs %.1f GiB of activations, over the %.1f GiB limit", n,
                        (double)pl->total / (1 << 30),
                        (double)(d->opt.max_arena ? d->opt.max_arena : ((size_t)8 << 30)) / (1 << 30));
    if (!rc)
        rc = create_memories(d, pl, err);
    free(need);
    free(last_pos);
    free(reads);
    if (rc) {
        plan_free(pl);
        return rc;
    }
    *out = pl;
    return 0;
}

static int find_plan(dnn *d, int target, int n, plan **out, ms_err *err)
{
    for (int i = 0; i < d->n_plans; i++)
        if (d->plans[i]->n == n && d->plans[i]->target == target) {
            *out = d->plans[i];
            (*out)->used = ++d->clock;
            return 0;
        }
    plan *pl;
    int rc = plan_build(d, target, n, &pl, err);
    if (rc)
        return rc;
    if (d->n_plans == MAX_PLANS) {
        int lru = 0;
        for (int i = 1; i < d->n_plans; i++)
            if (d->plans[i]->used < d->plans[lru]->used)
                lru = i;
        plan_free(d->plans[lru]);
        d->plans[lru] = d->plans[--d->n_plans];
    }
    pl->used = ++d->clock;
    d->plans[d->n_plans++] = pl;
    *out = pl;
    return 0;
}

/* Grows the shared arena; every plan rebinds on its next run. The new
 * memory is written once here so that forwards never fault it in. */
static int ensure_arena(dnn *d, size_t bytes, ms_err *err)
{
    if (bytes <= d->arena_size && d->arena)
        return 0;
    void *p = NULL;
    if (posix_memalign(&p, 4096, bytes ? bytes : ALIGN))
        return ms_err_set(err, MS_ENOMEM, "cannot allocate %.1f MiB of activations", (double)bytes / (1 << 20));
    memset(p, 0, bytes);
    free(d->arena);
    d->arena = p;
    d->arena_size = bytes;
    d->gen++;
    return 0;
}

/* ------------------------------------------------------------- public */

int dnn_create(graph *g, const dnn_options *o, dnn **out, ms_err *err)
{
    dnn *d = calloc(1, sizeof *d);
    if (!d || !(d->res = calloc((size_t)g->nn + 1, sizeof *d->res))) {
        free(d);
        return ms_err_set(err, MS_ENOMEM, "out of memory");
    }
    d->g = g;
    if (o)
        d->opt = *o;
    dnnl_status_t st = dnnl_engine_create(&d->eng, dnnl_cpu, 0);
    if (st == dnnl_success)
        st = dnnl_stream_create(&d->stream, d->eng, dnnl_stream_default_flags);
    if (st != dnnl_success) {
        dnn_free(d);
        return dn_fail(st, NULL, "start a CPU engine", err);
    }
    *out = d;
    return 0;
}

void dnn_free(dnn *d)
{
    if (!d)
        return;
    for (int i = 0; i < d->n_plans; i++)
        plan_free(d->plans[i]);
    if (d->res)
        for (int i = 0; i < d->g->nn; i++) {
            node_res *r = &d->res[i];
            for (int k = 0; k < r->nw; k++)
                dnnl_memory_destroy(r->w[k].mem);
            if (r->bias)
                dnnl_memory_destroy(r->bias);
            for (int k = 0; k < 4; k++)
                if (r->bn[k])
                    dnnl_memory_destroy(r->bn[k]);
            if (r->konst)
                dnnl_memory_destroy(r->konst);
        }
    free(d->res);
    if (d->stream)
        dnnl_stream_destroy(d->stream);
    if (d->eng)
        dnnl_engine_destroy(d->eng);
    free(d->arena);
    free(d);
}

int dnn_prepare(dnn *d, int target, int n, ms_err *err)
{
    plan *pl;
    return find_plan(d, target, n, &pl, err);
}

int dnn_run(dnn *d, int target, int n, const float *in, float *out, ms_err *err)
{
    plan *pl;
    int rc = find_plan(d, target, n, &pl, err);
    if (rc)
        return rc;
    if ((rc = ensure_arena(d, pl->total, err)))
        return rc;
    if (pl->gen != d->gen && (rc = bind(d, pl, err)))
        return rc;
    /* the caller's buffers are plain: rebinding them costs nothing */
    for (int i = 0; i < pl->nv; i++)
        if (pl->v[i].buf == BUF_INPUT)
            DN(dnnl_memory_set_data_handle(pl->v[i].mem, (void *)(uintptr_t)in), NULL, "bind the input");
    DN(dnnl_memory_set_data_handle(pl->v[pl->out_val].mem, out), NULL, "bind the output");
    for (int s = 0; s < pl->ns; s++) {
        dnnl_status_t st = dnnl_primitive_execute(pl->s[s].prim, d->stream, pl->s[s].na, pl->s[s].exec);
        if (st != dnnl_success)
            return dn_fail(st, NULL, "run a primitive", err);
    }
    DN(dnnl_stream_wait(d->stream), NULL, "finish the forward");
    return 0;
}

void dnn_release_host_weights(dnn *d)
{
    graph *g = d->g;
    for (int i = 0; i < g->n_order; i++) {
        int node = g->order[i];
        const g_node *nd = &g->n[node];
        /* only weights oneDNN holds already and no other node reads */
        if ((nd->op == G_CONV || nd->op == G_GEMM) && d->res[node].nw && g->t[nd->weights].consumers <= 1)
            graph_release_constant(g, nd->weights);
    }
}

size_t dnn_arena_bytes(const dnn *d)
{
    size_t most = d->arena_size;
    for (int i = 0; i < d->n_plans; i++)
        if (d->plans[i]->total > most)
            most = d->plans[i]->total;
    return most;
}

size_t dnn_weight_bytes(const dnn *d)
{
    return d->weight_bytes;
}

const char *dnn_conv_impl(const dnn *d)
{
    return d->conv_impl[0] ? d->conv_impl : "none";
}

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

int dnn_measure_peak(double seconds, double *gflops, ms_err *err)
{
    const int64_t m = 1024;
    dnnl_engine_t eng = NULL;
    dnnl_stream_t stream = NULL;
    dnnl_primitive_desc_t pd = NULL;
    dnnl_primitive_t prim = NULL;
    dnnl_memory_t mem[3] = {NULL, NULL, NULL};
    dnnl_memory_desc_t md;
    dnnl_dims_t dims = {m, m};
    dnnl_matmul_desc_t mmd;
    dnnl_status_t st = dnnl_engine_create(&eng, dnnl_cpu, 0);
    if (st == dnnl_success)
        st = dnnl_stream_create(&stream, eng, dnnl_stream_default_flags);
    if (st == dnnl_success)
        st = dnnl_memory_desc_init_by_tag(&md, 2, dims, dnnl_f32, dnnl_ab);
    if (st == dnnl_success)
        st = dnnl_matmul_desc_init(&mmd, &md, &md, NULL, &md);
    if (st == dnnl_success)
        st = dnnl_primitive_desc_create(&pd, &mmd, NULL, eng, NULL);
    if (st == dnnl_success)
        st = dnnl_primitive_create(&prim, pd);
    for (int i = 0; i < 3 && st == dnnl_success; i++) {
        st = dnnl_memory_create(&mem[i], &md, eng, DNNL_MEMORY_ALLOCATE);
        void *p = NULL;
        if (st == dnnl_success && dnnl_memory_get_data_handle(mem[i], &p) == dnnl_success && p)
            memset(p, 0, (size_t)(m * m) * sizeof(float));
    }
    double t = 0;
    long iters = 0;
    if (st == dnnl_success) {
        dnnl_exec_arg_t args[3] = {{DNNL_ARG_SRC, mem[0]}, {DNNL_ARG_WEIGHTS, mem[1]}, {DNNL_ARG_DST, mem[2]}};
        for (int i = 0; i < 3 && st == dnnl_success; i++)
            st = dnnl_primitive_execute(prim, stream, 3, args);
        dnnl_stream_wait(stream);
        double t0 = now_s();
        while (st == dnnl_success && (t = now_s() - t0) < seconds) {
            st = dnnl_primitive_execute(prim, stream, 3, args);
            dnnl_stream_wait(stream);
            iters++;
        }
    }
    for (int i = 0; i < 3; i++)
        if (mem[i])
            dnnl_memory_destroy(mem[i]);
    if (prim)
        dnnl_primitive_destroy(prim);
    if (pd)
        dnnl_primitive_desc_destroy(pd);
    if (stream)
        dnnl_stream_destroy(stream);
    if (eng)
        dnnl_engine_destroy(eng);
    if (st != dnnl_success)
        return dn_fail(st, NULL, "run the peak matmul", err);
    *gflops = iters && t > 0 ? 2.0 * (double)(m * m * m) * (double)iters / t / 1e9 : 0;
    return 0;
}

const char *dnn_version(void)
{
    static char buf[96];
    const dnnl_version_t *v = dnnl_version();
    const char *isa;
    switch (dnnl_get_effective_cpu_isa()) {
    case dnnl_cpu_isa_avx512_core_amx: isa = "avx512_core_amx"; break;
    case dnnl_cpu_isa_avx512_core_bf16: isa = "avx512_core_bf16"; break;
    case dnnl_cpu_isa_avx512_core_vnni: isa = "avx512_core_vnni"; break;
    case dnnl_cpu_isa_avx512_core: isa = "avx512_core"; break;
    case dnnl_cpu_isa_avx2_vnni: isa = "avx2_vnni"; break;
    case dnnl_cpu_isa_avx2: isa = "avx2"; break;
    case dnnl_cpu_isa_avx: isa = "avx"; break;
    case dnnl_cpu_isa_sse41: isa = "sse41"; break;
    default: isa = "other"; break;
    }
    snprintf(buf, sizeof buf, "oneDNN %d.%d.%d, %s", v->major, v->minor, v->patch, isa);
    return buf;
}
