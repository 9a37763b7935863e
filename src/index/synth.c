/*
 * synth.c - seeded synthetic vectors (see synth.h).
 */
#include "index/synth.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "index/simd.h"

#define LATENT 64
#define NOISE_SHARE 0.10
#define POINT_BLOCK 256

void ix_rng_seed(ix_rng *r, uint64_t seed)
{
    r->state = seed ^ 0x6A09E667F3BCC909ull;
}

/* splitmix64: one add and a bijective mix per number */
uint64_t ix_rng_next(ix_rng *r)
{
    uint64_t z = (r->state += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

double ix_rng_uniform(ix_rng *r)
{
    return (double)(ix_rng_next(r) >> 11) * (1.0 / 9007199254740992.0);
}

double ix_rng_gauss(ix_rng *r)
{
    /* Box-Muller; one of the pair is dropped to keep the stream simple. */
    double u = ix_rng_uniform(r), v = ix_rng_uniform(r);
    return sqrt(-2.0 * log(1.0 - u)) * cos(6.283185307179586 * v);
}

static void normalise(float *v, int dim)
{
    double ss = 0;
    for (int j = 0; j < dim; j++)
        ss += (double)v[j] * v[j];
    float inv = ss > 0 ? (float)(1.0 / sqrt(ss)) : 0.0f;
    for (int j = 0; j < dim; j++)
        v[j] *= inv;
}

void ix_synth_random(ix_rng *r, int dim, size_t n, float *out)
{
    for (size_t i = 0; i < n; i++) {
        float *v = out + i * (size_t)dim;
        for (int j = 0; j < dim; j++)
            v[j] = (float)ix_rng_gauss(r);
        normalise(v, dim);
    }
}

struct ix_synth {
    int dim, n_centres;
    double spread;
    float *centres;     /* n_centres x LATENT */
    float *proj_t;      /* dim x LATENT: row j maps the latent point to component j */
    ix_rng streams[2];
    float latent[POINT_BLOCK * LATENT];
};

int ix_synth_open(int dim, int n_centres, double latent_spread, uint64_t seed, ix_synth **out, ms_err *err)
{
    *out = NULL;
    if (dim < 1 || dim > 65536 || n_centres < 1)
        return ms_err_set(err, MS_EINVAL, "synth: need dim 1..65536 and at least one centre");
    ix_synth *s = calloc(1, sizeof *s);
    if (!s)
        return ms_err_set(err, MS_ENOMEM, "synth: out of memory");
    s->dim = dim;
    s->n_centres = n_centres;
    s->spread = latent_spread > 0 ? latent_spread : 1.0;
    s->centres = malloc((size_t)n_centres * LATENT * sizeof(float));
    s->proj_t = malloc((size_t)dim * LATENT * sizeof(float));
    if (!s->centres || !s->proj_t) {
        ix_synth_close(s);
        return ms_err_set(err, MS_ENOMEM, "synth: out of memory");
    }
    ix_rng r;
    ix_rng_seed(&r, seed);
    for (size_t i = 0; i < (size_t)n_centres * LATENT; i++)
        s->centres[i] = (float)ix_rng_gauss(&r);
    for (size_t i = 0; i < (size_t)dim * LATENT; i++)
        s->proj_t[i] = (float)(ix_rng_gauss(&r) / sqrt((double)LATENT));
    ix_rng_seed(&s->streams[0], seed * 31 + 1);
    ix_rng_seed(&s->streams[1], seed * 31 + 2);
    *out = s;
    return 0;
}

void ix_synth_points(ix_synth *s, int stream, size_t n, float *out)
{
    ix_rng *r = &s->streams[stream ? 1 : 0];
    size_t d = (size_t)s->dim;
    for (size_t done = 0; done < n; done += POINT_BLOCK) {
        size_t m = n - done < POINT_BLOCK ? n - done : POINT_BLOCK;
        for (size_t i = 0; i < m; i++) {
            const float *c = s->centres + (ix_rng_next(r) % (uint64_t)s->n_centres) * LATENT;
            for (int j = 0; j < LATENT; j++)
                s->latent[i * LATENT + j] = c[j] + (float)(s->spread * ix_rng_gauss(r));
        }
        /* the linear map is a small matrix product: use the index's kernel */
        float *dst = out + done * d;
        ix_kern()->dot_block(s->latent, (int)m, s->proj_t, d, LATENT, dst, d);
        for (size_t i = 0; i < m; i++) {
            float *v = dst + i * d;
            double ss = 0;
            for (size_t j = 0; j < d; j++)
                ss += (double)v[j] * v[j];
            double sigma = NOISE_SHARE * sqrt(ss / (double)d);
            for (size_t j = 0; j < d; j++)
                v[j] += (float)(sigma * ix_rng_gauss(r));
            normalise(v, s->dim);
        }
    }
}

void ix_synth_close(ix_synth *s)
{
    if (!s)
        return;
    free(s->centres);
    free(s->proj_t);
    free(s);
}
