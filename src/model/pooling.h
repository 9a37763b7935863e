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

/* One image's pooled feature as a sum over the map's cells: writes
 * shares (c x hw) with, for every channel, the shares of its hw cells
 * summing to what pool_map gives that channel (to float rounding):
 * average x/hw each; GeM f * y^p / sum(y^p) (y = x floored as GeM floors
 * it: GeM is the average of y^p, so each cell's part of it); max the whole
 * value to the first cell holding it; top-left each value to the cell it
 * was taken from. */
void pool_map_shares(const float *map, int c, int hw, model_pool pool, float p, float *shares);

#endif
