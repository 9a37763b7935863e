/*
 * pooling.h - the pooled feature options of model.h computed from a plain
 * N x C x H x W map (internal to the model module).
 */
#ifndef MS_MODEL_POOLING_H
#define MS_MODEL_POOLING_H

#include "model/model.h"

/* Writes n x c values to out from map (n x c x hw floats, NCHW).
 * MODEL_POOL_GEM uses p (> 0); MODEL_POOL_TOPLEFT copies the first c values
 * of each image's flattened map, the prototype's bug kept as a baseline. */
void pool_map(const float *map, int n, int c, int hw, model_pool pool, float p, float *out);

#endif
