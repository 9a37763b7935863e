/*
 * persist.c - index files: save (temporary file, fsync, rename) and load
 * (one mmap, validated, no re-insertion).
 *
 * File layout (little-endian host order, checked by a byte-order mark):
 *
 *   header (HEADER_BYTES): magic "MSVINDEX", version, byte-order mark,
 *     dimension, metric, kinds, quantisation, M, efConstruction, efSearch,
 *     chunk shift, graph flag, slot count, live count, auto threshold,
 *     entry point, generation, payload size and CRC32C, model identity,
 *     and a CRC32C of the header itself in its last 4 bytes.
 *   payload, each section starting at a multiple of 64 bytes:
 *     ids        n x int64
 *     dead       n x uint8 (1 = tombstone)
 *     vectors    n x dim x float32
 *     codes      n x code bytes           (int8, float16 or int4 copy, if any)
 *     qparams    n x 2 x float32          (int8 and int4 only)
 *     levels     n x uint8                (graph only; 255 = not in graph)
 *     links0     n x (1 + 2M) x uint32    (graph only)
 *     upper      level x (1 + M) x uint32 for each node above level 0, in
 *                slot order               (graph only)
 *
 * Every section's size follows from the header, so a file of the wrong
 * size is rejected before anything is read; the payload CRC catches
 * flipped bytes; and the structure is validated (links in range, counts
 * within capacity, unique ids, every number finite) so that even a file
 * with a correct checksum cannot make a search read out of bounds or feed
 * NaN to the kernels (tests/fuzz/fuzz_index.c forges such files).
 *
 * Loading maps the file privately (MAP_POPULATE) and points the index's
 * full chunks into it; later inserts copy-on-write the pages they touch.
 */
#include <errno.h>
#include <fcntl.h>
#include <immintrin.h>
#include <limits.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "index/internal.h"

#define MAGIC "MSVINDEX"
#define FORMAT_VERSION 1u
#define BYTE_ORDER_MARK 0x01020304u
#define METRIC_INNER_PRODUCT 1u
#define HEADER_BYTES 512
#define MODEL_ID_MAX 255
#define SECTION_ALIGN 64

typedef struct file_header {
    char magic[8];
    uint32_t version, header_bytes, byte_order, dim;
    uint32_t metric, kind_param, kind_now, quant;
    uint32_t M, ef_construction, ef_search, chunk_shift;
    uint32_t graph, model_id_len, payload_crc, reserved;
    uint64_t n_slots, n_live, auto_threshold, entry;
    uint64_t generation, payload_bytes;
    char model_id[MODEL_ID_MAX + 1];
} file_header;
_Static_assert(sizeof(file_header) + 4 <= HEADER_BYTES, "header fits");

/* ------------------------------------------------------------------ */
/* CRC32C (Castagnoli), hardware instruction when present              */
/* ------------------------------------------------------------------ */

static uint32_t crc_table[256];
static pthread_once_t crc_once = PTHREAD_ONCE_INIT;
static bool crc_hw;

static void crc_init(void)
{
    for (uint32_t i = 0; i < 256; i++) {
        uint32_t c = i;
        for (int b = 0; b < 8; b++)
            c = c & 1 ? (c >> 1) ^ 0x82F63B78u : c >> 1;
        crc_table[i] = c;
    }
    __builtin_cpu_init();
    crc_hw = __builtin_cpu_supports("sse4.2");
}

__attribute__((target("sse4.2"))) static uint32_t crc_hw_run(uint32_t c, const uint8_t *p, size_t len)
{
    uint64_t c64 = c;
    for (; len && ((uintptr_t)p & 7); len--)
        c64 = _mm_crc32_u8((uint32_t)c64, *p++);
    for (; len >= 8; len -= 8, p += 8) {
        uint64_t w;
        memcpy(&w, p, 8);
        c64 = _mm_crc32_u64(c64, w);
    }
    for (; len; len--)
        c64 = _mm_crc32_u8((uint32_t)c64, *p++);
    return (uint32_t)c64;
}

uint32_t ix_crc32c(uint32_t crc, const void *buf, size_t len)
{
    pthread_once(&crc_once, crc_init);
    const uint8_t *p = buf;
    uint32_t c = ~crc;
    if (crc_hw)
        c = crc_hw_run(c, p, len);
    else
        for (size_t i = 0; i < len; i++)
            c = crc_table[(c ^ p[i]) & 0xFF] ^ (c >> 8);
    return ~c;
}

/* ------------------------------------------------------------------ */
/* layout                                                               */
/* ------------------------------------------------------------------ */

typedef struct layout {
    uint64_t ids, dead, vec, codes, qparams, level, links0, upper, end; /* payload offsets */
    uint64_t code_bytes;
} layout;

static bool add_ovf(uint64_t *acc, uint64_t a, uint64_t b)
{
    uint64_t prod;
    if (__builtin_mul_overflow(a, b, &prod) || __builtin_add_overflow(*acc, prod, acc))
        return true;
    uint64_t pad = (SECTION_ALIGN - *acc % SECTION_ALIGN) % SECTION_ALIGN;
    return __builtin_add_overflow(*acc, pad, acc);
}

/* Offsets of every section but the end of upper (which depends on levels). */
static bool make_layout(uint64_t n, uint64_t dim, uint32_t quant, bool graph, uint64_t M, layout *L)
{
    memset(L, 0, sizeof *L);
    L->code_bytes = ix_code_bytes((index_quant)quant, dim);
    uint64_t at = 0;
    L->ids = at;
    if (add_ovf(&at, n, 8))
        return false;
    L->dead = at;
    if (add_ovf(&at, n, 1))
        return false;
    L->vec = at;
    if (add_ovf(&at, n, dim * 4))
        return false;
    L->codes = at;
    if (add_ovf(&at, n, L->code_bytes))
        return false;
    L->qparams = at;
    if (add_ovf(&at, n, ix_has_qparams((index_quant)quant) ? 8 : 0))
        return false;
    L->level = at;
    if (add_ovf(&at, n, graph ? 1 : 0))
        return false;
    L->links0 = at;
    if (add_ovf(&at, n, graph ? (1 + 2 * M) * 4 : 0))
        return false;
    L->upper = at;
    L->end = at;
    return true;
}

/* ------------------------------------------------------------------ */
/* save                                                                 */
/* ------------------------------------------------------------------ */

typedef struct writer {
    int fd;
    uint32_t crc;
    uint64_t written;
    int err;           /* errno of the first failure */
    uint8_t buf[1 << 16];
    size_t len;
} writer;

static void w_flush(writer *w)
{
    size_t off = 0;
    while (off < w->len && !w->err) {
        ssize_t r = write(w->fd, w->buf + off, w->len - off);
        if (r < 0 && errno == EINTR)
            continue;
        if (r <= 0)
            w->err = r < 0 ? errno : EIO;
        else
            off += (size_t)r;
    }
    w->len = 0;
}

static void w_put(writer *w, const void *p, size_t n)
{
    w->crc = ix_crc32c(w->crc, p, n);
    w->written += n;
    const uint8_t *b = p;
    while (n && !w->err) {
        size_t room = sizeof w->buf - w->len, m = n < room ? n : room;
        memcpy(w->buf + w->len, b, m);
        w->len += m;
        b += m;
        n -= m;
        if (w->len == sizeof w->buf)
            w_flush(w);
    }
}

static void w_pad(writer *w)
{
    static const uint8_t zero[SECTION_ALIGN];
    size_t pad = (SECTION_ALIGN - w->written % SECTION_ALIGN) % SECTION_ALIGN;
    w_put(w, zero, pad);
}

/* Writes one per-slot array (elem bytes per slot) chunk by chunk. */
static void w_section(writer *w, const vindex *ix, size_t n, size_t elem, size_t member)
{
    for (size_t base = 0; base < n; base += ix->S) {
        const ix_chunk *c = ix_chunk_of(ix, base);
        size_t m = n - base < ix->S ? n - base : ix->S;
        const void *arr = *(void *const *)((const char *)c + member);
        w_put(w, arr, m * elem);
    }
    w_pad(w);
}

static void fill_header(const vindex *ix, const char *model_identity, uint64_t generation, file_header *h)
{
    memset(h, 0, sizeof *h);
    memcpy(h->magic, MAGIC, 8);
    h->version = FORMAT_VERSION;
    h->header_bytes = HEADER_BYTES;
    h->byte_order = BYTE_ORDER_MARK;
    h->dim = (uint32_t)ix->dim;
    h->metric = METRIC_INNER_PRODUCT;
    h->kind_param = (uint32_t)ix->p.kind;
    h->kind_now = (uint32_t)atomic_load_explicit((_Atomic int *)&ix->kind, memory_order_acquire);
    h->quant = (uint32_t)ix->q.kind;
    h->M = (uint32_t)ix->M;
    h->ef_construction = (uint32_t)ix->p.ef_construction;
    h->ef_search = (uint32_t)ix->p.ef_search;
    h->chunk_shift = ix->shift;
    h->graph = ix->graph_arrays;
    h->n_slots = ix_published(ix);
    h->n_live = index_count(ix);
    h->auto_threshold = ix->p.auto_threshold;
    h->entry = atomic_load_explicit((_Atomic uint64_t *)&ix->entry, memory_order_acquire);
    h->generation = generation;
    h->model_id_len = (uint32_t)strlen(model_identity);
    memcpy(h->model_id, model_identity, h->model_id_len);
}

static int write_file(const vindex *ix, int fd, const char *model_identity, uint64_t generation)
{
    writer *w = calloc(1, sizeof *w);
    if (!w)
        return ENOMEM;
    w->fd = fd;
    uint8_t header[HEADER_BYTES] = {0};
    w_put(w, header, HEADER_BYTES); /* placeholder, rewritten at the end */
    w->crc = 0;
    w->written = 0;
    size_t n = ix_published(ix), d = (size_t)ix->dim;
    w_section(w, ix, n, sizeof(int64_t), offsetof(ix_chunk, ids));
    w_section(w, ix, n, 1, offsetof(ix_chunk, dead));
    w_section(w, ix, n, d * sizeof(float), offsetof(ix_chunk, vec));
    if (ix->q.kind != INDEX_QUANT_NONE)
        w_section(w, ix, n, ix->q.code_bytes, offsetof(ix_chunk, codes));
    if (ix_has_qparams(ix->q.kind))
        w_section(w, ix, n, 2 * sizeof(float), offsetof(ix_chunk, qparams));
    if (ix->graph_arrays) {
        w_section(w, ix, n, 1, offsetof(ix_chunk, level));
        w_section(w, ix, n, ix_links0_stride(ix) * sizeof(uint32_t), offsetof(ix_chunk, links0));
        for (size_t s = 0; s < n; s++) {
            const ix_chunk *c = ix_chunk_of(ix, s);
            size_t i = s & (ix->S - 1);
            unsigned lv = c->level[i];
            if (lv != IX_NOT_IN_GRAPH && lv > 0)
                w_put(w, c->upper[i], lv * ix_upper_stride(ix) * sizeof(uint32_t));
        }
    }
    w_flush(w);
    file_header h;
    fill_header(ix, model_identity, generation, &h);
    h.payload_bytes = w->written;
    h.payload_crc = w->crc;
    memcpy(header, &h, sizeof h);
    uint32_t hcrc = ix_crc32c(0, header, HEADER_BYTES - 4);
    memcpy(header + HEADER_BYTES - 4, &hcrc, 4);
    int e = w->err;
    free(w);
    if (e)
        return e;
    if (pwrite(fd, header, HEADER_BYTES, 0) != HEADER_BYTES)
        return errno ? errno : EIO;
    if (fsync(fd))
        return errno;
    return 0;
}

static void fsync_parent(const char *path)
{
    char dir[PATH_MAX];
    const char *slash = strrchr(path, '/');
    if (!slash)
        strcpy(dir, ".");
    else if (slash == path)
        strcpy(dir, "/");
    else
        snprintf(dir, sizeof dir, "%.*s", (int)(slash - path), path);
    int fd = open(dir, O_RDONLY | O_DIRECTORY);
    if (fd >= 0) {
        fsync(fd); /* best effort: the rename is what matters */
        close(fd);
    }
}

int index_save(const vindex *ix, const char *path, const char *model_identity, uint64_t generation, ms_err *err)
{
    if (!ix || !path)
        return ms_err_set(err, MS_EINVAL, "index_save: NULL argument");
    if (!model_identity)
        model_identity = "";
    if (strlen(model_identity) > MODEL_ID_MAX)
        return ms_err_set(err, MS_EINVAL, "index_save: model identity longer than %d bytes", MODEL_ID_MAX);
    char tmp[PATH_MAX];
    if (snprintf(tmp, sizeof tmp, "%s.tmp", path) >= (int)sizeof tmp)
        return ms_err_set(err, MS_EINVAL, "index_save: path too long");
    int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd < 0)
        return ms_err_set(err, MS_EIO, "%s: cannot create: %s", tmp, strerror(errno));
    int e = write_file(ix, fd, model_identity, generation);
    if (close(fd) && !e)
        e = errno;
    if (!e && rename(tmp, path))
        e = errno;
    if (e) {
        unlink(tmp);
        return ms_err_set(err, e == ENOMEM ? MS_ENOMEM : MS_EIO, "%s: cannot write the index: %s", path,
                          strerror(e));
    }
    fsync_parent(path);
    return 0;
}

/* ------------------------------------------------------------------ */
/* load                                                                 */
/* ------------------------------------------------------------------ */

/* Are n floats (4-aligned) all finite? An all-ones exponent carries into
 * the sign bit; no other does. It runs over every vector of the file at
 * load time, so the blocks have a fixed length: -O2 vectorises the loop
 * only when its trip count is known. */
static bool floats_finite(const uint8_t *p, size_t n)
{
    enum { BLOCK = 1024 };
    const uint32_t *w = (const uint32_t *)(const void *)p;
    uint32_t bad = 0;
    size_t i = 0;
    for (; i + BLOCK <= n; i += BLOCK)
        for (size_t j = 0; j < BLOCK; j++)
            bad |= (w[i + j] & 0x7F800000u) + 0x00800000u;
    for (; i < n; i++)
        bad |= (w[i] & 0x7F800000u) + 0x00800000u;
    return !(bad & 0x80000000u);
}

/* Is any of n float16 halves (2-aligned) a NaN (all-ones exponent, a
 * mantissa)? Exactly those carry into bit 15 here; fixed-length blocks for
 * the same reason as above. */
static bool halves_have_nan(const uint8_t *p, size_t n)
{
    enum { BLOCK = 2048 };
    const uint16_t *h = (const uint16_t *)(const void *)p;
    uint32_t bad = 0;
    size_t i = 0;
    for (; i + BLOCK <= n; i += BLOCK)
        for (size_t j = 0; j < BLOCK; j++)
            bad |= ((h[i + j] & 0x7FFFu) + 0x03FFu) & 0x8000u;
    for (; i < n; i++)
        bad |= ((h[i] & 0x7FFFu) + 0x03FFu) & 0x8000u;
    return bad != 0;
}

/* The payload's CRC32C, and whether its vector section is all finite, in
 * one pass: each block is checked for both while it is in cache. On a
 * 512 MB file (100,000 x 1,280) the check adds 0.014 s to a 0.077 s load
 * this way, 0.018 s as a second pass (medians, quiet machine). */
static uint32_t payload_crc_and_finite(const uint8_t *p, uint64_t bytes, const layout *L, uint64_t vec_bytes,
                                       bool *finite)
{
    enum { BLOCK = 1 << 16 }; /* a multiple of 64: vector boundaries stay 4-aligned */
    uint32_t crc = 0;
    *finite = true;
    for (uint64_t off = 0; off < bytes; off += BLOCK) {
        uint64_t len = bytes - off < BLOCK ? bytes - off : BLOCK;
        crc = ix_crc32c(crc, p + off, len);
        uint64_t lo = off > L->vec ? off : L->vec, hi = off + len < L->vec + vec_bytes ? off + len : L->vec + vec_bytes;
        if (lo < hi && !floats_finite(p + lo, (hi - lo) / 4))
            *finite = false;
    }
    return crc;
}

/* Also tells whether the vectors are all finite (check_numbers' first step,
 * done here in the checksum's pass). */
static int check_header(const uint8_t *base, size_t size, const char *path, int dim, const char *model_identity,
                        file_header *h, layout *L, bool *vectors_finite, ms_err *err)
{
    if (size < HEADER_BYTES)
        return ms_err_set(err, MS_EFORMAT, "%s: truncated index file (%zu bytes, header alone is %d)", path,
                          size, HEADER_BYTES);
    memcpy(h, base, sizeof *h);
    if (memcmp(h->magic, MAGIC, 8))
        return ms_err_set(err, MS_EFORMAT, "%s: not a MedSearch index file (bad magic)", path);
    if (h->byte_order != BYTE_ORDER_MARK)
        return ms_err_set(err, MS_EFORMAT, "%s: index file written with another byte order", path);
    if (h->version != FORMAT_VERSION)
        return ms_err_set(err, MS_EFORMAT, "%s: index format version %u, this build reads %u", path, h->version,
                          FORMAT_VERSION);
    uint32_t hcrc;
    memcpy(&hcrc, base + HEADER_BYTES - 4, 4);
    if (hcrc != ix_crc32c(0, base, HEADER_BYTES - 4))
        return ms_err_set(err, MS_EFORMAT, "%s: index header is damaged (checksum mismatch)", path);
    if (h->header_bytes != HEADER_BYTES || h->metric != METRIC_INNER_PRODUCT || h->dim < 1 || h->dim > 65536 ||
        h->kind_param > INDEX_HNSW || (h->kind_now != INDEX_FLAT && h->kind_now != INDEX_HNSW) ||
        h->quant > INDEX_QUANT_INT4 || h->M < 2 || h->M > 128 || h->chunk_shift < 6 || h->chunk_shift > 20 ||
        h->graph > 1 || (h->kind_now == INDEX_HNSW && !h->graph) || h->n_slots > IX_MAX_SLOTS ||
        h->n_live > h->n_slots || h->model_id_len > MODEL_ID_MAX || h->ef_construction < 1 ||
        h->ef_construction > 100000 || h->ef_search > 100000)
        return ms_err_set(err, MS_EFORMAT, "%s: index header holds impossible values", path);
    if ((int)h->dim != dim)
        return ms_err_set(err, MS_ECONFLICT, "%s: index has dimension %u, the model gives %d", path, h->dim, dim);
    h->model_id[MODEL_ID_MAX] = '\0';
    if (strlen(model_identity) != h->model_id_len || memcmp(model_identity, h->model_id, h->model_id_len))
        return ms_err_set(err, MS_ECONFLICT, "%s: index was built with model '%.*s', not '%s'", path,
                          (int)h->model_id_len, h->model_id, model_identity);
    if (!make_layout(h->n_slots, h->dim, h->quant, h->graph, h->M, L))
        return ms_err_set(err, MS_EFORMAT, "%s: index header sizes overflow", path);
    if (h->payload_bytes != size - HEADER_BYTES || h->payload_bytes < L->upper)
        return ms_err_set(err, MS_EFORMAT, "%s: truncated or padded index file (%zu bytes, header says %llu)",
                          path, size, (unsigned long long)(h->payload_bytes + HEADER_BYTES));
    uint64_t vec_bytes = h->n_slots * h->dim * 4; /* within payload_bytes, checked above */
    if (payload_crc_and_finite(base + HEADER_BYTES, h->payload_bytes, L, vec_bytes, vectors_finite) !=
        h->payload_crc)
        return ms_err_set(err, MS_EFORMAT, "%s: index data is damaged (checksum mismatch)", path);
    return 0;
}

/* Levels, link counts and targets, upper section size, entry point. */
static int check_graph(const uint8_t *p, const file_header *h, layout *L, const char *path, ms_err *err)
{
    uint64_t n = h->n_slots, stride0 = 1 + 2 * (uint64_t)h->M, strideu = 1 + (uint64_t)h->M, words = 0;
    const uint8_t *level = p + L->level;
    for (uint64_t s = 0; s < n; s++) {
        unsigned lv = level[s];
        if (lv == IX_NOT_IN_GRAPH)
            continue;
        if (lv > IX_MAX_LEVEL)
            return ms_err_set(err, MS_EFORMAT, "%s: node %llu has level %u", path, (unsigned long long)s, lv);
        words += lv * strideu;
    }
    L->end = L->upper + words * 4;
    if (L->end != h->payload_bytes)
        return ms_err_set(err, MS_EFORMAT, "%s: graph section size does not match the node levels", path);
    const uint32_t *l0 = (const uint32_t *)(const void *)(p + L->links0);
    const uint32_t *up = (const uint32_t *)(const void *)(p + L->upper);
    for (uint64_t s = 0; s < n; s++) {
        unsigned lv = level[s];
        if (lv == IX_NOT_IN_GRAPH) {
            if (l0[s * stride0] != 0)
                return ms_err_set(err, MS_EFORMAT, "%s: node %llu is outside the graph but has links", path,
                                  (unsigned long long)s);
            continue;
        }
        for (unsigned lev = 0; lev <= lv; lev++) {
            const uint32_t *l = lev ? up : l0 + s * stride0;
            uint64_t cap = lev ? h->M : 2 * (uint64_t)h->M;
            if (l[0] > cap)
                return ms_err_set(err, MS_EFORMAT, "%s: node %llu has %u links on level %u", path,
                                  (unsigned long long)s, l[0], lev);
            for (uint32_t i = 0; i < l[0]; i++) {
                uint32_t t = l[1 + i];
                if (t >= n || level[t] == IX_NOT_IN_GRAPH || level[t] < lev)
                    return ms_err_set(err, MS_EFORMAT, "%s: node %llu links to an invalid node", path,
                                      (unsigned long long)s);
            }
            if (lev)
                up += strideu;
        }
    }
    if (h->entry != IX_NO_ENTRY) {
        uint64_t es = h->entry & 0xFFFFFFFFu, el = h->entry >> 32;
        if (es >= n || level[es] == IX_NOT_IN_GRAPH || level[es] != el)
            return ms_err_set(err, MS_EFORMAT, "%s: the graph's entry point is invalid", path);
    } else if (h->kind_now == INDEX_HNSW && h->n_live > 0) {
        return ms_err_set(err, MS_EFORMAT, "%s: graph index without an entry point", path);
    }
    return 0;
}

/* index_add refuses NaN and infinite components, so a file holding one is
 * forged or damaged past its checksum; refused too because such a value
 * would reach the quantisers and the scan kernels, whose float-to-integer
 * conversions it would make undefined. The compressed copies are checked
 * alike: int8 and int4 offsets and steps finite (steps not negative),
 * float16 halves not NaN (a finite component above 65504 is stored as an
 * infinite half). Every slot counts, dead ones too: the graph still walks
 * through tombstones. */
static int check_numbers(const uint8_t *p, const file_header *h, const layout *L, bool vectors_finite,
                         const char *path, ms_err *err)
{
    size_t n = h->n_slots, d = h->dim;
    if (!vectors_finite) /* find the slot to name */
        for (size_t s = 0; s < n; s++)
            if (!floats_finite(p + L->vec + s * d * 4, d))
                return ms_err_set(err, MS_EFORMAT, "%s: vector at slot %zu has a NaN or infinite component", path,
                                  s);
    if (ix_has_qparams((index_quant)h->quant))
        for (size_t s = 0; s < n; s++) {
            float step;
            memcpy(&step, p + L->qparams + s * 8 + 4, 4);
            if (!floats_finite(p + L->qparams + s * 8, 2) || step < 0)
                return ms_err_set(err, MS_EFORMAT, "%s: quantisation range at slot %zu is impossible", path, s);
        }
    if (h->quant == INDEX_QUANT_F16 && halves_have_nan(p + L->codes, n * d))
        for (size_t s = 0; s < n; s++) /* find the slot to name */
            if (halves_have_nan(p + L->codes + s * d * 2, d))
                return ms_err_set(err, MS_EFORMAT, "%s: float16 copy at slot %zu holds a NaN", path, s);
    return 0;
}

/* Builds the index over the mapped payload. */
static int attach(vindex *ix, uint8_t *p, const file_header *h, const layout *L, const char *path, ms_err *err)
{
    size_t n = h->n_slots, d = ix->dim, S = ix->S;
    int rc = ix_reserve_slots(ix, n, err);
    if (rc)
        return rc;
    ix_dir *dir = atomic_load_explicit(&ix->dir, memory_order_relaxed);
    uint32_t *upper_at = (uint32_t *)(void *)(p + L->upper);
    for (size_t base = 0; base < n; base += S) {
        ix_chunk *c = dir->chunk[base >> ix->shift];
        size_t m = n - base < S ? n - base : S;
        int64_t *ids = (int64_t *)(void *)(p + L->ids) + base;
        float *vec = (float *)(void *)(p + L->vec) + base * d;
        uint8_t *codes = p + L->codes + base * ix->q.code_bytes;
        float *qp = (float *)(void *)(p + L->qparams) + 2 * base;
        uint32_t *l0 = (uint32_t *)(void *)(p + L->links0) + base * ix_links0_stride(ix);
        if (m == S) {
            /* A full chunk: point into the file instead of copying. */
            bool has_codes = c->codes, has_qp = c->qparams, has_links = c->links0;
            free(c->vec);
            free(c->ids);
            free(c->codes);
            free(c->qparams);
            free(c->links0);
            c->vec = vec;
            c->ids = ids;
            c->codes = has_codes ? codes : NULL;
            c->qparams = has_qp ? qp : NULL;
            c->links0 = has_links ? l0 : NULL;
            c->borrowed = true;
        } else {
            memcpy(c->vec, vec, m * d * sizeof(float));
            memcpy(c->ids, ids, m * sizeof(int64_t));
            if (c->codes)
                memcpy(c->codes, codes, m * ix->q.code_bytes);
            if (c->qparams)
                memcpy(c->qparams, qp, m * 2 * sizeof(float));
            if (c->links0)
                memcpy(c->links0, l0, m * ix_links0_stride(ix) * sizeof(uint32_t));
        }
        memcpy(c->dead, p + L->dead + base, m);
        if (c->level) {
            memcpy(c->level, p + L->level + base, m);
            for (size_t i = 0; i < m; i++) {
                unsigned lv = c->level[i];
                if (lv != IX_NOT_IN_GRAPH && lv > 0) {
                    c->upper[i] = upper_at;
                    upper_at += lv * ix_upper_stride(ix);
                }
                ix->graph_nodes += lv != IX_NOT_IN_GRAPH;
            }
        }
    }
    /* ids -> slots; a live id twice means a forged file. */
    size_t live = 0;
    for (size_t s = 0; s < n; s++) {
        uint8_t dead = p[L->dead + s];
        if (dead > 1)
            return ms_err_set(err, MS_EFORMAT, "%s: bad tombstone flag at slot %zu", path, s);
        if (dead)
            continue;
        live++;
    }
    if (live != h->n_live)
        return ms_err_set(err, MS_EFORMAT, "%s: live count %llu does not match the tombstones (%zu)", path,
                          (unsigned long long)h->n_live, live);
    const int64_t *ids = (const int64_t *)(const void *)(p + L->ids);
    rc = ix_load_map(ix, ids, p + L->dead, n, err);
    if (rc)
        return ms_err_prefix(err, "%s: ", path);
    atomic_store_explicit(&ix->n_live, live, memory_order_relaxed);
    atomic_store_explicit(&ix->n_slots, n, memory_order_release);
    atomic_store_explicit(&ix->entry, h->entry, memory_order_release);
    atomic_store_explicit(&ix->kind, (int)h->kind_now, memory_order_release);
    return 0;
}

int index_load(const char *path, int dim, const char *model_identity, const index_params *p, vindex **out,
               uint64_t *generation, ms_err *err)
{
    if (!path || !out)
        return ms_err_set(err, MS_EINVAL, "index_load: NULL argument");
    *out = NULL;
    if (!model_identity)
        model_identity = "";
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return ms_err_set(err, errno == ENOENT ? MS_ENOTFOUND : MS_EIO, "%s: cannot open the index: %s", path,
                          strerror(errno));
    struct stat st;
    if (fstat(fd, &st) || !S_ISREG(st.st_mode)) {
        close(fd);
        return ms_err_set(err, MS_EIO, "%s: not a regular file", path);
    }
    size_t size = (size_t)st.st_size;
    if (size < HEADER_BYTES) {
        close(fd);
        return ms_err_set(err, MS_EFORMAT, "%s: truncated index file (%zu bytes)", path, size);
    }
    /* Populated read-only first: populating a writable private mapping
     * would copy every page. Made writable after, so that the pages the
     * graph's writer touches later are copied one at a time. */
    uint8_t *base = mmap(NULL, size, PROT_READ, MAP_PRIVATE | MAP_POPULATE, fd, 0);
    close(fd);
    if (base == MAP_FAILED)
        return ms_err_set(err, MS_EIO, "%s: cannot map the index: %s", path, strerror(errno));
    if (mprotect(base, size, PROT_READ | PROT_WRITE)) {
        int e = errno;
        munmap(base, size);
        return ms_err_set(err, MS_EIO, "%s: cannot map the index: %s", path, strerror(e));
    }
    file_header h;
    layout L;
    bool vectors_finite = false;
    int rc = check_header(base, size, path, dim, model_identity, &h, &L, &vectors_finite, err);
    if (!rc && h.graph)
        rc = check_graph(base + HEADER_BYTES, &h, &L, path, err);
    else if (!rc && L.upper != h.payload_bytes)
        rc = ms_err_set(err, MS_EFORMAT, "%s: index file size does not match its header", path);
    if (!rc)
        rc = check_numbers(base + HEADER_BYTES, &h, &L, vectors_finite, path, err);
    if (rc) {
        munmap(base, size);
        return rc;
    }
    index_params prm;
    index_params_init(&prm);
    if (p) {
        prm.threads = p->threads;
        prm.graph_f32 = p->graph_f32;
        if (p->ef_search > 0)
            prm.ef_search = p->ef_search;
    }
    prm.kind = (index_kind)h.kind_param;
    prm.auto_threshold = h.auto_threshold;
    prm.M = (int)h.M;
    prm.ef_construction = (int)h.ef_construction;
    prm.quant = (index_quant)h.quant;
    if (!p || p->ef_search <= 0)
        prm.ef_search = (int)h.ef_search;
    vindex *ix;
    rc = ix_create(dim, &prm, h.chunk_shift, &ix, err);
    if (rc) {
        munmap(base, size);
        return rc;
    }
    if ((bool)h.graph != ix->graph_arrays) {
        index_free(ix);
        munmap(base, size);
        return ms_err_set(err, MS_EFORMAT, "%s: graph flag does not match the index kind", path);
    }
    ix->mapped = base;
    ix->mapped_len = size;
    rc = attach(ix, base + HEADER_BYTES, &h, &L, path, err);
    if (rc) {
        index_free(ix);
        return rc;
    }
    if (generation)
        *generation = h.generation;
    *out = ix;
    return 0;
}
