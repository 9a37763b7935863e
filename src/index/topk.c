/*
 * topk.c - a bounded heap of the k best hits seen so far.
 *
 * The root is the worst kept hit, so deciding whether a new score matters
 * is one comparison; most scores of a scan fail it and cost nothing more.
 * "Better" is a higher score, or an equal score with a smaller id, which
 * makes every answer deterministic when vectors tie (duplicates).
 */
#include <stdlib.h>

#include "index/internal.h"

/* worse(a, b): a should sit nearer the root than b. */
static inline bool worse(const index_hit *a, const index_hit *b)
{
    return ix_better(b->score, b->id, a->score, a->id);
}

static void sift_down(index_hit *h, int n, int i)
{
    for (;;) {
        int l = 2 * i + 1, r = l + 1, w = i;
        if (l < n && worse(&h[l], &h[w]))
            w = l;
        if (r < n && worse(&h[r], &h[w]))
            w = r;
        if (w == i)
            return;
        index_hit t = h[i];
        h[i] = h[w];
        h[w] = t;
        i = w;
    }
}

void ix_heap_push(ix_hitheap *hp, float score, int64_t id)
{
    index_hit hit = {id, score};
    if (hp->n < hp->k) {
        int i = hp->n++;
        hp->h[i] = hit;
        while (i > 0) {
            int parent = (i - 1) / 2;
            if (!worse(&hp->h[i], &hp->h[parent]))
                break;
            index_hit t = hp->h[i];
            hp->h[i] = hp->h[parent];
            hp->h[parent] = t;
            i = parent;
        }
        return;
    }
    if (!ix_better(score, id, hp->h[0].score, hp->h[0].id))
        return;
    hp->h[0] = hit;
    sift_down(hp->h, hp->n, 0);
}

static int cmp_best_first(const void *a, const void *b)
{
    const index_hit *x = a, *y = b;
    if (ix_better(x->score, x->id, y->score, y->id))
        return -1;
    if (ix_better(y->score, y->id, x->score, x->id))
        return 1;
    return 0;
}

int ix_heap_sort(ix_hitheap *hp)
{
    qsort(hp->h, (size_t)hp->n, sizeof *hp->h, cmp_best_first);
    return hp->n;
}
