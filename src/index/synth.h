/*
 * synth.h - seeded synthetic vectors for the index's tests and benchmark.
 *
 * Clustered data as issue 3 specifies, because plain Gaussian clusters in
 * 2048 dimensions put every neighbour at the same distance and make recall
 * meaningless: n_centres Gaussian centres in a 64-d latent space, each point
 * a centre plus latent spread, mapped linearly to dim by one fixed random
 * matrix, plus isotropic noise of 10% of the point's norm, L2-normalised.
 * The same seed gives the same vectors on one machine (the projection uses
 * the run-time SIMD kernels, so other CPUs may differ in the last bits).
 */
#ifndef MS_INDEX_SYNTH_H
#define MS_INDEX_SYNTH_H

#include <stddef.h>
#include <stdint.h>

#include "util/err.h"

typedef struct ix_rng {
    uint64_t state;
} ix_rng;

void ix_rng_seed(ix_rng *r, uint64_t seed);
uint64_t ix_rng_next(ix_rng *r);
double ix_rng_uniform(ix_rng *r);      /* [0, 1) */
double ix_rng_gauss(ix_rng *r);        /* N(0, 1) */

typedef struct ix_synth ix_synth;

/* A generator of clustered points (see above). latent_spread is the
 * within-cluster standard deviation in latent units (centres are N(0,1));
 * 0 picks 1.0. Returns 0, MS_EINVAL or MS_ENOMEM. */
int ix_synth_open(int dim, int n_centres, double latent_spread, uint64_t seed, ix_synth **out, ms_err *err);
/* Writes n points (n x dim floats) drawn from stream `stream` (data and
 * queries use different streams so queries are fresh points). Successive
 * calls continue the stream. */
void ix_synth_points(ix_synth *s, int stream, size_t n, float *out);
void ix_synth_close(ix_synth *s);

/* n x dim independent Gaussian vectors, L2-normalised. */
void ix_synth_random(ix_rng *r, int dim, size_t n, float *out);

#endif
